//! Several servers of one cluster on loopback: the first starts it (`--cluster-init`),
//! two more join it with its token; every server serves the same objects, control loops
//! run once, and the cluster keeps serving when a server dies and takes it back.

use std::process::Command;
use std::time::Duration;

use crate::harness::{free_port, get_json, wait_for, Server};

fn configmap(server: &Server, name: &str, value: &str) -> Result<(), String> {
    let file = server.file(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: \"{value}\"\n"
        ),
    );
    let out = server.kubectl("1.33", &["apply", "-f", file.to_str().unwrap_or_default()]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn read_configmap(server: &Server, name: &str) -> Option<String> {
    let out = server.kubectl(
        "1.33",
        &["get", "configmap", name, "-o", "jsonpath={.data.v}"],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn three_servers_share_one_store_and_survive_losing_one() {
    let peer1 = free_port().to_string();
    let mut s1 = Server::start_with(&["--cluster-init", "--peer-port", &peer1]);
    let token = std::fs::read_to_string(s1.data_dir().join("server/token"))
        .expect("token file")
        .trim()
        .to_string();
    let url = format!("https://127.0.0.1:{}", s1.port);
    let agent_token = |s: &Server| {
        std::fs::read_to_string(s.data_dir().join("server/agent-token")).expect("agent token file")
    };

    // A wrong token is refused with one line and the server does not start; so is the
    // agent token, which joins agents only.
    for wrong in ["wrong-secret", agent_token(&s1).trim()] {
        let bad = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .args([
                "server",
                "--config",
                "/dev/null",
                "--disable-agent",
                "--disable",
                "dns",
            ])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--https-listen-port",
                &free_port().to_string(),
            ])
            .args([
                "--peer-port",
                &free_port().to_string(),
                "--server",
                &url,
                "--token",
                wrong,
            ])
            .arg("--data-dir")
            .arg(bad.path().join("data"))
            .arg("--write-kubeconfig")
            .arg(bad.path().join("kubeconfig"))
            .output()
            .expect("run pikube");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401") || err.contains("refused"), "{err}");
    }

    let peer2 = free_port().to_string();
    let peer3 = free_port().to_string();
    let s2 = Server::start_with(&["--server", &url, "--token", &token, "--peer-port", &peer2]);
    let s3 = Server::start_with(&["--server", &url, "--token", &token, "--peer-port", &peer3]);
    // Every server takes the cluster's agent token: agents join through any of them.
    assert_eq!(agent_token(&s2), agent_token(&s1));
    assert_eq!(agent_token(&s3), agent_token(&s1));
    // And the service-account signing key: a token one server issues works on the others.
    let sa_token = wait_for(30, "a token of the default ServiceAccount", || {
        let out = s1.kubectl("1.33", &["create", "token", "default"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    for s in [&s2, &s3] {
        let user = crate::service_accounts::whoami(s, &sa_token).expect("token accepted");
        assert_eq!(user["username"], "system:serviceaccount:default:default");
    }

    // One store: written on one server, read on every other.
    configmap(&s2, "one", "1").expect("write through server 2");
    assert_eq!(read_configmap(&s3, "one").as_deref(), Some("1"));
    assert_eq!(read_configmap(&s1, "one").as_deref(), Some("1"));

    // Control loops run once, on the store's leader: one Deployment, one ReplicaSet.
    let deploy = s3.file(
        "d.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: c\n        image: localhost/busybox:1.35\n",
    );
    s3.ok(
        "1.33",
        &["apply", "-f", deploy.to_str().unwrap_or_default()],
    );
    wait_for(30, "a ReplicaSet for the Deployment", || {
        let rs = get_json(&s2, &["get", "rs", "-o", "json"]);
        (rs["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let rs = get_json(&s1, &["get", "rs", "-o", "json"]);
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(1), "{rs}");

    // The first server dies: the other two elect a leader and go on.
    s1.stop();
    wait_for(60, "a write after losing a server", || {
        configmap(&s2, "two", "2").ok()
    });
    assert_eq!(read_configmap(&s3, "two").as_deref(), Some("2"));

    // It comes back on its data dir and catches up.
    s1.restart();
    wait_for(60, "the returning server to catch up", || {
        (read_configmap(&s1, "two").as_deref() == Some("2")).then_some(())
    });
    configmap(&s1, "three", "3").expect("write through the returning server");
    assert_eq!(read_configmap(&s2, "three").as_deref(), Some("3"));
}
