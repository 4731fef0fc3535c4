//! The DefaultStorageClass admission of new PersistentVolumeClaims, as kube-apiserver's
//! plugin does it: a claim created without `storageClassName` gets the default
//! StorageClass (annotated `storageclass.kubernetes.io/is-default-class: "true"`; the
//! newest when several are), and the `local-path` class each server creates at start.
//! A claim with `storageClassName: ""` asks for no class and is left alone. New claims
//! and volumes get their in-use protection finalizers.

use pikube_raft::Store;
use serde_json::{json, Value};

use super::objects::{child_map, meta_str};
use super::resources;
use super::rest::{self, ListOptions, Target};
use super::status::ApiError;
use crate::controllers::persistentvolume::protection::{PVC_PROTECTION, PV_PROTECTION};
use crate::controllers::persistentvolume::{
    DEFAULT_CLASS, IS_DEFAULT_CLASS, LOCAL_PATH_PROVISIONER,
};

/// The beta name of the default-class annotation, still honoured by kube.
const BETA_IS_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// The `local-path` StorageClass (k3s's): local-path provisioner, WaitForFirstConsumer,
/// reclaim Delete, the cluster's default.
pub fn local_path_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS, "annotations": {IS_DEFAULT_CLASS: "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": false,
    })
}

/// Whether a StorageClass object is marked as the default.
pub fn is_default(class: &Value) -> bool {
    [IS_DEFAULT_CLASS, BETA_IS_DEFAULT_CLASS].iter().any(|k| {
        class
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(*k))
            .and_then(Value::as_str)
            == Some("true")
    })
}

/// The name of the default StorageClass among `classes`: the newest marked one (the name
/// decides between equals), as kube does since 1.28.
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| is_default(c))
        .max_by(|a, b| {
            let created = |c: &Value| meta_str(c, "creationTimestamp").unwrap_or("").to_string();
            created(a)
                .cmp(&created(b))
                .then_with(|| meta_str(b, "name").cmp(&meta_str(a, "name")))
        })
        .and_then(|c| meta_str(c, "name").map(String::from))
}

/// Adds `finalizer` to a new object's finalizers unless it is there (kube's
/// StorageObjectInUseProtection admission).
fn protect(obj: &mut Value, finalizer: &str) {
    let meta = child_map(obj, "metadata");
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        return; // validation reports it
    }
    if let Some(items) = list.as_array_mut() {
        if !items.iter().any(|f| f.as_str() == Some(finalizer)) {
            items.push(json!(finalizer));
        }
    }
}

/// Defaults of a new claim or volume (kube's `SetDefaults_*` after `PrepareForCreate`):
/// status reset to phase Pending, `volumeMode` Filesystem.
fn defaults(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("status".into(), json!({"phase": "Pending"}));
    }
    child_map(obj, "spec")
        .entry("volumeMode")
        .or_insert_with(|| json!("Filesystem"));
}

/// Admits a new volume: defaults (reclaim policy Retain) and in-use protection.
pub fn admit_volume(pv: &mut Value) {
    if !pv.get("spec").is_some_and(Value::is_object) {
        return; // validation reports it
    }
    defaults(pv);
    child_map(pv, "spec")
        .entry("persistentVolumeReclaimPolicy")
        .or_insert_with(|| json!("Retain"));
    protect(pv, PV_PROTECTION);
}

/// Admits a new claim: in-use protection, and a claim without a class gets the
/// default one.
pub async fn admit(store: &Store, pvc: &mut Value) -> Result<(), ApiError> {
    if !pvc.get("spec").is_some_and(Value::is_object) {
        return Ok(()); // validation reports it
    }
    defaults(pvc);
    protect(pvc, PVC_PROTECTION);
    if pvc
        .pointer("/spec/storageClassName")
        .is_some_and(|c| !c.is_null())
    {
        return Ok(());
    }
    let def = resources::lookup("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| ApiError::internal("storageclasses are not served"))?;
    let target = Target {
        def,
        namespace: None,
        name: None,
        subresource: None,
    };
    let list = rest::list_stored(store, &target, &ListOptions::default()).await?;
    let classes = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(name) = default_class(&classes) {
        child_map(pvc, "spec").insert("storageClassName".into(), json!(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_default_class_wins() {
        let class = |name: &str, default: bool, created: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {IS_DEFAULT_CLASS: if default { "true" } else { "false" }}}})
        };
        let classes = vec![
            class("old", true, "2024-01-01T00:00:00Z"),
            class("new", true, "2025-01-01T00:00:00Z"),
            class("plain", false, "2026-01-01T00:00:00Z"),
        ];
        assert_eq!(default_class(&classes).as_deref(), Some("new"));
        assert_eq!(default_class(&classes[2..]), None);
        assert!(is_default(&local_path_class()));
    }

    #[test]
    fn new_volumes_are_pending_protected_and_retained() {
        let mut pv = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi"}},
            "status": {"phase": "Bound"}});
        admit_volume(&mut pv);
        assert_eq!(pv["status"], json!({"phase": "Pending"}));
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pv["metadata"]["finalizers"], json!([PV_PROTECTION]));
        admit_volume(&mut pv);
        assert_eq!(
            pv["metadata"]["finalizers"],
            json!([PV_PROTECTION]),
            "added once"
        );
    }
}
