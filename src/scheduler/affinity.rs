//! Inter-pod affinity and anti-affinity, as kube-scheduler's InterPodAffinity plugin:
//! required terms filter nodes, preferred terms (and the terms of pods already placed)
//! score them.
//!
//! One pass over the placed pods per scheduling attempt counts, per topology domain
//! (`topologyKey` = node label value), the pods matching each term; filtering and
//! scoring a node are then lookups of its labels. Existing pods' terms are only read
//! from pods that have any (`NodeInfo::affinity_pods`).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use super::filters::NodeInfo;
use super::selector::{pod_labels, Namespaces, Selector};

/// Message of a node that a placed pod's required anti-affinity rules out.
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
/// Message of a node outside every domain the pod's required affinity accepts.
pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// Message of a node in a domain the pod's required anti-affinity rules out.
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";

/// Weight of a placed pod's *required* affinity term matching the incoming pod, in the
/// score (kube-scheduler's default `hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// A compiled pod (anti-)affinity term.
struct Term<'a> {
    namespaces: Namespaces,
    selector: Option<Selector>,
    key: &'a str,
    weight: i64,
}

impl Term<'_> {
    fn matches(&self, pod: &Pod) -> bool {
        self.namespaces
            .contains(pod.metadata.namespace.as_deref().unwrap_or_default())
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(pod_labels(pod)))
    }
}

/// The four term lists of one pod.
#[derive(Default)]
struct Terms<'a> {
    affinity: Vec<Term<'a>>,
    anti: Vec<Term<'a>>,
    preferred: Vec<Term<'a>>,
    preferred_anti: Vec<Term<'a>>,
}

fn compile<'a>(
    owner: &'a Pod,
    t: &'a PodAffinityTerm,
    weight: i64,
    namespaces: &[Arc<Namespace>],
) -> Term<'a> {
    let own = owner.metadata.namespace.as_deref().unwrap_or_default();
    Term {
        namespaces: Namespaces::compile(
            t.namespaces.as_deref(),
            t.namespace_selector.as_ref(),
            own,
            namespaces,
        ),
        selector: Selector::compile(
            t.label_selector.as_ref(),
            pod_labels(owner),
            t.match_label_keys.as_deref().unwrap_or_default(),
            t.mismatch_label_keys.as_deref().unwrap_or_default(),
        ),
        key: &t.topology_key,
        weight,
    }
}

impl<'a> Terms<'a> {
    fn of(pod: &'a Pod, namespaces: &[Arc<Namespace>]) -> Terms<'a> {
        let Some(a) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return Terms::default();
        };
        let required = |list: Option<&'a Vec<PodAffinityTerm>>| -> Vec<Term<'a>> {
            list.into_iter()
                .flatten()
                .map(|t| compile(pod, t, 1, namespaces))
                .collect()
        };
        let preferred = |list: Option<&'a Vec<WeightedPodAffinityTerm>>| -> Vec<Term<'a>> {
            list.into_iter()
                .flatten()
                .map(|w| compile(pod, &w.pod_affinity_term, w.weight.into(), namespaces))
                .collect()
        };
        let pa = a.pod_affinity.as_ref();
        let anti = a.pod_anti_affinity.as_ref();
        Terms {
            affinity: required(pa.and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            anti: required(anti.and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred: preferred(pa.and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        }
    }
}

/// Whether `pod` has any pod affinity or anti-affinity term (and so must be looked at
/// when other pods are scheduled).
pub fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// Pods matching per topology domain: (topology key, node label value) → count.
type Counts<'a> = HashMap<(&'a str, &'a str), i64>;

fn add<'a>(counts: &mut Counts<'a>, node: &'a Node, key: &'a str, by: i64) {
    if let Some(v) = node.metadata.labels.as_ref().and_then(|l| l.get(key)) {
        *counts.entry((key, v.as_str())).or_default() += by;
    }
}

fn count(counts: &Counts<'_>, key: &str, value: &str) -> i64 {
    counts.get(&(key, value)).copied().unwrap_or(0)
}

/// The inter-pod affinity state of one incoming pod over one snapshot of the cluster.
pub struct InterPod<'a> {
    affinity: Vec<Term<'a>>,
    anti: Vec<Term<'a>>,
    /// Whether the pod matches all its own required affinity terms.
    self_match: bool,
    /// Domains with pods matching all the pod's required affinity terms.
    affinity_counts: Counts<'a>,
    /// Domains with pods matching one of its required anti-affinity terms.
    anti_counts: Counts<'a>,
    /// Domains whose placed pods' required anti-affinity matches the incoming pod.
    existing_anti: Counts<'a>,
    /// Preference per domain: preferred terms both ways and placed pods' required
    /// affinity, weighted.
    preference: Counts<'a>,
}

impl<'a> InterPod<'a> {
    /// Counts what the filter and the score need for `pod` in one pass over the pods of
    /// `infos`; `namespaces` resolve the terms' namespace selectors.
    pub fn new(pod: &'a Pod, infos: &'a [NodeInfo], namespaces: &[Arc<Namespace>]) -> Self {
        let own = Terms::of(pod, namespaces);
        let mut s = InterPod {
            self_match: !own.affinity.is_empty() && own.affinity.iter().all(|t| t.matches(pod)),
            affinity: own.affinity,
            anti: own.anti,
            affinity_counts: Counts::new(),
            anti_counts: Counts::new(),
            existing_anti: Counts::new(),
            preference: Counts::new(),
        };
        let (preferred, preferred_anti) = (own.preferred, own.preferred_anti);
        let scan_all = !s.affinity.is_empty()
            || !s.anti.is_empty()
            || !preferred.is_empty()
            || !preferred_anti.is_empty();
        for info in infos {
            let node = info.node.as_ref();
            for p in &info.affinity_pods {
                let theirs = Terms::of(p, namespaces);
                for t in theirs.anti.iter().filter(|t| t.matches(pod)) {
                    add(&mut s.existing_anti, node, t.key, 1);
                }
                for t in theirs.affinity.iter().filter(|t| t.matches(pod)) {
                    add(&mut s.preference, node, t.key, HARD_POD_AFFINITY_WEIGHT);
                }
                for t in theirs.preferred.iter().filter(|t| t.matches(pod)) {
                    add(&mut s.preference, node, t.key, t.weight);
                }
                for t in theirs.preferred_anti.iter().filter(|t| t.matches(pod)) {
                    add(&mut s.preference, node, t.key, -t.weight);
                }
            }
            if !scan_all {
                continue;
            }
            for p in &info.pods {
                if !s.affinity.is_empty() && s.affinity.iter().all(|t| t.matches(p)) {
                    for t in &s.affinity {
                        add(&mut s.affinity_counts, node, t.key, 1);
                    }
                }
                for t in s.anti.iter().filter(|t| t.matches(p)) {
                    add(&mut s.anti_counts, node, t.key, 1);
                }
                for t in preferred.iter().filter(|t| t.matches(p)) {
                    add(&mut s.preference, node, t.key, t.weight);
                }
                for t in preferred_anti.iter().filter(|t| t.matches(p)) {
                    add(&mut s.preference, node, t.key, -t.weight);
                }
            }
        }
        s
    }

    /// Why `node` cannot run the pod by pod (anti-)affinity, or None when it can; checked
    /// in kube's order: the pod's affinity, its anti-affinity, placed pods' anti-affinity.
    pub fn filter(&self, node: &Node) -> Option<&'static str> {
        let empty = Default::default();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        if !self.affinity.is_empty() {
            let mut pods_exist = true;
            for t in &self.affinity {
                let Some(v) = labels.get(t.key) else {
                    // Every topology key must be on the node.
                    return Some(AFFINITY);
                };
                if count(&self.affinity_counts, t.key, v) <= 0 {
                    pods_exist = false;
                }
            }
            // The first pod of a group with affinity to itself may go anywhere.
            let first_of_group = self.affinity_counts.is_empty() && self.self_match;
            if !pods_exist && !first_of_group {
                return Some(AFFINITY);
            }
        }
        let anti = self.anti.iter().any(|t| {
            labels
                .get(t.key)
                .is_some_and(|v| count(&self.anti_counts, t.key, v) > 0)
        });
        if anti {
            return Some(ANTI_AFFINITY);
        }
        let existing = !self.existing_anti.is_empty()
            && labels
                .iter()
                .any(|(k, v)| count(&self.existing_anti, k, v) > 0);
        existing.then_some(EXISTING_ANTI_AFFINITY)
    }

    /// The raw preference for `node`: sum of the weights of its domains (normalized
    /// over the feasible nodes by the caller, [`super::score::min_max`]).
    pub fn score(&self, node: &Node) -> i64 {
        let Some(labels) = node.metadata.labels.as_ref() else {
            return 0;
        };
        self.preference
            .iter()
            .filter(|((k, v), _)| labels.get(*k).is_some_and(|l| l == v))
            .map(|(_, w)| *w)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::filters::tests::{node, pod_in, zoned};
    use super::super::filters::{node_infos, pick, Inputs};
    use super::*;
    use serde_json::json;

    fn term(app: &str, key: &str) -> serde_json::Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    /// A pod labelled app=`app` in `default` with required `kind` terms.
    fn requiring(app: &str, kind: &str, terms: Vec<serde_json::Value>) -> Pod {
        pod_in(
            "default",
            json!({"app": app}),
            json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}),
        )
    }

    /// Node infos of `nodes` with `p` assumed on node `on`.
    fn infos_with(nodes: &[Arc<Node>], on: &str, p: Pod) -> Vec<NodeInfo> {
        let mut assumed = HashMap::new();
        placed(on, p, &mut assumed);
        node_infos(nodes, &[], &assumed)
    }

    fn placed(on: &str, p: Pod, assumed: &mut HashMap<String, (String, Arc<Pod>)>) {
        let uid = format!("uid{}", assumed.len());
        assumed.insert(uid, (on.to_string(), Arc::new(p)));
    }

    const HOST: &str = "kubernetes.io/hostname";
    const ZONE: &str = "topology.kubernetes.io/zone";

    #[test]
    fn required_anti_affinity_spreads_one_per_node_then_waits() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let web = requiring("web", "podAntiAffinity", vec![term("web", HOST)]);
        let mut assumed = HashMap::new();
        let mut used = std::collections::HashSet::new();
        for _ in 0..3 {
            let infos = node_infos(&nodes, &[], &assumed);
            let on = pick(&web, &Inputs::nodes(&infos)).expect("a free node");
            assert!(used.insert(on.clone()), "{on} used twice");
            placed(&on, web.clone(), &mut assumed);
        }
        let infos = node_infos(&nodes, &[], &assumed);
        let err = pick(&web, &Inputs::nodes(&infos)).expect_err("no node left");
        assert!(
            err.starts_with(
                "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
            ),
            "{err}"
        );
        // A pod without terms but matched by the placed pods' anti-affinity is kept
        // away as well (symmetry).
        let plain = pod_in("default", json!({"app": "web"}), json!({}));
        let err = pick(&plain, &Inputs::nodes(&infos)).expect_err("symmetry");
        assert!(
            err.contains("3 node(s) didn't satisfy existing pods anti-affinity rules"),
            "{err}"
        );
        // Another namespace is not concerned.
        let elsewhere = pod_in("other", json!({"app": "web"}), json!({}));
        assert!(pick(&elsewhere, &Inputs::nodes(&infos)).is_ok());
    }

    #[test]
    fn zone_anti_affinity_rules_out_the_whole_zone() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let infos = infos_with(
            &nodes,
            "a",
            pod_in("default", json!({"app": "db"}), json!({})),
        );
        let p = requiring("web", "podAntiAffinity", vec![term("db", ZONE)]);
        for _ in 0..10 {
            assert_eq!(pick(&p, &Inputs::nodes(&infos)).as_deref(), Ok("c"));
        }
    }

    #[test]
    fn required_affinity_co_locates_and_the_first_of_a_group_goes_anywhere() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z2"), zoned("c", "z3")];
        let cache = requiring("cache", "podAffinity", vec![term("cache", ZONE)]);
        let mut assumed = HashMap::new();
        let infos = node_infos(&nodes, &[], &assumed);
        let first = pick(&cache, &Inputs::nodes(&infos)).expect("first goes anywhere");
        placed(&first, cache.clone(), &mut assumed);
        for _ in 0..5 {
            let infos = node_infos(&nodes, &[], &assumed);
            assert_eq!(pick(&cache, &Inputs::nodes(&infos)), Ok(first.clone()));
        }
        // A pod wanting a group that does not exist (and not matching itself) waits.
        let lonely = requiring("web", "podAffinity", vec![term("nothing", ZONE)]);
        let infos = node_infos(&nodes, &[], &assumed);
        let err = pick(&lonely, &Inputs::nodes(&infos)).expect_err("no such group");
        assert!(
            err.contains("3 node(s) didn't match pod affinity rules"),
            "{err}"
        );
        // A node without the topology key never satisfies affinity.
        let bare = node("bare", "8", json!({}));
        let nodes = vec![bare];
        let infos = node_infos(&nodes, &[], &HashMap::new());
        assert!(pick(&cache, &Inputs::nodes(&infos)).is_err());
    }

    #[test]
    fn namespace_selector_reaches_other_namespaces() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z2")];
        let infos = infos_with(
            &nodes,
            "b",
            pod_in("team-x", json!({"app": "db"}), json!({})),
        );
        let ns: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "team-x", "labels": {"team": "x"}}}),
        )
        .expect("ns");
        let namespaces = vec![Arc::new(ns)];
        let mut t = term("db", ZONE);
        t["namespaceSelector"] = json!({"matchLabels": {"team": "x"}});
        let p = pod_in(
            "default",
            json!({"app": "web"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}}),
        );
        let inputs = Inputs {
            namespaces: &namespaces,
            ..Inputs::nodes(&infos)
        };
        for _ in 0..5 {
            assert_eq!(pick(&p, &inputs).as_deref(), Ok("b"));
        }
        // Without the selector the term looks only at the pod's own namespace.
        let own = requiring("web", "podAffinity", vec![term("db", ZONE)]);
        assert!(pick(&own, &inputs).is_err());
    }

    #[test]
    fn preferred_terms_weigh_in_the_score() {
        let nodes = vec![zoned("a", "z1"), zoned("b", "z2")];
        let infos = infos_with(
            &nodes,
            "a",
            pod_in("default", json!({"app": "db"}), json!({})),
        );
        let pref = |kind: &str| {
            pod_in(
                "default",
                json!({"app": "web"}),
                json!({"affinity": {kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": term("db", ZONE)}]}}}),
            )
        };
        for _ in 0..5 {
            let inputs = Inputs::nodes(&infos);
            assert_eq!(pick(&pref("podAffinity"), &inputs).as_deref(), Ok("a"));
            assert_eq!(pick(&pref("podAntiAffinity"), &inputs).as_deref(), Ok("b"));
        }
        // A placed pod's preferred anti-affinity toward the incoming one counts too.
        let infos = infos_with(
            &nodes,
            "a",
            pod_in(
                "default",
                json!({"app": "db"}),
                json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term("web", HOST)}]}}}),
            ),
        );
        let web = pod_in("default", json!({"app": "web"}), json!({}));
        for _ in 0..5 {
            assert_eq!(pick(&web, &Inputs::nodes(&infos)).as_deref(), Ok("b"));
        }
    }
}
