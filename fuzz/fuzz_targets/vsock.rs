//! virtio-vsock packets on mock guest memory: the guest's transmit chains carry packets
//! whose headers and payloads come from the input (through the data area), receive chains
//! take what the device delivers, and host clients connect to the device's Unix socket and
//! send what the input says. The device must not write outside the device-writable buffers,
//! and its used lengths must fit them.
//!
//! Input: data-area fill (u16 length + bytes), then operations: 0 publish a receive chain,
//! 1 publish a transmit chain, 2 publish an event chain, 3 serve (budget u8), 4 connect a host
//! client and send it a blob (u16 length + bytes, e.g. "CONNECT 1234\n").
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use devices::virtio::VirtioDevice;
use devices::virtio::vsock::Vsock;
use ember_fuzz::{Guest, Reader, event, interrupt, scratch};
use libfuzzer_sys::fuzz_target;

const GUEST_CID: u64 = 3;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut guest = Guest::new(3, r.blob());
    let path = scratch("vsock.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind the vsock socket");
    listener.set_nonblocking(true).expect("non-blocking");
    let wake = [event(), event()];
    let mut vsock = Vsock::new(
        guest.mem.clone(),
        interrupt(),
        wake,
        GUEST_CID,
        listener,
        path.clone(),
    )
    .expect("a timerfd");
    let features = vsock.features();
    if vsock.activate(guest.queues(), features).is_err() {
        return;
    }
    let server = vsock.server();
    let mut clients = Vec::new();
    while !r.is_empty() {
        match r.u8() % 5 {
            0 => guest.push_chain(0, &mut r),
            1 => guest.push_chain(1, &mut r),
            2 => guest.push_chain(2, &mut r),
            3 => {
                server.process(usize::from(r.u8()) + 1);
            }
            _ => {
                let bytes = r.blob();
                if clients.len() < 4 {
                    if let Ok(mut c) = UnixStream::connect(&path) {
                        let _ = c.set_nonblocking(true);
                        let _ = c.write_all(bytes);
                        clients.push(c);
                    }
                }
            }
        }
    }
    for _ in 0..4 {
        if !server.process(usize::MAX) {
            break;
        }
    }
    guest.check();
    drop(clients);
    drop(vsock);
    let _ = std::fs::remove_file(&path);
});
