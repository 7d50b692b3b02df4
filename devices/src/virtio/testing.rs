//! A driver's side of a split virtqueue in plain guest memory, for device unit tests and
//! benchmarks: chains go in through the available ring (with wrapping indices, which
//! virtio-queue's own mock does not do) and come back through the used ring. Compiled only for
//! tests and with the `test-utils` feature, never into ember itself.
//!
//! The indices are published and read as a driver on another CPU must (the available index
//! with release ordering after the descriptors it covers, the used index with acquire ordering
//! before the elements it covers), so a driver may run on a thread of its own, concurrently
//! with the device, as a guest's vCPU does. With `VIRTIO_RING_F_EVENT_IDX` it also suppresses
//! notifications as Linux does ([`Driver::kick_needed`], [`Driver::enable_interrupt`]).

use std::sync::atomic::{Ordering, fence};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

type Result<T> = std::result::Result<T, GuestMemoryError>;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// One queue of `size` descriptors with its rings from `base`.
pub struct Driver {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    /// The available index as of the last [`Driver::kick_needed`].
    kicked: u16,
}

impl Driver {
    /// Lays out the rings at `base` (16 KiB suffice for 256 descriptors).
    pub fn new(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            kicked: 0,
        }
    }

    /// The guest addresses of the descriptor table, the available and the used ring, as a
    /// driver programs them into a transport.
    pub fn rings(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// A ready device-side queue over these rings.
    pub fn queue(&self) -> std::result::Result<Queue, virtio_queue::Error> {
        let mut q = Queue::new(self.size)?;
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        Ok(q)
    }

    /// The head index the next chain made available will have.
    pub fn next_head(&self) -> u16 {
        self.next_desc
    }

    /// Makes a chain of (address, length, device-writable) buffers available.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> Result<()> {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let at = GuestAddress(self.desc + 16 * u64::from(index));
            mem.write_obj(addr, at)?;
            mem.write_obj(len, GuestAddress(at.0 + 8))?;
            mem.write_obj(flags, GuestAddress(at.0 + 12))?;
            mem.write_obj(next, GuestAddress(at.0 + 14))?;
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head % self.size, GuestAddress(self.avail + 4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx)
    }

    /// Makes available, as a hostile driver would without the feature being offered, one
    /// descriptor referring to an indirect table at `table` of `count` chained zero-length
    /// device-writable descriptors.
    pub fn add_indirect(&mut self, mem: &GuestMemoryMmap, table: u64, count: u16) -> Result<()> {
        for i in 0..count {
            let at = GuestAddress(table + 16 * u64::from(i));
            let flags = F_WRITE | if i + 1 == count { 0 } else { F_NEXT };
            mem.write_obj(table, at)?;
            mem.write_obj(0u32, GuestAddress(at.0 + 8))?;
            mem.write_obj(flags, GuestAddress(at.0 + 12))?;
            mem.write_obj(i.wrapping_add(1), GuestAddress(at.0 + 14))?;
        }
        let head = self.next_desc;
        let at = GuestAddress(self.desc + 16 * u64::from(head));
        mem.write_obj(table, at)?;
        mem.write_obj(16 * u32::from(count), GuestAddress(at.0 + 8))?;
        mem.write_obj(F_INDIRECT, GuestAddress(at.0 + 12))?;
        mem.write_obj(0u16, GuestAddress(at.0 + 14))?;
        self.next_desc = (head + 1) % self.size;
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx)
    }

    /// Writes the available index as a (possibly hostile) driver would, after everything
    /// written before it (a driver's write barrier).
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) -> Result<()> {
        mem.store(idx, GuestAddress(self.avail + 2), Ordering::Release)
    }

    /// Whether the device must be notified of the chains added since the last call: with
    /// `event_idx`, only if its `avail_event` lies among them (Linux's
    /// `virtqueue_kick_prepare`); without, whenever any were added.
    pub fn kick_needed(&mut self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<bool> {
        let (new, old) = (self.avail_idx, self.kicked);
        self.kicked = new;
        if !event_idx {
            return Ok(new != old);
        }
        // The index written must be visible before the device's wish is read.
        fence(Ordering::SeqCst);
        let at = GuestAddress(self.used + 4 + 8 * u64::from(self.size));
        let event: u16 = mem.load(at, Ordering::Relaxed)?;
        Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
    }

    /// Asks (with `VIRTIO_RING_F_EVENT_IDX`'s `used_event`) for an interrupt once the device
    /// returns a chain beyond those taken, as a driver does before it sleeps; returns whether
    /// chains are already waiting, which it must take rather than sleep (Linux's
    /// `virtqueue_enable_cb`).
    pub fn enable_interrupt(&self, mem: &GuestMemoryMmap) -> Result<bool> {
        let at = GuestAddress(self.avail + 4 + 2 * u64::from(self.size));
        mem.store(self.used_seen, at, Ordering::Relaxed)?;
        fence(Ordering::SeqCst);
        let idx: u16 = mem.load(GuestAddress(self.used + 2), Ordering::Acquire)?;
        Ok(idx != self.used_seen)
    }

    /// The used elements (head, length) returned since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Result<Vec<(u16, u32)>> {
        // The elements the index covers were written before it.
        let idx: u16 = mem.load(GuestAddress(self.used + 2), Ordering::Acquire)?;
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used + 4 + 8 * slot;
            let id: u32 = mem.read_obj(GuestAddress(at))?;
            let len: u32 = mem.read_obj(GuestAddress(at + 4))?;
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        Ok(out)
    }
}
