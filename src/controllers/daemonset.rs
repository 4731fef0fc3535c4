//! The DaemonSet controller, as kube-controller-manager's: one pod per eligible node.
//! A node is eligible when the template's nodeSelector and required node affinity match
//! it and its NoSchedule/NoExecute taints (with those its conditions imply) are
//! tolerated; pods get the daemon tolerations and a required node affinity on
//! `metadata.name`, so the scheduler binds them to their node. Pods on nodes no longer
//! eligible go; RollingUpdate (maxUnavailable, maxSurge) or OnDelete replace pods of
//! older templates; the template history is kept as ControllerRevisions.

use crate::controllers::owner_index::Feed;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};

use super::history::{self, HASH_LABEL};
use super::nodelifecycle::effective_taints;
use super::{ownership, pods, watch_config, Context, Error, Result};
use crate::scheduler::filters;
use crate::watch_filter;

/// Runs the controller until `shutdown`; a Node change that can change where daemons
/// run (see [`placement`]) reconciles every DaemonSet, heartbeats do not.
/// Pods come from the controllers' shared pod watch (`pod_events`).
pub async fn run(
    ctx: Arc<Context>,
    pod_events: Feed<Pod>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<DaemonSet>::all(client.clone()), watch_config())
        .owns_stream(pod_events)
        .owns(
            Api::<ControllerRevision>::all(client.clone()),
            watch_config(),
        );
    let store = controller.store();
    let nodes =
        watch_filter::relevant(watcher(Api::<Node>::all(client), watch_config()), placement)
            .touched_objects();
    let controller = controller.watches_stream(nodes, super::reconcile_all::<_, Node>(store));
    super::run("daemonset", controller, reconcile, ctx, shutdown).await;
}

/// Fingerprint of what decides whether daemons run on a node: its labels (node
/// selectors and affinity) and its effective taints (its own, cordoning and the
/// conditions that imply taints). Heartbeat times and other status do not count.
pub fn placement(node: &Node) -> u64 {
    let taints = effective_taints(node);
    let taints: Vec<_> = taints
        .iter()
        .map(|t| (&t.key, &t.value, &t.effect))
        .collect();
    watch_filter::fingerprint(&(&node.metadata.labels, taints))
}

/// Tolerations every daemon pod gets, so node problems neither evict it nor keep it off
/// a node (kube's `AddOrUpdateDaemonPodTolerations`).
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        // AddOrUpdateTolerationInPodSpec: same key and effect are replaced.
        match list
            .iter_mut()
            .find(|x| x.key.as_deref() == Some(key) && x.effect.as_deref() == Some(effect))
        {
            Some(x) => *x = t,
            None => list.push(t),
        }
    }
}

/// Whether a daemon pod should run on `node`, and whether one already there may keep
/// running (it tolerates every NoExecute taint): kube's `NodeShouldRunDaemonPod`.
pub fn should_run(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let mut spec = template.spec.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    if !filters::fits_node_affinity(&spec, node) {
        return (false, false);
    }
    add_daemon_tolerations(&mut spec);
    let tolerations = spec.tolerations.unwrap_or_default();
    let untolerated: Vec<_> = effective_taints(node)
        .into_iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .filter(|t| !filters::tolerates(&tolerations, t))
        .collect();
    if untolerated.is_empty() {
        (true, true)
    } else {
        (false, !untolerated.iter().any(|t| t.effect == "NoExecute"))
    }
}

/// The node a daemon pod is for: its `nodeName`, or the one its node affinity names
/// (kube's `GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// The pod template of a daemon pod for `node`: the DaemonSet's template with the
/// revision hash label, the daemon tolerations and a required node affinity naming only
/// `node` (kube's `ReplaceDaemonSetPodNodeNameNodeAffinity`).
pub fn pod_for_node(template: &PodTemplateSpec, hash: &str, node: &str) -> PodTemplateSpec {
    let mut t = template.clone();
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    let spec = t.spec.get_or_insert_with(Default::default);
    add_daemon_tolerations(spec);
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    t
}

/// What one pass decides: nodes that get a new pod, pods that go.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to create a daemon pod for.
    pub create: Vec<String>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Scheduled first, then oldest first, then by name (kube's
/// `podByCreationTimestampAndPhase`).
fn oldest_first(pods: &mut [&Pod]) {
    pods.sort_by_key(|p| {
        (
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty),
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
}

fn updated(p: &Pod, hash: &str) -> bool {
    p.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

/// The pods of the DaemonSet grouped by their node; pods both finished and being
/// deleted are of no more concern.
pub fn by_node(pods: &[Pod]) -> BTreeMap<String, Vec<&Pod>> {
    let mut map: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if deleting(p) && matches!(phase(p), "Succeeded" | "Failed") {
            continue;
        }
        if let Some(n) = target_node(p) {
            map.entry(n).or_default().push(p);
        }
    }
    map
}

/// Pods to create and delete so each node runs what it should (kube's `manage`): a pod
/// where one should run and none is, finished pods replaced, extra pods removed (with
/// maxSurge, an old pod stays beside an unready new one), pods on nodes that no longer
/// take them or no longer exist removed.
pub fn manage(
    template: &PodTemplateSpec,
    nodes: &[Node],
    pods: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    surge: bool,
) -> Plan {
    let mut plan = Plan::default();
    let empty = Vec::new();
    for node in nodes {
        let name = node.name_any();
        let (run, keep) = should_run(template, node);
        let on_node = pods.get(&name).unwrap_or(&empty);
        if run && on_node.is_empty() {
            plan.create.push(name);
        } else if keep {
            let mut running: Vec<&Pod> = Vec::new();
            for p in on_node.iter().copied().filter(|p| !deleting(p)) {
                if matches!(phase(p), "Failed" | "Succeeded") {
                    plan.delete.push(p.name_any());
                } else {
                    running.push(p);
                }
            }
            if running.len() <= 1 {
                continue;
            }
            oldest_first(&mut running);
            if !surge {
                plan.delete
                    .extend(running[1..].iter().map(|p| p.name_any()));
                continue;
            }
            // With surge, an old pod may stay only while the oldest new one is not ready.
            let (mut new, mut old): (Option<&Pod>, Option<&Pod>) = (None, None);
            for p in running {
                let slot = if updated(p, hash) { &mut new } else { &mut old };
                if slot.is_none() {
                    *slot = Some(p);
                } else {
                    plan.delete.push(p.name_any());
                }
            }
            if let (Some(n), Some(o)) = (new, old) {
                if !pods::is_ready(o) || pods::is_ready(n) {
                    plan.delete.push(o.name_any());
                }
            }
        } else {
            plan.delete.extend(
                on_node
                    .iter()
                    .filter(|p| !deleting(p))
                    .map(|p| p.name_any()),
            );
        }
    }
    let known: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for (node, on_node) in pods {
        if !known.contains(node) {
            plan.delete.extend(
                on_node
                    .iter()
                    .filter(|p| !deleting(p))
                    .map(|p| p.name_any()),
            );
        }
    }
    plan
}

/// maxSurge and maxUnavailable for `desired` nodes (rounded up, as kube does); never
/// both zero.
pub fn surge_and_unavailable(spec: &DaemonSetSpec, desired: i32) -> (i32, i32) {
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge =
        super::deployment::scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, "0", true);
    let unavailable = super::deployment::scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        "1",
        true,
    );
    if desired > 0 && surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// The new and old pod of a node, or None when it has more than one of either.
fn new_and_old<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().copied().filter(|p| !deleting(p)) {
        let slot = if updated(p, hash) { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(p);
    }
    Some((new, old))
}

/// One step of a rolling update (kube's `rollingUpdate`): without surge, old pods are
/// deleted while at most maxUnavailable nodes lack an available pod (unavailable old
/// pods always may go); with surge, new pods start beside available old ones on at most
/// maxSurge nodes, and an old pod goes once the new one beside it is available.
pub fn rolling_update(
    spec: &DaemonSetSpec,
    nodes: &[Node],
    pods: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    now: Timestamp,
) -> Plan {
    let template = &spec.template;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| pods::is_available(p, min_ready, now);
    let mut slots: BTreeMap<String, Vec<&Pod>> = pods.clone();
    let mut desired = 0;
    for n in nodes {
        if should_run(template, n).0 {
            desired += 1;
            slots.entry(n.name_any()).or_default();
        }
    }
    let (max_surge, max_unavailable) = surge_and_unavailable(spec, desired);
    let mut plan = Plan::default();
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for on_node in slots.values() {
            match new_and_old(on_node, hash) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(n), None)) => unavailable += !available(n) as i32,
                Some((None, Some(o))) if !available(o) => plan.delete.push(o.name_any()),
                Some((None, Some(o))) => candidates.push(o.name_any()),
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        plan.delete.extend(candidates.into_iter().take(room));
        return plan;
    }
    let mut surging = 0;
    let mut candidates = Vec::new();
    for (node, on_node) in &slots {
        match new_and_old(on_node, hash) {
            None => surging += 1,
            Some((_, None)) => {}
            Some((None, Some(o))) if !available(o) => plan.create.push(node.clone()),
            Some((None, Some(_))) => candidates.push(node.clone()),
            Some((Some(n), Some(_))) if !available(n) => surging += 1,
            Some((Some(_), Some(o))) => plan.delete.push(o.name_any()),
        }
    }
    let room = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
    plan.create.extend(candidates.into_iter().take(room));
    plan
}

/// The status kube reports for the DaemonSet's pods on `nodes`.
pub fn status(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    collision_count: Option<i32>,
    now: Timestamp,
) -> DaemonSetStatus {
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count,
        ..Default::default()
    };
    let (mut available, mut updated_n) = (0, 0);
    for node in nodes {
        let mut on_node: Vec<&Pod> = pods.get(&node.name_any()).cloned().unwrap_or_default();
        let (run, _) = should_run(&spec.template, node);
        if !run {
            st.number_misscheduled += !on_node.is_empty() as i32;
            continue;
        }
        st.desired_number_scheduled += 1;
        if on_node.is_empty() {
            continue;
        }
        st.current_number_scheduled += 1;
        oldest_first(&mut on_node);
        let p = on_node[0];
        if pods::is_ready(p) {
            st.number_ready += 1;
            available += pods::is_available(p, min_ready, now) as i32;
        }
        updated_n += updated(p, hash) as i32;
    }
    st.number_available = Some(available);
    st.updated_number_scheduled = Some(updated_n);
    st.number_unavailable = Some((st.desired_number_scheduled - available).max(0));
    st.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    st
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let client = ctx.client.clone();
    let api_ds = Api::<DaemonSet>::namespaced(client.clone(), &ns);
    let api_pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let api_revs = Api::<ControllerRevision>::namespaced(client.clone(), &ns);
    let spec = ds
        .spec
        .as_ref()
        .ok_or_else(|| Error::Object("daemonset has no spec".into()))?;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await?
        .items;
    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let hist = history::sync(
        &api_revs,
        ds.as_ref(),
        &spec.selector,
        &spec.template,
        collision,
    )
    .await?;
    // An adopted revision without the label is known by its name, as in kube.
    let hash = hist
        .update
        .labels()
        .get(HASH_LABEL)
        .cloned()
        .unwrap_or_else(|| hist.update.name_any());
    let owned = ownership::claim(&api_pods, ds.as_ref(), &spec.selector, pods::is_active).await?;
    let grouped = by_node(&owned);
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let desired = nodes
        .iter()
        .filter(|n| should_run(&spec.template, n).0)
        .count() as i32;
    let surge = rolling && surge_and_unavailable(spec, desired).0 > 0;
    let now = Timestamp::now();

    let mut plan = manage(&spec.template, &nodes, &grouped, &hash, surge);
    if plan.is_empty() && rolling {
        plan = rolling_update(spec, &nodes, &grouped, &hash, now);
    }
    if !plan.is_empty() {
        apply(&api_pods, ds.as_ref(), &plan, &owned, &nodes, &hash).await?;
    }

    // History: revisions that no pod uses beyond revisionHistoryLimit go.
    let live: HashSet<&str> = owned
        .iter()
        .filter_map(|p| p.labels().get(HASH_LABEL).map(String::as_str))
        .collect();
    let in_use: HashSet<String> = hist
        .revisions
        .iter()
        .filter(|r| {
            r.labels()
                .get(HASH_LABEL)
                .is_some_and(|h| live.contains(h.as_str()))
        })
        .map(|r| r.name_any())
        .chain(std::iter::once(hist.update.name_any()))
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(10);
    history::prune(&api_revs, &hist.revisions, &in_use, limit).await?;

    let st = status(&ds, &nodes, &grouped, &hash, hist.collision_count, now);
    super::write_status(&api_ds, &name, ds.status.as_ref(), &st).await?;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let waiting = owned
        .iter()
        .any(|p| pods::is_ready(p) && !pods::is_available(p, min_ready, now));
    Ok(if waiting {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}

/// Carries out a plan: pods deleted (those on nodes that are gone at once, as the pod
/// garbage collector would), then new pods created.
async fn apply(
    api: &Api<Pod>,
    ds: &DaemonSet,
    plan: &Plan,
    owned: &[Pod],
    nodes: &[Node],
    hash: &str,
) -> Result<()> {
    let known: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for name in &plan.delete {
        let gone_node = owned
            .iter()
            .find(|p| &p.name_any() == name)
            .and_then(target_node)
            .is_some_and(|n| !known.contains(&n));
        let dp = if gone_node {
            DeleteParams::default().grace_period(0)
        } else {
            DeleteParams::default()
        };
        super::delete(api, name, &dp).await?;
    }
    if plan.create.is_empty() {
        return Ok(());
    }
    let owner =
        pods::controller_ref(ds).ok_or_else(|| Error::Object("daemonset has no uid".into()))?;
    let template = &ds
        .spec
        .as_ref()
        .ok_or_else(|| Error::Object("daemonset has no spec".into()))?
        .template;
    let new: Vec<Pod> = plan
        .create
        .iter()
        .map(|node| {
            let t = pod_for_node(template, hash, node);
            pods::from_template(&t, owner.clone(), &ds.name_any())
        })
        .collect();
    let events =
        crate::events::Recorder::new(api.clone().into_client(), "daemonset-controller", None);
    super::pods::create_recorded(api, new, ds, &events).await
}

#[cfg(test)]
#[path = "daemonset_tests.rs"]
mod tests;
