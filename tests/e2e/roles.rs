//! k3s' node roles: a server's own Node carries `node-role.kubernetes.io/*` labels, so
//! `kubectl get nodes` shows ROLES as on k3s (`etcd` too when its store is replicated),
//! kept when the Node registers again; an agent's Node has none and cannot claim one.

use std::process::Command;

use serde_json::Value;

use crate::harness::{free_port, get_json, wait_for, Server};
use crate::join::Agent;

/// The ROLES column of `name` in `kubectl get nodes`.
fn roles(server: &Server, name: &str) -> String {
    let nodes = server.ok("1.33", &["get", "nodes"]);
    let row = nodes
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in:\n{nodes}"));
    row.split_whitespace().nth(2).unwrap_or("").to_string()
}

fn node(server: &Server, name: &str) -> Option<Value> {
    let out = server.kubectl("1.33", &["get", "node", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn server_nodes_show_k3s_roles_and_agents_none() {
    let peer = free_port().to_string();
    let server = Server::start_node(29, &["--cluster-init", "--peer-port", &peer]);
    server.wait_node_ready("node29");
    let token = std::fs::read_to_string(server.data_dir().join("server/agent-token"))
        .expect("agent token")
        .trim()
        .to_string();
    let agent = Agent::start(&server, &token, 30);
    wait_for(60, "agent30 to register", || node(&server, "agent30"));
    // The server's cluster range is the one /24 of its own node: the agent gets this
    // test's other range by hand.
    server.ok(
        "1.33",
        &[
            "patch",
            "node",
            "agent30",
            "--type=merge",
            "-p",
            r#"{"spec":{"podCIDR":"10.42.130.0/24","podCIDRs":["10.42.130.0/24"]}}"#,
        ],
    );

    // A server of a replicated store: as a k3s server with embedded etcd.
    assert_eq!(roles(&server, "node29"), "control-plane,etcd,master");
    assert_eq!(roles(&server, "agent30"), "<none>", "{}", agent.log());
    let labels =
        &get_json(&server, &["get", "node", "agent30", "-o", "json"])["metadata"]["labels"];
    let claimed: Vec<&String> = labels
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| k.starts_with("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    assert!(claimed.is_empty(), "{labels}");

    // Deleted, the server's Node registers again (at its next heartbeat) with its roles.
    let before = node(&server, "node29").expect("node29");
    server.ok("1.33", &["delete", "node", "node29"]);
    let again = wait_for(40, "node29 to register again", || {
        node(&server, "node29").filter(|n| n["metadata"]["uid"] != before["metadata"]["uid"])
    });
    for role in ["control-plane", "master", "etcd"] {
        assert_eq!(
            again["metadata"]["labels"][format!("node-role.kubernetes.io/{role}")],
            "true",
            "{again}"
        );
    }
    assert_eq!(roles(&server, "node29"), "control-plane,etcd,master");

    // A node does not give itself a role (kubelet refuses such --node-labels).
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["agent", "--config", "/dev/null", "--server"])
        .arg(format!("https://127.0.0.1:{}", server.port))
        .args(["--token", &token, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["--node-label", "node-role.kubernetes.io/worker=true"])
        .output()
        .expect("run pikube agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("node-role.kubernetes.io/worker")
            && err.contains("may not set node-role labels"),
        "{err}"
    );
}
