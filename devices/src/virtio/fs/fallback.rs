//! What a virtio-fs device does once its backend is gone: it answers every FUSE request itself
//! with EIO, so the guest's system calls on the share fail instead of waiting forever.
//!
//! ember takes the queues over where the backend left them: requests up to the used ring's
//! index were answered by the backend, the rest (taken but unanswered, or never taken) are
//! answered here. virtiofsd answers each queue's requests in order, so this neither skips a
//! request nor answers one twice.

use std::sync::atomic::Ordering;

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::virtio::chain::{self, Chain, Segment};
use crate::virtio::{Step, VIRTIO_RING_F_EVENT_IDX, VirtioInterrupt, serve_chains, signal_used};

/// Requests answered per queue in one round before the I/O thread looks at its events again.
const BUDGET: usize = 256;
/// A FUSE reply header: total length (le32), error as a negative errno (le32), the request's
/// unique id (le64).
const OUT_HEADER_LEN: usize = 16;
/// Where a FUSE request header keeps its unique id.
const UNIQUE_OFFSET: usize = 8;

/// Points `queues` (as the driver activated them, with `features`) past the last request the
/// backend answered.
pub fn take_over(queues: &mut [Queue], mem: &GuestMemoryMmap, features: u64) {
    for q in queues {
        q.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        match q.used_idx(mem, Ordering::Acquire) {
            Ok(used) => {
                q.set_next_avail(used.0);
                q.set_next_used(used.0);
            }
            Err(err) => warn!("virtio-fs: cannot read a used ring to take it over: {err}"),
        }
    }
}

/// Answers every waiting request on `queues` with EIO; returns whether more may wait.
pub fn fail_all(queues: &mut [Queue], mem: &GuestMemoryMmap, interrupt: &VirtioInterrupt) -> bool {
    let mut more = false;
    for (index, q) in (0u16..).zip(queues.iter_mut()) {
        match serve_chains(q, mem, BUDGET, |chain| Step::Used(fail(mem, chain))) {
            Ok(served) => {
                more |= served.more;
                signal_used(q, index, mem, interrupt, served.count);
            }
            Err(err) => warn!("virtio-fs: {err}"),
        }
    }
    more
}

/// Writes an EIO reply for the request in `chain`; returns the bytes written (0 for a request
/// that expects no reply, such as FORGET, or a malformed chain).
fn fail(mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for desc in chain {
        let Ok(desc) = desc else { return 0 };
        let Some(seg) = Segment::checked(mem, desc.addr(), desc.len()) else {
            return 0;
        };
        if desc.is_write_only() {
            writable.push(seg);
        } else {
            readable.push(seg);
        }
    }
    let mut header = [0u8; UNIQUE_OFFSET + 8];
    if chain::read_into(mem, &readable, &mut header).is_err() {
        return 0;
    }
    let mut reply = [0u8; OUT_HEADER_LEN];
    reply[..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
    reply[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    reply[8..].copy_from_slice(&header[UNIQUE_OFFSET..]);
    match chain::write_bytes(mem, &writable, 0, &reply) {
        Ok(OUT_HEADER_LEN) => OUT_HEADER_LEN as u32,
        _ => 0,
    }
}
