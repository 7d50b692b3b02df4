//! The MMDS network stack as the guest reaches it: Ethernet frames from the input (ARP, IPv4,
//! TCP to the MMDS address or anything else) go in where the virtio-net device hands them
//! over, time passes, and the frames the stack answers with are taken into buffers of the
//! sizes the input says. A frame never overruns the buffer it is taken into.
//!
//! Input: flags (bit 0 V2, bit 1 IMDS answers), then operations: 0 a frame from the guest
//! (u16 length + bytes), 1 time passes (u16 ms) and the stack is polled, 2 take a frame into
//! a buffer (u16 length), 3 the guest's receive queue is full (the stack is refused).
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::mmds::{DEFAULT_IPV4, Mmds, MmdsStack, MmdsVersion};
use ember_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let mut mmds = Mmds::new(4096);
    let version = if flags & 1 != 0 {
        MmdsVersion::V2
    } else {
        MmdsVersion::V1
    };
    mmds.configure(version, flags & 2 != 0);
    mmds.put(serde_json::json!({ "latest": { "meta-data": { "id": "fuzz", "n": [1, 2] } } }))
        .expect("put MMDS data");
    let mut stack = MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(mmds)));
    let mut now = Instant::now();
    let mut buf = vec![0u8; 65536];
    while !r.is_empty() {
        match r.u8() % 4 {
            0 => {
                let frame = r.blob();
                if stack.is_mmds_frame(frame) {
                    stack.receive(frame.to_vec());
                }
                stack.poll(now);
            }
            1 => {
                now += Duration::from_millis(u64::from(r.u16()));
                stack.poll(now);
            }
            2 => {
                let len = usize::from(r.u16());
                if let Some(n) = stack.pop_frame(&mut buf[..len]) {
                    assert!(n <= len, "a {n}-byte frame taken into {len} bytes");
                }
            }
            _ => stack.refuse(),
        }
    }
    while stack.pop_frame(&mut buf).is_some() {}
    stack.flush_metrics();
});
