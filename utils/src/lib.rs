//! Small host helpers that more than one ember crate needs and that belong to none of them:
//! `api_server` may not depend on `vmm` (the dependency runs the other way) nor on `devices`
//! (device models). This crate depends on no ember crate and knows nothing of devices, KVM or
//! the API.
//!
//! - [`poll`]: waiting on several descriptors at once, for the threads outside the event loop.
//! - [`time`]: reading the host's clocks.

pub mod poll;
pub mod time;
