//! Node heartbeats with a real agent: the Lease is the heartbeat, so a live, unchanged
//! node is not written at all while the node lifecycle controller still sees it alive;
//! an agent that stops is marked Ready=Unknown and tainted after the grace period, and
//! comes back Ready when it returns; the node lifecycle controller's Events tell it. The
//! server's own Node shows k3s' roles.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{describe_showing, get_json, wait_for, Server};

fn node(server: &Server) -> Value {
    get_json(server, &["get", "node", "node20", "-o", "json"])
}

fn ready(node: &Value) -> Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null)
}

fn renew_time(server: &Server) -> String {
    let lease = get_json(
        server,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "node20",
            "-o",
            "json",
        ],
    );
    lease["spec"]["renewTime"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn unreachable(node: &Value) -> bool {
    node["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable")
    })
}

#[test]
fn a_live_node_beats_by_its_lease_and_a_stopped_agent_goes_unknown() {
    let mut server = Server::start_node(20, &["--node-monitor-grace-period", "15"]);
    server.wait_node_ready("node20");
    // A single server (one-node store) is `control-plane,master`, as k3s with SQLite.
    let nodes = server.ok("1.33", &["get", "nodes"]);
    let row = nodes
        .lines()
        .find(|l| l.starts_with("node20 "))
        .unwrap_or("");
    assert_eq!(
        row.split_whitespace().nth(2),
        Some("control-plane,master"),
        "{nodes}"
    );
    // Start-up writes (registration, pod CIDR, first statuses) settle.
    std::thread::sleep(Duration::from_secs(3));
    let before = node(&server);
    let renewed = renew_time(&server);
    // Longer than the grace period and two Lease periods.
    std::thread::sleep(Duration::from_secs(22));
    let after = node(&server);
    assert_eq!(ready(&after)["status"], "True", "{after}");
    assert!(!unreachable(&after), "{after}");
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "an unchanged node was written: {before}\n{after}"
    );
    assert_ne!(renew_time(&server), renewed, "the Lease was not renewed");

    // A pod that tolerates the unreachable taint for 300 s (the default) rides out the
    // outage below: its scheduled deletion is cancelled.
    server.ok(
        "1.33",
        &[
            "run",
            "keep",
            "--image=localhost/busybox:1.35",
            "--image-pull-policy=Never",
            "--",
            "sleep",
            "3600",
        ],
    );
    server.ok(
        "1.33",
        &["wait", "--for=condition=Ready", "pod/keep", "--timeout=60s"],
    );
    // The agent stops; the API server and controllers run on.
    server.restart_without_agent();
    let gone = wait_for(60, "the silent node to become Unknown", || {
        let n = node(&server);
        (ready(&n)["status"] == "Unknown" && unreachable(&n)).then_some(n)
    });
    assert_eq!(ready(&gone)["reason"], "NodeStatusUnknown", "{gone}");
    describe_showing(
        &server,
        &["node", "node20"],
        "NodeNotReady",
        &["node-controller  Node node20 status is now: NodeNotReady"],
    );

    // It comes back: the changed status is posted at once, the taint goes.
    server.restart();
    wait_for(60, "the node to report Ready again", || {
        let n = node(&server);
        (ready(&n)["status"] == "True" && !unreachable(&n)).then_some(())
    });
    let pod = get_json(&server, &["get", "pod", "keep", "-o", "json"]);
    assert!(pod["metadata"]["deletionTimestamp"].is_null(), "{pod}");
    describe_showing(
        &server,
        &["pod", "keep"],
        "Cancelling deletion",
        &[
            "TaintManagerEviction  ",
            "taint-eviction-controller  Cancelling deletion of Pod default/keep",
        ],
    );
    // Registration after the restart kept the roles.
    let labels = node(&server)["metadata"]["labels"].clone();
    assert_eq!(
        labels["node-role.kubernetes.io/control-plane"], "true",
        "{labels}"
    );
    assert_eq!(labels["node-role.kubernetes.io/master"], "true", "{labels}");
    assert!(labels["node-role.kubernetes.io/etcd"].is_null(), "{labels}");
}
