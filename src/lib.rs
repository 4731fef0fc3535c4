//! pikube: a Kubernetes distribution in one small binary.
//!
//! The library holds every component of the `pikube` binary (API server, controllers,
//! scheduler, agent, DNS, PKI) so that tests can drive them; the binary only parses the
//! command line and starts them.

pub mod agent;
pub mod api;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod config_file;
pub mod controllers;
pub mod dns;
pub mod events;
pub mod join;
pub mod pki;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod snapshot;
pub mod token;
pub mod watch_filter;
pub mod worker;
