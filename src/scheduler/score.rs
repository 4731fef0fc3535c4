//! How feasible nodes are ranked: each scoring plugin gives every feasible node 0–100,
//! normalized as kube-scheduler normalizes it, and the node's score is the weighted sum
//! with kube-scheduler's default weights, so no plugin swamps another:
//!
//! | plugin | weight | 0–100 from |
//! |---|---|---|
//! | least allocated (NodeResourcesFit) | 1 | mean free share of cpu and memory after the pod |
//! | preferred node affinity (NodeAffinity) | 2 | matched preference weights ÷ the best node's |
//! | PreferNoSchedule taints (TaintToleration) | 3 | untolerated taints, reversed: fewest → 100 |
//! | topology spread (PodTopologySpread) | 2 | [`super::spread::Spread::scores`] |
//! | pod (anti-)affinity (InterPodAffinity) | 2 | weighted domain preferences, min–max over the nodes |

use k8s_openapi::api::core::v1::Pod;

use super::affinity::InterPod;
use super::filters::{term_matches, tolerates, NodeInfo, Usage};
use super::spread::Spread;

/// Weight of the least-allocated resource score.
pub const RESOURCES: f64 = 1.0;
/// Weight of preferred node affinity.
pub const NODE_AFFINITY: f64 = 2.0;
/// Weight of the PreferNoSchedule taint score.
pub const TAINTS: f64 = 3.0;
/// Weight of topology spread.
pub const SPREAD: f64 = 2.0;
/// Weight of pod affinity and anti-affinity.
pub const INTER_POD: f64 = 2.0;

/// Least allocated: free share of cpu and memory left after `req`, 0–100.
fn least_allocated(req: &Usage, info: &NodeInfo) -> f64 {
    let free = |cap: f64, used: f64| {
        if cap <= 0.0 {
            0.0
        } else {
            ((cap - used) / cap).clamp(0.0, 1.0)
        }
    };
    let a = &info.allocatable;
    let u = &info.scored;
    50.0 * free(a.cpu, u.cpu + req.cpu) + 50.0 * free(a.memory, u.memory + req.memory)
}

/// Sum of the weights of the pod's preferred node affinity terms `info` matches.
fn node_preference(pod: &Pod, info: &NodeInfo) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, &info.node))
        .map(|p| i64::from(p.weight))
        .sum()
}

/// Untolerated PreferNoSchedule taints of `info`.
fn intolerable(pod: &Pod, info: &NodeInfo) -> i64 {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    info.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(tolerations, t))
        .count() as i64
}

/// kube's `DefaultNormalizeScore`: scale to 0–100 by the largest (all 0, or all 100
/// when `reverse`, if every score is 0); `reverse` turns most into least.
pub fn by_max(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|s| match (max > 0, reverse) {
            (false, false) => 0,
            (false, true) => 100,
            (true, r) => {
                let v = 100 * s / max;
                if r {
                    100 - v
                } else {
                    v
                }
            }
        })
        .collect()
}

/// InterPodAffinity's normalization: 0–100 between the smallest and largest score
/// (all 0 when they are equal).
pub fn min_max(raw: &[i64]) -> Vec<i64> {
    let min = raw.iter().copied().min().unwrap_or(0);
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|s| {
            if max > min {
                100 * (s - min) / (max - min)
            } else {
                0
            }
        })
        .collect()
}

/// The weighted total of every plugin's normalized score, per node of `feasible`.
pub fn totals<'a>(
    pod: &Pod,
    req: &Usage,
    feasible: &[&'a NodeInfo],
    all: &'a [NodeInfo],
    inter: &InterPod<'_>,
    spread: &Spread<'a>,
) -> Vec<f64> {
    let collect = |f: &dyn Fn(&NodeInfo) -> i64| feasible.iter().map(|i| f(i)).collect::<Vec<_>>();
    let node_affinity = by_max(&collect(&|i| node_preference(pod, i)), false);
    let taints = by_max(&collect(&|i| intolerable(pod, i)), true);
    let inter_pod = min_max(&collect(&|i| inter.score(&i.node)));
    let spread = spread.scores(feasible, all);
    feasible
        .iter()
        .enumerate()
        .map(|(n, info)| {
            RESOURCES * least_allocated(req, info)
                + NODE_AFFINITY * node_affinity[n] as f64
                + TAINTS * taints[n] as f64
                + SPREAD * spread[n] as f64
                + INTER_POD * inter_pod[n] as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizations_follow_kube() {
        assert_eq!(by_max(&[0, 5, 10], false), vec![0, 50, 100]);
        assert_eq!(by_max(&[0, 1, 2], true), vec![100, 50, 0]);
        assert_eq!(by_max(&[0, 0], true), vec![100, 100]);
        assert_eq!(by_max(&[0, 0], false), vec![0, 0]);
        assert_eq!(min_max(&[-50, 0, 50]), vec![0, 50, 100]);
        assert_eq!(min_max(&[7, 7]), vec![0, 0]);
    }
}
