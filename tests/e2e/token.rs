//! `pikube token create|list|delete`: bootstrap tokens as Secrets in kube-system that the
//! join endpoint accepts besides the server's token, until they are deleted or expire.

use std::process::{Command, Output};

use serde_json::json;

use crate::harness::{free_dual_port, free_port, get_json, post_bearer, Server};

fn token(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pikube"))
        .arg("token")
        .args(args)
        .env("KUBECONFIG", server.kubeconfig())
        .output()
        .expect("run pikube token")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// POSTs a node request to the join endpoint with `secret`: the status and body.
fn join(server: &Server, secret: &str) -> (u16, serde_json::Value) {
    let node = serde_json::json!({"nodeName": "tok17", "nodeIps": ["127.0.0.17"], "nodePassword": "tok17"});
    post_bearer(server, "/v1-pikube/node", secret, &node)
}

/// `pikube agent` with the token in PIKUBE_URL/PIKUBE_TOKEN (as install.sh's env file has
/// them); it must stop at the join. Its stderr.
fn agent_refused(server: &Server, token: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_pikube"))
        .args(["agent", "--config", "/dev/null", "--node-name", "tok17"])
        .args([
            "--node-ip",
            "127.0.0.17",
            "--cgroup-root",
            "/pikube-test-17",
        ])
        .args(["--cni-bridge", "pkt17", "--disable", "proxy"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--resolv-conf")
        .arg(&resolv)
        .args(["--agent-port", &free_port().to_string()])
        .arg("--dns-listen-address")
        .arg(format!("127.0.0.1:{}", free_dual_port()))
        .env("PIKUBE_URL", format!("https://127.0.0.1:{}", server.port))
        .env("PIKUBE_TOKEN", token)
        .output()
        .expect("run pikube agent");
    assert!(!out.status.success(), "the agent must not join");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bootstrap_tokens_join_until_deleted_or_expired() {
    let server = Server::start();
    let server_token =
        std::fs::read_to_string(server.data_dir().join("server/token")).expect("server token");
    let ca_part = server_token
        .split("::")
        .next()
        .expect("K10 prefix")
        .to_string();

    let created = ok(&token(
        &server,
        &["create", "--ttl", "1h", "--description", "for pi-2"],
    ));
    let full = created.trim();
    let (prefix, bootstrap) = full.split_once("::").expect("K10<hash>::<id>.<secret>");
    assert_eq!(prefix, ca_part, "the token names this cluster's CA");
    let (id, _) = bootstrap.split_once('.').expect("<id>.<secret>");
    assert_eq!((id.len(), bootstrap.len()), (6, 23), "{bootstrap}");

    let secret = get_json(
        &server,
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            &format!("bootstrap-token-{id}"),
            "-o",
            "json",
        ],
    );
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    assert!(secret["data"]["expiration"].is_string(), "{secret}");

    let list = ok(&token(&server, &["list"]));
    let row = list
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{list}"));
    assert!(
        row.contains("59m") && row.contains("authentication,signing") && row.ends_with("for pi-2"),
        "{row}"
    );
    assert!(list.starts_with("ID "), "{list}");

    // Accepted, in both the full and the bare form; the server's token still is.
    let (code, body) = join(&server, full);
    assert_eq!(code, 200, "{body}");
    let cert = &body["client"]["cert_pem"];
    assert!(
        cert.as_str()
            .unwrap_or_default()
            .contains("BEGIN CERTIFICATE"),
        "{body}"
    );
    assert_eq!(join(&server, bootstrap).0, 200);
    assert_eq!(join(&server, server_token.trim()).0, 200);
    let (code, body) = join(&server, &format!("{id}.aaaaaaaaaaaaaaaa"));
    assert_eq!(code, 401);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("wrong secret"),
        "{body}"
    );

    let out = ok(&token(&server, &["delete", full]));
    assert!(out.contains("deleted"), "{out}");
    assert!(!ok(&token(&server, &["list"])).contains(id));
    let (code, body) = join(&server, full);
    assert_eq!(code, 401);
    let message = body["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains(&format!("bootstrap token {id} does not exist")),
        "{body}"
    );
    let err = agent_refused(&server, full);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("401") && err.contains(&message), "{err}");
    let out = token(&server, &["delete", id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");

    // A token past its expiration is refused, and listed as such.
    let short = ok(&token(
        &server,
        &[
            "create",
            "--ttl",
            "1s",
            "--token",
            "short1.0123456789abcdef",
        ],
    ));
    assert!(
        short.trim().ends_with("::short1.0123456789abcdef"),
        "{short}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, body) = join(&server, "short1.0123456789abcdef");
    assert_eq!(code, 401);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired at"),
        "{body}"
    );
    let err = agent_refused(&server, short.trim());
    assert!(err.contains("401") && err.contains("expired at"), "{err}");
    let list = ok(&token(&server, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("short1") && l.contains("<invalid>")),
        "{list}"
    );

    // A token that never expires; mistakes get one line each.
    let forever = ok(&token(&server, &["create", "--ttl", "0"]));
    let forever_id = &forever.trim().rsplit("::").next().expect("token")[..6];
    assert!(ok(&token(&server, &["list"]))
        .lines()
        .any(|l| l.starts_with(forever_id) && l.contains("<forever>")));
    let out = token(&server, &["create", "--token", "short1.0123456789abcdef"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    let out = token(&server, &["create", "--ttl", "1d"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a duration"));
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["token", "list", "--kubeconfig", "/nonexistent"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot read the kubeconfig /nonexistent"),
        "{err}"
    );
}

/// The full token in `file` of the server's data dir.
fn token_file(server: &Server, file: &str) -> String {
    std::fs::read_to_string(server.data_dir().join("server").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn the_agent_token_joins_agents_but_never_servers() {
    let peer = free_port().to_string();
    let server = Server::start_with(&[
        "--cluster-init",
        "--peer-port",
        &peer,
        "--agent-token",
        "agent-secret-17",
    ]);
    let server_token = token_file(&server, "token");
    let agent_token = token_file(&server, "agent-token");
    let ca_part = server_token.split("::").next().expect("K10 prefix");
    assert_eq!(agent_token, format!("{ca_part}::node:agent-secret-17"));
    assert!(server_token.contains("::server:"), "{server_token}");

    // Agents: the agent token (full or bare), the server token (as in k3s), bootstrap tokens.
    let bootstrap = ok(&token(&server, &["create"]));
    let bootstrap = bootstrap.trim();
    for t in [
        agent_token.as_str(),
        "agent-secret-17",
        server_token.as_str(),
        bootstrap,
    ] {
        assert_eq!(join(&server, t).0, 200, "{t}");
    }

    // Servers: only the server token opens the endpoint that hands out the CA key.
    let fetch = |t: &str| post_bearer(&server, "/v1-pikube/server/bootstrap", t, &json!({}));
    let (code, body) = fetch(&server_token);
    assert_eq!(code, 200, "{body}");
    assert!(
        body["ca"]["key_pem"]
            .as_str()
            .unwrap_or_default()
            .contains("PRIVATE KEY"),
        "{body}"
    );
    assert_eq!(
        body["agentToken"], "agent-secret-17",
        "joining servers take the cluster's agent token"
    );
    for t in [agent_token.as_str(), "agent-secret-17", bootstrap] {
        let (code, body) = fetch(t);
        assert_eq!(code, 401, "{t}: {body}");
        assert!(body.get("ca").is_none(), "{body}");
    }
    // An agent token that is the server token would give agents the CA key: refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_pikube"))
        .args(["server", "--config", "/dev/null", "--disable-agent"])
        .args(["--token", "same-17", "--agent-token", "same-17"])
        .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .output()
        .expect("run pikube server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the agent token must differ from the server token"),
        "{err}"
    );

    let member = json!({"id": 7, "peerAddress": "127.0.0.1:1"});
    let (code, _) = post_bearer(&server, "/v1-pikube/server/member", &agent_token, &member);
    assert_eq!(code, 401);
}
