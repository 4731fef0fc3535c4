//! Pod topology spread constraints, as kube-scheduler's PodTopologySpread plugin:
//! `DoNotSchedule` constraints filter nodes whose domain would exceed `maxSkew`,
//! `ScheduleAnyway` constraints score nodes by how few matching pods their domain has.
//! Pods that set no constraints and belong to a Service, ReplicaSet or StatefulSet get
//! kube's default constraints (hostname maxSkew 3, zone
//! maxSkew 5, ScheduleAnyway) over the pods their owners select.
//!
//! Matching pods are counted per domain once per scheduling attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Service, TopologySpreadConstraint};

use super::filters::{fits_node_affinity, tolerates, NodeInfo};
use super::selector::{pod_labels, Selector};

/// Message of a node whose domain would exceed a constraint's `maxSkew`.
pub const NOT_MATCH: &str = "node(s) didn't match pod topology spread constraints";
/// Message of a node without a constraint's topology key.
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// kube's default constraints for pods that set none: (topology key, maxSkew).
const DEFAULTS: [(&str, i64); 2] = [(HOSTNAME, 3), (ZONE, 5)];

/// One compiled constraint.
struct Constraint<'a> {
    key: &'a str,
    max_skew: i64,
    min_domains: Option<i64>,
    selector: Option<Selector>,
    /// Count only nodes that pass the pod's node affinity/selector (default Honor).
    honor_affinity: bool,
    /// Count only nodes whose taints the pod tolerates (default Ignore).
    honor_taints: bool,
}

impl<'a> Constraint<'a> {
    fn compile(pod: &'a Pod, c: &'a TopologySpreadConstraint) -> Constraint<'a> {
        Constraint {
            key: &c.topology_key,
            max_skew: c.max_skew.into(),
            min_domains: c.min_domains.map(i64::from),
            selector: Selector::compile(
                c.label_selector.as_ref(),
                pod_labels(pod),
                c.match_label_keys.as_deref().unwrap_or_default(),
                &[],
            ),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    /// Whether `node` counts for this constraint (kube's node inclusion policies).
    fn includes(&self, spec: &PodSpec, node: &Node) -> bool {
        (!self.honor_affinity || fits_node_affinity(spec, node))
            && (!self.honor_taints || {
                let tolerations = spec.tolerations.as_deref().unwrap_or_default();
                node.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_deref())
                    .unwrap_or_default()
                    .iter()
                    .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
                    .all(|t| tolerates(tolerations, t))
            })
    }

    /// Pods on `info` in namespace `ns` that the selector matches (terminating ones not).
    fn count(&self, info: &NodeInfo, ns: &str) -> i64 {
        let Some(sel) = self.selector.as_ref() else {
            return 0;
        };
        info.pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata.namespace.as_deref().unwrap_or_default() == ns
                    && sel.matches(pod_labels(p))
            })
            .count() as i64
    }
}

fn labels(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

fn has_keys(node: &Node, constraints: &[Constraint<'_>]) -> bool {
    let l = labels(node);
    constraints.iter().all(|c| l.contains_key(c.key))
}

/// The selector kube's default constraints use for `pod`: the selectors of the
/// Services in its namespace that select it, plus its controller's selector (`owner`);
/// None when there is nothing to select by.
pub fn default_selector(
    pod: &Pod,
    services: &[Arc<Service>],
    owner: Option<Selector>,
) -> Option<Selector> {
    let ns = pod.metadata.namespace.as_deref();
    let labels = pod_labels(pod);
    let mut sel = Selector::default();
    for svc in services {
        let Some(map) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        let s = Selector::from_map(map);
        if svc.metadata.namespace.as_deref() == ns && s.matches(labels) {
            sel.extend(s);
        }
    }
    if let Some(o) = owner {
        sel.extend(o);
    }
    (!sel.is_empty()).then_some(sel)
}

/// The topology spread state of one incoming pod over one snapshot of the cluster.
pub struct Spread<'a> {
    spec: Option<&'a PodSpec>,
    ns: &'a str,
    hard: Vec<Constraint<'a>>,
    /// Per hard constraint: matching pods per domain (label value) of counted nodes.
    hard_counts: Vec<HashMap<&'a str, i64>>,
    /// Per hard constraint: the smallest count of a domain (`minDomains` applied).
    hard_min: Vec<Option<i64>>,
    /// Per hard constraint: whether the pod itself matches its selector.
    hard_self: Vec<bool>,
    soft: Vec<Constraint<'a>>,
    /// Whether nodes without every soft key are left out of the score (not so for the
    /// default constraints).
    require_all: bool,
}

impl<'a> Spread<'a> {
    /// The pod's constraints, counted over `infos`; `default` is
    /// [`default_selector`] for pods that set none.
    pub fn new(pod: &'a Pod, infos: &'a [NodeInfo], default: Option<&Selector>) -> Self {
        let spec = pod.spec.as_ref();
        let own = spec
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or_default();
        let (mut hard, mut soft) = (Vec::new(), Vec::new());
        for c in own {
            let compiled = Constraint::compile(pod, c);
            match c.when_unsatisfiable.as_str() {
                "DoNotSchedule" => hard.push(compiled),
                _ => soft.push(compiled),
            }
        }
        if let (true, Some(sel)) = (own.is_empty(), default) {
            soft = DEFAULTS
                .iter()
                .map(|(key, skew)| Constraint {
                    key,
                    max_skew: *skew,
                    min_domains: None,
                    selector: Some(sel.clone()),
                    honor_affinity: true,
                    honor_taints: false,
                })
                .collect();
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut hard_counts = vec![HashMap::new(); hard.len()];
        if let (false, Some(spec)) = (hard.is_empty(), spec) {
            for info in infos.iter().filter(|i| has_keys(&i.node, &hard)) {
                let l = labels(&info.node);
                for (c, counts) in hard.iter().zip(hard_counts.iter_mut()) {
                    if c.includes(spec, &info.node) {
                        if let Some(v) = l.get(c.key) {
                            *counts.entry(v.as_str()).or_default() += c.count(info, ns);
                        }
                    }
                }
            }
        }
        let hard_min = hard
            .iter()
            .zip(&hard_counts)
            .map(|(c, counts)| {
                let min = counts.values().min().copied()?;
                let few = c.min_domains.is_some_and(|m| (counts.len() as i64) < m);
                Some(if few { 0 } else { min })
            })
            .collect();
        let hard_self = hard
            .iter()
            .map(|c| {
                c.selector
                    .as_ref()
                    .is_some_and(|s| s.matches(pod_labels(pod)))
            })
            .collect();
        Spread {
            spec,
            ns,
            require_all: !own.is_empty(),
            hard,
            hard_counts,
            hard_min,
            hard_self,
            soft,
        }
    }

    /// Why `node` cannot run the pod by its DoNotSchedule constraints, or None.
    pub fn filter(&self, node: &Node) -> Option<&'static str> {
        let l = labels(node);
        for (i, c) in self.hard.iter().enumerate() {
            let Some(value) = l.get(c.key) else {
                return Some(MISSING_LABEL);
            };
            // No domain counted at all: nothing to be skewed against.
            let Some(min) = self.hard_min[i] else {
                continue;
            };
            let here = self.hard_counts[i]
                .get(value.as_str())
                .copied()
                .unwrap_or(0);
            if here + i64::from(self.hard_self[i]) - min > c.max_skew {
                return Some(NOT_MATCH);
            }
        }
        None
    }

    /// Scores of the `feasible` nodes for the ScheduleAnyway (or default) constraints,
    /// already normalized to 0–100 as kube does (fewer matching pods score higher;
    /// nodes without the topology keys score 0); all 0 when there are none.
    pub fn scores(&self, feasible: &[&NodeInfo], all: &'a [NodeInfo]) -> Vec<i64> {
        let (Some(spec), false) = (self.spec, self.soft.is_empty()) else {
            return vec![0; feasible.len()];
        };
        let ignored: Vec<bool> = feasible
            .iter()
            .map(|i| self.require_all && !has_keys(&i.node, &self.soft))
            .collect();
        let kept = ignored.iter().filter(|i| !**i).count();
        // Domains of the feasible nodes, per non-hostname constraint.
        let mut pair_counts: Vec<HashMap<&str, i64>> = vec![HashMap::new(); self.soft.len()];
        for (info, _) in feasible.iter().zip(&ignored).filter(|(_, i)| !**i) {
            let l = labels(&info.node);
            for (c, counts) in self.soft.iter().zip(pair_counts.iter_mut()) {
                if c.key != HOSTNAME {
                    counts.insert(l.get(c.key).map_or("", String::as_str), 0);
                }
            }
        }
        let weights: Vec<f64> = self
            .soft
            .iter()
            .zip(&pair_counts)
            .map(|(c, counts)| {
                let size = if c.key == HOSTNAME {
                    kept
                } else {
                    counts.len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for info in all {
            if self.require_all && !has_keys(&info.node, &self.soft) {
                continue;
            }
            let l = labels(&info.node);
            for (c, counts) in self.soft.iter().zip(pair_counts.iter_mut()) {
                // Nodes without the key are never scored by it: no need to count theirs.
                let Some(v) = l.get(c.key).filter(|_| c.key != HOSTNAME) else {
                    continue;
                };
                if let Some(n) = counts.get_mut(v.as_str()) {
                    if c.includes(spec, &info.node) {
                        *n += c.count(info, self.ns);
                    }
                }
            }
        }
        let raw: Vec<Option<i64>> = feasible
            .iter()
            .zip(&ignored)
            .map(|(info, ignored)| {
                if *ignored {
                    return None;
                }
                let l = labels(&info.node);
                let mut score = 0.0;
                for (i, c) in self.soft.iter().enumerate() {
                    let Some(v) = l.get(c.key) else { continue };
                    let n = if c.key == HOSTNAME {
                        c.count(info, self.ns)
                    } else {
                        pair_counts[i].get(v.as_str()).copied().unwrap_or(0)
                    };
                    score += n as f64 * weights[i] + (c.max_skew - 1) as f64;
                }
                Some(score.round() as i64)
            })
            .collect();
        let min = raw.iter().flatten().min().copied().unwrap_or(0);
        let max = raw.iter().flatten().max().copied().unwrap_or(0);
        raw.iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max == 0 => 100,
                Some(s) => 100 * (max + min - s) / max,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::filters::tests::{node, pod_in, zoned};
    use super::super::filters::{node_infos, pick, Inputs};
    use super::*;
    use serde_json::json;

    fn spread_pod(skew: i32, when: &str, extra: serde_json::Value) -> Pod {
        let mut c = json!({"maxSkew": skew, "topologyKey": ZONE, "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}});
        json_patch::merge(&mut c, &extra);
        pod_in(
            "default",
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [c]}),
        )
    }

    fn zone_counts(
        nodes: &[Arc<Node>],
        assumed: &HashMap<String, (String, Arc<Pod>)>,
    ) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (on, _) in assumed.values() {
            let n = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(on))
                .expect("node");
            *out.entry(labels(n)[ZONE].clone()).or_default() += 1;
        }
        out
    }

    #[test]
    fn do_not_schedule_keeps_zone_skew_within_max() {
        // Zone z1 has three nodes, z2 one: without the constraint, least-allocated
        // balance alone would put three of four pods in z1.
        let nodes = vec![
            zoned("a", "z1"),
            zoned("b", "z1"),
            zoned("c", "z1"),
            zoned("d", "z2"),
        ];
        let p = spread_pod(1, "DoNotSchedule", json!({}));
        let mut assumed = HashMap::new();
        for i in 0..8 {
            let infos = node_infos(&nodes, &[], &assumed);
            let on = pick(&p, &Inputs::nodes(&infos)).expect("fits");
            assumed.insert(format!("uid{i}"), (on, Arc::new(p.clone())));
            let counts = zone_counts(&nodes, &assumed);
            let (lo, hi) = (
                counts.get("z1").copied().unwrap_or(0),
                counts.get("z2").copied().unwrap_or(0),
            );
            assert!(lo.abs_diff(hi) <= 1, "{counts:?}");
        }
        // With z2 full, a pod that would break the skew waits with kube's message.
        let full = node(
            "d",
            "8",
            json!({"metadata": {"labels": {ZONE: "z2"}}, "status": {"allocatable": {"pods": "4"}}}),
        );
        let nodes = vec![zoned("a", "z1"), full];
        let infos = node_infos(&nodes, &[], &assumed_on(&[("a", 5), ("d", 4)], &p));
        let err = pick(&p, &Inputs::nodes(&infos)).expect_err("skew");
        assert!(
            err.starts_with("0/2 nodes are available: 1 Too many pods, 1 node(s) didn't match pod topology spread constraints."),
            "{err}"
        );
        // A node without the key is ruled out with its own message.
        let nodes = vec![node("bare", "8", json!({}))];
        let infos = node_infos(&nodes, &[], &HashMap::new());
        let err = pick(&p, &Inputs::nodes(&infos)).expect_err("no key");
        assert!(err.contains("(missing required label)"), "{err}");
    }

    fn assumed_on(spots: &[(&str, usize)], p: &Pod) -> HashMap<String, (String, Arc<Pod>)> {
        let mut out = HashMap::new();
        for (node, n) in spots {
            for i in 0..*n {
                out.insert(
                    format!("{node}{i}"),
                    (node.to_string(), Arc::new(p.clone())),
                );
            }
        }
        out
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z2")];
        let p = spread_pod(1, "DoNotSchedule", json!({"minDomains": 3}));
        // One pod in each zone: with fewer domains than minDomains the global minimum is
        // 0, so a second pod per zone would be skew 2.
        let infos = node_infos(&nodes, &[], &assumed_on(&[("a", 1), ("b", 1)], &p));
        let err = pick(&p, &Inputs::nodes(&infos)).expect_err("minDomains");
        assert!(
            err.contains("2 node(s) didn't match pod topology spread constraints"),
            "{err}"
        );
        let without = spread_pod(1, "DoNotSchedule", json!({}));
        assert!(pick(&without, &Inputs::nodes(&infos)).is_ok());
    }

    #[test]
    fn node_affinity_policy_leaves_unselected_nodes_out() {
        // z2 holds no web pods but the pod cannot go there; Honor (default) leaves it out
        // of the count, so z1 stays allowed; Ignore counts it and blocks z1.
        let nodes = vec![
            node(
                "a",
                "8",
                json!({"metadata": {"labels": {ZONE: "z1", "disk": "ssd"}}}),
            ),
            zoned("b", "z2"),
        ];
        let infos = node_infos(
            &nodes,
            &[],
            &assumed_on(&[("a", 1)], &spread_pod(1, "DoNotSchedule", json!({}))),
        );
        let honor = {
            let mut p = spread_pod(1, "DoNotSchedule", json!({}));
            p.spec.as_mut().expect("spec").node_selector =
                Some([("disk".to_string(), "ssd".to_string())].into());
            p
        };
        assert_eq!(pick(&honor, &Inputs::nodes(&infos)).as_deref(), Ok("a"));
        let mut ignore = spread_pod(1, "DoNotSchedule", json!({"nodeAffinityPolicy": "Ignore"}));
        ignore.spec.as_mut().expect("spec").node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(pick(&ignore, &Inputs::nodes(&infos)).is_err());
    }

    #[test]
    fn schedule_anyway_and_defaults_prefer_emptier_domains() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z2")];
        let p = spread_pod(1, "ScheduleAnyway", json!({}));
        let infos = node_infos(&nodes, &[], &assumed_on(&[("a", 3)], &p));
        for _ in 0..5 {
            assert_eq!(pick(&p, &Inputs::nodes(&infos)).as_deref(), Ok("b"));
        }
        // The default hostname constraint spreads a ReplicaSet's pods even when the
        // busier node has more room.
        let nodes = vec![
            node(
                "big",
                "64",
                json!({"status": {"allocatable": {"memory": "64Gi"}}}),
            ),
            node("small", "4", json!({})),
        ];
        let plain = pod_in("default", json!({"app": "web"}), json!({}));
        let infos = node_infos(&nodes, &[], &assumed_on(&[("big", 3)], &plain));
        let sel = Selector::from_map(&[("app".to_string(), "web".to_string())].into());
        let with_default = Inputs {
            default_spread: Some(sel),
            ..Inputs::nodes(&infos)
        };
        assert_eq!(pick(&plain, &with_default).as_deref(), Ok("small"));
        assert_eq!(pick(&plain, &Inputs::nodes(&infos)).as_deref(), Ok("big"));
    }

    #[test]
    fn default_selector_merges_services_and_owner() {
        let svc = |ns: &str, sel: serde_json::Value| {
            Arc::new(
                serde_json::from_value::<Service>(
                    json!({"metadata": {"name": "s", "namespace": ns}, "spec": {"selector": sel}}),
                )
                .expect("svc"),
            )
        };
        let p = pod_in("default", json!({"app": "web", "tier": "fe"}), json!({}));
        let services = vec![
            svc("default", json!({"app": "web"})),
            svc("default", json!({"app": "db"})),
            svc("other", json!({"tier": "fe"})),
        ];
        let sel = default_selector(&p, &services, None).expect("selected by a service");
        assert_eq!(
            sel,
            Selector::from_map(&[("app".to_string(), "web".to_string())].into())
        );
        assert!(default_selector(&p, &services[1..], None).is_none());
        let owner = Selector::from_map(&[("tier".to_string(), "fe".to_string())].into());
        let sel = default_selector(&p, &[], Some(owner.clone())).expect("owner");
        assert_eq!(sel, owner);
    }

    /// Cost of one scheduling attempt at the benchmark's size (100 nodes in 3 zones,
    /// 3,000 placed pods of 30 ReplicaSets): `cargo test -p pikube --lib pass_cost --
    /// --ignored --nocapture` (add `--release` for optimized figures).
    #[test]
    #[ignore]
    fn pass_cost() {
        let nodes: Vec<_> = (0..100)
            .map(|i| {
                let zone = format!("z{}", i % 3);
                node(
                    &format!("n{i}"),
                    "4",
                    json!({"metadata": {"labels": {ZONE: zone}}}),
                )
            })
            .collect();
        let pods: Vec<_> = (0..3000)
            .map(|i| {
                let labels = json!({"app": format!("a{}", i % 30), "hash": "x"});
                Arc::new(pod_in(
                    "default",
                    labels,
                    json!({"nodeName": format!("n{}", i % 100)}),
                ))
            })
            .collect();
        let labels = [("app", "a1"), ("hash", "x")].map(|(k, v)| (k.to_string(), v.to_string()));
        let sel = Selector::from_map(&labels.into());
        let p = pod_in("default", json!({"app": "a1", "hash": "x"}), json!({}));
        let time = |what: &str, f: &dyn Fn()| {
            let t = std::time::Instant::now();
            for _ in 0..20 {
                f();
            }
            eprintln!("{what}: {:?} per pod", t.elapsed() / 20);
        };
        time("node infos", &|| {
            node_infos(&nodes, &pods, &HashMap::new());
        });
        let infos = node_infos(&nodes, &pods, &HashMap::new());
        time("pick, no spreading", &|| {
            pick(&p, &Inputs::nodes(&infos)).expect("fits");
        });
        time("pick, default spreading", &|| {
            let inputs = Inputs {
                default_spread: Some(sel.clone()),
                ..Inputs::nodes(&infos)
            };
            pick(&p, &inputs).expect("fits");
        });
    }
}
