//! The Kubernetes API server: discovery, generic REST over the resource catalogue,
//! watch, patch, authentication by client certificate.

pub mod authn;
pub mod batch;
pub mod cache;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod event_versions;
pub mod fields;
#[cfg(test)]
mod fuzz_tests;
pub mod http;
pub mod managed;
pub mod objects;
pub mod openapi;
pub mod pod_admission;
pub mod pod_streams;
pub mod protobuf;
pub mod resources;
pub mod rest;
pub mod reviews;
pub mod router;
pub mod selectors;
pub mod service_account_tokens;
pub mod services;
pub mod status;
pub mod storage_admission;
pub mod strategic;
pub mod table;
pub mod table_events;
pub mod table_storage;
pub mod upgrade;
pub mod watch;
pub mod workloads;

pub use router::{ApiServer, Identity};
