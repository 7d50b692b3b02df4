//! The virtio-pci transport driven as a guest driver would: through configuration space and
//! BAR accesses only, against a real device (virtio-rng) on mock memory.

use std::io;
use std::sync::Mutex;

use vm_memory::GuestAddress;

use super::*;
use crate::pci::bus::{BarMover, PciBus, PciConfigMmio};
use crate::pci::msix::{CONTROL_ENABLE, MsiMessage, MsiRouting};
use crate::sync::lock;
use crate::virtio::rng::device::RNG_BUDGET;
use crate::virtio::rng::{Rng, RngServer};
use crate::virtio::testing::Driver;
use crate::virtio::{InterruptSource, NO_VECTOR, status};

const BAR: u64 = 0x10_0000_0000;
const RING: u64 = 0x1000;
const DATA: u64 = 0x2_0000;
const MSI_ADDRESS: u64 = 0xfee0_0000;

#[derive(Default)]
struct Routes(Mutex<Vec<(u16, MsiMessage)>>);

impl MsiRouting for Routes {
    fn route(&self, vector: u16, message: MsiMessage) -> io::Result<()> {
        lock(&self.0).push((vector, message));
        Ok(())
    }
}

struct Rig {
    t: VirtioPci<Rng>,
    mem: GuestMemoryMmap,
    server: RngServer,
    interrupt: Arc<VirtioInterrupt>,
    routes: Arc<Routes>,
    notify: EventFd,
}

fn event() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

impl Rig {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let routes = Arc::new(Routes::default());
        let irqs = (0..vectors_needed(1)).map(|_| event()).collect();
        let msix = Arc::new(Msix::new(irqs, routes.clone()).unwrap());
        let interrupt = Arc::new(VirtioInterrupt::with_msix(event(), msix, 1));
        let notify = event();
        let rng = Rng::new(mem.clone(), interrupt.clone(), event());
        let server = rng.server();
        let t = VirtioPci::new(
            rng,
            mem.clone(),
            interrupt.clone(),
            vec![notify.try_clone().unwrap()],
            BAR,
        )
        .unwrap();
        Self {
            t,
            mem,
            server,
            interrupt,
            routes,
            notify,
        }
    }

    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.t.read(offset, &mut data[..len]);
        u64::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, len: usize, value: u64) {
        self.t.write(offset, &value.to_le_bytes()[..len]);
    }

    fn config_byte(&mut self, at: usize) -> u8 {
        (self.t.read_config(at / 4) >> ((at % 4) * 8)) as u8
    }

    /// The capabilities as (offset, id) from the list pointer.
    fn capabilities(&mut self) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut at = usize::from(self.config_byte(0x34));
        while at != 0 && out.len() < 48 {
            out.push((at, self.config_byte(at)));
            at = usize::from(self.config_byte(at + 1));
        }
        out
    }

    fn msix_cap(&mut self) -> usize {
        let caps = self.capabilities();
        caps.iter()
            .find(|(_, id)| *id == msix::CAPABILITY_ID)
            .unwrap()
            .0
    }

    /// Enables MSI-X and gives each vector a message, unmasked, as Linux does.
    fn enable_msix(&mut self) {
        let cap = self.msix_cap();
        self.t.write_config(cap + 2, &CONTROL_ENABLE.to_le_bytes());
        for v in 0..2u64 {
            let entry = MSIX_TABLE + v * msix::ENTRY_SIZE;
            self.write(entry, 8, MSI_ADDRESS);
            self.write(entry + 8, 4, 0x40 + v);
            self.write(entry + 12, 4, 0);
        }
    }

    fn status(&mut self) -> u8 {
        self.read(COMMON + DEVICE_STATUS, 1) as u8
    }

    fn set_status(&mut self, value: u32) {
        self.write(COMMON + DEVICE_STATUS, 1, u64::from(value));
    }

    /// Negotiates `features_hi` in the upper page and sets up queue 0 on `driver`'s rings with
    /// `queue_vector`, then sets DRIVER_OK.
    fn bring_up(&mut self, features_hi: u32, driver: &Driver, queue_vector: u16) {
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        self.write(DRIVER_FEATURE_SELECT, 4, 1);
        self.write(DRIVER_FEATURE, 4, u64::from(features_hi));
        self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        self.write(CONFIG_MSIX_VECTOR, 2, 1);
        self.write(QUEUE_SELECT, 2, 0);
        self.write(QUEUE_SIZE, 2, 16);
        self.write(QUEUE_MSIX_VECTOR, 2, u64::from(queue_vector));
        let (desc, avail, used) = driver.rings();
        // Both ways a driver writes a 64-bit field: whole, or in 32-bit halves.
        self.write(QUEUE_DESC, 8, desc);
        self.write(QUEUE_DRIVER, 4, avail);
        self.write(QUEUE_DRIVER + 4, 4, 0);
        self.write(QUEUE_DEVICE, 4, used);
        self.write(QUEUE_ENABLE, 2, 1);
        self.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    fn fired(&self, vector: u16) -> bool {
        self.interrupt
            .msix()
            .unwrap()
            .irq(vector)
            .unwrap()
            .read()
            .is_ok()
    }

    fn intx_fired(&self) -> bool {
        self.interrupt.irq().read().is_ok()
    }

    /// One request through the ring, served by the device.
    fn request(&mut self, driver: &mut Driver) -> Vec<(u16, u32)> {
        driver.add(&self.mem, &[(DATA, 64, true)]).unwrap();
        self.write(notify_offset(0), 2, 0);
        assert_eq!(
            self.notify.read().unwrap(),
            1,
            "the notification reached the queue's eventfd"
        );
        while self.server.process_queue(RNG_BUDGET) {}
        driver.take_used(&self.mem).unwrap()
    }
}

#[test]
fn the_header_names_a_modern_virtio_device_with_one_64_bit_bar() {
    let mut rig = Rig::new();
    assert_eq!(rig.t.read_config(0), 0x1044_1af4, "0x1040 + entropy (4)");
    assert_eq!(rig.t.read_config(2) & 0xff, 1, "revision 1: modern");
    assert_eq!(rig.t.read_config(11), 0x1044_1af4, "subsystem");
    assert_eq!(rig.t.read_config(4), BAR as u32 | 0x4, "64-bit memory BAR");
    assert_eq!(rig.t.read_config(5), (BAR >> 32) as u32);
    rig.t.write_config(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(rig.t.read_config(4), !(BAR_SIZE as u32 - 1) | 0x4, "sized");
    assert_eq!(rig.t.read_config(15) >> 8 & 0xff, 1, "INTA");
    rig.t.set_interrupt_line(11);
    assert_eq!(rig.t.read_config(15) & 0xff, 11);
    assert_eq!(rig.t.bar_address(), BAR);
    assert_eq!(rig.t.num_queues(), 1);
}

#[test]
fn the_capabilities_point_into_the_bar_as_documented() {
    let mut rig = Rig::new();
    let caps = rig.capabilities();
    let mut virtio = Vec::new();
    for (at, id) in &caps {
        if *id != VENDOR_CAPABILITY {
            continue;
        }
        let word = |rig: &mut Rig, i: usize| rig.t.read_config(at / 4 + i);
        let head = word(&mut rig, 0);
        let (len, cfg_type, bar) = (
            (head >> 16) as u8,
            (head >> 24) as u8,
            word(&mut rig, 1) as u8,
        );
        virtio.push((cfg_type, len, bar, word(&mut rig, 2), word(&mut rig, 3)));
        if cfg_type == CAP_NOTIFY {
            assert_eq!(word(&mut rig, 4), NOTIFY_OFF_MULTIPLIER);
        }
    }
    assert_eq!(
        virtio,
        vec![
            (CAP_COMMON, 16, 0, 0x0, 0x38),
            (CAP_NOTIFY, 20, 0, 0x800, 0x800),
            (CAP_ISR, 16, 0, 0x400, 0x4),
            (CAP_DEVICE, 16, 0, 0x1000, 0x1000),
            (CAP_PCI_CFG, 20, 0, 0, 0),
        ]
    );
    let cap = rig.msix_cap();
    let control = rig.t.read_config(cap / 4) >> 16;
    assert_eq!(control, 1, "two vectors (N-1), disabled, unmasked");
    assert_eq!(
        rig.t.read_config(cap / 4 + 1),
        0x2000,
        "table in BAR 0 at 0x2000"
    );
    assert_eq!(
        rig.t.read_config(cap / 4 + 2),
        0x3000,
        "PBA in BAR 0 at 0x3000"
    );
    assert_eq!(caps.len(), 6);
}

#[test]
fn a_driver_brings_the_device_up_and_each_queue_interrupts_on_its_vector() {
    let mut rig = Rig::new();
    rig.enable_msix();
    assert_eq!(rig.read(NUM_QUEUES, 2), 1);
    rig.write(DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(rig.read(DEVICE_FEATURE, 4) & 1, 1, "VERSION_1 offered");
    let mut driver = Driver::new(RING, 16);
    rig.bring_up(1, &driver, 0);
    assert!(rig.t.is_active());
    assert_eq!(rig.read(CONFIG_MSIX_VECTOR, 2), 1);
    assert_eq!(rig.read(QUEUE_MSIX_VECTOR, 2), 0);
    assert_eq!(rig.read(QUEUE_SIZE, 2), 16);
    assert_eq!(
        rig.read(QUEUE_ENABLE, 2),
        1,
        "still reads back after activation"
    );
    assert_eq!(rig.read(QUEUE_NOTIFY_OFF, 2), 0);
    assert_eq!(rig.read(QUEUE_DEVICE, 8), driver.rings().2);
    assert_eq!(rig.read(QUEUE_DRIVER + 4, 4), 0);
    let message = |data| MsiMessage {
        address: MSI_ADDRESS,
        data,
    };
    assert_eq!(
        *lock(&rig.routes.0),
        vec![(0, message(0x40)), (1, message(0x41))]
    );

    assert_eq!(rig.request(&mut driver), vec![(0, 64)]);
    assert!(rig.fired(0), "the queue's vector");
    assert!(!rig.fired(1) && !rig.intx_fired(), "and nothing else");
    assert_eq!(rig.read(ISR, 1), 0, "MSI-X sets no queue bit in the ISR");

    rig.t.config_changed();
    assert!(rig.fired(1), "configuration changes on their own vector");
    assert_eq!(rig.read(CONFIG_GENERATION, 1), 1);
}

#[test]
fn a_masked_vector_holds_the_interrupt_pending_until_the_driver_unmasks_it() {
    let mut rig = Rig::new();
    rig.enable_msix();
    let mut driver = Driver::new(RING, 16);
    rig.bring_up(1, &driver, 0);
    rig.write(MSIX_TABLE + 12, 4, 1);
    assert_eq!(rig.request(&mut driver).len(), 1);
    assert!(!rig.fired(0));
    assert_eq!(rig.read(MSIX_PBA, 8), 1, "pending");
    rig.write(MSIX_TABLE + 12, 4, 0);
    assert!(rig.fired(0), "delivered on unmask");
    assert_eq!(rig.read(MSIX_PBA, 8), 0);
}

#[test]
fn without_msix_the_device_interrupts_through_intx_and_the_isr() {
    let mut rig = Rig::new();
    let mut driver = Driver::new(RING, 16);
    rig.bring_up(1, &driver, 0);
    assert_eq!(rig.request(&mut driver).len(), 1);
    assert!(rig.intx_fired() && !rig.fired(0));
    assert_eq!(rig.read(ISR, 1), 1, "queue interrupt");
    assert_eq!(rig.read(ISR, 1), 0, "reading cleared it");
}

#[test]
fn vectors_past_the_table_read_back_as_no_vector() {
    let mut rig = Rig::new();
    rig.write(CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(rig.read(CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    rig.write(QUEUE_SELECT, 2, 0);
    rig.write(QUEUE_MSIX_VECTOR, 2, 7);
    assert_eq!(rig.read(QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    rig.write(QUEUE_SELECT, 2, 1);
    rig.write(QUEUE_MSIX_VECTOR, 2, 0);
    assert_eq!(
        rig.read(QUEUE_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR),
        "no queue 1"
    );
    assert_eq!(rig.read(QUEUE_SIZE, 2), 0, "no queue 1");
}

#[test]
fn features_are_validated_as_over_mmio() {
    let mut rig = Rig::new();
    let driver = Driver::new(RING, 16);
    rig.bring_up(0, &driver, 0);
    assert_eq!(
        rig.status() & status::FEATURES_OK as u8,
        0,
        "legacy drivers are refused"
    );
    assert!(!rig.t.is_active());
    let mut rig = Rig::new();
    rig.bring_up(1 | 1 << 20, &driver, 0);
    assert_eq!(
        rig.status() & status::FEATURES_OK as u8,
        0,
        "a feature never offered"
    );
}

#[test]
fn a_reset_forgets_queues_and_vectors_and_the_device_comes_up_again() {
    let mut rig = Rig::new();
    rig.enable_msix();
    let driver = Driver::new(RING, 16);
    rig.bring_up(1, &driver, 0);
    assert!(rig.t.is_active());
    rig.set_status(0);
    assert!(!rig.t.is_active());
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.read(CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(rig.read(QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(rig.read(QUEUE_ENABLE, 2), 0);
    assert_eq!(rig.read(QUEUE_SIZE, 2), 256, "back to the maximum");
    assert!(
        rig.interrupt.msix().unwrap().enabled(),
        "MSI-X belongs to the PCI function"
    );

    // A ring outside guest memory: DEVICE_NEEDS_RESET and a configuration interrupt.
    rig.bring_up(1, &Driver::new(0xfff0_0000, 16), 0);
    assert!(!rig.t.is_active());
    assert_ne!(rig.status() & status::DEVICE_NEEDS_RESET as u8, 0);
    assert!(rig.fired(1));
    rig.set_status(0);
    let mut driver = Driver::new(RING, 16);
    rig.bring_up(1, &driver, 0);
    assert!(rig.t.is_active());
    assert_eq!(
        rig.request(&mut driver).len(),
        1,
        "works again after a reset"
    );
}

#[test]
fn the_pci_cfg_capability_is_a_window_into_the_bar() {
    let mut rig = Rig::new();
    let caps = rig.capabilities();
    let cap = caps
        .iter()
        .find(|(at, id)| *id == VENDOR_CAPABILITY && rig.config_byte(at + 3) == CAP_PCI_CFG)
        .unwrap()
        .0;
    let window = |rig: &mut Rig, offset: u32, len: u32| {
        rig.t.write_config(cap + 8, &offset.to_le_bytes());
        rig.t.write_config(cap + 12, &len.to_le_bytes());
    };
    window(&mut rig, NUM_QUEUES as u32, 2);
    assert_eq!(
        rig.t.read_config(cap / 4 + 4),
        1,
        "num_queues through the window"
    );
    window(&mut rig, DEVICE_STATUS as u32, 1);
    rig.t.write_config(cap + 16, &[status::ACKNOWLEDGE as u8]);
    assert_eq!(
        rig.status(),
        status::ACKNOWLEDGE as u8,
        "device_status written through it"
    );
    window(&mut rig, NUM_QUEUES as u32 + 1, 2);
    assert_eq!(
        rig.t.read_config(cap / 4 + 4),
        0,
        "a misaligned window reads nothing"
    );
    window(&mut rig, BAR_SIZE as u32, 4);
    assert_eq!(rig.t.read_config(cap / 4 + 4), 0, "nor one past the BAR");
    window(&mut rig, DEVICE_STATUS as u32, 1);
    rig.t.write_config(cap + 4, &[1]);
    rig.t.write_config(cap + 16, &[0]);
    assert_eq!(
        rig.status(),
        status::ACKNOWLEDGE as u8,
        "BAR 1 does not exist: ignored"
    );
    rig.t.write_config(cap + 4, &[0]);
    rig.t.write_config(cap + 16, &0u16.to_le_bytes());
    assert_eq!(
        rig.status(),
        status::ACKNOWLEDGE as u8,
        "a write of the wrong width too"
    );
    rig.t.write_config(cap + 16, &[0]);
    assert_eq!(rig.status(), 0, "the right one resets the device");
}

#[test]
fn a_transport_refuses_an_interrupt_that_does_not_fit_the_device() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let build = |interrupt: VirtioInterrupt| {
        let interrupt = Arc::new(interrupt);
        let rng = Rng::new(mem.clone(), interrupt.clone(), event());
        VirtioPci::new(rng, mem.clone(), interrupt, vec![event()], BAR).err()
    };
    let msix = |n: usize| {
        let irqs = (0..n).map(|_| event()).collect();
        Arc::new(Msix::new(irqs, Arc::new(Routes::default())).unwrap())
    };
    assert!(matches!(
        build(VirtioInterrupt::new(event())),
        Some(PciTransportError::NoMsix)
    ));
    assert!(matches!(
        build(VirtioInterrupt::with_msix(event(), msix(2), 2)),
        Some(PciTransportError::InterruptQueues {
            queues: 1,
            interrupt: 2
        })
    ));
    assert!(matches!(
        build(VirtioInterrupt::with_msix(event(), msix(1), 1)),
        Some(PciTransportError::Vectors { vectors: 1, .. })
    ));
    assert!(matches!(
        build(VirtioInterrupt::with_msix(event(), msix(257), 1)),
        Some(PciTransportError::Vectors { vectors: 257, .. })
    ));
    assert!(build(VirtioInterrupt::with_msix(event(), msix(2), 1)).is_none());
}

/// Refuses every move, so the BAR must stay where the VMM put it.
struct Refuse;

impl BarMover for Refuse {
    fn move_bar(&self, _: u8, _: &BarMove) -> bool {
        false
    }
}

#[test]
fn random_traffic_into_config_space_bar_and_msix_table_never_panics_or_moves_the_bar() {
    let mut rig = Rig::new();
    let cap = rig.msix_cap();
    let interrupt = rig.interrupt.clone();
    let t = Arc::new(Mutex::new(rig.t));
    let mut bus = PciBus::new(Arc::new(Refuse));
    let slot = bus.add(t.clone()).unwrap();
    let mut ecam = PciConfigMmio::new(Arc::new(bus));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let width = [1usize, 2, 4, 8][(x % 4) as usize];
        let value = (x >> 17).to_le_bytes();
        let read = x & 0x20 != 0;
        let mut data = [0u8; 8];
        match (x >> 6) % 3 {
            0 => {
                let offset = (u64::from(slot) << 15) | ((x >> 32) % 0x140);
                if read {
                    ecam.read(offset, &mut data[..width]);
                } else {
                    ecam.write(offset, &value[..width]);
                }
            }
            _ => {
                // Mostly the common config and the MSI-X structures, some of everything.
                let offset = match (x >> 40) % 4 {
                    0 => (x >> 20) % 0x40,
                    1 => MSIX_TABLE + (x >> 20) % 0x40,
                    _ => (x >> 20) % (BAR_SIZE + 0x100),
                };
                let mut t = lock(&t);
                if read {
                    t.read(offset, &mut data[..width]);
                } else {
                    t.write(offset, &value[..width]);
                }
            }
        }
        if i % 1000 == 0 {
            interrupt.trigger(InterruptSource::Queue(0)).unwrap();
            interrupt.trigger(InterruptSource::Config).unwrap();
        }
    }
    let mut t = lock(&t);
    assert_eq!(t.bar_address(), BAR, "every move was refused");
    assert_eq!(t.read_config(4) & 0xf, 0x4, "still a 64-bit memory BAR");
    assert_eq!(t.read_config(0), 0x1044_1af4);
    assert_eq!(t.status() & !0xcf, 0, "only defined status bits");
    assert_eq!(
        t.read_config(cap / 4) >> 16 & 0x7ff,
        1,
        "the table size is read-only"
    );
}
