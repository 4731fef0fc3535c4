//! The PersistentVolume controller, as kube-controller-manager's: binds claims to
//! volumes (a volume pre-bound to the claim, else the smallest fitting one), keeps the
//! phases of both (Pending/Bound/Lost for claims; Available/Bound/Released/Failed for
//! volumes) with kube's `pv.kubernetes.io/*` annotations, waits for the scheduler's
//! `volume.kubernetes.io/selected-node` on WaitForFirstConsumer classes, and hands claims
//! of the `rancher.io/local-path` class to the local-path provisioner ([`provisioner`]).
//! Released local-path volumes are removed by the agent of their node
//! (`agent::storage`), which owns their directory.

pub mod matching;
pub mod protection;
pub mod provisioner;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{watch_config, Context, Result};
use crate::events::{Kind, Recorder};

/// The provisioner name of the local-path class (k3s's).
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";
/// The default StorageClass every server creates (`--disable local-storage`: none).
pub const DEFAULT_CLASS: &str = "local-path";
/// The annotation that makes a StorageClass the default one.
pub const IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The node the scheduler chose for a WaitForFirstConsumer claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set on a claim once its binding is complete.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on the side of a binding that the controller (not the user) made.
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Which provisioner made a volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Which provisioner is asked for a claim's volume (and its beta name).
pub const STORAGE_PROVISIONER: [&str; 2] = [
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
];
/// Node annotation with the directory under which the node keeps local-path volumes
/// (`<data-dir>/storage`), published by its agent.
pub const STORAGE_DIR: &str = "pikube.io/local-path-storage";
/// The binding mode that waits for the scheduler.
pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";

/// The component name of the controller's Events.
const COMPONENT: &str = "persistentvolume-controller";

/// Runs the claim and volume loops until `shutdown`; `local_path`: whether this server
/// provisions the local-path class.
pub async fn run(
    ctx: Arc<Context>,
    local_path: bool,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (volumes, writer) = reflector::store();
    let volume_events = reflector::reflector(
        writer,
        watcher(Api::<PersistentVolume>::all(client.clone()), watch_config()),
    )
    .default_backoff()
    .touched_objects();
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watch_config(),
    );
    // A new or changed volume may fit any waiting claim, and concerns the claim it names.
    let known = claims.store();
    let claims = claims.watches_stream(volume_events, move |pv: PersistentVolume| {
        let mut refs: Vec<ObjectRef<PersistentVolumeClaim>> = known
            .state()
            .iter()
            .filter(|c| matching::bound_volume(c).is_none())
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect();
        if let Some(r) = pv.spec.and_then(|s| s.claim_ref) {
            if let (Some(name), Some(ns)) = (r.name, r.namespace) {
                refs.push(ObjectRef::new(&name).within(&ns));
            }
        }
        refs
    });
    let shutdown = shutdown.shared();
    let binder = Arc::new(Binder {
        volumes,
        local_path,
        noted: Mutex::new(HashMap::new()),
    });
    let claim_loop = super::run(
        "persistentvolume-binder",
        claims,
        move |pvc, ctx| sync_claim(pvc, ctx, binder.clone()),
        ctx.clone(),
        shutdown.clone(),
    );
    let vols = Controller::new(Api::<PersistentVolume>::all(client.clone()), watch_config())
        .watches(
            Api::<PersistentVolumeClaim>::all(client),
            watch_config(),
            |pvc: PersistentVolumeClaim| matching::bound_volume(&pvc).map(ObjectRef::new),
        );
    let volume_loop = super::run(
        "persistentvolume",
        vols,
        sync_volume,
        ctx.clone(),
        shutdown.clone(),
    );
    tokio::join!(claim_loop, volume_loop, protection::run(ctx, shutdown));
}

fn recorder(ctx: &Context) -> Recorder {
    Recorder::new(ctx.client.clone(), COMPONENT, None)
}

/// The API of the claim's namespace.
fn claims_api(ctx: &Context, pvc: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
    Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default())
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The claim's StorageClass, when it names one that exists.
pub async fn class_of(
    client: &Client,
    pvc: &PersistentVolumeClaim,
) -> Result<Option<StorageClass>> {
    let name = matching::claim_class(pvc);
    if name.is_empty() {
        return Ok(None);
    }
    Ok(Api::<StorageClass>::all(client.clone())
        .get_opt(name)
        .await?)
}

/// Whether a class waits for the first pod before binding.
pub fn waits_for_consumer(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some(WAIT_FOR_FIRST_CONSUMER)
}

/// What the claim loop keeps: the volume cache, whether it provisions local-path, and
/// when it last recorded each waiting claim's Event.
struct Binder {
    volumes: Store<PersistentVolume>,
    local_path: bool,
    /// (claim uid, reason) → when its Event was last recorded.
    noted: Mutex<HashMap<(String, &'static str), Instant>>,
}

/// How often a claim that keeps waiting repeats its Event.
const NOTE_EVERY: Duration = Duration::from_secs(60);

impl Binder {
    /// Records a claim Event unless the same one was recorded for it within
    /// [`NOTE_EVERY`] (a waiting claim is synced on every volume change).
    fn note(
        &self,
        ctx: &Context,
        pvc: &PersistentVolumeClaim,
        reason: &'static str,
        message: &str,
    ) {
        let key = (pvc.metadata.uid.clone().unwrap_or_default(), reason);
        let now = Instant::now();
        {
            let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
            if noted
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < NOTE_EVERY)
            {
                return;
            }
            noted.retain(|_, t| now.duration_since(*t) < NOTE_EVERY);
            noted.insert(key, now);
        }
        let kind = if reason == "FailedBinding" {
            Kind::Warning
        } else {
            Kind::Normal
        };
        recorder(ctx).record(pvc, None, kind, reason, message);
    }
}

async fn sync_claim(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
    binder: Arc<Binder>,
) -> Result<Action> {
    let volumes = &binder.volumes;
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if volumes.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if let Some(name) = matching::bound_volume(&pvc) {
        let pv = volumes.get(&ObjectRef::new(name));
        return sync_bound_claim(&pvc, &ctx, &binder, pv.as_deref()).await;
    }
    let class = class_of(&ctx.client, &pvc).await?;
    let selected = annotation(&pvc.metadata, SELECTED_NODE).map(String::from);
    if waits_for_consumer(class.as_ref()) && selected.is_none() {
        set_claim_phase(&ctx, &pvc, "Pending").await?;
        binder.note(
            &ctx,
            &pvc,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        );
        return Ok(Action::await_change());
    }
    let node = match &selected {
        Some(n) => Api::<Node>::all(ctx.client.clone()).get_opt(n).await?,
        None => None,
    };
    let all = volumes.state();
    if let Some(pv) = matching::find(all.iter().map(|v| v.as_ref()), &pvc, node.as_ref()) {
        bind(&ctx, pv, &pvc).await?;
        return Ok(Action::await_change());
    }
    set_claim_phase(&ctx, &pvc, "Pending").await?;
    let provisioner = class.as_ref().map(|c| c.provisioner.as_str());
    match provisioner {
        Some(p) if p != "kubernetes.io/no-provisioner" => {
            ask_provisioner(&ctx, &pvc, p).await?;
            if p == LOCAL_PATH_PROVISIONER && binder.local_path {
                if let (Some(class), Some(node)) = (&class, &node) {
                    provisioner::provision(&ctx, &pvc, class, node).await?;
                }
            }
        }
        _ => {
            let class_name = matching::claim_class(&pvc);
            let message = if class_name.is_empty() {
                "no persistent volumes available for this claim and no storage class is set"
                    .to_string()
            } else if class.is_none() {
                format!("storageclass.storage.k8s.io {class_name:?} not found")
            } else {
                format!("no persistent volumes available for this claim of class {class_name:?}")
            };
            binder.note(&ctx, &pvc, "FailedBinding", &message);
        }
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// A claim that names its volume (`pv`, None when it does not exist): completes the
/// binding when the volume agrees.
async fn sync_bound_claim(
    pvc: &PersistentVolumeClaim,
    ctx: &Context,
    binder: &Binder,
    pv: Option<&PersistentVolume>,
) -> Result<Action> {
    let Some(pv) = pv else {
        let was_bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if was_bound {
            set_claim_phase(ctx, pvc, "Lost").await?;
            recorder(ctx).record(
                pvc,
                None,
                Kind::Warning,
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            );
        } else {
            set_claim_phase(ctx, pvc, "Pending").await?;
        }
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    if claim_ref.is_none() && !matching::compatible(pv, pvc) {
        // A claim naming a free volume still needs one that satisfies it (kube's
        // checkVolumeSatisfyClaim): class, mode, access modes, capacity.
        set_claim_phase(ctx, pvc, "Pending").await?;
        binder.note(
            ctx,
            pvc,
            "VolumeMismatch",
            &format!(
                "Cannot bind to requested volume {:?}: it does not satisfy the claim (storage class, volume mode, access modes or capacity)",
                pv.name_any()
            ),
        );
    } else if claim_ref.is_none() || matching::claimed_by(pv, pvc) {
        bind(ctx, pv, pvc).await?;
    } else {
        set_claim_phase(ctx, pvc, "Pending").await?;
        binder.note(
            ctx,
            pvc,
            "FailedBinding",
            "volume is already bound to a different claim",
        );
    }
    Ok(Action::await_change())
}

/// Binds `pv` and `pvc` to each other (volume first, as kube does), then sets both
/// phases to Bound.
async fn bind(ctx: &Context, pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> Result<()> {
    let pv_name = pv.name_any();
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone());
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let ref_complete = claim_ref.is_some_and(|r| r.uid.as_deref() == pvc.metadata.uid.as_deref());
    if !ref_complete {
        let mut patch = json!({
            "metadata": {"resourceVersion": pv.metadata.resource_version},
            "spec": {"claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": pvc.namespace(), "name": pvc.name_any(),
                "uid": pvc.metadata.uid, "resourceVersion": pvc.metadata.resource_version,
            }},
        });
        if claim_ref.is_none() {
            patch["metadata"]["annotations"] = json!({BOUND_BY_CONTROLLER: "yes"});
        }
        pvs.patch(&pv_name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        pvs.patch_status(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound", "message": null, "reason": null}})),
        )
        .await?;
    }
    let claims = claims_api(ctx, pvc);
    let named = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv_name.as_str());
    let completed = annotation(&pvc.metadata, BIND_COMPLETED).is_some();
    if !named || !completed {
        let mut annotations = json!({BIND_COMPLETED: "yes"});
        if !named {
            annotations[BOUND_BY_CONTROLLER] = json!("yes");
        }
        let patch = json!({
            "metadata": {"resourceVersion": pvc.metadata.resource_version, "annotations": annotations},
            "spec": {"volumeName": pv_name},
        });
        claims
            .patch(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let status = pvc.status.clone().unwrap_or_default();
    if status.phase.as_deref() != Some("Bound") || status.capacity != spec.capacity {
        claims
            .patch_status(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Bound",
                    "capacity": spec.capacity,
                    "accessModes": spec.access_modes,
                }})),
            )
            .await?;
        tracing::info!(claim = %ObjectRef::from_obj(pvc), volume = %pv_name, "bound");
    }
    Ok(())
}

async fn set_claim_phase(ctx: &Context, pvc: &PersistentVolumeClaim, phase: &str) -> Result<()> {
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
        return Ok(());
    }
    claims_api(ctx, pvc)
        .patch_status(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await?;
    Ok(())
}

/// Marks the claim for an external provisioner (kube's `storage-provisioner`
/// annotations) and says so in an Event.
async fn ask_provisioner(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    provisioner: &str,
) -> Result<()> {
    if annotation(&pvc.metadata, STORAGE_PROVISIONER[0]) == Some(provisioner) {
        return Ok(());
    }
    let annotations: serde_json::Map<String, serde_json::Value> = STORAGE_PROVISIONER
        .iter()
        .map(|k| (k.to_string(), json!(provisioner)))
        .collect();
    claims_api(ctx, pvc)
        .patch(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await?;
    recorder(ctx).record(
        pvc,
        None,
        Kind::Normal,
        "ExternalProvisioning",
        &format!("Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."),
    );
    Ok(())
}

async fn set_volume_phase(
    ctx: &Context,
    pv: &PersistentVolume,
    phase: &str,
    message: Option<&str>,
) -> Result<()> {
    let status = pv.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some(phase)
        && status.and_then(|s| s.message.as_deref()) == message
    {
        return Ok(());
    }
    Api::<PersistentVolume>::all(ctx.client.clone())
        .patch_status(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase, "message": message}})),
        )
        .await?;
    Ok(())
}

async fn sync_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action> {
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.clone());
    let Some(r) = claim_ref.filter(|r| r.uid.as_deref().is_some_and(|u| !u.is_empty())) else {
        // Unclaimed, or pre-bound by name to a claim that does not exist yet.
        set_volume_phase(&ctx, &pv, "Available", None).await?;
        return Ok(Action::await_change());
    };
    let claims = Api::<PersistentVolumeClaim>::namespaced(
        ctx.client.clone(),
        r.namespace.as_deref().unwrap_or("default"),
    );
    let claim = claims
        .get_opt(r.name.as_deref().unwrap_or_default())
        .await?
        .filter(|c| c.metadata.uid == r.uid);
    match claim {
        Some(c) => {
            let names_me = c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                == Some(pv.name_any().as_str());
            if names_me {
                set_volume_phase(&ctx, &pv, "Bound", None).await?;
            }
            Ok(Action::await_change())
        }
        None => release(&ctx, &pv).await,
    }
}

/// The claim of a bound volume is gone: the volume is Released and its reclaim
/// policy applies.
async fn release(ctx: &Context, pv: &PersistentVolume) -> Result<Action> {
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    let ours = annotation(&pv.metadata, PROVISIONED_BY) == Some(LOCAL_PATH_PROVISIONER);
    match policy {
        // The agent of the volume's node removes its directory, then the volume.
        "Delete" if ours => set_volume_phase(ctx, pv, "Released", None).await?,
        "Delete" | "Recycle" => {
            let message = format!(
                "error getting {} volume plugin for volume {:?}: no {} volume plugin matched",
                if policy == "Delete" {
                    "deleter"
                } else {
                    "recycler"
                },
                pv.name_any(),
                if policy == "Delete" {
                    "deletable"
                } else {
                    "recyclable"
                },
            );
            set_volume_phase(ctx, pv, "Failed", Some(&message)).await?;
            recorder(ctx).record(pv, None, Kind::Warning, "VolumeFailedDelete", &message);
        }
        _ => set_volume_phase(ctx, pv, "Released", None).await?,
    }
    Ok(Action::await_change())
}
