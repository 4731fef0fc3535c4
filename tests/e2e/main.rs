//! End-to-end tests: real `pikube` processes driven by the real kubectl.
//!
//! One test binary with modules, so the dependency tree is linked once.

mod agent;
mod airgap;
mod api;
mod apply;
mod cli;
mod crd;
mod crd_cert_manager;
mod dns;
mod events;
mod events_v1;
mod ha;
mod harness;
mod heartbeat;
mod install;
mod jobs;
mod join;
mod kube_client;
mod openapi;
#[path = "../support/probe_servers.rs"]
mod probe_servers;
mod probes;
mod protobuf;
mod python_client;
mod roles;
mod scheduling;
mod service_accounts;
mod services;
mod sets;
mod sim;
mod snapshots;
mod streams;
mod token;
mod volumes;
mod workloads;
