//! One virtio-blk request: parsing a descriptor chain the guest wrote, with every field it
//! controls checked, and executing it against the disk.
//!
//! Layout (virtio 1.2, 5.2.6): a 16-byte header {type, reserved, sector} the device reads, the
//! data, and one status byte the device writes. VIRTIO_F_VERSION_1 forbids assuming how that
//! is split into descriptors, so the chain is treated as a readable byte stream followed by a
//! writable one: the header is the first 16 readable bytes, the status the last writable byte,
//! and the data whatever lies between, in the direction the request type needs.

use std::{fmt, io};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::Disk;
use super::{ID_LEN, SECTOR_SIZE};
use crate::virtio::chain::{Chain, ChainError, Segment, iovecs, read_bytes, split, total};

/// virtio-blk request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

/// Status byte values.
pub const S_OK: u8 = 0;
/// The request failed.
pub const S_IOERR: u8 = 1;
/// The request type is not supported.
pub const S_UNSUPP: u8 = 2;

const HEADER_LEN: u64 = 16;
/// Largest data transfer one request may ask for; Linux stays far below it.
pub const MAX_DATA_BYTES: u64 = 64 << 20;
/// Most ranges one discard request may carry (`max_discard_seg`).
pub const MAX_DISCARD_RANGES: u32 = 32;
/// Most sectors one discard range may cover (`max_discard_sectors`, 2 GiB): punching a hole
/// is a metadata operation whatever its size.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most ranges one write-zeroes request may carry (`max_write_zeroes_seg`; Linux sends one).
pub const MAX_WRITE_ZEROES_RANGES: u32 = 1;
/// Most sectors one write-zeroes range may cover (`max_write_zeroes_sectors`, 64 MiB): where
/// the host filesystem cannot zero a range in place, zeroes are written, and a request must
/// stay a bounded amount of work like a read or write.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 17;
/// Work a flush counts for when the I/O thread decides to yield: as much as a whole batch,
/// since it may wait for everything the host has cached.
pub const FLUSH_WORK: u64 = MAX_DATA_BYTES;
const RANGE_LEN: u64 = 16;
const WRITE_ZEROES_UNMAP: u32 = 1;

/// Why a request is refused (answered with an error status, or not at all without one).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The descriptor chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len} is outside guest memory")]
    OutOfMemory {
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    Order,
    /// No writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
    /// Fewer than 16 readable bytes.
    #[error("header shorter than 16 bytes")]
    ShortHeader,
    /// The data is not whole sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// The data is larger than ember accepts.
    #[error("data length {0} exceeds the {MAX_DATA_BYTES}-byte limit")]
    TooLong(u64),
    /// The request reaches past the end of the disk.
    #[error("sectors {sector}+{bytes} bytes lie beyond the end of the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Bytes asked for.
        bytes: u64,
    },
    /// The data is in the wrong direction (e.g. a read into read-only buffers).
    #[error("the data buffers have the wrong direction for this request")]
    Direction,
    /// A discard/write-zeroes payload is malformed.
    #[error("malformed discard/write-zeroes ranges")]
    BadRanges,
}

/// A host I/O operation a request made, as the log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOp {
    /// `preadv` of `len` bytes at `offset`.
    Read {
        /// Byte offset in the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `pwritev` of `len` bytes at `offset`.
    Write {
        /// Byte offset in the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `fdatasync`.
    Flush,
    /// Deallocating a range (`fallocate`).
    Discard {
        /// Byte offset in the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Zeroing a range (`fallocate`, or writing zeroes).
    WriteZeroes {
        /// Byte offset in the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

impl fmt::Display for HostOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, offset, len) = match *self {
            Self::Flush => return f.write_str("flush"),
            Self::Read { offset, len } => ("read", offset, len),
            Self::Write { offset, len } => ("write", offset, len),
            Self::Discard { offset, len } => ("discard", offset, len),
            Self::WriteZeroes { offset, len } => ("write-zeroes", offset, len),
        };
        write!(f, "{name} of {len} bytes at offset {offset}")
    }
}

/// The host failed an operation a well-formed request asked for (EIO, ENOSPC, ...). The guest
/// is answered VIRTIO_BLK_S_IOERR, as for a refusal; unlike a refusal, this is the host's
/// problem, so the device logs it for the host's operator.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed")]
pub struct HostIoError {
    /// What was asked of the host.
    pub op: HostOp,
    /// The host's error.
    #[source]
    pub source: io::Error,
}

/// Why a request did not complete.
#[derive(Debug)]
enum Failure {
    /// The guest asked for what the device refuses (a write to a read-only disk, ranges out
    /// of bounds, buffers outside guest memory, an unsupported type or flag): answered with
    /// this status and not logged, since a guest can ask in a loop and the status tells it.
    Refused(u8),
    /// The host's I/O failed.
    Host(HostIoError),
}

impl Failure {
    /// A refusal answered with VIRTIO_BLK_S_IOERR, whatever the guest got wrong.
    fn refused<E>(_: E) -> Self {
        Self::Refused(S_IOERR)
    }

    /// The host's error for `op`.
    fn host(op: HostOp) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Host(HostIoError { op, source })
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Make writes durable.
    Flush,
    /// Return the serial number.
    GetId,
    /// Deallocate ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
    /// Anything else.
    Unsupported(u32),
}

/// What executing a request did.
#[derive(Debug)]
pub struct Executed {
    /// Bytes written into guest buffers, status byte included (for the used ring).
    pub used: u32,
    /// The status byte.
    pub status: u8,
    /// Bytes of disk the request touched, for the I/O thread's yield.
    pub work: u64,
    /// A flush that reached the host's disk (`fdatasync`).
    pub synced: bool,
    /// The host's error, if that is why the status is VIRTIO_BLK_S_IOERR.
    pub host_error: Option<HostIoError>,
}

/// What a read, write or flush asks of the disk: the one thing an I/O engine carries out.
#[derive(Debug)]
pub enum DiskOp {
    /// Fill the guest buffers from the disk at `offset`.
    Read {
        /// Byte offset in the disk.
        offset: u64,
        /// The guest buffers, as host addresses.
        iovecs: Vec<libc::iovec>,
    },
    /// Write the guest buffers to the disk at `offset`.
    Write {
        /// Byte offset in the disk.
        offset: u64,
        /// The guest buffers, as host addresses.
        iovecs: Vec<libc::iovec>,
    },
    /// Make completed writes durable (`fdatasync`, unless the disk acknowledges flushes
    /// without syncing).
    Flush,
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// The type.
    pub kind: Kind,
    sector: u64,
    data: Vec<Segment>,
    data_len: u64,
    status: GuestAddress,
}

/// Parses a chain. On failure, the status byte's address, if there is one, comes back with the
/// error so the guest can be told.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    disk_size: u64,
) -> Result<Request, (Option<GuestAddress>, RequestError)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    let mut seen_writable = false;
    for desc in chain {
        let desc = desc.map_err(|e| (None, e.into()))?;
        let (addr, len) = (desc.addr(), desc.len());
        let Some(seg) = Segment::checked(mem, addr, len) else {
            return Err((None, RequestError::OutOfMemory { addr: addr.0, len }));
        };
        if desc.is_write_only() {
            seen_writable = true;
            writable.push(seg);
        } else if seen_writable {
            return Err((None, RequestError::Order));
        } else {
            readable.push(seg);
        }
    }
    let writable_len = total(&writable);
    if writable_len == 0 {
        return Err((None, RequestError::NoStatus));
    }
    let (writable_data, status_seg) = split(&writable, writable_len - 1);
    let status = status_seg[0].addr;
    let fail = |e| Err((Some(status), e));

    let (header, readable_data) = split(&readable, HEADER_LEN);
    let header = read_bytes(mem, &header, HEADER_LEN);
    let Ok(header) = <[u8; 16]>::try_from(header.as_slice()) else {
        return fail(RequestError::ShortHeader);
    };
    let kind = match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
        T_IN => Kind::In,
        T_OUT => Kind::Out,
        T_FLUSH => Kind::Flush,
        T_GET_ID => Kind::GetId,
        T_DISCARD => Kind::Discard,
        T_WRITE_ZEROES => Kind::WriteZeroes,
        other => Kind::Unsupported(other),
    };
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let data = match kind {
        Kind::In | Kind::GetId => {
            if !readable_data.is_empty() && kind == Kind::In {
                return fail(RequestError::Direction);
            }
            writable_data
        }
        Kind::Out | Kind::Discard | Kind::WriteZeroes => {
            if !writable_data.is_empty() {
                return fail(RequestError::Direction);
            }
            readable_data
        }
        Kind::Flush | Kind::Unsupported(_) => Vec::new(),
    };
    let data_len = total(&data);
    if data_len > MAX_DATA_BYTES {
        return fail(RequestError::TooLong(data_len));
    }
    if matches!(kind, Kind::In | Kind::Out) {
        if data_len % SECTOR_SIZE != 0 {
            return fail(RequestError::Unaligned(data_len));
        }
        if let Err(err) = check_range(sector, data_len, disk_size) {
            return fail(err);
        }
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

fn check_range(sector: u64, bytes: u64, disk_size: u64) -> Result<(), RequestError> {
    let end = sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| start.checked_add(bytes));
    match end {
        Some(end) if end <= disk_size => Ok(()),
        _ => Err(RequestError::OutOfRange { sector, bytes }),
    }
}

/// Answers a request that could not be parsed with VIRTIO_BLK_S_IOERR at `status`; returns
/// the used length.
pub fn fail(mem: &GuestMemoryMmap, status: GuestAddress) -> u32 {
    u32::from(mem.write_obj(S_IOERR, status).is_ok())
}

impl Request {
    /// Bytes of data the request carries.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Whether the request is a read, write or flush: what an I/O engine carries out on the
    /// disk ([`Request::prepare`], then [`Request::complete`]). The other kinds never wait
    /// for the disk's data path and are [`Request::execute`]d at once.
    pub fn is_disk_io(&self) -> bool {
        matches!(self.kind, Kind::In | Kind::Out | Kind::Flush)
    }

    /// Runs the request and writes its status byte.
    pub fn execute(&self, mem: &GuestMemoryMmap, disk: &Disk, id: &[u8; ID_LEN]) -> Executed {
        let (mut work, mut synced) = (0, false);
        let result = self.run(mem, disk, id, (&mut work, &mut synced));
        self.finish(mem, result, work, synced)
    }

    /// The disk operation of a read, write or flush (see [`Request::is_disk_io`]), for an
    /// engine that submits it and calls [`Request::complete`] when the host is done; or the
    /// request answered, if the device refuses it.
    pub fn prepare(&self, mem: &GuestMemoryMmap, disk: &Disk) -> Result<DiskOp, Executed> {
        self.disk_op(mem, disk)
            .map_err(|failure| self.finish(mem, Err(failure), 0, false))
    }

    /// Answers a prepared request with the host's `result` and writes its status byte;
    /// `synced` says that a flush reached the host's disk.
    pub fn complete(
        &self,
        mem: &GuestMemoryMmap,
        result: io::Result<()>,
        synced: bool,
    ) -> Executed {
        let written = if self.kind == Kind::In {
            self.data_len
        } else {
            0
        };
        let result = result.map(|()| written);
        let synced = synced && result.is_ok();
        let result = result.map_err(Failure::host(self.host_op()));
        self.finish(mem, result, self.disk_work(), synced)
    }

    /// The bytes of disk work a read, write or flush counts for (a flush: [`FLUSH_WORK`]).
    pub fn disk_work(&self) -> u64 {
        if self.kind == Kind::Flush {
            FLUSH_WORK
        } else {
            self.data_len
        }
    }

    /// A read, write or flush as the log names it.
    pub fn host_op(&self) -> HostOp {
        // Only reads and writes use the header's sector, and `parse` checked it for them;
        // other types may carry any value there.
        let (offset, len) = (self.sector.wrapping_mul(SECTOR_SIZE), self.data_len);
        match self.kind {
            Kind::In => HostOp::Read { offset, len },
            Kind::Out => HostOp::Write { offset, len },
            _ => HostOp::Flush,
        }
    }

    /// Writes the status byte for `result` (the bytes written into guest buffers, or why not).
    fn finish(
        &self,
        mem: &GuestMemoryMmap,
        result: Result<u64, Failure>,
        work: u64,
        synced: bool,
    ) -> Executed {
        let (written, status, host_error) = match result {
            Ok(written) => (written, S_OK, None),
            Err(Failure::Refused(status)) => (0, status, None),
            Err(Failure::Host(err)) => (0, S_IOERR, Some(err)),
        };
        // Bounded by MAX_DATA_BYTES + 1, which fits.
        let used = match mem.write_obj(status, self.status) {
            Ok(()) => (written + 1) as u32,
            Err(_) => 0,
        };
        Executed {
            used,
            status,
            work,
            synced,
            host_error,
        }
    }

    /// What a read, write or flush asks of the disk, with the guest buffers as iovecs.
    fn disk_op(&self, mem: &GuestMemoryMmap, disk: &Disk) -> Result<DiskOp, Failure> {
        let offset = self.sector.wrapping_mul(SECTOR_SIZE);
        match self.kind {
            Kind::In => {
                let iovecs = iovecs(mem, &self.data).map_err(Failure::refused)?;
                Ok(DiskOp::Read { offset, iovecs })
            }
            Kind::Out => {
                if disk.read_only() {
                    return Err(Failure::Refused(S_IOERR));
                }
                let iovecs = iovecs(mem, &self.data).map_err(Failure::refused)?;
                Ok(DiskOp::Write { offset, iovecs })
            }
            _ => Ok(DiskOp::Flush),
        }
    }

    /// Runs the request; returns the bytes written into guest buffers, adds to `work` the
    /// bytes of disk it touched (or [`FLUSH_WORK`]), which is what the I/O thread's yield
    /// counts (a request that moves no data can still keep the disk busy for long), and sets
    /// `synced` when a flush reached the host's disk.
    fn run(
        &self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        id: &[u8; ID_LEN],
        (work, synced): (&mut u64, &mut bool),
    ) -> Result<u64, Failure> {
        if self.is_disk_io() {
            *work += self.disk_work();
        }
        match self.kind {
            Kind::In | Kind::Out | Kind::Flush => {
                let host = Failure::host(self.host_op());
                match self.disk_op(mem, disk)? {
                    DiskOp::Read { offset, mut iovecs } => {
                        // SAFETY: the iovecs cover guest memory checked by `parse`, mapped for
                        // as long as `mem` lives, which outlives this call; guest writable
                        // buffers only.
                        unsafe { disk.read_vectored_at(&mut iovecs, offset) }.map_err(host)?;
                        Ok(self.data_len)
                    }
                    DiskOp::Write { offset, mut iovecs } => {
                        // SAFETY: as for reads; the kernel only reads these buffers.
                        unsafe { disk.write_vectored_at(&mut iovecs, offset) }.map_err(host)?;
                        Ok(0)
                    }
                    DiskOp::Flush => {
                        *synced = disk.flush().map_err(host)?;
                        Ok(0)
                    }
                }
            }
            Kind::GetId => {
                let mut left = &id[..];
                let mut written = 0;
                for s in &self.data {
                    let n = (s.len as usize).min(left.len());
                    mem.write_slice(&left[..n], s.addr)
                        .map_err(Failure::refused)?;
                    left = &left[n..];
                    written += n as u64;
                }
                Ok(written)
            }
            Kind::Discard | Kind::WriteZeroes => self.ranges(mem, disk, work).map(|()| 0),
            Kind::Unsupported(_) => Err(Failure::Refused(S_UNSUPP)),
        }
    }

    /// Executes the {sector, num_sectors, flags} ranges of a discard or write-zeroes request,
    /// held to the limits the configuration space advertises.
    fn ranges(&self, mem: &GuestMemoryMmap, disk: &Disk, work: &mut u64) -> Result<(), Failure> {
        if disk.read_only() {
            return Err(Failure::Refused(S_IOERR));
        }
        let (max_ranges, max_sectors) = match self.kind {
            Kind::Discard => (MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS),
            _ => (MAX_WRITE_ZEROES_RANGES, MAX_WRITE_ZEROES_SECTORS),
        };
        if self.data_len == 0
            || self.data_len % RANGE_LEN != 0
            || self.data_len / RANGE_LEN > u64::from(max_ranges)
        {
            return Err(Failure::Refused(S_IOERR));
        }
        let payload = read_bytes(mem, &self.data, self.data_len);
        for range in payload.chunks_exact(RANGE_LEN as usize) {
            let field = |at: usize, n: usize| {
                range[at..at + n]
                    .iter()
                    .rev()
                    .fold(0u64, |v, b| (v << 8) | u64::from(*b))
            };
            let (sector, sectors, flags) = (field(0, 8), field(8, 4), field(12, 4) as u32);
            if sectors > u64::from(max_sectors) {
                return Err(Failure::Refused(S_IOERR));
            }
            let bytes = sectors * SECTOR_SIZE;
            *work += bytes;
            check_range(sector, bytes, disk.size()).map_err(Failure::refused)?;
            let offset = sector * SECTOR_SIZE;
            let (discard, zero) = (
                HostOp::Discard { offset, len: bytes },
                HostOp::WriteZeroes { offset, len: bytes },
            );
            let (op, result) = match self.kind {
                Kind::Discard if flags != 0 => return Err(Failure::Refused(S_UNSUPP)),
                Kind::Discard if !disk.can_punch_holes() => return Err(Failure::Refused(S_UNSUPP)),
                Kind::Discard => (discard, disk.punch_hole(offset, bytes)),
                _ if flags & !WRITE_ZEROES_UNMAP != 0 => return Err(Failure::Refused(S_UNSUPP)),
                _ if flags & WRITE_ZEROES_UNMAP != 0 && disk.can_punch_holes() => {
                    (zero, disk.punch_hole(offset, bytes))
                }
                _ => (zero, disk.write_zeroes(offset, bytes)),
            };
            result.map_err(Failure::host(op))?;
        }
        Ok(())
    }
}
