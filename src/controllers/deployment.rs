//! The Deployment controller: one ReplicaSet per pod template (named by the template's
//! hash), rolled from old to new by RollingUpdate (maxSurge / maxUnavailable) or
//! Recreate, with the revision history and status conditions that `kubectl rollout`
//! reads.

use crate::controllers::owner_index::Feed;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::owner_index::OwnerIndex;
use super::{history, ownership, pods, watch_config, Context, Error, Result};
use crate::events::{Kind, Recorder};

/// Annotation holding the revision of a ReplicaSet (and of its Deployment).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Label distinguishing the ReplicaSets (and pods) of one template.
pub const HASH_LABEL: &str = "pod-template-hash";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// Runs the controller until `shutdown`. Pods come from the shared reflector indexed by
/// their ReplicaSet (`pod_cache`, fed by `pod_events`), so a reconcile counts them
/// without listing; a pod's change brings its Deployment back (found by name:
/// `<deployment>-<pod-template-hash>` owns the pod).
pub async fn run(
    ctx: Arc<Context>,
    pod_cache: OwnerIndex<Pod>,
    pod_events: Feed<Pod>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let deploys = Api::<Deployment>::all(ctx.client.clone());
    let rs = Api::<ReplicaSet>::all(ctx.client.clone());
    let controller = Controller::new(deploys, watch_config())
        .owns(rs, watch_config())
        .watches_stream(pod_events, |p: Pod| deployment_of(&p));
    let reconcile = move |d, ctx| reconcile(d, ctx, pod_cache.clone());
    super::run("deployment", controller, reconcile, ctx, shutdown).await;
}

/// The Deployment whose ReplicaSet controls `pod`, by the names Deployments give.
fn deployment_of(pod: &Pod) -> Option<ObjectRef<Deployment>> {
    let owner = pods::controller_of(&pod.metadata).filter(|o| o.kind == "ReplicaSet")?;
    let hash = pod.labels().get(HASH_LABEL)?;
    let name = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    Some(ObjectRef::new(name).within(pod.metadata.namespace.as_deref()?))
}

/// The template hash kube-controller-manager uses: FNV-1a of the template (and the
/// collision count), in the vowel-free alphabet of [`history::safe_hash`].
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let probe = collision_count.map(i32::to_le_bytes);
    history::safe_hash(std::iter::once(bytes.as_slice()).chain(probe.as_ref().map(|p| &p[..])))
}

/// Whether two templates are the same once the hash label is ignored.
fn same_template(a: Option<&PodTemplateSpec>, b: Option<&PodTemplateSpec>) -> bool {
    let strip = |t: Option<&PodTemplateSpec>| {
        let mut t = t.cloned().unwrap_or_default();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.remove(HASH_LABEL);
        }
        t
    };
    strip(a) == strip(b)
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// An int-or-percent of `total`, rounded up or down (maxSurge, maxUnavailable).
pub fn scaled(v: Option<&IntOrString>, total: i32, default: &str, round_up: bool) -> i32 {
    let v = v
        .cloned()
        .unwrap_or_else(|| IntOrString::String(default.to_string()));
    match v {
        IntOrString::Int(i) => i.max(0),
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * total as f64 / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// maxSurge and maxUnavailable of a rolling update; never both zero.
fn surge_and_unavailable(spec: &DeploymentSpec, replicas: i32) -> (i32, i32) {
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, "25%", true);
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        "25%",
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

/// Pod counts of one ReplicaSet, from its pods.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    active: i32,
    ready: i32,
    available: i32,
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Sets the replicas of a Deployment's ReplicaSets, recording each scaling as an Event
/// of the Deployment (as `kubectl describe deployment` shows them).
struct Scaler<'a> {
    api: &'a Api<ReplicaSet>,
    deployment: &'a Deployment,
    events: Recorder,
}

impl Scaler<'_> {
    async fn set(&self, rs: &mut ReplicaSet, n: i32) -> Result<()> {
        let from = spec_replicas(rs);
        if from == n {
            return Ok(());
        }
        *rs = self
            .api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": n}})),
            )
            .await?;
        let way = if n > from { "up" } else { "down" };
        self.events.record(
            self.deployment,
            None,
            Kind::Normal,
            "ScalingReplicaSet",
            &format!(
                "Scaled {way} replica set {} from {from} to {n}",
                rs.name_any()
            ),
        );
        Ok(())
    }
}

async fn reconcile(
    d: Arc<Deployment>,
    ctx: Arc<Context>,
    pod_cache: OwnerIndex<Pod>,
) -> Result<Action> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let api_rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
    let scaler = Scaler {
        api: &api_rs,
        deployment: d.as_ref(),
        events: Recorder::new(ctx.client.clone(), "deployment-controller", None),
    };
    let api_d = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| Error::Object("deployment has no spec".into()))?;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let owned = ownership::claim(&api_rs, d.as_ref(), &spec.selector, |_| true).await?;

    // Pod counts per ReplicaSet, from the pod cache.
    pod_cache
        .wait_until_ready()
        .await
        .map_err(|e| Error::Object(format!("pod cache: {e}")))?;
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut counts: HashMap<String, Counts> = HashMap::new();
    for rs in &owned {
        let uid = rs.uid().unwrap_or_default();
        for p in pod_cache.children(&uid) {
            if !pods::is_active(&p)
                || !pods::selector_matches(&spec.selector, p.metadata.labels.as_ref())
            {
                continue;
            }
            let c = counts.entry(uid.clone()).or_default();
            c.active += 1;
            c.ready += pods::is_ready(&p) as i32;
            c.available += pods::is_available(&p, min_ready, now) as i32;
        }
    }
    let count = |rs: &ReplicaSet| {
        counts
            .get(&rs.uid().unwrap_or_default())
            .copied()
            .unwrap_or_default()
    };

    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let (mut new_rs, mut old): (Vec<ReplicaSet>, Vec<ReplicaSet>) =
        owned.into_iter().partition(|rs| {
            same_template(
                rs.spec.as_ref().and_then(|s| s.template.as_ref()),
                Some(&spec.template),
            )
        });
    old.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let max_old_revision = old.iter().map(revision_of).max().unwrap_or(0);
    let paused = spec.paused == Some(true);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let mut created_new = false;

    let mut new_rs = match new_rs.pop() {
        Some(rs) => Some(rs),
        None if paused => None,
        None => {
            let hash = template_hash(&spec.template, collision);
            let mut template = spec.template.clone();
            let tm = template.metadata.get_or_insert_with(Default::default);
            let mut labels = tm.labels.clone().unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            tm.labels = Some(labels.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut annotations = BTreeMap::new();
            annotations.insert(REVISION.to_string(), (max_old_revision + 1).to_string());
            if let Some(cause) = d.annotations().get(CHANGE_CAUSE) {
                annotations.insert(CHANGE_CAUSE.into(), cause.clone());
            }
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    owner_references: pods::controller_ref(d.as_ref()).map(|r| vec![r]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(0),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template),
                }),
                status: None,
            };
            match api_rs.create(&PostParams::default(), &rs).await {
                Ok(rs) => {
                    created_new = true;
                    Some(rs)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // The name is taken by a ReplicaSet of another template: hash again.
                    let next = collision.unwrap_or(0) + 1;
                    api_d
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"collisionCount": next}})),
                        )
                        .await?;
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };

    // The new ReplicaSet carries the newest revision (an undo reuses an old one).
    if let Some(rs) = new_rs.as_mut() {
        if revision_of(rs) <= max_old_revision || rs.annotations().get(REVISION).is_none() {
            let mut ann = json!({REVISION: (max_old_revision + 1).to_string()});
            if let Some(cause) = d.annotations().get(CHANGE_CAUSE) {
                ann[CHANGE_CAUSE] = json!(cause);
            }
            *rs = api_rs
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": ann}})),
                )
                .await?;
        }
        let rev = revision_of(rs).to_string();
        if d.annotations().get(REVISION) != Some(&rev) {
            api_d
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {REVISION: rev}}})),
                )
                .await?;
        }
    }

    if !paused {
        if let Some(new) = new_rs.as_mut() {
            if recreate {
                for rs in old.iter_mut() {
                    scaler.set(rs, 0).await?;
                }
                let old_active: i32 = old.iter().map(|rs| count(rs).active).sum();
                if old_active == 0 {
                    scaler.set(new, replicas).await?;
                }
            } else {
                rolling_update(&scaler, spec, replicas, new, &mut old, &count).await?;
            }
        }
    }

    // History: old ReplicaSets scaled to zero beyond revisionHistoryLimit go.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && count(rs).active == 0)
        .collect();
    if idle.len() > limit {
        let mut idle = idle;
        idle.sort_by_key(|rs| revision_of(rs));
        for rs in idle.iter().take(idle.len() - limit) {
            super::delete(&api_rs, &rs.name_any(), &DeleteParams::background()).await?;
        }
    }

    // Status.
    let all: Vec<&ReplicaSet> = new_rs.iter().chain(old.iter()).collect();
    let total: i32 = all.iter().map(|rs| count(rs).active).sum();
    let updated = new_rs.as_ref().map(|rs| count(rs).active).unwrap_or(0);
    let ready: i32 = all.iter().map(|rs| count(rs).ready).sum();
    let available: i32 = all.iter().map(|rs| count(rs).available).sum();
    let (_, max_unavailable) = surge_and_unavailable(spec, replicas);
    let complete = updated == replicas && available >= replicas && total == replicas;
    let prev = d.status.clone().unwrap_or_default();
    let prev_conds = prev.conditions.clone().unwrap_or_default();
    let stamp = Time(now);
    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        let old = prev_conds.iter().find(|c| c.type_ == type_);
        let same = old.is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason));
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.clone()),
            last_transition_time: if old.is_some_and(|c| c.status == status) {
                old.and_then(|c| c.last_transition_time.clone())
            } else {
                Some(stamp.clone())
            },
            last_update_time: if same
                && old.and_then(|c| c.message.as_deref()) == Some(message.as_str())
            {
                old.and_then(|c| c.last_update_time.clone())
            } else {
                Some(stamp.clone())
            },
        }
    };
    let available_cond = if available >= replicas - max_unavailable {
        cond(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        cond(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let rs_name = new_rs.as_ref().map(|rs| rs.name_any()).unwrap_or_default();
    let deadline = spec.progress_deadline_seconds.unwrap_or(600) as i64;
    let prev_progress = prev_conds.iter().find(|c| c.type_ == "Progressing");
    let progressed = prev.updated_replicas != Some(updated)
        || prev.available_replicas != Some(available)
        || prev.replicas != Some(total)
        || prev.ready_replicas != Some(ready);
    let progressing_cond = if paused {
        cond(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
        )
    } else if complete {
        cond(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
        )
    } else if created_new {
        cond(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{rs_name}\""),
        )
    } else if progressed
        || prev_progress.is_none_or(|c| c.reason.as_deref() == Some("DeploymentPaused"))
    {
        cond(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
        )
    } else if prev_progress
        .and_then(|c| c.last_update_time.as_ref())
        .is_some_and(|t| {
            t.0.checked_add(SignedDuration::from_secs(deadline))
                .is_ok_and(|end| end < now)
        })
        || prev_progress.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        cond(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
        )
    } else {
        prev_progress.cloned().unwrap_or_else(|| {
            cond(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        })
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total.max(replicas) - available).max(0)),
        conditions: Some(vec![available_cond, progressing_cond]),
        collision_count: collision,
        terminating_replicas: None,
    };
    if d.status.as_ref() != Some(&status) {
        api_d
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    Ok(if complete || paused {
        Action::await_change()
    } else {
        // Availability (minReadySeconds) and the progress deadline advance with time.
        Action::requeue(Duration::from_secs(2))
    })
}

/// One step of a rolling update: grow the new ReplicaSet within maxSurge, then shrink
/// old ones as far as maxUnavailable allows, unhealthy pods first.
async fn rolling_update(
    scaler: &Scaler<'_>,
    spec: &DeploymentSpec,
    replicas: i32,
    new: &mut ReplicaSet,
    old: &mut [ReplicaSet],
    count: &(dyn Fn(&ReplicaSet) -> Counts + Sync),
) -> Result<()> {
    let (surge, max_unavailable) = surge_and_unavailable(spec, replicas);
    let new_spec = spec_replicas(new);
    let all_spec = |new: &ReplicaSet, old: &[ReplicaSet]| -> i32 {
        spec_replicas(new) + old.iter().map(spec_replicas).sum::<i32>()
    };
    if new_spec > replicas {
        scaler.set(new, replicas).await?;
    } else if new_spec < replicas {
        let room = replicas + surge - all_spec(new, old);
        if room > 0 {
            scaler
                .set(new, new_spec + room.min(replicas - new_spec))
                .await?;
        }
    }
    if old.iter().all(|rs| spec_replicas(rs) == 0) {
        return Ok(());
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = (spec_replicas(new) - count(new).available).max(0);
    let mut budget = all_spec(new, old) - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // Unhealthy old pods go first: removing them costs no availability.
    for rs in old.iter_mut() {
        let s = spec_replicas(rs);
        let unhealthy = (s - count(rs).available.min(s)).max(0);
        if s == 0 || unhealthy == 0 || budget <= 0 {
            continue;
        }
        let down = unhealthy.min(budget);
        scaler.set(rs, s - down).await?;
        budget -= down;
    }
    // Then available ones, as far as availability allows.
    let available: i32 = std::iter::once(&*new)
        .chain(old.iter())
        .map(|rs| count(rs).available.min(spec_replicas(rs)))
        .sum();
    let mut can = (available - min_available).min(budget);
    for rs in old.iter_mut() {
        if can <= 0 {
            break;
        }
        let s = spec_replicas(rs);
        if s == 0 {
            continue;
        }
        let down = s.min(can);
        scaler.set(rs, s - down).await?;
        can -= down;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_changes_with_the_template() {
        let t1: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "v1"}]},
        }))
        .expect("template");
        let mut t2 = t1.clone();
        if let Some(s) = t2.spec.as_mut() {
            s.containers[0].image = Some("v2".into());
        }
        let h1 = template_hash(&t1, None);
        assert_eq!(h1, template_hash(&t1, None));
        assert_ne!(h1, template_hash(&t2, None));
        assert_ne!(h1, template_hash(&t1, Some(1)));
        assert!(
            h1.chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h1}"
        );
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let spec: DeploymentSpec = serde_json::from_value(json!({
            "selector": {"matchLabels": {"a": "b"}},
            "template": {},
        }))
        .expect("spec");
        assert_eq!(surge_and_unavailable(&spec, 5), (2, 1));
        assert_eq!(surge_and_unavailable(&spec, 1), (1, 0));
        let spec: DeploymentSpec = serde_json::from_value(json!({
            "selector": {"matchLabels": {"a": "b"}},
            "template": {},
            "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}},
        }))
        .expect("spec");
        assert_eq!(surge_and_unavailable(&spec, 5), (0, 1));
    }
}
