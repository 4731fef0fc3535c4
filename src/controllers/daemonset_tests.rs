//! Unit tests of the DaemonSet controller's decisions: eligibility, placement, rolling
//! update steps and status.

use super::*;
use serde_json::{json, Value};

fn node(name: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    });
    json_patch::merge(&mut n, &extra);
    serde_json::from_value(n).expect("node")
}

fn template(extra: Value) -> PodTemplateSpec {
    let mut t = json!({
        "metadata": {"labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "c", "image": "v1"}]},
    });
    json_patch::merge(&mut t, &extra);
    serde_json::from_value(t).expect("template")
}

/// A daemon pod on `node` with hash `hash`, Ready (since long ago) or not.
fn pod(name: &str, node: &str, hash: &str, ready: bool, created: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "agent", HASH_LABEL: hash},
            "creationTimestamp": created},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready",
            "status": if ready { "True" } else { "False" },
            "lastTransitionTime": "2020-01-01T00:00:00Z"}]},
    }))
    .expect("pod")
}

fn spec(strategy: Value) -> DaemonSetSpec {
    serde_json::from_value(json!({
        "selector": {"matchLabels": {"app": "agent"}},
        "template": serde_json::to_value(template(json!({}))).expect("json"),
        "updateStrategy": strategy,
    }))
    .expect("spec")
}

#[test]
fn taints_need_tolerations_and_daemon_tolerations_cover_node_problems() {
    let t = template(json!({}));
    assert_eq!(should_run(&t, &node("a", json!({}))), (true, true));
    let tainted = node(
        "b",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
    );
    // NoSchedule keeps new pods off but lets a running one stay.
    assert_eq!(should_run(&t, &tainted), (false, true));
    let evicting = node(
        "b",
        json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoExecute"}]}}),
    );
    assert_eq!(should_run(&t, &evicting), (false, false));
    let tolerant = template(json!({"spec": {"tolerations": [
        {"key": "dedicated", "operator": "Exists"}]}}));
    assert_eq!(should_run(&tolerant, &tainted), (true, true));
    assert_eq!(should_run(&tolerant, &evicting), (true, true));
    // Cordoned and pressured nodes still run daemons.
    let cordoned = node(
        "c",
        json!({"spec": {"unschedulable": true}, "status": {"conditions": [
        {"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "True"}]}}),
    );
    assert_eq!(should_run(&t, &cordoned), (true, true));
    // A node that is not ready takes no new daemon pod; one there may stay.
    let not_ready = node(
        "d",
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    assert_eq!(should_run(&t, &not_ready), (false, true));
    let unreachable = node(
        "e",
        json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
    );
    assert_eq!(should_run(&t, &unreachable), (false, true));
}

#[test]
fn node_selector_and_affinity_choose_nodes() {
    let pi = node("pi", json!({"metadata": {"labels": {"arch": "arm64"}}}));
    let pc = node("pc", json!({"metadata": {"labels": {"arch": "amd64"}}}));
    let sel = template(json!({"spec": {"nodeSelector": {"arch": "arm64"}}}));
    assert!(should_run(&sel, &pi).0);
    assert_eq!(should_run(&sel, &pc), (false, false));
    let aff = template(json!({"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "arch", "operator": "NotIn", "values": ["arm64"]}]}]}}}}}));
    assert_eq!(should_run(&aff, &pi), (false, false));
    assert!(should_run(&aff, &pc).0);
    let named = template(json!({"spec": {"nodeName": "pc"}}));
    assert!(!should_run(&named, &pi).0);
    assert!(should_run(&named, &pc).0);
}

#[test]
fn pods_are_pinned_to_their_node() {
    let t = template(json!({"spec": {
        "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["arm64"]}]}]}}}}}));
    let p = pod_for_node(&t, "h1", "pi");
    let labels = p.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap();
    assert_eq!(labels.get(HASH_LABEL).map(String::as_str), Some("h1"));
    let spec = p.spec.clone().unwrap();
    let tolerations = spec.tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 6, "{tolerations:?}");
    assert!(tolerations.iter().all(|t| t.toleration_seconds.is_none()));
    let pod = Pod {
        metadata: Default::default(),
        spec: Some(spec),
        status: None,
    };
    assert_eq!(target_node(&pod).as_deref(), Some("pi"));
}

#[test]
fn manage_places_one_pod_per_eligible_node() {
    let t = template(json!({}));
    let nodes = vec![
        node("a", json!({})),
        node("b", json!({})),
        node(
            "tainted",
            json!({"spec": {"taints": [{"key": "x", "effect": "NoExecute"}]}}),
        ),
    ];
    let pods = [
        pod("p1", "a", "h", true, "2020-01-01T00:00:00Z"),
        pod("p2", "a", "h", true, "2020-01-02T00:00:00Z"),
        pod("p3", "tainted", "h", true, "2020-01-01T00:00:00Z"),
        pod("p4", "gone", "h", true, "2020-01-01T00:00:00Z"),
    ];
    let grouped = by_node(&pods);
    let plan = manage(&t, &nodes, &grouped, "h", false);
    assert_eq!(plan.create, vec!["b"]);
    // The newer duplicate, the pod on the node it can't stay on, the one on no node.
    let mut deleted = plan.delete.clone();
    deleted.sort();
    assert_eq!(deleted, vec!["p2", "p3", "p4"]);
}

#[test]
fn surge_keeps_an_old_pod_until_the_new_one_is_ready() {
    let t = template(json!({}));
    let nodes = vec![node("a", json!({}))];
    let pods = [
        pod("old", "a", "h1", true, "2020-01-01T00:00:00Z"),
        pod("new", "a", "h2", false, "2020-01-02T00:00:00Z"),
    ];
    let plan = manage(&t, &nodes, &by_node(&pods), "h2", true);
    assert!(plan.delete.is_empty(), "{plan:?}");
    let pods = [
        pod("old", "a", "h1", true, "2020-01-01T00:00:00Z"),
        pod("new", "a", "h2", true, "2020-01-02T00:00:00Z"),
    ];
    let plan = manage(&t, &nodes, &by_node(&pods), "h2", true);
    assert_eq!(plan.delete, vec!["old"]);
}

#[test]
fn rolling_update_respects_max_unavailable() {
    let nodes: Vec<Node> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| node(n, json!({})))
        .collect();
    let now = Timestamp::now();
    let s = spec(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}));
    let all_old: Vec<Pod> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| pod(&format!("p-{n}"), n, "old", true, "2020-01-01T00:00:00Z"))
        .collect();
    let plan = rolling_update(&s, &nodes, &by_node(&all_old), "new", now);
    assert_eq!(plan.delete.len(), 1, "{plan:?}");
    // One node is already being replaced (no pod): nothing more may go.
    let three_old = &all_old[1..];
    let plan = rolling_update(&s, &nodes, &by_node(three_old), "new", now);
    assert!(plan.is_empty(), "{plan:?}");
    // An unavailable old pod may always be replaced.
    let mut mixed = three_old.to_vec();
    mixed.push(pod("p-a", "a", "new", true, "2020-01-01T00:00:00Z"));
    mixed[0] = pod("p-b", "b", "old", false, "2020-01-01T00:00:00Z");
    let plan = rolling_update(&s, &nodes, &by_node(&mixed), "new", now);
    assert_eq!(plan.delete, vec!["p-b", "p-c"]);
    // maxUnavailable as a percentage rounds up.
    let s = spec(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "30%"}}));
    assert_eq!(surge_and_unavailable(&s, 4), (0, 2));
}

#[test]
fn rolling_update_with_surge_starts_new_pods_first() {
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| node(n, json!({}))).collect();
    let now = Timestamp::now();
    let s = spec(
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
    );
    let old: Vec<Pod> = ["a", "b"]
        .iter()
        .map(|n| pod(&format!("p-{n}"), n, "old", true, "2020-01-01T00:00:00Z"))
        .collect();
    let plan = rolling_update(&s, &nodes, &by_node(&old), "new", now);
    assert_eq!(plan.create.len(), 1, "{plan:?}");
    assert!(plan.delete.is_empty());
    let mut surged = old.clone();
    surged.push(pod("n-a", "a", "new", true, "2020-01-02T00:00:00Z"));
    let plan = rolling_update(&s, &nodes, &by_node(&surged), "new", now);
    assert_eq!(plan.delete, vec!["p-a"]);
    assert_eq!(plan.create, vec!["b"]);
}

#[test]
fn status_counts_like_kubectl_shows() {
    let nodes = vec![
        node("a", json!({})),
        node("b", json!({})),
        node(
            "tainted",
            json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
        ),
    ];
    let pods = [
        pod("p-a", "a", "new", true, "2020-01-01T00:00:00Z"),
        pod("p-b", "b", "old", false, "2020-01-01T00:00:00Z"),
        pod("p-t", "tainted", "new", true, "2020-01-01T00:00:00Z"),
    ];
    let ds = DaemonSet {
        metadata: kube::api::ObjectMeta {
            generation: Some(3),
            ..Default::default()
        },
        spec: Some(spec(json!({"type": "RollingUpdate"}))),
        status: None,
    };
    let st = status(&ds, &nodes, &by_node(&pods), "new", None, Timestamp::now());
    assert_eq!(st.desired_number_scheduled, 2);
    assert_eq!(st.current_number_scheduled, 2);
    assert_eq!(st.number_ready, 1);
    assert_eq!(st.number_available, Some(1));
    assert_eq!(st.updated_number_scheduled, Some(1));
    assert_eq!(st.number_misscheduled, 1);
    assert_eq!(st.number_unavailable, Some(1));
    assert_eq!(st.observed_generation, Some(3));
}

#[test]
fn placement_ignores_heartbeats_and_sees_labels_taints_and_conditions() {
    let status = |beat: &str, ready: &str| {
        json!({"metadata": {"labels": {"disk": "ssd"}, "resourceVersion": beat},
            "status": {"conditions": [{"type": "Ready", "status": ready,
            "lastHeartbeatTime": beat}]}})
    };
    let base = placement(&node("a", status("2026-01-01T00:00:00Z", "True")));
    assert_eq!(
        base,
        placement(&node("a", status("2026-01-01T00:05:00Z", "True"))),
        "a heartbeat changes nothing"
    );
    assert_ne!(
        base,
        placement(&node("a", status("2026-01-01T00:05:00Z", "Unknown")))
    );
    let mut relabelled = node("a", status("2026-01-01T00:00:00Z", "True"));
    relabelled
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("disk".into(), "hdd".into());
    assert_ne!(base, placement(&relabelled));
    let mut cordoned = node("a", status("2026-01-01T00:00:00Z", "True"));
    cordoned
        .spec
        .get_or_insert_with(Default::default)
        .unschedulable = Some(true);
    assert_ne!(base, placement(&cordoned));
}
