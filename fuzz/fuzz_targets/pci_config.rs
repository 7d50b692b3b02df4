//! PCI configuration space as a hostile guest reaches it: configuration mechanism #1 (ports
//! 0xCF8/0xCFC), ECAM, and the BAR of a virtio-pci function (virtio-rng) with its common
//! configuration, notification and MSI-X regions, with the VMM accepting or refusing BAR
//! moves as the input says. The host bridge's identity never changes.
//!
//! Input: guest memory fill (u16 length + bytes), then operations: 0 write CONFIG_ADDRESS
//! (u32), 1 read CONFIG_DATA (offset u8, width u8), 2 write CONFIG_DATA (offset u8, width u8,
//! value u32), 3 ECAM read (offset u32, width u8), 4 ECAM write (offset u32, width u8, value
//! u32), 5 BAR read (offset u16, width u8), 6 BAR write (offset u16, width u8, value u64),
//! 7 toggle whether BAR moves are accepted, 8 serve the device's queue (budget u8).
#![no_main]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::pci::BarMove;
use devices::pci::bus::{BarMover, ECAM_BUS_SIZE, PciBus, PciConfigIo, PciConfigMmio};
use devices::pci::msix::{MsiMessage, MsiRouting, Msix};
use devices::virtio::VirtioInterrupt;
use devices::virtio::pci::{BAR_SIZE, VirtioPci, vectors_needed};
use devices::virtio::rng::Rng;
use ember_fuzz::{Guest, Reader, event};
use libfuzzer_sys::fuzz_target;

const BAR: u64 = 0x10_0000_0000;

struct Mover(AtomicBool);

impl BarMover for Mover {
    fn move_bar(&self, _slot: u8, _request: &BarMove) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Routes;

impl MsiRouting for Routes {
    fn route(&self, _vector: u16, _message: MsiMessage) -> io::Result<()> {
        Ok(())
    }
}

fn width(r: &mut Reader) -> usize {
    [1, 2, 4, 8][usize::from(r.u8() % 4)]
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let guest = Guest::new(0, r.blob());
    let irqs = (0..vectors_needed(1)).map(|_| event()).collect();
    let msix = Arc::new(Msix::new(irqs, Arc::new(Routes)).expect("MSI-X"));
    let irq = Arc::new(VirtioInterrupt::with_msix(event(), msix, 1));
    let rng = Rng::new(guest.mem.clone(), irq.clone(), event());
    let server = rng.server();
    let function = Arc::new(Mutex::new(
        VirtioPci::new(rng, guest.mem.clone(), irq, vec![event()], BAR).expect("virtio-pci"),
    ));
    let mover = Arc::new(Mover(AtomicBool::new(true)));
    let mut bus = PciBus::new(mover.clone());
    bus.add(function.clone()).expect("a free slot");
    let bus = Arc::new(bus);
    let mut io = PciConfigIo::new(bus.clone());
    let mut ecam = PciConfigMmio::new(bus);
    let mut b = [0u8; 8];
    while !r.is_empty() {
        match r.u8() % 9 {
            0 => io.write(0, &r.u32().to_le_bytes()),
            1 => {
                let (offset, len) = (4 + u64::from(r.u8() % 4), width(&mut r));
                io.read(offset, &mut b[..len]);
            }
            2 => {
                let (offset, len) = (4 + u64::from(r.u8() % 4), width(&mut r));
                io.write(offset, &r.u64().to_le_bytes()[..len]);
            }
            3 => {
                let (offset, len) = (u64::from(r.u32()) % (2 * ECAM_BUS_SIZE), width(&mut r));
                ecam.read(offset, &mut b[..len]);
            }
            4 => {
                let (offset, len) = (u64::from(r.u32()) % (2 * ECAM_BUS_SIZE), width(&mut r));
                ecam.write(offset, &r.u64().to_le_bytes()[..len]);
            }
            5 => {
                let (offset, len) = (u64::from(r.u16()) % BAR_SIZE, width(&mut r));
                function.lock().expect("lock").read(offset, &mut b[..len]);
            }
            6 => {
                let (offset, len) = (u64::from(r.u16()) % BAR_SIZE, width(&mut r));
                let value = r.u64().to_le_bytes();
                function.lock().expect("lock").write(offset, &value[..len]);
            }
            7 => {
                mover.0.fetch_xor(true, Ordering::Relaxed);
            }
            _ => {
                server.process_queue(usize::from(r.u8()) + 1);
            }
        }
    }
    let mut id = [0u8; 4];
    ecam.read(0, &mut id);
    assert_eq!(
        id,
        [0x86, 0x80, 0x57, 0x0d],
        "the host bridge's identity changed"
    );
});
