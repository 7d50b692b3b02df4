//! The API socket: HTTP/1.1 over a Unix socket on its own thread, one request at a time.
//!
//! Each request is parsed, routed to a [`VmmAction`] and sent to the VMM thread over a channel,
//! with a write to an eventfd that wakes the VMM's event loop; this thread then blocks on the
//! reply channel. So requests are serialized (the VMM sees them one by one, in arrival order,
//! whichever connection they came on) and none is dropped. Connections are non-blocking and
//! polled: any number of clients, keep-alive and pipelining; a client that sends a malformed or
//! oversized request gets a 400 and is disconnected, and one that vanishes mid-request costs
//! nothing.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};

use vmm_sys_util::eventfd::EventFd;

use crate::http::{self, Response};
use crate::request::{VmmAction, VmmResponse, route};

/// Default `--http-api-max-payload-size`, Firecracker's.
pub const DEFAULT_MAX_PAYLOAD: usize = 51200;
/// Bytes read from a connection per readiness event.
const READ_CHUNK: usize = 16 * 1024;
/// Answers waiting for a client that does not read them; beyond this the connection's
/// requests wait (the client is not read either), so a client cannot grow ember's memory.
const MAX_PENDING_OUT: usize = 64 * 1024;

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process is serving on the path.
    #[error("another process is listening on the API socket '{}'; give each VM its own --api-sock", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("'{}' exists and is not a socket; remove it or choose another --api-sock path", .0.display())]
    NotASocket(PathBuf),
    /// The socket cannot be created.
    #[error("cannot create the API socket '{}'", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Binds the API socket at `path`, owner-only. A stale socket left by a process that is gone is
/// replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// The API thread's ends of the channels to the VMM.
pub struct VmmLink {
    /// Actions to the VMM.
    pub actions: Sender<VmmAction>,
    /// Written after each action, to wake the VMM's event loop.
    pub notify: EventFd,
    /// The VMM's answers, one per action.
    pub responses: Receiver<VmmResponse>,
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closing: bool,
}

/// Serves the socket for ever (the thread ends with the process).
pub fn serve(listener: UnixListener, link: VmmLink, max_payload: usize) {
    let mut conns: Vec<Conn> = Vec::new();
    let max_buffered = http::MAX_HEAD_LEN.saturating_add(max_payload);
    loop {
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for c in &conns {
            let mut events = 0;
            if !c.closing && c.inbuf.len() <= max_buffered && c.outbuf.len() < MAX_PENDING_OUT {
                events |= libc::POLLIN;
            }
            if !c.outbuf.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfds for descriptors this thread owns.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("the API server stops: {}", io::Error::last_os_error());
            return;
        }
        for (c, fd) in conns.iter_mut().zip(&fds[1..]) {
            if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                read(c, max_payload);
            }
            answer(c, &link, max_payload);
            if !c.outbuf.is_empty() {
                flush(c);
                // Requests held back while the client was not reading.
                answer(c, &link, max_payload);
            }
        }
        conns.retain(|c| !(c.closing && c.outbuf.is_empty()));
        if fds[0].revents & libc::POLLIN != 0 {
            while let Ok((stream, _)) = listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    conns.push(Conn {
                        stream,
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                        closing: false,
                    });
                }
            }
        }
    }
}

/// Reads what the client sent, up to the request-size bound.
fn read(c: &mut Conn, max_payload: usize) {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                // The client is gone: requests it left unfinished are dropped with it.
                c.closing = true;
                c.outbuf.clear();
                return;
            }
            Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.closing = true;
                c.outbuf.clear();
                return;
            }
        }
        if c.inbuf.len() > http::MAX_HEAD_LEN.saturating_add(max_payload) {
            break;
        }
    }
}

/// Answers the complete requests in the connection's buffer, in order, while the client
/// keeps up with the answers.
fn answer(c: &mut Conn, link: &VmmLink, max_payload: usize) {
    while !c.closing && c.outbuf.len() < MAX_PENDING_OUT {
        match http::parse(&c.inbuf, max_payload) {
            Ok(None) => break,
            Ok(Some((req, used))) => {
                c.inbuf.drain(..used);
                let response = match route(&req) {
                    Ok(action) => ask_vmm(link, action),
                    Err(message) => Response::fault(&message),
                };
                c.outbuf.extend_from_slice(&response.to_bytes());
                c.closing = req.close;
            }
            Err(err) => {
                c.outbuf
                    .extend_from_slice(&Response::fault(&err.to_string()).to_bytes());
                c.inbuf.clear();
                c.closing = true;
            }
        }
    }
}

/// Hands `action` to the VMM and waits for its answer.
fn ask_vmm(link: &VmmLink, action: VmmAction) -> Response {
    let gone = || Response::fault("The VMM is not running any more.");
    if link.actions.send(action).is_err() || link.notify.write(1).is_err() {
        return gone();
    }
    match link.responses.recv() {
        Ok(Ok(crate::request::VmmData::Empty)) => Response::no_content(),
        Ok(Ok(crate::request::VmmData::Json(value))) => Response::json(value.to_string()),
        Ok(Err(message)) => Response::fault(&message),
        Err(_) => gone(),
    }
}

fn flush(c: &mut Conn) {
    while !c.outbuf.is_empty() {
        match c.stream.write(&c.outbuf) {
            Ok(0) => break,
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.outbuf.clear();
                c.closing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::VmmData;
    use std::io::BufRead;
    use std::sync::mpsc;

    /// A server whose "VMM" answers every action with its debug name.
    fn server(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("ember-api-{}-{name}.sock", std::process::id()));
        let listener = bind(&path).unwrap();
        let (atx, arx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let link = VmmLink {
            actions: atx,
            notify: notify.try_clone().unwrap(),
            responses: rrx,
        };
        std::thread::spawn(move || serve(listener, link, 100));
        std::thread::spawn(move || {
            for action in arx {
                let _ = notify.read();
                let _ = rtx.send(Ok(VmmData::Json(serde_json::json!(format!("{action:?}")))));
            }
        });
        path
    }

    /// A client connection with one read buffer for its whole life, so pipelined answers are
    /// not lost between calls.
    struct Client(UnixStream, io::BufReader<UnixStream>);

    fn client(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let r = io::BufReader::new(s.try_clone().unwrap());
        Client(s, r)
    }

    fn exchange(c: &mut Client, raw: &str) -> String {
        c.0.write_all(raw.as_bytes()).unwrap();
        let reader = &mut c.1;
        let mut head = String::new();
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    #[test]
    fn keep_alive_pipelining_and_errors() {
        let path = server("basic");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut s = client(&path);
        assert!(exchange(&mut s, "GET / HTTP/1.1\r\n\r\n").ends_with("\"GetInstanceInfo\""));
        // Two requests in one write: two answers, in order.
        let both = "GET /version HTTP/1.1\r\n\r\nGET /machine-config HTTP/1.1\r\n\r\n";
        assert!(exchange(&mut s, both).ends_with("\"GetVersion\""));
        assert!(exchange(&mut s, "").ends_with("\"GetMachineConfig\""));
        let r = exchange(&mut s, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("Invalid request method and/or path"),
            "{r}"
        );
        // Over the 100-byte limit: answered, then disconnected.
        let r = exchange(
            &mut s,
            "PUT /boot-source HTTP/1.1\r\nContent-Length: 500\r\n\r\n",
        );
        assert!(r.contains("larger than the limit of 100"), "{r}");
        let mut rest = Vec::new();
        s.1.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // Garbage instead of HTTP.
        let mut g = client(&path);
        let r = exchange(&mut g, "\x16\x03\x01 hello\r\n\r\n");
        assert!(r.contains("malformed HTTP request"), "{r}");
        // A client that leaves mid-request does not disturb the next one.
        let mut half = UnixStream::connect(&path).unwrap();
        half.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"ker")
            .unwrap();
        drop(half);
        let mut s2 = client(&path);
        assert!(exchange(&mut s2, "GET / HTTP/1.1\r\n\r\n").contains("200 OK"));
    }

    #[test]
    fn a_client_that_pipelines_without_reading_gets_every_answer_in_the_end() {
        let path = server("pipeline");
        let mut c = client(&path);
        let mut writer = c.0.try_clone().unwrap();
        const N: usize = 5000;
        // More answers than the server buffers for one client: it stops reading, the writes
        // block, and everything flows again as the answers are read.
        let sender = std::thread::spawn(move || {
            for _ in 0..N {
                writer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            }
        });
        for i in 0..N {
            assert!(
                exchange(&mut c, "").ends_with("\"GetInstanceInfo\""),
                "answer {i}"
            );
        }
        sender.join().unwrap();
    }

    #[test]
    fn stale_sockets_are_replaced_and_live_ones_refused() {
        let path = server("live");
        assert!(matches!(bind(&path), Err(ServerError::InUse(_))));
        let stale =
            std::env::temp_dir().join(format!("ember-api-{}-stale.sock", std::process::id()));
        drop(UnixListener::bind(&stale).unwrap());
        bind(&stale).unwrap();
        let file = std::env::temp_dir().join(format!("ember-api-{}-file", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::NotASocket(_))));
    }
}
