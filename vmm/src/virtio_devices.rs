//! Placing virtio-mmio devices: which MMIO window and IRQ each gets (a pure function of the
//! configuration, so the kernel command line can announce them before anything is built), and
//! building each device with its ioeventfd and irqfd.
//!
//! Each device gets its own I/O worker thread ([`io_worker`]) running the device's handler.
//! A block device's (`ember_blk_<id>`) is woken by the queue's ioeventfd: disk I/O, however
//! slow, never holds up the event loop (console input, other devices) or a vCPU, and one
//! thread per queue keeps requests, flushes included, in the guest's order. A network
//! device's (`ember_net_<id>`) waits on the TAP for exactly the readiness the device can use
//! (a frame to read only while the guest has room for it, writability only after a refused
//! transmit) plus the queues' ioeventfds, so an idle or back-pressured NIC sleeps.
//!
//! Order: the root drive first (so it is /dev/vda, as Firecracker does), then the other drives
//! in the order given, then the network interfaces in the order given (eth0, eth1, ...).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use api_server::model::{Drive, NetworkInterface, VmConfig};
use devices::virtio::VirtioInterrupt;
use devices::virtio::block::{Block, Disk, DiskError};
use devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::net::{MacAddr, Net, Tap, TapError};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{VIRTIO_IRQ_BASE, VIRTIO_IRQ_MAX, VIRTIO_MMIO_START};
use crate::io_worker;
use crate::pause::PauseGate;
use crate::vm::{Vm, VmError};

/// Most virtio devices a VM can have: one IRQ each, from the first free legacy line up to the
/// last IOAPIC pin.
pub const MAX_DEVICES: usize = (VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

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
    /// A network interface's TAP cannot be used.
    #[error("network interface '{id}'")]
    Tap {
        /// The interface id.
        id: String,
        /// What is wrong with its TAP.
        #[source]
        source: TapError,
    },
    /// A network interface's configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// The network interfaces in guest order, with their slots (after the drives').
pub fn net_slots(cfg: &VmConfig) -> Vec<(&NetworkInterface, Slot)> {
    let first = cfg.drives.len();
    cfg.network_interfaces
        .iter()
        .enumerate()
        .map(|(i, n)| (n, Slot::nth(first + i)))
        .collect()
}

/// The kernel command-line additions for the devices, and `root=` for a root drive.
pub fn cmdline_params(cfg: &VmConfig) -> String {
    let drives = &cfg.drives;
    let mut params: Vec<String> = drive_slots(drives)
        .iter()
        .map(|(_, slot)| slot.cmdline_param())
        .chain(net_slots(cfg).iter().map(|(_, slot)| slot.cmdline_param()))
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
        .map(|(drive, slot)| Ok((drive.drive_id.clone(), open_disk(drive)?, slot)))
        .collect()
}

/// Opens `drive`'s image as its configuration says.
pub fn open_disk(drive: &Drive) -> Result<Disk, VirtioError> {
    // Firecracker's "Unsafe" cache type acknowledges flushes without syncing.
    let writeback = drive.cache_type.as_deref() != Some("Unsafe");
    let path = std::path::Path::new(&drive.path_on_host);
    Disk::open(path, drive.is_read_only, writeback).map_err(|source| VirtioError::Drive {
        id: drive.drive_id.clone(),
        source,
    })
}

/// A network interface with its TAP open, ready to become a device.
pub struct NetPlan {
    id: String,
    tap: Tap,
    mac: MacAddr,
    mtu: Option<u16>,
    slot: Slot,
}

/// Attaches to every interface's TAP, in guest order. Done before KVM is touched, so a missing
/// or busy TAP is reported first.
pub fn open_taps(cfg: &VmConfig) -> Result<Vec<NetPlan>, VirtioError> {
    net_slots(cfg)
        .into_iter()
        .map(|(iface, slot)| {
            let tap = Tap::open(&iface.host_dev_name).map_err(|source| VirtioError::Tap {
                id: iface.iface_id.clone(),
                source,
            })?;
            Ok(NetPlan {
                id: iface.iface_id.clone(),
                tap,
                mac: crate::config::guest_mac(iface)?,
                mtu: iface.mtu,
                slot,
            })
        })
        .collect()
}

impl NetPlan {
    /// The interface's configuration id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where its MMIO window starts.
    pub fn base(&self) -> u64 {
        self.slot.base
    }
}

/// A network device as the VMM holds it.
pub type SharedNet = Arc<Mutex<MmioTransport<Net<Tap>>>>;

/// Builds the network device `plan` describes, wires its ioeventfds and irqfd, and starts its
/// I/O thread, which ends when `stop` is written.
pub fn build_net(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    plan: NetPlan,
    stop: &EventFd,
    gate: &Arc<PauseGate>,
) -> Result<(SharedNet, JoinHandle<()>), VirtioError> {
    let event = || EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::Event);
    let interrupt = Arc::new(VirtioInterrupt::new(event()?));
    vm.register_irqfd(interrupt.irq(), plan.slot.irq)?;
    // One ioeventfd per queue, matched on the queue index the driver writes.
    let (rx, tx) = (event()?, event()?);
    vm.register_ioevent(&rx, plan.slot.base + REG_QUEUE_NOTIFY, 0)?;
    vm.register_ioevent(&tx, plan.slot.base + REG_QUEUE_NOTIFY, 1)?;
    let wake = event()?;
    let net = Net::new(
        &plan.id,
        plan.tap,
        plan.mac,
        plan.mtu,
        mem.clone(),
        interrupt.clone(),
        wake,
    );
    let handler = net.handler([
        rx.try_clone().map_err(VirtioError::Event)?,
        tx.try_clone().map_err(VirtioError::Event)?,
    ]);
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        net,
        mem.clone(),
        interrupt,
        vec![rx, tx],
    )));
    let stop = stop.try_clone().map_err(VirtioError::Event)?;
    let thread = io_worker::spawn(
        format!("ember_net_{}", plan.id),
        handler,
        stop,
        gate.clone(),
    )
    .map_err(VirtioError::Event)?;
    Ok((transport, thread))
}

/// Builds the block device `id` serving `disk` at `slot`, wires its notify ioeventfd and
/// irqfd, and starts its I/O thread, which ends when `stop` is written. Returns the transport
/// (for the MMIO bus) and the thread.
pub fn build_block(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    (id, disk, slot): (String, Disk, Slot),
    stop: &EventFd,
    gate: &Arc<PauseGate>,
) -> Result<(SharedBlock, JoinHandle<()>), VirtioError> {
    let event = || EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::Event);
    let interrupt = Arc::new(VirtioInterrupt::new(event()?));
    vm.register_irqfd(interrupt.irq(), slot.irq)?;
    let notify = event()?;
    vm.register_ioevent(&notify, slot.base + REG_QUEUE_NOTIFY, 0)?;
    let wake = notify.try_clone().map_err(VirtioError::Event)?;
    let block = Block::new(disk, &id, mem.clone(), interrupt.clone(), wake);
    let handler = block.queue_server();
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        block,
        mem.clone(),
        interrupt,
        vec![notify],
    )));
    let stop = stop.try_clone().map_err(VirtioError::Event)?;
    let thread = io_worker::spawn(format!("ember_blk_{id}"), handler, stop, gate.clone())
        .map_err(VirtioError::Event)?;
    Ok((transport, thread))
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

    fn with(drives: Vec<Drive>, taps: &[&str]) -> VmConfig {
        VmConfig {
            drives,
            network_interfaces: taps
                .iter()
                .map(|t| NetworkInterface {
                    iface_id: format!("if_{t}"),
                    host_dev_name: (*t).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cmdline_announces_devices_and_root() {
        let mut root = drive("rootfs", true);
        assert_eq!(
            cmdline_params(&with(vec![root.clone()], &[])),
            format!(
                "virtio_mmio.device=4K@{VIRTIO_MMIO_START:#x}:{VIRTIO_IRQ_BASE} root=/dev/vda rw"
            )
        );
        root.is_read_only = true;
        root.partuuid = Some("abcd-01".into());
        assert!(cmdline_params(&with(vec![root], &[])).ends_with("root=PARTUUID=abcd-01 ro"));
        assert_eq!(
            cmdline_params(&with(vec![drive("data", false)], &[]))
                .matches("virtio_mmio")
                .count(),
            1
        );
        assert_eq!(cmdline_params(&VmConfig::default()), "");
    }

    #[test]
    fn network_interfaces_follow_the_drives() {
        let cfg = with(
            vec![drive("data", false), drive("rootfs", true)],
            &["tap0", "tap1"],
        );
        let nets = net_slots(&cfg);
        assert_eq!(nets[0].0.host_dev_name, "tap0");
        assert_eq!(nets[0].1, Slot::nth(2));
        assert_eq!(nets[1].1, Slot::nth(3));
        let params = cmdline_params(&cfg);
        assert_eq!(params.matches("virtio_mmio.device=").count(), 4);
        assert!(params.contains(&Slot::nth(3).cmdline_param()));
        assert!(params.ends_with("root=/dev/vda rw"));
    }

    #[test]
    fn slots_stay_in_the_mmio_hole_and_on_ioapic_pins() {
        let last = Slot::nth(MAX_DEVICES - 1);
        assert!(last.base + MMIO_WINDOW <= crate::arch::x86_64::layout::IOAPIC_START);
        assert!(last.irq < u32::from(crate::arch::x86_64::layout::IOAPIC_PINS));
    }
}
