//! Unit tests of the StatefulSet controller's decisions: ordinals, ordered creation and
//! removal, rolling update by ordinal with partition, claims and their owners.

use super::*;
use serde_json::Value;

fn spec(extra: Value) -> StatefulSetSpec {
    let mut s = json!({
        "replicas": 3,
        "serviceName": "web",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "v1"}]}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
    });
    json_patch::merge(&mut s, &extra);
    serde_json::from_value(s).expect("spec")
}

/// Pod `web-<ord>` at `rev`: ready or not, maybe terminating.
fn pod(ord: i32, rev: &str, ready: bool, deleting: bool) -> Pod {
    let mut p = json!({
        "metadata": {"name": format!("web-{ord}"), "labels": {"app": "web", HASH_LABEL: rev}},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": if ready { "Running" } else { "Pending" },
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                "lastTransitionTime": "2020-01-01T00:00:00Z"}]},
    });
    if deleting {
        p["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
    }
    serde_json::from_value(p).expect("pod")
}

const REVS: Revisions<'static> = Revisions {
    current: "web-old",
    update: "web-new",
};

fn create(ordinal: i32, rev: &str) -> Step {
    Step::Create {
        ordinal,
        revision: rev.into(),
    }
}

fn delete(name: &str, condemned: bool) -> Step {
    Step::Delete {
        name: name.into(),
        condemned,
    }
}

fn steps(spec: &StatefulSetSpec, pods: &[Pod], revs: Revisions<'_>) -> Vec<Step> {
    plan("web", spec, pods, revs, Timestamp::now())
}

#[test]
fn ordinals_parse_only_for_the_set() {
    assert_eq!(ordinal("web", "web-0"), Some(0));
    assert_eq!(ordinal("web", "web-12"), Some(12));
    assert_eq!(ordinal("web", "web-x"), None);
    assert_eq!(ordinal("web", "webby-1"), None);
    assert_eq!(ordinal("my-web", "my-web-2"), Some(2));
    assert_eq!(ordinal("web", "web-"), None);
    assert_eq!(claim_name("data", "web", 1), "data-web-1");
}

#[test]
fn ordered_ready_creates_one_at_a_time_in_order() {
    let s = spec(json!({}));
    let r = Revisions {
        current: "web-new",
        update: "web-new",
    };
    assert_eq!(steps(&s, &[], r), vec![create(0, "web-new")]);
    // web-0 exists but is not ready: wait.
    assert!(steps(&s, &[pod(0, "web-new", false, false)], r).is_empty());
    assert_eq!(
        steps(&s, &[pod(0, "web-new", true, false)], r),
        vec![create(1, "web-new")]
    );
    // A gap is filled first, even when a higher ordinal exists.
    assert_eq!(
        steps(&s, &[pod(2, "web-new", true, false)], r),
        vec![create(0, "web-new")]
    );
    let all: Vec<Pod> = (0..3).map(|i| pod(i, "web-new", true, false)).collect();
    assert!(steps(&s, &all, r).is_empty());
}

#[test]
fn parallel_creates_everything_at_once() {
    let s = spec(json!({"podManagementPolicy": "Parallel"}));
    let r = Revisions {
        current: "web-new",
        update: "web-new",
    };
    assert_eq!(
        steps(&s, &[pod(1, "web-new", false, false)], r),
        vec![create(0, "web-new"), create(2, "web-new")]
    );
}

#[test]
fn scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
    let s = spec(json!({"replicas": 1}));
    let r = Revisions {
        current: "web-new",
        update: "web-new",
    };
    let all: Vec<Pod> = (0..3).map(|i| pod(i, "web-new", true, false)).collect();
    assert_eq!(steps(&s, &all, r), vec![delete("web-2", true)]);
    // web-2 still terminating: wait for it.
    let mut going = all.clone();
    going[2] = pod(2, "web-new", true, true);
    assert!(steps(&s, &going, r).is_empty());
    assert_eq!(steps(&s, &all[..2], r), vec![delete("web-1", true)]);
    // Parallel removes them all at once.
    let p = spec(json!({"replicas": 1, "podManagementPolicy": "Parallel"}));
    assert_eq!(
        steps(&p, &all, r),
        vec![delete("web-2", true), delete("web-1", true)]
    );
}

#[test]
fn rolling_update_replaces_from_the_highest_ordinal_down_to_the_partition() {
    let s = spec(json!({}));
    let old: Vec<Pod> = (0..3).map(|i| pod(i, "web-old", true, false)).collect();
    assert_eq!(steps(&s, &old, REVS), vec![delete("web-2", false)]);
    // The replacement is made from the update revision.
    assert_eq!(steps(&s, &old[..2], REVS), vec![create(2, "web-new")]);
    // The new web-2 must be ready before web-1 goes.
    let mut rolling = old.clone();
    rolling[2] = pod(2, "web-new", false, false);
    assert!(steps(&s, &rolling, REVS).is_empty());
    rolling[2] = pod(2, "web-new", true, false);
    assert_eq!(steps(&s, &rolling, REVS), vec![delete("web-1", false)]);
    // With partition 2, ordinals below it keep the current revision.
    let part = spec(json!({"updateStrategy": {"rollingUpdate": {"partition": 2}}}));
    assert!(steps(&part, &rolling, REVS).is_empty());
    assert_eq!(steps(&part, &old[1..], REVS), vec![create(0, "web-old")]);
    // OnDelete never deletes for an update.
    let manual = spec(json!({"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}));
    assert!(steps(&manual, &old, REVS).is_empty());
    assert_eq!(steps(&manual, &old[1..], REVS), vec![create(0, "web-new")]);
}

#[test]
fn failed_pods_are_replaced() {
    let s = spec(json!({}));
    let mut pods: Vec<Pod> = (0..3).map(|i| pod(i, "web-new", true, false)).collect();
    pods[1].status.as_mut().unwrap().phase = Some("Failed".into());
    let r = Revisions {
        current: "web-new",
        update: "web-new",
    };
    assert_eq!(steps(&s, &pods, r), vec![delete("web-1", false)]);
}

#[test]
fn status_completes_a_rollout() {
    let set = StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            generation: Some(2),
            ..Default::default()
        },
        spec: Some(spec(json!({}))),
        status: None,
    };
    let mixed = vec![
        pod(0, "web-old", true, false),
        pod(1, "web-new", true, false),
        pod(2, "web-new", false, false),
    ];
    let st = status(&set, &mixed, REVS, None, Timestamp::now());
    assert_eq!(st.replicas, 3);
    assert_eq!(st.ready_replicas, Some(2));
    assert_eq!(st.current_replicas, Some(1));
    assert_eq!(st.updated_replicas, Some(2));
    assert_eq!(st.current_revision.as_deref(), Some("web-old"));
    assert_eq!(st.update_revision.as_deref(), Some("web-new"));
    assert_eq!(st.observed_generation, Some(2));
    let done: Vec<Pod> = (0..3).map(|i| pod(i, "web-new", true, false)).collect();
    let st = status(&set, &done, REVS, None, Timestamp::now());
    assert_eq!(st.current_revision.as_deref(), Some("web-new"));
    assert_eq!(st.current_replicas, Some(3));
}

#[test]
fn pods_get_identity_and_claims() {
    let mut s = spec(
        json!({"volumeClaimTemplates": [{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}),
    );
    s.template.spec.as_mut().unwrap().volumes = Some(vec![Volume {
        name: "data".into(),
        ..Default::default()
    }]);
    let set = StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(s.clone()),
        status: None,
    };
    let owner = pods::controller_ref(&set).unwrap();
    let p = new_pod(&set, &s.template, "web-abc", 2, owner);
    assert_eq!(p.name_any(), "web-2");
    let labels = p.labels();
    assert_eq!(labels[POD_NAME_LABEL], "web-2");
    assert_eq!(labels[POD_INDEX_LABEL], "2");
    assert_eq!(labels[HASH_LABEL], "web-abc");
    let ps = p.spec.unwrap();
    assert_eq!(ps.hostname.as_deref(), Some("web-2"));
    assert_eq!(ps.subdomain.as_deref(), Some("web"));
    let vols = ps.volumes.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(
        vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-web-2"
    );
    let claims = claims_for(&set, 2);
    assert_eq!(claims[0].name_any(), "data-web-2");
    assert_eq!(claims[0].labels()["app"], "web");
}

#[test]
fn claim_owners_follow_the_retention_policy() {
    let r = |uid: &str, kind: &str| OwnerReference {
        api_version: "v1".into(),
        kind: kind.into(),
        name: uid.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: None,
    };
    let (set, pod) = (r("set", "StatefulSet"), r("pod", "Pod"));
    let policy = |deleted: &str, scaled: &str| {
        spec(
            json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": deleted, "whenScaled": scaled}}),
        )
    };
    let uids = |v: Option<Vec<OwnerReference>>| {
        v.map(|v| v.into_iter().map(|r| r.uid).collect::<Vec<_>>())
    };
    // Retain/Retain: no owners.
    assert_eq!(
        uids(claim_refs(
            &policy("Retain", "Retain"),
            &[],
            &set,
            &pod,
            false
        )),
        None
    );
    assert_eq!(
        uids(claim_refs(
            &policy("Retain", "Retain"),
            std::slice::from_ref(&set),
            &set,
            &pod,
            false
        )),
        Some(vec![])
    );
    // whenDeleted: Delete → the set owns the claim.
    assert_eq!(
        uids(claim_refs(
            &policy("Delete", "Retain"),
            &[],
            &set,
            &pod,
            false
        )),
        Some(vec!["set".into()])
    );
    // whenScaled: Delete → the pod owns it once scaled away.
    assert_eq!(
        uids(claim_refs(
            &policy("Retain", "Delete"),
            &[],
            &set,
            &pod,
            false
        )),
        None
    );
    assert_eq!(
        uids(claim_refs(
            &policy("Delete", "Delete"),
            std::slice::from_ref(&set),
            &set,
            &pod,
            true
        )),
        Some(vec!["pod".into()])
    );
}
