//! The container's network: `lo` up always, and with `--net` eth0 with the static address and
//! default route ember passed (name servers go to resolv.conf, see `setup_names`). ioctls, as
//! ifconfig and route do: the init has no netlink library and needs only these three settings.

use std::net::Ipv4Addr;

use super::guest::{NetSettings, parse_cidr, parse_gateway};

const AF_INET: u16 = 2;
const SOCK_DGRAM: i32 = 2;
const SIOCGIFFLAGS: u64 = 0x8913;
const SIOCSIFFLAGS: u64 = 0x8914;
const SIOCSIFADDR: u64 = 0x8916;
const SIOCSIFNETMASK: u64 = 0x891c;
const SIOCADDRT: u64 = 0x890b;
const IFF_UP: i16 = 1;
const RTF_UP: u16 = 1;
const RTF_GATEWAY: u16 = 2;

/// `struct sockaddr_in`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

/// `struct ifreq` with the union as an address or the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    addr: SockaddrIn,
    pad: [u8; 8],
}

/// `struct rtentry`.
#[repr(C)]
#[derive(Default)]
struct RtEntry {
    pad1: u64,
    dst: SockaddrIn,
    gateway: SockaddrIn,
    genmask: SockaddrIn,
    flags: u16,
    pad2: i16,
    pad3: u64,
    pad4: usize,
    metric: i16,
    dev: usize,
    mtu: u64,
    window: u64,
    irtt: u16,
}

unsafe extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn close(fd: i32) -> i32;
}

fn sockaddr(addr: Ipv4Addr) -> SockaddrIn {
    SockaddrIn {
        family: AF_INET,
        addr: addr.octets(),
        ..Default::default()
    }
}

/// One interface request on a throwaway socket.
struct Ifaces(i32);

impl Ifaces {
    fn open() -> Result<Self, String> {
        // SAFETY: plain socket(2).
        let fd = unsafe { socket(i32::from(AF_INET), SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(format!(
                "cannot open a socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self(fd))
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T, what: &str) -> Result<(), String> {
        // SAFETY: `arg` is the struct this request reads or writes (ifreq or rtentry).
        if unsafe { ioctl(self.0, request, arg as *mut T) } < 0 {
            return Err(format!(
                "cannot {what}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn request(name: &str, addr: SockaddrIn) -> IfReq {
        let mut req = IfReq {
            name: [0; 16],
            addr,
            pad: [0; 8],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn up(&self, name: &str) -> Result<(), String> {
        let mut req = Self::request(name, SockaddrIn::default());
        self.ioctl(SIOCGIFFLAGS, &mut req, &format!("find {name}"))?;
        // The flags are the union's first short, where the address's family sits.
        req.addr.family |= IFF_UP as u16;
        self.ioctl(SIOCSIFFLAGS, &mut req, &format!("bring {name} up"))
    }
}

impl Drop for Ifaces {
    fn drop(&mut self) {
        // SAFETY: the socket this value owns.
        unsafe { close(self.0) };
    }
}

/// Brings `lo` up, and configures eth0 when `net` is given.
pub fn configure(net: Option<&NetSettings>) -> Result<(), String> {
    let socks = Ifaces::open()?;
    socks.up("lo")?;
    let Some(net) = net else { return Ok(()) };
    let (addr, mask) = parse_cidr(&net.address).map_err(|e| e.to_string())?;
    let mut req = Ifaces::request("eth0", sockaddr(addr));
    socks.ioctl(SIOCSIFADDR, &mut req, "set eth0's address")?;
    let mut req = Ifaces::request("eth0", sockaddr(mask));
    socks.ioctl(SIOCSIFNETMASK, &mut req, "set eth0's netmask")?;
    socks.up("eth0")?;
    if let Some(gateway) = &net.gateway {
        let gw = parse_gateway(gateway).map_err(|e| e.to_string())?;
        let mut route = RtEntry {
            dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            gateway: sockaddr(gw),
            genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            flags: RTF_UP | RTF_GATEWAY,
            ..Default::default()
        };
        socks.ioctl(SIOCADDRT, &mut route, "add the default route")?;
    }
    Ok(())
}
