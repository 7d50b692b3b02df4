//! virtio-fs (virtio 1.2, section 5.11) over vhost-user: the guest's FUSE requests go over the
//! queues straight to a backend process (virtiofsd), so ember is not in the data path.
//!
//! [`Fs`] is the device the transport sees: its identity, the features the backend offers
//! (less the vhost-user bit and indirect descriptors, see [`Fs::new`]), and the configuration
//! space (the tag and the number of request queues), read from the backend when it serves one,
//! else composed from the configured tag. On DRIVER_OK it hands the queues to the backend with
//! the queues' ioeventfds as kick fds and, as call fds, the eventfds that interrupt the guest
//! for each queue on either transport ([`VirtioInterrupt::queue_irqfd`]: the line's irqfd, or
//! under virtio-pci with MSI-X the irqfd of the vector the driver gave the queue); the
//! interrupt knows that the backend raises it (see
//! [`VirtioInterrupt::set_raised_by_backend`]).
//!
//! Its I/O handler is the link's [`Monitor`]: it only watches the backend's socket for a
//! hang-up. When the backend dies, ember takes the queues over and answers every request,
//! pending and new, with EIO ([`fallback`]), so the guest's calls on the share fail instead of
//! hanging, and nothing else in the VM is affected. For a backend reached by `socket=`, ember
//! connects again once a new one listens there and hands it the queues (see
//! [`super::vhost_user::device`]); the new virtiofsd knows none of the guest's open files, so
//! the share answers again but the guest may have to mount it anew.

mod fallback;

use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::vhost_user::device::{Link, Monitor, Orphan};
use super::vhost_user::{Backend, BackendError};
use super::{ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};

/// The virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Most bytes a tag may have (the configuration space's tag field).
pub const TAG_MAX: usize = 36;
/// The queues: one high-priority queue (FORGET, INTERRUPT) and one request queue.
pub const QUEUES: usize = 2;
/// Descriptors per queue (virtiofsd accepts up to 1024).
const QUEUE_SIZE: u16 = 1024;
/// The configuration space: the tag, then the number of request queues (le32).
const CONFIG_LEN: usize = TAG_MAX + 4;
/// Feature bit: indirect descriptor tables. Not passed on, so that ember can read every
/// chain itself should it have to answer for a dead backend ([`fallback`]).
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Errors setting up a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A tag that is empty or too long.
    #[error("the virtio-fs tag '{0}' must be 1 to {TAG_MAX} bytes long")]
    Tag(String),
    /// The backend serves a different tag.
    #[error(
        "the vhost-user backend serves the tag '{backend}', not '{configured}'; use its tag or \
         start it with --tag {configured}"
    )]
    TagMismatch {
        /// What the backend's configuration space says.
        backend: String,
        /// What ember was told.
        configured: String,
    },
    /// The backend's configuration space is malformed.
    #[error("the vhost-user backend's configuration space is malformed (no request queue)")]
    BadConfig,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The host refused an eventfd.
    #[error("cannot create an eventfd")]
    Event(#[source] std::io::Error),
}

/// Whether `tag` can name a share: 1 to [`TAG_MAX`] bytes, no NUL.
pub fn valid_tag(tag: &str) -> bool {
    (1..=TAG_MAX).contains(&tag.len()) && !tag.contains('\0')
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct Fs {
    link: Link,
    config: [u8; CONFIG_LEN],
    features: u64,
}

impl Fs {
    /// The device for the share `tag` served by `backend`; `kicks` are its queues' ioeventfds
    /// and `interrupt` its interrupt, whose eventfds are handed to the backend on activation.
    /// `path` is the backend's socket when ember may reconnect to a restarted backend there.
    pub fn new(
        tag: &str,
        mut backend: Backend,
        path: Option<PathBuf>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        kicks: Vec<EventFd>,
    ) -> Result<Self, FsError> {
        if !valid_tag(tag) {
            return Err(FsError::Tag(tag.into()));
        }
        let mut config = [0; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        if let Some(theirs) = backend.config(CONFIG_LEN as u32)? {
            check_backend_config(tag, &theirs)?;
        }
        let features =
            (backend.device_features() & !VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_F_VERSION_1);
        let name = format!("virtio-fs '{tag}'");
        let link = Link::new(name, backend, path, mem, interrupt, kicks).map_err(FsError::Event)?;
        Ok(Self {
            link,
            config,
            features,
        })
    }

    /// The device's I/O handler, which watches the backend (see [`Monitor`]).
    pub fn monitor(&self) -> Result<Monitor<AnswerEio>, std::io::Error> {
        self.link.monitor(AnswerEio)
    }
}

/// The backend's tag must be ours, and it must have a request queue.
fn check_backend_config(tag: &str, theirs: &[u8]) -> Result<(), FsError> {
    let (name, rest) = theirs.split_at(TAG_MAX.min(theirs.len()));
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let backend = String::from_utf8_lossy(&name[..end]).into_owned();
    if backend != tag {
        return Err(FsError::TagMismatch {
            backend,
            configured: tag.into(),
        });
    }
    let queues = rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok());
    match queues.map(u32::from_le_bytes) {
        Some(n) if n >= 1 => Ok(()),
        _ => Err(FsError::BadConfig),
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The configuration space is read-only (virtio 1.2, 5.11.4).
    }

    fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        self.link.activate(queues, features)
    }

    fn reset(&mut self) {
        self.link.reset();
    }
}

/// While no backend serves the share, ember answers every request itself with EIO (woken by
/// the queues' ioeventfds, which only ember reads from then on).
pub struct AnswerEio;

impl Orphan for AnswerEio {
    fn meanwhile(&self) -> &'static str {
        "the guest's requests on this share fail with EIO"
    }

    fn serves(&self) -> bool {
        true
    }

    fn take_over(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap, features: u64) {
        fallback::take_over(queues, mem, features);
    }

    fn serve(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        interrupt: &VirtioInterrupt,
    ) -> bool {
        fallback::fail_all(queues, mem, interrupt)
    }
}

#[cfg(test)]
mod tests;
