//! The MVCC state machine: applies writes to sled as one atomic batch each and answers
//! reads at the current or a past revision.
//!
//! Deterministic: the same sequence of [`WriteRequest`]s always gives the same state, so
//! it can sit under a replicated log.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::codec::{self, StoredValue};
use crate::error::{Error, Result};
use crate::types::*;

/// A write, as recorded in the log before it is applied.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteRequest {
    /// A transaction (puts and deletes are one-operation transactions).
    Txn(TxnRequest),
    /// Grant a lease with a caller-chosen id.
    LeaseGrant { id: LeaseId, ttl_seconds: i64 },
    /// Revoke a lease and delete its keys.
    LeaseRevoke { id: LeaseId },
    /// Drop history older than `revision`.
    Compact { revision: Revision },
}

/// The answer to an applied [`WriteRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteResponse {
    /// A transaction's result.
    Txn(TxnResponse),
    /// A granted lease.
    Lease(Lease),
    /// A revocation or a compaction.
    Done,
}

/// A write's answer and the events it produced.
pub struct Applied {
    /// What the caller gets.
    pub response: Result<WriteResponse>,
    /// Events to publish to watchers, in order.
    pub events: Vec<Event>,
}

/// Revision bookkeeping kept in memory and in `m/` records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Revisions {
    /// Highest applied revision.
    pub current: Revision,
    /// Compaction point: history before it is gone.
    pub compacted: Revision,
}

/// Prefix of the lease→key index: `k` + lease + key.
const LEASE_KEYS: u8 = b'k';

fn lease_key_index(lease: LeaseId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 9);
    k.push(LEASE_KEYS);
    k.extend_from_slice(&lease.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Checks the limits of a transaction before it is proposed.
pub fn validate_txn(txn: &TxnRequest) -> Result<()> {
    let ops = txn.success.len() + txn.failure.len();
    if ops > MAX_TXN_OPS {
        return Err(Error::TxnTooLarge(format!(
            "{ops} operations, limit is {MAX_TXN_OPS}"
        )));
    }
    let mut bytes = 0usize;
    for c in &txn.compare {
        if c.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        bytes += c.key.len();
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Put { key, value, .. } => {
                if key.is_empty() {
                    return Err(Error::EmptyKey);
                }
                if value.len() > MAX_VALUE_BYTES {
                    return Err(Error::ValueTooLarge {
                        size: value.len(),
                        max: MAX_VALUE_BYTES,
                    });
                }
                bytes += key.len() + value.len();
            }
            Op::Delete { key } | Op::DeleteRange { key, .. } => {
                if key.is_empty() {
                    return Err(Error::EmptyKey);
                }
                bytes += key.len();
            }
            Op::Range(r) => {
                if r.key.is_empty() {
                    return Err(Error::EmptyKey);
                }
            }
        }
    }
    if bytes > MAX_TXN_BYTES {
        return Err(Error::TxnTooLarge(format!(
            "{bytes} bytes, limit is {MAX_TXN_BYTES}"
        )));
    }
    Ok(())
}

fn storage(e: sled::Error) -> Error {
    match e {
        sled::Error::Corruption { .. } => Error::Corrupt(e.to_string()),
        other => Error::Storage(other.to_string()),
    }
}

/// Reads the live value of `key`.
pub fn get_latest(tree: &sled::Tree, key: &[u8]) -> Result<Option<KeyValue>> {
    match tree.get(codec::latest_key(key)).map_err(storage)? {
        Some(v) => Ok(Some(
            codec::decode::<StoredValue>(&v)?.into_kv(key.to_vec()),
        )),
        None => Ok(None),
    }
}

fn latest_bounds(key: &[u8], range_end: &Option<Vec<u8>>) -> (Vec<u8>, Bound<Vec<u8>>) {
    let start = codec::latest_key(key);
    let end = match range_end {
        None => Bound::Included(start.clone()),
        Some(e) if e.is_empty() => Bound::Excluded(vec![codec::LATEST + 1]),
        Some(e) => Bound::Excluded(codec::latest_key(e)),
    };
    (start, end)
}

/// Reads a range of live keys.
pub fn range_latest(
    tree: &sled::Tree,
    req: &RangeRequest,
    revision: Revision,
) -> Result<RangeResponse> {
    let (start, end) = latest_bounds(&req.key, &req.range_end);
    let mut out = RangeResponse {
        revision,
        ..Default::default()
    };
    for item in tree.range((Bound::Included(start), end)) {
        let (k, v) = item.map_err(storage)?;
        out.count += 1;
        if req.count_only || (req.limit > 0 && out.kvs.len() >= req.limit) {
            continue;
        }
        let mut kv = codec::decode::<StoredValue>(&v)?.into_kv(k[1..].to_vec());
        if req.keys_only {
            kv.value.clear();
        }
        out.kvs.push(kv);
    }
    out.more = (out.kvs.len() as i64) < out.count && !req.count_only;
    Ok(out)
}

/// Reads a range as it was at revision `at` (which must not be compacted).
pub fn range_at(
    tree: &sled::Tree,
    req: &RangeRequest,
    at: Revision,
    current: Revision,
) -> Result<RangeResponse> {
    let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
        match &req.range_end {
            None => Box::new(tree.scan_prefix(codec::history_prefix(&req.key))),
            Some(e) => {
                let start = codec::history_bound(&req.key);
                let end = if e.is_empty() {
                    vec![codec::HISTORY + 1]
                } else {
                    codec::history_bound(e)
                };
                Box::new(tree.range(start..end))
            }
        };
    let mut out = RangeResponse {
        revision: current,
        ..Default::default()
    };
    let mut pending: Option<(Vec<u8>, Option<StoredValue>)> = None;
    let flush = |pending: Option<(Vec<u8>, Option<StoredValue>)>, out: &mut RangeResponse| {
        if let Some((key, Some(sv))) = pending {
            if sv.version > 0 {
                out.count += 1;
                if !req.count_only && (req.limit == 0 || out.kvs.len() < req.limit) {
                    let mut kv = sv.into_kv(key);
                    if req.keys_only {
                        kv.value.clear();
                    }
                    out.kvs.push(kv);
                }
            }
        }
    };
    for item in iter {
        let (k, v) = item.map_err(storage)?;
        let (key, rev) = codec::split_history_key(&k)?;
        let same = pending.as_ref().map(|(p, _)| *p == key).unwrap_or(false);
        if !same {
            flush(pending.take(), &mut out);
            pending = Some((key, None));
        }
        if rev <= at {
            if let Some((_, slot)) = pending.as_mut() {
                *slot = Some(codec::decode(&v)?);
            }
        }
    }
    flush(pending.take(), &mut out);
    out.more = (out.kvs.len() as i64) < out.count && !req.count_only;
    Ok(out)
}

/// Rebuilds the event of `key` at `rev` from its history: the version written at `rev`
/// (a tombstone means a deletion) and the version before it.
fn event_from_history(tree: &sled::Tree, key: Vec<u8>, rev: Revision) -> Result<Event> {
    let at = tree
        .get(codec::history_key(&key, rev))
        .map_err(storage)?
        .ok_or(Error::Compacted {
            requested: rev,
            compacted: rev,
        })?;
    let sv: StoredValue = codec::decode(&at)?;
    let kind = if sv.version == 0 {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    let prev = match tree
        .range(codec::history_key(&key, 0)..codec::history_key(&key, rev))
        .next_back()
    {
        Some(item) => {
            let (_, v) = item.map_err(storage)?;
            let p: StoredValue = codec::decode(&v)?;
            (p.version > 0).then(|| p.into_kv(key.clone()))
        }
        None => None,
    };
    Ok(Event {
        kind,
        kv: sv.into_kv(key),
        prev_kv: prev,
    })
}

/// Reads the events of revisions `[from, to)` in order: about `max` of them, always whole
/// revisions. The second value tells whether it stopped early (more remain).
pub fn events_between(
    tree: &sled::Tree,
    from: Revision,
    to: Revision,
    max: usize,
) -> Result<(Vec<Event>, bool)> {
    let mut out: Vec<Event> = Vec::new();
    for item in tree.range(codec::event_rev_start(from)..codec::event_rev_start(to)) {
        let (k, key) = item.map_err(storage)?;
        let rev = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(Revision::from_be_bytes)
            .ok_or_else(|| Error::Corrupt("bad event key".into()))?;
        if out.len() >= max && out.last().map(|l| l.kv.mod_revision) != Some(rev) {
            return Ok((out, true));
        }
        out.push(event_from_history(tree, key.to_vec(), rev)?);
    }
    Ok((out, false))
}

/// A transaction in progress: its writes so far, visible to its own later operations.
struct TxnWriter<'a> {
    tree: &'a sled::Tree,
    revision: Revision,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    batch: sled::Batch,
    events: Vec<Event>,
}

impl<'a> TxnWriter<'a> {
    fn new(tree: &'a sled::Tree, revision: Revision, batch: sled::Batch) -> Self {
        TxnWriter {
            tree,
            revision,
            overlay: BTreeMap::new(),
            batch,
            events: Vec::new(),
        }
    }

    fn current(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => get_latest(self.tree, key),
        }
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let mut base = range_latest(
            self.tree,
            &RangeRequest {
                limit: 0,
                ..req.clone()
            },
            self.revision,
        )?;
        if self.overlay.is_empty() {
            base.kvs.truncate(if req.limit == 0 {
                usize::MAX
            } else {
                req.limit
            });
            base.more = (base.kvs.len() as i64) < base.count && !req.count_only;
            return Ok(base);
        }
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = base
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        let in_range = |k: &[u8]| match &req.range_end {
            None => k == req.key.as_slice(),
            Some(e) => k >= req.key.as_slice() && (e.is_empty() || k < e.as_slice()),
        };
        for (k, v) in &self.overlay {
            if !in_range(k) {
                continue;
            }
            match v {
                Some(kv) => merged.insert(k.clone(), kv.clone()),
                None => merged.remove(k),
            };
        }
        let count = merged.len() as i64;
        let mut kvs: Vec<KeyValue> = if req.count_only {
            Vec::new()
        } else {
            merged.into_values().collect()
        };
        if req.limit > 0 {
            kvs.truncate(req.limit);
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        let more = (kvs.len() as i64) < count && !req.count_only;
        Ok(RangeResponse {
            kvs,
            more,
            count,
            revision: self.revision,
        })
    }

    /// A key may be written once per transaction (as in etcd): its history keeps one
    /// version per revision.
    fn check_once(&self, key: &[u8]) -> Result<()> {
        if self.overlay.contains_key(key) {
            return Err(Error::InvalidArgument(format!(
                "duplicate key given in txn request: {}",
                String::from_utf8_lossy(key)
            )));
        }
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<Option<KeyValue>> {
        self.check_once(key)?;
        if lease != 0
            && self
                .tree
                .get(codec::lease_key(lease))
                .map_err(storage)?
                .is_none()
        {
            return Err(Error::LeaseNotFound(lease));
        }
        let prev = self.current(key)?;
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev
                .as_ref()
                .map(|p| p.create_revision)
                .unwrap_or(self.revision),
            mod_revision: self.revision,
            version: prev.as_ref().map(|p| p.version + 1).unwrap_or(1),
            lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.batch.remove(lease_key_index(p.lease, key));
            }
        }
        if lease != 0 {
            self.batch.insert(lease_key_index(lease, key), &[][..]);
        }
        let stored = codec::encode(&StoredValue::from_kv(&kv))?;
        self.batch.insert(codec::latest_key(key), stored.clone());
        self.batch
            .insert(codec::history_key(key, self.revision), stored);
        self.events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev_kv: prev.clone(),
        });
        self.overlay.insert(key.to_vec(), Some(kv));
        Ok(prev)
    }

    fn delete(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.check_once(key)?;
        let Some(prev) = self.current(key)? else {
            return Ok(None);
        };
        if prev.lease != 0 {
            self.batch.remove(lease_key_index(prev.lease, key));
        }
        let tomb = KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: self.revision,
            version: 0,
            lease: 0,
        };
        self.batch.remove(codec::latest_key(key));
        self.batch.insert(
            codec::history_key(key, self.revision),
            codec::encode(&StoredValue::from_kv(&tomb))?,
        );
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: tomb,
            prev_kv: Some(prev.clone()),
        });
        self.overlay.insert(key.to_vec(), None);
        Ok(Some(prev))
    }

    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let req = RangeRequest {
            key: key.to_vec(),
            range_end: Some(range_end.to_vec()),
            keys_only: true,
            ..Default::default()
        };
        let keys: Vec<Vec<u8>> = self.range(&req)?.kvs.into_iter().map(|kv| kv.key).collect();
        let mut deleted = Vec::new();
        for k in keys {
            if let Some(prev) = self.delete(&k)? {
                deleted.push(prev);
            }
        }
        Ok(deleted)
    }
}

fn compare_holds(cur: Option<&KeyValue>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::ModRevision(v) => cur.map(|k| k.mod_revision).unwrap_or(0).cmp(v),
        CompareTarget::CreateRevision(v) => cur.map(|k| k.create_revision).unwrap_or(0).cmp(v),
        CompareTarget::Version(v) => cur.map(|k| k.version).unwrap_or(0).cmp(v),
        CompareTarget::Value(v) => match cur {
            Some(k) => k.value.as_slice().cmp(v.as_slice()),
            None => return false,
        },
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Less => ord == Ordering::Less,
        CompareOp::Greater => ord == Ordering::Greater,
    }
}

/// The answer to a write refused at apply time: nothing is written.
fn rejected(e: Error) -> Result<(Applied, sled::Batch)> {
    Ok((
        Applied {
            response: Err(e),
            events: Vec::new(),
        },
        sled::Batch::default(),
    ))
}

/// Finishes a write: records its events (the changed keys, by revision) and the new
/// revision when it changed anything.
fn seal(w: TxnWriter<'_>, revs: &mut Revisions) -> (sled::Batch, Vec<Event>) {
    let mut batch = w.batch;
    if !w.events.is_empty() {
        for (seq, ev) in w.events.iter().enumerate() {
            batch.insert(
                codec::event_key(w.revision, seq as u32),
                ev.kv.key.as_slice(),
            );
        }
        batch.insert(codec::meta_key("revision"), &w.revision.to_be_bytes()[..]);
        revs.current = w.revision;
    }
    (batch, w.events)
}

/// Applies one write at `revs.current + 1`; the returned batch (when `Some`) must be
/// applied to the tree together with whatever bookkeeping the caller adds to it.
pub fn apply(
    tree: &sled::Tree,
    revs: &mut Revisions,
    req: &WriteRequest,
    mut batch: sled::Batch,
) -> Result<(Applied, sled::Batch)> {
    let next = revs.current + 1;
    match req {
        WriteRequest::Txn(txn) => {
            let mut ok = true;
            for c in &txn.compare {
                if !compare_holds(get_latest(tree, &c.key)?.as_ref(), c) {
                    ok = false;
                    break;
                }
            }
            let ops = if ok { &txn.success } else { &txn.failure };
            let mut w = TxnWriter::new(tree, next, batch);
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                let r = match op {
                    Op::Put { key, value, lease } => w
                        .put(key, value, *lease)
                        .map(|prev| OpResponse::Put { prev }),
                    Op::Delete { key } => w.delete(key).map(|d| OpResponse::Delete {
                        deleted: d.into_iter().collect(),
                    }),
                    Op::DeleteRange { key, range_end } => w
                        .delete_range(key, range_end)
                        .map(|deleted| OpResponse::Delete { deleted }),
                    Op::Range(r) => w.range(r).map(OpResponse::Range),
                };
                match r {
                    Ok(r) => responses.push(r),
                    Err(e) => {
                        return rejected(e);
                    }
                }
            }
            let (batch, events) = seal(w, revs);
            if events.is_empty() {
                // Reads inside a read-only transaction report the unchanged revision.
                for r in responses.iter_mut() {
                    if let OpResponse::Range(rr) = r {
                        rr.revision = revs.current;
                    }
                }
            }
            let response = TxnResponse {
                succeeded: ok,
                revision: revs.current,
                responses,
            };
            Ok((
                Applied {
                    response: Ok(WriteResponse::Txn(response)),
                    events,
                },
                batch,
            ))
        }
        WriteRequest::LeaseGrant { id, ttl_seconds } => {
            batch.insert(codec::lease_key(*id), &ttl_seconds.to_be_bytes()[..]);
            let lease = Lease {
                id: *id,
                ttl_seconds: *ttl_seconds,
            };
            Ok((
                Applied {
                    response: Ok(WriteResponse::Lease(lease)),
                    events: Vec::new(),
                },
                batch,
            ))
        }
        WriteRequest::LeaseRevoke { id } => {
            if tree.get(codec::lease_key(*id)).map_err(storage)?.is_none() {
                return rejected(Error::LeaseNotFound(*id));
            }
            let prefix = lease_key_index(*id, &[]);
            let mut keys = Vec::new();
            for item in tree.scan_prefix(&prefix) {
                let (k, _) = item.map_err(storage)?;
                keys.push(k[prefix.len()..].to_vec());
            }
            batch.remove(codec::lease_key(*id));
            let mut w = TxnWriter::new(tree, next, batch);
            for k in keys {
                w.delete(&k)?;
            }
            let (batch, events) = seal(w, revs);
            Ok((
                Applied {
                    response: Ok(WriteResponse::Done),
                    events,
                },
                batch,
            ))
        }
        WriteRequest::Compact { revision } => {
            if *revision <= revs.compacted {
                let e = Error::Compacted {
                    requested: *revision,
                    compacted: revs.compacted,
                };
                return rejected(e);
            }
            if *revision > revs.current {
                let e = Error::FutureRevision {
                    requested: *revision,
                    current: revs.current,
                };
                return rejected(e);
            }
            compact_into(tree, *revision, &mut batch)?;
            batch.insert(codec::meta_key("compacted"), &revision.to_be_bytes()[..]);
            revs.compacted = *revision;
            Ok((
                Applied {
                    response: Ok(WriteResponse::Done),
                    events: Vec::new(),
                },
                batch,
            ))
        }
    }
}

/// Removes history that no read at or after `revision` can need: per key, every version
/// older than its newest version at `revision` (and that one too if it is a deletion),
/// and every event up to `revision`.
fn compact_into(tree: &sled::Tree, revision: Revision, batch: &mut sled::Batch) -> Result<()> {
    let mut group: Vec<u8> = Vec::new();
    let mut last_at_or_below: Option<(sled::IVec, bool)> = None;
    let finish = |last: Option<(sled::IVec, bool)>, batch: &mut sled::Batch| {
        if let Some((k, tombstone)) = last {
            if tombstone {
                batch.remove(k);
            }
        }
    };
    for item in tree.scan_prefix([codec::HISTORY]) {
        let (k, v) = item.map_err(storage)?;
        let (key, rev) = codec::split_history_key(&k)?;
        if key != group {
            finish(last_at_or_below.take(), batch);
            group = key;
        }
        if rev <= revision {
            if let Some((older, _)) = last_at_or_below.take() {
                batch.remove(older);
            }
            let sv: StoredValue = codec::decode(&v)?;
            last_at_or_below = Some((k, sv.version == 0));
        }
    }
    finish(last_at_or_below.take(), batch);
    for item in tree.range(codec::event_rev_start(0)..codec::event_rev_start(revision + 1)) {
        let (k, _) = item.map_err(storage)?;
        batch.remove(k);
    }
    Ok(())
}
