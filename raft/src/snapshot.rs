//! Snapshot files: a header with the snapshot's Raft metadata, then every record of the
//! state machine's sled tree. Built while applies wait, so the file is exactly the state at
//! its last log id; installed by replacing the tree's contents, crash-safely (an
//! "installing" mark makes an interrupted install start over at the next open).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec;
use crate::consensus::{LogId, SnapshotMeta, StoredMembership};
use crate::error::{Error, Result};

const MAGIC: &[u8; 12] = b"PIKUBESNAP1\n";
const END: u32 = u32::MAX;
/// Records inserted per sled batch while installing.
const INSTALL_BATCH: usize = 4096;

/// Name of the installed (or last built) snapshot inside the snapshot directory.
pub const CURRENT: &str = "current.snap";

/// Meta record: the last applied log id of the state machine.
pub const APPLIED: &str = "raft-applied";
/// Meta record: the last applied membership.
pub const MEMBERSHIP: &str = "raft-membership";
/// Meta record: a snapshot install is under way.
pub const INSTALLING: &str = "raft-installing";

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn sled_err(e: sled::Error) -> Error {
    Error::Storage(e.to_string())
}

/// Reads the applied log id and membership recorded in the state machine tree.
pub fn applied_state(tree: &sled::Tree) -> Result<(Option<LogId>, StoredMembership)> {
    let applied = match tree.get(codec::meta_key(APPLIED)).map_err(sled_err)? {
        Some(v) => codec::decode::<Option<LogId>>(&v)?,
        None => None,
    };
    let membership = match tree.get(codec::meta_key(MEMBERSHIP)).map_err(sled_err)? {
        Some(v) => codec::decode::<StoredMembership>(&v)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Writes the whole tree as a snapshot into `dir`, then moves it into place as
/// [`CURRENT`]. The caller holds the lock that keeps applies out.
pub fn build(tree: &sled::Tree, dir: &Path) -> Result<(SnapshotMeta, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let (applied, membership) = applied_state(tree)?;
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: format!(
            "{}-{}-{:08x}",
            applied.map(|l| l.leader_id.term).unwrap_or(0),
            applied.map(|l| l.index).unwrap_or(0),
            rand::random::<u32>()
        ),
    };
    let tmp = dir.join(format!("building-{:08x}", rand::random::<u32>()));
    let result = write_file(tree, &meta, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let current = dir.join(CURRENT);
    std::fs::rename(&tmp, &current).map_err(|e| io("cannot move snapshot to", &current, e))?;
    sync_dir(dir)?;
    Ok((meta, current))
}

/// Writes a consistent copy of the tree to `path` (through a temporary file next to it),
/// for `pikube snapshot save`. The caller holds the lock that keeps applies out.
pub fn save(tree: &sled::Tree, path: &Path) -> Result<SnapshotMeta> {
    let (applied, membership) = applied_state(tree)?;
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: format!("saved-{:08x}", rand::random::<u32>()),
    };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    if let Err(e) = write_file(tree, &meta, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| io("cannot write", path, e))?;
    Ok(meta)
}

fn write_file(tree: &sled::Tree, meta: &SnapshotMeta, path: &Path) -> Result<()> {
    let f = File::create(path).map_err(|e| io("cannot create", path, e))?;
    let mut w = BufWriter::with_capacity(1 << 16, f);
    let werr = |e| io("cannot write", path, e);
    let header = codec::encode(meta)?;
    w.write_all(MAGIC).map_err(werr)?;
    w.write_all(&(header.len() as u64).to_be_bytes())
        .map_err(werr)?;
    w.write_all(&header).map_err(werr)?;
    for item in tree.iter() {
        let (k, v) = item.map_err(sled_err)?;
        if k.as_ref() == codec::meta_key(INSTALLING).as_slice() {
            continue;
        }
        w.write_all(&(k.len() as u32).to_be_bytes()).map_err(werr)?;
        w.write_all(&k).map_err(werr)?;
        w.write_all(&(v.len() as u32).to_be_bytes()).map_err(werr)?;
        w.write_all(&v).map_err(werr)?;
    }
    w.write_all(&END.to_be_bytes()).map_err(werr)?;
    let f = w
        .into_inner()
        .map_err(|e| io("cannot write", path, e.into_error()))?;
    f.sync_all().map_err(werr)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::Corrupt(format!("snapshot {} is damaged: {what}", path.display()))
}

fn read_header(r: &mut impl Read, path: &Path) -> Result<SnapshotMeta> {
    let mut magic = [0u8; 12];
    r.read_exact(&mut magic)
        .map_err(|_| corrupt(path, "too short"))?;
    if &magic != MAGIC {
        return Err(corrupt(path, "not a pikube snapshot"));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|_| corrupt(path, "truncated header"))?;
    let len = u64::from_be_bytes(len);
    if len > 64 << 20 {
        return Err(corrupt(path, "header too large"));
    }
    let mut header = vec![0u8; len as usize];
    r.read_exact(&mut header)
        .map_err(|_| corrupt(path, "truncated header"))?;
    codec::decode(&header)
}

/// Reads the metadata of the snapshot at `path`.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta> {
    let f = File::open(path).map_err(|e| io("cannot open", path, e))?;
    read_header(&mut BufReader::new(f), path)
}

fn read_chunk(r: &mut impl Read, path: &Path) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| corrupt(path, "truncated"))?;
    let len = u32::from_be_bytes(len);
    if len == END {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|_| corrupt(path, "truncated record"))?;
    Ok(Some(buf))
}

/// Replaces the contents of `tree` with the snapshot at `path`. The install mark is set
/// first and removed last, so a crash in between repeats the install at the next open.
pub fn install(db: &sled::Db, tree: &sled::Tree, path: &Path) -> Result<SnapshotMeta> {
    let f = File::open(path).map_err(|e| io("cannot open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let meta = read_header(&mut r, path)?;
    let mark = codec::meta_key(INSTALLING);
    tree.insert(&mark, &b"1"[..]).map_err(sled_err)?;
    db.flush().map_err(sled_err)?;
    let mut batch = sled::Batch::default();
    for item in tree.iter() {
        let (k, _) = item.map_err(sled_err)?;
        if k.as_ref() != mark.as_slice() {
            batch.remove(k);
        }
    }
    tree.apply_batch(batch).map_err(sled_err)?;
    load_records(tree, &mut r, path, false)?;
    let (applied, _) = applied_state(tree)?;
    if applied != meta.last_log_id {
        return Err(corrupt(path, "its records do not match its header"));
    }
    tree.remove(&mark).map_err(sled_err)?;
    db.flush().map_err(sled_err)?;
    Ok(meta)
}

/// Inserts the records that follow the header, in batches. With `fresh_cluster`, the
/// Raft records (applied log id, membership) are left out: the data starts a new cluster.
fn load_records(
    tree: &sled::Tree,
    r: &mut impl Read,
    path: &Path,
    fresh_cluster: bool,
) -> Result<()> {
    let skip = [codec::meta_key(APPLIED), codec::meta_key(MEMBERSHIP)];
    let mut batch = sled::Batch::default();
    let mut n = 0;
    while let Some(k) = read_chunk(r, path)? {
        let v = read_chunk(r, path)?.ok_or_else(|| corrupt(path, "key without value"))?;
        if fresh_cluster && skip.iter().any(|s| s.as_slice() == k.as_slice()) {
            continue;
        }
        batch.insert(k, v);
        n += 1;
        if n % INSTALL_BATCH == 0 {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_err)?;
        }
    }
    tree.apply_batch(batch).map_err(sled_err)
}

/// Fills an empty tree from the saved snapshot at `path` as the start of a new cluster
/// (`pikube snapshot restore`); returns the cluster id recorded in it.
pub fn restore(db: &sled::Db, tree: &sled::Tree, path: &Path) -> Result<String> {
    let f = File::open(path).map_err(|e| io("cannot open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    read_header(&mut r, path)?;
    load_records(tree, &mut r, path, true)?;
    let cluster = tree
        .get(codec::meta_key("cluster"))
        .map_err(sled_err)?
        .ok_or_else(|| corrupt(path, "it names no cluster"))?;
    db.flush().map_err(sled_err)?;
    Ok(String::from_utf8_lossy(&cluster).into_owned())
}

/// Whether an install was interrupted (the tree must then be reloaded from [`CURRENT`]).
pub fn install_interrupted(tree: &sled::Tree) -> Result<bool> {
    Ok(tree
        .get(codec::meta_key(INSTALLING))
        .map_err(sled_err)?
        .is_some())
}
