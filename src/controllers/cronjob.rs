//! The CronJob controller (kube-controller-manager's cronjob v2): at each scheduled time
//! of `spec.schedule` in `spec.timeZone` it creates the Job `<cronjob>-<minutes since the
//! epoch>` from `spec.jobTemplate`, running at most the latest missed time and only
//! within `startingDeadlineSeconds`; applies `concurrencyPolicy` (Allow, Forbid,
//! Replace) and `suspend`; keeps `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime`; and deletes finished Jobs beyond the history limits. Decisions
//! are pure functions of the CronJob and a given `now`, so they are unit-tested. What it
//! does is recorded as Events on the CronJob with kube-controller-manager's reasons and
//! messages (`SuccessfulCreate`, `SawCompletedJob`, `SuccessfulDelete`, `MissingJob`,
//! `UnexpectedJob`, `JobAlreadyActive`, `MissSchedule`, `TooManyMissedTimes`, …).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Resource, ResourceExt};

use super::job_status::finished_condition;
use super::owner_index::OwnerIndex;
use super::schedule::{self, Schedule};
use super::{pods, watch_config, Context, Error, Result};
use crate::events::{Kind, Recorder};

/// Annotation on a Job with the time it was scheduled for, in the CronJob's time zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// More missed start times than this are reported (kube-controller-manager's limit).
const TOO_MANY_MISSED: usize = 100;

/// The component that records the controller's Events (kube-controller-manager's name).
pub const COMPONENT: &str = "cronjob-controller";

/// Runs the controller until `shutdown`. Its Jobs come from a reflector indexed by
/// owner, so a run reads only the CronJob's own Jobs and lists nothing.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let cronjobs = Api::<CronJob>::all(ctx.client.clone());
    let (jobs, job_events) = OwnerIndex::new(Api::<Job>::all(ctx.client.clone()), watch_config());
    let controller = Controller::new(cronjobs, watch_config()).owns_stream(job_events);
    let events = Recorder::new(ctx.client.clone(), COMPONENT, None);
    let reconcile = move |cj, ctx| reconcile(cj, ctx, jobs.clone(), events.clone());
    super::run("cronjob", controller, reconcile, ctx, shutdown).await;
}

/// The time zone of a CronJob: `spec.timeZone`, else the server's own.
pub fn zone_of(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        Some(name) => schedule::time_zone(name),
        None => Ok(TimeZone::system()),
    }
}

/// The latest scheduled time in (`after`, `now`] and how many there were (counted up to
/// [`TOO_MANY_MISSED`] + 1).
pub fn most_recent(
    sched: &Schedule,
    tz: &TimeZone,
    after: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize) {
    let mut t = after;
    let mut last = None;
    let mut count = 0;
    while let Some(next) = sched.next(t, tz).filter(|n| *n <= now) {
        count += 1;
        last = Some(next);
        t = next;
        if count > TOO_MANY_MISSED {
            // Many missed: find the latest one from a window before `now` that widens
            // until it holds a scheduled time, rather than walking every one.
            let mut back = SignedDuration::from_mins(1);
            let mut from = now;
            while from > t {
                from = now.checked_sub(back).unwrap_or(t).max(t);
                if sched.next(from, tz).is_some_and(|n| n <= now) {
                    break;
                }
                back = back.checked_mul(2).unwrap_or(back);
            }
            let mut t = from;
            while let Some(next) = sched.next(t, tz).filter(|n| *n <= now) {
                last = Some(next);
                t = next;
            }
            break;
        }
    }
    (last, count)
}

/// What a CronJob should do at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due.
    Wait,
    /// Create the Job of this scheduled time.
    Run(Timestamp),
    /// The latest due time is past its starting deadline.
    TooLate(Timestamp),
    /// A Job is due but another is active and the policy is Forbid.
    Forbidden(Timestamp),
}

/// The step at `now` and how many start times were missed.
pub fn decide(cj: &CronJob, sched: &Schedule, tz: &TimeZone, now: Timestamp) -> (Step, usize) {
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    let deadline = spec
        .starting_deadline_seconds
        .map(SignedDuration::from_secs);
    if let Some(d) = deadline {
        if let Ok(t) = now.checked_sub(d) {
            earliest = earliest.max(t);
        }
    }
    let (due, missed) = most_recent(sched, tz, earliest, now);
    let Some(due) = due else {
        return (Step::Wait, missed);
    };
    if deadline.is_some_and(|d| due.checked_add(d).is_ok_and(|t| t < now)) {
        return (Step::TooLate(due), missed);
    }
    let active = status.active.as_ref().map_or(0, Vec::len);
    if status.last_schedule_time.as_ref().map(|t| t.0) == Some(due) {
        return (Step::Wait, missed);
    }
    if spec.concurrency_policy.as_deref() == Some("Forbid") && active > 0 {
        return (Step::Forbidden(due), missed);
    }
    (Step::Run(due), missed)
}

/// How long until the next scheduled time after `now` (a little after it).
pub fn next_wake(sched: &Schedule, tz: &TimeZone, now: Timestamp) -> Option<Duration> {
    let next = sched.next(now, tz)?;
    let ms = now.duration_until(next).as_millis().max(0) as u64;
    Some(Duration::from_millis(ms + 100))
}

/// The `MissSchedule` message: the scheduled time in UTC as Go's `time.RFC1123Z`.
pub fn missed_message(scheduled: Timestamp) -> String {
    format!(
        "Missed scheduled time to start a job: {}",
        scheduled
            .to_zoned(TimeZone::UTC)
            .strftime("%a, %d %b %Y %H:%M:%S %z")
    )
}

/// The name of the Job for `scheduled`: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cj_name: &str, scheduled: Timestamp) -> String {
    format!("{cj_name}-{}", scheduled.as_second().div_euclid(60))
}

/// The Job a CronJob creates for `scheduled`.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
            .replace("+00:00", "Z"),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled)),
            namespace: cj.namespace(),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: pods::controller_ref(cj).map(|r| vec![r]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some(Job::api_version(&()).to_string()),
        kind: Some(Job::kind(&()).to_string()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Finished Jobs beyond the history limits, oldest first.
pub fn beyond_history(jobs: &[Job], successful: Option<i32>, failed: Option<i32>) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, limit) in [("Complete", successful), ("Failed", failed)] {
        let Some(limit) = limit else { continue };
        let mut done: Vec<&Job> = jobs
            .iter()
            .filter(|j| finished_condition(j).is_some_and(|c| c.type_ == kind))
            .collect();
        // Times have whole seconds: Jobs started in the same second go by name, as in
        // kube's byJobStartTime (not by the order a cache happens to list them in).
        done.sort_by_key(|j| {
            let start = j.status.as_ref().and_then(|s| s.start_time.as_ref());
            (
                start.map(|t| t.0),
                j.metadata.creation_timestamp.as_ref().map(|t| t.0),
                j.metadata.name.clone(),
            )
        });
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        out.extend(done.iter().take(extra).map(|j| j.name_any()));
    }
    out
}

/// The Jobs `cj` controls: from the index, plus those of its active list the cache
/// does not hold yet (just created), read from the API as kube's controller does.
async fn children(cj: &CronJob, jobs: &OwnerIndex<Job>, api: &Api<Job>) -> Result<Vec<Job>> {
    jobs.wait_until_ready()
        .await
        .map_err(|e| Error::Object(format!("job cache: {e}")))?;
    let uid = cj.uid().unwrap_or_default();
    let mut children: Vec<Job> = jobs.children(&uid).iter().map(|j| (**j).clone()).collect();
    let active = cj.status.as_ref().and_then(|s| s.active.as_ref());
    for r in active.into_iter().flatten() {
        if children.iter().any(|j| j.metadata.uid == r.uid) {
            continue;
        }
        if let Some(job) = api.get_opt(r.name.as_deref().unwrap_or_default()).await? {
            if pods::controller_of(&job.metadata).is_some_and(|o| o.uid == uid) {
                children.push(job);
            }
        }
    }
    Ok(children)
}

/// The schedule and time zone of `cj`, or None — recorded as `UnknownTimeZone` or
/// `UnparseableSchedule` — when one cannot be used (the API server refuses both, so
/// only a time zone the server's database lacks gets here).
fn plan(cj: &CronJob, events: &Recorder) -> Option<(Schedule, TimeZone)> {
    let spec = cj.spec.as_ref()?;
    let tz = match zone_of(cj) {
        Ok(tz) => tz,
        Err(e) => {
            let zone = spec.time_zone.as_deref().unwrap_or_default();
            tracing::warn!(cronjob = %cj.name_any(), error = %e, "unusable time zone");
            let message = format!("invalid timeZone: {zone:?}: {e}");
            events.record(cj, None, Kind::Warning, "UnknownTimeZone", &message);
            return None;
        }
    };
    match Schedule::parse(&spec.schedule) {
        Ok(s) => Some((s, tz)),
        Err(e) => {
            tracing::warn!(cronjob = %cj.name_any(), error = %e, "unusable schedule");
            let message = format!("unparseable schedule: {:?} : {e}", spec.schedule);
            events.record(cj, None, Kind::Warning, "UnparseableSchedule", &message);
            None
        }
    }
}

/// Deletes Job `name` of `cj` in the background (its pods with it), recording
/// `SuccessfulDelete` or `FailedDelete` on the CronJob as kube's controller does.
async fn delete_job(api: &Api<Job>, cj: &CronJob, name: &str, events: &Recorder) -> Result<()> {
    match super::delete(api, name, &DeleteParams::background()).await {
        Ok(()) => {
            let message = format!("Deleted job {name}");
            events.record(cj, None, Kind::Normal, "SuccessfulDelete", &message);
            Ok(())
        }
        Err(e) => {
            let message = format!("Deleted job: {e}");
            events.record(cj, None, Kind::Warning, "FailedDelete", &message);
            Err(e)
        }
    }
}

async fn reconcile(
    cached: Arc<CronJob>,
    ctx: Arc<Context>,
    jobs: OwnerIndex<Job>,
    events: Recorder,
) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let key = format!("{ns}/{name}");
    let api_jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let api_cj = Api::<CronJob>::namespaced(ctx.client.clone(), &ns);
    // lastScheduleTime and the active list fresh from the API, not the cache.
    let Some(cj) = api_cj
        .get_opt(&name)
        .await?
        .filter(|c| c.metadata.uid == cached.metadata.uid)
    else {
        return Ok(Action::await_change());
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = cj.uid().unwrap_or_default();
    let children = children(&cj, &jobs, &api_jobs).await?;
    let spec = cj.spec.clone().unwrap_or_default();
    let mut status: CronJobStatus = cj.status.clone().unwrap_or_default();

    // Active Jobs that finished or went away leave the active list.
    let mut active = Vec::new();
    for r in status.active.take().unwrap_or_default() {
        let Some(job) = children.iter().find(|j| j.metadata.uid == r.uid) else {
            let message = format!(
                "Active job went missing: {}",
                r.name.as_deref().unwrap_or_default()
            );
            events.record(&cj, None, Kind::Normal, "MissingJob", &message);
            continue;
        };
        match finished_condition(job) {
            None => active.push(r),
            Some(c) => {
                let message = format!(
                    "Saw completed job: {}, condition: {}",
                    job.name_any(),
                    c.type_
                );
                events.record(&cj, None, Kind::Normal, "SawCompletedJob", &message);
                if c.type_ == "Complete" {
                    let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                    if done.as_ref().map(|t| t.0)
                        > status.last_successful_time.as_ref().map(|t| t.0)
                    {
                        status.last_successful_time = done;
                    }
                }
            }
        }
    }
    // Unfinished Jobs it controls but does not list: created by someone else (`kubectl
    // create job --from=cronjob/…`) or forgotten in a crash.
    for job in &children {
        let listed = active.iter().any(|r| r.uid == job.metadata.uid);
        let going = job.metadata.deletion_timestamp.is_some();
        if !listed && !going && finished_condition(job).is_none() {
            let message = format!(
                "Saw a job that the controller did not create or forgot: {}",
                job.name_any()
            );
            events.record(&cj, None, Kind::Warning, "UnexpectedJob", &message);
        }
    }
    for victim in beyond_history(
        &children,
        spec.successful_jobs_history_limit,
        spec.failed_jobs_history_limit,
    ) {
        delete_job(&api_jobs, &cj, &victim, &events).await?;
    }

    let now = Timestamp::now();
    let mut wake = None;
    let usable = plan(&cj, &events).filter(|_| spec.suspend != Some(true));
    if let Some((sched, tz)) = usable {
        let mut view = cj.clone();
        view.status = Some(CronJobStatus {
            active: Some(active.clone()),
            ..status.clone()
        });
        let (step, missed) = decide(&view, &sched, &tz, now);
        if missed > TOO_MANY_MISSED {
            tracing::warn!(cronjob = %key, "too many missed start times (> {TOO_MANY_MISSED}); check clock skew or set startingDeadlineSeconds");
            events.record(
                &cj,
                None,
                Kind::Warning,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            );
        }
        match step {
            Step::Wait => {}
            Step::TooLate(t) => {
                tracing::info!(cronjob = %key, scheduled = %t, "missed scheduled time to start a job");
                events.record(&cj, None, Kind::Warning, "MissSchedule", &missed_message(t));
            }
            Step::Forbidden(t) => {
                let message = "Not starting job because prior execution is running and concurrency policy is Forbid";
                tracing::info!(cronjob = %key, scheduled = %t, "{message}");
                events.record(&cj, None, Kind::Normal, "JobAlreadyActive", message);
            }
            Step::Run(t) => {
                if spec.concurrency_policy.as_deref() == Some("Replace") {
                    for r in active.drain(..) {
                        let name = r.name.as_deref().unwrap_or_default();
                        delete_job(&api_jobs, &cj, name, &events).await?;
                    }
                }
                let job = job_for(&cj, t, &tz);
                let created = match api_jobs.create(&PostParams::default(), &job).await {
                    Ok(j) => {
                        let message = format!("Created job {}", j.name_any());
                        events.record(&cj, None, Kind::Normal, "SuccessfulCreate", &message);
                        j
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        // Created before a crash or a stale cache: ours if it names us.
                        let existing = api_jobs.get(&job.name_any()).await?;
                        if pods::controller_of(&existing.metadata).is_none_or(|r| r.uid != uid) {
                            tracing::warn!(cronjob = %key, job = %job.name_any(), "a job of that name exists and is not ours");
                            return Ok(Action::requeue(Duration::from_secs(30)));
                        }
                        existing
                    }
                    Err(e) => {
                        let message = format!("Error creating job: {e}");
                        events.record(&cj, None, Kind::Warning, "FailedCreate", &message);
                        return Err(e.into());
                    }
                };
                if finished_condition(&created).is_none()
                    && !active.iter().any(|r| r.uid == created.metadata.uid)
                {
                    active.push(reference(&created));
                }
                status.last_schedule_time = Some(Time(t));
                tracing::info!(cronjob = %key, job = %created.name_any(), "created job");
            }
        }
        wake = next_wake(&sched, &tz, now);
    }
    status.active = (!active.is_empty()).then_some(active);
    if cj.status.clone().unwrap_or_default() != status {
        let mut updated = cj.clone();
        updated.status = Some(status);
        api_cj
            .replace_status(&name, &PostParams::default(), &updated)
            .await?;
    }
    Ok(wake
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn cronjob(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut s = json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {}}}});
        json_patch::merge(&mut s, &spec);
        serde_json::from_value(json!({
            "metadata": {"name": "cj", "namespace": "default", "uid": "cj-uid",
                "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": s,
            "status": status,
        }))
        .expect("cronjob")
    }

    fn step(cj: &CronJob, now: &str) -> (Step, usize) {
        let sched = Schedule::parse(&cj.spec.as_ref().expect("spec").schedule).expect("schedule");
        decide(cj, &sched, &zone_of(cj).expect("tz"), at(now))
    }

    #[test]
    fn runs_the_latest_missed_time_once() {
        let cj = cronjob(json!({"timeZone": "UTC"}), json!({}));
        assert_eq!(step(&cj, "2024-01-01T00:04:59Z"), (Step::Wait, 0));
        assert_eq!(
            step(&cj, "2024-01-01T00:05:00Z"),
            (Step::Run(at("2024-01-01T00:05:00Z")), 1)
        );
        // Down for 17 minutes: only the latest of three missed times runs.
        assert_eq!(
            step(&cj, "2024-01-01T00:17:00Z"),
            (Step::Run(at("2024-01-01T00:15:00Z")), 3)
        );
        let done = cronjob(
            json!({"timeZone": "UTC"}),
            json!({"lastScheduleTime": "2024-01-01T00:15:00Z"}),
        );
        assert_eq!(step(&done, "2024-01-01T00:17:00Z").0, Step::Wait);
        // Months of downtime: counted as too many, still only the latest runs.
        let (s, missed) = step(&cj, "2024-03-01T10:02:00Z");
        assert_eq!(s, Step::Run(at("2024-03-01T10:00:00Z")));
        assert!(missed > TOO_MANY_MISSED);
    }

    #[test]
    fn starting_deadline_and_concurrency() {
        let cj = cronjob(
            json!({"timeZone": "UTC", "startingDeadlineSeconds": 60}),
            json!({}),
        );
        assert_eq!(
            step(&cj, "2024-01-01T00:05:30Z").0,
            Step::Run(at("2024-01-01T00:05:00Z"))
        );
        // 2 minutes late with a 60 s deadline: nothing in the window.
        assert_eq!(step(&cj, "2024-01-01T00:07:00Z").0, Step::Wait);
        let active = json!({"active": [{"name": "cj-1", "uid": "u"}],
            "lastScheduleTime": "2024-01-01T00:00:00Z"});
        let forbid = cronjob(
            json!({"timeZone": "UTC", "concurrencyPolicy": "Forbid"}),
            active.clone(),
        );
        assert_eq!(
            step(&forbid, "2024-01-01T00:05:10Z").0,
            Step::Forbidden(at("2024-01-01T00:05:00Z"))
        );
        let allow = cronjob(json!({"timeZone": "UTC"}), active);
        assert_eq!(
            step(&allow, "2024-01-01T00:05:10Z").0,
            Step::Run(at("2024-01-01T00:05:00Z"))
        );
    }

    #[test]
    fn time_zone_names_and_jobs() {
        let cj = cronjob(
            json!({"schedule": "0 9 * * *", "timeZone": "Asia/Tokyo"}),
            json!({}),
        );
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(
            step(&cj, "2024-01-02T00:00:30Z").0,
            Step::Run(at("2024-01-02T00:00:00Z"))
        );
        let tz = zone_of(&cj).expect("tz");
        let job = job_for(&cj, at("2024-01-02T00:00:00Z"), &tz);
        assert_eq!(job.metadata.name.as_deref(), Some("cj-28402560"));
        assert_eq!(
            job.metadata.annotations.as_ref().expect("annotations")[SCHEDULED_TIMESTAMP],
            "2024-01-02T09:00:00+09:00"
        );
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
        assert_eq!(
            next_wake(
                &Schedule::parse("* * * * *").expect("s"),
                &tz,
                at("2024-01-01T00:00:30Z")
            ),
            Some(Duration::from_millis(30_100))
        );
    }

    #[test]
    fn missed_schedules_read_as_go_rfc1123z() {
        assert_eq!(
            missed_message(at("2024-01-02T09:05:00Z")),
            "Missed scheduled time to start a job: Tue, 02 Jan 2024 09:05:00 +0000"
        );
    }

    #[test]
    fn history_limits_keep_the_newest() {
        let job = |name: &str, start: &str, kind: &str| -> Job {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"startTime": start,
                    "conditions": [{"type": kind, "status": "True"}]}}))
            .expect("job")
        };
        let jobs = [
            job("s3", "2024-01-01T00:03:00Z", "Complete"),
            job("s1", "2024-01-01T00:01:00Z", "Complete"),
            job("f1", "2024-01-01T00:02:00Z", "Failed"),
            job("s2", "2024-01-01T00:02:00Z", "Complete"),
            job("f2", "2024-01-01T00:04:00Z", "Failed"),
        ];
        assert_eq!(beyond_history(&jobs, Some(1), Some(1)), ["s1", "s2", "f1"]);
        assert!(beyond_history(&jobs, None, None).is_empty());
        // Started in the same second: by name, whatever order they are listed in.
        let same = [
            job("manual-2", "2024-01-01T00:05:00Z", "Complete"),
            job("manual-1", "2024-01-01T00:05:00Z", "Complete"),
        ];
        assert_eq!(beyond_history(&same, Some(1), None), ["manual-1"]);
    }
}
