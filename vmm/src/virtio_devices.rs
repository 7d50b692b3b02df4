//! Placing virtio-mmio devices: which MMIO window and IRQ each gets (a pure function of the
//! configuration, so the kernel command line can announce them before anything is built), and
//! building each device with its ioeventfd and irqfd.
//!
//! Each block device is served by its own I/O thread (`ember_blk_<id>`), woken by the queue's
//! ioeventfd: disk I/O, however slow, never holds up the event loop (console input, other
//! devices) or a vCPU, and one thread per queue keeps requests, flushes included, in the
//! guest's order.
//!
//! Each network device has an I/O thread too (`ember_net_<id>`): it polls the TAP for exactly
//! the readiness the device waits for (a frame to read only while the guest has room for it,
//! writability only after a refused transmit) plus the queues' ioeventfds, so an idle or
//! back-pressured NIC sleeps.
//!
//! Order: the root drive first (so it is /dev/vda, as Firecracker does), then the other drives
//! in the order given, then the network interfaces in the order given (eth0, eth1, ...).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use api_server::model::{Drive, NetworkInterface, VmConfig};
use devices::virtio::VirtioInterrupt;
use devices::virtio::block::device::QueueServer;
use devices::virtio::block::{Block, Disk, DiskError};
use devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::net::{MacAddr, Net, NetServer, Tap, TapError};
use log::warn;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{VIRTIO_IRQ_BASE, VIRTIO_IRQ_MAX, VIRTIO_MMIO_START};
use crate::pause::{Parker, PauseGate};
use crate::poll::{poll, pollfd};
use crate::vm::{Vm, VmError};

/// Most virtio devices a VM can have: one IRQ each, from the first free legacy line up to the
/// last IOAPIC pin.
pub const MAX_DEVICES: usize = (VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// Requests a block device serves per turn of its I/O thread.
const BLOCK_BUDGET: usize = 256;
/// Frames a network device moves per direction per turn, so receive and transmit alternate.
const NET_BUDGET: usize = 64;

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
    let tap_fd = plan.tap.as_raw_fd();
    let net = Net::new(
        &plan.id,
        plan.tap,
        plan.mac,
        plan.mtu,
        mem.clone(),
        interrupt.clone(),
        wake.try_clone().map_err(VirtioError::Event)?,
    );
    let server = net.server();
    let forward = vec![
        rx.try_clone().map_err(VirtioError::Event)?,
        tx.try_clone().map_err(VirtioError::Event)?,
    ];
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        net,
        mem.clone(),
        interrupt,
        forward,
    )));
    let stop = stop.try_clone().map_err(VirtioError::Event)?;
    let events = NetEvents {
        rx,
        tx,
        wake,
        stop,
        tap: tap_fd,
        gate: gate.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("ember_net_{}", plan.id))
        .spawn(move || serve_net(&server, &events))
        .map_err(VirtioError::Event)?;
    Ok((transport, thread))
}

/// What a network device's I/O thread waits on. `tap` stays open as long as the device,
/// which the thread's [`NetServer`] keeps alive.
struct NetEvents {
    rx: EventFd,
    tx: EventFd,
    wake: EventFd,
    stop: EventFd,
    tap: std::os::fd::RawFd,
    gate: Arc<PauseGate>,
}

/// Moves frames whenever the guest or the TAP is ready, until `stop` is written.
fn serve_net(server: &NetServer<Tap>, ev: &NetEvents) {
    let (mut rx_more, mut tx_more) = (false, false);
    loop {
        let interest = server.interest();
        let mut tap_events = 0;
        if interest.readable {
            tap_events |= libc::POLLIN;
        }
        if interest.writable {
            tap_events |= libc::POLLOUT;
        }
        // A negative descriptor is skipped by poll: the TAP is not watched at all when the
        // device waits for nothing from it.
        let tap = if tap_events == 0 { -1 } else { ev.tap };
        let mut fds = [
            pollfd(ev.stop.as_raw_fd(), libc::POLLIN),
            pollfd(ev.wake.as_raw_fd(), libc::POLLIN),
            pollfd(ev.rx.as_raw_fd(), libc::POLLIN),
            pollfd(ev.tx.as_raw_fd(), libc::POLLIN),
            pollfd(tap, tap_events),
            pollfd(ev.gate.fd(), libc::POLLIN),
        ];
        let timeout = if rx_more || tx_more { 0 } else { -1 };
        if let Err(err) = poll(&mut fds, timeout) {
            warn!("virtio-net: the I/O thread stops: {err}");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[5].revents != 0 {
            // Paused: frames wait in the TAP and the rings until the VM resumes.
            ev.gate.park(Parker::Worker, None);
            (rx_more, tx_more) = (true, true);
            continue;
        }
        for (i, evt) in [(1, &ev.wake), (2, &ev.rx), (3, &ev.tx)] {
            if fds[i].revents != 0 {
                let _ = evt.read();
            }
        }
        let tap = fds[4].revents;
        // An error or hang-up on the TAP reaches the device through its next read or write,
        // which reports it and stops using the TAP.
        let tap_failed = tap & (libc::POLLERR | libc::POLLHUP) != 0;
        rx_more |=
            fds[1].revents != 0 || fds[2].revents != 0 || tap & libc::POLLIN != 0 || tap_failed;
        tx_more |=
            fds[1].revents != 0 || fds[3].revents != 0 || tap & libc::POLLOUT != 0 || tap_failed;
        if tx_more {
            tx_more = server.process_tx(NET_BUDGET);
        }
        if rx_more {
            rx_more = server.process_rx(NET_BUDGET);
        }
    }
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
    let server = block.queue_server();
    let forward = notify.try_clone().map_err(VirtioError::Event)?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        block,
        mem.clone(),
        interrupt,
        vec![forward],
    )));
    let stop = stop.try_clone().map_err(VirtioError::Event)?;
    let gate = gate.clone();
    let thread = std::thread::Builder::new()
        .name(format!("ember_blk_{id}"))
        .spawn(move || serve_block(&server, &notify, &stop, &gate))
        .map_err(VirtioError::Event)?;
    Ok((transport, thread))
}

/// Serves a block queue each time the guest notifies it, until `stop` is written.
fn serve_block(server: &QueueServer, notify: &EventFd, stop: &EventFd, gate: &PauseGate) {
    loop {
        let mut fds =
            [notify.as_raw_fd(), stop.as_raw_fd(), gate.fd()].map(|fd| pollfd(fd, libc::POLLIN));
        if let Err(err) = poll(&mut fds, -1) {
            warn!("virtio-blk: the I/O thread stops: {err}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[2].revents != 0 {
            // Paused: a notification that arrives meanwhile stays pending for afterwards.
            gate.park(Parker::Worker, None);
            continue;
        }
        if fds[0].revents != 0 {
            let _ = notify.read();
            // The budget bounds how long the device's lock is held (activation and reset wait
            // for it), not how long the thread works; a pause stops it between batches.
            while !gate.is_paused() && server.process_queue(BLOCK_BUDGET) {}
            if gate.is_paused() {
                // What is left stays in the ring; serve it once the VM resumes.
                let _ = notify.write(1);
            }
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
