#!/usr/bin/env bash
# Cost of service-account tokens in the API server: TokenRequest latency, and GET latency
# of one object authenticated by client certificate against a service-account token
# (signature check plus the ServiceAccount lookup), over one keep-alive HTTPS connection.
# Usage: examples/bench_satokens.sh [path/to/pikube]. Needs kubectl 1.33 and python3.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
DIR=$(mktemp -d /tmp/pikube-bench-satokens.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && while kill -0 "$PID" 2>/dev/null; do sleep 0.2; done
	rm -rf "$DIR"
}
trap cleanup EXIT

"$PIKUBE" server --config /dev/null --disable-agent --disable dns --bind-address 127.0.0.1 \
	--https-listen-port "$PORT" --data-dir "$DIR/data" --write-kubeconfig "$DIR/kubeconfig" \
	>"$DIR/server.log" 2>&1 &
PID=$!
k() { /usr/lib/google-cloud-sdk/bin/kubectl.1.33 --kubeconfig "$DIR/kubeconfig" --cache-dir "$DIR/cache" "$@"; }
for _ in $(seq 1 100); do [ -f "$DIR/kubeconfig" ] && k get --raw /readyz >/dev/null 2>&1 && break; sleep 0.2; done
until k get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
k config view --raw -o jsonpath='{.users[0].user.client-certificate-data}' | base64 -d >"$DIR/admin.crt"
k config view --raw -o jsonpath='{.users[0].user.client-key-data}' | base64 -d >"$DIR/admin.key"

python3 - "$PORT" "$DIR" <<'PY'
import http.client, json, ssl, sys, time
port, d = int(sys.argv[1]), sys.argv[2]
N = 1000

def conn(cert):
    ctx = ssl.create_default_context(cafile=f"{d}/data/server/tls/ca.crt")
    if cert:
        ctx.load_cert_chain(f"{d}/admin.crt", f"{d}/admin.key")
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx)

def timed(c, method, path, headers, body=None):
    t = time.perf_counter()
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    assert r.status < 300, (r.status, data)
    return (time.perf_counter() - t) * 1000, data

def row(label, ms):
    ms.sort()
    print(f"| {label} | {ms[len(ms) // 2]:.2f} | {ms[int(len(ms) * 0.99)]:.2f} |")

admin = conn(True)
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
path = "/api/v1/namespaces/default/serviceaccounts/default/token"
hdr = {"Content-Type": "application/json"}
issue = [timed(admin, "POST", path, hdr, body)[0] for _ in range(N)]
token = json.loads(timed(admin, "POST", path, hdr, body)[1])["status"]["token"]
obj = "/api/v1/namespaces/default/serviceaccounts/default"
sa = conn(False)
for _ in range(50):
    timed(admin, "GET", obj, {}); timed(sa, "GET", obj, {"Authorization": f"Bearer {token}"})
by_cert = [timed(admin, "GET", obj, {})[0] for _ in range(N)]
by_token = [timed(sa, "GET", obj, {"Authorization": f"Bearer {token}"})[0] for _ in range(N)]
print(f"| request ({N} sequential, one connection) | p50 ms | p99 ms |")
print("|---|---:|---:|")
row("POST serviceaccounts/default/token (TokenRequest)", issue)
row("GET serviceaccount, client certificate", by_cert)
row("GET serviceaccount, service-account token", by_token)
PY
