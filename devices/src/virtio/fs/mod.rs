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
//! [`Monitor`] is the device's I/O handler: it only watches the backend's socket for a
//! hang-up. When the backend dies, ember takes the queues over and answers every request,
//! pending and new, with EIO ([`fallback`]), so the guest's calls on the share fail instead of
//! hanging, and nothing else in the VM is affected.

mod fallback;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use log::{error, warn};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::vhost_user::{Backend, BackendError};
use super::worker::{IoHandler, Ready, Watch};
use super::{ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};
use crate::sync::lock;

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

/// What the device and its monitor share: the queues the backend serves, so that ember can
/// take them over when it dies.
#[derive(Default)]
struct Shared {
    /// The active queues as the driver set them up, and the negotiated features.
    active: Option<(Vec<Queue>, u64)>,
    /// The backend hung up.
    dead: bool,
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct Fs {
    tag: String,
    backend: Backend,
    config: [u8; CONFIG_LEN],
    features: u64,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
    /// The call fd of a queue the driver wants no interrupt from: nothing reads it.
    muted: EventFd,
    shared: Arc<Mutex<Shared>>,
}

impl Fs {
    /// The device for the share `tag` served by `backend`; `kicks` are its queues' ioeventfds
    /// and `interrupt` its interrupt, whose eventfds are handed to the backend on activation.
    pub fn new(
        tag: &str,
        mut backend: Backend,
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
        interrupt.set_raised_by_backend();
        let features =
            (backend.device_features() & !VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_F_VERSION_1);
        Ok(Self {
            tag: tag.into(),
            backend,
            config,
            features,
            mem,
            interrupt,
            kicks,
            muted: EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::Event)?,
            shared: Arc::default(),
        })
    }

    /// The device's I/O handler, which watches the backend (see [`Monitor`]).
    pub fn monitor(&self) -> Result<Monitor, std::io::Error> {
        let socket = dup_fd(self.backend.socket_fd())?;
        let kicks = self
            .kicks
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<_, _>>()?;
        Ok(Monitor {
            tag: self.tag.clone(),
            socket,
            shared: self.shared.clone(),
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            kicks,
        })
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

/// A duplicate of `fd`, owned.
fn dup_fd(fd: std::os::fd::RawFd) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: the backend keeps `fd` open for as long as this borrow lasts.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
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
        let mut shared = lock(&self.shared);
        if shared.dead {
            warn!(
                "virtio-fs '{}': the backend is gone; the share stays unusable",
                self.tag
            );
        }
        let calls: Vec<&EventFd> = (0..queues.len())
            .map(|q| self.interrupt.queue_irqfd(q).unwrap_or(&self.muted))
            .collect();
        self.backend
            .activate(&self.mem, features, &queues, &self.kicks, &calls)
            .map_err(ActivateError::Backend)?;
        shared.active = Some((queues, features));
        Ok(())
    }

    fn reset(&mut self) {
        let mut shared = lock(&self.shared);
        shared.active = None;
        if shared.dead {
            return;
        }
        if let Err(err) = self.backend.reset() {
            warn!("virtio-fs '{}': cannot reset the backend: {err}", self.tag);
        }
    }
}

/// Watches a virtio-fs backend's socket; once it hangs up, answers the queues itself with EIO
/// (woken by the queues' ioeventfds, which only ember reads from then on).
pub struct Monitor {
    tag: String,
    socket: OwnedFd,
    shared: Arc<Mutex<Shared>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
}

impl Monitor {
    fn dead(&self) -> bool {
        lock(&self.shared).dead
    }

    /// The backend hung up: take the queues over, from the last request it completed.
    fn backend_died(&mut self) {
        let mut shared = lock(&self.shared);
        shared.dead = true;
        error!(
            "virtio-fs '{}': the vhost-user backend (virtiofsd) hung up; the guest's requests \
             on this share now fail with EIO",
            self.tag
        );
        if let Some((queues, features)) = shared.active.as_mut() {
            fallback::take_over(queues, &self.mem, *features);
        }
    }

    /// Answers every request waiting on the queues; returns whether more may wait.
    fn serve(&mut self) -> bool {
        let mut shared = lock(&self.shared);
        let Some((queues, _)) = shared.active.as_mut() else {
            return false;
        };
        fallback::fail_all(queues, &self.mem, &self.interrupt)
    }
}

impl IoHandler for Monitor {
    fn interest(&mut self, watches: &mut Vec<Watch>) {
        watches.clear();
        if self.dead() {
            watches.extend(self.kicks.iter().map(|k| Watch::readable(k.as_raw_fd())));
        } else {
            // Only the hang-up: the replies on this socket are for the vCPU that asked.
            watches.push(Watch::hangup(self.socket.as_raw_fd()));
        }
    }

    fn ready(&mut self, ready: &[Ready]) -> bool {
        if !self.dead() {
            if !ready.first().is_some_and(|r| r.failed) {
                return false;
            }
            self.backend_died();
            return self.serve();
        }
        for (kick, r) in self.kicks.iter().zip(ready) {
            if r.readable {
                // Only the wake-up matters; the count is irrelevant.
                let _ = kick.read();
            }
        }
        self.serve()
    }

    fn resumed(&mut self) -> bool {
        self.dead()
    }
}

#[cfg(test)]
mod tests;
