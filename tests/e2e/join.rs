//! `pikube agent`: a second node joins a server with the server's token and runs pods;
//! the API server reaches its agent API for logs; bad tokens are refused.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{
    free_dual_port, free_port, get_json, post_bearer, test_images, wait_for, Server,
};

/// A `pikube agent` process on this machine, with its own dirs, bridge and cgroup;
/// stopped and cleaned up when dropped.
pub struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Where the agent's own cluster DNS answers.
    dns_port: u16,
    /// The test's node index: node `agent<index>` on 127.0.0.<index>, bridge
    /// `pkt<index>`, cgroup `/pikube-test-<index>`.
    index: u8,
}

impl Agent {
    fn args(
        dir: &std::path::Path,
        index: u8,
        dns_port: u16,
        server: &Server,
        token: &str,
    ) -> Vec<String> {
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "").expect("empty resolv.conf");
        [
            "agent".to_string(),
            "--config".into(),
            "/dev/null".into(),
            "--node-name".into(),
            format!("agent{index}"),
            "--node-ip".into(),
            format!("127.0.0.{index}"),
            "--cgroup-root".into(),
            format!("/pikube-test-{index}"),
            "--cni-bridge".into(),
            format!("pkt{index}"),
            "--disable".into(),
            "proxy".into(),
        ]
        .into_iter()
        .chain([
            "--server".into(),
            format!("https://127.0.0.1:{}", server.port),
            "--token".into(),
            token.to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--run-dir".into(),
            dir.join("run").display().to_string(),
            "--agent-port".into(),
            free_port().to_string(),
            "--dns-listen-address".into(),
            format!("127.0.0.1:{dns_port}"),
            "--resolv-conf".into(),
            resolv.display().to_string(),
        ])
        .collect()
    }

    /// Starts `pikube agent` as node `agent<index>`, joining `server` with `token`.
    pub fn start(server: &Server, token: &str, index: u8) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let images = dir.path().join("data/agent/images");
        std::fs::create_dir_all(&images).expect("images dir");
        for tar in ["pause.tar", "busybox.tar"] {
            std::fs::copy(test_images().join(tar), images.join(tar)).expect("copy test image");
        }
        std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let mut agent = Agent {
            child: None,
            dir,
            dns_port: free_dual_port(),
            index,
        };
        agent.spawn(server, token);
        agent
    }

    /// Starts the agent process, its output appended to the log.
    fn spawn(&mut self, server: &Server, token: &str) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .args(Self::args(
                self.dir.path(),
                self.index,
                self.dns_port,
                server,
                token,
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pikube agent");
        self.child = Some(child);
    }

    /// Stops the agent, forgets what its join got (keeping its node password), and starts
    /// it again: it has to join once more.
    fn rejoin(&mut self, server: &Server, token: &str) {
        self.stop();
        std::fs::remove_file(self.dir.path().join("data/agent/join.json")).expect("join.json");
        self.spawn(server, token);
        wait_for(60, "the agent to join again", || {
            self.dir
                .path()
                .join("data/agent/join.json")
                .exists()
                .then_some(())
        });
    }

    /// Stops the agent process (SIGTERM, then SIGKILL after 10 s).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let data: PathBuf = self.dir.path().join("data");
        let _ = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .arg("killall")
            .arg("--data-dir")
            .arg(&data)
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .args([
                "--cgroup-root",
                &format!("/pikube-test-{}", self.index),
                "--cni-bridge",
                &format!("pkt{}", self.index),
                "--keep-proxy",
            ])
            .status();
    }
}

/// Runs `pikube agent` with `token` and expects it to stop with an error; its stderr.
fn refused(server: &Server, token: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_pikube"))
        .args(Agent::args(dir.path(), 11, free_dual_port(), server, token))
        .output()
        .expect("run pikube agent");
    assert!(!out.status.success(), "a bad token must not join");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_joins_with_the_token_runs_pods_and_serves_logs() {
    // Two /24s: the server's own node gets the first, the agent the second.
    let server = Server::start_node(10, &["--cluster-cidr", "10.42.110.0/23"]);
    server.wait_node_ready("node10");
    // Agents join with the agent token (the server token is for servers).
    let token_file = server.data_dir().join("server/agent-token");
    let token = std::fs::read_to_string(&token_file).expect("the server keeps its agent token");
    let token = token.trim().to_string();
    assert!(
        token.starts_with("K10") && token.contains("::node:"),
        "{token}"
    );

    let secret = token.rsplit(':').next().unwrap_or_default().to_string();
    let err = refused(&server, "not-the-secret");
    assert!(
        err.contains("refused to join") && err.contains("401"),
        "{err}"
    );
    let wrong_ca = format!("K10{}::node:{secret}", "0".repeat(64));
    let err = refused(&server, &wrong_ca);
    assert!(err.contains("does not match the token"), "{err}");

    let agent = Agent::start(&server, &token, 11);
    wait_for(90, "agent11 to join and be Ready", || {
        server
            .kubectl(
                "1.33",
                &[
                    "wait",
                    "--for=condition=Ready",
                    "node/agent11",
                    "--timeout=20s",
                ],
            )
            .status
            .success()
            .then_some(())
    });
    let node = get_json(&server, &["get", "node", "agent11", "-o", "json"]);
    assert_eq!(
        node["spec"]["podCIDR"],
        "10.42.111.0/24",
        "{node}\n{}",
        agent.log()
    );
    let nodes = server.ok("1.27", &["get", "nodes"]);
    assert!(
        nodes.contains("node10") && nodes.contains("agent11"),
        "{nodes}"
    );
    // Another machine (another data dir, so another node password) cannot take the name.
    let err = refused(&server, &token);
    assert!(
        err.contains("409") && err.contains("belongs to another machine"),
        "{err}"
    );
    // The same agent joins again with its own password once its join state is gone.
    let mut agent = agent;
    agent.rejoin(&server, &token);

    let pod = server.file(
        "on-agent.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: on-agent}
spec:
  nodeSelector: {kubernetes.io/hostname: agent11}
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: [sh, -c, 'echo hello from the agent; hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']
"#,
    );
    server.ok(
        "1.33",
        &["apply", "--validate=false", "-f", crate::harness::s(&pod)],
    );
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/on-agent",
            "--timeout=90s",
        ],
    );
    let p = get_json(&server, &["get", "pod", "on-agent", "-o", "json"]);
    assert_eq!(p["spec"]["nodeName"], "agent11");
    let ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ip.starts_with("10.42.111."),
        "the pod has an address of the agent's range: {p}"
    );
    assert!(crate::agent::http_get(&ip, 8080, "/index.html").contains("on-agent"));
    let logs = server.ok("1.27", &["logs", "on-agent"]);
    assert_eq!(
        logs.trim(),
        "hello from the agent",
        "logs through the agent's API"
    );

    // The agent's own cluster DNS answers from its own watch of the server.
    let dig = Command::new("dig")
        .args(["@127.0.0.1", "-p", &agent.dns_port.to_string(), "+short"])
        .arg("kubernetes.default.svc.cluster.local")
        .output()
        .expect("run dig");
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), "10.43.0.1");

    server.ok("1.33", &["delete", "pod", "on-agent", "--timeout=60s"]);
}

/// Subject and SANs of a PEM certificate, as openssl prints them.
fn cert_text(pem: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("write the certificate");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl cannot read {pem}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node request for `name` at `ips` with node password `password`.
fn node_request(name: &str, ips: &[&str], password: &str) -> serde_json::Value {
    serde_json::json!({"nodeName": name, "nodeIps": ips, "nodePassword": password})
}

/// Creates a Node object `name` (no agent behind it).
fn create_node(server: &Server, name: &str) {
    let file = server.file(
        &format!("{name}.yaml"),
        &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"),
    );
    server.ok(
        "1.33",
        &["create", "--validate=false", "-f", crate::harness::s(&file)],
    );
}

/// The server's token (full form).
fn server_token(server: &Server) -> String {
    std::fs::read_to_string(server.data_dir().join("server/token"))
        .expect("the server keeps its token")
        .trim()
        .to_string()
}

#[test]
fn a_join_certifies_only_the_nodes_own_name_and_addresses() {
    let server = Server::start();
    let token = server_token(&server);
    let join = |name: &str, ips: &[&str]| {
        post_bearer(
            &server,
            "/v1-pikube/node",
            &token,
            &node_request(name, ips, "sec18-password"),
        )
    };

    // What kubelets get: both certificates are the node's, for its name and address only.
    let (code, body) = join("sec18", &["127.0.0.18"]);
    assert_eq!(code, 200, "{body}");
    for which in ["client", "serving"] {
        let text = cert_text(body[which]["cert_pem"].as_str().unwrap_or_default());
        assert!(
            text.contains("subject=CN = system:node:sec18, O = system:nodes"),
            "{which}: {text}"
        );
    }
    let serving = cert_text(body["serving"]["cert_pem"].as_str().unwrap_or_default());
    let sans: Vec<&str> = serving
        .lines()
        .skip_while(|l| !l.contains("Subject Alternative Name"))
        .nth(1)
        .unwrap_or_default()
        .split(", ")
        .map(str::trim)
        .collect();
    assert_eq!(sans, ["IP Address:127.0.0.18", "DNS:sec18"], "{serving}");

    // The API server's names and addresses, the service range: refused with the reason.
    for (name, ips, why) in [
        ("kubernetes", vec![], "is a name of the API server"),
        (
            "kubernetes.default.svc.cluster.local",
            vec![],
            "is a name of the API server",
        ),
        ("localhost", vec![], "is a name of the API server"),
        (
            "sec18",
            vec!["127.0.0.1"],
            "is an address of the API server",
        ),
        ("10.43.0.1", vec![], "is an address of the API server"),
        ("sec18", vec!["10.43.7.7"], "is in the service range"),
    ] {
        let (code, body) = join(name, &ips);
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(code, 403, "{name} {ips:?}: {body}");
        assert!(message.contains(why), "{name} {ips:?}: {message}");
    }

    // Another node's address is not this node's.
    create_node(&server, "other18");
    server.ok(
        "1.33",
        &[
            "patch",
            "node",
            "other18",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.19"}]}}"#,
        ],
    );
    let (code, body) = join("sec18", &["127.0.0.19"]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.19 is an address of node other18"),
        "{body}"
    );
}

#[test]
fn a_node_name_joins_again_only_with_its_node_password() {
    let server = Server::start();
    let token = server_token(&server);
    let join = |name: &str, password: &str| {
        post_bearer(
            &server,
            "/v1-pikube/node",
            &token,
            &node_request(name, &["127.0.0.18"], password),
        )
    };
    let message =
        |body: &serde_json::Value| body["message"].as_str().unwrap_or_default().to_string();

    assert_eq!(join("pw18", "first-machine").0, 200);
    // The same machine again (a lost join.json, a reinstall keeping the data dir).
    assert_eq!(join("pw18", "first-machine").0, 200);
    let stored = get_json(
        &server,
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            "pw18.node-password.pikube",
            "-o",
            "json",
        ],
    );
    assert_eq!(stored["type"], "pikube.io/node-password");
    assert!(!stored.to_string().contains("first-machine"), "{stored}");

    // Another machine claiming the name: refused, with how to free it.
    let (code, body) = join("pw18", "second-machine");
    assert_eq!(code, 409, "{body}");
    let why = message(&body);
    assert!(
        why.contains("belongs to another machine")
            && why.contains("kubectl delete node pw18; kubectl -n kube-system delete secret pw18.node-password.pikube")
            && !why.contains('\n'),
        "{why}"
    );
    let (code, body) = join("pw18", "");
    assert_eq!(code, 400, "{body}");
    assert!(message(&body).contains("no node password"), "{body}");

    // Freed by the operator: the other machine may have the name.
    server.ok(
        "1.33",
        &[
            "delete",
            "secret",
            "-n",
            "kube-system",
            "pw18.node-password.pikube",
        ],
    );
    assert_eq!(join("pw18", "second-machine").0, 200);
    assert_eq!(join("pw18", "first-machine").0, 409);

    // A Node that never joined with a password (a server's own node) is not handed out.
    create_node(&server, "own18");
    let (code, body) = join("own18", "any");
    assert_eq!(code, 409, "{body}");
    assert!(message(&body).contains("has no node password"), "{body}");
}
