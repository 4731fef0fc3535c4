//! The Raft log and vote in sled. Appends return as soon as the entries are in sled's
//! memory; a flusher thread then makes them durable with one fsync for everything appended
//! meanwhile (group commit) and tells openraft, in order, which appends are on disk.

// openraft's StorageError is large by design; these helpers return it as openraft does.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consensus::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Name prefix of the log segment trees (`raft-log-<first index / SEGMENT, hex>`),
/// entries keyed by big-endian index.
const SEGMENT_PREFIX: &str = "raft-log-";
/// Entries per log segment.
pub const SEGMENT: u64 = 4096;
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

/// The log's segment trees by segment number; cheap to clone.
#[derive(Clone)]
struct Segments {
    db: sled::Db,
    trees: Arc<Mutex<BTreeMap<u64, sled::Tree>>>,
}

fn segment_name(seg: u64) -> String {
    format!("{SEGMENT_PREFIX}{seg:016x}")
}

impl Segments {
    fn open(db: &sled::Db) -> Result<Segments, StorageError> {
        let mut trees = BTreeMap::new();
        for name in db.tree_names() {
            let Some(hex) = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            else {
                continue;
            };
            let seg = u64::from_str_radix(hex, 16).map_err(read_err)?;
            trees.insert(seg, db.open_tree(&name).map_err(read_err)?);
        }
        Ok(Segments {
            db: db.clone(),
            trees: Arc::new(Mutex::new(trees)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, sled::Tree>> {
        match self.trees.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn tree(&self, seg: u64) -> Result<sled::Tree, StorageError> {
        let mut trees = self.lock();
        if let Some(t) = trees.get(&seg) {
            return Ok(t.clone());
        }
        let t = self.db.open_tree(segment_name(seg)).map_err(write_err)?;
        trees.insert(seg, t.clone());
        Ok(t)
    }

    fn read<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let last = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => i - 1,
            Bound::Unbounded => u64::MAX,
        };
        if last < start {
            return Ok(Vec::new());
        }
        let r = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let trees: Vec<sled::Tree> = self
            .lock()
            .range(start / SEGMENT..=last / SEGMENT)
            .map(|(_, t)| t.clone())
            .collect();
        let mut out = Vec::new();
        for t in trees {
            for item in t.range::<[u8; 8], _>(r) {
                let (_, v) = item.map_err(read_err)?;
                out.push(decode::<Entry>(&v)?);
            }
        }
        Ok(out)
    }

    fn last(&self) -> Result<Option<Entry>, StorageError> {
        let trees: Vec<sled::Tree> = self.lock().values().rev().cloned().collect();
        for t in trees {
            if let Some((_, v)) = t.last().map_err(read_err)? {
                return Ok(Some(decode(&v)?));
            }
        }
        Ok(None)
    }

    fn append(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StorageError> {
        // Segments in index order, so a crash never keeps a later entry without an
        // earlier one.
        let mut batches: BTreeMap<u64, sled::Batch> = BTreeMap::new();
        for e in entries {
            let index = e.get_log_id().index;
            batches
                .entry(index / SEGMENT)
                .or_default()
                .insert(&index.to_be_bytes()[..], encode(&e)?);
        }
        for (seg, batch) in batches {
            self.tree(seg)?.apply_batch(batch).map_err(write_err)?;
        }
        Ok(())
    }

    /// Removes the entries from `from` on.
    fn truncate(&self, from: u64) -> Result<(), StorageError> {
        let segs: Vec<(u64, sled::Tree)> = self
            .lock()
            .range(from / SEGMENT..)
            .map(|(s, t)| (*s, t.clone()))
            .collect();
        for (seg, t) in segs.into_iter().rev() {
            if seg > from / SEGMENT {
                self.drop_segment(seg)?;
                continue;
            }
            let mut batch = sled::Batch::default();
            for item in t.range(from.to_be_bytes()..) {
                let (k, _) = item.map_err(read_err)?;
                batch.remove(k);
            }
            t.apply_batch(batch).map_err(write_err)?;
        }
        Ok(())
    }

    /// Drops every segment whose entries all lie at or before `upto`.
    fn purge(&self, upto: u64) -> Result<(), StorageError> {
        let done: Vec<u64> = self
            .lock()
            .keys()
            .copied()
            .filter(|seg| (seg + 1) * SEGMENT - 1 <= upto)
            .collect();
        for seg in done {
            self.drop_segment(seg)?;
        }
        Ok(())
    }

    fn drop_segment(&self, seg: u64) -> Result<(), StorageError> {
        self.lock().remove(&seg);
        self.db
            .drop_tree(segment_name(seg))
            .map(|_| ())
            .map_err(write_err)
    }
}

/// Reads log entries; cheap to clone, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    segments: Segments,
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.segments.read(range)
    }
}

enum Flush {
    Appended(LogFlushed<TypeConfig>),
}

/// The log store handed to openraft.
pub struct LogStore {
    db: sled::Db,
    segments: Segments,
    meta: sled::Tree,
    flusher: std_mpsc::Sender<Flush>,
}

impl LogStore {
    /// Opens the log trees of `db` and starts the flusher thread.
    pub fn open(db: &sled::Db) -> crate::Result<LogStore> {
        let storage = |e: sled::Error| crate::Error::Storage(e.to_string());
        let segments = Segments::open(db).map_err(|e| crate::Error::Storage(e.to_string()))?;
        let meta = db.open_tree(META_TREE).map_err(storage)?;
        let (tx, rx) = std_mpsc::channel::<Flush>();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("pikube-raft-flush".into())
            .spawn(move || flusher(flush_db, rx))
            .map_err(|e| crate::Error::Storage(format!("cannot start log flusher: {e}")))?;
        Ok(LogStore {
            db: db.clone(),
            segments,
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
        self.segments.read(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get_meta(&self.meta, "purged")?;
        let last = match self.segments.last()? {
            Some(e) => Some(*e.get_log_id()),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            segments: self.segments.clone(),
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
        self.segments.append(entries)?;
        self.flusher
            .send(Flush::Appended(callback))
            .map_err(|_| write_err("log flusher has stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.segments.truncate(log_id.index)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.meta
            .insert("purged", encode(&Some(log_id))?)
            .map_err(write_err)?;
        self.segments.purge(log_id.index)
    }
}
