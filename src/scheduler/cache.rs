//! The scheduler's node infos, kept between scheduling attempts and updated from the
//! node and pod watch events (as kube-scheduler's cache), instead of being rebuilt from
//! every pod for every attempt.
//!
//! Each pod is counted at most once, by uid: either as bound (the pod cache shows it on a
//! node and it has not finished) or as *assumed* (this scheduler picked a node and its
//! binding is in flight or not yet seen in the pod cache). When the bound version of an
//! assumed pod arrives it replaces the assumption; a failed binding forgets it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::filters::{placed_on, NodeInfo};

/// Where one pod is counted.
struct Placed {
    node: String,
    assumed: bool,
}

/// Node infos kept current by watch events.
#[derive(Default)]
pub struct NodeCache {
    infos: Vec<NodeInfo>,
    /// Node name → position in `infos`.
    index: HashMap<String, usize>,
    /// Pod uid → where it is counted (also pods of nodes not in the cache yet).
    placed: HashMap<String, Placed>,
    /// The pods of `placed`, for nodes that arrive after their pods.
    pods: HashMap<String, Arc<Pod>>,
    /// Whether the node and the pod lists have been read once.
    synced: (bool, bool),
}

fn uid(pod: &Pod) -> Option<&str> {
    pod.metadata.uid.as_deref()
}

impl NodeCache {
    /// The nodes with what is placed on them, in no particular order.
    pub fn infos(&self) -> &[NodeInfo] {
        &self.infos
    }

    /// The info of the node `name`.
    pub fn info(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.infos[i])
    }

    /// Whether both the nodes and the pods have been listed (before that the infos
    /// would undercount).
    pub fn synced(&self) -> bool {
        self.synced.0 && self.synced.1
    }

    /// Whether the pod of `uid` is assumed on a node (its binding is in flight, or not
    /// yet seen in the pod cache).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.placed.get(uid).is_some_and(|p| p.assumed)
    }

    /// Whether the pod of `uid` is counted on a node at all: assumed, or seen bound by the
    /// pod cache (then a copy of it still unbound, from another watch, is stale).
    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains_key(uid)
    }

    /// A node was added or changed.
    pub fn apply_node(&mut self, node: Arc<Node>) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        if let Some(&i) = self.index.get(&name) {
            self.infos[i].set_node(node);
            return;
        }
        let mut info = NodeInfo::new(node);
        for (uid, p) in &self.placed {
            if p.node == name {
                if let Some(pod) = self.pods.get(uid) {
                    info.place(pod);
                }
            }
        }
        self.index.insert(name, self.infos.len());
        self.infos.push(info);
    }

    /// A node was deleted. Its pods stay known, so they count again if it comes back.
    pub fn delete_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        self.infos.swap_remove(i);
        if let Some(moved) = self.infos.get(i).and_then(|n| n.node.metadata.name.clone()) {
            self.index.insert(moved, i);
        }
    }

    /// A pod was added or changed: counted where it is bound unless it finished; an
    /// assumed pod the cache still shows unbound stays assumed.
    pub fn apply_pod(&mut self, pod: Arc<Pod>) {
        let Some(id) = uid(&pod).map(str::to_string) else {
            return;
        };
        let on = placed_on(&pod).map(str::to_string);
        if on.is_none() && self.is_assumed(&id) && pod.metadata.deletion_timestamp.is_none() {
            return;
        }
        // A newer version replaces the counted one (labels may have changed).
        self.unplace(&id);
        if let Some(node) = on {
            self.place(id, node, pod, false);
        }
    }

    /// A pod was deleted.
    pub fn delete_pod(&mut self, pod: &Pod) {
        if let Some(id) = uid(pod) {
            self.unplace(id);
        }
    }

    /// Counts `pod` on `node` before its binding is seen in the pod cache.
    pub fn assume(&mut self, pod: Arc<Pod>, node: &str) {
        let Some(id) = uid(&pod).map(str::to_string) else {
            return;
        };
        if self.placed.get(&id).is_some_and(|p| !p.assumed) {
            // Bound already: the binding will be refused; the bound placement stays.
            return;
        }
        self.unplace(&id);
        self.place(id, node.to_string(), pod, true);
    }

    /// Stops counting an assumed pod (its binding failed). A pod the cache already shows
    /// bound is left as it is.
    pub fn forget(&mut self, uid: &str) {
        if self.is_assumed(uid) {
            self.unplace(uid);
        }
    }

    /// Replaces everything with the full lists of `nodes` and `pods` (after a watch
    /// (re)listed), keeping the assumptions of listed pods the list shows unbound.
    /// `listed` says which of the two lists is complete now.
    pub fn rebuild(&mut self, nodes: &[Arc<Node>], pods: &[Arc<Pod>], listed: (bool, bool)) {
        let assumed: Vec<(String, String)> = self
            .placed
            .iter()
            .filter(|(_, p)| p.assumed)
            .map(|(uid, p)| (uid.clone(), p.node.clone()))
            .collect();
        let mut assumed_pods: HashMap<String, Arc<Pod>> = assumed
            .iter()
            .filter_map(|(uid, _)| Some((uid.clone(), self.pods.get(uid)?.clone())))
            .collect();
        *self = NodeCache {
            synced: (self.synced.0 || listed.0, self.synced.1 || listed.1),
            ..NodeCache::default()
        };
        for n in nodes {
            self.apply_node(n.clone());
        }
        let listed: HashSet<&str> = pods.iter().filter_map(|p| uid(p)).collect();
        for (id, node) in assumed {
            if let Some(pod) = assumed_pods
                .remove(&id)
                .filter(|_| listed.contains(id.as_str()))
            {
                self.place(id, node, pod, true);
            }
        }
        for p in pods {
            self.apply_pod(p.clone());
        }
    }

    fn place(&mut self, id: String, node: String, pod: Arc<Pod>, assumed: bool) {
        if let Some(&i) = self.index.get(&node) {
            self.infos[i].place(&pod);
        }
        self.pods.insert(id.clone(), pod);
        self.placed.insert(id, Placed { node, assumed });
    }

    fn unplace(&mut self, id: &str) {
        let Some(p) = self.placed.remove(id) else {
            return;
        };
        self.pods.remove(id);
        if let Some(&i) = self.index.get(&p.node) {
            self.infos[i].remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::filters::tests::{node, pod};
    use super::super::filters::{node_infos, pick, Inputs};
    use super::*;
    use serde_json::json;

    /// A pod `name` asking for `cpu`, bound to `on` (None: pending), in `phase`.
    fn pod_on(name: &str, cpu: &str, on: Option<&str>, phase: &str) -> Arc<Pod> {
        let mut p = pod(json!({
            "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}},
                "ports": [{"containerPort": 80, "hostPort": 8000 + cpu.len() as i32}]}],
        }));
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.spec.as_mut().expect("spec").node_name = on.map(String::from);
        p.status = Some(serde_json::from_value(json!({"phase": phase})).expect("status"));
        Arc::new(p)
    }

    /// What the infos hold, per node name, comparable between two builds.
    fn summary(infos: &[NodeInfo]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = infos
            .iter()
            .map(|i| {
                let mut uids: Vec<_> = i.pods.iter().filter_map(|p| uid(p)).collect();
                uids.sort();
                let mut ports: Vec<_> = i.host_ports.iter().collect();
                ports.sort();
                let n = i.node.metadata.name.clone().unwrap_or_default();
                let held = format!(
                    "{:?} {:?} {:?} {uids:?} {ports:?} {}",
                    i.allocatable,
                    i.used,
                    i.scored,
                    i.affinity_pods.len()
                );
                (n, held)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn events_give_the_infos_of_a_rebuild() {
        let mut cache = NodeCache::default();
        cache.rebuild(&[], &[], (true, true));
        let a = node("a", "4", json!({}));
        let b = node("b", "4", json!({}));
        // A pod bound to a node the cache does not know yet counts once the node comes.
        cache.apply_pod(pod_on("early", "100m", Some("b"), "Pending"));
        cache.apply_node(a.clone());
        cache.apply_node(b.clone());
        cache.apply_pod(pod_on("p1", "500m", None, "Pending"));
        cache.apply_pod(pod_on("p1", "500m", Some("a"), "Pending"));
        cache.apply_pod(pod_on("p1", "500m", Some("a"), "Running"));
        cache.apply_pod(pod_on("p2", "1", Some("a"), "Running"));
        cache.apply_pod(pod_on("p3", "200m", Some("b"), "Running"));
        cache.apply_pod(pod_on("p3", "200m", Some("b"), "Succeeded"));
        cache.apply_pod(pod_on("p4", "300m", Some("b"), "Running"));
        cache.delete_pod(&pod_on("p2", "1", Some("a"), "Running"));
        // A node update keeps what is placed on it.
        let bigger = node("a", "8", json!({}));
        cache.apply_node(bigger.clone());
        cache.apply_node(node("gone", "2", json!({})));
        cache.delete_node("gone");

        let pods = vec![
            pod_on("early", "100m", Some("b"), "Pending"),
            pod_on("p1", "500m", Some("a"), "Running"),
            pod_on("p3", "200m", Some("b"), "Succeeded"),
            pod_on("p4", "300m", Some("b"), "Running"),
        ];
        let nodes = vec![bigger, b];
        let fresh = node_infos(&nodes, &pods, &HashMap::new());
        assert_eq!(summary(cache.infos()), summary(&fresh));
        assert_eq!(cache.info("a").map(|i| i.pods.len()), Some(1));

        let mut rebuilt = NodeCache::default();
        rebuilt.rebuild(&nodes, &pods, (true, true));
        assert_eq!(summary(rebuilt.infos()), summary(&fresh));
        // After a node deletion and re-add, its pods count again.
        cache.delete_node("b");
        cache.apply_node(nodes[1].clone());
        assert_eq!(summary(cache.infos()), summary(&fresh));
    }

    #[test]
    fn an_assumed_pod_counts_once_when_the_cache_catches_up() {
        let mut cache = NodeCache::default();
        cache.rebuild(&[node("a", "1", json!({}))], &[], (true, true));
        let pending = pod_on("p", "600m", None, "Pending");
        cache.assume(pending.clone(), "a");
        assert!(cache.is_assumed("uid-p"));
        // The pod cache still shows it unbound: it stays assumed.
        cache.apply_pod(pending.clone());
        assert!(cache.is_assumed("uid-p"));
        let used = |c: &NodeCache| c.info("a").map(|i| (i.used.cpu, i.pods.len()));
        assert_eq!(used(&cache), Some((0.6, 1)));
        assert!(pick(&pending, &Inputs::nodes(cache.infos())).is_err());
        // Its bound version replaces the assumption instead of adding to it.
        cache.apply_pod(pod_on("p", "600m", Some("a"), "Pending"));
        assert!(!cache.is_assumed("uid-p"));
        assert_eq!(used(&cache), Some((0.6, 1)));
        // Forgetting a pod the cache shows bound changes nothing.
        cache.forget("uid-p");
        assert_eq!(used(&cache), Some((0.6, 1)));
        // A relist keeps it once too.
        let nodes = vec![node("a", "1", json!({}))];
        cache.rebuild(
            &nodes,
            &[pod_on("p", "600m", Some("a"), "Running")],
            (true, true),
        );
        assert_eq!(used(&cache), Some((0.6, 1)));
    }

    #[test]
    fn a_failed_binding_forgets_the_assumption() {
        let mut cache = NodeCache::default();
        let nodes = vec![node("a", "1", json!({}))];
        cache.rebuild(&nodes, &[], (true, true));
        let pending = pod_on("p", "600m", None, "Pending");
        cache.assume(pending.clone(), "a");
        assert!(pick(&pending, &Inputs::nodes(cache.infos())).is_err());
        cache.forget("uid-p");
        assert!(!cache.is_assumed("uid-p"));
        assert_eq!(
            summary(cache.infos()),
            summary(&node_infos(&nodes, &[], &HashMap::new()))
        );
        assert_eq!(
            pick(&pending, &Inputs::nodes(cache.infos())).as_deref(),
            Ok("a")
        );
        // An assumption of a pod deleted meanwhile is dropped by a relist.
        cache.assume(pending.clone(), "a");
        cache.rebuild(&nodes, &[], (true, true));
        assert!(!cache.is_assumed("uid-p"));
        // A deleted assumed pod stops counting at once.
        cache.assume(pending.clone(), "a");
        cache.delete_pod(&pending);
        assert_eq!(cache.info("a").map(|i| i.pods.len()), Some(0));
    }
}
