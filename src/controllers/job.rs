//! The Job controller: runs a Job's pods to `completions` successes, `parallelism` at a
//! time (NonIndexed, or one pod per completion index when Indexed), replaces failed pods
//! after a back-off until `backoffLimit`, fails the Job past `activeDeadlineSeconds`,
//! honours `suspend`, deletes finished Jobs after `ttlSecondsAfterFinished` (the
//! ttl-after-finished controller's job), and writes the status that `kubectl get jobs`
//! and `kubectl wait --for=condition=complete` read. What one sync does is computed in
//! [`super::job_status`]; this module does the I/O.

use crate::controllers::owner_index::Feed;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::job_status::{self, PodState, INDEX_ANNOTATION, TRACKING_FINALIZER};
use super::{ownership, pods, watch_config, Context, Error, Result};
use crate::events::Recorder;

/// Label (and, with its legacy name, selector key) that ties pods to their Job's uid.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Label naming a pod's Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Runs the controller until `shutdown`; pods come from the controllers' shared pod
/// watch (`pod_events`).
pub async fn run(
    ctx: Arc<Context>,
    pod_events: Feed<Pod>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let jobs = Api::<Job>::all(ctx.client.clone());
    let controller = Controller::new(jobs, watch_config()).owns_stream(pod_events);
    super::run("job", controller, reconcile, ctx, shutdown).await;
}

/// Runs the loop that releases the pods of Jobs that are gone, until `shutdown`.
pub async fn run_orphans(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let pods = Api::<Pod>::all(ctx.client.clone());
    let config = watcher::Config::default().labels(CONTROLLER_UID_LABEL);
    let controller = Controller::new(pods, config);
    super::run("job-orphans", controller, release_orphan, ctx, shutdown).await;
}

/// Removes the tracking finalizer from `pod` (a conflict retries the sync); a pod that
/// is gone needs nothing.
async fn strip_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<()> {
    let Some(list) = pod.metadata.finalizers.as_ref() else {
        return Ok(());
    };
    if !list.iter().any(|f| f == TRACKING_FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = list.iter().filter(|f| *f != TRACKING_FINALIZER).collect();
    let patch = json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": pod.resource_version(),
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A finished or deleted pod whose Job is gone (or going) keeps no tracking finalizer,
/// so that it can be removed (kube-controller-manager does this for orphans too).
async fn release_orphan(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    if !job_status::is_tracked(&pod) || job_status::pod_state(&pod) == PodState::Active {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let owner = pods::controller_of(&pod.metadata).filter(|r| r.kind == "Job");
    let job = match owner {
        Some(r) => Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&r.name)
            .await?
            .filter(|j| j.metadata.uid.as_deref() == Some(r.uid.as_str())),
        None => None,
    };
    let job_alive = job.is_some_and(|j| j.metadata.deletion_timestamp.is_none());
    if !job_alive {
        strip_finalizer(&Api::namespaced(ctx.client.clone(), &ns), &pod).await?;
    }
    Ok(Action::await_change())
}

/// A pod for `job` from its template: tracking finalizer, and for Indexed Jobs the
/// index (annotation, label, hostname, `JOB_COMPLETION_INDEX`).
fn new_pod(job: &Job, index: Option<i32>) -> Result<Pod> {
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| Error::Object("job has no spec".into()))?;
    let owner = pods::controller_ref(job).ok_or_else(|| Error::Object("job has no uid".into()))?;
    let name = job.name_any();
    let prefix = match index {
        Some(i) => format!("{name}-{i}"),
        None => name.clone(),
    };
    let mut pod = pods::from_template(&spec.template, owner, &prefix);
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.to_string());
    if let Some(i) = index {
        let i = i.to_string();
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX_ANNOTATION.into(), i.clone());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(INDEX_ANNOTATION.into(), i.clone());
        let ps = pod.spec.get_or_insert_with(Default::default);
        ps.hostname = Some(format!("{name}-{i}"));
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"),
                }),
                ..Default::default()
            }),
        };
        for c in ps
            .containers
            .iter_mut()
            .chain(ps.init_containers.iter_mut().flatten())
        {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == env.name) {
                list.push(env.clone());
            }
        }
    }
    Ok(pod)
}

async fn reconcile(cached: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api_pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let api_jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    // The status counts what was already done: read it fresh, not from the cache, so a
    // sync never acts on counts older than its own last write.
    let Some(job) = api_jobs
        .get_opt(&name)
        .await?
        .filter(|j| j.metadata.uid == cached.metadata.uid)
    else {
        return Ok(Action::await_change());
    };
    let selector = job
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .ok_or_else(|| Error::Object("job has no selector".into()))?;
    let mine = if job.metadata.deletion_timestamp.is_some() || job_status::is_finished(&job) {
        // No adoption for a Job that is done: only the pods it already controls.
        let uid = job.uid().unwrap_or_default();
        let lp = ListParams::default().labels(&pods::match_labels_query(&selector));
        api_pods
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| pods::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
            .collect()
    } else {
        ownership::claim(&api_pods, &job, &selector, pods::is_active).await?
    };
    let plan = job_status::sync(&job, &mine, Timestamp::now());

    let mut current = job.clone();
    if let Some(unc) = &plan.uncounted {
        // Record the finished pods before their finalizers go, so none is lost.
        let mut st = current.status.clone().unwrap_or_default();
        st.uncounted_terminated_pods = Some(unc.clone());
        current.status = Some(st);
        current = api_jobs
            .replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    for p in mine.iter().filter(|p| plan.strip.contains(&p.name_any())) {
        strip_finalizer(&api_pods, p).await?;
    }
    let events = Recorder::new(ctx.client.clone(), "job-controller", None);
    for victim in &plan.delete {
        pods::delete_recorded(&api_pods, victim, &job, &events).await?;
    }
    if !plan.create.is_empty() {
        let new = plan
            .create
            .iter()
            .map(|i| new_pod(&job, *i))
            .collect::<Result<Vec<_>>>()?;
        pods::create_recorded(&api_pods, new, &job, &events).await?;
    }
    if current.status.as_ref() != Some(&plan.status) {
        current.status = Some(plan.status.clone());
        api_jobs
            .replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    if plan.delete_job {
        // As the ttl-after-finished controller: foreground, so pods go first.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: job.uid(),
                resource_version: None,
            }),
            ..DeleteParams::foreground()
        };
        match api_jobs.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(job = %format!("{ns}/{name}"), "deleted after ttlSecondsAfterFinished");
    }
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}
