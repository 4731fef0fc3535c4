//! On-disk layout: every record lives in one sled tree under a one-byte prefix, so that a
//! whole write (state, history, events, bookkeeping) is one atomic sled batch.
//!
//! - `l` + key                → latest value of a live key ([`KeyValue`] without the key)
//! - `h` + esc(key) + rev     → the key as written at `rev` (or a tombstone), for past reads
//! - `e` + rev + seq          → the key changed by event `seq` of revision `rev`, for
//!   watch replay (the values come from the history)
//! - `w` + index              → a durable but not yet applied write (the write-ahead log)
//! - `L` + lease id           → a granted lease (its TTL)
//! - `m` + name               → metadata (revision, compaction point, identity)

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::types::{KeyValue, Revision};

/// Prefix of live keys.
pub const LATEST: u8 = b'l';
/// Prefix of key history.
pub const HISTORY: u8 = b'h';
/// Prefix of events by revision.
pub const EVENTS: u8 = b'e';
/// Prefix of leases.
pub const LEASES: u8 = b'L';
/// Prefix of metadata.
pub const META: u8 = b'm';

/// `l` + key.
pub fn latest_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(LATEST);
    k.extend_from_slice(key);
    k
}

/// Order-preserving escape of an arbitrary byte string, terminated so that no escaped key
/// is a prefix of another: 0x00 → 0x00 0xff, end → 0x00 0x01.
fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// `h` + esc(key); the start of the history of `key`.
pub fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 3);
    k.push(HISTORY);
    escape_into(&mut k, key);
    k
}

/// `h` + esc(key) + rev.
pub fn history_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut k = history_prefix(key);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// `h` + the escaped bytes of a range bound (unterminated, so it sorts before every
/// escaped key that starts with `bound`).
pub fn history_bound(bound: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(bound.len() + 1);
    k.push(HISTORY);
    for &b in bound {
        k.push(b);
        if b == 0 {
            k.push(0xff);
        }
    }
    k
}

/// Splits a history record key into (user key, revision).
pub fn split_history_key(k: &[u8]) -> Result<(Vec<u8>, Revision)> {
    let body = k.get(1..).ok_or_else(|| corrupt("short history key"))?;
    if body.len() < 10 {
        return Err(corrupt("short history key"));
    }
    let (esc, rev) = body.split_at(body.len() - 8);
    let rev = Revision::from_be_bytes(rev.try_into().map_err(|_| corrupt("history revision"))?);
    let mut key = Vec::with_capacity(esc.len());
    let mut i = 0;
    while i < esc.len() {
        let b = esc[i];
        if b == 0 {
            match esc.get(i + 1) {
                Some(0xff) => {
                    key.push(0);
                    i += 2;
                }
                Some(0x01) if i + 2 == esc.len() => return Ok((key, rev)),
                _ => return Err(corrupt("bad escape in history key")),
            }
        } else {
            key.push(b);
            i += 1;
        }
    }
    Err(corrupt("unterminated history key"))
}

/// `e` + rev + seq.
pub fn event_key(rev: Revision, seq: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(EVENTS);
    k.extend_from_slice(&rev.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `e` + rev: the first event key of revision `rev`.
pub fn event_rev_start(rev: Revision) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(EVENTS);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// `L` + id.
pub fn lease_key(id: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LEASES);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `m` + name.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(META);
    k.extend_from_slice(name.as_bytes());
    k
}

/// A stored key version: the [`KeyValue`] without its key; `None` marks a deletion.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredValue {
    /// create_revision.
    pub create_revision: Revision,
    /// mod_revision.
    pub mod_revision: Revision,
    /// version (0 = tombstone).
    pub version: i64,
    /// lease.
    pub lease: i64,
    /// value.
    #[serde(with = "crate::bytes_serde")]
    pub value: Vec<u8>,
}

impl StoredValue {
    /// Builds the full key-value.
    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// The stored form of `kv`.
    pub fn from_kv(kv: &KeyValue) -> Self {
        StoredValue {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value.clone(),
        }
    }
}

/// Serialises a record.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| Error::Storage(format!("encode: {e}")))
}

/// Deserialises a record; failure means the data directory is damaged.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    bincode::deserialize(b).map_err(|e| corrupt(&format!("undecodable record: {e}")))
}

/// Reads an i64 metadata value.
pub fn decode_i64(b: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(
        b.try_into().map_err(|_| corrupt("bad integer record"))?,
    ))
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_round_trip_and_keep_order() {
        let keys: Vec<&[u8]> = vec![b"a", b"a\0", b"a\0b", b"ab", b"b", b"\0", b"\xff"];
        for k in &keys {
            let (back, rev) = split_history_key(&history_key(k, 42)).unwrap();
            assert_eq!(&back, k);
            assert_eq!(rev, 42);
        }
        let mut sorted = keys.clone();
        sorted.sort();
        let mut enc: Vec<Vec<u8>> = keys.iter().map(|k| history_key(k, 7)).collect();
        enc.sort();
        let dec: Vec<Vec<u8>> = enc
            .iter()
            .map(|k| split_history_key(k).unwrap().0)
            .collect();
        assert_eq!(dec, sorted.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
        // Newer revisions of one key sort after older ones, before the next key.
        assert!(history_key(b"a", 1) < history_key(b"a", 2));
        assert!(history_key(b"a", i64::MAX) < history_key(b"a\0", 0));
        // Range bounds bracket exactly the keys inside them.
        assert!(history_bound(b"a") <= history_key(b"a", 0));
        assert!(history_bound(b"b") > history_key(b"ab", i64::MAX));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert!(split_history_key(b"h").is_err());
        assert!(split_history_key(b"habc\x00\x02\0\0\0\0\0\0\0\x01").is_err());
        assert!(decode::<StoredValue>(b"\x01").is_err());
        assert!(decode_i64(b"\x01\x02").is_err());
    }
}
