//! Probes that reach servers on the node (HTTPS readiness, gRPC liveness) and container
//! log rotation, with the real containerd agent and kubectl.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{apply, condition, container_status, pod_json};
use crate::harness::{get_json, spawn_lines, wait_for, Server};
use crate::probe_servers::{Answer, GrpcHealth, HttpsTarget};

/// The messages of the Events about pod `name` with `reason`.
fn events(server: &Server, name: &str, reason: &str) -> Vec<String> {
    get_json(server, &["get", "events", "-o", "json"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

#[test]
fn https_readiness_and_grpc_liveness_probes_reach_servers_on_the_node() {
    // The probe targets run in the test, on the node's address; the pod shares the
    // node's network, so the probes (sent from the host, as kubelet's) reach them.
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let https = rt.block_on(HttpsTarget::start(|_| Answer::new(503, "warming up")));
    let grpc = rt.block_on(GrpcHealth::start(1));
    let server = Server::start_node(27, &[]);
    server.wait_node_ready("node27");
    apply(
        &server,
        "probed",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  hostNetwork: true
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sleep", "3600"]
    readinessProbe:
      httpGet:
        scheme: HTTPS
        port: {}
        path: /healthz
        httpHeaders: [{{name: Host, value: web.example}}, {{name: X-Probe, value: pikube}}]
      periodSeconds: 1
    livenessProbe:
      grpc: {{port: {}, service: shop}}
      periodSeconds: 1
      failureThreshold: 2
"#,
            https.port, grpc.port
        ),
    );
    let running = wait_for(60, "probed to run", || {
        let p = pod_json(&server, "probed");
        (p["status"]["phase"] == "Running" && !https.seen().is_empty()).then_some(p)
    });
    assert_eq!(
        condition(&running, "Ready").as_deref(),
        Some("False"),
        "{running}"
    );
    let first = https.seen()[0].clone();
    assert_eq!(first.path, "/healthz");
    assert_eq!(first.headers["host"], "web.example");
    assert_eq!(first.headers["x-probe"], "pikube");
    assert!(
        first.headers["user-agent"]
            .to_str()
            .is_ok_and(|u| u.starts_with("kube-probe/")),
        "{first:?}"
    );
    wait_for(30, "an Unhealthy event for the 503", || {
        events(&server, "probed", "Unhealthy")
            .iter()
            .any(|m| m == "Readiness probe failed: HTTP probe failed with statuscode: 503")
            .then_some(())
    });

    https.set(|_| Answer::new(200, "ok"));
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/probed",
            "--timeout=30s",
        ],
    );
    // A redirect to another host is not followed: still ready, with a warning Event.
    https.set(|_| Answer::redirect("https://elsewhere.invalid/"));
    wait_for(30, "a ProbeWarning event", || {
        events(&server, "probed", "ProbeWarning")
            .iter()
            .any(|m| {
                m == "Readiness probe warning: Probe terminated redirects, Response body: moved"
            })
            .then_some(())
    });
    let p = pod_json(&server, "probed");
    assert_eq!(condition(&p, "Ready").as_deref(), Some("True"), "{p}");
    assert_eq!(container_status(&p)["restartCount"], 0, "{p}");
    assert!(grpc.services().iter().all(|s| s == "shop"));
    assert!(!grpc.services().is_empty());

    // The gRPC health check turns NOT_SERVING: the liveness probe restarts the container.
    grpc.set(2);
    wait_for(
        60,
        "the gRPC liveness probe to restart the container",
        || {
            let cs = container_status(&pod_json(&server, "probed"));
            (cs["restartCount"].as_i64() >= Some(1)).then_some(())
        },
    );
    let unhealthy = events(&server, "probed", "Unhealthy");
    assert!(
        unhealthy.iter().any(|m| {
            m == "Liveness probe failed: service unhealthy (responded with \"NOT_SERVING\")"
        }),
        "{unhealthy:?}"
    );
    let killing = events(&server, "probed", "Killing");
    assert!(
        killing
            .iter()
            .any(|m| m == "Container c failed liveness probe, will be restarted"),
        "{killing:?}"
    );
}

/// The files of container `c`'s log directory of pod `name`.
fn log_files(server: &Server, pod: &Value) -> (PathBuf, Vec<String>) {
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let name = pod["metadata"]["name"].as_str().expect("name");
    let dir = server
        .data_dir()
        .join(format!("agent/logs/default_{name}_{uid}/c"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    (dir, files)
}

/// The numbers of `line <n> …` lines.
fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect()
}

fn assert_consecutive(n: &[u64], what: &str) {
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: lines missing or repeated: {n:?}"
    );
}

#[test]
fn container_logs_rotate_at_their_size_and_kubectl_logs_follows() {
    let server = Server::start_node(
        28,
        &[
            "--container-log-max-size",
            "4Ki",
            "--container-log-max-files",
            "3",
        ],
    );
    server.wait_node_ready("node28");
    apply(
        &server,
        "chatty",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: chatty}
spec:
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sh", "-c", "i=0; while true; do echo \"line $i of a chatty container\"; i=$((i+1)); sleep 0.02; done"]
"#,
    );
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/chatty",
            "--timeout=60s",
        ],
    );
    let pod = pod_json(&server, "chatty");
    // A follower from before the first rotation (without the harness's request timeout).
    let mut follow = server.kubectl_cmd("1.33");
    follow.args(["--request-timeout=0", "logs", "-f", "chatty"]);
    let (_follower, lines) = spawn_lines(follow);

    // Files on disk never exceed the limit; rotations leave one plain and older gzipped.
    let start = Instant::now();
    let mut gzipped_seen = false;
    while start.elapsed() < Duration::from_secs(45) || !gzipped_seen {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no compressed rotation: {:?}",
            log_files(&server, &pod).1
        );
        let (_, files) = log_files(&server, &pod);
        assert!(files.len() <= 3, "more than 3 log files: {files:?}");
        assert!(files.contains(&"0.log".to_string()), "{files:?}");
        gzipped_seen |= files.iter().any(|f| f.ends_with(".gz"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (dir, files) = log_files(&server, &pod);
    assert_eq!(files.len(), 3, "{files:?}");
    let rotated: Vec<&String> = files.iter().filter(|f| f.starts_with("0.log.")).collect();
    assert!(rotated[0].ends_with(".gz"), "{files:?}");
    assert!(!rotated[1].ends_with(".gz"), "{files:?}");
    assert!(
        rotated[0] < rotated[1],
        "the compressed file is the older: {files:?}"
    );
    let current = std::fs::metadata(dir.join("0.log"))
        .expect("current log")
        .len();
    assert!(
        current < 64 * 1024,
        "the current file was rotated: {current} bytes"
    );

    // `kubectl logs` reads the current file: recent lines only, in order.
    let text = server.ok("1.33", &["logs", "chatty"]);
    let now = numbers(&text);
    assert!(!now.is_empty(), "{text}");
    assert!(now[0] > 0, "the first lines were rotated away: {text}");
    assert_consecutive(&now, "kubectl logs");
    let tail = numbers(&server.ok("1.33", &["logs", "chatty", "--tail", "3"]));
    assert_eq!(tail.len(), 3);
    assert!(tail[0] >= *now.last().expect("lines"));

    // The follower went on across the rotations without losing a line.
    let mut followed = Vec::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
        followed.extend(numbers(&l));
        if followed.last() > now.last() {
            break;
        }
    }
    assert!(
        followed.first() < Some(&now[0]) && followed.last() > now.last(),
        "followed from before the rotations into the current file: {:?}..{:?}, current from {}",
        followed.first(),
        followed.last(),
        now[0],
    );
    assert_consecutive(&followed, "kubectl logs -f");
}
