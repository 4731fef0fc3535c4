//! Label selectors and namespace sets as pod affinity terms and topology spread
//! constraints use them, compiled once per scheduling pass.
//!
//! Unlike a controller's selector, an empty `labelSelector: {}` here matches every pod
//! and a missing one matches none (kube's `LabelSelectorAsSelector`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, NodeSelectorRequirement, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::filters::requirement_matches;

/// A compiled label selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    reqs: Vec<NodeSelectorRequirement>,
}

fn requirement(key: &str, operator: &str, value: &str) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_string(),
        operator: operator.to_string(),
        values: Some(vec![value.to_string()]),
    }
}

/// The labels of a pod (empty when it has none).
pub fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

impl Selector {
    /// `selector` of a term owned by a pod with `owner` labels: None when there is no
    /// selector (matches nothing). `match_keys` add `key In (owner's value)` and
    /// `mismatch_keys` add `key NotIn (owner's value)` for keys the owner has, as the
    /// API server merges `matchLabelKeys`/`mismatchLabelKeys` into the selector.
    pub fn compile(
        selector: Option<&LabelSelector>,
        owner: &BTreeMap<String, String>,
        match_keys: &[String],
        mismatch_keys: &[String],
    ) -> Option<Selector> {
        let selector = selector?;
        let mut reqs: Vec<NodeSelectorRequirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| requirement(k, "In", v))
            .collect();
        reqs.extend(
            selector
                .match_expressions
                .iter()
                .flatten()
                .map(|e| NodeSelectorRequirement {
                    key: e.key.clone(),
                    operator: e.operator.clone(),
                    values: e.values.clone(),
                }),
        );
        for (keys, op) in [(match_keys, "In"), (mismatch_keys, "NotIn")] {
            for k in keys {
                if let Some(v) = owner.get(k) {
                    reqs.push(requirement(k, op, v));
                }
            }
        }
        Some(Selector { reqs })
    }

    /// A selector of `key In (value)` for every pair of `labels` (a Service's or a
    /// ReplicationController's map selector).
    pub fn from_map(labels: &BTreeMap<String, String>) -> Selector {
        Selector {
            reqs: labels
                .iter()
                .map(|(k, v)| requirement(k, "In", v))
                .collect(),
        }
    }

    /// Adds the requirements of `other`.
    pub fn extend(&mut self, other: Selector) {
        self.reqs.extend(other.reqs);
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| requirement_matches(r, labels))
    }
}

/// The namespaces a pod affinity term looks at: those it names, those its
/// `namespaceSelector` picks, or (with neither) the owner pod's own.
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    all: bool,
    names: HashSet<String>,
}

impl Namespaces {
    /// Compiles a term's `namespaces` and `namespaceSelector` for a pod in `own`, with
    /// the cluster's `namespaces` to resolve the selector against.
    pub fn compile(
        names: Option<&[String]>,
        selector: Option<&LabelSelector>,
        own: &str,
        namespaces: &[Arc<Namespace>],
    ) -> Namespaces {
        let names = names.unwrap_or_default();
        let mut out = Namespaces {
            all: false,
            names: names.iter().cloned().collect(),
        };
        match selector {
            None if names.is_empty() => {
                out.names.insert(own.to_string());
            }
            None => {}
            Some(sel) => {
                let empty = BTreeMap::new();
                let Some(sel) = Selector::compile(Some(sel), &empty, &[], &[]) else {
                    return out;
                };
                if sel.is_empty() {
                    out.all = true;
                    return out;
                }
                for ns in namespaces {
                    if sel.matches(ns.metadata.labels.as_ref().unwrap_or(&empty)) {
                        out.names.extend(ns.metadata.name.clone());
                    }
                }
            }
        }
        out
    }

    /// Whether namespace `ns` is one of them.
    pub fn contains(&self, ns: &str) -> bool {
        self.all || self.names.contains(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: serde_json::Value) -> BTreeMap<String, String> {
        serde_json::from_value(v).expect("labels")
    }

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).expect("selector")
    }

    #[test]
    fn empty_matches_all_and_missing_matches_none() {
        let owner = BTreeMap::new();
        let any = labels(json!({"app": "x"}));
        assert!(Selector::compile(None, &owner, &[], &[]).is_none());
        let all = Selector::compile(Some(&sel(json!({}))), &owner, &[], &[]).expect("some");
        assert!(all.matches(&any) && all.matches(&BTreeMap::new()));
        let s = Selector::compile(
            Some(&sel(json!({"matchLabels": {"app": "x"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}))),
            &owner,
            &[],
            &[],
        )
        .expect("some");
        assert!(s.matches(&any));
        assert!(!s.matches(&labels(json!({"app": "x", "tier": "db"}))));
        assert!(!s.matches(&labels(json!({"app": "y"}))));
    }

    #[test]
    fn match_label_keys_take_the_owners_values() {
        let owner = labels(json!({"app": "x", "hash": "1", "tenant": "a"}));
        let s = Selector::compile(
            Some(&sel(json!({"matchLabels": {"app": "x"}}))),
            &owner,
            &["hash".into(), "absent".into()],
            &["tenant".into()],
        )
        .expect("some");
        assert!(s.matches(&labels(json!({"app": "x", "hash": "1", "tenant": "b"}))));
        assert!(!s.matches(&labels(json!({"app": "x", "hash": "2"}))));
        assert!(!s.matches(&labels(json!({"app": "x", "hash": "1", "tenant": "a"}))));
    }

    #[test]
    fn namespaces_default_to_the_owners_and_follow_the_selector() {
        let ns = |name: &str, team: &str| {
            Arc::new(
                serde_json::from_value::<Namespace>(
                    json!({"metadata": {"name": name, "labels": {"team": team}}}),
                )
                .expect("ns"),
            )
        };
        let all = vec![ns("a", "red"), ns("b", "blue"), ns("c", "red")];
        let own = Namespaces::compile(None, None, "b", &all);
        assert!(own.contains("b") && !own.contains("a"));
        let red = sel(json!({"matchLabels": {"team": "red"}}));
        let picked = Namespaces::compile(Some(&["b".into()]), Some(&red), "x", &all);
        assert!(picked.contains("a") && picked.contains("b") && picked.contains("c"));
        assert!(!picked.contains("x"));
        let every = Namespaces::compile(None, Some(&sel(json!({}))), "x", &all);
        assert!(every.contains("anything"));
    }
}
