//! An etcd-v3-like key-value store for pikube: MVCC revisions, transactions, watch,
//! compaction and TTL leases, kept in sled and replicated with openraft.
//!
//! Knows nothing of Kubernetes: keys and values are bytes.

pub mod error;
pub mod types;

pub use error::{Error, Result};
pub use types::*;
