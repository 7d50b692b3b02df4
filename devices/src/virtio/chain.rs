//! Byte-stream views of descriptor chains shared by the virtio devices: a chain is a list of
//! guest memory runs ([`Segment`]s) that devices read, write and hand to the kernel as iovecs.
//! Nothing here trusts the guest: every run is checked against guest memory before use.

use std::io;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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
    let mut done = 0;
    for s in segments {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], s.addr)
            .map_err(io::Error::other)?;
        done += n;
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
}
