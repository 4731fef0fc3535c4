//! The StatefulSet controller, as kube-controller-manager's: pods `<set>-<ordinal>` with
//! a stable identity (hostname = pod name, subdomain = serviceName, so the headless
//! Service gives each a DNS name) and their own PersistentVolumeClaims
//! `<claim>-<set>-<ordinal>` from volumeClaimTemplates, created before the pod.
//! OrderedReady creates one pod at a time in ordinal order, each once its predecessors
//! are Running and Ready, and removes from the highest ordinal; Parallel does not wait.
//! RollingUpdate replaces pods from the highest ordinal down to the partition, one at a
//! time; OnDelete leaves that to the user. Template history is kept as
//! ControllerRevisions; status reports current and update revisions.

use crate::controllers::owner_index::Feed;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::history::{self, HASH_LABEL};
use super::{ownership, pods, watch_config, Context, Error, Result};
use crate::events::{Kind, Recorder};

/// Label naming a pod of a StatefulSet (for per-pod Services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label carrying a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the controller until `shutdown`; pods come from the controllers' shared pod
/// watch (`pod_events`).
pub async fn run(
    ctx: Arc<Context>,
    pod_events: Feed<Pod>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<StatefulSet>::all(client.clone()), watch_config())
        .owns_stream(pod_events)
        .owns(Api::<ControllerRevision>::all(client), watch_config());
    super::run("statefulset", controller, reconcile, ctx, shutdown).await;
}

/// The ordinal of a pod of the set named `set` (`<set>-<n>`), if it is one.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let (parent, n) = pod.rsplit_once('-')?;
    if parent != set || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The name of a claim of a pod: `<claim>-<set>-<ordinal>`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && pods::is_ready(p)
}

fn healthy(p: &Pod) -> bool {
    running_and_ready(p) && !terminating(p)
}

/// The revision (name) a pod was made from.
pub fn revision_of(p: &Pod) -> &str {
    p.labels().get(HASH_LABEL).map(String::as_str).unwrap_or("")
}

/// One thing the controller does to the set's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the pod of `ordinal` from `revision` (its claims first).
    Create {
        /// The ordinal.
        ordinal: i32,
        /// The revision name to make it from.
        revision: String,
    },
    /// Delete a pod: failed, beyond the replica count (`condemned`), or out of date.
    Delete {
        /// The pod's name.
        name: String,
        /// Whether it goes because the set shrank (its claims may follow it).
        condemned: bool,
    },
}

/// The set's revisions as the pass sees them.
#[derive(Clone, Copy, Debug)]
pub struct Revisions<'a> {
    /// The revision most pods are at (`status.currentRevision`).
    pub current: &'a str,
    /// The revision of the set's template.
    pub update: &'a str,
}

fn partition(spec: &StatefulSetSpec) -> Option<i32> {
    let us = spec.update_strategy.as_ref()?;
    if us.type_.as_deref().is_some_and(|t| t != "RollingUpdate") {
        return None;
    }
    us.rolling_update.as_ref()?.partition
}

fn on_delete(spec: &StatefulSetSpec) -> bool {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete")
}

/// What the controller does next (kube's `updateStatefulSet`): replace finished pods and
/// create missing ones in ordinal order; remove pods beyond the replica count from the
/// highest ordinal; then roll out the update revision from the highest ordinal down to
/// the partition. With OrderedReady ("monotonic") the pass stops at the first step, or
/// at the first pod that is not Running, Ready and available; Parallel goes on.
pub fn plan(
    name: &str,
    spec: &StatefulSetSpec,
    pods: &[Pod],
    revs: Revisions<'_>,
    now: Timestamp,
) -> Vec<Step> {
    let n = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| running_and_ready(p) && pods::is_available(p, min_ready, now);
    let mut replicas: Vec<Option<&Pod>> = vec![None; n as usize];
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal(name, &p.name_any()) else {
            continue;
        };
        if ord >= start && ord < start + n {
            replicas[(ord - start) as usize] = Some(p);
        } else {
            condemned.push((ord, p));
        }
    }
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
    // The first pod that is not healthy: a replica (a missing one counts), else the
    // lowest condemned one.
    let first_unhealthy: Option<String> = replicas
        .iter()
        .find_map(|r| match r {
            Some(p) if healthy(p) => None,
            Some(p) => Some(p.name_any()),
            None => Some(String::new()),
        })
        .or_else(|| {
            condemned
                .iter()
                .rev()
                .find(|(_, p)| !healthy(p))
                .map(|(_, p)| p.name_any())
        });
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let part = partition(spec).unwrap_or(0);
    let mut steps = Vec::new();
    for (i, slot) in replicas.iter().enumerate() {
        let ord = start + i as i32;
        match slot {
            Some(p) if matches!(phase(p), "Failed" | "Succeeded") && !terminating(p) => {
                steps.push(Step::Delete {
                    name: p.name_any(),
                    condemned: false,
                });
                if monotonic {
                    return steps;
                }
            }
            None => {
                let below_partition = (i as i32) < part;
                let revision = if below_partition {
                    revs.current
                } else {
                    revs.update
                };
                steps.push(Step::Create {
                    ordinal: ord,
                    revision: revision.to_string(),
                });
                if monotonic {
                    return steps;
                }
            }
            Some(p) => {
                if monotonic && (terminating(p) || !available(p)) {
                    return steps;
                }
            }
        }
    }
    for (_, p) in &condemned {
        if terminating(p) {
            if monotonic {
                return steps;
            }
            continue;
        }
        let first = first_unhealthy.as_deref() == p.metadata.name.as_deref();
        if monotonic && !available(p) && !first {
            return steps;
        }
        steps.push(Step::Delete {
            name: p.name_any(),
            condemned: true,
        });
        if monotonic {
            return steps;
        }
    }
    if on_delete(spec) {
        return steps;
    }
    for target in (part.max(0)..n).rev() {
        let Some(p) = replicas[target as usize] else {
            return steps;
        };
        if revision_of(p) != revs.update && !terminating(p) {
            steps.push(Step::Delete {
                name: p.name_any(),
                condemned: false,
            });
            return steps;
        }
        if !healthy(p) {
            return steps;
        }
    }
    steps
}

/// The status kube reports for the set's pods (kube's `updateStatus` and
/// `completeRollingUpdate`).
pub fn status(
    set: &StatefulSet,
    pods: &[Pod],
    revs: Revisions<'_>,
    collision_count: Option<i32>,
    now: Timestamp,
) -> StatefulSetStatus {
    let spec = set.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let (mut replicas, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for p in pods {
        replicas += 1;
        if running_and_ready(p) {
            ready += 1;
            available += pods::is_available(p, min_ready, now) as i32;
        }
        if !terminating(p) {
            current += (revision_of(p) == revs.current) as i32;
            updated += (revision_of(p) == revs.update) as i32;
        }
    }
    let mut current_revision = revs.current.to_string();
    if !on_delete(&spec) && updated == replicas && ready == replicas {
        current = updated;
        current_revision = revs.update.to_string();
    }
    StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(revs.update.to_string()),
        collision_count: Some(collision_count.unwrap_or(0)),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

/// The pod of `ordinal` made from `template` (kube's `newStatefulSetPod`): identity
/// labels, hostname and subdomain, and a volume for each claim template.
pub fn new_pod(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
    owner: OwnerReference,
) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let mut pod = pods::from_template(template, owner, &set_name);
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    let spec = set.spec.clone().unwrap_or_default();
    let ps = pod.spec.get_or_insert_with(Default::default);
    ps.hostname = Some(name);
    ps.subdomain = spec.service_name.filter(|s| !s.is_empty());
    let volumes = ps.volumes.get_or_insert_with(Vec::new);
    for claim in spec.volume_claim_templates.iter().flatten() {
        let cname = claim.metadata.name.clone().unwrap_or_default();
        let v = Volume {
            name: cname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&cname, &set_name, ordinal),
                read_only: None,
            }),
            ..Default::default()
        };
        match volumes.iter_mut().find(|x| x.name == cname) {
            Some(x) => *x = v,
            None => volumes.push(v),
        }
    }
    pod
}

/// The owner references a claim of `pod` should carry under the set's
/// persistentVolumeClaimRetentionPolicy (kube's `updateClaimOwnerRefForSetAndPod`): the
/// set owns it when `whenDeleted: Delete` (and the pod is in range), the pod owns it
/// when `whenScaled: Delete` and the pod was scaled away. None when nothing changes.
pub fn claim_refs(
    spec: &StatefulSetSpec,
    refs: &[OwnerReference],
    set: &OwnerReference,
    pod: &OwnerReference,
    scaled_down: bool,
) -> Option<Vec<OwnerReference>> {
    let policy = spec.persistent_volume_claim_retention_policy.as_ref();
    let deleted = policy.and_then(|p| p.when_deleted.as_deref()) == Some("Delete");
    let scaled = policy.and_then(|p| p.when_scaled.as_deref()) == Some("Delete");
    let want_set = deleted && !(scaled && scaled_down);
    let want_pod = scaled && scaled_down;
    let mut next: Vec<OwnerReference> = refs
        .iter()
        .filter(|r| r.uid != set.uid && r.uid != pod.uid)
        .cloned()
        .collect();
    let plain = |r: &OwnerReference| OwnerReference {
        controller: None,
        block_owner_deletion: None,
        ..r.clone()
    };
    if want_set {
        next.push(
            refs.iter()
                .find(|r| r.uid == set.uid)
                .cloned()
                .unwrap_or_else(|| plain(set)),
        );
    }
    if want_pod {
        next.push(
            refs.iter()
                .find(|r| r.uid == pod.uid)
                .cloned()
                .unwrap_or_else(|| plain(pod)),
        );
    }
    let same = next.len() == refs.len() && next.iter().all(|r| refs.iter().any(|x| x.uid == r.uid));
    (!same).then_some(next)
}

/// The claims of the pod of `ordinal`, as volumeClaimTemplates describe them (labels
/// include the set's selector).
fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let cname = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&cname, &set.name_any(), ordinal)),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    finalizers: t.metadata.finalizers.clone(),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The work of one reconcile, with the APIs it needs.
struct Pass<'a> {
    set: &'a StatefulSet,
    spec: &'a StatefulSetSpec,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    existing_claims: BTreeMap<String, PersistentVolumeClaim>,
    set_ref: OwnerReference,
}

impl Pass<'_> {
    /// Creates the missing claims of the pod of `ordinal` and fixes the owner references
    /// of existing ones; `pod` is its owner reference once the pod exists.
    async fn sync_claims(
        &self,
        ordinal: i32,
        pod: Option<&OwnerReference>,
        scaled_down: bool,
    ) -> Result<()> {
        for mut claim in claims_for(self.set, ordinal) {
            let name = claim.name_any();
            match self.existing_claims.get(&name) {
                None if scaled_down => {}
                None => {
                    let none = OwnerReference::default();
                    if let Some(refs) =
                        claim_refs(self.spec, &[], &self.set_ref, pod.unwrap_or(&none), false)
                    {
                        claim.metadata.owner_references = Some(refs);
                    }
                    match self.claims.create(&PostParams::default(), &claim).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(existing) => {
                    let Some(pod) = pod else { continue };
                    let refs = existing.owner_references();
                    if let Some(next) = claim_refs(self.spec, refs, &self.set_ref, pod, scaled_down)
                    {
                        self.claims
                            .patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"metadata": {
                                    "ownerReferences": next,
                                    "resourceVersion": existing.resource_version(),
                                }})),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn pod_ref(p: &Pod) -> OwnerReference {
    OwnerReference {
        api_version: Pod::api_version(&()).to_string(),
        kind: Pod::kind(&()).to_string(),
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let client = ctx.client.clone();
    let events = Recorder::new(client.clone(), "statefulset-controller", None);
    let api_sets = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let api_revs = Api::<ControllerRevision>::namespaced(client.clone(), &ns);
    let spec = set
        .spec
        .as_ref()
        .ok_or_else(|| Error::Object("statefulset has no spec".into()))?;
    let set_ref = pods::controller_ref(set.as_ref())
        .ok_or_else(|| Error::Object("statefulset has no uid".into()))?;
    let collision = set.status.as_ref().and_then(|s| s.collision_count);
    let hist = history::sync(
        &api_revs,
        set.as_ref(),
        &spec.selector,
        &spec.template,
        collision,
    )
    .await?;
    let update = hist.update.name_any();
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .and_then(|c| hist.named(c))
        .map(|r| r.name_any())
        .unwrap_or_else(|| update.clone());
    let revs = Revisions {
        current: &current,
        update: &update,
    };
    let api_pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let set_name = name.clone();
    let owned = ownership::claim(&api_pods, set.as_ref(), &spec.selector, move |p: &Pod| {
        pods::is_active(p) && ordinal(&set_name, &p.name_any()).is_some()
    })
    .await?;
    let owned: Vec<Pod> = owned
        .into_iter()
        .filter(|p| ordinal(&name, &p.name_any()).is_some())
        .collect();
    let now = Timestamp::now();

    if set.metadata.deletion_timestamp.is_none() {
        let api_claims = Api::<PersistentVolumeClaim>::namespaced(client, &ns);
        let existing_claims = if spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            let lp = ListParams::default().labels(&pods::match_labels_query(&spec.selector));
            api_claims
                .list(&lp)
                .await?
                .items
                .into_iter()
                .map(|c| (c.name_any(), c))
                .collect()
        } else {
            BTreeMap::new()
        };
        let pass = Pass {
            set: set.as_ref(),
            spec,
            pods: api_pods.clone(),
            claims: api_claims,
            existing_claims,
            set_ref,
        };
        let n = spec.replicas.unwrap_or(1).max(0);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        // Claims of running pods: missing ones created, owners as the policy says.
        for p in &owned {
            if let Some(ord) = ordinal(&name, &p.name_any()) {
                let in_range = ord >= start && ord < start + n;
                if in_range && !terminating(p) {
                    pass.sync_claims(ord, Some(&pod_ref(p)), false).await?;
                }
            }
        }
        for step in plan(&name, spec, &owned, revs, now) {
            match step {
                Step::Create { ordinal, revision } => {
                    let template = if revision == update {
                        Some(spec.template.clone())
                    } else {
                        hist.named(&revision).and_then(history::template_of)
                    }
                    .unwrap_or_else(|| spec.template.clone());
                    pass.sync_claims(ordinal, None, false).await?;
                    let pod = new_pod(&set, &template, &revision, ordinal, pass.set_ref.clone());
                    match pass.pods.create(&PostParams::default(), &pod).await {
                        Ok(_) => events.record(
                            set.as_ref(),
                            None,
                            Kind::Normal,
                            "SuccessfulCreate",
                            &format!(
                                "create Pod {} in StatefulSet {name} successful",
                                pod.name_any()
                            ),
                        ),
                        // The previous pod of this ordinal is still going away.
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Step::Delete {
                    name: pod_name,
                    condemned,
                } => {
                    if condemned {
                        if let Some(p) = owned.iter().find(|p| p.name_any() == pod_name) {
                            if let Some(ord) = ordinal(&name, &pod_name) {
                                pass.sync_claims(ord, Some(&pod_ref(p)), true).await?;
                            }
                        }
                    }
                    super::delete(&pass.pods, &pod_name, &DeleteParams::default()).await?;
                    events.record(
                        set.as_ref(),
                        None,
                        Kind::Normal,
                        "SuccessfulDelete",
                        &format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                    );
                }
            }
        }
    }

    // History: revisions no pod and no status uses, beyond revisionHistoryLimit, go.
    let in_use: HashSet<String> = owned
        .iter()
        .map(|p| revision_of(p).to_string())
        .chain([current.clone(), update.clone()])
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(10);
    history::prune(&api_revs, &hist.revisions, &in_use, limit).await?;

    let st = status(&set, &owned, revs, hist.collision_count, now);
    super::write_status(&api_sets, &name, set.status.as_ref(), &st).await?;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let waiting = owned
        .iter()
        .any(|p| running_and_ready(p) && !pods::is_available(p, min_ready, now));
    Ok(if waiting {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}

#[cfg(test)]
#[path = "statefulset_tests.rs"]
mod tests;
