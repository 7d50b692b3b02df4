//! The wire contract of ember: the VM configuration model shaped like Firecracker's API bodies.
//!
//! The command line, a Firecracker-style `--config-file` and (in time) the REST API all produce a
//! [`model::VmConfig`], so there is one description of a microVM and one place that validates
//! it. This crate owns the JSON shapes and their field names; it must not depend on KVM or on any
//! other ember crate, because the VMM depends on it.

pub mod http;
pub mod model;
pub mod request;
pub mod server;
