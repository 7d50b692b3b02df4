//! virtio-vsock (virtio 1.2, section 5.10) with Firecracker's hybrid Unix-socket backend:
//! guest stream sockets reach host processes through Unix sockets.
//!
//! [`packet`] is the wire header; [`muxer`] owns the connections, their host sockets, state
//! and credit; [`device`] is the virtio device with its three queues (receive, transmit,
//! event) and the [`VsockServer`] the VMM's I/O worker runs.

pub mod device;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockServer, VsockStats};

/// The virtio device id of a socket device.
pub const DEVICE_TYPE_VSOCK: u32 = 19;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
