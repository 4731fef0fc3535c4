//! Storage object in-use protection, as kube's pvc-protection and pv-protection
//! controllers: the API server gives every new claim the [`PVC_PROTECTION`] finalizer
//! and every new volume [`PV_PROTECTION`]; a deleted claim keeps its finalizer while a
//! pod that is not finished uses it, a deleted volume while it is Bound.

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::super::{watch_config, Context, Result};

/// Finalizer of claims that pods may still use.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Finalizer of volumes that may still be bound.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// Runs both protection loops until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watch_config(),
    )
    .watches(
        Api::<Pod>::all(client.clone()),
        watch_config(),
        |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            claims_of(&pod)
                .map(|c| ObjectRef::new(c).within(&ns))
                .collect::<Vec<_>>()
        },
    );
    let shutdown = shutdown.shared();
    let claim_loop = super::super::run(
        "pvc-protection",
        claims,
        protect_claim,
        ctx.clone(),
        shutdown.clone(),
    );
    let volumes = Controller::new(Api::<PersistentVolume>::all(client), watch_config());
    let volume_loop = super::super::run("pv-protection", volumes, protect_volume, ctx, shutdown);
    tokio::join!(claim_loop, volume_loop);
}

/// The claims a pod's volumes name.
pub fn claims_of(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// Removes `finalizer` from `obj` (a merge patch of the remaining list, guarded by the
/// resourceVersion it was computed from).
async fn release_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rest: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": obj.meta().resource_version,
    }});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

async fn protect_claim(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action> {
    if pvc.metadata.deletion_timestamp.is_none()
        || !pvc.finalizers().iter().any(|f| f == PVC_PROTECTION)
    {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    // Only scheduled pods count, as in kube-controller-manager: a node agent refuses to
    // start a pod on a claim that is being deleted, so a pod not yet on a node never will.
    let in_use = pods.items.iter().any(|p| {
        let scheduled = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if !scheduled {
            return false;
        }
        let done = matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        !done && claims_of(p).any(|c| c == name)
    });
    if in_use {
        return Ok(Action::await_change());
    }
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
    release_finalizer(&api, pvc.as_ref(), PVC_PROTECTION).await?;
    Ok(Action::await_change())
}

async fn protect_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action> {
    if pv.metadata.deletion_timestamp.is_none()
        || !pv.finalizers().iter().any(|f| f == PV_PROTECTION)
    {
        return Ok(Action::await_change());
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
        return Ok(Action::await_change());
    }
    let api = Api::<PersistentVolume>::all(ctx.client.clone());
    release_finalizer(&api, pv.as_ref(), PV_PROTECTION).await?;
    Ok(Action::await_change())
}
