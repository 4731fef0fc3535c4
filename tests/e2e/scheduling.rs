//! Pod affinity, anti-affinity and topology spread with simulated nodes in two zones,
//! driven by the real kubectl: where Deployments' pods land, and what kubectl shows for
//! the ones that cannot land.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{get_json, s, wait_for, Server};
use crate::sim::{Sim, SimNode};

const ZONE: &str = "topology.kubernetes.io/zone";

/// Three simulated nodes: sched-a and sched-b in zone z1, sched-c in z2.
fn zoned_cluster(server: &Server) -> Sim {
    let node = |name: &str, zone: &str| {
        let mut n = SimNode::new(name);
        n.labels.push((ZONE.to_string(), zone.to_string()));
        n
    };
    Sim::start(
        server,
        vec![
            node("sched-a", "z1"),
            node("sched-b", "z1"),
            node("sched-c", "z2"),
        ],
        Duration::from_millis(200),
    )
}

/// Applies a Deployment `name` (label app=name) of `replicas` with `spec` merged into
/// its pod spec.
fn deploy(server: &Server, name: &str, replicas: u32, spec: Value) {
    let mut pod_spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    json_patch::merge(&mut pod_spec, &spec);
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    });
    let f = server.file(&format!("{name}.json"), &d.to_string());
    server.ok("1.33", &["apply", "-f", s(&f)]);
}

/// The nodes of the bound pods of app `app`, once `want` of them are bound.
fn placements(server: &Server, app: &str, want: usize) -> Vec<String> {
    wait_for(60, &format!("{want} pods of {app} bound"), || {
        let pods = get_json(
            server,
            &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
        );
        let mut nodes: Vec<String> = pods["items"]
            .as_array()?
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        nodes.sort();
        (nodes.len() == want).then_some(nodes)
    })
}

/// The name and PodScheduled message of an unbound pod of app `app` that the scheduler
/// marked Unschedulable, once there is one.
fn waiting_pod(server: &Server, app: &str) -> (String, String) {
    let label = format!("app={app}");
    wait_for(30, &format!("an unschedulable {app} pod"), || {
        let pods = get_json(
            server,
            &[
                "get",
                "pods",
                "-l",
                &label,
                "--field-selector",
                "spec.nodeName=",
                "-o",
                "json",
            ],
        );
        pods["items"].as_array()?.iter().find_map(|p| {
            let c = p["status"]["conditions"].as_array()?.iter().find(|c| {
                c["type"] == "PodScheduled"
                    && c["status"] == "False"
                    && c["reason"] == "Unschedulable"
            })?;
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                c["message"].as_str()?.to_string(),
            ))
        })
    })
}

fn selector(app: &str) -> Value {
    json!({"matchLabels": {"app": app}})
}

#[test]
fn anti_affinity_spreads_one_per_node_and_affinity_co_locates() {
    let server = Server::start();
    let _sim = zoned_cluster(&server);

    // Required anti-affinity on the hostname: one pod per node, the fourth waits. The
    // term also names app=twin pods, which have no term of their own.
    let solo_or_twin = json!({"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["solo", "twin"]}]});
    deploy(
        &server,
        "solo",
        4,
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": solo_or_twin, "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    let nodes = placements(&server, "solo", 3);
    assert_eq!(nodes, vec!["sched-a", "sched-b", "sched-c"]);
    let (name, message) = waiting_pod(&server, "solo");
    let want = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.";
    assert!(message.starts_with(want), "{message}");
    let described = wait_for(30, "FailedScheduling in describe", || {
        let out = server.ok("1.33", &["describe", "pod", &name]);
        out.contains("FailedScheduling").then_some(out)
    });
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Status:") && l.trim_end().ends_with("Pending")),
        "{described}"
    );
    assert!(described.contains(want), "{described}");
    assert!(described.contains("default-scheduler"), "{described}");

    // A plain pod that the placed pods' anti-affinity matches is kept away too.
    let twin = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "twin", "labels": {"app": "twin"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    let f = server.file("twin.json", &twin.to_string());
    server.ok("1.27", &["create", "-f", s(&f)]);
    let (_, message) = waiting_pod(&server, "twin");
    assert!(
        message.starts_with(
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        ),
        "{message}"
    );

    // Required affinity: every web pod joins the cache pod's node; the cache pod, first
    // of a group with affinity to itself, may land anywhere.
    deploy(
        &server,
        "cache",
        1,
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector("cache"), "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    let cache = placements(&server, "cache", 1).remove(0);
    deploy(
        &server,
        "web",
        4,
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector("cache"), "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    let web = placements(&server, "web", 4);
    assert_eq!(web, vec![cache.clone(); 4]);
    server.ok("1.33", &["scale", "deployment", "cache", "--replicas=3"]);
    assert_eq!(placements(&server, "cache", 3), vec![cache; 3]);
}

#[test]
fn do_not_schedule_spread_keeps_zone_skew_within_max() {
    let server = Server::start();
    let _sim = zoned_cluster(&server);
    // Zone z1 has two nodes, z2 one: balance by node alone would put 4 of 6 in z1.
    deploy(
        &server,
        "spread",
        6,
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector("spread")}]}),
    );
    let nodes = placements(&server, "spread", 6);
    let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &nodes {
        *zones
            .entry(if n == "sched-c" { "z2" } else { "z1" })
            .or_default() += 1;
    }
    assert_eq!(zones.get("z1"), Some(&3), "{nodes:?}");
    assert_eq!(zones.get("z2"), Some(&3), "{nodes:?}");

    // Cordoning z2 leaves no room within the skew for a seventh pod.
    server.ok("1.33", &["cordon", "sched-c"]);
    server.ok("1.33", &["scale", "deployment", "spread", "--replicas=8"]);
    let nodes = placements(&server, "spread", 7);
    let z1 = nodes.iter().filter(|n| *n != "sched-c").count();
    assert_eq!(z1, 4, "{nodes:?}");
    let (_, message) = waiting_pod(&server, "spread");
    assert!(
        message.starts_with("0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match pod topology spread constraints."),
        "{message}"
    );
    // Uncordoned, z2 takes the pod that waited.
    server.ok("1.33", &["uncordon", "sched-c"]);
    let nodes = placements(&server, "spread", 8);
    assert_eq!(
        nodes.iter().filter(|n| *n == "sched-c").count(),
        4,
        "{nodes:?}"
    );
}
