//! virtio-rng, the entropy device (virtio 1.2, section 5.4), fed from the host's
//! `getrandom(2)`, as Firecracker's entropy device is.
//!
//! The device has one request queue and no configuration space: the driver offers
//! device-writable buffers and the device fills them with random bytes. [`device::Rng`] is the
//! virtio device; its [`device::RngServer`] serves the queue on the VMM's I/O worker, a
//! bounded amount per round.

pub mod device;

pub use device::{Rng, RngServer, RngStats};

/// The virtio device id of an entropy source.
pub const DEVICE_TYPE_RNG: u32 = 4;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
