//! The children of each owner from a reflector, indexed by the uid of their controller
//! (as client-go's informer indexers are used by kube-controller-manager): a controller
//! finds what it owns with one hash probe instead of listing every object of the kind
//! through the API server on each reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};

use super::pods;

/// Owner uid → its children's references, with the reverse map to move a child whose
/// controller changed.
struct Tables<C: Resource<DynamicType = ()>> {
    children: HashMap<String, HashSet<ObjectRef<C>>>,
    owner_of: HashMap<ObjectRef<C>, String>,
}

impl<C: Resource<DynamicType = ()>> Tables<C> {
    fn new() -> Self {
        Tables {
            children: HashMap::new(),
            owner_of: HashMap::new(),
        }
    }

    fn remove(&mut self, r: &ObjectRef<C>) {
        if let Some(owner) = self.owner_of.remove(r) {
            if let Some(set) = self.children.get_mut(&owner) {
                set.remove(r);
                if set.is_empty() {
                    self.children.remove(&owner);
                }
            }
        }
    }

    fn insert(&mut self, obj: &C) {
        let r = ObjectRef::from_obj(obj);
        self.remove(&r);
        if let Some(owner) = pods::controller_of(obj.meta()) {
            self.children
                .entry(owner.uid.clone())
                .or_default()
                .insert(r.clone());
            self.owner_of.insert(r, owner.uid.clone());
        }
    }
}

/// The tables in use, and those being rebuilt by a (re-)list, swapped in at its end as
/// the reflector's store is.
struct Index<C: Resource<DynamicType = ()>> {
    live: Tables<C>,
    relisting: Option<Tables<C>>,
}

impl<C: Resource<DynamicType = ()>> Index<C> {
    fn new() -> Self {
        Index {
            live: Tables::new(),
            relisting: None,
        }
    }

    fn apply(&mut self, event: &Event<C>) {
        match event {
            Event::Apply(obj) => self.live.insert(obj),
            Event::Delete(obj) => self.live.remove(&ObjectRef::from_obj(obj)),
            Event::Init => self.relisting = Some(Tables::new()),
            Event::InitApply(obj) => self.relisting.get_or_insert_with(Tables::new).insert(obj),
            Event::InitDone => {
                if let Some(tables) = self.relisting.take() {
                    self.live = tables;
                }
            }
        }
    }
}

/// A reflector of `C` with its children-by-controller index.
#[derive(Clone)]
pub struct OwnerIndex<C: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<C>,
    index: Arc<Mutex<Index<C>>>,
}

impl<C> OwnerIndex<C>
where
    C: super::Watched,
{
    /// The index of `api` and the stream that keeps it filled: the touched objects, as a
    /// controller's `owns_stream` wants them (poll it, or nothing is indexed).
    pub fn new(
        api: Api<C>,
        config: watcher::Config,
    ) -> (Self, impl Stream<Item = Result<C, watcher::Error>> + Send) {
        let (store, writer) = reflector::store();
        let index = Arc::new(Mutex::new(Index::new()));
        let feed = index.clone();
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff())
            .inspect(move |event| {
                if let Ok(event) = event {
                    feed.lock().unwrap_or_else(|e| e.into_inner()).apply(event);
                }
            })
            .touched_objects();
        (OwnerIndex { store, index }, stream)
    }

    /// Waits until the first list is in.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.store.wait_until_ready().await
    }

    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<C>> {
        self.store.state()
    }

    /// The cached objects whose controller has uid `owner`.
    pub fn children(&self, owner: &str) -> Vec<Arc<C>> {
        let refs: Vec<ObjectRef<C>> = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index
                .live
                .children
                .get(owner)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default()
        };
        refs.iter().filter_map(|r| self.store.get(r)).collect()
    }
}

/// One subscriber's copy of a shared stream of touched objects, as a controller's
/// `owns_stream`/`watches_stream` takes it.
pub type Feed<C> = futures::stream::Map<
    tokio_stream::wrappers::UnboundedReceiverStream<C>,
    fn(C) -> Result<C, watcher::Error>,
>;

/// Hands every object of `stream` to `N` subscribers, so that controllers interested in
/// the same kind share one watch (and one decode of each event) instead of each running
/// its own, as client-go's shared informers do. Watch errors are logged here (the
/// watcher retries by itself, with back-off); it ends as soon as every subscriber is
/// gone (the controllers stopped).
pub fn fan_out<C, const N: usize>(
    stream: impl Stream<Item = Result<C, watcher::Error>> + Send + 'static,
) -> [Feed<C>; N]
where
    C: Clone + Send + 'static,
{
    let mut senders = Vec::with_capacity(N);
    let feeds = std::array::from_fn(|_| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        let ok: fn(C) -> Result<C, watcher::Error> = Ok;
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(ok)
    });
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut all_gone = std::pin::pin!(futures::future::join_all(
            senders.iter().map(|tx| tx.closed())
        ));
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = &mut all_gone => return,
            };
            match item {
                None => return,
                Some(Ok(obj)) => {
                    for tx in &senders {
                        let _ = tx.send(obj.clone());
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "shared watch failed; retrying"),
            }
        }
    });
    feeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;
    use serde_json::json;

    fn job(name: &str, owner: Option<&str>) -> Job {
        let refs: Vec<_> = owner
            .map(|uid| {
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": "cj", "uid": uid,
                    "controller": true})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": refs},
        }))
        .unwrap()
    }

    fn names(index: &Index<Job>, owner: &str) -> Vec<String> {
        let mut v: Vec<String> = index
            .live
            .children
            .get(owner)
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn children_follow_their_controller() {
        let mut index = Index::new();
        for e in [
            Event::Init,
            Event::InitApply(job("a", Some("u1"))),
            Event::InitApply(job("b", Some("u1"))),
            Event::InitApply(job("c", None)),
            Event::InitDone,
        ] {
            index.apply(&e);
        }
        assert_eq!(names(&index, "u1"), ["a", "b"]);
        index.apply(&Event::Apply(job("b", Some("u2"))));
        assert_eq!(names(&index, "u1"), ["a"]);
        assert_eq!(names(&index, "u2"), ["b"]);
        index.apply(&Event::Delete(job("a", Some("u1"))));
        assert!(names(&index, "u1").is_empty());
        assert!(!index.live.children.contains_key("u1"), "empty sets go");
        // A re-list replaces everything (`b` was deleted meanwhile).
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(job("c", Some("u1"))));
        assert_eq!(names(&index, "u2"), ["b"], "served until the list is done");
        index.apply(&Event::InitDone);
        assert_eq!(names(&index, "u1"), ["c"]);
        assert!(names(&index, "u2").is_empty());
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_object_and_errors_stay_behind() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let [a, b] = fan_out::<Job, 2>(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        for name in ["one", "two"] {
            tx.send(Ok(job(name, None))).unwrap();
        }
        tx.send(Err(watcher::Error::NoResourceVersion)).unwrap();
        tx.send(Ok(job("three", None))).unwrap();
        drop(tx);
        let names = |feed: Feed<Job>| async move {
            feed.map(|j| j.map(|j| j.metadata.name.unwrap_or_default()).ok())
                .collect::<Vec<_>>()
                .await
        };
        let want = vec![Some("one".into()), Some("two".into()), Some("three".into())];
        assert_eq!(names(a).await, want);
        assert_eq!(names(b).await, want);
    }
}
