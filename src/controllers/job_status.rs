//! What one sync of a Job should do, computed from the Job and its pods at a given
//! instant (no I/O, so it is unit-tested): which finished pods to count, the new status
//! with its conditions, which pods to create or delete, and when to look again.
//!
//! Finished pods are counted the way kube-controller-manager tracks them: every pod
//! carries the `batch.kubernetes.io/job-tracking` finalizer; a finished pod's uid is first
//! recorded in `status.uncountedTerminatedPods`, then its finalizer is removed, then it is
//! moved into `succeeded`/`failed`. A pod without the finalizer has been counted, so a
//! pod is counted exactly once even if it is deleted right after finishing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::pods;

/// Finalizer on every pod of a Job until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation (and label) holding the completion index of a pod of an Indexed Job.
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// Delay before a failed pod is replaced, doubled for every further failure since the
/// last success (kube-controller-manager's DefaultJobPodFailureBackOff), up to
/// [`MAX_BACKOFF`].
const BACKOFF: SignedDuration = SignedDuration::from_secs(10);
const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(360);

/// Where a pod of a Job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Pending or running, not being deleted.
    Active,
    /// Phase Succeeded.
    Succeeded,
    /// Phase Failed, or deleted before it succeeded.
    Failed,
}

/// The state of one pod; a pod being deleted counts as failed unless it succeeded.
pub fn pod_state(pod: &Pod) -> PodState {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") => PodState::Failed,
        _ if pod.metadata.deletion_timestamp.is_some() => PodState::Failed,
        _ => PodState::Active,
    }
}

/// Whether the pod still carries the Job's tracking finalizer.
pub fn is_tracked(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

/// The completion index of a pod of an Indexed Job.
pub fn pod_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

/// Indexes in `status.completedIndexes` form: `1,3-5,7`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Parses `status.completedIndexes`, keeping indexes below `completions`.
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
            set.extend((a.max(0)..=b.min(completions - 1)).take(1 << 20));
        }
    }
    set
}

/// When a finished pod finished: its containers' latest finish, else its deletion,
/// else its latest condition change, else its creation.
fn finished_at(pod: &Pod) -> Timestamp {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let conditions = || {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    };
    finished
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(conditions)
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn restarts(pod: &Pod) -> i32 {
    let Some(s) = pod.status.as_ref() else {
        return 0;
    };
    s.container_statuses
        .iter()
        .chain(s.init_container_statuses.iter())
        .flatten()
        .map(|c| c.restart_count)
        .sum()
}

fn condition_true(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

/// Whether the Job has finished: a Complete or Failed condition is True.
pub fn is_finished(job: &Job) -> bool {
    finished_condition(job).is_some()
}

/// The Complete or Failed condition of a finished Job.
pub fn finished_condition(job: &Job) -> Option<JobCondition> {
    let status = job.status.as_ref()?;
    condition_true(status, "Complete").or_else(|| condition_true(status, "Failed"))
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, keeping its transition time when its status did not change.
/// With `only_existing`, a missing condition is not added (a Job never suspended gets no
/// Suspended=False).
fn set_condition(status: &mut JobStatus, new: JobCondition, only_existing: bool) {
    let list = status.conditions.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) if c.status == new.status => {}
        Some(c) => *c = new,
        None if only_existing => {}
        None => list.push(new),
    }
}

/// What one sync does.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// Status to write before any finalizer is removed, when new finished pods appeared.
    pub uncounted: Option<UncountedTerminatedPods>,
    /// Pods whose tracking finalizer is to be removed.
    pub strip: Vec<String>,
    /// Active pods to delete.
    pub delete: Vec<String>,
    /// Pods to create: one entry per pod, with its completion index for Indexed Jobs.
    pub create: Vec<Option<i32>>,
    /// The status once all of the above is done.
    pub status: JobStatus,
    /// The Job's ttlSecondsAfterFinished has run out: delete it.
    pub delete_job: bool,
    /// When to sync again without any change (deadline, back-off, TTL).
    pub requeue: Option<Duration>,
}

fn until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis(now.duration_until(t).as_millis().clamp(0, u64::MAX as i128) as u64)
        + Duration::from_millis(50)
}

/// Computes one sync of `job` over its `pods` at `now`.
pub fn sync(job: &Job, pod_list: &[Pod], now: Timestamp) -> SyncPlan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut out = SyncPlan::default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend == Some(true);
    let finished = is_finished(job);
    let deleting = job.metadata.deletion_timestamp.is_some();

    // Count finished pods that still carry the finalizer (see the module docs).
    let prev = old.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_s: BTreeSet<String> = prev
        .succeeded
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut unc_f: BTreeSet<String> = prev
        .failed
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut fresh = false;
    for p in pod_list.iter().filter(|p| is_tracked(p)) {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        if unc_s.contains(&uid) || unc_f.contains(&uid) {
            continue;
        }
        match pod_state(p) {
            PodState::Succeeded => fresh |= unc_s.insert(uid),
            PodState::Failed => fresh |= unc_f.insert(uid),
            PodState::Active => {}
        }
    }
    if fresh {
        out.uncounted = Some(UncountedTerminatedPods {
            succeeded: Some(unc_s.iter().cloned().collect()),
            failed: Some(unc_f.iter().cloned().collect()),
        });
    }
    for p in pod_list.iter().filter(|p| is_tracked(p)) {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        if unc_s.contains(&uid) || unc_f.contains(&uid) || finished || deleting {
            out.strip.push(p.metadata.name.clone().unwrap_or_default());
        }
    }

    let mut st = old.clone();
    let mut completed = BTreeSet::new();
    if indexed {
        let n = completions.unwrap_or(0);
        completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""), n);
        for p in pod_list {
            if unc_s.contains(p.metadata.uid.as_deref().unwrap_or_default()) {
                if let Some(i) = pod_index(p).filter(|i| (0..n).contains(i)) {
                    completed.insert(i);
                }
            }
        }
        st.succeeded = Some(completed.len() as i32);
        st.completed_indexes = Some(format_indexes(&completed));
    } else {
        st.succeeded = Some(old.succeeded.unwrap_or(0) + unc_s.len() as i32);
    }
    st.failed = Some(old.failed.unwrap_or(0) + unc_f.len() as i32);
    st.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    let succeeded = st.succeeded.unwrap_or(0);
    let failed = st.failed.unwrap_or(0);

    let active: Vec<&Pod> = pod_list
        .iter()
        .filter(|p| pod_state(p) == PodState::Active)
        .collect();
    let terminating = pod_list
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && pod_state(p) != PodState::Succeeded)
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed")
            )
        })
        .count() as i32;
    st.active = Some(active.len() as i32);
    st.ready = Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32);
    st.terminating = Some(terminating);

    if finished || deleting {
        // A Job being deleted leaves its pods to the garbage collector (they may be
        // orphaned on purpose); a finished one keeps none running.
        if finished {
            out.delete = active
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        }
        if let (Some(ttl), Some(done)) = (spec.ttl_seconds_after_finished, finished_condition(job))
        {
            let since = done.last_transition_time.map(|t| t.0).unwrap_or(now);
            let expire = since
                .checked_add(SignedDuration::from_secs(ttl.max(0) as i64))
                .unwrap_or(since);
            if now >= expire {
                out.delete_job = !deleting;
            } else {
                out.requeue = Some(until(expire, now));
            }
        }
        out.status = st;
        return out;
    }

    if st.start_time.is_none() && !suspended {
        st.start_time = Some(Time(now));
    }

    // Did the Job fail, or meet its success criteria?
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restart_sum: i32 = active.iter().map(|p| restarts(p)).sum();
    let past_restarts = on_failure
        && if backoff_limit == 0 {
            restart_sum > 0
        } else {
            restart_sum >= backoff_limit
        };
    let deadline = match (spec.active_deadline_seconds, st.start_time.as_ref()) {
        (Some(s), Some(t)) if !suspended => t.0.checked_add(SignedDuration::from_secs(s)).ok(),
        _ => None,
    };
    let failure = condition_true(&old, "FailureTarget")
        .map(|c| (c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
        .or_else(|| {
            (failed > backoff_limit || past_restarts).then(|| {
                (
                    "BackoffLimitExceeded".to_string(),
                    "Job has reached the specified backoff limit".to_string(),
                )
            })
        })
        .or_else(|| {
            deadline.filter(|d| *d <= now).map(|_| {
                (
                    "DeadlineExceeded".to_string(),
                    "Job was active longer than specified deadline".to_string(),
                )
            })
        });
    let success = failure.is_none()
        && (condition_true(&old, "SuccessCriteriaMet").is_some()
            || match (indexed, completions) {
                (true, Some(n)) => completed.len() as i32 >= n,
                (_, Some(n)) => succeeded >= n,
                (_, None) => succeeded > 0 && active.is_empty(),
            });
    if failure.is_some() || success {
        out.delete = active
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        let done = active.is_empty() && terminating == 0;
        if let Some((reason, message)) = failure {
            set_condition(
                &mut st,
                condition("FailureTarget", "True", &reason, &message, now),
                false,
            );
            if done {
                set_condition(
                    &mut st,
                    condition("Failed", "True", &reason, &message, now),
                    false,
                );
            }
        } else {
            let (reason, message) = (
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            set_condition(
                &mut st,
                condition("SuccessCriteriaMet", "True", reason, message, now),
                false,
            );
            if done {
                set_condition(
                    &mut st,
                    condition("Complete", "True", reason, message, now),
                    false,
                );
                st.completion_time = Some(Time(now));
            }
        }
        if done {
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                out.requeue =
                    Some(Duration::from_secs(ttl.max(0) as u64) + Duration::from_millis(50));
            }
        }
        out.status = st;
        return out;
    }

    if suspended {
        out.delete = active
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        set_condition(
            &mut st,
            condition("Suspended", "True", "JobSuspended", "Job suspended", now),
            false,
        );
        out.status = st;
        return out;
    }
    let was_suspended = condition_true(&old, "Suspended").is_some();
    set_condition(
        &mut st,
        condition("Suspended", "False", "JobResumed", "Job resumed", now),
        true,
    );
    if was_suspended {
        // activeDeadlineSeconds counts the time the Job is continuously active.
        st.start_time = Some(Time(now));
    }

    // Replacements wait out the back-off of the failures since the last success.
    let last_success = pod_list
        .iter()
        .filter(|p| pod_state(p) == PodState::Succeeded)
        .map(finished_at)
        .max();
    let failures: Vec<Timestamp> = pod_list
        .iter()
        .filter(|p| pod_state(p) == PodState::Failed)
        .map(finished_at)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let backoff_until = failures.iter().max().map(|last| {
        let n = failures.len().min(16) as u32;
        let delay = BACKOFF
            .checked_mul(1 << (n - 1))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF);
        last.checked_add(delay).unwrap_or(*last)
    });
    // podReplacementPolicy Failed: no replacement while a pod is still terminating.
    let wait_terminating =
        spec.pod_replacement_policy.as_deref() == Some("Failed") && terminating > 0;
    let may_create = backoff_until.is_none_or(|t| t <= now) && !wait_terminating;

    if indexed {
        let n = completions.unwrap_or(0);
        let mut by_index: BTreeMap<i32, &Pod> = BTreeMap::new();
        let mut surplus: Vec<&Pod> = Vec::new();
        for p in &active {
            match pod_index(p) {
                Some(i)
                    if (0..n).contains(&i)
                        && !completed.contains(&i)
                        && !by_index.contains_key(&i) =>
                {
                    by_index.insert(i, p);
                }
                _ => surplus.push(p),
            }
        }
        out.delete = surplus
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        let room = (parallelism as usize).saturating_sub(by_index.len());
        if may_create {
            out.create = (0..n)
                .filter(|i| !completed.contains(i) && !by_index.contains_key(i))
                .take(room)
                .map(Some)
                .collect();
        }
    } else {
        let want = match completions {
            None if succeeded > 0 => active.len() as i32,
            None => parallelism,
            Some(n) => (n - succeeded).clamp(0, parallelism),
        }
        .max(0) as usize;
        if active.len() > want {
            let mut victims = active.clone();
            victims.sort_by_key(|p| pods::deletion_rank(p));
            out.delete = victims
                .iter()
                .take(active.len() - want)
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        } else if active.len() < want && may_create {
            out.create = vec![None; want - active.len()];
        }
    }
    let wants_more = if indexed {
        (completions.unwrap_or(0) - completed.len() as i32) > active.len() as i32
    } else {
        out.create.is_empty() && completions.is_none_or(|n| n - succeeded > active.len() as i32)
    };
    let mut wake: Vec<Timestamp> = deadline.into_iter().collect();
    if !may_create && wants_more {
        wake.extend(backoff_until);
    }
    out.requeue = wake.into_iter().min().map(|t| until(t, now));
    out.status = st;
    out
}

#[cfg(test)]
#[path = "job_status_tests.rs"]
mod tests;
