//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2, 5.1.6) and the checks a
//! frame from the guest must pass before it reaches the TAP. The host kernel validates headers
//! too, but ember refuses what the guest did not negotiate or what cannot be true for the
//! frame's length, so a lying guest is caught, logged and counted here, not deep in the stack.

use super::{MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN, features};

/// `flags`: the device must complete a partial checksum.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags` (host to guest): the checksum is known good.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: no segmentation.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// Byte offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// A parsed header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` type (bit 7 is ECN).
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Decodes the little-endian header.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        let word = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        }
    }
}

/// Why a frame from the guest is dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than a header and an Ethernet header.
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    TooShort(usize),
    /// Longer than any frame the device accepts.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLong(u64),
    /// Flag bits the guest may not set.
    #[error("header flags {0:#x} are not valid for a transmitted frame")]
    Flags(u8),
    /// A partial checksum without VIRTIO_NET_F_CSUM.
    #[error("partial checksum requested but checksum offload was not negotiated")]
    CsumNotNegotiated,
    /// The checksum would be written outside the frame.
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    CsumOutside {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// A segmentation type not negotiated or not known.
    #[error("segmentation type {0:#x} was not negotiated")]
    Gso(u8),
    /// Segmentation without a segment size, a checksum request, or headers inside the frame.
    #[error(
        "segmentation header is inconsistent (gso_size {gso_size}, hdr_len {hdr_len}, frame {len} bytes)"
    )]
    GsoInconsistent {
        /// `gso_size`.
        gso_size: u16,
        /// `hdr_len`.
        hdr_len: u16,
        /// Frame length.
        len: usize,
    },
}

/// Checks a frame the guest transmits: `hdr` precedes `len` bytes of Ethernet frame, and the
/// driver negotiated `acked` features.
pub fn check_tx(hdr: &VnetHeader, len: usize, acked: u64) -> Result<(), FrameError> {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if len < MIN_FRAME_LEN {
        return Err(FrameError::TooShort(len));
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len as u64));
    }
    if hdr.flags & !F_NEEDS_CSUM != 0 {
        return Err(FrameError::Flags(hdr.flags));
    }
    if hdr.flags & F_NEEDS_CSUM != 0 {
        if !has(features::CSUM) {
            return Err(FrameError::CsumNotNegotiated);
        }
        let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
        if end > len {
            return Err(FrameError::CsumOutside {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len,
            });
        }
    }
    let allowed = match hdr.gso_type {
        GSO_NONE => return Ok(()),
        GSO_TCPV4 => has(features::HOST_TSO4),
        GSO_TCPV6 => has(features::HOST_TSO6),
        _ => false,
    };
    if !allowed {
        return Err(FrameError::Gso(hdr.gso_type));
    }
    if hdr.gso_size == 0 || hdr.flags & F_NEEDS_CSUM == 0 || usize::from(hdr.hdr_len) > len {
        return Err(FrameError::GsoInconsistent {
            gso_size: hdr.gso_size,
            hdr_len: hdr.hdr_len,
            len,
        });
    }
    Ok(())
}

/// Adjusts a header read from the TAP for a driver that negotiated `acked`: `num_buffers`
/// set, and no checksum hint it did not ask for.
pub fn prepare_rx(hdr: &mut [u8; VNET_HDR_LEN], num_buffers: u16, acked: u64) {
    if acked & (1 << features::GUEST_CSUM) == 0 {
        hdr[0] &= !(F_NEEDS_CSUM | F_DATA_VALID);
    }
    hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&num_buffers.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 =
        (1 << features::CSUM) | (1 << features::HOST_TSO4) | (1 << features::HOST_TSO6);

    fn hdr(
        flags: u8,
        gso_type: u8,
        hdr_len: u16,
        gso_size: u16,
        start: u16,
        offset: u16,
    ) -> VnetHeader {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = flags;
        b[1] = gso_type;
        b[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&start.to_le_bytes());
        b[8..10].copy_from_slice(&offset.to_le_bytes());
        let parsed = VnetHeader::parse(&b);
        assert_eq!(
            (
                parsed.hdr_len,
                parsed.gso_size,
                parsed.csum_start,
                parsed.csum_offset
            ),
            (hdr_len, gso_size, start, offset)
        );
        parsed
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        assert_eq!(check_tx(&VnetHeader::default(), 60, 0), Ok(()));
        assert_eq!(check_tx(&VnetHeader::default(), MAX_FRAME_LEN, 0), Ok(()));
        // TCP/IPv4 checksum at 34+16.
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16), 60, ALL),
            Ok(())
        );
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16), 65000, ALL),
            Ok(())
        );
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, GSO_TCPV6, 86, 1428, 54, 16), 65000, ALL),
            Ok(())
        );
    }

    #[test]
    fn malformed_or_unnegotiated_headers_are_refused() {
        let d = VnetHeader::default();
        assert_eq!(check_tx(&d, 13, ALL), Err(FrameError::TooShort(13)));
        assert_eq!(check_tx(&d, 0, ALL), Err(FrameError::TooShort(0)));
        assert!(matches!(
            check_tx(&d, MAX_FRAME_LEN + 1, ALL),
            Err(FrameError::TooLong(_))
        ));
        assert_eq!(
            check_tx(&hdr(F_DATA_VALID, 0, 0, 0, 0, 0), 60, ALL),
            Err(FrameError::Flags(2))
        );
        assert_eq!(
            check_tx(&hdr(0x80, 0, 0, 0, 0, 0), 60, ALL),
            Err(FrameError::Flags(0x80))
        );
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16), 60, 0),
            Err(FrameError::CsumNotNegotiated)
        );
        // The checksum field's last byte would be just past the end, or far beyond.
        assert!(matches!(
            check_tx(&hdr(F_NEEDS_CSUM, 0, 0, 0, 40, 19), 60, ALL),
            Err(FrameError::CsumOutside { .. })
        ));
        assert!(matches!(
            check_tx(&hdr(F_NEEDS_CSUM, 0, 0, 0, u16::MAX, u16::MAX), 60, ALL),
            Err(FrameError::CsumOutside { .. })
        ));
        // Segmentation not negotiated, unknown, UDP, or with ECN.
        assert_eq!(
            check_tx(
                &hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16),
                9000,
                1 << features::CSUM
            ),
            Err(FrameError::Gso(1))
        );
        for t in [2, 3, 5, 0x81, 0xff] {
            assert_eq!(
                check_tx(&hdr(F_NEEDS_CSUM, t, 66, 1448, 34, 16), 9000, ALL),
                Err(FrameError::Gso(t))
            );
        }
        // Segmentation that lies: no segment size, no checksum request, headers past the end.
        for bad in [
            hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 0, 34, 16),
            hdr(0, GSO_TCPV4, 66, 1448, 0, 0),
            hdr(F_NEEDS_CSUM, GSO_TCPV4, 9001, 1448, 34, 16),
        ] {
            assert!(
                matches!(
                    check_tx(&bad, 9000, ALL),
                    Err(FrameError::GsoInconsistent { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rx_headers_get_num_buffers_and_lose_unasked_hints() {
        let mut b = [F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb];
        prepare_rx(&mut b, 3, 1 << features::GUEST_CSUM);
        assert_eq!(b[0], F_DATA_VALID);
        assert_eq!(&b[10..], &[3, 0]);
        prepare_rx(&mut b, 1, 0);
        assert_eq!(b[0], 0);
        assert_eq!(&b[10..], &[1, 0]);
    }
}
