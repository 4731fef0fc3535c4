//! The store's data model: keys, revisions, requests and responses, as in etcd v3.
//!
//! Everything here is plain data and serialisable, because the same values travel through
//! the Raft log, the peer transport and the watch streams.

use serde::{Deserialize, Serialize};

/// A global, monotonically increasing counter; every committed write advances it by one.
pub type Revision = i64;

/// Identifier of a TTL lease; 0 means "no lease".
pub type LeaseId = i64;

/// Largest value accepted by a put (1.5 MiB, etcd's default request limit).
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Largest total size of the keys and values of one transaction.
pub const MAX_TXN_BYTES: usize = 2 * 1024 * 1024;

/// Largest number of operations in one transaction (etcd's default is 128).
pub const MAX_TXN_OPS: usize = 128;

/// One key with its value and its MVCC bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// The value (empty in a delete event's `kv`).
    #[serde(with = "crate::bytes_serde")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key (for a delete event: the deletion's revision).
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 after the create, 0 once deleted.
    pub version: i64,
    /// Lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// A read over one key or a key range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key (inclusive).
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range (exclusive); `None` reads the single key `key`.
    #[serde(with = "crate::bytes_serde::option")]
    pub range_end: Option<Vec<u8>>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read the store as it was at this revision; 0 means the current revision.
    pub revision: Revision,
    /// Only count the keys, return none.
    pub count_only: bool,
    /// Return keys and metadata without values.
    pub keys_only: bool,
    /// Serve from the local replica without a read-index round (may be stale on a
    /// follower); linearizable when false.
    pub serializable: bool,
}

impl RangeRequest {
    /// A read of one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    /// A read of every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = Some(prefix_end(&key));
        RangeRequest {
            key,
            range_end,
            ..Default::default()
        }
    }

    /// Sets the limit.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Reads at a past revision.
    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    /// Serves the read locally without a read-index round.
    pub fn serializable(mut self) -> Self {
        self.serializable = true;
        self
    }
}

/// The exclusive end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`).
/// An empty result means "to the end of the key space".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys found, in key order (at most `limit`).
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the result short: continue from the last key + `\0`.
    pub more: bool,
    /// Number of keys in the whole range (not only those returned).
    pub count: i64,
    /// The store revision the read was served at.
    pub revision: Revision,
}

/// What a comparison looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's mod_revision (0 when absent).
    ModRevision(Revision),
    /// The key's create_revision (0 when absent).
    CreateRevision(Revision),
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's value (an absent key never compares equal).
    Value(Vec<u8>),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// ==
    Equal,
    /// !=
    NotEqual,
    /// <
    Less,
    /// >
    Greater,
}

/// One guard of a transaction: `target(key) op value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// The operator.
    pub op: CompareOp,
    /// What is compared, and with which value.
    pub target: CompareTarget,
}

impl Compare {
    /// `mod_revision(key) == revision`: the optimistic-concurrency guard of an update.
    pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// The key does not exist: the guard of a create.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Version(0),
        }
    }

    /// The key exists.
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Greater,
            target: CompareTarget::Version(0),
        }
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write `value` under `key`, attached to `lease` (0 = none).
    Put {
        #[serde(with = "crate::bytes_serde")]
        key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        value: Vec<u8>,
        lease: LeaseId,
    },
    /// Delete one key.
    Delete { key: Vec<u8> },
    /// Delete every key in `[key, range_end)`.
    DeleteRange { key: Vec<u8>, range_end: Vec<u8> },
    /// Read inside the transaction (sees the transaction's earlier writes).
    Range(RangeRequest),
}

/// A compare-then-act transaction, applied atomically at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compare: Vec<Compare>,
    /// Operations when every comparison holds.
    pub success: Vec<Op>,
    /// Operations otherwise.
    pub failure: Vec<Op>,
}

/// The result of one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    /// A put; `prev` is the key's value before it.
    Put { prev: Option<KeyValue> },
    /// A delete or delete-range; the keys as they were before deletion.
    Delete { deleted: Vec<KeyValue> },
    /// A read.
    Range(RangeResponse),
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the comparisons held (and `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged if it wrote nothing).
    pub revision: Revision,
    /// One response per operation that ran.
    pub responses: Vec<OpResponse>,
}

/// The kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A key was created or updated.
    Put,
    /// A key was deleted (explicitly, by delete-range, or by its lease expiring).
    Delete,
}

/// One change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with an empty value, version 0
    /// and `mod_revision` = the deletion's revision.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Its time to live in seconds.
    pub ttl_seconds: i64,
}

/// The answer to a single put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The revision of the write.
    pub revision: Revision,
    /// The key before the write, if it existed.
    pub prev: Option<KeyValue>,
}

/// The answer to a single delete or delete-range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// The store revision after the delete (unchanged when nothing was deleted).
    pub revision: Revision,
    /// The keys as they were before deletion.
    pub deleted: Vec<KeyValue>,
}

/// A request to watch a key or a key range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// First key (inclusive).
    #[serde(with = "crate::bytes_serde")]
    pub key: Vec<u8>,
    /// End of the range (exclusive); `None` watches the single key `key`.
    #[serde(with = "crate::bytes_serde::option")]
    pub range_end: Option<Vec<u8>>,
    /// First revision to deliver; must be above the compacted revision. 0 means "only
    /// changes after the current revision".
    pub start_revision: Revision,
}

impl WatchRequest {
    /// A watch of every key that starts with `prefix`, from `start_revision`.
    pub fn prefix(prefix: impl Into<Vec<u8>>, start_revision: Revision) -> Self {
        let key = prefix.into();
        let range_end = Some(prefix_end(&key));
        WatchRequest {
            key,
            range_end,
            start_revision,
        }
    }
}
