//! The scheduler's volume binding (kube-scheduler's VolumeBinding plugin): a pod whose
//! claim is missing, being deleted, or unbound with an Immediate class cannot be
//! scheduled; a bound claim's volume limits the pod to the nodes of its node affinity;
//! an unbound WaitForFirstConsumer claim needs a node with a matching free volume or a
//! class with a provisioner. Once a node is chosen, such a claim gets a matching free
//! volume (its `claimRef`, the binder completes it) or the `selected-node` annotation
//! that the provisioner waits for.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::controllers::persistentvolume::{
    matching, waits_for_consumer, LOCAL_PATH_PROVISIONER, SELECTED_NODE, STORAGE_DIR,
};

/// Why a node cannot host the pod's bound volumes (kube's message).
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// Why a node offers nothing for the pod's unbound WaitForFirstConsumer claims.
pub const NO_VOLUME: &str = "node(s) didn't find available persistent volumes to bind";
/// The message for a pod with an unbound claim of an Immediate class.
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// Caches of the claims, volumes and classes the scheduler reads.
pub struct VolumeCaches {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
}

impl VolumeCaches {
    /// The caches, each kept current by a future added to `streams` (run them alongside).
    pub fn start(
        client: &Client,
        streams: &mut Vec<futures::future::BoxFuture<'static, ()>>,
    ) -> VolumeCaches {
        VolumeCaches {
            claims: super::cache(client, streams),
            volumes: super::cache(client, streams),
            classes: super::cache(client, streams),
        }
    }

    /// Whether all three caches have their first list.
    pub async fn ready(&self) -> bool {
        self.claims.wait_until_ready().await.is_ok()
            && self.volumes.wait_until_ready().await.is_ok()
            && self.classes.wait_until_ready().await.is_ok()
    }

    /// The pod's claims as the node filters need them, or the message of why no node
    /// can run the pod (kube's PreFilter).
    pub fn check(&self, pod: &Pod) -> Result<PodVolumes, String> {
        let ns = pod.namespace().unwrap_or_default();
        let mut out = PodVolumes::default();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(src) = &v.persistent_volume_claim else {
                continue;
            };
            let name = &src.claim_name;
            let claim = self
                .claims
                .get(&ObjectRef::new(name).within(&ns))
                .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            if let Some(pv) = matching::bound_volume(&claim) {
                let volume = self
                    .volumes
                    .get(&ObjectRef::new(pv))
                    .ok_or_else(|| format!("persistentvolume {pv:?} not found"))?;
                out.bound.push(volume);
                continue;
            }
            let class_name = matching::claim_class(&claim);
            let class = (!class_name.is_empty())
                .then(|| self.classes.get(&ObjectRef::new(class_name)))
                .flatten();
            if !waits_for_consumer(class.as_deref()) {
                return Err(UNBOUND_IMMEDIATE.into());
            }
            out.delayed.push((claim, class));
        }
        if !out.delayed.is_empty() {
            out.free = self.volumes.state();
        }
        Ok(out)
    }
}

/// The claims of one pod: bound volumes, and unbound WaitForFirstConsumer claims with
/// their class and the volumes that might serve them.
#[derive(Default)]
pub struct PodVolumes {
    bound: Vec<Arc<PersistentVolume>>,
    delayed: Vec<(Arc<PersistentVolumeClaim>, Option<Arc<StorageClass>>)>,
    free: Vec<Arc<PersistentVolume>>,
}

/// Whether the class's provisioner can make a volume for `claim` on `node`: local-path
/// only on nodes that publish their storage directory, and only for single-node access
/// modes (what its provisioner accepts), so a pod never lands where its claim cannot be
/// provisioned.
fn provisions(class: Option<&StorageClass>, claim: &PersistentVolumeClaim, node: &Node) -> bool {
    let Some(class) = class else {
        return false;
    };
    if class.provisioner == "kubernetes.io/no-provisioner" {
        return false;
    }
    if class.provisioner != LOCAL_PATH_PROVISIONER {
        return true;
    }
    let published = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STORAGE_DIR));
    let single_node = claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .all(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod");
    published && single_node
}

impl PodVolumes {
    /// Why `node` cannot serve the pod's volumes, or None when it can.
    pub fn unfit(&self, node: &Node) -> Option<String> {
        if self.bound.iter().any(|pv| !matching::fits_node(pv, node)) {
            return Some(NODE_CONFLICT.into());
        }
        for (claim, class) in &self.delayed {
            let found = matching::find(self.free.iter().map(|v| v.as_ref()), claim, Some(node));
            if found.is_none() && !provisions(class.as_deref(), claim, node) {
                return Some(NO_VOLUME.into());
            }
        }
        None
    }

    /// After `node` was chosen: gives each unbound claim a matching free volume there, or
    /// marks it for its provisioner with the selected node.
    pub async fn assign(&self, client: &Client, on: &Node) -> Result<(), kube::Error> {
        let node = on.name_any();
        let node = node.as_str();
        let mut taken: Vec<String> = Vec::new();
        for (claim, _) in &self.delayed {
            let candidates = self
                .free
                .iter()
                .map(|v| v.as_ref())
                .filter(|v| !taken.contains(&v.name_any()));
            let ns = claim.namespace().unwrap_or_default();
            if let Some(pv) = matching::find(candidates, claim, Some(on)) {
                taken.push(pv.name_any());
                let patch = json!({
                    "metadata": {"resourceVersion": pv.metadata.resource_version,
                        "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
                    "spec": {"claimRef": {
                        "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                        "namespace": ns, "name": claim.name_any(), "uid": claim.metadata.uid,
                    }},
                });
                Api::<PersistentVolume>::all(client.clone())
                    .patch(
                        &pv.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                continue;
            }
            let current = claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SELECTED_NODE));
            if current.map(String::as_str) != Some(node) {
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                    .patch(
                        &claim.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": {SELECTED_NODE: node}}})),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// The scheduling failure message when the pod's claims rule out every one of `nodes`
/// before any node is looked at (kube's PreFilter form).
pub fn unschedulable(nodes: usize, reason: &str) -> String {
    format!(
        "0/{nodes} nodes are available: {reason}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        )
        .expect("node")
    }

    fn on_node(name: &str) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("pv-{name}")},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual", "hostPath": {"path": "/x"},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [name]}]}]}}},
            }))
            .expect("pv"),
        )
    }

    #[test]
    fn bound_volumes_pin_the_pod_to_their_nodes() {
        let vols = PodVolumes {
            bound: vec![on_node("a")],
            ..Default::default()
        };
        assert_eq!(vols.unfit(&node("a")), None);
        assert_eq!(vols.unfit(&node("b")).as_deref(), Some(NODE_CONFLICT));
    }

    #[test]
    fn delayed_claims_need_a_free_volume_or_a_provisioner() {
        let claim: Arc<PersistentVolumeClaim> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "c", "namespace": "ns", "uid": "u"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                    "resources": {"requests": {"storage": "1Gi"}}},
            }))
            .expect("pvc"),
        );
        let static_class: Arc<StorageClass> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "manual"},
                "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}))
            .expect("class"),
        );
        let vols = PodVolumes {
            delayed: vec![(claim.clone(), Some(static_class))],
            free: vec![on_node("a")],
            ..Default::default()
        };
        assert_eq!(vols.unfit(&node("a")), None);
        assert_eq!(vols.unfit(&node("b")).as_deref(), Some(NO_VOLUME));
        let dynamic: Arc<StorageClass> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "manual"},
                "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}))
            .expect("class"),
        );
        let vols = PodVolumes {
            delayed: vec![(claim.clone(), Some(dynamic.clone()))],
            ..Default::default()
        };
        // local-path provisions only on nodes that publish their storage directory.
        assert_eq!(vols.unfit(&node("b")).as_deref(), Some(NO_VOLUME));
        let mut publishing = node("b");
        publishing.metadata.annotations = Some(
            [(
                STORAGE_DIR.to_string(),
                "/var/lib/pikube/storage".to_string(),
            )]
            .into(),
        );
        assert_eq!(vols.unfit(&publishing), None);
        // … and only for single-node access modes.
        let mut shared = PersistentVolumeClaim::clone(&claim);
        if let Some(spec) = shared.spec.as_mut() {
            spec.access_modes = Some(vec!["ReadWriteMany".into()]);
        }
        let vols = PodVolumes {
            delayed: vec![(Arc::new(shared), Some(dynamic))],
            ..Default::default()
        };
        assert_eq!(vols.unfit(&publishing).as_deref(), Some(NO_VOLUME));
        assert_eq!(
            unschedulable(2, UNBOUND_IMMEDIATE),
            "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
        );
    }
}
