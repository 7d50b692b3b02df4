//! Descriptor chains as the virtio devices see them: [`Chain`] walks one chain's descriptors
//! with the limits ember promises the host, and the rest of this module gives byte-stream views
//! of the guest memory runs ([`Segment`]s) they name, which devices read, write and hand to the
//! kernel as iovecs. Nothing here trusts the guest: every descriptor and every run is checked
//! before use.

use std::io;
use std::os::fd::RawFd;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Why a descriptor chain cannot be used.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor refers to an indirect table; ember never offers VIRTIO_RING_F_INDIRECT_DESC.
    #[error("descriptor {0} refers to an indirect table, which the device did not offer")]
    Indirect(u16),
    /// A `next` index lies past the end of the descriptor table.
    #[error("descriptor index {0} lies past the end of the descriptor table")]
    IndexOutOfRange(u16),
    /// The chain has more descriptors than the queue (it loops).
    #[error("the chain has more descriptors than the queue holds")]
    TooLong,
    /// The descriptor table cannot be read.
    #[error("descriptor {0} cannot be read from guest memory")]
    Unreadable(u16),
}

/// The descriptors of one chain, read straight from the queue's descriptor table: at most the
/// queue's size of them, never through an indirect table. Each item is a descriptor or the
/// reason the chain is malformed, after which the walk ends.
///
/// Written by hand rather than iterating virtio-queue's `DescriptorChain` because that
/// iterator follows indirect tables whether or not the feature was negotiated (up to 65,535
/// descriptors from one ring entry, which let a guest make a device hold gigabytes of
/// segment lists) and ends silently on a malformed descriptor, where a device must tell a
/// broken chain from a finished one.
#[derive(Clone)]
pub struct Chain<'m> {
    mem: &'m GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
    next: Option<u16>,
    left: u16,
}

impl<'m> Chain<'m> {
    /// The chain starting at descriptor `head` of `queue`'s table.
    pub fn new(mem: &'m GuestMemoryMmap, queue: &Queue, head: u16) -> Self {
        Self::in_table(mem, GuestAddress(queue.desc_table()), queue.size(), head)
    }

    /// The chain starting at descriptor `head` of the `size`-entry table at `table`.
    pub fn in_table(mem: &'m GuestMemoryMmap, table: GuestAddress, size: u16, head: u16) -> Self {
        Self {
            mem,
            table,
            size,
            head,
            next: Some(head),
            left: size,
        }
    }

    /// The index of the chain's first descriptor, which identifies it in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }
}

impl Iterator for Chain<'_> {
    type Item = Result<Descriptor, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next.take()?;
        if self.left == 0 {
            return Some(Err(ChainError::TooLong));
        }
        if index >= self.size {
            return Some(Err(ChainError::IndexOutOfRange(index)));
        }
        self.left -= 1;
        // Descriptors are 16 bytes; the product fits easily in a u64.
        let at = self.table.checked_add(u64::from(index) * 16);
        let Some(desc) = at.and_then(|at| self.mem.read_obj::<Descriptor>(at).ok()) else {
            return Some(Err(ChainError::Unreadable(index)));
        };
        if desc.refers_to_indirect_table() {
            return Some(Err(ChainError::Indirect(index)));
        }
        if desc.has_next() {
            self.next = Some(desc.next());
        }
        Some(Ok(desc))
    }
}

/// A run of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where it starts.
    pub addr: GuestAddress,
    /// Its length in bytes.
    pub len: u64,
}

impl Segment {
    /// The run `addr..addr+len`, if all of it lies in guest memory.
    pub fn checked(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> Option<Self> {
        (len == 0 || mem.check_range(addr, len as usize)).then_some(Self {
            addr,
            len: u64::from(len),
        })
    }
}

/// Splits `segments` after `n` bytes.
pub fn split(segments: &[Segment], n: u64) -> (Vec<Segment>, Vec<Segment>) {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    let mut left = n;
    for s in segments {
        if left >= s.len {
            front.push(*s);
            left -= s.len;
        } else if left > 0 {
            front.push(Segment {
                addr: s.addr,
                len: left,
            });
            back.push(Segment {
                addr: s.addr.unchecked_add(left),
                len: s.len - left,
            });
            left = 0;
        } else {
            back.push(*s);
        }
    }
    (front, back)
}

/// Total length of `segments`.
pub fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// Copies out the bytes of `segments` (at most `max`).
pub fn read_bytes(mem: &GuestMemoryMmap, segments: &[Segment], max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segments {
        let want = s.len.min(max - out.len() as u64) as usize;
        let start = out.len();
        out.resize(start + want, 0);
        if mem.read_slice(&mut out[start..], s.addr).is_err() {
            out.truncate(start);
            break;
        }
    }
    out
}

/// Fills `buf` from the start of the stream `segments` form; an error if they are shorter.
pub fn read_into(mem: &GuestMemoryMmap, segments: &[Segment], buf: &mut [u8]) -> io::Result<()> {
    read_at(mem, segments, 0, buf)
}

/// Fills `buf` from byte `offset` of the stream `segments` form; an error if they are shorter.
pub fn read_at(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut skip = offset;
    let mut done = 0;
    for s in segments {
        if done == buf.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = ((s.len - skip) as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], s.addr.unchecked_add(skip))
            .map_err(io::Error::other)?;
        done += n;
        skip = 0;
    }
    if done < buf.len() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Copies `data` into `segments` from byte `offset` of the stream they form; returns how many
/// bytes fit.
pub fn write_bytes(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    offset: u64,
    data: &[u8],
) -> io::Result<usize> {
    let mut skip = offset;
    let mut done = 0;
    for s in segments {
        if done == data.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let room = (s.len - skip) as usize;
        let n = room.min(data.len() - done);
        mem.write_slice(&data[done..done + n], s.addr.unchecked_add(skip))
            .map_err(io::Error::other)?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// The host addresses of `segments`, for vectored I/O.
pub fn iovecs(mem: &GuestMemoryMmap, segments: &[Segment]) -> io::Result<Vec<libc::iovec>> {
    let mut out = Vec::with_capacity(segments.len());
    for s in segments {
        push_iovecs(mem, *s, &mut out)?;
    }
    Ok(out)
}

/// Appends the host addresses of `segment` (one per memory region it spans) to `out`;
/// returns how many.
pub fn push_iovecs(
    mem: &GuestMemoryMmap,
    segment: Segment,
    out: &mut impl Extend<libc::iovec>,
) -> io::Result<usize> {
    let mut count = 0;
    for slice in mem.get_slices(segment.addr, segment.len as usize) {
        let slice = slice.map_err(io::Error::other)?;
        out.extend([libc::iovec {
            // No dirty-page tracking is enabled, so the guard has nothing to record.
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: slice.len(),
        }]);
        count += 1;
    }
    Ok(count)
}

/// Runs of guest memory gathered into one stream for vectored I/O on a host descriptor: the
/// kernel reads or writes guest memory directly, with no copy through a device buffer.
///
/// Every iovec comes from [`push_iovecs`] on this value's own memory (whose mappings the
/// clone keeps alive for as long as the iovecs exist), which is what makes [`GuestBufs::readv`]
/// and [`GuestBufs::writev`] sound. Kept between packets so the hot paths allocate nothing.
pub struct GuestBufs {
    mem: GuestMemoryMmap,
    segments: Vec<Segment>,
    iovecs: Vec<libc::iovec>,
    len: u64,
}

// SAFETY: the iovecs point into the mappings of `mem`, which this value owns a handle to; they
// are only dereferenced by the kernel, in calls made through `&self` or `&mut self`.
unsafe impl Send for GuestBufs {}

impl GuestBufs {
    /// An empty stream over `mem`.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        Self {
            mem,
            segments: Vec::new(),
            iovecs: Vec::new(),
            len: 0,
        }
    }

    /// Empties the stream.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.iovecs.clear();
        self.len = 0;
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends at most `max` bytes of the stream `segments` form, from byte `offset` on;
    /// returns how many. An error (and nothing appended) if part of them is not guest memory.
    pub fn push(&mut self, segments: &[Segment], offset: u64, max: u64) -> io::Result<u64> {
        let (start_segments, start_iovecs) = (self.segments.len(), self.iovecs.len());
        let (mut skip, mut added) = (offset, 0);
        for s in segments {
            if added == max {
                break;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let piece = Segment {
                addr: s.addr.unchecked_add(skip),
                len: (s.len - skip).min(max - added),
            };
            skip = 0;
            if let Err(err) = push_iovecs(&self.mem, piece, &mut self.iovecs) {
                self.segments.truncate(start_segments);
                self.iovecs.truncate(start_iovecs);
                return Err(err);
            }
            self.segments.push(piece);
            added += piece.len;
        }
        self.len += added;
        Ok(added)
    }

    /// Fills `buf` from byte `offset` of the stream.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_at(&self.mem, &self.segments, offset, buf)
    }

    /// Reads from `fd` into the stream (one `readv`; as far as the kernel's iovec limit goes).
    pub fn readv(&self, fd: RawFd) -> io::Result<usize> {
        let count = self.iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the iovecs cover mapped guest memory (see the type's docs) of `count` entries
        // at most; the kernel writes only within them.
        let n = unsafe { libc::readv(fd, self.iovecs.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes the stream to `fd` (one `writev`; as far as the kernel's iovec limit goes).
    pub fn writev(&self, fd: RawFd) -> io::Result<usize> {
        let count = self.iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the iovecs cover mapped guest memory (see the type's docs) of `count` entries
        // at most; the kernel only reads them.
        let n = unsafe { libc::writev(fd, self.iovecs.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u64) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn split_and_write_across_segments() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let segs = [seg(0x100, 3), seg(0x200, 5), seg(0x300, 10)];
        let (front, back) = split(&segs, 4);
        assert_eq!(front, [seg(0x100, 3), seg(0x200, 1)]);
        assert_eq!(back, [seg(0x201, 4), seg(0x300, 10)]);
        assert_eq!(total(&segs), 18);
        assert_eq!(write_bytes(&mem, &segs, 2, b"abcdefghij").unwrap(), 10);
        assert_eq!(read_bytes(&mem, &segs, 18)[2..12], *b"abcdefghij");
        // Only what fits is written.
        assert_eq!(write_bytes(&mem, &segs, 15, b"0123456").unwrap(), 3);
        assert!(Segment::checked(&mem, GuestAddress(0xfff0), 0x20).is_none());
        assert!(Segment::checked(&mem, GuestAddress(0x1_0000), 0).is_some());
    }

    #[test]
    fn guest_bufs_gather_a_window_of_segments_for_readv_and_writev() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let segs = [seg(0x100, 3), seg(0x200, 5), seg(0x300, 10)];
        mem.write_slice(b"abc", GuestAddress(0x100)).unwrap();
        mem.write_slice(b"defgh", GuestAddress(0x200)).unwrap();
        mem.write_slice(b"ijklmnopqr", GuestAddress(0x300)).unwrap();
        let mut bufs = GuestBufs::new(mem.clone());
        // Bytes 2..11 of the stream: the end of the first run, all of the second, part of the
        // third.
        assert_eq!(bufs.push(&segs, 2, 9).unwrap(), 9);
        assert_eq!(bufs.len(), 9);
        let mut out = [0u8; 4];
        bufs.read_at(3, &mut out).unwrap();
        assert_eq!(&out, b"fghi");
        assert!(bufs.read_at(6, &mut out).is_err(), "past the end");
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        assert_eq!(bufs.writev(a.as_raw_fd()).unwrap(), 9);
        let mut got = [0u8; 9];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"cdefghijk");
        (&b).write_all(b"123456789").unwrap();
        assert_eq!(bufs.readv(a.as_raw_fd()).unwrap(), 9);
        assert_eq!(read_bytes(&mem, &segs, 18), b"ab123456789lmnopqr");
        // Nothing outside guest memory is taken in, and a failed push adds nothing.
        assert!(bufs.push(&[seg(0xfff0, 0x20)], 0, 0x20).is_err());
        assert_eq!(bufs.len(), 9);
        bufs.clear();
        assert!(bufs.is_empty());
    }

    const TABLE: u64 = 0x8000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;

    fn put(mem: &GuestMemoryMmap, table: u64, index: u16, desc: (u64, u32, u16, u16)) {
        let (addr, len, flags, next) = desc;
        let d = Descriptor::new(addr, len, flags, next);
        mem.write_obj(d, GuestAddress(table + 16 * u64::from(index)))
            .unwrap();
    }

    fn walk(mem: &GuestMemoryMmap, size: u16, head: u16) -> Vec<Result<u32, ChainError>> {
        Chain::in_table(mem, GuestAddress(TABLE), size, head)
            .map(|d| d.map(|d| d.len()))
            .collect()
    }

    #[test]
    fn a_chain_yields_its_descriptors_in_order() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        put(&mem, TABLE, 3, (0x100, 1, F_NEXT, 1));
        put(&mem, TABLE, 1, (0x200, 2, F_NEXT | F_WRITE, 7));
        put(&mem, TABLE, 7, (0x300, 3, F_WRITE, 0));
        assert_eq!(walk(&mem, 8, 3), [Ok(1), Ok(2), Ok(3)]);
        let chain = Chain::in_table(&mem, GuestAddress(TABLE), 8, 3);
        assert_eq!(chain.head(), 3);
        let writable: Vec<_> = chain.map(|d| d.unwrap().is_write_only()).collect();
        assert_eq!(writable, [false, true, true]);
    }

    #[test]
    fn indirect_tables_are_refused_not_followed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // One ring entry naming a table of 4096 zero-length descriptors: virtio-queue's own
        // iterator would yield all of them.
        let indirect = 0x1_0000;
        for i in 0..4096u16 {
            put(&mem, indirect, i, (0x100, 0, F_NEXT | F_WRITE, i + 1));
        }
        put(&mem, TABLE, 0, (0x100, 1, F_NEXT, 1));
        put(&mem, TABLE, 1, (indirect, 4096 * 16, F_INDIRECT, 0));
        assert_eq!(walk(&mem, 8, 0), [Ok(1), Err(ChainError::Indirect(1))]);
    }

    #[test]
    fn loops_and_wild_indices_end_the_walk_with_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        put(&mem, TABLE, 0, (0x100, 1, F_NEXT, 1));
        put(&mem, TABLE, 1, (0x100, 1, F_NEXT, 0));
        let looped = walk(&mem, 4, 0);
        assert_eq!(looped.len(), 5);
        assert_eq!(looped[4], Err(ChainError::TooLong));
        put(&mem, TABLE, 1, (0x100, 1, F_NEXT, 9));
        assert_eq!(walk(&mem, 4, 0)[2], Err(ChainError::IndexOutOfRange(9)));
        assert_eq!(walk(&mem, 4, 4), [Err(ChainError::IndexOutOfRange(4))]);
        // A table that runs off the end of guest memory.
        let far: Vec<_> = Chain::in_table(&mem, GuestAddress(0xfff8), 4, 0)
            .map(|d| d.map(|d| d.len()))
            .collect();
        assert_eq!(far, [Err(ChainError::Unreadable(0))]);
    }
}
