//! Unit tests of one Job sync: counting, back-off, deadline, suspend, TTL, Indexed.

use super::*;
use serde_json::json;

fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": "j", "namespace": "default", "uid": "job-uid"},
        "spec": spec,
        "status": status,
    }))
    .expect("job")
}

fn pod(name: &str, phase: &str, tracked: bool, extra: serde_json::Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"),
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "finalizers": if tracked { json!([TRACKING_FINALIZER]) } else { json!([]) }},
        "status": {"phase": phase},
    });
    json_patch::merge(&mut p, &extra);
    serde_json::from_value(p).expect("pod")
}

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"completions": 3, "parallelism": 2, "backoffLimit": 6,
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}});
    json_patch::merge(&mut s, &extra);
    s
}

fn types(st: &JobStatus) -> Vec<String> {
    st.conditions
        .iter()
        .flatten()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect()
}

#[test]
fn starts_parallelism_pods_and_counts_finished_ones_once() {
    let now = at("2024-01-01T00:01:00Z");
    let s = sync(&job(spec(json!({})), json!({})), &[], now);
    assert_eq!(s.create, vec![None, None]);
    assert_eq!(s.status.start_time, Some(Time(now)));
    assert_eq!(s.status.active, Some(0));

    // One pod succeeded (still tracked), one runs: record, strip, count, replace.
    let j = job(
        spec(json!({})),
        json!({"startTime": "2024-01-01T00:00:00Z", "succeeded": 0}),
    );
    let pods = [
        pod("a", "Succeeded", true, json!({})),
        pod("b", "Running", true, json!({})),
    ];
    let s = sync(&j, &pods, now);
    let unc = s.uncounted.expect("uncounted written first");
    assert_eq!(unc.succeeded, Some(vec!["uid-a".to_string()]));
    assert_eq!(s.strip, vec!["a"]);
    assert_eq!(s.status.succeeded, Some(1));
    assert_eq!(s.status.active, Some(1));
    assert_eq!(s.create, vec![None]);

    // Once counted (finalizer gone), the pod is not counted again.
    let j = job(
        spec(json!({})),
        json!({"startTime": "2024-01-01T00:00:00Z", "succeeded": 1}),
    );
    let pods = [
        pod("a", "Succeeded", false, json!({})),
        pod("b", "Running", true, json!({})),
        pod("c", "Running", true, json!({})),
    ];
    let s = sync(&j, &pods, now);
    assert!(s.uncounted.is_none() && s.strip.is_empty() && s.create.is_empty());
    assert_eq!(s.status.succeeded, Some(1));

    // A crash after recording but before stripping: the uid is counted from the
    // status, and its finalizer removed.
    let j = job(
        spec(json!({})),
        json!({"startTime": "2024-01-01T00:00:00Z", "succeeded": 2,
            "uncountedTerminatedPods": {"succeeded": ["uid-c"]}}),
    );
    let pods = [
        pod("b", "Succeeded", false, json!({})),
        pod("c", "Succeeded", true, json!({})),
    ];
    let s = sync(&j, &pods, now);
    assert!(s.uncounted.is_none());
    assert_eq!(s.strip, vec!["c"]);
    assert_eq!(s.status.succeeded, Some(3));
    assert_eq!(
        types(&s.status),
        ["SuccessCriteriaMet=True", "Complete=True"]
    );
    assert_eq!(s.status.completion_time, Some(Time(now)));
}

#[test]
fn backoff_limit_with_never_and_on_failure() {
    let now = at("2024-01-01T00:01:00Z");
    let j = job(
        spec(json!({"backoffLimit": 1})),
        json!({"startTime": "2024-01-01T00:00:00Z", "failed": 1}),
    );
    // Second failure: failed 2 > 1.
    let pods = [
        pod("a", "Failed", false, json!({})),
        pod("b", "Failed", true, json!({})),
        pod("c", "Running", true, json!({})),
    ];
    let s = sync(&j, &pods, now);
    assert_eq!(s.status.failed, Some(2));
    assert_eq!(s.delete, vec!["c"]);
    assert_eq!(types(&s.status), ["FailureTarget=True"]);
    // Once the running pod is gone the Job is Failed.
    let pods = [
        pod("a", "Failed", false, json!({})),
        pod("b", "Failed", false, json!({})),
    ];
    let j = job(
        spec(json!({"backoffLimit": 1})),
        serde_json::to_value(&s.status).expect("status"),
    );
    let s = sync(&j, &pods, now);
    assert_eq!(types(&s.status), ["FailureTarget=True", "Failed=True"]);
    let failed = s.status.conditions.as_ref().expect("conditions")[1].clone();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert!(s.status.completion_time.is_none());

    // OnFailure: container restarts count against the limit.
    let j = job(
        spec(json!({"backoffLimit": 2, "template": {"spec": {"restartPolicy": "OnFailure"}}})),
        json!({"startTime": "2024-01-01T00:00:00Z"}),
    );
    let restarted = |n: i32| {
        pod(
            "a",
            "Running",
            true,
            json!({"status": {"containerStatuses": [
            {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": n}]}}),
        )
    };
    assert!(types(&sync(&j, &[restarted(1)], now).status).is_empty());
    assert_eq!(
        types(&sync(&j, &[restarted(2)], now).status),
        ["FailureTarget=True"]
    );
}

#[test]
fn failed_pods_are_replaced_after_a_growing_backoff() {
    let j = job(
        spec(json!({"parallelism": 1})),
        json!({"startTime": "2024-01-01T00:00:00Z", "failed": 2}),
    );
    let failed = |name: &str, t: &str| {
        pod(
            name,
            "Failed",
            false,
            json!({"status": {"containerStatuses": [
            {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "finishedAt": t}}}]}}),
        )
    };
    let pods = [
        failed("a", "2024-01-01T00:00:10Z"),
        failed("b", "2024-01-01T00:00:30Z"),
    ];
    // Two failures: 20 s after the last one.
    let s = sync(&j, &pods, at("2024-01-01T00:00:45Z"));
    assert!(s.create.is_empty());
    let r = s.requeue.expect("requeue");
    assert!(
        r >= Duration::from_secs(5) && r < Duration::from_secs(6),
        "{r:?}"
    );
    let s = sync(&j, &pods, at("2024-01-01T00:00:50Z"));
    assert_eq!(s.create, vec![None]);
}

#[test]
fn deadline_suspend_and_resume() {
    let j = job(
        spec(json!({"activeDeadlineSeconds": 30})),
        json!({"startTime": "2024-01-01T00:00:00Z"}),
    );
    let pods = [pod("a", "Running", true, json!({}))];
    let s = sync(&j, &pods, at("2024-01-01T00:00:20Z"));
    assert_eq!(s.requeue.map(|d| d.as_secs()), Some(10));
    let s = sync(&j, &pods, at("2024-01-01T00:00:31Z"));
    assert_eq!(s.delete, vec!["a"]);
    assert_eq!(
        s.status.conditions.as_ref().expect("conditions")[0]
            .reason
            .as_deref(),
        Some("DeadlineExceeded")
    );

    let j = job(
        spec(json!({"suspend": true})),
        json!({"startTime": "2024-01-01T00:00:00Z"}),
    );
    let s = sync(&j, &pods, at("2024-01-01T00:00:20Z"));
    assert_eq!(s.delete, vec!["a"]);
    assert_eq!(types(&s.status), ["Suspended=True"]);
    let j = job(
        spec(json!({})),
        serde_json::to_value(&s.status).expect("status"),
    );
    let now = at("2024-01-01T00:05:00Z");
    let s = sync(&j, &[], now);
    assert_eq!(types(&s.status), ["Suspended=False"]);
    assert_eq!(s.status.start_time, Some(Time(now)));
    assert_eq!(s.create.len(), 2);
}

#[test]
fn ttl_after_finished() {
    let j = job(
        spec(json!({"ttlSecondsAfterFinished": 5})),
        json!({"conditions": [{"type": "Complete", "status": "True",
            "lastTransitionTime": "2024-01-01T00:00:00Z"}]}),
    );
    let s = sync(&j, &[], at("2024-01-01T00:00:03Z"));
    assert!(!s.delete_job);
    assert_eq!(s.requeue.map(|d| d.as_secs()), Some(2));
    assert!(sync(&j, &[], at("2024-01-01T00:00:05Z")).delete_job);
}

#[test]
fn indexed_jobs_run_each_index_once() {
    let j = job(
        spec(json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2})),
        json!({"startTime": "2024-01-01T00:00:00Z", "completedIndexes": "1"}),
    );
    let indexed = |name: &str, i: i32, phase: &str| {
        pod(
            name,
            phase,
            true,
            json!({"metadata": {"annotations": {INDEX_ANNOTATION: i.to_string()}}}),
        )
    };
    let pods = [
        indexed("a", 0, "Succeeded"),
        indexed("b", 2, "Running"),
        indexed("c", 2, "Running"),
    ];
    let s = sync(&j, &pods, at("2024-01-01T00:00:10Z"));
    assert_eq!(s.status.completed_indexes.as_deref(), Some("0-1"));
    assert_eq!(s.status.succeeded, Some(2));
    assert_eq!(s.delete, vec!["c"]);
    assert_eq!(s.create, vec![Some(3)]);
    assert_eq!(format_indexes(&[0, 2, 3, 4, 7].into()), "0,2-4,7");
    assert_eq!(parse_indexes("0,2-4,7", 5), BTreeSet::from([0, 2, 3, 4]));
}

#[test]
fn a_job_being_deleted_releases_its_pods_but_deletes_none() {
    let mut j = job(
        spec(json!({})),
        json!({"startTime": "2024-01-01T00:00:00Z"}),
    );
    j.metadata.deletion_timestamp = Some(Time(at("2024-01-01T00:00:30Z")));
    let pods = [
        pod("a", "Running", true, json!({})),
        pod("b", "Succeeded", true, json!({})),
    ];
    let s = sync(&j, &pods, at("2024-01-01T00:01:00Z"));
    assert_eq!(s.strip, vec!["a", "b"]);
    assert!(s.delete.is_empty() && s.create.is_empty());
    assert_eq!(s.status.succeeded, Some(1));
}

#[test]
fn replacement_policy_failed_waits_for_terminating_pods() {
    let deleting = pod(
        "a",
        "Running",
        false,
        json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:10Z"}}),
    );
    let status = json!({"startTime": "2024-01-01T00:00:00Z", "failed": 1});
    let now = at("2024-01-01T00:01:00Z");
    let j = job(spec(json!({"parallelism": 1})), status.clone());
    assert_eq!(
        sync(&j, std::slice::from_ref(&deleting), now).create.len(),
        1
    );
    let j = job(
        spec(json!({"parallelism": 1, "podReplacementPolicy": "Failed"})),
        status,
    );
    let s = sync(&j, &[deleting], now);
    assert!(s.create.is_empty());
    assert_eq!(s.status.terminating, Some(1));
}
