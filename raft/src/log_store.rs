//! The Raft log (in [`crate::wal`] segment files) and the vote (in sled). Appends return
//! once written; a flusher thread then makes them durable with one `fdatasync` per file
//! for everything appended meanwhile (group commit) and tells openraft, in order, which
//! appends are on disk.

// openraft's StorageError is large by design; these helpers return it as openraft does.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consensus::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::defrag::Database;
use crate::wal::Wal;

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

/// The log files, shared by the store and its readers.
#[derive(Clone)]
struct Log(Arc<Mutex<Wal>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Wal> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn read<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => i - 1,
            Bound::Unbounded => u64::MAX,
        };
        let payloads = self.lock().read(from, to).map_err(read_err)?;
        payloads.iter().map(|p| decode::<Entry>(p)).collect()
    }

    fn last(&self) -> Result<Option<Entry>, StorageError> {
        let log = self.lock();
        let Some(i) = log.last_index() else {
            return Ok(None);
        };
        let p = log.read(i, i).map_err(read_err)?;
        match p.first() {
            Some(p) => Ok(Some(decode(p)?)),
            None => Ok(None),
        }
    }
}

/// Reads log entries; cheap to clone, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: Log,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.log.read(range)
    }
}

struct Flush {
    files: Vec<Arc<File>>,
    done: LogFlushed<TypeConfig>,
}

/// The log store handed to openraft.
pub struct LogStore {
    /// Holds the vote tree ([`META_TREE`]); a defragmentation may swap it.
    database: Arc<Database>,
    log: Log,
    flusher: std_mpsc::Sender<Flush>,
}

impl LogStore {
    /// Opens the vote tree of `database` and the log files in `dir`, and starts the flusher.
    pub(crate) fn open(database: Arc<Database>, dir: &Path) -> crate::Result<LogStore> {
        let purged = database
            .with(|h| get_meta::<Option<LogId>>(&h.meta, "purged"))
            .map_err(|e| crate::Error::Corrupt(format!("raft metadata: {e}")))?
            .flatten();
        let wal = Wal::open(dir, purged.map(|p| p.index))?;
        let (tx, rx) = std_mpsc::channel::<Flush>();
        std::thread::Builder::new()
            .name("pikube-raft-flush".into())
            .spawn(move || flusher(rx))
            .map_err(|e| crate::Error::Storage(format!("cannot start log flusher: {e}")))?;
        Ok(LogStore {
            database,
            log: Log(Arc::new(Mutex::new(wal))),
            flusher: tx,
        })
    }

    /// Writes `value` under `name` in the vote tree; with `durable`, flushes it too.
    fn put_meta<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        self.database.with(|h| {
            h.meta.insert(name, bytes).map_err(write_err)?;
            if durable {
                // Votes and purges are rare; a short block of the Raft task is the
                // simple, safe choice.
                crate::consensus::blocking(|| h.db.flush().map(|_| ()).map_err(vote_err))?;
            }
            Ok(())
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageError> {
        self.database.with(|h| get_meta(&h.meta, name))
    }
}

/// Syncs the files of every append waiting, once each, then reports them durable in order.
fn flusher(rx: std_mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let mut files: Vec<&Arc<File>> = Vec::new();
        for p in &pending {
            for f in &p.files {
                if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    files.push(f);
                }
            }
        }
        let mut result = Ok(());
        for f in files {
            if let Err(e) = f.sync_data() {
                result = Err(e.to_string());
                break;
            }
        }
        for p in pending {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.clone())),
            };
            p.done.log_io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.log.read(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        // Recorded as an `Option<LogId>` (see `purge`).
        let last_purged = self.get_meta::<Option<LogId>>("purged")?.flatten();
        let last = match self.log.last()? {
            Some(e) => Some(*e.get_log_id()).max(last_purged),
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
        self.put_meta("vote", vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Made durable by the next log flush; committed never runs ahead of flushed entries.
        self.put_meta("committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
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
        let mut first = None;
        let mut payloads = Vec::new();
        for e in entries {
            first.get_or_insert(e.get_log_id().index);
            payloads.push(encode(&e)?);
        }
        let files = match first {
            Some(index) => {
                let mut log = self.log.lock();
                log.append(index, &payloads).map_err(write_err)?;
                log.take_dirty()
            }
            None => Vec::new(),
        };
        self.flusher
            .send(Flush {
                files,
                done: callback,
            })
            .map_err(|_| write_err("log flusher has stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.log.lock().truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The record must be on disk before the files go, or a crash would leave the
        // log starting after a hole that nothing explains.
        self.put_meta("purged", &Some(log_id), true)?;
        self.log.lock().purge(log_id.index).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_reopens_after_a_snapshot_purged_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut config = Config::single_node(&path);
        config.snapshot_every = 100;
        let s = Store::open(config.clone()).await.unwrap();
        for i in 0..400 {
            s.put(format!("/p/{i}").as_bytes(), b"v", 0).await.unwrap();
        }
        // openraft purges what a snapshot covers, less a tenth of the interval.
        s.raft
            .wait(Some(std::time::Duration::from_secs(10)))
            .metrics(|m| m.purged.is_some(), "log purged")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let purged = s.raft.metrics().borrow().purged;
        drop(s);
        let s = Store::open(config).await.unwrap();
        assert_eq!(
            s.raft.metrics().borrow().purged,
            purged,
            "the purged log id reads back"
        );
        assert_eq!(s.current_revision(), 400);
        assert_eq!(s.put(b"/p/next", b"v", 0).await.unwrap().revision, 401);
        s.shutdown().await.unwrap();
    }
}
