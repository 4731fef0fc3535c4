//! The container runtime seam of pikube's node agent: a CRI (runtime.v1) client over
//! containerd's socket, supervision of a pikube-managed containerd, import of OCI image
//! tarballs, and the CNI config of the node's pod CIDR. Knows nothing of the pikube binary.

pub mod cgroups;
pub mod cni;
pub mod containerd;
pub mod cri;
mod error;
mod fsutil;
pub mod images;

pub use cni::{CniConfig, Ipv4Cidr};
pub use containerd::{Containerd, ContainerdConfig};
pub use cri::Cri;
pub use error::Error;
pub use images::{import_dir, import_tarball};

/// The pause (sandbox) image built by `images/build.sh` (`pause.tar`).
pub const PAUSE_IMAGE: &str = "localhost/pause:3.9";
/// The busybox test image built by `images/build.sh` (`busybox.tar`).
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:1.35";
