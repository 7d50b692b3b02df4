//! The kernel, initrd and command-line loader on a hostile kernel file: the input is a kernel
//! image (u32 length, then its bytes: ELF, bzImage or neither), an initrd (the same) and a
//! command line (the rest). Loading ends in a value or an error, and what it loaded fits in
//! guest memory.
#![no_main]

use std::sync::OnceLock;

use ember_fuzz::{Reader, scratch};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory, allocated once: the loaders write where the image says.
const MEM_BYTES: u64 = 64 << 20;

fn mem() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_BYTES as usize)]).expect("memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let n = r.u32() as usize;
    let kernel = r.bytes(n);
    let n = r.u32() as usize;
    let initrd = r.bytes(n);
    let cmdline = String::from_utf8_lossy(r.rest());
    let (kpath, ipath) = (scratch("kernel"), scratch("initrd"));
    std::fs::write(&kpath, kernel).expect("write the kernel");
    std::fs::write(&ipath, initrd).expect("write the initrd");
    match vmm::boot::load(mem(), MEM_BYTES, &kpath, Some(&ipath), &cmdline) {
        Ok((_, info)) => {
            let (addr, size) = info.initrd.expect("the initrd was loaded");
            assert!(
                addr.0 + size <= MEM_BYTES,
                "the initrd ends past guest memory"
            );
            assert!(
                info.cmdline_len <= cmdline.len(),
                "a longer command line than given"
            );
        }
        Err(err) => assert!(!vmm::error_chain(&err).is_empty()),
    }
});
