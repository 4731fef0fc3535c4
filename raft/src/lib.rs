//! An etcd-v3-like key-value store for pikube: MVCC revisions, transactions, watch,
//! compaction and TTL leases, kept in sled.
//!
//! Knows nothing of Kubernetes: keys and values are bytes. Every write goes through one
//! writer that logs it durably (one fsync per group of concurrent writes) and then applies
//! it together with the record of what was applied, so a crash neither loses an
//! acknowledged write nor applies one twice.

mod codec;
pub mod error;
mod mvcc;
mod store;
pub mod types;
pub mod watch;

pub use error::{Error, Result};
pub use store::{Config, Store, IDENTITY_FILE};
pub use types::*;
pub use watch::Watcher;
