//! Which PersistentVolume a claim may bind to (kube's `FindMatchingVolume`): same class,
//! same volume mode, every requested access mode, the claim's selector, capacity at
//! least the request, and — when a node is known — the volume's node affinity; the
//! smallest volume that fits wins, a volume pre-bound to the claim before any other.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;

use crate::scheduler::{filters, quantity};

/// The storage class a claim asks for ("" = none).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// The storage class of a volume ("" = none).
pub fn volume_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// The volume a claim names (bound or pre-bound), if any.
pub fn bound_volume(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Bytes the claim requests (0 when it names none).
pub fn requested(pvc: &PersistentVolumeClaim) -> f64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::parse(&q.0))
        .unwrap_or(0.0)
}

/// Bytes the volume offers (0 when it names none).
pub fn capacity(pv: &PersistentVolume) -> f64 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::parse(&q.0))
        .unwrap_or(0.0)
}

/// Whether the volume's `claimRef` names this claim (by namespace and name, and by uid
/// when the reference has one).
pub fn claimed_by(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.name.as_deref() == Some(pvc.name_any().as_str())
                && r.namespace.as_deref() == pvc.namespace().as_deref()
                && r.uid
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || Some(u) == pvc.metadata.uid.as_deref())
        })
}

/// Whether `node` satisfies the volume's required node affinity (no affinity: any node).
pub fn fits_node(pv: &PersistentVolume, node: &Node) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|sel| {
            sel.node_selector_terms
                .iter()
                .any(|t| filters::term_matches(t, node))
        })
}

/// Whether `pv` could serve `pvc` apart from who it is bound to and where.
pub(crate) fn compatible(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    if volume_class(pv) != claim_class(pvc) {
        return false;
    }
    let mode = |m: Option<&String>| m.map_or("Filesystem", |m| m.as_str()).to_string();
    if mode(vs.volume_mode.as_ref()) != mode(cs.volume_mode.as_ref()) {
        return false;
    }
    let offered = vs.access_modes.as_deref().unwrap_or_default();
    if !cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m))
    {
        return false;
    }
    let selected = match &cs.selector {
        None => true,
        Some(sel) if sel.match_labels.is_none() && sel.match_expressions.is_none() => true,
        Some(sel) => super::super::pods::selector_matches(sel, pv.metadata.labels.as_ref()),
    };
    selected && capacity(pv) >= requested(pvc)
}

/// The volume `pvc` should bind to among `volumes`: one pre-bound to it, else the
/// smallest unclaimed fitting one (on `node` when given). None when nothing fits.
pub fn find<'a>(
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let mut best: Option<&PersistentVolume> = None;
    for pv in volumes {
        if pv.metadata.deletion_timestamp.is_some() || !compatible(pv, pvc) {
            continue;
        }
        if node.is_some_and(|n| !fits_node(pv, n)) {
            continue;
        }
        let claimed = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some();
        if claimed {
            if claimed_by(pv, pvc) {
                return Some(pv);
            }
            continue;
        }
        if best.is_none_or(|b| capacity(pv) < capacity(b)) {
            best = Some(pv);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual", "hostPath": {"path": "/tmp/x"}},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).expect("pv")
    }

    fn pvc(size: &str, extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
            "spec": {"resources": {"requests": {"storage": size}},
                "accessModes": ["ReadWriteOnce"], "storageClassName": "manual"},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).expect("pvc")
    }

    fn pick<'a>(vols: &'a [PersistentVolume], c: &PersistentVolumeClaim) -> Option<&'a str> {
        find(vols, c, None).and_then(|v| v.metadata.name.as_deref())
    }

    #[test]
    fn the_smallest_fitting_volume_wins() {
        let vols = [
            pv("big", "10Gi", json!({})),
            pv("small", "1Gi", json!({})),
            pv("fits", "2Gi", json!({})),
        ];
        assert_eq!(pick(&vols, &pvc("1500Mi", json!({}))), Some("fits"));
        assert_eq!(pick(&vols, &pvc("1Gi", json!({}))), Some("small"));
        assert_eq!(pick(&vols, &pvc("11Gi", json!({}))), None);
    }

    #[test]
    fn class_modes_and_selector_must_match() {
        let vols = [pv("v", "1Gi", json!({}))];
        let other_class = pvc("1Gi", json!({"spec": {"storageClassName": "gold"}}));
        assert_eq!(pick(&vols, &other_class), None);
        let rwx = pvc("1Gi", json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
        assert_eq!(pick(&vols, &rwx), None);
        let block = pvc("1Gi", json!({"spec": {"volumeMode": "Block"}}));
        assert_eq!(pick(&vols, &block), None);
        let slow = pvc(
            "1Gi",
            json!({"spec": {"selector": {"matchLabels": {"tier": "slow"}}}}),
        );
        assert_eq!(pick(&vols, &slow), None);
        let fast = pvc(
            "1Gi",
            json!({"spec": {"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fast"]}]}}}),
        );
        assert_eq!(pick(&vols, &fast), Some("v"));
    }

    #[test]
    fn claimed_volumes_are_skipped_unless_pre_bound_to_the_claim() {
        let other =
            json!({"spec": {"claimRef": {"namespace": "ns", "name": "other", "uid": "u9"}}});
        let mine = json!({"spec": {"claimRef": {"namespace": "ns", "name": "data"}}});
        let vols = [
            pv("taken", "1Gi", other),
            pv("free", "1Gi", json!({})),
            pv("reserved", "5Gi", mine),
        ];
        assert_eq!(pick(&vols, &pvc("1Gi", json!({}))), Some("reserved"));
        let vols = [pv(
            "taken",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "ns", "name": "data", "uid": "old"}}}),
        )];
        assert_eq!(
            pick(&vols, &pvc("1Gi", json!({}))),
            None,
            "a released volume of an earlier claim of that name"
        );
    }

    #[test]
    fn node_affinity_limits_where_a_volume_serves() {
        let affinity = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}});
        let vols = [pv("local", "1Gi", affinity)];
        let node = |n: &str| -> Node {
            serde_json::from_value(
                json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}}),
            )
            .expect("node")
        };
        let c = pvc("1Gi", json!({}));
        assert!(find(&vols, &c, Some(&node("a"))).is_some());
        assert!(find(&vols, &c, Some(&node("b"))).is_none());
    }
}
