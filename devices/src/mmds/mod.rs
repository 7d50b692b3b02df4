//! MMDS, Firecracker's microVM metadata service: a JSON document the host puts (`PUT|PATCH
//! /mmds` on the API) and the guest reads over HTTP at a link-local address (169.254.169.254
//! unless configured), on the network interfaces the host names.
//!
//! This module owns the guest-facing side: the data store with its size limit and its JSON
//! and IMDS renderings ([`Mmds`]), the V2 session tokens, the HTTP answers (Firecracker's
//! paths, status codes and messages), and, per network interface, a small network stack
//! ([`MmdsStack`]) that the virtio-net device hands the guest's frames for the MMDS address
//! instead of sending them to the TAP, and takes frames from (ARP replies, TCP segments) to
//! deliver to the guest.
//!
//! Why a TCP stack inside the VMM: the metadata must reach the guest before it has any route
//! to the host, and must not depend on the host's network configuration (no host listener, no
//! firewall rule, no address on the TAP); only frames the guest sends to the MMDS address are
//! answered, so the service is as private as the guest's own NIC. The stack is `smoltcp`, a
//! well-kept embedded TCP/IP stack that does nothing on its own: ember feeds it frames and
//! polls it, so it needs no thread and no socket, and every buffer it has is sized here.
//!
//! Bounds (the guest is hostile): [`MAX_CONNECTIONS`] TCP connections per interface, a
//! request of at most [`MAX_REQUEST_LEN`] bytes each, at most [`MAX_PENDING_FRAMES`] frames
//! waiting for the guest's receive queue, answers no larger than the store's size limit
//! allows, at most [`MAX_TOKENS`] live V2 tokens. Nothing a frame holds can panic the stack.

mod http;
mod stack;
mod store;
#[cfg(test)]
pub(crate) mod testing;
mod token;

pub use stack::{MAX_INPUT_FRAME_LEN, MmdsStack};
pub use store::{Mmds, MmdsError};
pub use token::{MAX_TOKEN_TTL_SECONDS, MAX_TOKENS, MIN_TOKEN_TTL_SECONDS, TokenError};

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// The MMDS HTTP server alone, for the fuzz targets: answers the request at the start of `buf`
/// from `mmds` at time `now`, as a connection of the stack does. `None` while the request head
/// is incomplete; otherwise the bytes it took, the response on the wire, and whether the
/// connection must close.
#[cfg(feature = "test-utils")]
pub fn answer_http(
    buf: &[u8],
    mmds: &mut Mmds,
    now: std::time::Instant,
) -> Option<(usize, Vec<u8>, bool)> {
    match http::handle(buf, mmds, now) {
        http::Parsed::Incomplete => None,
        http::Parsed::Answer {
            consumed,
            response,
            close,
        } => Some((consumed, response.to_bytes(), close)),
    }
}

/// The MMDS data store, shared by the API and every interface's stack.
pub type SharedMmds = Arc<Mutex<Mmds>>;

/// The MMDS address when the configuration names none (Firecracker's).
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The store's size limit, in bytes of its JSON serialization, when none is given
/// (Firecracker's: the API's default maximum payload).
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;
/// The MAC address the MMDS answers ARP with and sends from (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The TCP port the MMDS serves HTTP on.
pub const MMDS_PORT: u16 = 80;
/// TCP connections one interface's stack holds at once (Firecracker's number); a new
/// connection beyond them replaces the one idle longest.
pub const MAX_CONNECTIONS: usize = 30;
/// Largest request (request line and headers) a connection takes; a larger one is answered
/// 413 and the connection closed.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Frames the stack holds for the guest's receive queue; beyond them frames are dropped and
/// counted (`tx_errors`), and TCP sends them again.
pub const MAX_PENDING_FRAMES: usize = 128;

/// The MMDS protocol version the guest must speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MmdsVersion {
    /// GETs need no token (one that is given is checked and counted, not required).
    #[default]
    V1,
    /// GETs need a session token from `PUT /latest/api/token`.
    V2,
}

impl std::fmt::Display for MmdsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V1 => "V1",
            Self::V2 => "V2",
        })
    }
}

/// The MMDS counters, named as Firecracker's `mmds` metrics section names them; the totals
/// over every interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmdsMetrics {
    /// Frames the guest sent that were detoured to the MMDS.
    pub rx_accepted: u64,
    /// Detoured frames the stack could not use (malformed, or refused by TCP).
    pub rx_accepted_err: u64,
    /// Detoured frames that were unusual: IPv4 but not TCP, or not for the MMDS port.
    pub rx_accepted_unusual: u64,
    /// Detoured frames that are not valid Ethernet frames.
    pub rx_bad_eth: u64,
    /// GETs with a token that is not valid (expired, unknown or malformed).
    pub rx_invalid_token: u64,
    /// GETs without a token.
    pub rx_no_token: u64,
    /// Detoured frames the stack took in.
    pub rx_count: u64,
    /// Bytes of the frames the MMDS sent to the guest.
    pub tx_bytes: u64,
    /// HTTP responses the MMDS sent.
    pub tx_count: u64,
    /// Frames the MMDS could not send (the guest's receive queue stayed full).
    pub tx_errors: u64,
    /// Frames the MMDS sent to the guest.
    pub tx_frames: u64,
    /// TCP connections opened.
    pub connections_created: u64,
    /// TCP connections closed, reset or replaced.
    pub connections_destroyed: u64,
}

impl MmdsMetrics {
    /// The counters by their metric names, in Firecracker's order.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        [
            ("rx_accepted", self.rx_accepted),
            ("rx_accepted_err", self.rx_accepted_err),
            ("rx_accepted_unusual", self.rx_accepted_unusual),
            ("rx_bad_eth", self.rx_bad_eth),
            ("rx_invalid_token", self.rx_invalid_token),
            ("rx_no_token", self.rx_no_token),
            ("rx_count", self.rx_count),
            ("tx_bytes", self.tx_bytes),
            ("tx_count", self.tx_count),
            ("tx_errors", self.tx_errors),
            ("tx_frames", self.tx_frames),
            ("connections_created", self.connections_created),
            ("connections_destroyed", self.connections_destroyed),
        ]
    }

    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &MmdsMetrics) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.rx_accepted, other.rx_accepted);
        add(&mut self.rx_accepted_err, other.rx_accepted_err);
        add(&mut self.rx_accepted_unusual, other.rx_accepted_unusual);
        add(&mut self.rx_bad_eth, other.rx_bad_eth);
        add(&mut self.rx_invalid_token, other.rx_invalid_token);
        add(&mut self.rx_no_token, other.rx_no_token);
        add(&mut self.rx_count, other.rx_count);
        add(&mut self.tx_bytes, other.tx_bytes);
        add(&mut self.tx_count, other.tx_count);
        add(&mut self.tx_errors, other.tx_errors);
        add(&mut self.tx_frames, other.tx_frames);
        add(&mut self.connections_created, other.connections_created);
        add(&mut self.connections_destroyed, other.connections_destroyed);
    }
}
