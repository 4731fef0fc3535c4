//! The list cache: every object of a built-in resource, decoded and defaulted once per
//! write, kept current by one store watch per resource, so that lists (and the initial
//! state of watches) cost a walk over memory instead of a store scan that decodes every
//! object again.
//!
//! Lists stay consistent, as kube-apiserver's consistent reads from its watch cache: a
//! list first takes the store's linearizable revision R, then has the cache apply every
//! event its watch was handed up to R (the store publishes a revision's events before it
//! reports that revision as current), and answers at R. A cache whose watch ended (lagged
//! or shut down) is dropped; that list is served from the store and the next one builds a
//! new cache.
//!
//! Watches are served from the same objects (kube-apiserver's cacher): each applied write
//! becomes one shared [`Change`] (decoded once, its JSON written once) broadcast to the
//! resource's watches, and the last [`RECENT`] changes are kept for watches that start at
//! a recent revision. A watch further back is served by the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use pikube_raft::{RangeRequest, Store, WatchRequest};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, OnceCell};

use super::objects::read_stored;
use super::resources::Def;
use super::status::ApiError;

/// Objects read per store request while a cache is filled.
const FILL_PAGE: usize = 500;

/// Changes kept per resource for watches that start at a past revision (kube-apiserver
/// keeps such a window in its watch cache too).
pub const RECENT: usize = 1024;

/// Changes a watch may fall behind by before it is closed; its client then watches again
/// from the last revision it saw.
const WATCH_BUFFER: usize = 4096;

/// One applied write of a resource, shared by all its watches.
pub struct Change {
    /// The write's revision.
    pub revision: i64,
    /// The object's store key.
    pub key: String,
    /// A delete (else a create or update).
    pub deleted: bool,
    /// The object after the write; for a delete, its last state with the delete's
    /// resourceVersion, as watches report it.
    pub object: Arc<Value>,
    /// The object before the write.
    pub prev: Option<Arc<Value>>,
    /// `object` as JSON, written by the first watch that sends it.
    json: OnceLock<Bytes>,
}

impl Change {
    /// `object` as JSON, written once for all watches.
    pub fn object_json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            Bytes::from(serde_json::to_vec(self.object.as_ref()).unwrap_or_default())
        })
    }
}

/// A watch served from the cache: what it sends first, then the changes after
/// `revision`.
pub struct Subscription {
    /// The current objects, for a watch that starts with them (else empty).
    pub initial: Vec<Arc<Value>>,
    /// Only changes after this revision are the watch's.
    pub revision: i64,
    /// Kept changes after `revision`, in order.
    pub recent: Vec<Arc<Change>>,
    /// The changes still to come.
    pub live: broadcast::Receiver<Arc<Change>>,
    /// Where the watch stands, for its bookmarks.
    pub progress: Progress,
}

/// Tells a watch served by the cache how far it has seen, so that a bookmark never names
/// a revision whose changes it has not sent yet.
pub struct Progress {
    store: Store,
    resource: Arc<Resource>,
}

impl Progress {
    /// A revision up to which `live` has received every change of the resource, or None
    /// while changes are still queued for it (or the cache's watch ended).
    pub async fn settled(&self, live: &broadcast::Receiver<Arc<Change>>) -> Option<i64> {
        // The store hands a revision's events to its watchers before it publishes the
        // revision, so after the catch-up below the cache has applied (and sent) every
        // change up to `current`.
        let current = self.store.current_revision();
        let (tx, rx) = oneshot::channel();
        if self.resource.sync.send(tx).is_err() || rx.await.is_err() {
            return None;
        }
        let objects = self
            .resource
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner());
        live.is_empty().then(|| current.max(objects.applied))
    }
}

/// What a list from the cache found.
pub struct Listed {
    /// The matching objects, in key order.
    pub items: Vec<Arc<Value>>,
    /// The revision the list is consistent at.
    pub revision: i64,
    /// The key the next page starts at, when `limit` cut the list short.
    pub next_key: Option<String>,
}

/// The caches of the resources listed so far, built on first use.
#[derive(Clone)]
pub struct ListCache {
    store: Store,
    resources: Arc<Mutex<HashMap<String, Slot>>>,
}

/// A resource's cache, built once by the first list that needs it.
type Slot = Arc<OnceCell<Arc<Resource>>>;

/// One resource's objects, and the way to ask its watch task to catch up.
struct Resource {
    objects: RwLock<Objects>,
    sync: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

/// The objects, and the highest revision whose events have all been applied to them (at
/// least the fill's): the state is exactly the store's at that revision.
struct Objects {
    map: BTreeMap<String, Cached>,
    applied: i64,
    /// The revision the fill read at: changes are published only after it.
    filled_at: i64,
    /// The last changes; every change after `recent_from` is among them.
    recent: VecDeque<Arc<Change>>,
    recent_from: i64,
    /// The watches' feed; None once the store watch ended.
    feed: Option<broadcast::Sender<Arc<Change>>>,
}

/// One object and the revision of its last write.
struct Cached {
    mod_revision: i64,
    object: Arc<Value>,
}

impl ListCache {
    /// An empty cache over `store`.
    pub fn new(store: Store) -> Self {
        ListCache {
            store,
            resources: Arc::default(),
        }
    }

    /// The objects of `def` whose keys start with `prefix` (a namespace's or all) and
    /// that `keep` accepts, at most `limit` (0 = all), consistent with every write
    /// acknowledged before the call — or, when the caller already read the store's
    /// linearizable revision (`known`), with every write up to that. None when the cache
    /// cannot answer (its watch ended); the caller reads the store instead.
    pub async fn list(
        &self,
        def: &Def,
        prefix: &str,
        limit: usize,
        known: Option<i64>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Option<Listed>, ApiError> {
        let Some((resource, revision)) = self.current(def, known).await? else {
            return Ok(None);
        };
        let objects = resource.objects.read().unwrap_or_else(|e| e.into_inner());
        // The task may have applied later events since it answered: the list is then
        // exactly at that later revision.
        let revision = revision.max(objects.applied);
        let (items, next_key) = objects.select(prefix, limit, keep);
        Ok(Some(Listed {
            items,
            revision,
            next_key,
        }))
    }

    /// A watch of `def` that starts with the objects under `prefix` that `keep`
    /// accepts, consistent as [`ListCache::list`], then follows their changes. None when
    /// the cache cannot serve it.
    pub async fn watch_current(
        &self,
        def: &Def,
        prefix: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Option<Subscription>, ApiError> {
        let Some((resource, revision)) = self.current(def, None).await? else {
            return Ok(None);
        };
        let objects = resource.objects.read().unwrap_or_else(|e| e.into_inner());
        let Some(feed) = &objects.feed else {
            return Ok(None);
        };
        let (initial, _) = objects.select(prefix, 0, keep);
        Ok(Some(Subscription {
            initial,
            revision: revision.max(objects.applied),
            recent: Vec::new(),
            live: feed.subscribe(),
            progress: Progress {
                store: self.store.clone(),
                resource: resource.clone(),
            },
        }))
    }

    /// A watch of `def`'s changes after `revision`. None when the cache cannot serve it
    /// (that revision is older than its kept changes or compacted, or its watch ended):
    /// the store then does.
    pub async fn watch_from(
        &self,
        def: &Def,
        revision: i64,
    ) -> Result<Option<Subscription>, ApiError> {
        let Some((id, cell, resource)) = self.resource(def).await else {
            return Ok(None);
        };
        let objects = resource.objects.read().unwrap_or_else(|e| e.into_inner());
        let Some(feed) = &objects.feed else {
            drop(objects);
            self.forget(&id, &cell);
            return Ok(None);
        };
        // A compacted revision is as gone for the cache as for the store (410 for the
        // client), whatever the cache still holds.
        if revision < objects.recent_from || revision < self.store.compacted_revision() {
            return Ok(None);
        }
        Ok(Some(Subscription {
            initial: Vec::new(),
            revision,
            recent: objects
                .recent
                .iter()
                .filter(|c| c.revision > revision)
                .cloned()
                .collect(),
            live: feed.subscribe(),
            progress: Progress {
                store: self.store.clone(),
                resource: resource.clone(),
            },
        }))
    }

    /// The cache of `def`, built (filled) on first use; None when it cannot be filled.
    async fn resource(&self, def: &Def) -> Option<(String, Slot, Arc<Resource>)> {
        let id = format!("{}|{}", def.storage_prefix(), def.api_version());
        let cell = self
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        match cell
            .get_or_try_init(|| Resource::start(self.store.clone(), def.clone()))
            .await
        {
            Ok(r) => {
                let r = r.clone();
                Some((id, cell, r))
            }
            Err(e) => {
                // E.g. compacted between the fill's pages: the store answers instead.
                tracing::debug!(resource = %def.plural, error = %e.message, "list cache not filled");
                None
            }
        }
    }

    /// The cache of `def` caught up with every write acknowledged before the call (or up
    /// to the `known` linearizable revision the caller read), and that revision; None
    /// when the cache cannot answer.
    async fn current(
        &self,
        def: &Def,
        known: Option<i64>,
    ) -> Result<Option<(Arc<Resource>, i64)>, ApiError> {
        let Some((id, cell, resource)) = self.resource(def).await else {
            return Ok(None);
        };
        let revision = match known {
            Some(r) => r,
            None => self.store.linearizable_revision().await?,
        };
        let (tx, rx) = oneshot::channel();
        let caught_up = resource.sync.send(tx).is_ok() && rx.await.is_ok();
        if !caught_up {
            self.forget(&id, &cell);
            return Ok(None);
        }
        Ok(Some((resource, revision)))
    }

    /// Forgets a cache whose watch ended, so that the next use builds a new one.
    fn forget(&self, id: &str, cell: &Slot) {
        let mut all = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(id).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            all.remove(id);
        }
    }
}

impl Objects {
    /// The objects under `prefix` that `keep` accepts, at most `limit` (0 = all), and the
    /// key of the next one when `limit` cut them short.
    fn select(
        &self,
        prefix: &str,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Arc<Value>>, Option<String>) {
        let end = String::from_utf8_lossy(&pikube_raft::prefix_end(prefix.as_bytes())).into_owned();
        let mut items = Vec::new();
        for (key, cached) in self.map.range(prefix.to_string()..end) {
            if !keep(&cached.object) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                return (items, Some(key.clone()));
            }
            items.push(cached.object.clone());
        }
        (items, None)
    }

    /// Applies one store event; publishes it to the watches when it is after the fill.
    fn apply(&mut self, def: &Def, e: pikube_raft::types::Event) {
        let revision = e.kv.mod_revision;
        self.applied = self.applied.max(revision);
        let key = String::from_utf8_lossy(&e.kv.key).into_owned();
        let prev = self
            .map
            .get(&key)
            .map(|c| (c.mod_revision, c.object.clone()));
        if prev.as_ref().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        let prev = prev.map(|(_, o)| o);
        let change = match e.kind {
            pikube_raft::EventKind::Put => {
                let object = insert(def, &mut self.map, key.clone(), &e.kv.value, revision);
                object.map(|object| (false, object))
            }
            pikube_raft::EventKind::Delete => {
                self.map.remove(&key);
                prev.as_ref().map(|last| {
                    let mut gone = Value::clone(last);
                    super::objects::meta(&mut gone)
                        .insert("resourceVersion".into(), revision.to_string().into());
                    (true, Arc::new(gone))
                })
            }
        };
        let Some((deleted, object)) = change.filter(|_| revision > self.filled_at) else {
            return;
        };
        let change = Arc::new(Change {
            revision,
            key,
            deleted,
            object,
            prev,
            json: OnceLock::new(),
        });
        if let Some(feed) = &self.feed {
            let _ = feed.send(change.clone());
        }
        self.recent.push_back(change);
        if self.recent.len() > RECENT {
            if let Some(old) = self.recent.pop_front() {
                self.recent_from = old.revision;
            }
        }
    }
}

impl Resource {
    /// Registers the watch, fills the objects from the store and starts the task that
    /// applies the watch's events.
    async fn start(store: Store, def: Def) -> Result<Arc<Resource>, ApiError> {
        let prefix = def.storage_prefix();
        let end = pikube_raft::prefix_end(prefix.as_bytes());
        // Registered first: it has every event after the revision it starts from, and
        // the fill below reads at that revision or later; events already reflected in
        // the fill are recognised by their revisions and skipped.
        let watcher = store
            .watch(WatchRequest {
                key: prefix.clone().into_bytes(),
                range_end: Some(end.clone()),
                start_revision: 0,
            })
            .await?;
        let mut objects = BTreeMap::new();
        let mut start = prefix.into_bytes();
        let mut revision = 0;
        loop {
            let resp = store
                .range(RangeRequest {
                    key: start,
                    range_end: Some(end.clone()),
                    limit: FILL_PAGE,
                    revision,
                    ..Default::default()
                })
                .await?;
            revision = resp.revision;
            let last = resp.kvs.last().map(|kv| kv.key.clone());
            for kv in resp.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                insert(&def, &mut objects, key, &kv.value, kv.mod_revision);
            }
            match last.filter(|_| resp.more) {
                Some(mut k) => {
                    k.push(0);
                    start = k;
                }
                None => break,
            }
        }
        let (sync, requests) = mpsc::unbounded_channel();
        let resource = Arc::new(Resource {
            objects: RwLock::new(Objects {
                map: objects,
                applied: revision,
                filled_at: revision,
                recent: VecDeque::new(),
                recent_from: revision,
                feed: Some(broadcast::channel(WATCH_BUFFER).0),
            }),
            sync,
        });
        tokio::spawn(follow(def, Arc::downgrade(&resource), watcher, requests));
        Ok(resource)
    }
}

/// Applies the watch's events as they come, and catches up at once when a list asks;
/// ends when the watch does or the cache is gone.
async fn follow(
    def: Def,
    resource: std::sync::Weak<Resource>,
    mut watcher: pikube_raft::watch::Watcher,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    loop {
        let (first, reply) = tokio::select! {
            ev = watcher.next() => (Some(ev), None),
            req = requests.recv() => match req {
                Some(reply) => (None, Some(reply)),
                None => return,
            },
        };
        let mut events = Vec::new();
        let mut ended = false;
        let mut take = |ev: Option<pikube_raft::Result<pikube_raft::types::Event>>| match ev {
            Some(Ok(e)) => {
                events.push(e);
                true
            }
            Some(Err(e)) => {
                tracing::debug!(resource = %def.plural, error = %e, "list cache watch ended");
                ended = true;
                false
            }
            None => {
                ended = true;
                false
            }
        };
        let mut more = first.map(&mut take).unwrap_or(true);
        // Everything the watch already holds: for a list, every event up to the revision
        // it read. Outside tokio's cooperative budget, which would otherwise make a full
        // channel look empty after a burst.
        while more {
            match tokio::task::unconstrained(watcher.next()).now_or_never() {
                Some(ev) => more = take(ev),
                None => break,
            }
        }
        let Some(res) = resource.upgrade() else {
            return;
        };
        {
            let mut state = res.objects.write().unwrap_or_else(|e| e.into_inner());
            for e in events {
                state.apply(&def, e);
            }
            if ended {
                // Watches end with it; their clients watch again.
                state.feed = None;
            }
        }
        if ended {
            // Dropping `requests` (and `reply`) tells waiting and later lists the cache
            // cannot answer.
            return;
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}

/// Stores one object version unless the cache already has this or a later one; returns
/// the stored object.
fn insert(
    def: &Def,
    objects: &mut BTreeMap<String, Cached>,
    key: String,
    value: &[u8],
    mod_revision: i64,
) -> Option<Arc<Value>> {
    if objects
        .get(&key)
        .is_some_and(|c| c.mod_revision >= mod_revision)
    {
        return None;
    }
    match read_stored(def, value, mod_revision) {
        Ok(object) => {
            let object = Arc::new(object);
            objects.insert(
                key,
                Cached {
                    mod_revision,
                    object: object.clone(),
                },
            );
            Some(object)
        }
        // The cache leaves the key out (not an older version of it).
        Err(e) => {
            tracing::warn!(%key, error = %e.message, "undecodable object left out of the list cache");
            objects.remove(&key);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, DeleteParams, ListParams, PostParams};
    use kube::ResourceExt;
    use serde_json::json;

    fn cm(name: &str, data: &str) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"n": data}},
            "data": {"k": data}}))
        .expect("configmap")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_see_every_acknowledged_write_and_page_on_from_the_store() {
        let test = crate::controllers::client::TestApi::start().await;
        let client = test.client("admin");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let names = |l: &kube::core::ObjectList<ConfigMap>| {
            l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
        };
        // The first list builds the cache; every later write must show in the next list.
        assert!(names(&cms.list(&ListParams::default()).await.expect("list")).is_empty());
        let pp = PostParams::default();
        for i in 0..30 {
            cms.create(&pp, &cm(&format!("c{i:02}"), &i.to_string()))
                .await
                .expect("create");
            let listed = cms.list(&ListParams::default()).await.expect("list");
            assert_eq!(listed.items.len(), i + 1, "list after create {i}");
        }
        let mut changed = cms.get("c05").await.expect("get");
        changed.data = Some([("k".to_string(), "new".to_string())].into());
        let changed = cms.replace("c05", &pp, &changed).await.expect("replace");
        let listed = cms.list(&ListParams::default()).await.expect("list");
        let c05 = listed.items.iter().find(|c| c.name_any() == "c05");
        assert_eq!(
            c05.and_then(|c| c.resource_version()),
            changed.resource_version()
        );
        assert_eq!(
            listed
                .metadata
                .resource_version
                .as_deref()
                .map(str::parse::<i64>),
            Some(Ok(changed
                .resource_version()
                .and_then(|r| r.parse::<i64>().ok())
                .expect("rv")))
        );
        cms.delete("c07", &DeleteParams::default())
            .await
            .expect("delete");
        let listed = cms.list(&ListParams::default()).await.expect("list");
        assert_eq!(listed.items.len(), 29);
        assert!(!names(&listed).contains(&"c07".to_string()));
        // Selectors apply to cached objects.
        let one = cms
            .list(&ListParams::default().labels("n=12"))
            .await
            .expect("list by label");
        assert_eq!(names(&one), vec!["c12".to_string()]);
        // Pages: the first from the cache, the rest from the store at its revision, even
        // when an object changes in between.
        let first = cms
            .list(&ListParams::default().limit(10))
            .await
            .expect("page 1");
        assert_eq!(first.items.len(), 10);
        let token = first.metadata.continue_.clone().expect("continue token");
        cms.delete("c29", &DeleteParams::default())
            .await
            .expect("delete");
        let mut all = names(&first);
        let mut token = Some(token);
        while let Some(t) = token.take() {
            let page = cms
                .list(&ListParams::default().limit(10).continue_token(&t))
                .await
                .expect("next page");
            assert_eq!(
                page.metadata.resource_version,
                first.metadata.resource_version
            );
            all.extend(names(&page));
            token = page.metadata.continue_.filter(|t| !t.is_empty());
        }
        assert_eq!(all.len(), 29, "{all:?}");
        assert!(
            all.contains(&"c29".to_string()),
            "the pages read at the first page's revision"
        );
        // Another namespace's list sees none of these.
        let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
        assert!(
            !names(&other.list(&ListParams::default()).await.expect("list"))
                .iter()
                .any(|n| n.starts_with('c'))
        );
        test.shutdown().await;
    }

    /// The events of `stream` until `n` arrived, as (type, name, resourceVersion).
    async fn take_events(
        stream: impl futures::Stream<Item = kube::Result<kube::api::WatchEvent<ConfigMap>>>,
        n: usize,
    ) -> Vec<(&'static str, String, String)> {
        use futures::StreamExt;
        use kube::api::WatchEvent;
        let mut stream = Box::pin(stream);
        let mut out = Vec::new();
        while out.len() < n {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
                .await
                .expect("an event in time")
                .expect("the watch goes on")
                .expect("an event");
            let (kind, cm) = match ev {
                WatchEvent::Added(c) => ("ADDED", c),
                WatchEvent::Modified(c) => ("MODIFIED", c),
                WatchEvent::Deleted(c) => ("DELETED", c),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            };
            out.push((
                kind,
                cm.name_any(),
                cm.resource_version().unwrap_or_default(),
            ));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watches_follow_the_cache_from_a_recent_revision_with_selectors() {
        use kube::api::{Patch, PatchParams, WatchParams};
        let test = crate::controllers::client::TestApi::start().await;
        let client = test.client("admin");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let list_rv = || async {
            cms.list(&ListParams::default())
                .await
                .expect("list")
                .metadata
                .resource_version
                .expect("rv")
        };
        let start = list_rv().await;
        let all = cms
            .watch(&WatchParams::default(), &start)
            .await
            .expect("watch");
        let kept = cms
            .watch(&WatchParams::default().labels("n=keep"), &start)
            .await
            .expect("watch by label");
        let pp = PostParams::default();
        let c1 = cms.create(&pp, &cm("c1", "keep")).await.expect("create");
        let relabelled = cms
            .patch(
                "c1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"n": "drop"}}})),
            )
            .await
            .expect("patch");
        cms.delete("c1", &DeleteParams::default())
            .await
            .expect("delete");
        let gone = list_rv().await;
        let rv = |c: &ConfigMap| c.resource_version().unwrap_or_default();
        let expected = vec![
            ("ADDED", "c1".to_string(), rv(&c1)),
            ("MODIFIED", "c1".to_string(), rv(&relabelled)),
            ("DELETED", "c1".to_string(), gone.clone()),
        ];
        assert_eq!(take_events(all, 3).await, expected);
        // With a selector: leaving it is a DELETED, the real delete is not seen.
        assert_eq!(
            take_events(kept, 2).await,
            vec![
                ("ADDED", "c1".to_string(), rv(&c1)),
                ("DELETED", "c1".to_string(), rv(&relabelled)),
            ]
        );
        // A watch that starts after the fact gets the kept changes.
        let late = cms
            .watch(&WatchParams::default(), &start)
            .await
            .expect("late watch");
        assert_eq!(take_events(late, 3).await, expected);

        // Past the kept window the cache declines and the store serves the watch.
        let def = crate::api::resources::lookup("", "v1", "configmaps").expect("def");
        let cache = &test.api.registry().cache;
        let from: i64 = start.parse().expect("rv");
        assert!(cache.watch_from(&def, from).await.expect("watch").is_some());
        for i in 0..=super::RECENT {
            cms.create(&pp, &cm(&format!("w{i:04}"), "x"))
                .await
                .expect("create");
        }
        cms.list(&ListParams::default().limit(1))
            .await
            .expect("list");
        assert!(cache.watch_from(&def, from).await.expect("watch").is_none());
        let old = cms
            .watch(&WatchParams::default(), &start)
            .await
            .expect("watch from the store");
        assert_eq!(take_events(old, 3).await, expected);
        test.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bookmarks_never_pass_a_change_the_watch_has_not_received() {
        let test = crate::controllers::client::TestApi::start().await;
        let cms: Api<ConfigMap> = Api::namespaced(test.client("admin"), "default");
        let def = crate::api::resources::lookup("", "v1", "configmaps").expect("def");
        let cache = &test.api.registry().cache;
        let mut sub = cache
            .watch_current(&def, "", |_| true)
            .await
            .expect("watch")
            .expect("served by the cache");
        let settled = sub.progress.settled(&sub.live).await.expect("settled");
        assert!(settled >= sub.revision);
        let made = cms
            .create(&PostParams::default(), &cm("b1", "x"))
            .await
            .expect("create");
        let made: i64 = made
            .resource_version()
            .and_then(|r| r.parse().ok())
            .expect("rv");
        // The change is queued for the watch: no bookmark may claim its revision yet.
        assert_eq!(sub.progress.settled(&sub.live).await, None);
        let change = sub.live.recv().await.expect("the change");
        assert_eq!(change.revision, made);
        let settled = sub.progress.settled(&sub.live).await.expect("settled");
        assert!(settled >= made, "{settled} < {made}");
        test.shutdown().await;
    }
}
