//! virtio-net (virtio 1.2, section 5.1) over a host TAP device.
//!
//! [`tap::Tap`] owns the TAP file descriptor (opened non-blocking with a virtio-net header on
//! every frame, so offloads pass through untouched); [`frame`] checks the headers a guest
//! sends; [`device::Net`] is the virtio device with its receive and transmit queues. The
//! device never blocks: its [`device::NetHandler`] names the TAP readiness it waits for
//! ([`device::NetServer::interest`]) and the VMM's I/O worker polls for it, so an idle or
//! back-pressured device costs no CPU. A device given an MMDS stack
//! ([`device::Net::with_mmds`]) serves the guest's metadata requests itself (`mmds`).

pub mod device;
pub mod frame;
mod mmds;
mod rx;
pub mod tap;
mod tx;
pub mod uring;

pub use device::{Net, NetHandler, NetServer, NetStats};
pub use tap::{Tap, TapError};

/// The virtio device id of a network device.
pub const DEVICE_TYPE_NET: u32 = 1;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of `struct virtio_net_hdr_v1`, which precedes every frame in both directions (and
/// on the TAP, which is told to use the same size).
pub const VNET_HDR_LEN: usize = 12;
/// Largest Ethernet frame after the header: a 64 KiB GSO packet plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65550;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    /// The device handles packets with partial checksums (guest to host).
    pub const CSUM: u32 = 0;
    /// The driver handles packets with partial checksums (host to guest).
    pub const GUEST_CSUM: u32 = 1;
    /// `mtu` in the configuration space is valid.
    pub const MTU: u32 = 3;
    /// `mac` in the configuration space is valid.
    pub const MAC: u32 = 5;
    /// The driver accepts TCP/IPv4 segmentation offload.
    pub const GUEST_TSO4: u32 = 7;
    /// The driver accepts TCP/IPv6 segmentation offload.
    pub const GUEST_TSO6: u32 = 8;
    /// The device accepts TCP/IPv4 segmentation offload.
    pub const HOST_TSO4: u32 = 11;
    /// The device accepts TCP/IPv6 segmentation offload.
    pub const HOST_TSO6: u32 = 12;
    /// The driver can merge receive buffers: one frame may span several chains.
    pub const MRG_RXBUF: u32 = 15;
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{s}' is not a MAC address (expected six hex bytes like 06:00:ac:10:00:02)")
        };
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "'{s}' is a multicast MAC address; a NIC needs a unicast one"
            ));
        }
        Ok(Self(mac))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (FNV-1a), so a VM started
    /// again with the same interface gets the same address.
    pub fn stable(seed: &str) -> Self {
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let b = hash.to_le_bytes();
        // 0x06: locally administered (bit 1), unicast (bit 0 clear).
        Self([0x06, b[0], b[1], b[2], b[3], b[4]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_print_and_refuse_junk() {
        let mac: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
        assert_eq!(mac.0, [6, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0g:00:00:00:00:00",
            "6:0:0:0:0:0",
            "06-00-ac-10-00-02",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.contains("not a MAC address"), "{bad}: {err}");
        }
        assert!(
            "01:00:5e:00:00:01"
                .parse::<MacAddr>()
                .unwrap_err()
                .contains("multicast")
        );
    }

    #[test]
    fn generated_macs_are_stable_unicast_and_local() {
        let a = MacAddr::stable("eth0/tap0");
        assert_eq!(a, MacAddr::stable("eth0/tap0"));
        assert_ne!(a, MacAddr::stable("eth1/tap1"));
        assert_eq!(a.0[0] & 3, 2);
    }
}
