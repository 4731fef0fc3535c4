//! What controllers need to know about pods and ownership: activity, readiness,
//! availability, controller references, label selectors, pods from templates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;

use crate::events::{Kind, Recorder};

/// Whether a pod still counts toward its controller: not being deleted, not finished.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
}

/// When the pod became Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        cond.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been Ready for `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        Some(since) => {
            min_ready_seconds <= 0
                || since
                    .checked_add(SignedDuration::from_secs(min_ready_seconds as i64))
                    .is_ok_and(|t| t <= now)
        }
        None => false,
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// An owner reference naming `owner` as the controller, blocking its foreground deletion.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let meta = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions). An empty
/// selector matches nothing, as for workload controllers.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let ml = selector.match_labels.as_ref();
    let me = selector.match_expressions.as_ref();
    if ml.is_none_or(|m| m.is_empty()) && me.is_none_or(|e| e.is_empty()) {
        return false;
    }
    if let Some(m) = ml {
        if m.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in me.into_iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The selector as a `labelSelector` query string (matchLabels only; expressions are
/// checked client-side with [`selector_matches`]).
pub fn match_labels_query(selector: &LabelSelector) -> String {
    selector
        .match_labels
        .as_ref()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A new pod from a template, controlled by `owner`, named `<prefix>-<random>`.
pub fn from_template(template: &PodTemplateSpec, owner: OwnerReference, prefix: &str) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates `new` pods a few at a time: one, then two, four, … (kube-controller-manager's
/// slow start), so a failing create stops the burst early.
pub async fn create_slow_start(api: &kube::Api<Pod>, new: Vec<Pod>) -> super::Result<()> {
    create_batches(api, new, |_| {}).await
}

/// As [`create_slow_start`], recording `SuccessfulCreate` on `owner` for each pod.
pub async fn create_recorded<K: Resource<DynamicType = ()>>(
    api: &kube::Api<Pod>,
    new: Vec<Pod>,
    owner: &K,
    events: &Recorder,
) -> super::Result<()> {
    create_noted(api, new, owner, events, |_| {}).await
}

/// As [`create_recorded`], handing each created pod to `noted` (for expectations).
pub async fn create_noted<K: Resource<DynamicType = ()>>(
    api: &kube::Api<Pod>,
    new: Vec<Pod>,
    owner: &K,
    events: &Recorder,
    noted: impl Fn(&Pod),
) -> super::Result<()> {
    create_batches(api, new, |p| {
        noted(p);
        let message = format!("Created pod: {}", kube::ResourceExt::name_any(p));
        events.record(owner, None, Kind::Normal, "SuccessfulCreate", &message);
    })
    .await
}

/// Deletes pod `name`, recording `SuccessfulDelete` on `owner`.
pub async fn delete_recorded<K: Resource<DynamicType = ()>>(
    api: &kube::Api<Pod>,
    name: &str,
    owner: &K,
    events: &Recorder,
) -> super::Result<()> {
    super::delete(api, name, &kube::api::DeleteParams::default()).await?;
    let message = format!("Deleted pod: {name}");
    events.record(owner, None, Kind::Normal, "SuccessfulDelete", &message);
    Ok(())
}

async fn create_batches(
    api: &kube::Api<Pod>,
    new: Vec<Pod>,
    created: impl Fn(&Pod),
) -> super::Result<()> {
    let pp = kube::api::PostParams::default();
    let mut batch = 1usize;
    let mut rest = new.as_slice();
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        let results = futures::future::join_all(now.iter().map(|p| api.create(&pp, p))).await;
        // Every pod that was created is noted before the first failure is returned, so
        // expectations count all of them.
        let mut failed = None;
        for r in results {
            match r {
                Ok(p) => created(&p),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        rest = later;
        batch *= 2;
    }
    Ok(())
}

/// Order in which surplus pods are deleted, first = deleted first: unscheduled before
/// scheduled, pending before running, not ready before ready, ready for less time
/// before longer, more restarts before fewer, newer before older.
pub fn deletion_rank(pod: &Pod) -> impl Ord {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready = ready_since(pod);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
        .unwrap_or(0);
    (
        scheduled,
        phase,
        ready.is_some(),
        std::cmp::Reverse(ready.map(|t| t.as_millisecond())),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_like_kubernetes() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "front".into()),
        ]
        .into();
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(
                ml.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(me),
        };
        assert!(selector_matches(
            &sel(&[("app", "web")], vec![]),
            Some(&labels)
        ));
        assert!(!selector_matches(
            &sel(&[("app", "db")], vec![]),
            Some(&labels)
        ));
        assert!(!selector_matches(&sel(&[], vec![]), Some(&labels)));
        let req = |k: &str, op: &str, v: &[&str]| LabelSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: Some(v.iter().map(|s| s.to_string()).collect()),
        };
        assert!(selector_matches(
            &sel(&[], vec![req("tier", "In", &["front", "back"])]),
            Some(&labels)
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("tier", "NotIn", &["front"])]),
            Some(&labels)
        ));
        assert!(selector_matches(
            &sel(&[], vec![req("zone", "DoesNotExist", &[])]),
            Some(&labels)
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("zone", "Exists", &[])]),
            Some(&labels)
        ));
    }
}
