//! The Kubernetes API server: discovery, OpenAPI, generic REST over a resource registry,
//! watch, patch, Table output, validation, CRDs, authentication.

pub mod discovery;
pub mod openapi;
pub mod protobuf;
pub mod resources;
pub mod strategic;
pub mod table;
