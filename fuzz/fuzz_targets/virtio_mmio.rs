//! The virtio-mmio register interface as a hostile driver drives it, in front of a real
//! device (virtio-rng): reads and writes of any width at any offset, queue notifications and
//! serving rounds, with the rings wherever the driver points them in guest memory whose
//! contents come from the input. The identification registers never change.
//!
//! Input: guest memory fill (u16 length + bytes, repeated from address 0x4000), then
//! operations: 0 read (offset u16, width u8), 1 write (offset u16, width u8, value u64),
//! 2 serve the queue (budget u8).
#![no_main]

use devices::bus::BusDevice;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::rng::Rng;
use ember_fuzz::{Guest, Reader, event, interrupt};
use libfuzzer_sys::fuzz_target;

/// The register window and the device's configuration space after it.
const WINDOW: u64 = 0x200;

fn width(r: &mut Reader) -> usize {
    [1, 2, 4, 8][usize::from(r.u8() % 4)]
}

fn read32(t: &mut MmioTransport<Rng>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    // Only the memory: the driver under test places the rings itself.
    let guest = Guest::new(0, r.blob());
    let irq = interrupt();
    let rng = Rng::new(guest.mem.clone(), irq.clone(), event());
    let server = rng.server();
    let mut t = MmioTransport::new(rng, guest.mem.clone(), irq, vec![event()]);
    while !r.is_empty() {
        match r.u8() % 3 {
            0 => {
                let (offset, len) = (u64::from(r.u16()) % WINDOW, width(&mut r));
                let mut b = [0u8; 8];
                t.read(offset, &mut b[..len]);
            }
            1 => {
                let (offset, len) = (u64::from(r.u16()) % WINDOW, width(&mut r));
                let value = r.u64().to_le_bytes();
                t.write(offset, &value[..len]);
            }
            _ => {
                server.process_queue(usize::from(r.u8()) + 1);
            }
        }
    }
    assert_eq!(read32(&mut t, 0), 0x7472_6976, "the magic value changed");
    assert_eq!(read32(&mut t, 4), 2, "the version changed");
    assert_eq!(read32(&mut t, 8), 4, "the device id changed");
});
