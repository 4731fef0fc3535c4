//! The controller manager: the control loops that make the cluster converge on what its
//! objects ask for. Each controller is a kube-runtime `Controller` over an in-process
//! client of the API server, with the shared scaffolding here: error type, error policy,
//! start-up and shutdown.

pub mod apiserver_endpoints;
pub mod client;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod eventttl;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod job;
pub mod job_status;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod owner_index;
pub mod ownership;
pub mod persistentvolume;
pub mod pods;
pub mod replicaset;
pub mod rootca;
pub mod schedule;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::DeleteParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// Why a reconcile failed; the object is retried after a short delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// An object could not be handled (bad spec, missing fields).
    #[error("{0}")]
    Object(String),
}

/// What every reconcile returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The state reconcilers share: the API client.
pub struct Context {
    /// In-process client of the API server.
    pub client: Client,
}

/// How long a failed object waits before it is reconciled again.
const RETRY: Duration = Duration::from_secs(2);

/// Default watcher configuration of every controller.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default()
}

/// A `Controller::watches_stream` mapper that reconciles every object in `store`: for
/// changes that may concern all of them (a Node's, for DaemonSets or load balancers).
pub fn reconcile_all<K, T>(
    store: kube::runtime::reflector::Store<K>,
) -> impl Fn(T) -> Vec<kube::runtime::reflector::ObjectRef<K>> + Send + Sync + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    move |_| {
        store
            .state()
            .iter()
            .map(|o| kube::runtime::reflector::ObjectRef::from_obj(o.as_ref()))
            .collect()
    }
}

/// Deletes `name`; one that is already gone counts as deleted.
pub async fn delete<K>(api: &Api<K>, name: &str, dp: &DeleteParams) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` through the status subresource of `name`, unless the object already
/// reports it (so an unchanged pass causes no write and no new watch event).
pub async fn write_status<K, S>(
    api: &Api<K>,
    name: &str,
    current: Option<&S>,
    status: &S,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: PartialEq + serde::Serialize,
{
    if current == Some(status) {
        return Ok(());
    }
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// What a controller can watch: a typed, cloneable, sendable Kubernetes object.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<T> Watched for T where
    T: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A controller of Namespaces that also runs when a `K` (selected by `children`) in one
/// of them changes: for objects every namespace must have (its default ServiceAccount,
/// its root CA ConfigMap).
pub fn per_namespace<K>(
    client: &Client,
    children: watcher::Config,
) -> Controller<k8s_openapi::api::core::v1::Namespace>
where
    K: Watched,
{
    use k8s_openapi::api::core::v1::Namespace;
    use kube::runtime::reflector::ObjectRef;
    use kube::ResourceExt;
    Controller::new(Api::<Namespace>::all(client.clone()), watch_config()).watches(
        Api::<K>::all(client.clone()),
        children,
        |o: K| o.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
    )
}

/// Whether a namespace is being deleted (nothing new is created in it).
pub fn terminating(ns: &k8s_openapi::api::core::v1::Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// Runs `controller` with `reconcile` until `shutdown` completes; failures are logged
/// and the object retried.
pub async fn run<K, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: F,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) where
    K: Watched,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            move |obj: Arc<K>, err: &Error, _| {
                tracing::debug!(
                    controller = name,
                    object = %kube::runtime::reflector::ObjectRef::from_obj(obj.as_ref()),
                    error = %err,
                    "reconcile failed; retrying"
                );
                Action::requeue(RETRY)
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
    tracing::info!(controller = name, "stopped");
}

/// Starts every controller that is not disabled; they stop when `shutdown` fires.
pub fn start(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let ctx = Arc::new(Context { client });
    let stop = move || {
        let mut rx = shutdown.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut set = tokio::task::JoinSet::new();
    // One pod watch and owner index for every controller that follows pods.
    let (pods, pod_events) = owner_index::OwnerIndex::new(
        kube::Api::<k8s_openapi::api::core::v1::Pod>::all(ctx.client.clone()),
        watch_config(),
    );
    let [rs_pods, deploy_pods, ds_pods, sts_pods, ep_pods, job_pods] =
        owner_index::fan_out(pod_events);
    set.spawn(serviceaccount::run(ctx.clone(), stop()));
    set.spawn(replicaset::run(ctx.clone(), pods.clone(), rs_pods, stop()));
    set.spawn(deployment::run(ctx.clone(), pods, deploy_pods, stop()));
    set.spawn(daemonset::run(ctx.clone(), ds_pods, stop()));
    set.spawn(statefulset::run(ctx.clone(), sts_pods, stop()));
    set.spawn(endpoints::run(ctx.clone(), ep_pods, stop()));
    set.spawn(servicelb::run(ctx.clone(), stop()));
    set.spawn(job::run(ctx.clone(), job_pods, stop()));
    set.spawn(job::run_orphans(ctx.clone(), stop()));
    set.spawn(cronjob::run(ctx.clone(), stop()));
    set.spawn(eventttl::run(ctx.clone(), stop()));
    set
}
