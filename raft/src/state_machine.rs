//! The replicated state machine: committed log entries applied to the MVCC tree, each in
//! one atomic sled batch together with the record of its log id, so a crash neither loses
//! an applied write nor applies one twice. Also builds and installs snapshots.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, Snapshot};

use crate::codec;
use crate::consensus::{
    blocking, storage_error, Applied, Entry, LogId, NodeId, SnapshotFile, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};
use crate::defrag::Database;
use crate::error::{Error, Result};
use crate::mvcc::{self, Revisions, WriteRequest, WriteResponse};
use crate::snapshot;
use crate::types::{LeaseId, Revision};
use crate::watch::{EventSource, Hub};

/// State shared by the state machine, the store handle and the watchers of one node.
pub(crate) struct Shared {
    /// The sled database (swapped whole by a defragmentation).
    pub database: Arc<Database>,
    /// Woken when a compaction was applied: the defragmentation task then checks the
    /// database's disk use.
    pub compacted_notify: Arc<tokio::sync::Notify>,
    pub revs: RwLock<Revisions>,
    pub current: AtomicI64,
    pub compacted: AtomicI64,
    pub hub: Mutex<Hub>,
    /// Lease deadlines (used by the leader) and TTLs.
    pub leases: Mutex<HashMap<LeaseId, (Instant, i64)>>,
    pub closed: AtomicBool,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub snapshot_dir: PathBuf,
}

impl EventSource for Shared {
    fn tree(&self) -> sled::Tree {
        self.database.tree()
    }
    fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::SeqCst)
    }
}

/// The error of a lock another thread panicked while holding.
pub(crate) fn poisoned() -> Error {
    Error::Unavailable("store lock poisoned".into())
}

impl Shared {
    /// Reloads the in-memory bookkeeping (revisions, leases) from the tree.
    pub fn reload(&self, revs: &mut Revisions) -> Result<()> {
        let tree = self.database.tree();
        let read = |name: &str| -> Result<i64> {
            match tree
                .get(codec::meta_key(name))
                .map_err(|e| Error::Storage(e.to_string()))?
            {
                Some(v) => codec::decode_i64(&v),
                None => Ok(0),
            }
        };
        revs.current = read("revision")?;
        revs.compacted = read("compacted")?;
        self.current.store(revs.current, Ordering::SeqCst);
        self.compacted.store(revs.compacted, Ordering::SeqCst);
        let now = Instant::now();
        let mut leases = HashMap::new();
        for item in tree.scan_prefix([codec::LEASES]) {
            let (k, v) = item.map_err(|e| Error::Storage(e.to_string()))?;
            let id = codec::decode_i64(&k[1..])?;
            let ttl = codec::decode_i64(&v)?;
            leases.insert(id, (now + Duration::from_secs(ttl.max(1) as u64), ttl));
        }
        *self.leases.lock().map_err(|_| poisoned())? = leases;
        Ok(())
    }

    fn apply_entry(&self, entry: &Entry) -> Result<Applied> {
        let log_id = *entry.get_log_id();
        let mut revs = self.revs.write().map_err(|_| poisoned())?;
        let tree = self.database.tree();
        let mut next = *revs;
        let mut batch = sled::Batch::default();
        let mut events = Vec::new();
        let response = match &entry.payload {
            EntryPayload::Blank => Ok(WriteResponse::Done),
            EntryPayload::Normal(req) => {
                let (applied, b) = mvcc::apply(&tree, &mut next, req, batch)?;
                batch = b;
                events = applied.events;
                applied.response
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                batch.insert(
                    codec::meta_key(snapshot::MEMBERSHIP),
                    codec::encode(&stored)?,
                );
                Ok(WriteResponse::Done)
            }
        };
        batch.insert(
            codec::meta_key(snapshot::APPLIED),
            codec::encode(&Some(log_id))?,
        );
        tree.apply_batch(batch)
            .map_err(|e| Error::Storage(e.to_string()))?;
        *revs = next;
        // Watchers have a revision's events before anyone can read that revision as
        // current: a reader that saw revision R and then drains a live watcher has every
        // event up to R (the API server's list cache relies on it).
        if !events.is_empty() {
            if let Ok(mut hub) = self.hub.lock() {
                hub.publish(&events);
            }
        }
        self.current.store(next.current, Ordering::SeqCst);
        self.compacted.store(next.compacted, Ordering::SeqCst);
        if let (EntryPayload::Normal(WriteRequest::Compact { .. }), Ok(_)) =
            (&entry.payload, &response)
        {
            self.compacted_notify.notify_one();
        }
        if let (EntryPayload::Normal(req), Ok(_)) = (&entry.payload, &response) {
            if let Ok(mut leases) = self.leases.lock() {
                match req {
                    WriteRequest::LeaseGrant { id, ttl_seconds } => {
                        let deadline = Instant::now() + Duration::from_secs(*ttl_seconds as u64);
                        leases.insert(*id, (deadline, *ttl_seconds));
                    }
                    WriteRequest::LeaseRevoke { id } => {
                        leases.remove(id);
                    }
                    _ => {}
                }
            }
        }
        Ok(Applied(response))
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

/// Builds snapshots of the state machine.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

async fn open_snapshot(path: PathBuf) -> Result<SnapshotFile, StorageError> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| storage_error(format!("cannot open snapshot {}: {e}", path.display())))?;
    Ok(SnapshotFile::new(file, path))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, path) = blocking(move || {
            // Applies wait while the tree is written out, so the file is exactly the
            // state at its last log id.
            let _revs = shared.revs.read().map_err(|_| poisoned())?;
            // The log before this snapshot may go once it returns: make the state
            // machine it replaces durable first.
            shared.database.with(|h| {
                h.db.flush().map_err(|e| Error::Storage(e.to_string()))?;
                snapshot::build(&h.tree, &shared.snapshot_dir)
            })
        })
        .map_err(storage_error)?;
        tracing::info!(snapshot = %meta.snapshot_id, "store snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(open_snapshot(path).await?),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        snapshot::applied_state(&self.shared.database.tree()).map_err(storage_error)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = self.shared.clone();
        let entries: Vec<Entry> = entries.into_iter().collect();
        blocking(move || {
            entries
                .iter()
                .map(|e| shared.apply_entry(e))
                .collect::<Result<Vec<_>>>()
        })
        .map_err(storage_error)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let dir = self.shared.snapshot_dir.clone();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(storage_error)?;
        let path = dir.join(format!("incoming-{:08x}", rand::random::<u32>()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(storage_error)?;
        Ok(Box::new(SnapshotFile::new(file, path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut data: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        data.file_mut().sync_all().await.map_err(storage_error)?;
        let received = data.path().to_path_buf();
        drop(data);
        let current = self.shared.snapshot_dir.join(snapshot::CURRENT);
        tokio::fs::rename(&received, &current)
            .await
            .map_err(storage_error)?;
        let shared = self.shared.clone();
        let want = meta.last_log_id;
        blocking(move || install(&shared, &current, want)).map_err(storage_error)?;
        tracing::info!(snapshot = %meta.snapshot_id, "store snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.shared.snapshot_dir.join(snapshot::CURRENT);
        if !path.exists() {
            return Ok(None);
        }
        let p = path.clone();
        let meta = blocking(move || snapshot::read_meta(&p)).map_err(storage_error)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(open_snapshot(path).await?),
        }))
    }
}

/// Replaces the state with the snapshot at `path`; live watchers are cancelled (they
/// would miss the skipped history) and watch again from their revision.
pub(crate) fn install(shared: &Shared, path: &std::path::Path, want: Option<LogId>) -> Result<()> {
    let mut revs = shared.revs.write().map_err(|_| poisoned())?;
    let meta = shared
        .database
        .with(|h| snapshot::install(&h.db, &h.tree, path))?;
    if want.is_some() && meta.last_log_id != want {
        return Err(Error::Corrupt(format!(
            "snapshot {} is not the one announced",
            path.display()
        )));
    }
    // Cancelled before the new revision is published: whoever reads that revision finds
    // the watchers it relied on already ended, never still open but missing history.
    if let Ok(mut hub) = shared.hub.lock() {
        hub.cancel_all();
    }
    shared.reload(&mut revs)?;
    Ok(())
}
