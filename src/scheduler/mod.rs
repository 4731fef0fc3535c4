//! The scheduler: binds each unscheduled pod to the best node that can run it, through
//! the `pods/binding` subresource, or marks it PodScheduled=False with the reasons
//! kubectl shows ("0/3 nodes are available: …") and retries when the cluster changes.

pub mod affinity;
pub mod filters;
pub mod quantity;
pub mod score;
pub mod selector;
pub mod spread;
pub mod volumes;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::controllers::{self, Context, Result};
use crate::events::{Kind, Recorder};

/// Scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What the scheduler keeps between pods.
struct State {
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    replicasets: Store<ReplicaSet>,
    statefulsets: Store<StatefulSet>,
    /// Pods bound by this scheduler that the pod cache may not show yet: uid → node.
    assumed: Mutex<HashMap<String, (String, Arc<Pod>)>>,
    /// Claims, volumes and storage classes.
    volumes: volumes::VolumeCaches,
}

/// A reflector cache of every `K`; the future that keeps it current joins `streams`.
fn cache<K: controllers::Watched>(
    client: &Client,
    streams: &mut Vec<BoxFuture<'static, ()>>,
) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| async {});
    streams.push(stream.boxed());
    store
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let mut streams = Vec::new();
    let nodes = cache::<Node>(&client, &mut streams);
    let volume_caches = volumes::VolumeCaches::start(&client, &mut streams);
    let state = Arc::new(State {
        nodes: nodes.clone(),
        pods: cache(&client, &mut streams),
        namespaces: cache(&client, &mut streams),
        services: cache(&client, &mut streams),
        replicasets: cache(&client, &mut streams),
        statefulsets: cache(&client, &mut streams),
        assumed: Mutex::new(HashMap::new()),
        volumes: volume_caches,
    });
    let pending = Controller::new(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName="),
    )
    .with_config(Config::default().concurrency(1));
    let queue = pending.store();
    // A node change may make pods found unschedulable fit: try those again. Pods not yet
    // tried are queued already; requeueing them on every node event (a cluster of many
    // nodes posts many) would make each of them cost many attempts.
    let pending = pending.watches(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        move |_node: Node| {
            queue
                .state()
                .iter()
                .filter(|p| unschedulable(p))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    let ctx = Arc::new(Context { client });
    let run = controllers::run(
        "scheduler",
        pending,
        move |pod, ctx| schedule(pod, ctx, state.clone()),
        ctx,
        shutdown,
    );
    tokio::select! {
        _ = run => {}
        _ = futures::future::select_all(streams) => {}
    }
}

/// Whether the scheduler has found no node for `pod` (PodScheduled=False).
fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.status == "False")
}

/// The selector of the controller owning `meta` (ReplicaSet or StatefulSet; pikube
/// serves no ReplicationControllers) from the caches, for kube's default spreading.
fn owner_selector(state: &State, meta: &ObjectMeta) -> Option<selector::Selector> {
    let owner = controllers::pods::controller_of(meta)?;
    fn at<K: Resource<DynamicType = ()>>(name: &str, meta: &ObjectMeta) -> ObjectRef<K> {
        ObjectRef::new(name).within(meta.namespace.as_deref().unwrap_or_default())
    }
    let from = |sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        selector::Selector::compile(Some(sel), &Default::default(), &[], &[])
    };
    match (owner.api_version.as_str(), owner.kind.as_str()) {
        ("apps/v1", "ReplicaSet") => {
            let rs = state.replicasets.get(&at(&owner.name, meta))?;
            from(&rs.spec.as_ref()?.selector)
        }
        ("apps/v1", "StatefulSet") => {
            let ss = state.statefulsets.get(&at(&owner.name, meta))?;
            from(&ss.spec.as_ref()?.selector)
        }
        _ => None,
    }
}

async fn schedule(pod: Arc<Pod>, ctx: Arc<Context>, state: Arc<State>) -> Result<Action> {
    let spec = match pod.spec.as_ref() {
        Some(s) if s.node_name.as_deref().unwrap_or("").is_empty() => s,
        _ => return Ok(Action::await_change()),
    };
    let mine = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == DEFAULT_SCHEDULER);
    if !mine || pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ready = state.nodes.wait_until_ready().await.is_ok()
        && state.pods.wait_until_ready().await.is_ok()
        && state.namespaces.wait_until_ready().await.is_ok()
        && state.services.wait_until_ready().await.is_ok()
        && state.replicasets.wait_until_ready().await.is_ok()
        && state.statefulsets.wait_until_ready().await.is_ok()
        && state.volumes.ready().await;
    if !ready {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let nodes = state.nodes.state();
    let all_pods = state.pods.state();
    let infos = {
        let mut assumed = state.assumed.lock().unwrap_or_else(|e| e.into_inner());
        // Forget assumptions the cache has caught up with (bound there, or gone).
        let cached: HashMap<&str, Option<&str>> = all_pods
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.uid.as_deref()?,
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                ))
            })
            .collect();
        assumed.retain(|uid, (node, _)| {
            matches!(cached.get(uid.as_str()), Some(n) if *n != Some(node.as_str()))
        });
        filters::node_infos(&nodes, &all_pods, &assumed)
    };
    let namespaces = state.namespaces.state();
    let inputs = filters::Inputs {
        infos: &infos,
        namespaces: &namespaces,
        default_spread: spread::default_selector(
            &pod,
            &state.services.state(),
            owner_selector(&state, &pod.metadata),
        ),
    };
    let picked = state
        .volumes
        .check(&pod)
        .map_err(|reason| volumes::unschedulable(infos.len(), &reason))
        .and_then(|v| Ok((filters::pick_with(&pod, &inputs, &|n| v.unfit(n))?, v)));
    match picked {
        Ok((node, claims)) => {
            if let Some(info) = infos
                .iter()
                .find(|i| i.node.metadata.name.as_ref() == Some(&node))
            {
                claims.assign(&ctx.client, &info.node).await?;
            }
            let name = pod.name_any();
            let ns = pod.namespace().unwrap_or_default();
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            match api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                Ok(_) => {
                    recorder(&ctx).record(
                        pod.as_ref(),
                        None,
                        Kind::Normal,
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {node}"),
                    );
                    if let Some(uid) = pod.metadata.uid.clone() {
                        state
                            .assumed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(uid, (node.clone(), pod.clone()));
                    }
                    tracing::debug!(pod = %format!("{ns}/{name}"), %node, "bound");
                    Ok(Action::await_change())
                }
                // Deleted or bound meanwhile: nothing left to do.
                Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {
                    Ok(Action::await_change())
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(message) => {
            let ns = pod.namespace().unwrap_or_default();
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
            let current = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                .and_then(|c| c.message.clone());
            if current.as_deref() != Some(message.as_str()) {
                recorder(&ctx).record(
                    pod.as_ref(),
                    None,
                    Kind::Warning,
                    "FailedScheduling",
                    &message,
                );
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": crate::api::objects::now_rfc3339(),
                }]}});
                match api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Strategic(patch),
                    )
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Action::requeue(Duration::from_secs(5)))
        }
    }
}

/// The scheduler's Events are those of `default-scheduler`, as kube-scheduler's.
fn recorder(ctx: &Context) -> Recorder {
    Recorder::new(ctx.client.clone(), "default-scheduler", None)
}
