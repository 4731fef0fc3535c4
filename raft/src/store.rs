//! The store handle: opens the data directory, runs the Raft node over it, and serves
//! reads (linearizable through read-index, or serializable from local state), writes
//! (forwarded to the leader when this node is not it), watches and leases.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ForwardToLeader, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy, TryAsRef};

use crate::consensus::{NodeId, Raft};
use crate::defrag::Database;
use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::mvcc::{self, Revisions, WriteRequest, WriteResponse};
use crate::network::{
    Network, NoPeers, Peer, PeerRequest, PeerResponse, Transport, TransportError,
};
use crate::open::open_blocking;
use crate::state_machine::{poisoned, Shared, StateMachine};
use crate::types::*;
use crate::watch::{Hub, KeyRange, Watcher};
use crate::{snapshot, state_machine};

/// Raft timing, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_max_ms: u64,
}

impl Default for Timing {
    /// Tolerant of Wi-Fi and busy Raspberry Pis: a leader is replaced within 1-2 s.
    fn default() -> Self {
        Timing {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
        }
    }
}

/// How to open a store.
#[derive(Clone)]
pub struct Config {
    /// This node's id in the cluster.
    pub node_id: NodeId,
    /// Directory holding the sled database, snapshots and the identity file.
    pub data_dir: PathBuf,
    /// sled page cache size; small, because a Raspberry Pi has little memory.
    pub cache_capacity_bytes: u64,
    /// Expected cluster id; `None` accepts the directory's (or creates a new one).
    pub cluster_id: Option<String>,
    /// Address (host:port) at which peers reach this node.
    pub advertise_addr: String,
    /// Start a new one-member cluster when this store is not part of one yet; otherwise
    /// the node waits until a leader adds it.
    pub bootstrap: bool,
    /// How messages reach the other nodes.
    pub transport: Arc<dyn Transport>,
    /// Raft timing.
    pub timing: Timing,
    /// Log entries between snapshots (older entries are then dropped from the log); 100,000
    /// by default, as etcd's snapshot count.
    pub snapshot_every: u64,
    /// How long a request waits for a leader, a quorum or a forwarded answer.
    pub request_timeout: Duration,
    /// After a compaction, defragment when the database takes at least this many times
    /// the bytes of its records on disk (and [`Config::defrag_min_bytes`] more); 0 = only
    /// when [`Store::defragment`] is called.
    pub defrag_ratio: u64,
    /// The least disk space an automatic defragmentation must stand to give back.
    pub defrag_min_bytes: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .field("cluster_id", &self.cluster_id)
            .field("advertise_addr", &self.advertise_addr)
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl Config {
    /// A single-node store in `data_dir` with a 16 MiB cache: the default, with no peer
    /// transport and no network cost.
    pub fn single_node(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            node_id: 1,
            data_dir: data_dir.into(),
            cache_capacity_bytes: 16 << 20,
            cluster_id: None,
            advertise_addr: "127.0.0.1:6444".into(),
            bootstrap: true,
            transport: Arc::new(NoPeers),
            timing: Timing::default(),
            snapshot_every: 100_000,
            request_timeout: Duration::from_secs(10),
            defrag_ratio: 4,
            defrag_min_bytes: 32 << 20,
        }
    }
}

/// A member of the store's cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Peer address.
    pub addr: String,
    /// Whether it votes (otherwise a learner that only follows the log).
    pub voter: bool,
}

/// A handle on the store; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    pub(crate) raft: Raft,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) timeout: Duration,
    advertise_addr: Arc<str>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// The defragmentation loop: awaited at shutdown, not aborted (its copy must finish).
    defrag: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn raft_config(config: &Config, cluster_id: &str) -> Result<Arc<openraft::Config>> {
    let rc = openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: config.timing.heartbeat_ms,
        election_timeout_min: config.timing.election_min_ms,
        election_timeout_max: config.timing.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: (config.snapshot_every / 10).max(1),
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    rc.validate()
        .map(Arc::new)
        .map_err(|e| Error::InvalidArgument(format!("raft configuration: {e}")))
}

impl Store {
    /// Opens the store in `config.data_dir`, creating it if the directory is empty.
    /// A damaged directory, or one of another cluster or node, is refused.
    pub async fn open(config: Config) -> Result<Store> {
        let cfg = config.clone();
        let opened = tokio::task::spawn_blocking(move || open_blocking(&cfg))
            .await
            .map_err(|e| Error::Storage(format!("open task: {e}")))??;
        let database = Database::new(
            opened.db,
            opened.db_name,
            config.data_dir.clone(),
            config.cache_capacity_bytes,
        )?;
        let shared = Arc::new(Shared {
            database: Arc::new(database),
            compacted_notify: Arc::new(tokio::sync::Notify::new()),
            revs: RwLock::new(Revisions::default()),
            current: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
            hub: Mutex::new(Hub::default()),
            leases: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            cluster_id: opened.cluster_id,
            node_id: config.node_id,
            snapshot_dir: config.data_dir.join("snapshots"),
        });
        let prep = shared.clone();
        tokio::task::spawn_blocking(move || prepare(&prep))
            .await
            .map_err(|e| Error::Storage(format!("open task: {e}")))??;

        let log_store = LogStore::open(shared.database.clone(), &config.data_dir.join("log"))?;
        let network = Network {
            transport: config.transport.clone(),
            cluster_id: shared.cluster_id.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            raft_config(&config, &shared.cluster_id)?,
            network,
            log_store,
            StateMachine {
                shared: shared.clone(),
            },
        )
        .await
        .map_err(|e| Error::Storage(format!("cannot start raft: {e}")))?;
        let store = Store {
            shared,
            raft,
            transport: config.transport.clone(),
            timeout: config.request_timeout,
            advertise_addr: config.advertise_addr.as_str().into(),
            tasks: Arc::new(Mutex::new(Vec::new())),
            defrag: Arc::new(Mutex::new(None)),
        };
        let initialized = store
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        if config.bootstrap && !initialized {
            let members =
                BTreeMap::from([(config.node_id, BasicNode::new(&config.advertise_addr))]);
            store
                .raft
                .initialize(members)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot start the cluster: {e}")))?;
        }
        if store.single_voter() {
            // Alone, this node leads at once; every entry of its log is committed, and it
            // is applied before the store serves (applies are made durable lazily, so a
            // restart may find some to apply again).
            let _ = store
                .raft
                .wait(Some(config.request_timeout))
                .current_leader(config.node_id, "single node leader")
                .await;
            let last = store.raft.metrics().borrow().last_log_index;
            let _ = store
                .raft
                .wait(Some(config.request_timeout))
                .applied_index_at_least(last, "log replay")
                .await;
        }
        let expiry = tokio::spawn(crate::lease::expiry_loop(store.clone_weak()));
        let defrag = tokio::spawn(crate::defrag::auto_defrag_loop(
            store.clone_weak(),
            config.defrag_ratio,
            config.defrag_min_bytes,
        ));
        if let Ok(mut t) = store.tasks.lock() {
            t.push(expiry);
        }
        if let Ok(mut d) = store.defrag.lock() {
            *d = Some(defrag);
        }
        Ok(store)
    }

    fn clone_weak(&self) -> WeakStore {
        WeakStore {
            shared: Arc::downgrade(&self.shared),
            raft: self.raft.clone(),
            transport: self.transport.clone(),
            timeout: self.timeout,
            advertise_addr: self.advertise_addr.clone(),
        }
    }

    /// The address at which peers reach this node.
    pub fn advertise_addr(&self) -> &str {
        &self.advertise_addr
    }

    /// Whether [`Store::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The id of the cluster this store belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// Whether this node is the cluster's only voter (then it is its own quorum).
    fn single_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mut voters = m.membership_config.membership().voter_ids();
        voters.next() == Some(self.shared.node_id) && voters.next().is_none()
    }

    /// The current leader, if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.shared.node_id)
    }

    /// The members of the cluster as this node knows them.
    pub fn members(&self) -> Vec<Member> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    pub(crate) fn peer(&self, to: NodeId, addr: &str) -> Peer {
        Peer {
            transport: self.transport.clone(),
            cluster_id: self.shared.cluster_id.clone(),
            to,
            addr: addr.to_string(),
        }
    }

    /// The leader's id and address, waiting a little for an election to finish.
    pub(crate) async fn wait_leader(&self, deadline: Instant) -> Result<(NodeId, String)> {
        loop {
            {
                let m = self.raft.metrics();
                let m = m.borrow();
                if let Some(id) = m.current_leader {
                    if let Some(node) = m.membership_config.membership().get_node(&id) {
                        return Ok((id, node.addr.clone()));
                    }
                }
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(Error::Shutdown);
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(
                    "no leader: the cluster has no quorum".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes a write on this node only; `NotLeader` when it is not the leader.
    pub(crate) async fn propose_local(&self, request: WriteRequest) -> Result<WriteResponse> {
        let written = tokio::time::timeout(self.timeout, self.raft.client_write(request)).await;
        let Ok(written) = written else {
            return Err(Error::Unavailable(format!(
                "write not committed within {:?} (no quorum?); it may still be applied",
                self.timeout
            )));
        };
        written.map_err(from_raft)?.data.0
    }

    /// Proposes a write: here when this node leads, else on the leader.
    async fn propose(&self, request: WriteRequest) -> Result<WriteResponse> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.propose_local(request.clone()).await {
                Err(Error::NotLeader { .. }) => {}
                other => return other,
            }
            let (leader, addr) = self.wait_leader(deadline).await?;
            if leader != self.shared.node_id {
                match self
                    .peer(leader, &addr)
                    .call(PeerRequest::Write(request.clone()), self.timeout)
                    .await
                {
                    Ok(PeerResponse::Write(Err(Error::NotLeader { .. }))) => {}
                    Ok(PeerResponse::Write(r)) => return r,
                    Ok(_) => return Err(Error::Unavailable("leader gave another answer".into())),
                    // Not delivered: safe to try again.
                    Err(TransportError::Unreachable { .. }) => {}
                    // Maybe applied: the caller must find out, not us by retrying.
                    Err(e @ TransportError::NoAnswer { .. }) => {
                        return Err(Error::Unavailable(e.to_string()))
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable("no leader accepted the write".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The read index on the leader: the commit index, confirmed by a quorum.
    pub(crate) async fn read_index_local(&self) -> Result<u64> {
        let confirmed = tokio::time::timeout(self.timeout, self.raft.ensure_linearizable()).await;
        let Ok(confirmed) = confirmed else {
            return Err(Error::Unavailable(format!(
                "leadership not confirmed by a quorum within {:?}",
                self.timeout
            )));
        };
        Ok(confirmed.map_err(from_raft)?.map(|l| l.index).unwrap_or(0))
    }

    /// Waits until this node has applied everything committed before the call, so a read
    /// that follows sees every write acknowledged before it (read-index).
    async fn read_barrier(&self) -> Result<()> {
        if self.single_voter() && self.is_leader() {
            // Writes are applied before they are acknowledged: local state is current.
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            // The leader's read index: asked here when this node leads, else forwarded.
            match self.on_leader(PeerRequest::ReadIndex, self.timeout).await {
                Ok(PeerResponse::ReadIndex(Ok(index))) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return self
                        .raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(index), "read index")
                        .await
                        .map(|_| ())
                        .map_err(|e| Error::Unavailable(format!("read index not reached: {e}")));
                }
                // Leadership moved or the leader was out of reach: ask again.
                Ok(PeerResponse::ReadIndex(Err(Error::NotLeader { .. })))
                | Err(Error::Unavailable(_)) => {}
                Ok(PeerResponse::ReadIndex(Err(e))) | Err(e) => return Err(e),
                Ok(_) => return Err(Error::Unavailable("leader gave another answer".into())),
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(
                    "no leader for a linearizable read".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads a key or range, at the current revision or a past one. Linearizable unless
    /// the request asks for a serializable (local, possibly stale) read.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if !req.serializable {
            self.read_barrier().await?;
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let revs = shared.revs.read().map_err(|_| poisoned())?;
            let tree = shared.database.tree();
            if req.revision == 0 || req.revision == revs.current {
                return mvcc::range_latest(&tree, &req, revs.current);
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
            mvcc::range_at(&tree, &req, req.revision, revs.current)
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

    /// Watches a key or range from `start_revision` (0 = only future changes). Served
    /// from this node's applied state.
    pub async fn watch(&self, req: WatchRequest) -> Result<Watcher> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        let range = KeyRange::new(req.key, req.range_end);
        // A defragmentation holds this lock for a while: wait off the async worker then.
        let revs = match self.shared.revs.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::WouldBlock) => {
                crate::consensus::blocking(|| self.shared.revs.read()).map_err(|_| poisoned())?
            }
            Err(std::sync::TryLockError::Poisoned(_)) => return Err(poisoned()),
        };
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
        let mut hub = self.shared.hub.lock().map_err(|_| poisoned())?;
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

    /// The store's revision as a linearizable read sees it: every write acknowledged
    /// before the call is at or below it, and applied here. A live watcher registered
    /// before the call has been handed every event up to it.
    pub async fn linearizable_revision(&self) -> Result<Revision> {
        self.read_barrier().await?;
        Ok(self.current_revision())
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
            WriteResponse::Lease(l) => Ok(l),
            other => Err(Error::Storage(format!(
                "unexpected answer to a lease grant: {other:?}"
            ))),
        }
    }

    /// Renews a lease on this node's clock (the leader's, when this node leads).
    pub(crate) fn keep_alive_local(&self, id: LeaseId) -> Result<Lease> {
        let mut leases = self.shared.leases.lock().map_err(|_| poisoned())?;
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

    /// Renews a lease for its full TTL. Lease clocks run on the leader.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease> {
        match self
            .on_leader(PeerRequest::KeepAlive(id), self.timeout)
            .await?
        {
            PeerResponse::Lease(r) => r,
            _ => Err(Error::Unavailable("leader gave another answer".into())),
        }
    }

    /// Revokes a lease now, deleting its keys.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.propose(WriteRequest::LeaseRevoke { id }).await?;
        Ok(())
    }

    /// Stops the Raft node, flushes, and ends all watches.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        // The defragmentation loop sees `closed` when woken and ends after what it does.
        self.shared.compacted_notify.notify_one();
        let defrag = self.defrag.lock().ok().and_then(|mut d| d.take());
        if let Some(defrag) = defrag {
            let _ = defrag.await;
        }
        let _ = self.raft.shutdown().await;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(mut hub) = shared.hub.lock() {
                hub.close_all();
            }
            shared.database.flush()
        })
        .await
        .map_err(|e| Error::Storage(format!("shutdown task: {e}")))??;
        Ok(())
    }

    /// Writes a consistent copy of the whole store (history and leases included) to `path`,
    /// taken at the revision it returns; writes wait meanwhile.
    pub async fn save_snapshot(&self, path: impl Into<PathBuf>) -> Result<Revision> {
        let path = path.into();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let revs = shared.revs.read().map_err(|_| poisoned())?;
            snapshot::save(&shared.database.tree(), &path)?;
            Ok(revs.current)
        })
        .await
        .map_err(|e| Error::Storage(format!("snapshot task: {e}")))?
    }

    /// Creates, in the empty `config.data_dir`, the store of a new one-node cluster holding
    /// what the snapshot at `path` holds (same keys, revisions and history). The store is
    /// then opened as usual.
    pub async fn restore(config: &Config, path: impl Into<PathBuf>) -> Result<()> {
        let (config, path) = (config.clone(), path.into());
        tokio::task::spawn_blocking(move || crate::open::restore_blocking(&config, &path))
            .await
            .map_err(|e| Error::Storage(format!("restore task: {e}")))?
    }

    /// Size of the database files on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.shared
            .database
            .with(|h| h.db.size_on_disk())
            .map_err(|e| Error::Storage(e.to_string()))
    }
}

/// A Raft API error as the store reports it: not the leader (and who is), unavailable,
/// or shut down.
pub(crate) fn from_raft<E>(e: RaftError<NodeId, E>) -> Error
where
    E: std::error::Error + TryAsRef<ForwardToLeader<NodeId, BasicNode>>,
{
    match e {
        RaftError::Fatal(_) => Error::Shutdown,
        RaftError::APIError(api) => match api.try_as_ref() {
            Some(f) => Error::NotLeader {
                leader: f.leader_id,
            },
            None => Error::Unavailable(api.to_string()),
        },
    }
}

/// Before Raft starts: finish an interrupted snapshot install, then load the in-memory
/// bookkeeping from the tree.
fn prepare(shared: &Shared) -> Result<()> {
    if snapshot::install_interrupted(&shared.database.tree())? {
        let path = shared.snapshot_dir.join(snapshot::CURRENT);
        tracing::warn!(snapshot = %path.display(), "finishing an interrupted snapshot install");
        state_machine::install(shared, &path, None)?;
    }
    let mut revs = shared.revs.write().map_err(|_| poisoned())?;
    shared.reload(&mut revs)?;
    if let Ok(dir) = std::fs::read_dir(&shared.snapshot_dir) {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("incoming-") || name.starts_with("building-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// What the background loops hold: it must not keep the store alive.
pub(crate) struct WeakStore {
    shared: std::sync::Weak<Shared>,
    raft: Raft,
    transport: Arc<dyn Transport>,
    timeout: Duration,
    advertise_addr: Arc<str>,
}

impl WeakStore {
    /// The store, while someone else still holds it.
    pub(crate) fn upgrade(&self) -> Option<Store> {
        Some(Store {
            shared: self.shared.upgrade()?,
            raft: self.raft.clone(),
            transport: self.transport.clone(),
            timeout: self.timeout,
            advertise_addr: self.advertise_addr.clone(),
            tasks: Arc::new(Mutex::new(Vec::new())),
            defrag: Arc::new(Mutex::new(None)),
        })
    }
}
