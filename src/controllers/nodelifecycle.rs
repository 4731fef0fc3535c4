//! The node lifecycle controller: a node whose agent has not renewed its Lease (or
//! posted its status) for the grace period becomes Ready=Unknown with the
//! `node.kubernetes.io/unreachable` taints. The Lease (renewed every 10 s) is the
//! heartbeat: agents post an unchanged status only every 5 minutes, so the newer of the
//! Lease's `renewTime` and the Ready condition's `lastHeartbeatTime` counts, as in
//! kube-controller-manager. The pods of an unreachable node are evicted once their
//! toleration of that taint runs out (300 s for pods that name none, as kube-apiserver's
//! DefaultTolerationSeconds gives them). A node that reports again loses the taints.
//!
//! Events as kube-controller-manager records them: on Nodes, `RegisteredNode` and
//! `RemovingNode` as the controller first sees or loses one and `NodeNotReady` when it
//! marks one Unknown (`node-controller`); on pods, `TaintManagerEviction` when one is
//! deleted for the taint and when a scheduled deletion is cancelled because the node came
//! back (`taint-eviction-controller`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::Result;
use crate::events::{Kind, Recorder};

/// The taint of a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The component that records Node events (kube-controller-manager's node lifecycle
/// controller).
pub const COMPONENT: &str = "node-controller";
/// The component that records eviction events on pods (kube-controller-manager's
/// taint eviction controller).
pub const EVICTION_COMPONENT: &str = "taint-eviction-controller";

/// The recorders of the two kube-controller-manager components whose work this does.
struct Events {
    node: Recorder,
    eviction: Recorder,
}

impl Events {
    /// `Node <name> event: <event>`, as kube's `RecordNodeEvent`.
    fn node_event(&self, node: &Node, reason: &str, event: &str) {
        let message = format!("Node {} event: {event}", node.name_any());
        self.node.record(node, None, Kind::Normal, reason, &message);
    }

    /// `Node <name> status is now: <status>`, as kube's `RecordNodeStatusChange`.
    fn status_change(&self, node: &Node, status: &str) {
        let message = format!("Node {} status is now: {status}", node.name_any());
        self.node.record(node, None, Kind::Normal, status, &message);
    }

    /// `TaintManagerEviction` on `pod`: `Marking for deletion Pod ns/name`, or
    /// `Cancelling deletion of Pod ns/name`.
    fn eviction(&self, pod: &Pod, what: &str) {
        let message = format!(
            "{what} Pod {}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        );
        self.eviction
            .record(pod, None, Kind::Normal, "TaintManagerEviction", &message);
    }
}

/// A node's taints as Kubernetes would show them: its own, plus the NoSchedule taints
/// kube's node lifecycle controller derives from conditions and cordoning
/// (TaintNodesByCondition: `not-ready`, `unreachable`, `memory-pressure`,
/// `disk-pressure`, `pid-pressure`, `network-unavailable`, `unschedulable`), which
/// pikube does not write to the Node. DaemonSets decide where to run by these.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let status = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.as_str())
    };
    let mut derived = Vec::new();
    match status("Ready") {
        Some("True") => {}
        Some("Unknown") => derived.push(UNREACHABLE),
        _ => derived.push("node.kubernetes.io/not-ready"),
    }
    for (cond, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if status(cond) == Some("True") {
            derived.push(key);
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        derived.push("node.kubernetes.io/unschedulable");
    }
    for key in derived {
        if !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                time_added: None,
                value: None,
            });
        }
    }
    taints
}

/// Timing of the controller.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Silence after which a node is unreachable (kube-controller-manager's
    /// `--node-monitor-grace-period`, 40 s).
    pub grace: Duration,
    /// How long pods without their own toleration stay on an unreachable node (300 s).
    pub default_toleration: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
        }
    }
}

/// Runs the controller until `shutdown` fires. Nodes and Leases come from reflectors, so
/// a pass (every grace/4, at most 5 s) reads caches instead of listing both kinds.
pub async fn run(client: Client, timing: Timing, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let period = (timing.grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let feeds = futures::future::join(
        reflector::reflector(
            node_writer,
            watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| std::future::ready(())),
        reflector::reflector(
            lease_writer,
            watcher(
                Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(|_| std::future::ready(())),
    );
    tokio::pin!(feeds);
    let ready = async {
        let _ = nodes.wait_until_ready().await;
        let _ = leases.wait_until_ready().await;
    };
    tokio::select! {
        _ = ready => {}
        _ = &mut feeds => return,
        _ = shutdown.changed() => return,
    }
    let events = Events {
        node: Recorder::new(client.clone(), COMPONENT, None),
        eviction: Recorder::new(client.clone(), EVICTION_COMPONENT, None),
    };
    // The nodes this controller has seen (name → uid), for RegisteredNode/RemovingNode.
    let mut known: HashMap<String, Option<String>> = HashMap::new();
    loop {
        let leases: HashMap<String, Lease> = leases
            .state()
            .iter()
            .map(|l| (l.name_any(), Lease::clone(l)))
            .collect();
        let cached = nodes.state();
        observe(&events, &cached, &mut known);
        if let Err(e) = pass(&client, &events, &cached, &leases, timing).await {
            tracing::debug!(error = %e, "node lifecycle pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = &mut feeds => return,
            _ = shutdown.changed() => return,
        }
    }
}

fn last_heard(node: &Node, leases: &HashMap<String, Lease>) -> Option<Timestamp> {
    let lease = leases
        .get(&node.name_any())
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let status = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    lease
        .max(status)
        .or(node.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Records `RegisteredNode` for nodes new to the controller and `RemovingNode` for
/// those gone (kube's lifecycle controller does so for every node it finds at start).
fn observe(events: &Events, cached: &[Arc<Node>], known: &mut HashMap<String, Option<String>>) {
    let mut present = std::collections::HashSet::new();
    for node in cached {
        let name = node.name_any();
        if let std::collections::hash_map::Entry::Vacant(e) = known.entry(name.clone()) {
            let event = format!("Registered Node {name} in Controller");
            events.node_event(node, "RegisteredNode", &event);
            e.insert(node.uid());
        }
        present.insert(name);
    }
    known.retain(|name, uid| {
        if present.contains(name) {
            return true;
        }
        let mut gone = Node::default();
        gone.metadata.name = Some(name.clone());
        gone.metadata.uid = uid.clone();
        let event = format!("Removing Node {name} from Controller");
        events.node_event(&gone, "RemovingNode", &event);
        false
    });
}

fn secs(d: Duration) -> SignedDuration {
    SignedDuration::from_millis(d.as_millis() as i64)
}

/// One look at every cached node: silent ones are marked and tainted, their pods evicted
/// when due; nodes that report again lose the taint.
async fn pass(
    client: &Client,
    events: &Events,
    cached: &[Arc<Node>],
    leases: &HashMap<String, Lease>,
    timing: Timing,
) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let now = Timestamp::now();
    for node in cached {
        let name = node.name_any();
        let silent = last_heard(node, leases)
            .and_then(|t| t.checked_add(secs(timing.grace)).ok())
            .is_some_and(|deadline| deadline < now);
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let tainted = taints.iter().any(|t| t.key == UNREACHABLE);
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        if silent {
            if ready.as_deref() != Some("Unknown") {
                let stamp = Time(now);
                let patch = json!({"status": {"conditions": [{
                    "type": "Ready",
                    "status": "Unknown",
                    "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastTransitionTime": stamp,
                }]}});
                nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                    .await?;
                if ready.as_deref() == Some("True") {
                    events.status_change(node, "NodeNotReady");
                }
            }
            if !tainted {
                let mut next = taints.clone();
                for effect in ["NoSchedule", "NoExecute"] {
                    next.push(Taint {
                        key: UNREACHABLE.into(),
                        effect: effect.into(),
                        time_added: (effect == "NoExecute").then_some(Time(now)),
                        value: None,
                    });
                }
                set_taints(&nodes, &name, &next).await?;
                tracing::info!(node = %name, "node stopped reporting: tainted unreachable");
            } else {
                evict(client, events, node, &taints, timing, now).await?;
            }
        } else if tainted && ready.as_deref() == Some("True") {
            let next: Vec<Taint> = taints
                .iter()
                .filter(|t| t.key != UNREACHABLE)
                .cloned()
                .collect();
            set_taints(&nodes, &name, &next).await?;
            tracing::info!(node = %name, "node reports again: unreachable taint removed");
            // The pods whose deletion was due later are not deleted after all.
            for pod in pods_on(client, &name).await? {
                if pod.metadata.deletion_timestamp.is_none() && allowance(&pod, timing).is_some() {
                    events.eviction(&pod, "Cancelling deletion of");
                }
            }
        }
    }
    Ok(())
}

async fn set_taints(nodes: &Api<Node>, name: &str, taints: &[Taint]) -> Result<()> {
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

/// The pods bound to node `name`.
async fn pods_on(client: &Client, name: &str) -> Result<Vec<Pod>> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={name}"));
    Ok(Api::<Pod>::all(client.clone()).list(&lp).await?.items)
}

/// How long `pod` may stay on an unreachable node: its toleration of the NoExecute
/// `unreachable` taint (None: it tolerates it for ever), or the default for a pod
/// that names none.
fn allowance(pod: &Pod, timing: Timing) -> Option<SignedDuration> {
    let toleration = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .and_then(|ts| {
            ts.iter().find(|t| {
                let key_ok = t
                    .key
                    .as_deref()
                    .is_none_or(|k| k.is_empty() || k == UNREACHABLE);
                let effect_ok = t
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute");
                key_ok && effect_ok
            })
        });
    match toleration {
        Some(t) => t
            .toleration_seconds
            .map(|s| SignedDuration::from_secs(s.max(0))),
        None => Some(secs(timing.default_toleration)),
    }
}

/// Deletes the pods of an unreachable node whose toleration has run out, each first
/// marked with the `DisruptionTarget` condition, as kube's taint eviction controller.
async fn evict(
    client: &Client,
    events: &Events,
    node: &Node,
    taints: &[Taint],
    timing: Timing,
    now: Timestamp,
) -> Result<()> {
    let since = taints
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
        .and_then(|t| t.time_added.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    for pod in pods_on(client, &node.name_any()).await? {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let due = allowance(&pod, timing)
            .is_some_and(|allowed| since.checked_add(allowed).is_ok_and(|end| end <= now));
        if !due {
            continue;
        }
        events.eviction(&pod, "Marking for deletion");
        let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": Time(now),
        }]}});
        let name = pod.name_any();
        let pp = PatchParams::default();
        let done = match api
            .patch_status(&name, &pp, &Patch::Strategic(condition))
            .await
        {
            Ok(_) => api
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                tracing::info!(pod = %pod.name_any(), node = %node.name_any(), "evicted from unreachable node")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_stay_as_long_as_their_toleration_says() {
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"},
                "spec": {"containers": [], "tolerations": tolerations}}))
            .unwrap()
        };
        let timing = Timing {
            grace: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
        };
        let unreachable = |extra: serde_json::Value| {
            let mut t = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
            json_patch::merge(&mut t, &extra);
            pod(json!([t]))
        };
        assert_eq!(
            allowance(&unreachable(json!({"tolerationSeconds": 30})), timing),
            Some(SignedDuration::from_secs(30))
        );
        // No seconds: tolerated for ever, nothing to schedule or cancel.
        assert_eq!(allowance(&unreachable(json!({})), timing), None);
        // Naming none, or only other taints: the default.
        assert_eq!(
            allowance(&pod(json!([])), timing),
            Some(SignedDuration::from_secs(300))
        );
        let other = pod(json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]));
        assert_eq!(
            allowance(&other, timing),
            Some(SignedDuration::from_secs(300))
        );
        // An empty key with Exists tolerates every taint.
        assert_eq!(
            allowance(&pod(json!([{"operator": "Exists"}])), timing),
            None
        );
    }

    #[test]
    fn the_newer_of_lease_and_status_heartbeat_counts() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                "lastHeartbeatTime": "2026-01-01T00:05:00Z"}]},
        }))
        .unwrap();
        let lease = |renew: &str| -> HashMap<String, Lease> {
            let l: Lease = serde_json::from_value(json!({
                "metadata": {"name": "n1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n1", "renewTime": renew},
            }))
            .unwrap();
            [("n1".to_string(), l)].into_iter().collect()
        };
        let at = |s: &str| s.parse::<Timestamp>().ok();
        // The status was posted 4 minutes before the last renewal: the Lease counts.
        assert_eq!(
            last_heard(&node, &lease("2026-01-01T00:09:00.5Z")),
            at("2026-01-01T00:09:00.5Z")
        );
        // A stale Lease does not hide a newer status.
        assert_eq!(
            last_heard(&node, &lease("2026-01-01T00:01:00Z")),
            at("2026-01-01T00:05:00Z")
        );
        // Neither: the node's age.
        let mut bare = node.clone();
        bare.status = None;
        assert_eq!(
            last_heard(&bare, &HashMap::new()),
            at("2026-01-01T00:00:00Z")
        );
    }
}
