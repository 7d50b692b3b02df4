//! The frontend side of a vhost-user connection (rust-vmm's `vhost` crate): what any device
//! whose queues another process serves needs (virtio-fs and vhost-user-blk use it).
//! [`device`] builds on it what those devices share: the connection across the driver's
//! activations and resets, the watch for the backend hanging up, and reconnecting.
//!
//! [`Backend`] owns the Unix socket to the backend process. Connecting claims ownership
//! (`SET_OWNER`), reads the backend's virtio features and negotiates the protocol features
//! ember uses (`MQ`, `REPLY_ACK`, `CONFIG`, `RESET_DEVICE`). On the driver's DRIVER_OK the
//! device calls [`Backend::activate`]: the negotiated features, the memory table (one entry
//! per guest RAM region, with the fd of the shared memfd behind it), and for each queue its
//! size, ring addresses (as ember's own virtual addresses, which the backend translates
//! through the table), start index, the eventfd that interrupts the guest for it as its call
//! fd (the line's irqfd, or the irqfd of the queue's MSI-X vector) and the queue's ioeventfd as
//! its kick fd. From then on the guest and the backend talk without ember.
//!
//! Every failure is an error naming the step, never a panic: the backend is another process
//! and is trusted no more than the guest. A backend that dies (its socket hangs up) fails the
//! request at once. Replies are awaited without a timeout, as in Firecracker and QEMU: the
//! vhost crate retries a receive that times out (`SO_RCVTIMEO`) in a busy loop, so a timeout
//! would turn a stuck backend into a spinning vCPU; a stuck backend stalls the vCPU that
//! touched the device until the backend answers or is killed.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::VIRTIO_F_VERSION_1;

/// Virtio feature bit a backend sets when it speaks vhost-user protocol features; it is
/// between ember and the backend, never offered to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The protocol features ember can use; the rest are not acknowledged.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// Errors talking to a vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The socket cannot be reached.
    #[error(
        "cannot connect to the vhost-user socket '{}' (is its backend running?)",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend failed a step of the protocol (refused it, hung up or sent garbage).
    #[error("the vhost-user backend failed at {step}")]
    Protocol {
        /// The message ember sent.
        step: &'static str,
        /// What the vhost crate saw.
        #[source]
        source: vhost::Error,
    },
    /// The backend offers no VIRTIO_F_VERSION_1; ember's transport is virtio 1.x only.
    #[error("the vhost-user backend does not offer VIRTIO_F_VERSION_1 (virtio 1.x)")]
    NotModern,
    /// The backend serves fewer queues than the device has.
    #[error("the vhost-user backend serves {offered} queues; the device needs {needed}")]
    TooFewQueues {
        /// Queues the device has.
        needed: usize,
        /// Queues the backend serves.
        offered: u64,
    },
    /// A guest memory region is not backed by a file the backend could map.
    #[error("guest memory is not shared (no memfd behind it), so the backend cannot map it")]
    MemoryNotShared,
    /// A ring address lies outside guest memory.
    #[error("queue {0}'s rings lie outside guest memory")]
    RingAddress(usize),
    /// The backend hung up and no new one is connected.
    #[error("the vhost-user backend is gone (it hung up)")]
    Gone,
    /// A restarted backend lacks features the driver negotiated with the one before.
    #[error("the vhost-user backend no longer offers the negotiated features {0:#x}")]
    FewerFeatures(u64),
    /// The backend's socket cannot be duplicated for watching.
    #[error("cannot watch the vhost-user backend's socket")]
    Socket(#[source] std::io::Error),
    /// More queues than the device declared, or not one kick and one call event per queue.
    #[error("{queues} queues ({max} at most) but {kicks} kick and {calls} call events")]
    Events {
        /// Queues handed over.
        queues: usize,
        /// Queues the device declared.
        max: usize,
        /// Kick events handed over.
        kicks: usize,
        /// Call events handed over.
        calls: usize,
    },
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
    move |source| BackendError::Protocol { step, source }
}

/// An owned, negotiated connection to a vhost-user backend.
pub struct Backend {
    frontend: Frontend,
    /// The backend's virtio features, as it offered them.
    features: u64,
    protocol: VhostUserProtocolFeatures,
    queues: usize,
}

impl Backend {
    /// Connects to the backend listening at `path` for a device with `queues` queues.
    pub fn connect(path: &Path, queues: usize) -> Result<Self, BackendError> {
        let stream = UnixStream::connect(path).map_err(|source| BackendError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Self::from_stream(stream, queues)
    }

    /// Negotiates over a connected `stream`: ownership, features, protocol features and (with
    /// `MQ`) that the backend serves `queues` queues.
    pub fn from_stream(stream: UnixStream, queues: usize) -> Result<Self, BackendError> {
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(BackendError::NotModern);
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            protocol = offered & wanted_protocol_features();
            frontend
                .set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request that has no reply of its own is acknowledged, so a refusal is
                // an error here instead of a silent stall later.
                frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let offered = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
                if offered < queues as u64 {
                    return Err(BackendError::TooFewQueues {
                        needed: queues,
                        offered,
                    });
                }
            }
        }
        Ok(Self {
            frontend,
            features,
            protocol,
            queues,
        })
    }

    /// The virtio features the backend offers the guest (without the vhost-user bit).
    pub fn device_features(&self) -> u64 {
        self.features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    /// The backend's configuration space (`len` bytes), if it serves one (`CONFIG`).
    pub fn config(&mut self, len: u32) -> Result<Option<Vec<u8>>, BackendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(None);
        }
        let buf = vec![0; len as usize];
        let (_, payload) = self
            .frontend
            .get_config(0, len, VhostUserConfigFlags::empty(), &buf)
            .map_err(step("GET_CONFIG"))?;
        Ok(Some(payload))
    }

    /// Hands the driver's `queues` (with `features` negotiated) to the backend: it reads
    /// `mem` through the memory table, is kicked through `kicks` and raises the guest's
    /// interrupt by writing `calls` (one of each per queue).
    pub fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        features: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[&EventFd],
    ) -> Result<(), BackendError> {
        let n = queues.len();
        if n != kicks.len() || n != calls.len() || n > self.queues {
            return Err(BackendError::Events {
                queues: n,
                max: self.queues,
                kicks: kicks.len(),
                calls: calls.len(),
            });
        }
        let features = features | (self.features & VHOST_USER_F_PROTOCOL_FEATURES);
        self.frontend
            .set_features(features)
            .map_err(step("SET_FEATURES"))?;
        let regions = memory_table(mem)?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(step("SET_MEM_TABLE"))?;
        for (i, ((queue, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
            self.set_vring(mem, i, queue, kick, call)?;
        }
        Ok(())
    }

    fn set_vring(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queue: &Queue,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), BackendError> {
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| BackendError::RingAddress(index))
        };
        let vring = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host(queue.desc_table())?,
            used_ring_addr: host(queue.used_ring())?,
            avail_ring_addr: host(queue.avail_ring())?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_num(index, queue.size())
            .map_err(step("SET_VRING_NUM"))?;
        f.set_vring_addr(index, &vring)
            .map_err(step("SET_VRING_ADDR"))?;
        f.set_vring_base(index, queue.next_avail())
            .map_err(step("SET_VRING_BASE"))?;
        f.set_vring_call(index, call)
            .map_err(step("SET_VRING_CALL"))?;
        f.set_vring_kick(index, kick)
            .map_err(step("SET_VRING_KICK"))?;
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            // With protocol features, rings start disabled (vhost-user spec, "Ring states").
            f.set_vring_enable(index, true)
                .map_err(step("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops the backend serving the queues (the driver reset the device): `RESET_DEVICE`
    /// where offered, else `GET_VRING_BASE` on each queue, which stops it.
    pub fn reset(&mut self) -> Result<(), BackendError> {
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            return self.frontend.reset_device().map_err(step("RESET_DEVICE"));
        }
        for i in 0..self.queues {
            self.frontend
                .get_vring_base(i)
                .map_err(step("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    /// The socket, for watching the backend hang up.
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// The memory table: each guest RAM region with the file and offset that back it.
fn memory_table(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, BackendError> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|_| BackendError::MemoryNotShared)
        })
        .collect()
}

pub mod device;

#[cfg(test)]
pub(crate) mod tests;
