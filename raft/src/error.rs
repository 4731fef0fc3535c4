//! The store's errors: each says what went wrong in words a caller can show.

use crate::types::{LeaseId, Revision};

/// Everything a store operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// A key must not be empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// A value exceeds [`crate::MAX_VALUE_BYTES`].
    #[error("value of {size} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { size: usize, max: usize },
    /// A transaction exceeds the size or operation-count limit.
    #[error("transaction too large: {0}")]
    TxnTooLarge(String),
    /// The requested revision has been compacted away (the API server's 410 Gone).
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// A watcher fell too far behind and was cancelled; watch again from a later revision.
    #[error("watcher fell too far behind and was cancelled")]
    WatchLagged,
    /// This node is not the leader and could not forward the request.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// The cluster cannot serve the request now (no quorum, shutting down, network).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The data directory is damaged; it is refused rather than reset.
    #[error("data directory is damaged: {0}")]
    Corrupt(String),
    /// The data directory belongs to another cluster or node.
    #[error("data directory belongs to another cluster: {0}")]
    ForeignCluster(String),
    /// An I/O or storage engine error.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bad argument (message says which).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The store was shut down.
    #[error("store is shut down")]
    Shutdown,
}

/// Result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
