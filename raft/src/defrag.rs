//! The node's sled database, and its defragmentation — the counterpart of
//! `etcdctl defrag`. sled 0.34 reuses the space of dead records only lazily, as later
//! writes move live pages out of mostly-dead segments, so after a compaction its files keep
//! the size of the history that was dropped. A defragmentation copies every tree into a
//! fresh sled directory (`db.<generation>`) while applies and Raft's metadata writes wait,
//! makes it durable, names it in the identity file (the one atomic step: before it the old
//! directory is the store, after it the new one) and swaps the handles; the old directory
//! is then removed. An interrupted defragmentation leaves a directory that open removes.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, TryLockError};
use std::time::Duration;

use crate::consensus::{blocking, LogId, NodeId};
use crate::error::{Error, Result};
use crate::log_store::META_TREE;
use crate::open;
use crate::state_machine::poisoned;
use crate::store::{Store, WeakStore};

/// Name of the state machine's tree.
pub(crate) const STATE_TREE: &str = "store";
/// Records copied per sled batch while rebuilding.
const COPY_BATCH: usize = 4096;

fn storage(e: sled::Error) -> Error {
    Error::Storage(e.to_string())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

/// The open sled database and the trees the store uses.
pub(crate) struct Handles {
    /// The database.
    pub db: sled::Db,
    /// The state machine.
    pub tree: sled::Tree,
    /// Raft's vote and committed and purged log ids.
    pub meta: sled::Tree,
    /// Directory name inside the data directory.
    name: String,
}

impl Handles {
    fn open(db: sled::Db, name: String) -> Result<Handles> {
        Ok(Handles {
            tree: db.open_tree(STATE_TREE).map_err(storage)?,
            meta: db.open_tree(META_TREE).map_err(storage)?,
            db,
            name,
        })
    }
}

/// Disk use of the database against the bytes of its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUse {
    /// Bytes of the sled directory's files.
    pub on_disk: u64,
    /// Bytes of the keys and values it holds.
    pub live: u64,
}

/// Where a defragmentation stops, to leave the disk as a crash there would (tests).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopAt {
    /// Half the records copied into the new directory.
    HalfCopied,
    /// The new directory complete and durable, the identity file not yet changed.
    Copied,
    /// The identity file names the new directory; the old one is still there.
    Switched,
}

/// The node's sled database; replaced whole by [`Database::defragment`].
pub(crate) struct Database {
    handles: RwLock<Handles>,
    data_dir: PathBuf,
    cache_capacity: u64,
}

impl Database {
    /// Wraps the database opened from `data_dir/name`.
    pub fn new(db: sled::Db, name: String, data_dir: PathBuf, cache_capacity: u64) -> Result<Self> {
        Ok(Database {
            handles: RwLock::new(Handles::open(db, name)?),
            data_dir,
            cache_capacity,
        })
    }

    /// The handles, waiting (off the async worker) while a defragmentation swaps them.
    fn read(&self) -> RwLockReadGuard<'_, Handles> {
        match self.handles.try_read() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                blocking(|| self.handles.read().unwrap_or_else(|p| p.into_inner()))
            }
        }
    }

    /// Runs `f` on the handles; no defragmentation starts meanwhile, so what `f` writes
    /// is in the database that stays.
    pub fn with<T>(&self, f: impl FnOnce(&Handles) -> T) -> T {
        f(&self.read())
    }

    /// The state machine's tree.
    pub fn tree(&self) -> sled::Tree {
        self.read().tree.clone()
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.with(|h| h.db.flush().map(|_| ()).map_err(storage))
    }

    /// Bytes on disk and bytes of records (a scan of every tree).
    pub fn disk_use(&self) -> Result<DiskUse> {
        let h = self.read();
        let mut live = 0u64;
        for name in h.db.tree_names() {
            let tree = h.db.open_tree(&name).map_err(storage)?;
            for item in tree.iter() {
                let (k, v) = item.map_err(storage)?;
                live += (k.len() + v.len()) as u64;
            }
        }
        Ok(DiskUse {
            on_disk: dir_size(&self.data_dir.join(&h.name)),
            live,
        })
    }

    /// Rebuilds the database into a fresh directory and switches to it (crash-safely, see
    /// the module doc). The caller keeps applies out; Raft's metadata writes wait here.
    pub fn defragment(&self) -> Result<()> {
        self.rebuild(None)
    }

    /// [`Database::defragment`], stopping at `stop` as a crash there would.
    #[cfg(test)]
    pub fn defragment_until(&self, stop: StopAt) -> Result<()> {
        self.rebuild(Some(stop))
    }

    fn rebuild(&self, stop: Option<StopAt>) -> Result<()> {
        let mut h = self.handles.write().unwrap_or_else(|p| p.into_inner());
        h.db.flush().map_err(storage)?;
        let name = format!("db.{}", open::db_generation(&h.name) + 1);
        let path = self.data_dir.join(&name);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| io("cannot remove", &path, e))?;
        }
        let db = open::open_sled(&path, self.cache_capacity)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", path.display())))?;
        // Until the switch the new directory is nobody's: a failed copy (a full disk,
        // most likely) takes it away again rather than leave the disk fuller.
        let copied = copy_all(&h.db, &h.tree, &db, stop).and_then(|()| {
            db.flush().map_err(storage)?;
            sync_tree(&path)?;
            open::sync_dir(&self.data_dir)
        });
        if let Err(e) = copied {
            if stop.is_none() {
                drop(db);
                if let Err(rm) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %rm, "cannot remove a failed copy");
                }
            }
            return Err(e);
        }
        if stop == Some(StopAt::Copied) {
            return Err(Error::Storage("stopped before the switch (test)".into()));
        }
        let new = Handles::open(db, name.clone())?;
        let mut keep_old = stop == Some(StopAt::Switched);
        if let Err(e) = open::switch_db(&self.data_dir, &name) {
            // Whether the rename happened decides which directory the store is now; if
            // it is not known durable, the old directory stays, for an identity file that
            // a crash takes back to naming it.
            if open::named_db(&self.data_dir).ok().as_deref() != Some(name.as_str()) {
                return Err(e);
            }
            tracing::warn!(error = %e, "the switch to the new database is not known durable");
            keep_old = true;
        }
        let old = std::mem::replace(&mut *h, new);
        drop(h);
        let old_path = self.data_dir.join(&old.name);
        drop(old);
        if keep_old {
            return Ok(());
        }
        // The store is the new directory now; a failure here leaves the old one for the
        // next open to remove.
        if let Err(e) = std::fs::remove_dir_all(&old_path) {
            tracing::warn!(dir = %old_path.display(), error = %e, "cannot remove the old database");
        }
        Ok(())
    }
}

/// Copies every tree of `from` into `to` (`stop`: a test's crash half-way).
fn copy_all(
    from: &sled::Db,
    state: &sled::Tree,
    to: &sled::Db,
    stop: Option<StopAt>,
) -> Result<()> {
    let half = (stop == Some(StopAt::HalfCopied)).then(|| state.len() / 2);
    for tree_name in from.tree_names() {
        let source = from.open_tree(&tree_name).map_err(storage)?;
        let target = to.open_tree(&tree_name).map_err(storage)?;
        let mut batch = sled::Batch::default();
        for (n, item) in source.iter().enumerate() {
            let (k, v) = item.map_err(storage)?;
            batch.insert(k, v);
            if (n + 1) % COPY_BATCH == 0 {
                target
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(storage)?;
            }
            if half.is_some_and(|half| tree_name == STATE_TREE && n >= half) {
                target.apply_batch(batch).map_err(storage)?;
                to.flush().map_err(storage)?;
                return Err(Error::Storage("stopped half-way (test)".into()));
            }
        }
        target.apply_batch(batch).map_err(storage)?;
    }
    Ok(())
}

/// Total size of the files under `path` (what a directory takes on disk, for disk-use
/// figures; unreadable entries count nothing).
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Syncs every file and directory under `path` (sled syncs its data, not the directory
/// entries of the files it created).
fn sync_tree(path: &Path) -> Result<()> {
    for entry in std::fs::read_dir(path).map_err(|e| io("cannot read", path, e))? {
        let entry = entry.map_err(|e| io("cannot read", path, e))?;
        let p = entry.path();
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        // sled may remove a file it rotated between the listing and the sync.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(io("cannot read", &p, e)),
        };
        if meta.is_dir() {
            sync_tree(&p)?;
        } else {
            match std::fs::File::open(&p).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(io("cannot sync", &p, e)),
            }
        }
    }
    open::sync_dir(path)
}

impl Store {
    /// Rebuilds this node's database into a fresh directory, giving back the space of
    /// compacted history (as `etcdctl defrag` does for one member), then takes a Raft
    /// snapshot so the snapshot file drops that history too and the log before it goes.
    /// Reads and writes on this node wait while the database is copied. Returns the
    /// database's disk use afterwards.
    pub async fn defragment(&self) -> Result<DiskUse> {
        if self.is_shut_down() {
            return Err(Error::Shutdown);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            // Applies and reads wait: the copy is the state at one log id.
            let _revs = shared.revs.write().map_err(|_| poisoned())?;
            shared.database.defragment()
        })
        .await
        .map_err(|e| Error::Storage(format!("defragment task: {e}")))??;
        // The database is rebuilt whatever happens next; a snapshot that cannot be taken
        // now (shutting down, a busy replication holding the log) is taken by the policy.
        if let Err(e) = self.snapshot_now().await {
            tracing::warn!(error = %e, "no snapshot after defragmentation");
        }
        self.disk_use().await
    }

    /// Bytes of this node's database on disk and bytes of the records in it.
    pub async fn disk_use(&self) -> Result<DiskUse> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.database.disk_use())
            .await
            .map_err(|e| Error::Storage(format!("disk use task: {e}")))?
    }

    /// Takes a Raft snapshot of everything applied so far, waits until it is built, then
    /// drops the log it covers.
    async fn snapshot_now(&self) -> Result<()> {
        let applied = self.raft.metrics().borrow().last_applied;
        let Some(applied) = applied else {
            return Ok(());
        };
        let unavailable = |e: openraft::error::Fatal<_>| Error::Unavailable(e.to_string());
        self.raft.trigger().snapshot().await.map_err(unavailable)?;
        self.wait_index("snapshot", applied.index, |m| m.snapshot)
            .await?;
        // All of the log the snapshot covers goes (not only what the snapshot policy
        // would let go): a follower that is behind gets the snapshot, small now.
        self.raft
            .trigger()
            .purge_log(applied.index)
            .await
            .map_err(unavailable)?;
        self.wait_index("log purge", applied.index, |m| m.purged)
            .await
    }

    /// Waits until the log id `of` the metrics reaches `index`.
    async fn wait_index(
        &self,
        what: &str,
        index: u64,
        of: impl Fn(&openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> Option<LogId>
            + Send
            + 'static,
    ) -> Result<()> {
        self.raft
            .wait(Some(self.timeout))
            .metrics(
                move |m| of(m).is_some_and(|l| l.index >= index),
                format!("{what} after defragmentation"),
            )
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("no {what}: {e}")))
    }
}

/// Whether a database with this disk use is worth defragmenting: at least `ratio` times
/// its records on disk, and at least `min_bytes` to give back.
fn worth_it(usage: DiskUse, ratio: u64, min_bytes: u64) -> bool {
    ratio > 0
        && usage.on_disk >= usage.live.saturating_mul(ratio)
        && usage.on_disk.saturating_sub(usage.live) >= min_bytes
}

/// How long each member waits for the one before it in the defragmentation order.
const TURN: Duration = Duration::from_secs(30);

/// After each applied compaction, defragments the database when it is worth it.
pub(crate) async fn auto_defrag_loop(weak: WeakStore, ratio: u64, min_bytes: u64) {
    if ratio == 0 {
        return;
    }
    let Some(notify) = weak.upgrade().map(|s| s.shared.compacted_notify.clone()) else {
        return;
    };
    loop {
        // Holds no handle on the store while it waits (its database must close when the
        // store is dropped); wakes now and then to notice that.
        let woken = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
        let Some(store) = weak.upgrade() else {
            return;
        };
        if store.is_shut_down() {
            return;
        }
        if woken.is_err() {
            continue;
        }
        let usage = match store.disk_use().await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the database's disk use");
                continue;
            }
        };
        if !worth_it(usage, ratio, min_bytes) {
            continue;
        }
        // Every member compacts at the same entry; they take turns, by node id, so that
        // never more than one of them pauses for its copy (as etcd members are
        // defragmented one at a time).
        let mut ids: Vec<_> = store.members().iter().map(|m| m.id).collect();
        ids.sort_unstable();
        let turn = ids
            .iter()
            .position(|id| *id == store.node_id())
            .unwrap_or(0);
        let store = if turn > 0 {
            drop(store);
            tokio::time::sleep(TURN * turn as u32).await;
            match weak.upgrade() {
                Some(s) if !s.is_shut_down() => s,
                _ => return,
            }
        } else {
            store
        };
        tracing::info!(
            on_disk = usage.on_disk,
            live = usage.live,
            "defragmenting the store's database after compaction"
        );
        match store.defragment().await {
            Ok(after) => tracing::info!(on_disk = after.on_disk, "store defragmented"),
            Err(Error::Shutdown) => return,
            Err(e) => tracing::warn!(error = %e, "defragmentation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Config;
    use crate::types::{KeyValue, RangeRequest, WatchRequest};
    use futures::StreamExt;

    fn config(path: &Path, ratio: u64) -> Config {
        let mut c = Config::single_node(path);
        c.defrag_ratio = ratio;
        c.defrag_min_bytes = 0;
        c
    }

    /// `rounds` overwrites of `keys` keys with `size`-byte values, concurrently per round.
    async fn overwrite(store: &Store, keys: usize, rounds: usize, size: usize) {
        for round in 0..rounds {
            let mut tasks = Vec::new();
            for k in 0..keys {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    let value = vec![(round + k) as u8; size];
                    s.put(format!("/k/{k:04}").as_bytes(), &value, 0).await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
    }

    /// Opens the store at `path` again in this process. openraft lets go of the state
    /// machine (and so of sled's lock) a moment after `shutdown` returns; a new process
    /// would not wait.
    async fn reopen(path: &Path) -> Store {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match Store::open(config(path, 0)).await {
                Ok(store) => return store,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    async fn everything(store: &Store) -> Vec<KeyValue> {
        store.range(RangeRequest::prefix("/")).await.unwrap().kvs
    }

    fn db_dirs(data_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n == "db" || n.starts_with("db."))
            .collect();
        names.sort();
        names
    }

    /// A store with overwritten keys, compacted: most of its database is dead history.
    async fn compacted_store(path: &Path, ratio: u64) -> Store {
        let store = Store::open(config(path, ratio)).await.unwrap();
        overwrite(&store, 50, 40, 4096).await;
        store.compact(store.current_revision()).await.unwrap();
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn defragment_gives_space_back_and_keeps_every_record_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = compacted_store(&path, 0).await;
        let revision = store.current_revision();
        let before = store.disk_use().await.unwrap();
        let kvs = everything(&store).await;
        assert_eq!(kvs.len(), 50);

        let after = store.defragment().await.unwrap();
        assert!(
            after.on_disk * 4 < before.on_disk,
            "defragmentation gave nothing back: {before:?} -> {after:?}"
        );
        // Only Raft's bookkeeping records (purged log id, snapshot) may differ.
        assert!(
            after.live.abs_diff(before.live) < 1024,
            "{before:?} -> {after:?}"
        );
        assert_eq!(db_dirs(&path), ["db.1"], "the old database is removed");
        assert_eq!(everything(&store).await, kvs);
        assert_eq!(store.current_revision(), revision);
        let snap = std::fs::metadata(path.join("snapshots").join(crate::snapshot::CURRENT))
            .unwrap()
            .len();
        assert!(
            snap < after.live * 2,
            "the snapshot still holds compacted history: {snap} bytes"
        );
        // Reads, writes and watches go on against the new database.
        let mut watch = store
            .watch(WatchRequest::prefix("/k/", revision + 1))
            .await
            .unwrap();
        let put = store.put(b"/k/new", b"after", 0).await.unwrap();
        assert_eq!(put.revision, revision + 1);
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.kv.key, b"/k/new");
        let at = RangeRequest {
            revision,
            ..RangeRequest::prefix("/k/")
        };
        assert_eq!(
            store.range(at).await.unwrap().kvs,
            kvs,
            "the last revision is still readable"
        );
        store.shutdown().await.unwrap();
        drop((store, watch));

        let store = reopen(&path).await;
        assert_eq!(store.current_revision(), revision + 1);
        let mut expected = kvs.clone();
        expected.push(store.get(b"/k/new").await.unwrap().unwrap());
        expected.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(everything(&store).await, expected);
        // A second defragmentation takes the next generation.
        store.defragment().await.unwrap();
        assert_eq!(db_dirs(&path), ["db.2"]);
        store.shutdown().await.unwrap();
        drop(store);
        let store = reopen(&path).await;
        assert_eq!(everything(&store).await, expected);
        store.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_defragmentation_interrupted_anywhere_leaves_one_whole_store() {
        for (stop, survivor) in [
            (StopAt::HalfCopied, "db"),
            (StopAt::Copied, "db"),
            (StopAt::Switched, "db.1"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s");
            let store = compacted_store(&path, 0).await;
            let kvs = everything(&store).await;
            let revision = store.current_revision();
            let shared = store.shared.clone();
            let stopped = tokio::task::spawn_blocking(move || {
                let _revs = shared.revs.write().unwrap();
                shared.database.defragment_until(stop)
            })
            .await
            .unwrap();
            assert_eq!(stopped.is_ok(), stop == StopAt::Switched, "{stop:?}");
            assert_eq!(
                db_dirs(&path),
                ["db", "db.1"],
                "{stop:?}: both directories left"
            );
            store.shutdown().await.unwrap();
            drop(store);

            let store = reopen(&path).await;
            assert_eq!(
                db_dirs(&path),
                [survivor],
                "{stop:?}: the other one is removed"
            );
            assert_eq!(store.current_revision(), revision, "{stop:?}");
            assert_eq!(everything(&store).await, kvs, "{stop:?}");
            store.put(b"/k/more", b"v", 0).await.unwrap();
            store.defragment().await.unwrap();
            store.shutdown().await.unwrap();
            drop(store);
            let store = reopen(&path).await;
            assert_eq!(everything(&store).await.len(), kvs.len() + 1, "{stop:?}");
            store.shutdown().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_or_unnamed_database_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = compacted_store(&path, 0).await;
        store.defragment().await.unwrap();
        store.shutdown().await.unwrap();
        drop(store);
        let id_path = path.join(crate::IDENTITY_FILE);
        let identity = std::fs::read_to_string(&id_path).unwrap();

        std::fs::rename(path.join("db.1"), dir.path().join("aside")).unwrap();
        let err = Store::open(config(&path, 0)).await.err().unwrap();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(!path.join("db.1").exists(), "no empty database is made");
        std::fs::rename(dir.path().join("aside"), path.join("db.1")).unwrap();

        let outside = identity.replace("\"db.1\"", "\"../elsewhere\"");
        assert_ne!(outside, identity);
        std::fs::write(&id_path, outside).unwrap();
        let err = Store::open(config(&path, 0)).await.err().unwrap();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");

        // An identity file from before the switch (its rename lost) while only the new
        // directory is left: refused, the new directory kept.
        let before = identity
            .replace("\"format\":3", "\"format\":2")
            .replace(",\"db\":\"db.1\"", "");
        assert!(!before.contains("db.1"), "{before}");
        std::fs::write(&id_path, before).unwrap();
        let err = Store::open(config(&path, 0)).await.err().unwrap();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert_eq!(db_dirs(&path), ["db.1"]);

        std::fs::write(&id_path, &identity).unwrap();
        let store = reopen(&path).await;
        assert_eq!(everything(&store).await.len(), 50);
        store.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_that_leaves_mostly_dead_space_defragments_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = compacted_store(&path, 3).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while db_dirs(&path) != ["db.1"] {
            assert!(
                std::time::Instant::now() < deadline,
                "no defragmentation after the compaction: {:?}",
                db_dirs(&path)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let usage = store.disk_use().await.unwrap();
        assert!(
            !worth_it(usage, 3, 0) || usage.on_disk < 4 << 20,
            "{usage:?}"
        );
        // Little left to give back: the next compaction does not defragment again.
        store.put(b"/k/0000", b"v", 0).await.unwrap();
        store.compact(store.current_revision()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(db_dirs(&path), ["db.1"]);
        assert_eq!(everything(&store).await.len(), 50);
        store.shutdown().await.unwrap();
    }

    #[test]
    fn only_mostly_dead_databases_are_worth_defragmenting() {
        let usage = |on_disk, live| DiskUse { on_disk, live };
        assert!(worth_it(usage(400, 100), 4, 0));
        assert!(!worth_it(usage(399, 100), 4, 0));
        assert!(
            !worth_it(usage(400, 100), 4, 301),
            "too little to give back"
        );
        assert!(!worth_it(usage(400, 100), 0, 0), "0 turns it off");
        assert!(worth_it(usage(1, 0), 4, 0));
    }
}
