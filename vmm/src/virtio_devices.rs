//! Placing virtio-mmio devices: which MMIO window and IRQ each gets (a pure function of the
//! configuration, so the kernel command line can announce them before anything is built), and
//! building each device with its ioeventfd and irqfd.
//!
//! Each block device is served by its own I/O thread (`ember_blk_<id>`), woken by the queue's
//! ioeventfd: disk I/O, however slow, never holds up the event loop (console input, other
//! devices) or a vCPU, and one thread per queue keeps requests, flushes included, in the
//! guest's order.
//!
//! Order: the root drive first (so it is /dev/vda, as Firecracker does), then the other drives
//! in the order given.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use api_server::model::Drive;
use devices::virtio::VirtioInterrupt;
use devices::virtio::block::device::QueueServer;
use devices::virtio::block::{Block, Disk, DiskError};
use devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, REG_QUEUE_NOTIFY};
use log::warn;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{VIRTIO_IRQ_BASE, VIRTIO_IRQ_MAX, VIRTIO_MMIO_START};
use crate::vm::{Vm, VmError};

/// Most virtio devices a VM can have: one IRQ each, from the first free legacy line up to the
/// last IOAPIC pin.
pub const MAX_DEVICES: usize = (VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// Requests a block device serves per turn of its I/O thread.
const BLOCK_BUDGET: usize = 256;

/// Errors building virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A drive's image cannot be used.
    #[error("drive '{id}'")]
    Drive {
        /// The drive id.
        id: String,
        /// What is wrong with its image.
        #[source]
        source: DiskError,
    },
    /// KVM refused an eventfd or irqfd.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// An event fd could not be created.
    #[error("cannot create a virtio event")]
    Event(#[source] std::io::Error),
}

/// Where one device lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Base of its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub irq: u32,
}

impl Slot {
    fn nth(index: usize) -> Self {
        Self {
            base: VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW,
            irq: VIRTIO_IRQ_BASE + index as u32,
        }
    }

    /// The kernel parameter that announces the device.
    pub fn cmdline_param(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// The drives in guest order, with their slots.
pub fn drive_slots(drives: &[Drive]) -> Vec<(&Drive, Slot)> {
    let root = drives.iter().filter(|d| d.is_root_device);
    let others = drives.iter().filter(|d| !d.is_root_device);
    root.chain(others)
        .enumerate()
        .map(|(i, d)| (d, Slot::nth(i)))
        .collect()
}

/// The kernel command-line additions for the drives: the devices, and `root=` for a root drive.
pub fn cmdline_params(drives: &[Drive]) -> String {
    let mut params: Vec<String> = drive_slots(drives)
        .iter()
        .map(|(_, slot)| slot.cmdline_param())
        .collect();
    if let Some(root) = drives.iter().find(|d| d.is_root_device) {
        let device = match &root.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".into(),
        };
        let mode = if root.is_read_only { "ro" } else { "rw" };
        params.push(format!("root={device} {mode}"));
    }
    params.join(" ")
}

/// A block device as the VMM holds it.
pub type SharedBlock = Arc<Mutex<MmioTransport<Block>>>;

/// The drives' images, opened in guest order, each with its slot. Done before anything else
/// is built, so a bad image is reported before KVM is touched.
pub fn open_drives(drives: &[Drive]) -> Result<Vec<(String, Disk, Slot)>, VirtioError> {
    drive_slots(drives)
        .into_iter()
        .map(|(drive, slot)| {
            // Firecracker's "Unsafe" cache type acknowledges flushes without syncing.
            let writeback = drive.cache_type.as_deref() != Some("Unsafe");
            let path = std::path::Path::new(&drive.path_on_host);
            let disk = Disk::open(path, drive.is_read_only, writeback).map_err(|source| {
                VirtioError::Drive {
                    id: drive.drive_id.clone(),
                    source,
                }
            })?;
            Ok((drive.drive_id.clone(), disk, slot))
        })
        .collect()
}

/// Builds the block device `id` serving `disk` at `slot`, wires its notify ioeventfd and
/// irqfd, and starts its I/O thread, which ends when `stop` is written. Returns the transport
/// (for the MMIO bus) and the thread.
pub fn build_block(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    (id, disk, slot): (String, Disk, Slot),
    stop: &EventFd,
) -> Result<(SharedBlock, JoinHandle<()>), VirtioError> {
    let event = || EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::Event);
    let interrupt = Arc::new(VirtioInterrupt::new(event()?));
    vm.register_irqfd(interrupt.irq(), slot.irq)?;
    let notify = event()?;
    vm.register_ioevent(&notify, slot.base + REG_QUEUE_NOTIFY, 0)?;
    let block = Block::new(disk, &id, mem.clone(), interrupt.clone());
    let server = block.queue_server();
    let forward = notify.try_clone().map_err(VirtioError::Event)?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        block,
        mem.clone(),
        interrupt,
        vec![forward],
    )));
    let stop = stop.try_clone().map_err(VirtioError::Event)?;
    let thread = std::thread::Builder::new()
        .name(format!("ember_blk_{id}"))
        .spawn(move || serve_block(&server, &notify, &stop))
        .map_err(VirtioError::Event)?;
    Ok((transport, thread))
}

/// Serves a block queue each time the guest notifies it, until `stop` is written.
fn serve_block(server: &QueueServer, notify: &EventFd, stop: &EventFd) {
    loop {
        let mut fds = [notify, stop].map(|evt| libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a valid array of two pollfds for descriptors owned by the caller.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            warn!("virtio-blk: the I/O thread stops: {err}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            let _ = notify.read();
            // The budget bounds how long the device's lock is held (activation and reset wait
            // for it), not how long the thread works.
            while server.process_queue(BLOCK_BUDGET) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            path_on_host: format!("{id}.img"),
            is_root_device: root,
            ..Default::default()
        }
    }

    #[test]
    fn root_drive_comes_first_and_slots_are_distinct() {
        let drives = [
            drive("data", false),
            drive("rootfs", true),
            drive("logs", false),
        ];
        let slots = drive_slots(&drives);
        let order: Vec<_> = slots.iter().map(|(d, _)| d.drive_id.as_str()).collect();
        assert_eq!(order, ["rootfs", "data", "logs"]);
        assert_eq!(
            slots[0].1,
            Slot {
                base: VIRTIO_MMIO_START,
                irq: VIRTIO_IRQ_BASE
            }
        );
        assert_eq!(slots[2].1.base, VIRTIO_MMIO_START + 0x2000);
        assert_eq!(slots[2].1.irq, VIRTIO_IRQ_BASE + 2);
    }

    #[test]
    fn cmdline_announces_devices_and_root() {
        let mut root = drive("rootfs", true);
        assert_eq!(
            cmdline_params(std::slice::from_ref(&root)),
            format!(
                "virtio_mmio.device=4K@{VIRTIO_MMIO_START:#x}:{VIRTIO_IRQ_BASE} root=/dev/vda rw"
            )
        );
        root.is_read_only = true;
        root.partuuid = Some("abcd-01".into());
        assert!(cmdline_params(&[root]).ends_with("root=PARTUUID=abcd-01 ro"));
        assert_eq!(
            cmdline_params(&[drive("data", false)])
                .matches("virtio_mmio")
                .count(),
            1
        );
        assert_eq!(cmdline_params(&[]), "");
    }

    #[test]
    fn slots_stay_in_the_mmio_hole_and_on_ioapic_pins() {
        let last = Slot::nth(MAX_DEVICES - 1);
        assert!(last.base + MMIO_WINDOW <= crate::arch::x86_64::layout::IOAPIC_START);
        assert!(last.irq < u32::from(crate::arch::x86_64::layout::IOAPIC_PINS));
    }
}
