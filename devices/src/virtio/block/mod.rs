//! virtio-blk (virtio 1.2, section 5.2) over a raw disk image file.
//!
//! [`disk::Disk`] owns the file and its I/O (positioned vectored reads and writes straight into
//! guest memory, flush as `fdatasync`, discard and write-zeroes as `fallocate`).
//! [`request`] turns a descriptor chain into a request and checks everything the guest
//! controls; [`device::Block`] is the virtio device that serves the queue, executing requests
//! on its thread (the Sync engine) or through [`uring::Uring`] (the Async engine, io_uring).
//! [`vhost::VhostBlock`] is the vhost-user-blk device, whose queue another process serves.

pub mod device;
pub mod disk;
pub mod request;
pub mod uring;
pub mod vhost;

pub use device::{Block, BlockStats};
pub use disk::{Disk, DiskError};
pub use uring::Uring;
pub use vhost::VhostBlock;

/// The virtio device id of a block device.
pub const DEVICE_TYPE_BLOCK: u32 = 2;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID answer (the disk's serial number).
pub const ID_LEN: usize = 20;

/// Feature bits (virtio 1.2, 5.2.3).
pub mod features {
    /// `seg_max` is valid.
    pub const SEG_MAX: u32 = 2;
    /// The disk is read-only.
    pub const RO: u32 = 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u32 = 6;
    /// FLUSH requests are supported.
    pub const FLUSH: u32 = 9;
    /// DISCARD requests are supported.
    pub const DISCARD: u32 = 13;
    /// WRITE_ZEROES requests are supported.
    pub const WRITE_ZEROES: u32 = 14;
}
