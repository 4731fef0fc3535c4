//! The Raft log and vote in sled. Appends return as soon as the entries are in sled's
//! memory; a flusher thread then makes them durable with one fsync for everything appended
//! meanwhile (group commit) and tells openraft, in order, which appends are on disk.

// openraft's StorageError is large by design; these helpers return it as openraft does.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc as std_mpsc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consensus::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// sled tree of log entries, keyed by big-endian index.
pub const LOG_TREE: &str = "raft-log";
/// sled tree of the vote, the committed and the last purged log id.
pub const META_TREE: &str = "raft-meta";

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(openraft::AnyError::error(e)).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e)).into()
}

fn vote_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_vote(openraft::AnyError::error(e)).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(v).map_err(write_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StorageError> {
    bincode::deserialize(b).map_err(read_err)
}

fn get_meta<T: DeserializeOwned>(meta: &sled::Tree, name: &str) -> Result<Option<T>, StorageError> {
    match meta.get(name).map_err(read_err)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

/// Reads log entries; cheap to clone, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn read_range<RB: RangeBounds<u64>>(
    log: &sled::Tree,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let r = (bound_key(range.start_bound()), bound_key(range.end_bound()));
    let mut out = Vec::new();
    for item in log.range::<[u8; 8], _>(r) {
        let (_, v) = item.map_err(read_err)?;
        out.push(decode::<Entry>(&v)?);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.log, range)
    }
}

enum Flush {
    Appended(LogFlushed<TypeConfig>),
}

/// The log store handed to openraft.
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: std_mpsc::Sender<Flush>,
}

impl LogStore {
    /// Opens the log trees of `db` and starts the flusher thread.
    pub fn open(db: &sled::Db) -> crate::Result<LogStore> {
        let storage = |e: sled::Error| crate::Error::Storage(e.to_string());
        let log = db.open_tree(LOG_TREE).map_err(storage)?;
        let meta = db.open_tree(META_TREE).map_err(storage)?;
        let (tx, rx) = std_mpsc::channel::<Flush>();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("pikube-raft-flush".into())
            .spawn(move || flusher(flush_db, rx))
            .map_err(|e| crate::Error::Storage(format!("cannot start log flusher: {e}")))?;
        Ok(LogStore {
            db: db.clone(),
            log,
            meta,
            flusher: tx,
        })
    }

    fn blocking_flush(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        // Votes are rare; a short block of the Raft task is the simple, safe choice.
        crate::consensus::blocking(move || db.flush().map(|_| ()).map_err(vote_err))
    }
}

fn flusher(db: sled::Db, rx: std_mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let result = db.flush().map(|_| ());
        for Flush::Appended(cb) in pending {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.log, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get_meta(&self.meta, "purged")?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(*decode::<Entry>(&v)?.get_log_id()),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            log: self.log.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.meta.insert("vote", encode(vote)?).map_err(vote_err)?;
        self.blocking_flush()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get_meta(&self.meta, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Made durable by the next log flush; committed never runs ahead of flushed entries.
        self.meta
            .insert("committed", encode(&committed)?)
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(get_meta::<Option<LogId>>(&self.meta, "committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.get_log_id().index.to_be_bytes()[..], encode(&e)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.flusher
            .send(Flush::Appended(callback))
            .map_err(|_| write_err("log flusher has stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.meta
            .insert("purged", encode(&Some(log_id))?)
            .map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)
    }
}
