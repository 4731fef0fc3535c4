//! An etcd-v3-like key-value store for pikube: MVCC revisions, transactions, watch,
//! compaction and TTL leases, kept in sled and replicated with openraft.
//!
//! Knows nothing of Kubernetes: keys and values are bytes. Every write is a Raft log entry;
//! the log is made durable with one fsync per group of concurrent appends, and each
//! committed entry is applied together with the record of its log id, so a crash neither
//! loses an acknowledged write nor applies one twice. A single node (the default) is its own
//! quorum and pays no network cost; several nodes talk through a [`Transport`].

mod bytes_serde;
mod cluster;
mod codec;
pub mod consensus;
mod defrag;
pub mod error;
mod lease;
mod log_store;
pub mod memnet;
mod mvcc;
pub mod network;
mod open;
mod snapshot;
mod state_machine;
mod store;
pub mod tls;
pub mod transport_http;
pub mod types;
mod wal;
pub mod watch;

pub use consensus::NodeId;
pub use defrag::{dir_size, DiskUse};
pub use error::{Error, Result};
pub use network::{NoPeers, Transport, TransportError, TransportFuture};
pub use open::{read_identity, IDENTITY_FILE};
pub use store::{Config, Member, Store, Timing};
pub use tls::PeerTls;
pub use transport_http::{serve_peers, HttpTransport};
pub use types::*;
pub use watch::Watcher;
