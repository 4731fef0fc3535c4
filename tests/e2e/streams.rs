//! `kubectl logs`, `exec`, `attach` and `port-forward` through the API server and the
//! node agent's API, with real containerd and the real kubectl; and the agent API's
//! client-certificate check.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::apply;
use crate::harness::{get_json, s, spawn_lines, wait_for, Server};

/// A pod printing three lines and one to stderr, then a numbered tick every 300 ms; and
/// a pod whose first run exits 1 and whose second keeps running.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: printer}
spec:
  containers:
  - name: printer
    image: localhost/busybox:1.35
    command: ["sh", "-c", "echo line 1; echo line 2; echo line 3; echo oops >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sh", "-c", "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run $n; if [ $n = 1 ]; then exit 1; fi; exec sleep 3600"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
"#;

/// A pod that prints, waits five seconds, prints and ends.
const BRIEF: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: brief}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sh", "-c", "echo start; sleep 5; echo end"]
"#;

/// The highest `tick N` in `text`.
fn last_tick(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.rsplit("tick ").next()?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn kubectl_logs_tail_timestamps_previous_follow_and_attach() {
    let server = Server::start_node(5, &[]);
    server.wait_node_ready("node5");
    apply(&server, "pods", PODS);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/printer",
            "--timeout=90s",
        ],
    );
    wait_for(60, "the printer's first ticks", || {
        (last_tick(&server.ok("1.33", &["logs", "printer"])) >= 2).then_some(())
    });

    for v in ["1.27", "1.33"] {
        let all = server.ok(v, &["logs", "printer"]);
        // stdout and stderr are separate pipes: only each one's order is fixed.
        let out: Vec<&str> = all.lines().filter(|l| *l != "oops").take(4).collect();
        assert_eq!(
            out,
            ["line 1", "line 2", "line 3", "tick 1"],
            "kubectl {v} logs: {all}"
        );
        assert!(all.lines().any(|l| l == "oops"), "stderr too: {all}");
    }
    let tail = server.ok("1.33", &["logs", "printer", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick "), "{tail}");
    let stamped = server.ok("1.27", &["logs", "printer", "--timestamps", "--tail=3"]);
    for line in stamped.lines() {
        let (ts, _) = line.split_once(' ').expect("timestamp and text");
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "{line:?} starts with an RFC3339 time"
        );
    }
    assert_eq!(stamped.lines().count(), 3, "{stamped}");
    let limited = server.ok("1.33", &["logs", "printer", "--limit-bytes=8"]);
    let all = server.ok("1.33", &["logs", "printer"]);
    assert_eq!(limited, all[..8]);
    let since = server.ok("1.33", &["logs", "printer", "--since=1s"]);
    assert!(
        !since.contains("line 1") && since.contains("tick"),
        "{since}"
    );

    // Follow: lines written after kubectl started arrive.
    let now = last_tick(&server.ok("1.33", &["logs", "printer"]));
    let mut cmd = server.kubectl_cmd("1.33");
    cmd.args(["logs", "-f", "printer"]);
    let (_follow, lines) = spawn_lines(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen <= now + 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("logs -f stalled at tick {seen} (started at {now})"));
        seen = seen.max(last_tick(&line));
    }

    // Follow, started while the container runs, ends when it exits, with its last line.
    apply(&server, "brief", BRIEF);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/brief",
            "--timeout=60s",
        ],
    );
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("40")
        .arg(crate::harness::kubectl_path("1.33"))
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["logs", "-f", "brief"])
        .output()
        .expect("kubectl logs -f");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "start\nend\n");
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(1) && took < Duration::from_secs(30),
        "followed until the exit: {took:?}"
    );

    // Attach: the main process's output, live.
    let mut cmd = server.kubectl_cmd("1.33");
    cmd.args(["attach", "printer"]);
    let (_attach, lines) = spawn_lines(cmd);
    let line = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("attach shows the process's output");
    assert!(line.starts_with("tick "), "{line}");

    // Previous: the first run's log after the restart.
    wait_for(90, "crasher's second run", || {
        let pod = get_json(&server, &["get", "pod", "crasher", "-o", "json"]);
        let cs = &pod["status"]["containerStatuses"][0];
        (cs["restartCount"].as_i64() >= Some(1) && cs["state"]["running"].is_object()).then_some(())
    });
    assert_eq!(server.ok("1.33", &["logs", "crasher"]), "run 2\n");
    assert_eq!(
        server.ok("1.27", &["logs", "crasher", "--previous"]),
        "run 1\n"
    );

    // Errors, worded as Kubernetes does.
    let err = server.fails("1.33", &["logs", "printer", "--previous"]);
    assert!(
        err.contains("previous terminated container \"printer\" in pod \"printer\" not found"),
        "{err}"
    );
    let err = server.fails("1.33", &["logs", "nosuch"]);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = server.fails("1.33", &["logs", "printer", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod printer"),
        "{err}"
    );
}

/// Runs kubectl `version` with `args` and `input` on stdin; (exit code, stdout, stderr).
fn kubectl_with_input(
    server: &Server,
    version: &str,
    args: &[&str],
    input: &str,
) -> (i32, String, String) {
    let mut child = server
        .kubectl_cmd(version)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl exec shell -c main -- sh -c <script>` with kubectl `version`.
fn sh_in_main(server: &Server, version: &str, script: &str) -> std::process::Output {
    server.kubectl(
        version,
        &["exec", "shell", "-c", "main", "--", "sh", "-c", script],
    )
}

#[test]
fn kubectl_exec_port_forward_and_exit_codes_and_the_agent_port_wants_the_api_server() {
    let server = Server::start_node(6, &[]);
    server.wait_node_ready("node6");
    apply(
        &server,
        "shell",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  containers:
  - {name: main, image: localhost/busybox:1.35, command: ["sleep", "3600"]}
  - {name: side, image: localhost/busybox:1.35, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: httpd
    image: localhost/busybox:1.35
    command: ["sh", "-c", "echo hello through a tunnel > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: unplaced}
spec:
  nodeSelector: {no-such-label: x}
  containers:
  - {name: c, image: localhost/busybox:1.35, command: ["sleep", "3600"]}
"#,
    );
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/shell",
            "pod/web",
            "--timeout=90s",
        ],
    );

    let out = sh_in_main(&server, "1.33", "echo out; echo err >&2; exit 3");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "{out:?}"
    );
    let ok = server.ok("1.33", &["exec", "shell", "-c", "side", "--", "hostname"]);
    assert_eq!(ok, "shell\n");

    // stdin reaches the process.
    let (code, out, err) = kubectl_with_input(
        &server,
        "1.33",
        &["exec", "-i", "shell", "-c", "main", "--", "head", "-n1"],
        "hello\nworld\n",
    );
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    // The end of stdin reaches the process and its exit status comes back (kubectl
    // 1.33 falls back from WebSocket v5 to SPDY for stdin; 1.27 speaks SPDY only).
    for v in ["1.27", "1.33"] {
        let (code, out, err) = kubectl_with_input(
            &server,
            v,
            &["exec", "-i", "shell", "-c", "main", "--", "sort"],
            "b\na\n",
        );
        assert_eq!((code, out.as_str()), (0, "a\nb\n"), "kubectl {v}: {err}");
        let (code, out, err) = kubectl_with_input(
            &server,
            v,
            &[
                "exec",
                "-i",
                "shell",
                "-c",
                "main",
                "--",
                "sh",
                "-c",
                "cat; exit 4",
            ],
            "one\ntwo\n",
        );
        assert_eq!(
            (code, out.as_str()),
            (4, "one\ntwo\n"),
            "kubectl {v}: {err}"
        );
    }
    let out = sh_in_main(&server, "1.27", "echo old; exit 5");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(5), &b"old\n"[..]),
        "{out:?}"
    );

    // kubectl cp both ways (tar over exec, stdin ended by SPDY).
    for v in ["1.27", "1.33"] {
        let body = format!("copied by kubectl {v}\n").repeat(1000);
        let local = server.file(&format!("cp-{v}.txt"), &body);
        let remote = format!("shell:/tmp/cp-{v}.txt");
        server.ok(v, &["cp", "-c", "main", s(&local), &remote]);
        let back = local.with_extension("back");
        server.ok(v, &["cp", "-c", "main", &remote, s(&back)]);
        assert_eq!(std::fs::read_to_string(&back).expect("copied back"), body);
    }

    // Port-forward: SPDY in every kubectl (1.33 tries SPDY-in-WebSocket first).
    for v in ["1.27", "1.33"] {
        let mut cmd = server.kubectl_cmd(v);
        cmd.args(["port-forward", "pod/web", ":8080"]);
        let (_pf, lines) = spawn_lines(cmd);
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("kubectl port-forward starts");
        // "Forwarding from 127.0.0.1:40123 -> 8080"
        let port: u16 = line
            .split_once("127.0.0.1:")
            .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("kubectl {v}: {line}"));
        let page = crate::agent::http_get("127.0.0.1", port, "/index.html");
        assert!(
            page.contains("hello through a tunnel"),
            "kubectl {v}: {page}"
        );
    }

    // Client libraries: the Python client's WebSocket exec and port-forward.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/python/streams_check.py"
    );
    let out = Command::new("timeout")
        .args(["60", "python3", script])
        .arg(server.kubeconfig())
        .args(["shell", "web"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python streams check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python streams: ok"));

    // Errors.
    let err = server.fails("1.33", &["exec", "nosuch", "--", "true"]);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = server.fails("1.33", &["exec", "unplaced", "--", "true"]);
    assert!(
        err.contains("pod unplaced does not have a host assigned"),
        "{err}"
    );
    assert_eq!(server.ok("1.33", &["logs", "unplaced"]), "");
    // kubectl picks a default container itself; the API's own answer without one:
    let err = server.fails(
        "1.33",
        &["get", "--raw", "/api/v1/namespaces/default/pods/shell/log"],
    );
    assert!(
        err.contains(
            "a container name must be specified for pod shell, choose one of: [main side]"
        ),
        "{err}"
    );
    let err = server.fails("1.33", &["exec", "shell", "-c", "nope", "--", "true"]);
    assert!(
        err.contains("container nope is not valid for pod shell"),
        "{err}"
    );

    // The agent API: only the API server's client certificate is served.
    let node = get_json(&server, &["get", "node", "node6", "-o", "json"]);
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .expect("agent port");
    let tls = server.data_dir().join("server/tls");
    let url = format!("https://127.0.0.1:{port}/healthz");
    let curl = |cert: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/stdout",
            "-w",
            " %{http_code}",
        ])
        .arg("--cacert")
        .arg(tls.join("ca.crt"));
        if let Some(name) = cert {
            c.arg("--cert")
                .arg(tls.join(format!("{name}.crt")))
                .arg("--key")
                .arg(tls.join(format!("{name}.key")));
        }
        let out = c.arg(&url).output().expect("run curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        curl(Some("apiserver-kubelet-client")),
        (true, "ok 200".into())
    );
    let (_, admin) = curl(Some("admin"));
    assert!(
        admin.ends_with(" 403"),
        "another identity is refused: {admin}"
    );
    let (ok, anonymous) = curl(None);
    assert!(
        !ok || anonymous.ends_with(" 000"),
        "no client certificate, no TLS session: {anonymous}"
    );
}
