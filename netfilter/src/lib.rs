//! pikube's service proxy as a library: Services, EndpointSlices and node facts in, one
//! nftables ruleset out, applied as one atomic transaction; plus the node's routes for
//! the service and pod ranges. Knows nothing of Kubernetes crates: the caller converts.
//!
//! - [`model`]: the plain input types.
//! - [`render`]: input → [`ruleset::Ruleset`] (pure).
//! - [`incremental`]: [`incremental::Renderer`] keeps that result up to date service by
//!   service.
//! - [`ruleset`]: the model → nftables commands (full replace or incremental update).
//! - [`apply`]: [`apply::Proxier`] runs those commands through `nft -j` (blocking).
//! - [`routes`]: [`routes::NodeNetwork`] sets up the port-less bridge, routes and sysctls.
//! - [`host`]: [`host::NetNs`] runs commands in the host's or a named network namespace.

pub mod apply;
pub mod host;
pub mod incremental;
pub mod model;
pub mod render;
pub mod routes;
pub mod ruleset;
pub mod stmt;

pub use apply::{DriftCheck, Proxier, SyncKind};
pub use host::NetNs;
pub use incremental::Renderer;
pub use model::{
    EndpointInfo, Ipv4Cidr, NodeFacts, Protocol, ServiceInfo, ServicePortInfo, TrafficPolicy,
};
pub use render::render;
pub use routes::{NodeNetwork, NodeNetworkConfig, PeerNode};
pub use ruleset::Ruleset;

/// Errors of the service proxy library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started or fed.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A program exited with failure.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// JSON could not be written or read.
    #[error("nftables JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Input that cannot be rendered or applied.
    #[error("invalid input: {0}")]
    Invalid(String),
}
