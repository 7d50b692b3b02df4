//! The frontend against a scripted fake backend on a socketpair: what it sends, in which
//! order and with which contents, and how it survives a backend that hangs up or answers
//! garbage.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::virtio::testing::Driver;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_CONFIG: u32 = 24;
pub const RESET_DEVICE: u32 = 34;

const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

/// One message the frontend sent.
#[derive(Debug, Clone)]
pub struct Msg {
    pub code: u32,
    pub body: Vec<u8>,
    pub fds: Vec<Arc<File>>,
}

impl Msg {
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    pub fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

/// What the fake backend offers and how it misbehaves.
#[derive(Clone)]
pub struct Script {
    pub features: u64,
    pub protocol: u64,
    pub queues: u64,
    pub config: Option<Vec<u8>>,
    /// Hang up instead of answering this request.
    pub hang_up_at: Option<u32>,
    /// Answer this request with garbage.
    pub garbage_at: Option<u32>,
}

impl Script {
    /// A virtiofsd-like backend: VERSION_1, EVENT_IDX, protocol features with MQ, REPLY_ACK,
    /// CONFIG and RESET_DEVICE, two queues, the tag `tag`.
    pub fn virtiofsd(tag: &str) -> Self {
        let mut config = vec![0; 40];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[36] = 1;
        Self {
            features: (1 << 32) | (1 << 29) | (1 << 28) | VHOST_USER_F_PROTOCOL_FEATURES,
            protocol: 0x1 | 0x8 | 0x200 | 0x2000 | 0x20, // and BACKEND_REQ, not wanted
            queues: 2,
            config: Some(config),
            hang_up_at: None,
            garbage_at: None,
        }
    }
}

/// A running fake backend and what it received.
pub struct Fake {
    pub log: Arc<Mutex<Vec<Msg>>>,
    socket: LazySocket,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    /// Starts a fake backend following `script`; returns the frontend's end of the socket.
    pub fn start(script: Script) -> (Self, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let record = log.clone();
        let socket = theirs.try_clone().unwrap();
        let thread = std::thread::spawn(move || serve(theirs, &script, &record));
        let fake = Self {
            log,
            socket: LazySocket::Ready(socket),
            thread: Some(thread),
        };
        (fake, ours)
    }

    /// Starts a fake backend following `script` on the first connection `listener` accepts,
    /// as a backend listening on a socket path does.
    pub fn listen(listener: std::os::unix::net::UnixListener, script: Script) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let record = log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (theirs, _) = listener.accept().unwrap();
            tx.send(theirs.try_clone().unwrap()).unwrap();
            serve(theirs, &script, &record);
        });
        Self {
            log,
            socket: LazySocket::Pending(rx),
            thread: Some(thread),
        }
    }

    /// The codes received so far.
    pub fn codes(&self) -> Vec<u32> {
        self.log.lock().unwrap().iter().map(|m| m.code).collect()
    }

    /// The messages with `code`.
    pub fn with(&self, code: u32) -> Vec<Msg> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|m| m.code == code).cloned().collect()
    }

    /// The backend dies: its socket is shut down.
    pub fn kill(&mut self) {
        if let LazySocket::Pending(rx) = &self.socket {
            self.socket = LazySocket::Ready(rx.recv().unwrap());
        }
        if let LazySocket::Ready(s) = &self.socket {
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }

    /// Waits until the backend has hung up (the frontend closed or the script ended).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The backend's end of the connection, once it has accepted one.
enum LazySocket {
    Ready(UnixStream),
    Pending(std::sync::mpsc::Receiver<UnixStream>),
}

fn serve(sock: UnixStream, script: &Script, log: &Mutex<Vec<Msg>>) {
    let mut sock = sock;
    loop {
        let mut hdr = [0u8; 12];
        let mut fds = [-1; 8];
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        }];
        // SAFETY: the iovec points at `hdr`, which outlives the call.
        let Ok((n, nfds)) = (unsafe { sock.recv_with_fds(&mut iov, &mut fds) }) else {
            return;
        };
        if n == 0 {
            return;
        }
        sock.read_exact(&mut hdr[n..]).unwrap();
        let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0; size];
        sock.read_exact(&mut body).unwrap();
        let fds = fds[..nfds]
            .iter()
            // SAFETY: recvmsg gave us these descriptors; we own them now.
            .map(|fd| Arc::new(unsafe { File::from_raw_fd(*fd) }))
            .collect();
        log.lock().unwrap().push(Msg {
            code,
            body: body.clone(),
            fds,
        });
        if script.hang_up_at == Some(code) {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return;
        }
        if script.garbage_at == Some(code) {
            // A whole reply's worth of bytes that is no reply.
            sock.write_all(&[0xff; 20]).unwrap();
            continue;
        }
        let payload: Option<Vec<u8>> = match code {
            GET_FEATURES => Some(script.features.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(script.protocol.to_le_bytes().to_vec()),
            GET_QUEUE_NUM => Some(script.queues.to_le_bytes().to_vec()),
            GET_VRING_BASE => Some([&body[..4], &0u32.to_le_bytes()[..]].concat()),
            GET_CONFIG => {
                let cfg = script.config.clone().unwrap_or_default();
                Some([&body[..12], &cfg[..]].concat())
            }
            _ if flags & NEED_REPLY != 0 => Some(0u64.to_le_bytes().to_vec()),
            _ => None,
        };
        if let Some(payload) = payload {
            let mut reply = Vec::new();
            reply.extend(code.to_le_bytes());
            reply.extend((VERSION | REPLY).to_le_bytes());
            reply.extend((payload.len() as u32).to_le_bytes());
            reply.extend(payload);
            if sock.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

/// Guest memory behind a memfd, as a vhost-user device needs: 1 MiB at 0 and 1 MiB at 4 GiB.
pub fn shared_memory() -> GuestMemoryMmap {
    let regions = [(0u64, 1usize << 20), (1 << 32, 1 << 20)];
    GuestMemoryMmap::from_ranges_with_files(regions.iter().map(|(addr, len)| {
        // SAFETY: the name is a NUL-terminated literal.
        let fd = unsafe { libc::memfd_create(c"ember-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: memfd_create returned a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(*len as u64).unwrap();
        (GuestAddress(*addr), *len, Some(FileOffset::new(file, 0)))
    }))
    .unwrap()
}

fn events(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect()
}

/// Two ready queues with rings at known places (as [`Driver::new`] lays them out).
pub fn queues() -> Vec<Queue> {
    [0x1000u64, 0x8000]
        .iter()
        .map(|base| Driver::new(*base, 16).queue().unwrap())
        .collect()
}

#[test]
fn negotiation_claims_ownership_and_acknowledges_only_the_wanted_protocol_features() {
    let (fake, sock) = Fake::start(Script::virtiofsd("share"));
    let backend = Backend::from_stream(sock, 2).unwrap();
    assert_eq!(
        backend.device_features() & VHOST_USER_F_PROTOCOL_FEATURES,
        0
    );
    assert_ne!(backend.device_features() & (1 << 32), 0);
    drop(backend);
    let acked = fake.with(SET_PROTOCOL_FEATURES)[0].u64_at(0);
    assert_eq!(
        acked,
        0x1 | 0x8 | 0x200 | 0x2000,
        "BACKEND_REQ is not acknowledged"
    );
    assert_eq!(
        fake.codes(),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM
        ]
    );
    fake.join();
}

#[test]
fn a_backend_without_version_1_or_with_too_few_queues_is_refused() {
    let mut legacy = Script::virtiofsd("s");
    legacy.features &= !(1 << 32);
    let (fake, sock) = Fake::start(legacy);
    let err = Backend::from_stream(sock, 2).err().unwrap();
    assert!(matches!(err, BackendError::NotModern), "{err}");
    fake.join();

    let mut one = Script::virtiofsd("s");
    one.queues = 1;
    let (fake, sock) = Fake::start(one);
    let err = Backend::from_stream(sock, 2).err().unwrap();
    assert_eq!(
        err.to_string(),
        "the vhost-user backend serves 1 queues; the device needs 2"
    );
    fake.join();
}

#[test]
fn activation_sends_the_memory_table_and_each_rings_host_addresses_and_events() {
    let (fake, sock) = Fake::start(Script::virtiofsd("share"));
    let mut backend = Backend::from_stream(sock, 2).unwrap();
    let mem = shared_memory();
    let queues = queues();
    let (kicks, calls) = (events(2), events(2));
    let features = (1 << 32) | (1 << 29);
    backend
        .activate(&mem, features, &queues, &kicks, &[&calls[0], &calls[1]])
        .unwrap();

    // The backend gets the guest's features plus the vhost-user bit.
    let set = fake.with(SET_FEATURES)[0].u64_at(0);
    assert_eq!(set, features | VHOST_USER_F_PROTOCOL_FEATURES);
    // One table entry per region: guest address, size, ember's address, offset; one fd each.
    let table = &fake.with(SET_MEM_TABLE)[0];
    assert_eq!(table.u32_at(0), 2);
    assert_eq!(table.fds.len(), 2);
    for (i, region) in mem.iter().enumerate() {
        let at = 8 + i * 32;
        assert_eq!(table.u64_at(at), region.start_addr().0);
        assert_eq!(table.u64_at(at + 8), region.len());
        assert_eq!(table.u64_at(at + 16), region.as_ptr() as u64);
        assert_eq!(table.u64_at(at + 24), 0);
    }
    // Each ring's size, then its addresses as ember maps them (index, flags, desc, used, avail).
    let host = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap() as u64;
    for (i, q) in queues.iter().enumerate() {
        let num = &fake.with(SET_VRING_NUM)[i];
        assert_eq!((num.u32_at(0), num.u32_at(4)), (i as u32, 16));
        let addr = &fake.with(SET_VRING_ADDR)[i];
        assert_eq!(addr.u32_at(0), i as u32);
        assert_eq!(addr.u64_at(8), host(q.desc_table()));
        assert_eq!(addr.u64_at(16), host(q.used_ring()));
        assert_eq!(addr.u64_at(24), host(q.avail_ring()));
        assert_eq!(fake.with(SET_VRING_BASE)[i].u32_at(4), 0);
        // Kick and call each carry one descriptor, for queue i.
        for code in [SET_VRING_KICK, SET_VRING_CALL] {
            let m = &fake.with(code)[i];
            assert_eq!((m.u64_at(0), m.fds.len()), (i as u64, 1));
        }
        let enable = &fake.with(SET_VRING_ENABLE)[i];
        assert_eq!((enable.u32_at(0), enable.u32_at(4)), (i as u32, 1));
    }
    // Each queue's call fd the backend got raises that queue's interrupt.
    for (i, call) in calls.iter().enumerate() {
        let mut theirs = &*fake.with(SET_VRING_CALL)[i].fds[0];
        theirs.write_all(&(i as u64 + 1).to_le_bytes()).unwrap();
        assert_eq!(call.read().unwrap(), i as u64 + 1);
    }
    drop(backend);
    fake.join();
}

#[test]
fn the_configuration_space_is_read_from_a_backend_that_serves_one() {
    let (fake, sock) = Fake::start(Script::virtiofsd("docs"));
    let mut backend = Backend::from_stream(sock, 2).unwrap();
    let config = backend.config(40).unwrap().unwrap();
    assert_eq!(&config[..4], b"docs");
    drop(backend);
    fake.join();

    let mut plain = Script::virtiofsd("docs");
    plain.protocol = 0x1;
    let (fake, sock) = Fake::start(plain);
    let mut backend = Backend::from_stream(sock, 2).unwrap();
    assert!(backend.config(40).unwrap().is_none());
    assert!(!fake.codes().contains(&GET_CONFIG));
    drop(backend);
    fake.join();
}

#[test]
fn private_guest_memory_is_refused_before_anything_is_sent() {
    let (fake, sock) = Fake::start(Script::virtiofsd("s"));
    let mut backend = Backend::from_stream(sock, 2).unwrap();
    let private = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let err = backend
        .activate(&private, 1 << 32, &queues(), &events(2), &[&call, &call])
        .unwrap_err();
    assert!(matches!(err, BackendError::MemoryNotShared), "{err}");
    assert!(!fake.codes().contains(&SET_MEM_TABLE));
    drop(backend);
    fake.join();
}

#[test]
fn a_backend_that_hangs_up_or_answers_garbage_is_an_error_naming_the_step() {
    let mut dies = Script::virtiofsd("s");
    dies.hang_up_at = Some(SET_MEM_TABLE);
    let (fake, sock) = Fake::start(dies);
    let mut backend = Backend::from_stream(sock, 2).unwrap();
    let mem = shared_memory();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let err = backend
        .activate(&mem, 1 << 32, &queues(), &events(2), &[&call, &call])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the vhost-user backend failed at SET_MEM_TABLE"
    );
    // Whatever comes next fails the same way, without a panic.
    assert!(backend.reset().is_err());
    drop(backend);
    fake.join();

    let mut garbage = Script::virtiofsd("s");
    garbage.garbage_at = Some(GET_FEATURES);
    let (fake, sock) = Fake::start(garbage);
    let err = Backend::from_stream(sock, 2).err().unwrap();
    assert_eq!(
        err.to_string(),
        "the vhost-user backend failed at GET_FEATURES"
    );
    fake.join();
}

#[test]
fn reset_uses_reset_device_when_offered() {
    let (fake, sock) = Fake::start(Script::virtiofsd("s"));
    let mut backend = Backend::from_stream(sock, 2).unwrap();
    backend.reset().unwrap();
    assert_eq!(fake.codes().last(), Some(&RESET_DEVICE));
    drop(backend);
    fake.join();
}
