"""The Python `kubernetes` client's WebSocket streams against a pikube node: exec (stdout,
stderr, exit code) and port-forward (WebSocket v4 with `?ports=`). Arguments: kubeconfig,
pod with a shell, pod serving HTTP on 8080. Exits non-zero with a message on failure."""

import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream


def main():
    config.load_kube_config(config_file=sys.argv[1])
    shell, web = sys.argv[2], sys.argv[3]
    v1 = client.CoreV1Api()
    resp = stream(
        v1.connect_get_namespaced_pod_exec,
        shell,
        "default",
        container="main",
        command=["sh", "-c", "echo py-out; echo py-err >&2; exit 2"],
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    resp.run_forever(timeout=20)
    out, err, code = resp.read_stdout(), resp.read_stderr(), resp.returncode
    if (out, err, code) != ("py-out\n", "py-err\n", 2):
        sys.exit(f"exec: stdout {out!r} stderr {err!r} exit {code!r}")

    pf = portforward(v1.connect_get_namespaced_pod_portforward, web, "default", ports="8080")
    sock = pf.socket(8080)
    sock.settimeout(20)
    sock.sendall(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")
    page = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        page += chunk
    sock.close()
    if b"hello through a tunnel" not in page:
        sys.exit(f"port-forward: {page!r}")
    error = pf.error(8080)
    if error:
        sys.exit(f"port-forward error: {error}")
    pf.close()
    print("python streams: ok")


if __name__ == "__main__":
    main()
