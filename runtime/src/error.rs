//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong talking to or running the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRI endpoint string is not `unix:///path` or an absolute path.
    #[error("invalid container runtime endpoint {0:?}: expected unix:///path or an absolute path")]
    Endpoint(String),
    /// Connecting the gRPC channel failed.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint that was dialled.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A gRPC call returned an error status.
    #[error("{call}: {status}")]
    Rpc {
        /// The call that failed (e.g. `CRI Version`).
        call: &'static str,
        /// The status returned by the runtime.
        #[source]
        status: Box<tonic::Status>,
    },
    /// The runtime did not become ready in time.
    #[error("container runtime not ready after {waited:?}: {last}")]
    NotReady {
        /// How long we waited.
        waited: std::time::Duration,
        /// The last reason seen.
        last: String,
    },
    /// A binary the runtime needs is not installed.
    #[error("`{binary}` not found in PATH (install Debian package `{package}`)")]
    MissingBinary {
        /// The binary searched for.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A filesystem or process operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path (or program) involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image tarball is malformed or unsupported.
    #[error("image tarball {path}: {reason}")]
    Tarball {
        /// The tarball.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Wraps a gRPC status with the name of the call that returned it.
    pub fn rpc(call: &'static str, status: tonic::Status) -> Self {
        Error::Rpc {
            call,
            status: Box::new(status),
        }
    }

    /// Wraps an I/O error with what was done and on which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The gRPC status code, when this is an RPC error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
