//! vhost-user-blk: a virtio-blk device whose queue a backend process serves (Firecracker's
//! `socket` drives), so ember is not in the data path.
//!
//! [`VhostBlock`] is what the transport sees: device id 2, the backend's virtio-blk features
//! that ember's transports and this device can carry ([`OFFERED`]), and the configuration space
//! (capacity, block size, segment limits, ...) as the backend serves it with `GET_CONFIG`,
//! which the `CONFIG` protocol feature must allow: without it, ember could not tell the guest
//! the disk's size. The queue goes to the backend on DRIVER_OK through the shared
//! [`Link`]; its monitor leaves requests in the ring while the backend is gone, for the next
//! one ember connects to ([`super::super::vhost_user::device`]).

use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{DEVICE_TYPE_BLOCK, QUEUE_SIZE, features};
use crate::virtio::vhost_user::device::{Link, Monitor, Orphan};
use crate::virtio::vhost_user::{Backend, BackendError};
use crate::virtio::{
    ActivateError, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
};

/// The configuration space asked of the backend: `struct virtio_blk_config` up to and
/// including the write-zeroes fields (virtio 1.2, 5.2.4).
pub const CONFIG_LEN: usize = 60;
/// Feature bit: `size_max` is valid.
const SIZE_MAX: u32 = 1;
/// Feature bit: `geometry` is valid.
const GEOMETRY: u32 = 4;
/// Feature bit: `topology` is valid.
const TOPOLOGY: u32 = 10;
/// Feature bit: indirect descriptor tables.
const INDIRECT_DESC: u32 = 28;

/// The backend's features ember passes on: the virtio-blk ones a single-queue device whose
/// configuration space the guest does not write can offer (so neither `MQ` nor `CONFIG_WCE`),
/// and the ring features ember's transports carry.
pub const OFFERED: u64 = bit(SIZE_MAX)
    | bit(features::SEG_MAX)
    | bit(GEOMETRY)
    | bit(features::RO)
    | bit(features::BLK_SIZE)
    | bit(features::FLUSH)
    | bit(TOPOLOGY)
    | bit(features::DISCARD)
    | bit(features::WRITE_ZEROES)
    | bit(INDIRECT_DESC)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_F_VERSION_1);

const fn bit(n: u32) -> u64 {
    1 << n
}

/// Errors setting up a vhost-user-blk device.
#[derive(Debug, thiserror::Error)]
pub enum VhostBlockError {
    /// The backend does not serve its configuration space.
    #[error(
        "the vhost-user-blk backend does not serve its configuration space (protocol feature \
         CONFIG), so the disk's size is unknown; use a backend that does (such as \
         qemu-storage-daemon)"
    )]
    NoConfig,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The host refused an eventfd.
    #[error("cannot create an eventfd")]
    Event(#[source] std::io::Error),
}

/// A virtio-blk device whose queue a vhost-user backend serves.
pub struct VhostBlock {
    link: Link,
    config: Vec<u8>,
    features: u64,
}

impl VhostBlock {
    /// The drive `id` served by `backend` (reached at `path`, where ember reconnects to a
    /// restarted backend); `kick` is its queue's ioeventfd and `interrupt` its interrupt.
    /// Without `flush` (Firecracker's `cache_type: "Unsafe"`) the flush feature is not offered.
    pub fn new(
        id: &str,
        flush: bool,
        mut backend: Backend,
        path: Option<PathBuf>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        kick: EventFd,
    ) -> Result<Self, VhostBlockError> {
        let config = backend
            .config(CONFIG_LEN as u32)?
            .ok_or(VhostBlockError::NoConfig)?;
        let mut features = (backend.device_features() & OFFERED) | bit(VIRTIO_F_VERSION_1);
        if !flush {
            features &= !bit(features::FLUSH);
        }
        let name = format!("drive '{id}' (vhost-user-blk)");
        let link = Link::new(name, backend, path, mem, interrupt, vec![kick])
            .map_err(VhostBlockError::Event)?;
        Ok(Self {
            link,
            config,
            features,
        })
    }

    /// The device's I/O handler, which watches the backend.
    pub fn monitor(&self) -> std::io::Result<Monitor<Wait>> {
        self.link.monitor(Wait)
    }
}

impl VirtioDevice for VhostBlock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which is not offered.
    }

    fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        self.link.activate(queues, features)
    }

    fn reset(&mut self) {
        self.link.reset();
    }
}

/// While no backend serves the drive, its requests wait in the ring for the next one: a
/// restarted backend serves them, and a guest sees a slow disk rather than I/O errors.
pub struct Wait;

impl Orphan for Wait {
    fn meanwhile(&self) -> &'static str {
        "the guest's requests wait"
    }

    fn serves(&self) -> bool {
        false
    }

    fn take_over(&mut self, _queues: &mut [Queue], _mem: &GuestMemoryMmap, _features: u64) {}

    fn serve(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _interrupt: &VirtioInterrupt,
    ) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
