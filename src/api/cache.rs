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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures::{FutureExt, StreamExt};
use pikube_raft::{RangeRequest, Store, WatchRequest};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::objects::read_stored;
use super::resources::Def;
use super::status::ApiError;

/// Objects read per store request while a cache is filled.
const FILL_PAGE: usize = 500;

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
    /// acknowledged before the call. None when the cache cannot answer (its watch
    /// ended); the caller reads the store instead.
    pub async fn list(
        &self,
        def: &Def,
        prefix: &str,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Option<Listed>, ApiError> {
        let id = format!("{}|{}", def.storage_prefix(), def.api_version());
        let cell = self
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        let resource = match cell
            .get_or_try_init(|| Resource::start(self.store.clone(), def.clone()))
            .await
        {
            Ok(r) => r.clone(),
            Err(e) => {
                // E.g. compacted between the fill's pages: the store answers this list.
                tracing::debug!(resource = %def.plural, error = %e.message, "list cache not filled");
                return Ok(None);
            }
        };
        let revision = self.store.linearizable_revision().await?;
        let (tx, rx) = oneshot::channel();
        let caught_up = resource.sync.send(tx).is_ok() && rx.await.is_ok();
        if !caught_up {
            // The watch ended: forget this cache so the next list builds a new one.
            let mut all = self.resources.lock().unwrap_or_else(|e| e.into_inner());
            if all.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                all.remove(&id);
            }
            return Ok(None);
        }
        let objects = resource.objects.read().unwrap_or_else(|e| e.into_inner());
        // The task may have applied later events since it answered: the list is then
        // exactly at that later revision.
        let revision = revision.max(objects.applied);
        let end = String::from_utf8_lossy(&pikube_raft::prefix_end(prefix.as_bytes())).into_owned();
        let mut items = Vec::new();
        let mut next_key = None;
        for (key, cached) in objects.map.range(prefix.to_string()..end) {
            if !keep(&cached.object) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                next_key = Some(key.clone());
                break;
            }
            items.push(cached.object.clone());
        }
        Ok(Some(Listed {
            items,
            revision,
            next_key,
        }))
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
                insert(&def, &mut objects, &kv.key, &kv.value, kv.mod_revision);
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
        if !events.is_empty() {
            let mut guard = res.objects.write().unwrap_or_else(|e| e.into_inner());
            let state = &mut *guard;
            let objects = &mut state.map;
            for e in events {
                state.applied = state.applied.max(e.kv.mod_revision);
                let key = e.kv.key;
                match e.kind {
                    pikube_raft::EventKind::Put => {
                        insert(&def, objects, &key, &e.kv.value, e.kv.mod_revision);
                    }
                    pikube_raft::EventKind::Delete => {
                        let key = String::from_utf8_lossy(&key).into_owned();
                        if objects
                            .get(&key)
                            .is_some_and(|c| c.mod_revision < e.kv.mod_revision)
                        {
                            objects.remove(&key);
                        }
                    }
                }
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

/// Stores one object version unless the cache already has this or a later one.
fn insert(
    def: &Def,
    objects: &mut BTreeMap<String, Cached>,
    key: &[u8],
    value: &[u8],
    mod_revision: i64,
) {
    let key = String::from_utf8_lossy(key).into_owned();
    if objects
        .get(&key)
        .is_some_and(|c| c.mod_revision >= mod_revision)
    {
        return;
    }
    match read_stored(def, value, mod_revision) {
        Ok(object) => {
            objects.insert(
                key,
                Cached {
                    mod_revision,
                    object: Arc::new(object),
                },
            );
        }
        // The cache leaves the key out (not an older version of it).
        Err(e) => {
            tracing::warn!(%key, error = %e.message, "undecodable object left out of the list cache");
            objects.remove(&key);
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
}
