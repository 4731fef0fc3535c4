//! Which nodes can run a pod (filters, each with the reason kubectl shows when it
//! fails) and which of those is best (scores).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use rand::Rng;

use super::affinity::{has_pod_affinity, InterPod};
use super::quantity;
use super::selector::Selector;
use super::spread::Spread;

/// Resources a pod asks for, or a node has.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU cores.
    pub cpu: f64,
    /// Memory bytes.
    pub memory: f64,
    /// Ephemeral storage bytes.
    pub ephemeral: f64,
    /// Pod count.
    pub pods: f64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
    }
}

fn read(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Usage {
    let get = |k: &str| {
        map.and_then(|m| m.get(k))
            .and_then(|q| quantity::parse(&q.0))
            .unwrap_or(0.0)
    };
    Usage {
        cpu: get("cpu"),
        memory: get("memory"),
        ephemeral: get("ephemeral-storage"),
        pods: get("pods"),
    }
}

/// What a pod requests: the sum over its containers (limits stand in for missing
/// requests), at least the largest init container, plus overhead; one pod slot.
pub fn requests(pod: &Pod) -> Usage {
    per_pod(pod, |c| {
        let r = c.resources.as_ref();
        let req = read(r.and_then(|r| r.requests.as_ref()));
        let lim = read(r.and_then(|r| r.limits.as_ref()));
        let pick = |req: f64, lim: f64| if req > 0.0 { req } else { lim };
        Usage {
            cpu: pick(req.cpu, lim.cpu),
            memory: pick(req.memory, lim.memory),
            ephemeral: pick(req.ephemeral, lim.ephemeral),
            pods: 0.0,
        }
    })
}

/// CPU a container without a request counts for in scores (kube-scheduler's 100m).
const DEFAULT_CPU: f64 = 0.1;
/// Memory a container without a request counts for in scores (200 MiB, as kube-scheduler).
const DEFAULT_MEMORY: f64 = 200.0 * 1024.0 * 1024.0;

/// What `pod` weighs in the balance scores: its requests, with a container that does not
/// request cpu or memory at all counted as 100m CPU and 200 MiB (kube-scheduler's
/// non-zero requests; an explicit 0 stays 0), so that pods without requests still spread
/// over the nodes instead of piling onto one. Init containers and overhead count as in
/// [`requests`].
pub fn scored_requests(pod: &Pod) -> Usage {
    per_pod(pod, |c| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let req = read(requests);
        let has = |k: &str| requests.is_some_and(|r| r.contains_key(k));
        Usage {
            cpu: if has("cpu") { req.cpu } else { DEFAULT_CPU },
            memory: if has("memory") {
                req.memory
            } else {
                DEFAULT_MEMORY
            },
            ..Usage::default()
        }
    })
}

/// A pod's total from each container's `one`: the containers summed, at least the
/// largest init container (they run one at a time, before the others), plus overhead;
/// one pod slot.
fn per_pod(pod: &Pod, one: impl Fn(&k8s_openapi::api::core::v1::Container) -> Usage) -> Usage {
    let Some(spec) = pod.spec.as_ref() else {
        return Usage::default();
    };
    let mut total = Usage::default();
    for c in &spec.containers {
        total.add(&one(c));
    }
    for c in spec.init_containers.iter().flatten() {
        let u = one(c);
        total.cpu = total.cpu.max(u.cpu);
        total.memory = total.memory.max(u.memory);
        total.ephemeral = total.ephemeral.max(u.ephemeral);
    }
    total.add(&read(spec.overhead.as_ref()));
    total.pods = 1.0;
    total
}

/// A node with what is already placed on it.
pub struct NodeInfo {
    /// The node.
    pub node: Arc<Node>,
    /// What it offers (allocatable, else capacity).
    pub allocatable: Usage,
    /// What bound and assumed pods take.
    pub used: Usage,
    /// What they weigh in the scores ([`scored_requests`]).
    pub scored: Usage,
    /// Host ports in use: (protocol, hostIP, port).
    pub host_ports: HashSet<(String, String, i32)>,
    /// The bound and assumed pods (for pod affinity and topology spread).
    pub pods: Vec<Arc<Pod>>,
    /// Those of `pods` with pod affinity or anti-affinity terms of their own.
    pub affinity_pods: Vec<Arc<Pod>>,
}

impl NodeInfo {
    /// `node` with nothing placed on it yet.
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let mut info = NodeInfo {
            node: node.clone(),
            allocatable: Usage::default(),
            used: Usage::default(),
            scored: Usage::default(),
            host_ports: HashSet::new(),
            pods: Vec::new(),
            affinity_pods: Vec::new(),
        };
        info.set_node(node);
        info
    }

    /// Takes a newer version of the node (labels, taints, allocatable may have changed);
    /// what is placed on it stays.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let st = node.status.as_ref();
        let mut alloc = read(st.and_then(|s| s.allocatable.as_ref()));
        if alloc == Usage::default() {
            alloc = read(st.and_then(|s| s.capacity.as_ref()));
        }
        self.allocatable = alloc;
        self.node = node;
    }

    /// Stops counting the pod of `uid` here; whether it was counted. What is left is
    /// summed again from the remaining pods, so no rounding error builds up.
    pub fn remove(&mut self, uid: &str) -> bool {
        let before = self.pods.len();
        self.pods.retain(|p| p.metadata.uid.as_deref() != Some(uid));
        if self.pods.len() == before {
            return false;
        }
        let pods = std::mem::take(&mut self.pods);
        self.used = Usage::default();
        self.scored = Usage::default();
        self.host_ports.clear();
        self.affinity_pods.clear();
        for p in &pods {
            self.place(p);
        }
        true
    }

    /// Counts `pod` as placed on this node.
    pub fn place(&mut self, pod: &Arc<Pod>) {
        self.used.add(&requests(pod));
        self.scored.add(&scored_requests(pod));
        self.host_ports.extend(host_ports(pod));
        if has_pod_affinity(pod) {
            self.affinity_pods.push(pod.clone());
        }
        self.pods.push(pod.clone());
    }
}

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|h| *h > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                hp,
            ))
        })
        .collect()
}

/// The node whose room `pod` takes: the one it is bound to, unless it has finished
/// (Succeeded or Failed pods hold no resources).
pub fn placed_on(pod: &Pod) -> Option<&str> {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())?;
    let done = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    );
    (!done).then_some(node)
}

/// Node infos from the caches, counting active bound pods and assumed bindings.
pub fn node_infos(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    assumed: &HashMap<String, (String, Arc<Pod>)>,
) -> Vec<NodeInfo> {
    let mut infos: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo::new(n.clone())).collect();
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((n.node.metadata.name.clone()?, i)))
        .collect();
    for p in pods {
        let Some(node) = placed_on(p) else {
            continue;
        };
        if let Some(&i) = index.get(node) {
            infos[i].place(p);
        }
    }
    for (node, pod) in assumed.values() {
        if let Some(&i) = index.get(node) {
            infos[i].place(pod);
        }
    }
    infos
}

/// Whether one of `tolerations` tolerates `taint` (kube's `ToleratesTaint`).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key);
        let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
            "Exists" => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        // An empty key with Exists tolerates everything.
        effect_ok && key_ok && value_ok
    })
}

pub(super) fn requirement_matches(
    r: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let v = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(x)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|x| x.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > x
            } else {
                v < x
            }
        }
        _ => false,
    }
}

/// Whether `node` satisfies one node selector term (all its expressions and fields).
pub(crate) fn term_matches(t: &NodeSelectorTerm, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let mut name_labels = BTreeMap::new();
    name_labels.insert(
        "metadata.name".to_string(),
        node.metadata.name.clone().unwrap_or_default(),
    );
    exprs.iter().all(|r| requirement_matches(r, labels))
        && fields.iter().all(|r| requirement_matches(r, &name_labels))
}

/// Whether `node` satisfies a pod's nodeSelector and required node affinity
/// (matchExpressions on labels, matchFields on `metadata.name`).
pub fn fits_node_affinity(spec: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    selector_ok
        && spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|req| {
                req.node_selector_terms
                    .iter()
                    .any(|t| term_matches(t, node))
            })
}

/// Why `node` cannot run `pod`, or None when it can.
fn unfit(pod: &Pod, req: &Usage, info: &NodeInfo) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let node = &info.node;
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let tolerated = spec.tolerations.as_deref().is_some_and(|t| {
            tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
            )
        });
        if !tolerated {
            return Some("node(s) were unschedulable".into());
        }
    }
    if !fits_node_affinity(spec, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerates(&tolerations, taint)
        {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
        }
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        return Some("node(s) were not ready".into());
    }
    let a = &info.allocatable;
    let u = &info.used;
    if u.pods + req.pods > a.pods {
        return Some("Too many pods".into());
    }
    if req.cpu > 0.0 && u.cpu + req.cpu > a.cpu + 1e-9 {
        return Some("Insufficient cpu".into());
    }
    if req.memory > 0.0 && u.memory + req.memory > a.memory {
        return Some("Insufficient memory".into());
    }
    if req.ephemeral > 0.0 && u.ephemeral + req.ephemeral > a.ephemeral {
        return Some("Insufficient ephemeral-storage".into());
    }
    for (proto, ip, port) in host_ports(pod) {
        let clash = info.host_ports.iter().any(|(p, i, n)| {
            *p == proto && *n == port && (i == &ip || i == "0.0.0.0" || ip == "0.0.0.0")
        });
        if clash {
            return Some("node(s) didn't have free ports for the requested pod ports".into());
        }
    }
    None
}

/// What one scheduling attempt looks at.
pub struct Inputs<'a> {
    /// The nodes with what is placed on them.
    pub infos: &'a [NodeInfo],
    /// The cluster's namespaces (for pod affinity `namespaceSelector`s).
    pub namespaces: &'a [Arc<Namespace>],
    /// The selector of kube's default topology spread constraints for this pod (its
    /// Services' and controller's, [`super::spread::default_selector`]); None: no defaults.
    pub default_spread: Option<Selector>,
}

impl<'a> Inputs<'a> {
    /// Just the nodes: no namespaces, no default spreading.
    pub fn nodes(infos: &'a [NodeInfo]) -> Inputs<'a> {
        Inputs {
            infos,
            namespaces: &[],
            default_spread: None,
        }
    }
}

/// The node to bind `pod` to, or the message of why none fits.
pub fn pick(pod: &Pod, inputs: &Inputs<'_>) -> Result<String, String> {
    pick_with(pod, inputs, &|_| None)
}

/// [`pick`] with one more filter (`extra`: why a node cannot run the pod, or None).
pub fn pick_with(
    pod: &Pod,
    inputs: &Inputs<'_>,
    extra: &dyn Fn(&Node) -> Option<String>,
) -> Result<String, String> {
    let infos = inputs.infos;
    let req = requests(pod);
    let weight = scored_requests(pod);
    let inter = InterPod::new(pod, infos, inputs.namespaces);
    let spread = Spread::new(pod, infos, inputs.default_spread.as_ref());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    for info in infos {
        let why = unfit(pod, &req, info)
            .or_else(|| extra(&info.node))
            .or_else(|| spread.filter(&info.node).map(String::from))
            .or_else(|| inter.filter(&info.node).map(String::from));
        match why {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => feasible.push(info),
        }
    }
    let scores = super::score::totals(pod, &weight, &feasible, infos, &inter, &spread);
    let top = scores.iter().copied().fold(f64::MIN, f64::max);
    let winners: Vec<&NodeInfo> = feasible
        .iter()
        .zip(&scores)
        .filter(|(_, s)| (**s - top).abs() < 1e-6)
        .map(|(i, _)| *i)
        .collect();
    if !winners.is_empty() {
        let i = rand::thread_rng().gen_range(0..winners.len());
        return Ok(winners[i].node.metadata.name.clone().unwrap_or_default());
    }
    let n = infos.len();
    if n == 0 {
        return Err("0/0 nodes are available: no nodes available to schedule pods.".into());
    }
    // Sorted as kube-scheduler sorts them: as "<count> <reason>" strings.
    let mut list = reasons
        .iter()
        .map(|(r, c)| format!("{c} {r}"))
        .collect::<Vec<_>>();
    list.sort();
    let list = list.join(", ");
    Err(format!(
        "0/{n} nodes are available: {list}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    /// A Ready node with `cpu` cores, 4 GiB and 110 pods, `extra` merged in.
    pub fn node(name: &str, cpu: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        });
        json_patch::merge(&mut n, &extra);
        Arc::new(serde_json::from_value(n).expect("node"))
    }

    /// A node with 8 cores in topology zone `zone`.
    pub fn zoned(name: &str, zone: &str) -> Arc<Node> {
        node(
            name,
            "8",
            json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}}),
        )
    }

    /// A pod of one container, `spec` merged in.
    pub fn pod(spec: serde_json::Value) -> Pod {
        pod_in("default", json!({}), spec)
    }

    /// A pod in `ns` with `labels`, `spec` merged in.
    pub fn pod_in(ns: &str, labels: serde_json::Value, spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [{"name": "c", "image": "i"}]});
        json_patch::merge(&mut s, &spec);
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": ns, "labels": labels}, "spec": s}),
        )
        .expect("pod")
    }

    #[test]
    fn filters_give_kubectl_reasons() {
        let nodes = vec![
            node("small", "1", json!({})),
            node(
                "tainted",
                "8",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
            ),
            node("cordoned", "8", json!({"spec": {"unschedulable": true}})),
        ];
        let infos = node_infos(&nodes, &[], &HashMap::new());
        let big =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}));
        let err = pick(&big, &Inputs::nodes(&infos)).expect_err("nothing fits");
        assert!(err.starts_with("0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were unschedulable."), "{err}");
        let tolerant = pod(json!({
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
        }));
        assert_eq!(
            pick(&tolerant, &Inputs::nodes(&infos)).as_deref(),
            Ok("tainted")
        );
        let selected = pod(json!({"nodeSelector": {"kubernetes.io/hostname": "small"}}));
        assert_eq!(
            pick(&selected, &Inputs::nodes(&infos)).as_deref(),
            Ok("small")
        );
    }

    #[test]
    fn daemon_pods_bind_to_the_node_their_affinity_names() {
        let nodes = vec![node("a", "4", json!({})), node("b", "4", json!({}))];
        let infos = node_infos(&nodes, &[], &HashMap::new());
        let on = |name: &str| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}]}}}}),
            )
        };
        for _ in 0..10 {
            assert_eq!(pick(&on("b"), &Inputs::nodes(&infos)).as_deref(), Ok("b"));
        }
        let err = pick(&on("gone"), &Inputs::nodes(&infos)).expect_err("no such node");
        assert!(
            err.contains("2 node(s) didn't match Pod's node affinity/selector"),
            "{err}"
        );
    }

    #[test]
    fn bound_and_assumed_pods_take_room() {
        let nodes = vec![node("a", "1", json!({}))];
        let half =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "600m"}}}]}));
        let mut assumed = HashMap::new();
        assumed.insert(
            "uid1".to_string(),
            ("a".to_string(), Arc::new(half.clone())),
        );
        let infos = node_infos(&nodes, &[], &assumed);
        assert!(pick(&half, &Inputs::nodes(&infos)).is_err());
        let infos = node_infos(&nodes, &[], &HashMap::new());
        assert_eq!(pick(&half, &Inputs::nodes(&infos)).as_deref(), Ok("a"));
    }

    #[test]
    fn pods_without_requests_spread_over_equal_nodes() {
        let nodes = vec![node("a", "4", json!({})), node("b", "4", json!({}))];
        let plain = pod(json!({"containers": [{"name": "c"}]}));
        let mut assumed = HashMap::new();
        let mut count: HashMap<String, usize> = HashMap::new();
        for i in 0..10 {
            let infos = node_infos(&nodes, &[], &assumed);
            let on = pick(&plain, &Inputs::nodes(&infos)).expect("fits");
            *count.entry(on.clone()).or_default() += 1;
            assumed.insert(format!("uid{i}"), (on, Arc::new(plain.clone())));
        }
        assert_eq!(count.get("a"), Some(&5), "{count:?}");
        assert_eq!(count.get("b"), Some(&5), "{count:?}");
    }
}
