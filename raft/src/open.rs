//! Opening a store's data directory: its identity file says which cluster and node it
//! belongs to, the sled database inside is checked against it, and anything damaged or
//! foreign is refused with a message, never reset. Directories of the first, unreplicated
//! format are carried over (their logged writes applied) before Raft takes over.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::mvcc::{self, Revisions, WriteRequest};
use crate::store::Config;

/// Name of the file that marks a directory as a pikube store and records whose it is.
pub const IDENTITY_FILE: &str = "pikube-store.json";

/// Format version of the on-disk layout: 2 = Raft log and state machine.
const FORMAT: u32 = 2;

/// Format 2 with the sled directory named in the identity file (a defragmentation
/// rebuilt it under a new name). Older binaries refuse it rather than open `db/`.
const FORMAT_NAMED_DB: u32 = 3;

/// The sled directory of a store that was never defragmented.
const FIRST_DB: &str = "db";

/// How often sled writes the state machine out: applied entries stay in the Raft log
/// until a snapshot (which flushes first), so a crash only means applying a few again.
const SM_FLUSH_MS: u64 = 500;

/// The first format: a private write-ahead log instead of a Raft log.
const FORMAT_UNREPLICATED: u32 = 1;

/// What the identity file records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    format: u32,
    cluster_id: String,
    node_id: u64,
    /// The sled directory in use, when not [`FIRST_DB`] (format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    db: Option<String>,
}

/// Whether `name` is a sled directory name a defragmentation gives: `db.<generation>`.
fn is_rebuilt_db(name: &str) -> bool {
    name.strip_prefix("db.")
        .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
}

/// The generation of a sled directory name: 0 for [`FIRST_DB`], `n` for `db.<n>`.
pub(crate) fn db_generation(name: &str) -> u64 {
    name.strip_prefix("db.")
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

impl Identity {
    /// The name of the sled directory in use.
    fn db_dir(&self, id_path: &Path) -> Result<String> {
        match (&self.db, self.format) {
            (Some(name), FORMAT_NAMED_DB) if is_rebuilt_db(name) => Ok(name.clone()),
            (None, FORMAT | FORMAT_UNREPLICATED) => Ok(FIRST_DB.to_string()),
            _ => Err(Error::Corrupt(format!(
                "{} names no valid database directory",
                id_path.display()
            ))),
        }
    }
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
            if ![FORMAT, FORMAT_NAMED_DB, FORMAT_UNREPLICATED].contains(&id.format) {
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
                db: None,
            };
            write_identity(dir, &id)?;
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

/// The cluster id and node id recorded in the store directory `dir`, if it holds a store.
pub fn read_identity(dir: &Path) -> Result<Option<(String, u64)>> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{} is unreadable: {e}", path.display())))?;
            Ok(Some((id.cluster_id, id.node_id)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", &path, e)),
    }
}

/// Writes the identity file atomically and durably (a temporary file, synced, renamed
/// over it, the directory synced): a crash leaves the old file or the new one.
fn write_identity(dir: &Path, id: &Identity) -> Result<()> {
    let id_path = dir.join(IDENTITY_FILE);
    let bytes = serde_json::to_vec(id).map_err(|e| Error::Storage(e.to_string()))?;
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot write", &tmp, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, &id_path).map_err(|e| io("cannot write", &id_path, e))?;
    sync_dir(dir)
}

/// Makes the entries of directory `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

fn load_identity(dir: &Path) -> Result<Identity> {
    let id_path = dir.join(IDENTITY_FILE);
    let bytes = std::fs::read(&id_path).map_err(|e| io("cannot read", &id_path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{} is unreadable: {e}", id_path.display())))
}

/// The sled directory the identity file of `dir` names now.
pub(crate) fn named_db(dir: &Path) -> Result<String> {
    load_identity(dir)?.db_dir(&dir.join(IDENTITY_FILE))
}

/// Records in the identity file of `dir` that the sled database is now in the directory
/// `name`: the moment a defragmentation takes effect.
pub(crate) fn switch_db(dir: &Path, name: &str) -> Result<()> {
    let mut id = load_identity(dir)?;
    if !is_rebuilt_db(name) {
        return Err(Error::InvalidArgument(format!(
            "{name} is not a database directory name"
        )));
    }
    id.format = FORMAT_NAMED_DB;
    id.db = Some(name.to_string());
    write_identity(dir, &id)
}

/// Opens (or creates) the sled database at `path` with the store's settings.
pub(crate) fn open_sled(path: &Path, cache_capacity: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .flush_every_ms(Some(SM_FLUSH_MS))
        .open()
}

/// Whether `dir` holds a directory a defragmentation made.
fn has_rebuilt_db(dir: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))?;
    Ok(entries
        .flatten()
        .any(|e| is_rebuilt_db(&e.file_name().to_string_lossy())))
}

/// Removes sled directories other than `active`: what an interrupted defragmentation
/// left (a half-built new one, or the old one not yet removed). Only the directory the
/// identity file names is the store.
fn remove_stale_dbs(dir: &Path, active: &str) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))? {
        let entry = entry.map_err(|e| io("cannot read", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name != active && (name == FIRST_DB || is_rebuilt_db(&name)) {
            tracing::warn!(dir = %entry.path().display(), "removing a database an interrupted defragmentation left");
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| io("cannot remove", &entry.path(), e))?;
        }
    }
    Ok(())
}

/// What an opened data directory gives the store.
pub(crate) struct Opened {
    pub db: sled::Db,
    pub cluster_id: String,
    /// Name of the sled directory in the data directory.
    pub db_name: String,
}

/// Checks and opens the data directory (blocking).
pub(crate) fn open_blocking(config: &Config) -> Result<Opened> {
    let mut id = check_identity(config)?;
    let db_name = id.db_dir(&config.data_dir.join(IDENTITY_FILE))?;
    let db_path = config.data_dir.join(&db_name);
    let fresh = !db_path.exists();
    if fresh && (id.db.is_some() || has_rebuilt_db(&config.data_dir)?) {
        return Err(Error::Corrupt(format!(
            "{} is missing: refusing to start from an empty store",
            db_path.display()
        )));
    }
    let db = open_sled(&db_path, config.cache_capacity_bytes)
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
    // Only once the named database opened and proved to be this cluster's: a damaged
    // one leaves everything in place for whoever repairs it.
    remove_stale_dbs(&config.data_dir, &db_name)?;
    if id.format == FORMAT_UNREPLICATED {
        carry_over_unreplicated(&db, &tree)?;
        id.format = FORMAT;
        write_identity(&config.data_dir, &id)?;
    }
    drop(tree);
    Ok(Opened {
        db,
        cluster_id: id.cluster_id,
        db_name,
    })
}

/// Prefix of the first format's write-ahead log records: `w` + index.
const WAL: u8 = b'w';

/// Applies the writes the first format had logged but not applied, then drops its log,
/// so the tree is a plain state machine from which Raft continues.
fn carry_over_unreplicated(db: &sled::Db, tree: &sled::Tree) -> Result<()> {
    let mut revs = Revisions {
        current: read_meta_i64(tree, "revision")?.unwrap_or(0),
        compacted: read_meta_i64(tree, "compacted")?.unwrap_or(0),
    };
    let applied = read_meta_i64(tree, "applied")?.unwrap_or(0) as u64;
    let mut pending = Vec::new();
    for item in tree.scan_prefix([WAL]) {
        let (k, v) = item.map_err(storage)?;
        let idx = u64::from_be_bytes(
            k[1..]
                .try_into()
                .map_err(|_| Error::Corrupt("bad log key".into()))?,
        );
        pending.push((k, idx, codec::decode::<WriteRequest>(&v)?));
    }
    for (key, idx, req) in pending {
        let mut batch = sled::Batch::default();
        if idx > applied {
            let (_, b) = mvcc::apply(tree, &mut revs, &req, batch)?;
            batch = b;
        }
        batch.remove(key);
        tree.apply_batch(batch).map_err(storage)?;
    }
    tree.remove(codec::meta_key("applied")).map_err(storage)?;
    db.flush().map_err(storage)?;
    Ok(())
}

/// Creates the store of a new one-node cluster in the empty `config.data_dir` from a saved
/// snapshot. The identity file is written last: a restore that fails half-way leaves a
/// directory that open refuses, never a store that silently misses data.
pub(crate) fn restore_blocking(config: &Config, snapshot_path: &Path) -> Result<()> {
    let dir = &config.data_dir;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty: a snapshot is restored into an empty data directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let db_path = dir.join(FIRST_DB);
    let db = open_sled(&db_path, config.cache_capacity_bytes)
        .map_err(|e| Error::Storage(format!("cannot create {}: {e}", db_path.display())))?;
    let tree = db.open_tree("store").map_err(storage)?;
    let cluster_id = crate::snapshot::restore(&db, &tree, snapshot_path)?;
    drop(tree);
    drop(db);
    write_identity(
        dir,
        &Identity {
            format: FORMAT,
            cluster_id,
            node_id: config.node_id,
            db: None,
        },
    )
}
