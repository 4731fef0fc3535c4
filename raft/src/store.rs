//! The store handle: opens (and checks) the data directory, runs the single writer that
//! logs, fsyncs and applies writes in groups, serves reads, watches and leases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::error::{Error, Result};
use crate::mvcc::{self, Revisions, WriteRequest, WriteResponse};
use crate::types::*;
use crate::watch::{EventSource, Hub, KeyRange, Watcher};

/// Name of the file that marks a directory as a pikube store and records whose it is.
pub const IDENTITY_FILE: &str = "pikube-store.json";

/// Format version of the on-disk layout.
const FORMAT: u32 = 1;

/// Largest number of writes logged and fsynced together.
const MAX_GROUP: usize = 256;

/// Proposals waiting for the writer before callers are made to wait.
const PROPOSAL_QUEUE: usize = 4096;

/// How to open a store.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id in the cluster.
    pub node_id: u64,
    /// Directory holding the sled database and the identity file.
    pub data_dir: PathBuf,
    /// sled page cache size; small, because a Raspberry Pi has little memory.
    pub cache_capacity_bytes: u64,
    /// Expected cluster id; `None` accepts the directory's (or creates a new one).
    pub cluster_id: Option<String>,
}

impl Config {
    /// A single-node store in `data_dir` with a 16 MiB cache.
    pub fn single_node(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            node_id: 1,
            data_dir: data_dir.into(),
            cache_capacity_bytes: 16 << 20,
            cluster_id: None,
        }
    }
}

/// What the identity file records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    format: u32,
    cluster_id: String,
    node_id: u64,
}

struct Proposal {
    request: WriteRequest,
    reply: oneshot::Sender<Result<WriteResponse>>,
}

enum Msg {
    Propose(Proposal),
    Stop,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    revs: RwLock<Revisions>,
    current: AtomicI64,
    compacted: AtomicI64,
    hub: Mutex<Hub>,
    leases: Mutex<HashMap<LeaseId, (Instant, i64)>>,
    proposals: mpsc::Sender<Msg>,
    closed: AtomicBool,
    cluster_id: String,
}

impl EventSource for Shared {
    fn tree(&self) -> &sled::Tree {
        &self.tree
    }
    fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::SeqCst)
    }
}

/// A handle on the store; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

fn storage(e: sled::Error) -> Error {
    match e {
        sled::Error::Corruption { .. } => Error::Corrupt(e.to_string()),
        other => Error::Storage(other.to_string()),
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

/// Checks (or creates) the identity of the data directory before sled touches it.
fn check_identity(config: &Config) -> Result<Identity> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let id_path = dir.join(IDENTITY_FILE);
    match std::fs::read(&id_path) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{} is unreadable: {e}", id_path.display())))?;
            if id.format != FORMAT {
                return Err(Error::Corrupt(format!(
                    "{} has format {}, expected {FORMAT}",
                    id_path.display(),
                    id.format
                )));
            }
            if let Some(want) = &config.cluster_id {
                if *want != id.cluster_id {
                    return Err(Error::ForeignCluster(format!(
                        "{} belongs to cluster {}, not {want}",
                        dir.display(),
                        id.cluster_id
                    )));
                }
            }
            if id.node_id != config.node_id {
                return Err(Error::ForeignCluster(format!(
                    "{} belongs to node {}, not {}",
                    dir.display(),
                    id.node_id,
                    config.node_id
                )));
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))?;
            if entries.next().is_some() {
                return Err(Error::Corrupt(format!(
                    "{} is not empty but has no {IDENTITY_FILE}: refusing to use it as a store",
                    dir.display()
                )));
            }
            let cluster_id = config
                .cluster_id
                .clone()
                .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
            let id = Identity {
                format: FORMAT,
                cluster_id,
                node_id: config.node_id,
            };
            let bytes = serde_json::to_vec(&id).map_err(|e| Error::Storage(e.to_string()))?;
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            std::fs::write(&tmp, bytes).map_err(|e| io("cannot write", &tmp, e))?;
            std::fs::rename(&tmp, &id_path).map_err(|e| io("cannot write", &id_path, e))?;
            Ok(id)
        }
        Err(e) => Err(io("cannot read", &id_path, e)),
    }
}

fn read_meta_i64(tree: &sled::Tree, name: &str) -> Result<Option<i64>> {
    match tree.get(codec::meta_key(name)).map_err(storage)? {
        Some(v) => Ok(Some(codec::decode_i64(&v)?)),
        None => Ok(None),
    }
}

fn open_blocking(config: &Config) -> Result<(sled::Db, sled::Tree, Identity, Revisions, u64)> {
    let id = check_identity(config)?;
    let db_path = config.data_dir.join("db");
    let fresh = !db_path.exists();
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(config.cache_capacity_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|e| Error::Corrupt(format!("cannot open {}: {e}", db_path.display())))?;
    let tree = db.open_tree("store").map_err(storage)?;
    match tree.get(codec::meta_key("cluster")).map_err(storage)? {
        Some(c) if c.as_ref() == id.cluster_id.as_bytes() => {}
        Some(c) => {
            return Err(Error::ForeignCluster(format!(
                "database in {} belongs to cluster {}, identity file says {}",
                db_path.display(),
                String::from_utf8_lossy(&c),
                id.cluster_id
            )))
        }
        None if fresh => {
            tree.insert(codec::meta_key("cluster"), id.cluster_id.as_bytes())
                .map_err(storage)?;
            db.flush().map_err(storage)?;
        }
        None => {
            return Err(Error::Corrupt(format!(
                "database in {} has lost its metadata: refusing to start from an empty store",
                db_path.display()
            )))
        }
    }
    let revs = Revisions {
        current: read_meta_i64(&tree, "revision")?.unwrap_or(0),
        compacted: read_meta_i64(&tree, "compacted")?.unwrap_or(0),
    };
    let applied = read_meta_i64(&tree, "applied")?.unwrap_or(0) as u64;
    Ok((db, tree, id, revs, applied))
}

impl Store {
    /// Opens the store in `config.data_dir`, creating it if the directory is empty.
    /// A damaged directory, or one of another cluster or node, is refused.
    pub async fn open(config: Config) -> Result<Store> {
        let cfg = config.clone();
        let (db, tree, id, mut revs, mut applied) =
            tokio::task::spawn_blocking(move || open_blocking(&cfg))
                .await
                .map_err(|e| Error::Storage(format!("open task: {e}")))??;

        // Apply logged writes that a crash left unapplied.
        let mut pending = Vec::new();
        for item in tree.scan_prefix([codec::WAL]) {
            let (k, v) = item.map_err(storage)?;
            let idx = u64::from_be_bytes(
                k[1..]
                    .try_into()
                    .map_err(|_| Error::Corrupt("bad log key".into()))?,
            );
            pending.push((idx, codec::decode::<WriteRequest>(&v)?));
        }
        for (idx, req) in pending {
            if idx <= applied {
                tree.remove(codec::wal_key(idx)).map_err(storage)?;
                continue;
            }
            let (_, mut batch) = mvcc::apply(&tree, &mut revs, &req, sled::Batch::default())?;
            batch.remove(codec::wal_key(idx));
            batch.insert(codec::meta_key("applied"), &(idx as i64).to_be_bytes()[..]);
            tree.apply_batch(batch).map_err(storage)?;
            applied = idx;
        }
        db.flush().map_err(storage)?;

        let mut leases = HashMap::new();
        let now = Instant::now();
        for item in tree.scan_prefix([codec::LEASES]) {
            let (k, v) = item.map_err(storage)?;
            let lid = codec::decode_i64(&k[1..])?;
            let ttl = codec::decode_i64(&v)?;
            leases.insert(lid, (now + Duration::from_secs(ttl.max(1) as u64), ttl));
        }

        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        let shared = Arc::new(Shared {
            db,
            tree,
            current: AtomicI64::new(revs.current),
            compacted: AtomicI64::new(revs.compacted),
            revs: RwLock::new(revs),
            hub: Mutex::new(Hub::default()),
            leases: Mutex::new(leases),
            proposals: tx,
            closed: AtomicBool::new(false),
            cluster_id: id.cluster_id,
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("pikube-store-writer".into())
            .spawn(move || writer_loop(writer_shared, rx, applied + 1))
            .map_err(|e| Error::Storage(format!("cannot start writer thread: {e}")))?;
        let store = Store {
            shared,
            tasks: Arc::new(Mutex::new(Vec::new())),
            writer: Arc::new(Mutex::new(Some(writer))),
        };
        let expiry = tokio::spawn(lease_expiry_loop(store.clone_weak()));
        if let Ok(mut t) = store.tasks.lock() {
            t.push(expiry);
        }
        Ok(store)
    }

    fn clone_weak(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.shared)
    }

    /// The id of the cluster this store belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }

    async fn propose(&self, request: WriteRequest) -> Result<WriteResponse> {
        propose(&self.shared, request).await
    }

    /// Reads a key or range, at the current revision or a past one.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let revs = shared
                .revs
                .read()
                .map_err(|_| Error::Unavailable("store lock poisoned".into()))?;
            if req.revision == 0 || req.revision == revs.current {
                return mvcc::range_latest(&shared.tree, &req, revs.current);
            }
            if req.revision > revs.current {
                return Err(Error::FutureRevision {
                    requested: req.revision,
                    current: revs.current,
                });
            }
            if req.revision < revs.compacted {
                return Err(Error::Compacted {
                    requested: req.revision,
                    compacted: revs.compacted,
                });
            }
            mvcc::range_at(&shared.tree, &req, req.revision, revs.current)
        })
        .await
        .map_err(|e| Error::Storage(format!("read task: {e}")))?
    }

    /// Reads one key at the current revision.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self
            .range(RangeRequest::key(key))
            .await?
            .kvs
            .into_iter()
            .next())
    }

    /// Writes one key.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<PutResponse> {
        let txn = TxnRequest {
            success: vec![Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
            }],
            ..Default::default()
        };
        let r = self.txn(txn).await?;
        let prev = match r.responses.into_iter().next() {
            Some(OpResponse::Put { prev }) => prev,
            _ => None,
        };
        Ok(PutResponse {
            revision: r.revision,
            prev,
        })
    }

    /// Deletes one key.
    pub async fn delete(&self, key: &[u8]) -> Result<DeleteResponse> {
        let txn = TxnRequest {
            success: vec![Op::Delete { key: key.to_vec() }],
            ..Default::default()
        };
        let r = self.txn(txn).await?;
        let deleted = match r.responses.into_iter().next() {
            Some(OpResponse::Delete { deleted }) => deleted,
            _ => Vec::new(),
        };
        Ok(DeleteResponse {
            revision: r.revision,
            deleted,
        })
    }

    /// Runs a compare-then-act transaction atomically at one revision.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        mvcc::validate_txn(&req)?;
        match self.propose(WriteRequest::Txn(req)).await? {
            WriteResponse::Txn(r) => Ok(r),
            other => Err(Error::Storage(format!(
                "unexpected answer to a transaction: {other:?}"
            ))),
        }
    }

    /// Watches a key or range from `start_revision` (0 = only future changes).
    pub async fn watch(&self, req: WatchRequest) -> Result<Watcher> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        let range = KeyRange::new(req.key, req.range_end);
        let revs = self
            .shared
            .revs
            .read()
            .map_err(|_| Error::Unavailable("store lock poisoned".into()))?;
        let start = if req.start_revision == 0 {
            revs.current + 1
        } else {
            req.start_revision
        };
        if start <= revs.compacted {
            return Err(Error::Compacted {
                requested: start,
                compacted: revs.compacted,
            });
        }
        let mut hub = self
            .shared
            .hub
            .lock()
            .map_err(|_| Error::Unavailable("store lock poisoned".into()))?;
        let (rx, lagged) = hub.register(range.clone());
        let live_from = revs.current + 1;
        drop(hub);
        drop(revs);
        Ok(Watcher::new(
            range,
            self.shared.clone(),
            start,
            live_from,
            rx,
            lagged,
        ))
    }

    /// The highest revision applied on this node.
    pub fn current_revision(&self) -> Revision {
        self.shared.current.load(Ordering::SeqCst)
    }

    /// The compaction point: reads and watches before it fail with `Compacted`.
    pub fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(Ordering::SeqCst)
    }

    /// Drops the history before `revision`.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        self.propose(WriteRequest::Compact { revision })
            .await
            .map(|_| ())
    }

    /// Grants a lease that expires `ttl_seconds` after its last keep-alive.
    pub async fn lease_grant(&self, ttl_seconds: i64) -> Result<Lease> {
        if ttl_seconds <= 0 {
            return Err(Error::InvalidArgument(format!(
                "lease TTL must be positive, got {ttl_seconds}"
            )));
        }
        let id = (rand::random::<u64>() >> 1) as i64 | 1;
        match self
            .propose(WriteRequest::LeaseGrant { id, ttl_seconds })
            .await?
        {
            WriteResponse::Lease(l) => {
                let deadline = Instant::now() + Duration::from_secs(ttl_seconds as u64);
                if let Ok(mut leases) = self.shared.leases.lock() {
                    leases.insert(id, (deadline, ttl_seconds));
                }
                Ok(l)
            }
            other => Err(Error::Storage(format!(
                "unexpected answer to a lease grant: {other:?}"
            ))),
        }
    }

    /// Renews a lease for its full TTL.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease> {
        let mut leases = self
            .shared
            .leases
            .lock()
            .map_err(|_| Error::Unavailable("store lock poisoned".into()))?;
        match leases.get_mut(&id) {
            Some((deadline, ttl)) => {
                *deadline = Instant::now() + Duration::from_secs(*ttl as u64);
                Ok(Lease {
                    id,
                    ttl_seconds: *ttl,
                })
            }
            None => Err(Error::LeaseNotFound(id)),
        }
    }

    /// Revokes a lease now, deleting its keys.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.propose(WriteRequest::LeaseRevoke { id }).await?;
        if let Ok(mut leases) = self.shared.leases.lock() {
            leases.remove(&id);
        }
        Ok(())
    }

    /// Stops the writer after the writes already queued, flushes, and ends all watches.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        // Writes queued before this point are still applied and answered.
        let _ = self.shared.proposals.send(Msg::Stop).await;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(h) = handle {
                let _ = h.join();
            }
            if let Ok(mut hub) = shared.hub.lock() {
                hub.close_all();
            }
            shared.db.flush().map_err(storage)
        })
        .await
        .map_err(|e| Error::Storage(format!("shutdown task: {e}")))??;
        Ok(())
    }

    /// Size of the database files on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.shared.db.size_on_disk().map_err(storage)
    }
}

async fn propose(shared: &Shared, request: WriteRequest) -> Result<WriteResponse> {
    if shared.closed.load(Ordering::SeqCst) {
        return Err(Error::Shutdown);
    }
    let (reply, rx) = oneshot::channel();
    shared
        .proposals
        .send(Msg::Propose(Proposal { request, reply }))
        .await
        .map_err(|_| Error::Shutdown)?;
    rx.await.map_err(|_| Error::Shutdown)?
}

/// The single writer: logs a group of proposals, fsyncs once, applies them one by one
/// (each apply also records the applied log index), publishes events, answers.
fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>, mut next_index: u64) {
    loop {
        let first = match rx.blocking_recv() {
            Some(Msg::Propose(p)) => p,
            Some(Msg::Stop) | None => return,
        };
        let mut group = vec![first];
        let mut stop = false;
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Propose(p)) => group.push(p),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // 1. Make the group durable in the log: one fsync for all of it.
        let mut log = sled::Batch::default();
        let mut encoded_ok = Vec::with_capacity(group.len());
        for (i, p) in group.iter().enumerate() {
            match codec::encode(&p.request) {
                Ok(b) => {
                    log.insert(codec::wal_key(next_index + i as u64), b);
                    encoded_ok.push(true);
                }
                Err(_) => encoded_ok.push(false),
            }
        }
        let logged = shared
            .tree
            .apply_batch(log)
            .and_then(|_| shared.db.flush().map(|_| ()));
        if let Err(e) = logged {
            let err = storage(e);
            for p in group {
                let _ = p.reply.send(Err(err.clone()));
            }
            continue;
        }
        // 2. Apply in order; each apply is one atomic batch with its bookkeeping.
        for (i, p) in group.into_iter().enumerate() {
            let idx = next_index + i as u64;
            if !encoded_ok[i] {
                let _ = p
                    .reply
                    .send(Err(Error::Storage("request could not be encoded".into())));
                continue;
            }
            let result = apply_one(&shared, &p.request, idx);
            let _ = p.reply.send(result);
        }
        next_index += encoded_ok.len() as u64;
        if stop {
            return;
        }
    }
}

fn apply_one(shared: &Shared, request: &WriteRequest, idx: u64) -> Result<WriteResponse> {
    let mut revs = shared
        .revs
        .write()
        .map_err(|_| Error::Unavailable("store lock poisoned".into()))?;
    let mut next = *revs;
    let (applied, mut batch) =
        mvcc::apply(&shared.tree, &mut next, request, sled::Batch::default())?;
    batch.remove(codec::wal_key(idx));
    batch.insert(codec::meta_key("applied"), &(idx as i64).to_be_bytes()[..]);
    shared.tree.apply_batch(batch).map_err(storage)?;
    *revs = next;
    shared.current.store(next.current, Ordering::SeqCst);
    shared.compacted.store(next.compacted, Ordering::SeqCst);
    if let WriteRequest::LeaseRevoke { id } = request {
        if let Ok(mut leases) = shared.leases.lock() {
            leases.remove(id);
        }
    }
    if let Ok(mut hub) = shared.hub.lock() {
        hub.publish(&applied.events);
    }
    drop(revs);
    applied.response
}

async fn lease_expiry_loop(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let expired: Vec<LeaseId> = match shared.leases.lock() {
            Ok(leases) => leases
                .iter()
                .filter(|(_, (d, _))| *d <= now)
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => return,
        };
        for id in expired {
            match propose(&shared, WriteRequest::LeaseRevoke { id }).await {
                Ok(_) | Err(Error::LeaseNotFound(_)) => {
                    if let Ok(mut leases) = shared.leases.lock() {
                        leases.remove(&id);
                    }
                }
                Err(e) => tracing::warn!(lease = id, error = %e, "lease expiry failed"),
            }
        }
    }
}
