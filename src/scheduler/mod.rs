//! The scheduler: binds each unscheduled pod to the best node that can run it, through
//! the `pods/binding` subresource, or marks it PodScheduled=False with the reasons
//! kubectl shows ("0/3 nodes are available: …") and retries when the cluster changes.

pub mod affinity;
pub mod binding;
pub mod cache;
pub mod filters;
pub mod quantity;
pub mod score;
pub mod selector;
pub mod spread;
pub mod volumes;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::ObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Semaphore;

use binding::{lock, Binder, Binding};
use cache::NodeCache;

use crate::controllers::{self, Context, Result};

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
    /// Node infos with bound and assumed pods, kept current by the node and pod watches.
    cache: Arc<Mutex<NodeCache>>,
    /// Slots for bindings in flight.
    slots: Arc<Semaphore>,
    /// Carries out bindings.
    binder: Binder,
    /// Claims, volumes and storage classes.
    volumes: volumes::VolumeCaches,
}

/// Keeps `writer`'s cache of every `K` current, calling `on` with each event after the
/// cache took it; the future joins `streams`.
fn feed<K: controllers::Watched>(
    client: &Client,
    streams: &mut Vec<BoxFuture<'static, ()>>,
    writer: reflector::store::Writer<K>,
    mut on: impl FnMut(&watcher::Event<K>) + Send + 'static,
) {
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(move |event| {
        if let Ok(event) = &event {
            on(event);
        }
        futures::future::ready(())
    });
    streams.push(stream.boxed());
}

/// A reflector cache of every `K`; the future that keeps it current joins `streams`.
fn cache<K: controllers::Watched>(
    client: &Client,
    streams: &mut Vec<BoxFuture<'static, ()>>,
) -> Store<K> {
    let (store, writer) = reflector::store();
    feed(client, streams, writer, |_| {});
    store
}

/// The cached copy of `obj` (shared, not cloned), or a copy when the cache lacks it.
fn shared<K: controllers::Watched>(store: &Store<K>, obj: &K) -> Arc<K> {
    store
        .get(&ObjectRef::from_obj(obj))
        .unwrap_or_else(|| Arc::new(obj.clone()))
}

/// The node and pod caches, feeding their events into the node infos of `infos`.
fn node_and_pod_caches(
    client: &Client,
    streams: &mut Vec<BoxFuture<'static, ()>>,
    infos: &Arc<Mutex<NodeCache>>,
) -> (Store<Node>, Store<Pod>) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (infos_n, nodes_n, pods_n) = (infos.clone(), nodes.clone(), pods.clone());
    feed(client, streams, node_writer, move |event| {
        let mut c = lock(&infos_n);
        match event {
            watcher::Event::Apply(n) => c.apply_node(shared(&nodes_n, n)),
            watcher::Event::Delete(n) => c.delete_node(&n.name_any()),
            watcher::Event::InitDone => c.rebuild(&nodes_n.state(), &pods_n.state(), (true, false)),
            _ => {}
        }
    });
    let (infos_p, nodes_p, pods_p) = (infos.clone(), nodes.clone(), pods.clone());
    feed(client, streams, pod_writer, move |event| {
        let mut c = lock(&infos_p);
        match event {
            watcher::Event::Apply(p) => c.apply_pod(shared(&pods_p, p)),
            watcher::Event::Delete(p) => c.delete_pod(p),
            watcher::Event::InitDone => c.rebuild(&nodes_p.state(), &pods_p.state(), (false, true)),
            _ => {}
        }
    });
    (nodes, pods)
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let mut streams = Vec::new();
    let infos = Arc::new(Mutex::new(NodeCache::default()));
    let (nodes, pods) = node_and_pod_caches(&client, &mut streams, &infos);
    let volume_caches = volumes::VolumeCaches::start(&client, &mut streams);
    let (retry, retries) = futures::channel::mpsc::unbounded();
    let state = Arc::new(State {
        nodes,
        pods,
        namespaces: cache(&client, &mut streams),
        services: cache(&client, &mut streams),
        replicasets: cache(&client, &mut streams),
        statefulsets: cache(&client, &mut streams),
        cache: infos.clone(),
        slots: Arc::new(Semaphore::new(binding::MAX_IN_FLIGHT)),
        binder: Binder {
            client: client.clone(),
            cache: infos,
            retry,
        },
        volumes: volume_caches,
    });
    let pending = Controller::new(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName="),
    )
    .with_config(Config::default().concurrency(1))
    // Pods whose binding failed.
    .reconcile_on(retries);
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

/// One scheduling attempt for `pod`: pick a node, assume the pod there and leave the
/// binding to a task of its own, or mark the pod unschedulable.
async fn schedule(pod: Arc<Pod>, ctx: Arc<Context>, state: Arc<State>) -> Result<Action> {
    let spec = match pod.spec.as_ref() {
        Some(s) if s.node_name.as_deref().unwrap_or("").is_empty() => s,
        _ => return Ok(Action::await_change()),
    };
    let mine = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == DEFAULT_SCHEDULER);
    let Some(uid) = pod.metadata.uid.as_deref() else {
        return Ok(Action::await_change());
    };
    if !mine || pod.metadata.deletion_timestamp.is_some() || lock(&state.cache).is_placed(uid) {
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
    if !lock(&state.cache).synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    // Wait for a binding slot before looking at the nodes, so the pick sees the latest
    // assumptions.
    let Ok(permit) = state.slots.clone().acquire_owned().await else {
        return Ok(Action::await_change());
    };
    let namespaces = state.namespaces.state();
    let default_spread = spread::default_selector(
        &pod,
        &state.services.state(),
        owner_selector(&state, &pod.metadata),
    );
    let volumes = state.volumes.check(&pod);
    let picked = {
        let mut cache = lock(&state.cache);
        let infos = cache.infos();
        let inputs = filters::Inputs {
            infos,
            namespaces: &namespaces,
            default_spread,
        };
        let picked = volumes
            .map_err(|reason| volumes::unschedulable(infos.len(), &reason))
            .and_then(|v| Ok((filters::pick_with(&pod, &inputs, &|n| v.unfit(n))?, v)));
        picked.map(|(node, claims)| {
            let target = cache.info(&node).map(|i| i.node.clone());
            cache.assume(pod.clone(), &node);
            Binding {
                pod: pod.clone(),
                node,
                target,
                claims,
            }
        })
    };
    match picked {
        Ok(binding) => {
            tokio::spawn(state.binder.clone().bind(binding, permit));
            Ok(Action::await_change())
        }
        Err(message) => {
            drop(permit);
            binding::mark(&ctx.client, &pod, "Unschedulable", &message).await?;
            Ok(Action::requeue(Duration::from_secs(5)))
        }
    }
}
