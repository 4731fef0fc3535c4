//! Opening a store's data directory: its identity file says which cluster and node it
//! belongs to, the sled database inside is checked against it, and anything damaged or
//! foreign is refused with a message, never reset. Directories of the first, unreplicated
//! format are carried over (their logged writes applied) before Raft takes over.

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
            if id.format != FORMAT && id.format != FORMAT_UNREPLICATED {
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

fn write_identity(dir: &Path, id: &Identity) -> Result<()> {
    let id_path = dir.join(IDENTITY_FILE);
    let bytes = serde_json::to_vec(id).map_err(|e| Error::Storage(e.to_string()))?;
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, &id_path).map_err(|e| io("cannot write", &id_path, e))
}

/// What an opened data directory gives the store.
pub(crate) struct Opened {
    pub db: sled::Db,
    pub tree: sled::Tree,
    pub cluster_id: String,
}

/// Checks and opens the data directory (blocking).
pub(crate) fn open_blocking(config: &Config) -> Result<Opened> {
    let mut id = check_identity(config)?;
    let db_path = config.data_dir.join("db");
    let fresh = !db_path.exists();
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(config.cache_capacity_bytes)
        .flush_every_ms(Some(SM_FLUSH_MS))
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
    if id.format == FORMAT_UNREPLICATED {
        carry_over_unreplicated(&db, &tree)?;
        id.format = FORMAT;
        write_identity(&config.data_dir, &id)?;
    }
    Ok(Opened {
        db,
        tree,
        cluster_id: id.cluster_id,
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
    let db_path = dir.join("db");
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(config.cache_capacity_bytes)
        .flush_every_ms(Some(SM_FLUSH_MS))
        .open()
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
        },
    )
}
