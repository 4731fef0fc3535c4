//! The openraft type configuration of the store: what travels through the Raft log (a
//! [`WriteRequest`]), what applying it answers, how peers are addressed and how snapshots
//! are held (files, so a large store is never copied into memory).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::error::Error;
use crate::mvcc::{WriteRequest, WriteResponse};

/// Identifier of a store node in its cluster.
pub type NodeId = u64;

/// The answer to one applied log entry, as the node that proposed it gets it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied(pub Result<WriteResponse, Error>);

openraft::declare_raft_types!(
    /// The store's Raft types.
    pub TypeConfig:
        D = WriteRequest,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = SnapshotFile,
);

/// A log entry of the store's Raft log.
pub type Entry = openraft::Entry<TypeConfig>;
/// The store's Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// Log id of the store's Raft log.
pub type LogId = openraft::LogId<NodeId>;
/// Membership as recorded in the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Metadata of a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;

/// A snapshot file being written (received from the leader) or read (sent to a follower).
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    /// Wraps an open file and remembers where it lives, so an installed snapshot can be
    /// moved into place.
    pub fn new(file: tokio::fs::File, path: PathBuf) -> Self {
        SnapshotFile { file, path }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file_mut(&mut self) -> &mut tokio::fs::File {
        &mut self.file
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// Turns a store error into the storage error openraft stops on.
pub fn storage_error(e: impl std::fmt::Display) -> StorageError {
    openraft::StorageIOError::write_state_machine(openraft::AnyError::error(e)).into()
}

/// Runs blocking storage work from async code: through `block_in_place` on a
/// multi-threaded runtime (so other tasks move to other threads), directly otherwise.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
