//! The local-path provisioner (k3s's `rancher.io/local-path`): for a claim of its class
//! and the node the scheduler chose, a volume `pvc-<uid>` — a `hostPath` directory
//! `<storage dir>/pvc-<uid>_<namespace>_<name>` on that node (the directory its agent
//! publishes in the [`STORAGE_DIR`] annotation), node affinity to that node, pre-bound to
//! the claim. The agent of the node creates and removes the directory; this side only
//! writes API objects.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{recorder, Context, LOCAL_PATH_PROVISIONER, PROVISIONED_BY, STORAGE_DIR};
use crate::controllers::{Error, Result};
use crate::events::Kind;

/// Annotation on a local-path volume naming the node that holds its directory (k3s's).
pub const VOLUME_NODE: &str = "local.path.provisioner/selected-node";

/// Access modes a node-local directory can honour.
const SUPPORTED_MODES: &[&str] = &["ReadWriteOnce", "ReadWriteOncePod"];

/// The name of the volume provisioned for a claim with `uid`.
pub fn volume_name(uid: &str) -> String {
    format!("pvc-{uid}")
}

/// The directory of a claim's volume under `storage_dir`.
pub fn volume_path(storage_dir: &str, uid: &str, namespace: &str, name: &str) -> String {
    format!(
        "{}/{}_{namespace}_{name}",
        storage_dir.trim_end_matches('/'),
        volume_name(uid)
    )
}

/// The volume for `pvc` on `node`; Err with the reason when it cannot be made.
pub fn volume_for(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
) -> std::result::Result<serde_json::Value, String> {
    let uid = pvc.metadata.uid.as_deref().unwrap_or_default();
    let node_name = node.name_any();
    let storage_dir = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STORAGE_DIR))
        .ok_or_else(|| format!("node {node_name:?} publishes no local-path storage directory"))?;
    let spec = pvc.spec.clone().unwrap_or_default();
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.is_empty() || modes.iter().any(|m| !SUPPORTED_MODES.contains(&m.as_str())) {
        return Err(
            "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes".into(),
        );
    }
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or("the claim requests no storage")?;
    let hostname = node
        .labels()
        .get("kubernetes.io/hostname")
        .cloned()
        .unwrap_or_else(|| node_name.clone());
    let ns = pvc.namespace().unwrap_or_default();
    Ok(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(uid),
            "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER, VOLUME_NODE: node_name},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
            "storageClassName": class.name_any(),
            "volumeMode": spec.volume_mode.as_deref().unwrap_or("Filesystem"),
            "hostPath": {
                "path": volume_path(storage_dir, uid, &ns, &pvc.name_any()),
                "type": "DirectoryOrCreate",
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]},
            ]}]}},
            "claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": ns, "name": pvc.name_any(),
                "uid": uid, "resourceVersion": pvc.metadata.resource_version,
            },
        },
    }))
}

/// Creates the volume of `pvc` on `node` unless it exists; the binder then binds it.
pub async fn provision(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
) -> Result<()> {
    let uid = pvc.metadata.uid.as_deref().unwrap_or_default();
    let api = Api::<PersistentVolume>::all(ctx.client.clone());
    if api.get_opt(&volume_name(uid)).await?.is_some() {
        return Ok(());
    }
    let pv = match volume_for(pvc, class, node) {
        Ok(pv) => pv,
        Err(reason) => {
            recorder(ctx).record(
                pvc,
                None,
                Kind::Warning,
                "ProvisioningFailed",
                &format!(
                    "failed to provision volume with StorageClass {:?}: {reason}",
                    class.name_any()
                ),
            );
            return Err(Error::Object(reason));
        }
    };
    let claim = format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any());
    recorder(ctx).record(
        pvc,
        None,
        Kind::Normal,
        "Provisioning",
        &format!("External provisioner is provisioning volume for claim {claim:?}"),
    );
    let pv: PersistentVolume =
        serde_json::from_value(pv).map_err(|e| Error::Object(e.to_string()))?;
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%claim, volume = %pv.name_any(), node = %node.name_any(), "provisioned");
    recorder(ctx).record(
        pvc,
        None,
        Kind::Normal,
        "ProvisioningSucceeded",
        &format!("Successfully provisioned volume {}", pv.name_any()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_gets_a_directory_on_its_node() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "shop", "uid": "abc"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .expect("pvc");
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": "local-path"}, "provisioner": LOCAL_PATH_PROVISIONER,
        }))
        .expect("class");
        let mut node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        }))
        .expect("node");
        assert!(volume_for(&pvc, &class, &node).is_err(), "no storage dir");
        node.annotations_mut()
            .insert(STORAGE_DIR.into(), "/var/lib/pikube/storage".into());
        let pv = volume_for(&pvc, &class, &node).expect("volume");
        assert_eq!(pv["metadata"]["name"], "pvc-abc");
        assert_eq!(
            pv["spec"]["hostPath"]["path"],
            "/var/lib/pikube/storage/pvc-abc_shop_data"
        );
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(pv["spec"]["claimRef"]["uid"], "abc");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                ["values"][0],
            "n1"
        );
        let mut rwx = pvc.clone();
        rwx.spec.as_mut().expect("spec").access_modes = Some(vec!["ReadWriteMany".into()]);
        assert!(volume_for(&rwx, &class, &node).is_err());
    }
}
