//! virtio-net transmit and receive on mock guest memory, with a backend that stands in for
//! the TAP: frames the guest transmits are gathered from the device's iovecs (which must lie
//! in guest memory), frames from the input are received into the guest's buffers. Optionally
//! MMDS is on, so frames for its address go to its network stack instead.
//!
//! Input: data-area fill (u16 length + bytes), flags (bit 0 MMDS), features masked off
//! (u64), then operations: 0 publish a receive chain, 1 publish a transmit chain, 2 queue an
//! inbound frame (u16 length + bytes), 3 serve receive, 4 serve transmit (budget u8 each),
//! 5 toggle "TAP full".
#![no_main]

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use devices::mmds::{Mmds, MmdsStack};
use devices::virtio::VirtioDevice;
use devices::virtio::net::tap::Backend;
use devices::virtio::net::{MacAddr, Net};
use ember_fuzz::{Guest, MEM_SIZE, Reader, event, interrupt};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryBackend};

struct FuzzTap {
    inbound: Arc<Mutex<VecDeque<Vec<u8>>>>,
    full: Arc<Mutex<bool>>,
    /// The host addresses of guest memory: every iovec must lie within.
    guest: Range<usize>,
}

impl FuzzTap {
    /// Checks that `iovecs` lie in guest memory, but for the last `host` ones (the device's own
    /// buffer that takes what does not fit the guest's).
    fn check(&self, iovecs: &[libc::iovec], host: usize) {
        for iov in &iovecs[..iovecs.len().saturating_sub(host)] {
            let (start, len) = (iov.iov_base as usize, iov.iov_len);
            assert!(
                start >= self.guest.start && start + len <= self.guest.end,
                "an iovec outside guest memory"
            );
        }
    }
}

impl Backend for FuzzTap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.inbound.lock().expect("lock").pop_front();
        let frame = frame.ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    unsafe fn recv_vectored(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        self.check(iovecs, 1);
        let frame = self.inbound.lock().expect("lock").pop_front();
        let frame = frame.ok_or(io::ErrorKind::WouldBlock)?;
        let mut done = 0;
        for iov in iovecs {
            let n = iov.iov_len.min(frame.len() - done);
            // SAFETY: guest memory (checked above, and it outlives the call) or the device's own
            // buffer, which it lends for the call.
            unsafe {
                std::ptr::copy_nonoverlapping(frame[done..].as_ptr(), iov.iov_base.cast(), n)
            };
            done += n;
        }
        Ok(done)
    }

    unsafe fn send(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        self.check(iovecs, 0);
        if *self.full.lock().expect("lock") {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut sum = 0u8;
        for iov in iovecs {
            // SAFETY: checked above to lie in guest memory, which outlives the call.
            let part =
                unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) };
            // Read every byte, as the TAP would.
            sum = part.iter().fold(sum, |a, b| a.wrapping_add(*b));
        }
        std::hint::black_box(sum);
        Ok(iovecs.iter().map(|i| i.iov_len).sum())
    }

    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut guest = Guest::new(2, r.blob());
    let base = guest
        .mem
        .get_host_address(GuestAddress(0))
        .expect("host address") as usize;
    let inbound = Arc::new(Mutex::new(VecDeque::new()));
    let full = Arc::new(Mutex::new(false));
    let tap = FuzzTap {
        inbound: inbound.clone(),
        full: full.clone(),
        guest: base..base + MEM_SIZE,
    };
    let flags = r.u8();
    let mac = MacAddr([6, 1, 2, 3, 4, 5]);
    let mut net = Net::new(
        "fuzz",
        tap,
        mac,
        Some(1500),
        guest.mem.clone(),
        interrupt(),
        event(),
    );
    if flags & 1 != 0 {
        let mut mmds = Mmds::new(4096);
        mmds.put(serde_json::json!({ "latest": { "meta-data": { "id": "fuzz" } } }))
            .expect("put MMDS data");
        let stack = MmdsStack::new(devices::mmds::DEFAULT_IPV4, Arc::new(Mutex::new(mmds)));
        net = net.with_mmds(stack).expect("the MMDS timer");
    }
    let features = net.features() & !r.u64();
    if net.activate(guest.queues(), features).is_err() {
        return;
    }
    let server = net.server();
    while !r.is_empty() {
        match r.u8() % 6 {
            0 => guest.push_chain(0, &mut r),
            1 => guest.push_chain(1, &mut r),
            2 => {
                let frame = r.blob().to_vec();
                inbound.lock().expect("lock").push_back(frame);
            }
            3 => {
                server.process_rx(usize::from(r.u8()) + 1);
            }
            4 => {
                server.process_tx(usize::from(r.u8()) + 1);
            }
            _ => {
                let mut f = full.lock().expect("lock");
                *f = !*f;
            }
        }
    }
    *full.lock().expect("lock") = false;
    while server.process_tx(usize::MAX) {}
    while server.process_rx(usize::MAX) {}
    guest.check();
});
