//! Small host helpers that more than one ember crate needs and that belong to none of them:
//! `api_server` may not depend on `vmm` (the dependency runs the other way) nor on `devices`
//! (device models). This crate depends on no ember crate and knows nothing of devices, KVM or
//! the API.
//!
//! - [`poll`]: waiting on several descriptors at once, for the threads outside the event loop.
//! - [`time`]: reading the host's clocks.
//! - [`error_chain`]: one line for an error and its causes, as ember and ember-jailer print them.

pub mod poll;
pub mod time;

/// "outer: cause: root cause", each message once: how ember and ember-jailer report an error
/// chain on stderr, and ember in API fault messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = cause.source();
    }
    text
}
