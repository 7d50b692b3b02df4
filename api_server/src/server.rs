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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use utils::poll::{poll, pollfd, timeout_ms};
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
/// Connections served at once. Requests are answered one at a time anyway, so more buys no
/// throughput; each costs a descriptor and buffers. A new client beyond this displaces the
/// connection that has been quiet longest, so idle clients cannot lock an orchestrator out.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that neither sends nor takes anything for this long is closed. Longer than
/// common HTTP clients keep idle keep-alive connections (90 s for Go and hyper), so a client
/// normally closes first and never races a request against ember's close.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the listener is left alone when the process is out of descriptors and no
/// connection of ours can be closed to make room: a pending connection keeps the listener
/// readable, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the server holds each client to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (`--http-api-max-payload-size`).
    pub max_payload: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Quiet time after which a connection is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// ember's limits, with `max_payload` from the command line.
    pub fn new(max_payload: usize) -> Self {
        Self {
            max_payload,
            max_connections: MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process is serving on the path.
    #[error("another process is listening on the API socket '{}'; give each VM its own --api-sock", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("'{}' exists and is not a socket; remove it or choose another --api-sock path", .0.display())]
    NotASocket(PathBuf),
    /// The path does not fit in a Unix socket address.
    #[error("the API socket path '{}' is longer than the {max} bytes a Unix socket address holds; choose a shorter --api-sock path", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// The longest path that fits.
        max: usize,
    },
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

/// The socket file ember created, removed when this is dropped (when ember exits) unless
/// something else has replaced it since.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device, inode and change time: together they tell this file from a later one that
    /// reuses the inode number.
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.identity);
        if ours {
            if let Err(err) = std::fs::remove_file(&self.path) {
                log::warn!(
                    "cannot remove the API socket {}: {err}",
                    self.path.display()
                );
            }
        }
    }
}

/// Binds the API socket at `path`, owner-only from the moment it exists. A stale socket left
/// by a process that is gone is replaced; a live one is an error. The returned [`SocketFile`]
/// removes the socket when dropped.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ServerError> {
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
    let listener = listen_owner_only(path)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let file = SocketFile {
        path: path.to_owned(),
        identity: identity(&meta),
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok((listener, file))
}

/// A listening socket at `path` whose file is created mode 0600. Binding first and chmod-ing
/// after would leave a window in which, under a permissive umask, anyone could connect; Linux
/// creates a Unix socket's file with the mode of the socket's own inode (less the umask), so
/// that mode is set on the descriptor before `bind`.
fn listen_owner_only(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the path is NUL-terminated.
    let max = addr.sun_path.len() - 1;
    if bytes.len() > max || bytes.is_empty() {
        return Err(ServerError::PathTooLong {
            path: path.to_owned(),
            max,
        });
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: creates a new descriptor; no pointers involved.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(bind_err(io::Error::last_os_error()));
    }
    // SAFETY: socket just returned this descriptor, which nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor this function owns.
    if unsafe { libc::fchmod(socket.as_raw_fd(), 0o600) } != 0 {
        return Err(bind_err(io::Error::last_os_error()));
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes that outlives the call.
    let rc = unsafe { libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc != 0 {
        return Err(bind_err(io::Error::last_os_error()));
    }
    // SAFETY: listen on a bound socket this function owns.
    if unsafe { libc::listen(socket.as_raw_fd(), 128) } != 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(bind_err(err));
    }
    Ok(UnixListener::from(socket))
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
    /// The client sent its last byte (it may have shut down only its sending side and still
    /// wait for the answers): no more reading, the complete requests are still answered.
    eof: bool,
    /// Nothing more is read or answered; the connection closes once `outbuf` is sent.
    closing: bool,
    /// When bytes last moved either way.
    active: Instant,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            eof: false,
            closing: false,
            active: Instant::now(),
        }
    }

    fn poll_events(&self, max_buffered: usize) -> libc::c_short {
        let mut events = 0;
        if !self.closing
            && !self.eof
            && self.inbuf.len() <= max_buffered
            && self.outbuf.len() < MAX_PENDING_OUT
        {
            events |= libc::POLLIN;
        }
        if !self.outbuf.is_empty() {
            events |= libc::POLLOUT;
        }
        events
    }
}

/// Serves the socket for ever (the thread ends with the process).
pub fn serve(listener: UnixListener, link: VmmLink, limits: Limits) {
    let mut conns: Vec<Conn> = Vec::new();
    let max_buffered = http::MAX_HEAD_LEN.saturating_add(limits.max_payload);
    // Set while the listener is left alone after running out of descriptors.
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if accept_paused_until.is_some_and(|t| now >= t) {
            accept_paused_until = None;
        }
        let listen = if accept_paused_until.is_none() {
            libc::POLLIN
        } else {
            0
        };
        let mut fds = vec![pollfd(listener.as_raw_fd(), listen)];
        fds.extend(
            conns
                .iter()
                .map(|c| pollfd(c.stream.as_raw_fd(), c.poll_events(max_buffered))),
        );
        let wake_at = conns
            .iter()
            .map(|c| c.active + limits.idle_timeout)
            .chain(accept_paused_until)
            .min();
        // An interruption by a signal comes back as a round with nothing ready, which serves
        // nothing new and closes only connections past their idle deadline, as any round does.
        if let Err(err) = poll(&mut fds, timeout_ms(wake_at)) {
            log::error!("the API server stops: {err}");
            return;
        }
        for (c, fd) in conns.iter_mut().zip(&fds[1..]) {
            serve_conn(c, fd.revents, &link, limits.max_payload);
        }
        let now = Instant::now();
        conns.retain(|c| {
            !(c.closing && c.outbuf.is_empty())
                && now.duration_since(c.active) < limits.idle_timeout
        });
        if fds[0].revents & libc::POLLIN != 0 {
            accept_paused_until = accept_all(&listener, &mut conns, limits.max_connections);
        }
    }
}

/// Reads, answers and writes what one connection is ready for.
fn serve_conn(c: &mut Conn, revents: libc::c_short, link: &VmmLink, max_payload: usize) {
    if !c.eof && revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
        read(c, max_payload);
    }
    answer(c, link, max_payload);
    if !c.outbuf.is_empty() {
        flush(c);
        // Requests held back while the client was not reading.
        answer(c, link, max_payload);
    }
}

/// Accepts every pending connection. At the connection limit, or when the process is out of
/// descriptors, the connection quiet the longest is closed to make room; with none to close,
/// returns when to look at the listener again.
fn accept_all(listener: &UnixListener, conns: &mut Vec<Conn>, max: usize) -> Option<Instant> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if conns.len() >= max {
                    close_quietest(conns);
                }
                if stream.set_nonblocking(true).is_ok() {
                    conns.push(Conn::new(stream));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            // The client left before it was accepted.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && close_quietest(conns) {
                    continue;
                }
                log::warn!("the API socket cannot accept a connection, retrying shortly: {e}");
                return Some(Instant::now() + ACCEPT_BACKOFF);
            }
        }
    }
}

/// Closes the connection that has been quiet the longest; false if there is none.
fn close_quietest(conns: &mut Vec<Conn>) -> bool {
    let Some(oldest) = conns
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| c.active)
        .map(|(i, _)| i)
    else {
        return false;
    };
    conns.swap_remove(oldest);
    true
}

/// Reads what the client sent, up to the request-size bound.
fn read(c: &mut Conn, max_payload: usize) {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                // The client sends no more; what it sent in full is still answered (see
                // `answer`), a request it left unfinished is dropped.
                c.eof = true;
                return;
            }
            Ok(n) => {
                c.inbuf.extend_from_slice(&chunk[..n]);
                c.active = Instant::now();
            }
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
            Ok(None) => {
                c.closing = c.eof;
                break;
            }
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
        Ok(Err(fault)) => Response::refused(&fault),
        Err(_) => gone(),
    }
}

fn flush(c: &mut Conn) {
    while !c.outbuf.is_empty() {
        match c.stream.write(&c.outbuf) {
            Ok(0) => break,
            Ok(n) => {
                c.outbuf.drain(..n);
                c.active = Instant::now();
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
        server_with(name, 100, MAX_CONNECTIONS, IDLE_TIMEOUT)
    }

    fn server_with(name: &str, max_payload: usize, conns: usize, idle: Duration) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("ember-api-{}-{name}.sock", std::process::id()));
        let (listener, file) = bind(&path).unwrap();
        // The socket stays for the test process's life.
        std::mem::forget(file);
        let limits = Limits {
            max_payload,
            max_connections: conns,
            idle_timeout: idle,
        };
        let (atx, arx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let link = VmmLink {
            actions: atx,
            notify: notify.try_clone().unwrap(),
            responses: rrx,
        };
        std::thread::spawn(move || serve(listener, link, limits));
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
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
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
        drop(bind(&stale).unwrap());
        let file = std::env::temp_dir().join(format!("ember-api-{}-file", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::NotASocket(_))));
    }

    #[test]
    fn a_request_followed_by_a_write_shutdown_is_executed_and_answered() {
        let path = server("shutdown");
        let mut c = client(&path);
        c.0.write_all(b"GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
            .unwrap();
        c.0.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(exchange(&mut c, "").ends_with("\"GetVersion\""));
        assert!(exchange(&mut c, "").ends_with("\"GetInstanceInfo\""));
        // Then the server closes its side.
        let mut rest = Vec::new();
        c.1.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    /// True once the server has closed `c` (reads see end-of-file).
    fn closed_by_server(c: &mut UnixStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        matches!(c.read(&mut byte), Ok(0))
    }

    #[test]
    fn connections_beyond_the_cap_displace_the_quietest_and_new_clients_are_answered() {
        let path = server_with("cap", 100, 4, IDLE_TIMEOUT);
        let mut idle: Vec<UnixStream> = (0..4)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // Let the server accept them in order, so the first is the quietest.
        let mut probe = client(&path);
        assert!(exchange(&mut probe, "GET / HTTP/1.1\r\n\r\n").contains("200 OK"));
        assert!(
            closed_by_server(&mut idle[0]),
            "the quietest connection stays open"
        );
        let mut c = client(&path);
        assert!(exchange(&mut c, "GET / HTTP/1.1\r\n\r\n").contains("200 OK"));
        assert!(closed_by_server(&mut idle[1]));
        // The connection that just spoke is not the one displaced.
        assert!(exchange(&mut c, "GET /version HTTP/1.1\r\n\r\n").contains("200 OK"));
    }

    #[test]
    fn idle_connections_are_closed_after_the_timeout() {
        let path = server_with("idle", 100, MAX_CONNECTIONS, Duration::from_millis(200));
        let mut quiet = UnixStream::connect(&path).unwrap();
        let mut busy = client(&path);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(600) {
            assert!(exchange(&mut busy, "GET / HTTP/1.1\r\n\r\n").contains("200 OK"));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(closed_by_server(&mut quiet));
        assert!(exchange(&mut busy, "GET / HTTP/1.1\r\n\r\n").contains("200 OK"));
    }

    /// Sets the process's umask for as long as it lives.
    struct Umask(libc::mode_t);
    impl Umask {
        fn set(mask: libc::mode_t) -> Self {
            // SAFETY: umask has no preconditions.
            Self(unsafe { libc::umask(mask) })
        }
    }
    impl Drop for Umask {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::umask(self.0) };
        }
    }

    #[test]
    fn the_socket_is_owner_only_from_the_moment_it_exists() {
        let path = std::env::temp_dir().join(format!("ember-api-{}-mode.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let umask = Umask::set(0);
        // The step that creates the file, with nothing after it to fix the mode up.
        let listener = listen_owner_only(&path).unwrap();
        drop(umask);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        drop(listener);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_socket_file_is_removed_when_its_guard_drops_unless_replaced() {
        let path =
            std::env::temp_dir().join(format!("ember-api-{}-guard.sock", std::process::id()));
        let (listener, file) = bind(&path).unwrap();
        drop(listener);
        drop(file);
        assert!(!path.exists());
        let (listener, file) = bind(&path).unwrap();
        drop(listener);
        // Someone else's socket now lives at the path: it is left alone.
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists());
        drop(other);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_path_too_long_for_a_socket_address_is_named() {
        let long = std::env::temp_dir().join("x".repeat(120));
        assert!(matches!(bind(&long), Err(ServerError::PathTooLong { .. })));
    }
}
