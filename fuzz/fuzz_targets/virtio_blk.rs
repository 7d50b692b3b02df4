//! virtio-blk request parsing and execution on mock guest memory: the input fills the guest's
//! data area (the request headers, data and status bytes live there), picks the features the
//! driver acknowledges and the engine, then publishes chains and serves the queue. The device
//! must not write outside the device-writable buffers, and its used lengths must fit them.
//!
//! Input: data-area fill (u16 length + bytes), flags (bit 0 read-only, bit 1 writeback,
//! bit 2 io_uring), features masked off (u64), then operations: 0 publish a chain,
//! 1 serve with a budget (u8), 2 serve until done.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::virtio::VirtioDevice;
use devices::virtio::block::{Block, Disk, Uring};
use ember_fuzz::{Guest, Reader, event, interrupt, scratch};
use libfuzzer_sys::fuzz_target;

fn disk_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = scratch("disk.img");
        std::fs::write(&path, vec![0xa5u8; 64 << 10]).expect("write the disk image");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut guest = Guest::new(1, r.blob());
    let flags = r.u8();
    let disk = Disk::open(disk_path(), flags & 1 != 0, flags & 2 != 0).expect("open the disk");
    let ring = if flags & 4 != 0 {
        Uring::new().ok()
    } else {
        None
    };
    let mut block = Block::new(disk, ring, "fuzz", guest.mem.clone(), interrupt(), event());
    let features = block.features() & !r.u64();
    if block.activate(guest.queues(), features).is_err() {
        return;
    }
    while !r.is_empty() {
        match r.u8() % 3 {
            0 => guest.push_chain(0, &mut r),
            1 => {
                block.process_queue(usize::from(r.u8()) + 1);
            }
            _ => while block.process_queue(usize::MAX) {},
        }
    }
    while block.process_queue(usize::MAX) {}
    let _ = block.settle();
    while block.process_queue(usize::MAX) {}
    guest.check();
});
