#![allow(clippy::unwrap_used)]

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::pci::msix::{CONTROL_ENABLE, MsiMessage, MsiRouting, Msix};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::Driver;
use crate::virtio::vhost_user::tests::{
    Fake, SET_VRING_CALL, SET_VRING_ENABLE, Script, queues, shared_memory,
};
use crate::virtio::worker::{IoHandler, Ready, Watch};
use crate::virtio::{INTERRUPT_USED_RING, NO_VECTOR};

fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))
}

fn kicks() -> Vec<EventFd> {
    (0..QUEUES)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect()
}

fn device(script: Script, tag: &str) -> (Fake, Result<Fs, FsError>) {
    let (fake, sock) = Fake::start(script);
    let backend = Backend::from_stream(sock, QUEUES).unwrap();
    let fs = Fs::new(tag, backend, None, shared_memory(), interrupt(), kicks());
    (fake, fs)
}

#[test]
fn the_device_shows_the_tag_one_request_queue_and_the_backends_features_less_indirect() {
    let (fake, fs) = device(Script::virtiofsd("docs"), "docs");
    let fs = fs.unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[1024, 1024]);
    let mut config = [0u8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..5], b"docs\0");
    assert_eq!(&config[36..], &1u32.to_le_bytes());
    assert_eq!(fs.features(), (1 << 32) | (1 << 29));
    drop(fs);
    fake.join();
}

#[test]
fn a_bad_tag_or_a_backend_serving_another_tag_is_refused() {
    let (fake, fs) = device(Script::virtiofsd("docs"), "other");
    assert_eq!(
        fs.err().unwrap().to_string(),
        "the vhost-user backend serves the tag 'docs', not 'other'; use its tag or start it \
         with --tag other"
    );
    fake.join();
    let long = "t".repeat(TAG_MAX + 1);
    let (fake, fs) = device(Script::virtiofsd("docs"), &long);
    assert!(matches!(fs.err().unwrap(), FsError::Tag(t) if t == long));
    fake.join();
    assert!(valid_tag(&"t".repeat(TAG_MAX)));
    assert!(!valid_tag("") && !valid_tag("a\0b"));
}

#[test]
fn without_a_backend_config_the_tag_is_ember_s_own() {
    let mut script = Script::virtiofsd("ignored");
    script.protocol = 0x1 | 0x8;
    let (fake, fs) = device(script, "mine");
    let mut config = [0u8; 4];
    fs.unwrap().read_config(0, &mut config);
    assert_eq!(&config, b"mine");
    fake.join();
}

/// Regression: the backend writes the irqfd itself, so Linux, which looks at the used rings
/// only when InterruptStatus shows the used bit, would drop every interrupt of the share.
#[test]
fn interrupt_status_shows_the_used_bit_for_a_backend_raised_interrupt() {
    let (fake, sock) = Fake::start(Script::virtiofsd("s"));
    let backend = Backend::from_stream(sock, QUEUES).unwrap();
    let (mem, irq) = (shared_memory(), interrupt());
    let fs = Fs::new("s", backend, None, mem.clone(), irq.clone(), kicks()).unwrap();
    let mut transport = MmioTransport::new(fs, mem, irq, kicks());
    let mut status = [0u8; 4];
    transport.read(0x60, &mut status);
    assert_eq!(u32::from_le_bytes(status), INTERRUPT_USED_RING);
    // Acknowledging it does not hide the next interrupt.
    transport.write(0x64, &1u32.to_le_bytes());
    transport.read(0x60, &mut status);
    assert_eq!(u32::from_le_bytes(status), INTERRUPT_USED_RING);
    drop(transport);
    fake.join();
}

/// Accepts every route (the VMM's side of MSI-X).
struct AnyRoute;

impl MsiRouting for AnyRoute {
    fn route(&self, _vector: u16, _message: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
}

fn event() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

/// Activates a virtio-pci share whose driver gave queue 0 vector 2 and queue 1 no vector,
/// with MSI-X `enabled` or not; returns the call fds the backend got, per queue, and the
/// interrupt.
fn pci_activation(enabled: bool) -> (Vec<std::fs::File>, Arc<VirtioInterrupt>) {
    let msix = Arc::new(Msix::new(vec![event(), event(), event()], Arc::new(AnyRoute)).unwrap());
    if enabled {
        msix.set_message_control(CONTROL_ENABLE);
    }
    let irq = Arc::new(VirtioInterrupt::with_msix(event(), msix, QUEUES));
    irq.set_queue_vector(0, 2);
    irq.set_queue_vector(1, NO_VECTOR);
    let (fake, sock) = Fake::start(Script::virtiofsd("s"));
    let backend = Backend::from_stream(sock, QUEUES).unwrap();
    let mut fs = Fs::new("s", backend, None, shared_memory(), irq.clone(), kicks()).unwrap();
    fs.activate(queues(), 1 << 32).unwrap();
    let calls = fake
        .with(SET_VRING_CALL)
        .iter()
        .map(|m| m.fds[0].try_clone().unwrap())
        .collect();
    drop(fs);
    fake.join();
    (calls, irq)
}

fn raise(mut call: &std::fs::File) {
    use std::io::Write;
    call.write_all(&1u64.to_le_bytes()).unwrap();
}

/// With --enable-pci the share is a virtio-pci function: under MSI-X the backend must raise
/// the vector the driver gave each queue (and nothing for a queue without one), since the
/// driver's handler for the line is not even installed.
#[test]
fn under_msix_the_backend_raises_each_queues_own_vector() {
    let (calls, irq) = pci_activation(true);
    let msix = irq.msix().unwrap();
    raise(&calls[0]);
    assert_eq!(msix.irq(2).unwrap().read().unwrap(), 1);
    raise(&calls[1]);
    for v in 0..3 {
        assert!(msix.irq(v).unwrap().read().is_err(), "vector {v} fired");
    }
    assert!(irq.irq().read().is_err(), "INTx fired under MSI-X");
    // The ISR is for the line only: nothing there under MSI-X.
    assert_eq!(irq.take_status(), 0);
}

/// Regression: a virtio-pci driver without MSI-X reads the ISR on its INTx line and looks at
/// the used rings only when the bit is set; the backend cannot set it.
#[test]
fn on_pci_intx_the_backend_raises_the_line_and_the_isr_shows_the_used_bit() {
    let (calls, irq) = pci_activation(false);
    for call in &calls {
        raise(call);
        assert_eq!(irq.irq().read().unwrap(), 1);
    }
    // Reading the ISR clears it, but not what the backend's next interrupt will mean.
    assert_eq!(irq.take_status(), INTERRUPT_USED_RING);
    assert_eq!(irq.take_status(), INTERRUPT_USED_RING);
}

#[test]
fn activation_failing_in_the_backend_is_an_activation_error() {
    let mut script = Script::virtiofsd("s");
    script.hang_up_at = Some(SET_VRING_ENABLE);
    let (fake, fs) = device(script, "s");
    let err = fs.unwrap().activate(queues(), 1 << 32).unwrap_err();
    assert!(matches!(err, ActivateError::Backend(_)), "{err}");
    fake.join();
}

/// A FUSE request at `at`: a 40-byte in-header with `unique`, then room for the reply.
fn fuse_request(mem: &GuestMemoryMmap, driver: &mut Driver, at: u64, unique: u64) {
    mem.write_obj(40u32, GuestAddress(at)).unwrap();
    mem.write_obj(unique, GuestAddress(at + 8)).unwrap();
    driver
        .add(mem, &[(at, 40, false), (at + 0x100, 64, true)])
        .unwrap();
}

fn hung_up(monitor: &mut Monitor<AnswerEio>) -> bool {
    let mut watches = Vec::new();
    monitor.interest(&mut watches);
    assert_eq!(watches.len(), 1);
    assert_eq!(watches[0], Watch::hangup(watches[0].fd));
    let mut pfd = libc::pollfd {
        fd: watches[0].fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
    pfd.revents & libc::POLLHUP != 0
}

#[test]
fn when_the_backend_dies_pending_and_new_requests_fail_with_eio() {
    let (mut fake, sock) = Fake::start(Script::virtiofsd("s"));
    let backend = Backend::from_stream(sock, QUEUES).unwrap();
    let (mem, irq) = (shared_memory(), interrupt());
    let kicks = kicks();
    let guest_kick = kicks[1].try_clone().unwrap();
    let evts = kicks.iter().map(|k| k.try_clone().unwrap()).collect();
    let mut fs = Fs::new("s", backend, None, mem.clone(), irq.clone(), evts).unwrap();
    let mut monitor = fs.monitor().unwrap();
    let mut request = Driver::new(0x8000, 16);
    let queues = vec![
        Driver::new(0x1000, 16).queue().unwrap(),
        request.queue().unwrap(),
    ];
    fs.activate(queues, 1 << 32).unwrap();
    // A request the backend took but never answered.
    fuse_request(&mem, &mut request, 0x20000, 7);

    fake.kill();
    assert!(hung_up(&mut monitor));
    let failed = Ready {
        failed: true,
        ..Ready::default()
    };
    monitor.ready(&[failed]);
    let reply = |at: u64| {
        let len: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let err: i32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        let unique: u64 = mem.read_obj(GuestAddress(at + 8)).unwrap();
        (len, err, unique)
    };
    assert_eq!(request.take_used(&mem).unwrap(), [(0, 16)]);
    assert_eq!(reply(0x20100), (16, -libc::EIO, 7));
    assert_eq!(irq.irq().read().unwrap(), 1);

    // From now on ember waits on the kicks and answers new requests itself.
    let mut watches = Vec::new();
    monitor.interest(&mut watches);
    assert_eq!(watches.len(), QUEUES);
    fuse_request(&mem, &mut request, 0x30000, 8);
    guest_kick.write(1).unwrap();
    let kicked = Ready {
        readable: true,
        ..Ready::default()
    };
    monitor.ready(&[Ready::default(), kicked]);
    assert_eq!(request.take_used(&mem).unwrap(), [(2, 16)]);
    assert_eq!(reply(0x30100), (16, -libc::EIO, 8));
    // A reset and reactivation cannot revive a dead backend: an error, no panic.
    fs.reset();
    let again = vec![
        Driver::new(0x1000, 16).queue().unwrap(),
        request.queue().unwrap(),
    ];
    assert!(fs.activate(again, 1 << 32).is_err());
    fake.join();
}

/// `--fs socket=`: ember answers with EIO while the backend is gone, then hands the queues to a
/// new backend on the same path from where its own answers left them.
#[test]
fn a_share_reached_by_path_reconnects_after_answering_with_eio_meanwhile() {
    use std::os::unix::net::UnixListener;

    use crate::virtio::vhost_user::tests::SET_VRING_BASE;

    let dir = std::env::temp_dir().join(format!("ember-vhost-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fs.sock");
    let _ = std::fs::remove_file(&path);
    let mut first = Fake::listen(UnixListener::bind(&path).unwrap(), Script::virtiofsd("s"));
    let backend = Backend::connect(&path, QUEUES).unwrap();
    let (mem, irq) = (shared_memory(), interrupt());
    let kicks = kicks();
    let evts = kicks.iter().map(|k| k.try_clone().unwrap()).collect();
    let mut fs = Fs::new("s", backend, Some(path.clone()), mem.clone(), irq, evts).unwrap();
    let mut monitor = fs.monitor().unwrap();
    let mut request = Driver::new(0x8000, 16);
    let queues = vec![
        Driver::new(0x1000, 16).queue().unwrap(),
        request.queue().unwrap(),
    ];
    fs.activate(queues, 1 << 32).unwrap();
    fuse_request(&mem, &mut request, 0x20000, 7);
    fuse_request(&mem, &mut request, 0x30000, 8);

    first.kill();
    assert!(hung_up(&mut monitor));
    let failed = Ready {
        failed: true,
        ..Ready::default()
    };
    monitor.ready(&[failed]);
    first.join();
    // ember answered both requests itself.
    assert_eq!(request.take_used(&mem).unwrap(), [(0, 16), (2, 16)]);
    // It waits on the two kicks and its retry timer.
    let mut watches = Vec::new();
    monitor.interest(&mut watches);
    assert_eq!(watches.len(), QUEUES + 1);
    std::fs::remove_file(&path).unwrap();
    let second = Fake::listen(UnixListener::bind(&path).unwrap(), Script::virtiofsd("s"));
    let mut pfd = libc::pollfd {
        fd: watches[QUEUES].fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
    let timer = Ready {
        readable: true,
        ..Ready::default()
    };
    monitor.ready(&[Ready::default(), Ready::default(), timer]);
    // The request queue resumes after ember's two answers; both queues are kicked.
    let bases: Vec<(u32, u32)> = second
        .with(SET_VRING_BASE)
        .iter()
        .map(|m| (m.u32_at(0), m.u32_at(4)))
        .collect();
    assert_eq!(bases, [(0, 0), (1, 2)]);
    for kick in &kicks {
        assert_eq!(kick.read().unwrap(), 1);
    }
    assert!(hung_up_watch(&mut monitor));
    drop((fs, monitor));
    second.join();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether the monitor watches only a backend's socket again.
fn hung_up_watch(monitor: &mut Monitor<AnswerEio>) -> bool {
    let mut watches = Vec::new();
    monitor.interest(&mut watches);
    watches.len() == 1 && watches[0].hangup && !watches[0].readable
}
