//! The vhost-user-blk device against a scripted fake backend: what the guest is shown, and how
//! ember reconnects to a backend that hangs up and comes back on the same socket path.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::testing::Driver;
use crate::virtio::vhost_user::VHOST_USER_F_PROTOCOL_FEATURES;
use crate::virtio::vhost_user::tests::{
    Fake, GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_FEATURES, SET_MEM_TABLE,
    SET_OWNER, SET_PROTOCOL_FEATURES, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
    SET_VRING_ENABLE, SET_VRING_KICK, SET_VRING_NUM, Script, shared_memory,
};
use crate::virtio::worker::{IoHandler, Ready};

/// A qemu-storage-daemon-like backend: VERSION_1, EVENT_IDX, FLUSH, BLK_SIZE, and MQ and
/// CONFIG_WCE, which ember must not pass on; protocol features MQ, REPLY_ACK and CONFIG; a
/// 1 MiB disk with 4 KiB blocks.
fn qsd() -> Script {
    let mut config = vec![0; CONFIG_LEN];
    config[..8].copy_from_slice(&2048u64.to_le_bytes());
    config[20..24].copy_from_slice(&4096u32.to_le_bytes());
    Script {
        features: (1 << 32)
            | (1 << 29)
            | (1 << 9)
            | (1 << 6)
            | (1 << 12)
            | (1 << 11)
            | VHOST_USER_F_PROTOCOL_FEATURES,
        protocol: 0x1 | 0x8 | 0x200,
        queues: 1,
        config: Some(config),
        hang_up_at: None,
        garbage_at: None,
    }
}

fn event() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

fn device(
    backend: Backend,
    path: Option<&Path>,
    kick: EventFd,
    mem: &GuestMemoryMmap,
) -> VhostBlock {
    let irq = Arc::new(VirtioInterrupt::new(event()));
    let path = path.map(Path::to_owned);
    VhostBlock::new("d", true, backend, path, mem.clone(), irq, kick).unwrap()
}

#[test]
fn the_guest_sees_a_block_device_with_the_backends_config_and_only_carryable_features() {
    let (fake, sock) = Fake::start(qsd());
    let backend = Backend::from_stream(sock, 1).unwrap();
    let blk = device(backend, None, event(), &shared_memory());
    assert_eq!(blk.device_type(), 2);
    assert_eq!(blk.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(blk.features(), (1 << 32) | (1 << 29) | (1 << 9) | (1 << 6));
    let mut capacity = [0u8; 8];
    blk.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 2048);
    let mut blk_size = [0u8; 4];
    blk.read_config(20, &mut blk_size);
    assert_eq!(u32::from_le_bytes(blk_size), 4096);
    drop(blk);
    fake.join();

    // cache_type "Unsafe": no flush feature.
    let (fake, sock) = Fake::start(qsd());
    let backend = Backend::from_stream(sock, 1).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(event()));
    let unsafe_cache =
        VhostBlock::new("d", false, backend, None, shared_memory(), irq, event()).unwrap();
    assert_eq!(unsafe_cache.features(), (1 << 32) | (1 << 29) | (1 << 6));
    drop(unsafe_cache);
    fake.join();
}

#[test]
fn a_backend_without_a_configuration_space_is_refused() {
    let mut script = qsd();
    script.protocol = 0x1 | 0x8;
    let (fake, sock) = Fake::start(script);
    let irq = Arc::new(VirtioInterrupt::new(event()));
    let backend = Backend::from_stream(sock, 1).unwrap();
    let err = VhostBlock::new("d", true, backend, None, shared_memory(), irq, event())
        .err()
        .unwrap();
    assert!(matches!(err, VhostBlockError::NoConfig), "{err}");
    assert!(err.to_string().contains("protocol feature CONFIG"));
    fake.join();
}

/// Waits (5 s at most) until `fd` is readable.
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 5000) == 1 }
}

const READY: Ready = Ready {
    readable: true,
    writable: false,
    failed: false,
};

#[test]
fn after_a_hang_up_ember_reconnects_to_a_new_backend_and_replays_the_queue_from_the_used_index() {
    let dir = std::env::temp_dir().join(format!("ember-vhost-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blk.sock");
    let _ = std::fs::remove_file(&path);
    let mut first = Fake::listen(UnixListener::bind(&path).unwrap(), qsd());
    let kick = event();
    let backend = Backend::connect(&path, 1).unwrap();
    let mem = shared_memory();
    let mut blk = device(backend, Some(&path), kick.try_clone().unwrap(), &mem);
    let mut monitor = blk.monitor().unwrap();
    let mut driver = Driver::new(0x1000, 16);
    blk.activate(vec![driver.queue().unwrap()], (1 << 32) | (1 << 9))
        .unwrap();
    // The guest queued three requests; the backend answered two, then died.
    for at in [0x20000, 0x21000, 0x22000] {
        driver
            .add(&mem, &[(at, 16, false), (at + 0x100, 1, true)])
            .unwrap();
    }
    let (_, _, used) = driver.rings();
    mem.write_obj(2u16, GuestAddress(used + 2)).unwrap();

    first.kill();
    let mut watches = Vec::new();
    monitor.interest(&mut watches);
    assert!(watches[0].hangup);
    let failed = Ready {
        failed: true,
        ..Ready::default()
    };
    assert!(!monitor.ready(&[failed]));
    first.join();

    // Requests wait in the ring; ember only waits for its retry timer.
    monitor.interest(&mut watches);
    assert_eq!(watches.len(), 1);
    // No backend yet: the attempt fails and the timer is armed again.
    std::fs::remove_file(&path).unwrap();
    assert!(readable(watches[0].fd));
    assert!(!monitor.ready(&[READY]));
    monitor.interest(&mut watches);
    assert_eq!(watches.len(), 1, "still waiting for a backend");

    let second = Fake::listen(UnixListener::bind(&path).unwrap(), qsd());
    assert!(readable(watches[0].fd));
    assert!(!monitor.ready(&[READY]));
    // Connected again: ownership and negotiation, then the queue as the guest left it.
    assert_eq!(
        second.codes(),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM,
            SET_FEATURES,
            SET_MEM_TABLE,
            SET_VRING_NUM,
            SET_VRING_ADDR,
            SET_VRING_BASE,
            SET_VRING_CALL,
            SET_VRING_KICK,
            SET_VRING_ENABLE,
        ]
    );
    let set = second.with(SET_FEATURES)[0].u64_at(0);
    assert_eq!(set, (1 << 32) | (1 << 9) | VHOST_USER_F_PROTOCOL_FEATURES);
    let base = &second.with(SET_VRING_BASE)[0];
    assert_eq!(
        (base.u32_at(0), base.u32_at(4)),
        (0, 2),
        "base = the used index"
    );
    // The queue was kicked, so the new backend serves the third request at once.
    assert_eq!(kick.read().unwrap(), 1);
    // Watching the new backend's socket again.
    monitor.interest(&mut watches);
    assert_eq!(watches.len(), 1);
    assert!(watches[0].hangup && !watches[0].readable);
    drop((blk, monitor));
    second.join();
    std::fs::remove_dir_all(&dir).unwrap();
}
