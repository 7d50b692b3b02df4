//! Helpers shared by the integration tests: finding KVM, building the tiny test guests, finding
//! or building the Linux guest artifacts, and running ember with a deadline so that no test can
//! hang.
#![allow(dead_code)] // each test binary uses a different subset

pub mod api;
mod artifacts;
pub mod oci;
pub mod openapi;
mod threads;

// Each test binary uses a different subset, as of everything here.
#[allow(unused_imports)]
pub use artifacts::*;
#[allow(unused_imports)]
pub use threads::*;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub const EXIT_OK: i32 = 0;
pub const EXIT_CONFIG: i32 = 64;
pub const EXIT_PANIC: i32 = 123;
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_CRASH: i32 = 125;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The ember binary under test.
pub fn ember() -> Command {
    Command::new(ember_path())
}

/// Where the ember binary under test is: cargo's path in ember's own tests; in another
/// package's (the jailer's, which cargo gives no path to ember) the binary in the same target
/// directory, which `cargo build` or a workspace `cargo test` builds.
pub fn ember_path() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_ember") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    let path = exe.parent().and_then(Path::parent).unwrap().join("ember");
    assert!(
        path.is_file(),
        "{} is missing: build ember first (cargo build -p ember)",
        path.display()
    );
    path
}

/// True if KVM can be used. Without it the test fails with an explanation, unless
/// EMBER_SKIP_KVM_TESTS=1 asks to skip KVM tests (the caller then returns early, and says so).
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(err) => {
            if std::env::var("EMBER_SKIP_KVM_TESTS").as_deref() == Ok("1") {
                eprintln!("SKIPPED (EMBER_SKIP_KVM_TESTS=1): /dev/kvm is not usable: {err}");
                false
            } else {
                panic!(
                    "this test needs /dev/kvm, which cannot be opened ({err}); run on a host with \
                     KVM, or set EMBER_SKIP_KVM_TESTS=1 to skip the tests that need it"
                );
            }
        }
    }
}

/// A turn to boot Linux, held for the length of a test (see [`linux_slot`]).
pub struct LinuxSlot;

impl Drop for LinuxSlot {
    fn drop(&mut self) {
        let (count, freed) = linux_slots();
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

fn linux_slots() -> &'static (Mutex<usize>, std::sync::Condvar) {
    static SLOTS: OnceLock<(Mutex<usize>, std::sync::Condvar)> = OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

/// Waits for a turn to boot Linux; `None` when KVM tests are skipped (as [`kvm_available`]).
///
/// When the guest kernel is emulated, a Linux boot keeps a host CPU busy from start to end, so
/// with more boots than CPUs each one slows down in proportion, and on a host that is also
/// busy with something else (a compile) past its timeouts. Boots beyond the host's CPU count
/// (or `EMBER_TEST_LINUX_PARALLEL`) wait their turn; the suite is no slower for it, since the
/// CPUs were the limit anyway. Test binaries run one after another, so a per-process count
/// covers the suite.
pub fn linux_slot() -> Option<LinuxSlot> {
    if !kvm_available() {
        return None;
    }
    let limit = std::env::var("EMBER_TEST_LINUX_PARALLEL")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let (count, freed) = linux_slots();
    let mut running = count.lock().unwrap_or_else(|e| e.into_inner());
    while *running >= limit {
        running = freed.wait(running).unwrap_or_else(|e| e.into_inner());
    }
    *running += 1;
    Some(LinuxSlot)
}

/// Runs `cmd` to completion, killing it (and failing the test) if it takes longer than `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ember");
    wait_with_deadline(child, limit)
}

/// Waits for `child`, collecting its output; kills it and fails the test after `limit`.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let stdout = Reader::spawn(child.stdout.take().unwrap());
    let stderr = Reader::spawn(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let until = Instant::now() + OUTPUT_GRACE;
            let out = text(&stdout.rest(until).unwrap_or_else(|e| e));
            let err = text(&stderr.rest(until).unwrap_or_else(|e| e));
            panic!("ember did not exit within {limit:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let (stdout, stderr) = rest_of_output(status, &stdout, &stderr);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// How long a child's stdout and stderr may stay open after it exited. Only a process the
/// child started and left behind holds them longer.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// A child's output pipe, read as it arrives on a thread of its own.
pub struct Reader(mpsc::Receiver<Vec<u8>>);

impl Reader {
    pub fn spawn(mut from: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if tx.send(buf[..n].to_vec()).is_err() => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Self(rx)
    }

    /// What has arrived so far, without waiting.
    fn now(&self) -> Vec<u8> {
        self.0.try_iter().flatten().collect()
    }

    /// Everything up to the pipe's end, or (as the error) what arrived by `until` if the pipe
    /// is still open then.
    fn rest(&self, until: Instant) -> Result<Vec<u8>, Vec<u8>> {
        let mut all = Vec::new();
        loop {
            match self
                .0
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(bytes) => all.extend(bytes),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(all),
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(all),
            }
        }
    }
}

/// The rest of the stdout and stderr of a child that exited with `status`. Fails the test if
/// either is still open [`OUTPUT_GRACE`] later: a process the child started outlived it (and
/// without this, the test would wait for it for ever).
fn rest_of_output(status: ExitStatus, stdout: &Reader, stderr: &Reader) -> (Vec<u8>, Vec<u8>) {
    let until = Instant::now() + OUTPUT_GRACE;
    match (stdout.rest(until), stderr.rest(until)) {
        (Ok(out), Ok(err)) => (out, err),
        (out, err) => panic!(
            "ember exited ({status}) but its stdout or stderr was still open {OUTPUT_GRACE:?} \
             later: a process it started outlived it\nstdout:\n{}\nstderr:\n{}",
            text(&out.unwrap_or_else(|e| e)),
            text(&err.unwrap_or_else(|e| e))
        ),
    }
}

/// The exit code, failing on death by signal.
pub fn code(status: &ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("ember was killed by a signal: {status:?}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs ember, feeding each console line to `stop_when` as it arrives; when that returns true
/// ember gets SIGTERM. Returns the console text, the exit status and stderr. Fails after
/// `limit`.
pub fn run_until(
    cmd: &mut Command,
    limit: Duration,
    stop_when: impl Fn(&str) -> bool,
) -> (String, ExitStatus, String) {
    run_until_signal(cmd, limit, stop_when, libc::SIGTERM)
}

/// As [`run_until`], sending `signal` instead.
pub fn run_until_signal(
    cmd: &mut Command,
    limit: Duration,
    stop_when: impl Fn(&str) -> bool,
    signal: libc::c_int,
) -> (String, ExitStatus, String) {
    let mut signalled = false;
    run_watching(cmd, limit, |line, pid| {
        if !signalled && stop_when(line) {
            // SAFETY: `pid` is our own child, not yet reaped.
            unsafe { libc::kill(pid, signal) };
            signalled = true;
        }
    })
}

/// Runs ember, handing each console line (and ember's pid) to `on_line` as it arrives, so a
/// test can act on the guest's progress. Returns the console text, the exit status and
/// stderr. Fails after `limit`.
pub fn run_watching(
    cmd: &mut Command,
    limit: Duration,
    mut on_line: impl FnMut(&str, libc::pid_t),
) -> (String, ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ember");
    let stdout = Reader::spawn(child.stdout.take().unwrap());
    let stderr = Reader::spawn(child.stderr.take().unwrap());
    let pid = child.id() as libc::pid_t;
    let mut console = Lines::default();
    let start = Instant::now();
    let status = loop {
        for line in console.add(&stdout.now()) {
            on_line(&line, pid);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let until = Instant::now() + OUTPUT_GRACE;
            console.add(&stdout.rest(until).unwrap_or_else(|e| e));
            panic!(
                "ember did not finish within {limit:?}\nconsole:\n{}\nstderr:\n{}",
                console.finish(),
                text(&stderr.rest(until).unwrap_or_else(|e| e))
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    // What came after the exit is only kept: `pid` is reaped and may be another process's.
    let (rest, stderr) = rest_of_output(status, &stdout, &stderr);
    console.add(&rest);
    (console.finish(), status, text(&stderr))
}

/// A console's text, cut into lines as its bytes arrive.
#[derive(Default)]
struct Lines {
    log: String,
    partial: Vec<u8>,
}

impl Lines {
    /// Takes `bytes`; returns the lines they complete.
    fn add(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let done: Vec<u8> = self.partial.drain(..=end).collect();
        let lines: Vec<String> = done[..end].split(|&b| b == b'\n').map(text).collect();
        for line in &lines {
            self.log.push_str(line);
            self.log.push('\n');
        }
        lines
    }

    /// The whole text, a last line without a newline ending in one.
    fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            self.log.push_str(&text(&self.partial));
            self.log.push('\n');
        }
        self.log
    }
}

/// True if the network tests can run (they need root for namespaces and TAPs). Otherwise the
/// test fails with an explanation, unless EMBER_SKIP_NET_TESTS=1 asks to skip them.
pub fn net_available() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("EMBER_SKIP_NET_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (EMBER_SKIP_NET_TESTS=1): network tests need root");
        return false;
    }
    panic!(
        "this test creates a network namespace and TAP devices, which needs root; run the \
         suite as root, or set EMBER_SKIP_NET_TESTS=1 to skip the network tests"
    );
}

/// A network namespace of the test's own with TAP devices in it, deleted with its TAPs when
/// dropped, also when the test fails.
pub struct NetNs {
    /// The namespace's name.
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run ip (install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

impl NetNs {
    /// Creates namespace `ember-TAG-PID` with one TAP per (name, address/prefix), up.
    pub fn new(tag: &str, taps: &[(&str, &str)]) -> Self {
        let name = format!("ember-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for (tap, addr) in taps {
            ip(&["-n", &ns.name, "tuntap", "add", tap, "mode", "tap"]);
            ip(&["-n", &ns.name, "addr", "add", addr, "dev", tap]);
            ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        }
        ns
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace file we just opened; it changes only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// An ember serving the API at a fresh socket, killed when dropped.
pub struct Ember {
    /// The process, until it is waited for.
    pub child: Option<Child>,
    /// Its API socket.
    pub sock: PathBuf,
    /// The test's own directory.
    pub dir: PathBuf,
}

impl Ember {
    /// Starts ember with `--api-sock` and `extra` in a fresh directory named after `name`.
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with(name, ember(), extra)
    }

    /// Starts `ember`, a command that runs the ember binary (in a network namespace, say).
    pub fn start_with(name: &str, mut ember: Command, extra: &[&str]) -> Self {
        let dir = tempdir(name);
        let sock = dir.join("api.sock");
        let child = ember
            .arg("--api-sock")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            sock,
            dir,
        }
    }

    /// A new connection to the API.
    pub fn client(&self) -> ApiClient {
        ApiClient::connect(&self.sock)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Polls `GET /` every 10 ms until the state is Running, as Kata's driver does.
    pub fn wait_running(&self, c: &mut ApiClient) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = c.request("GET", "/", None);
            assert_eq!(status, 200, "{body}");
            if body.contains(r#""state":"Running""#) {
                return;
            }
            assert!(Instant::now() < deadline, "never Running: {body}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to a minute for ember to exit; returns (status, console, stderr).
    pub fn finish(mut self) -> (i32, String, String) {
        let child = self.child.take().unwrap();
        let out = wait_with_deadline(child, Duration::from_secs(60));
        (code(&out.status), text(&out.stdout), text(&out.stderr))
    }

    /// Stops the VM with SIGTERM, as orchestrators do; returns ember's exit status.
    pub fn terminate(self) -> i32 {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        self.finish().0
    }
}

impl Drop for Ember {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A keep-alive client of ember's API socket.
pub struct ApiClient {
    writer: std::os::unix::net::UnixStream,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl ApiClient {
    /// Connects, waiting up to 10 s for the socket to appear.
    pub fn connect(sock: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    panic!("no API socket at {}: {e}", sock.display())
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self {
            writer: stream,
            reader,
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, raw: &[u8]) {
        use std::io::Write;
        self.writer.write_all(raw).unwrap();
    }

    /// Reads one response: (status, body).
    pub fn response(&mut self) -> (u16, String) {
        let mut status = 0;
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    /// One request and its response, both checked against the OpenAPI document.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let raw = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
        };
        self.send_raw(raw.as_bytes());
        let (status, answer) = self.response();
        if let Err(broken) = openapi::spec().check(method, path, body, status, &answer) {
            panic!(
                "{method} {path} {} -> {status} {answer}: breaks api_server/openapi.json: {broken}",
                body.unwrap_or("")
            );
        }
        (status, answer)
    }
}

/// Fails, showing the log, unless `needle` is in it.
pub fn assert_contains(log: &str, needle: &str) {
    assert!(
        log.contains(needle),
        "'{needle}' is not in the console log:\n{log}"
    );
}

/// Asserts that `line` is a whole line of the console log (the console's lines end in "\r").
/// Verdicts a guest script prints must be checked this way: the init echoes the script
/// itself, so a substring check would find the verdict in the echoed command.
pub fn assert_line(log: &str, line: &str) {
    assert!(
        log.lines().any(|l| l.trim_end() == line),
        "{line:?} is not a line of the console log:\n{log}"
    );
}

/// The qemu-storage-daemon binary (Debian's qemu-utils from 8.0 on, qemu-system-common
/// before; resources/setup-host.sh installs it).
pub fn qemu_storage_daemon() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("qemu-storage-daemon"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("qemu-storage-daemon is not installed: run resources/setup-host.sh")
        })
}

/// A qemu-storage-daemon serving each `(image, socket)` as a vhost-user-blk export; killed
/// when dropped (also when the test fails).
pub struct StorageDaemon(Child);

impl StorageDaemon {
    /// Starts it and waits for every socket.
    pub fn start(exports: &[(&Path, &Path)]) -> Self {
        let mut cmd = Command::new(qemu_storage_daemon());
        for (i, (image, socket)) in exports.iter().enumerate() {
            let _ = std::fs::remove_file(socket);
            cmd.arg("--blockdev").arg(format!(
                "driver=file,node-name=n{i},filename={}",
                image.display()
            ));
            cmd.arg("--export").arg(format!(
                "type=vhost-user-blk,id=e{i},node-name=n{i},addr.type=unix,addr.path={},\
                 writable=on",
                socket.display()
            ));
        }
        let daemon = Self(cmd.stdin(Stdio::null()).spawn().unwrap());
        let start = Instant::now();
        while !exports.iter().all(|(_, s)| s.exists()) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no qemu-storage-daemon socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory for one test's files.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A shell command on a pseudo-terminal of its own (script(1) from util-linux), as a person at
/// a terminal runs it: the test types keys into it and watches what the terminal shows.
pub struct Terminal {
    child: Child,
    keys: std::process::ChildStdin,
    screen: Reader,
    /// Everything the terminal has shown so far.
    pub shown: String,
}

impl Terminal {
    /// Starts `command` under `script -qec`, so its exit status is script's.
    pub fn start(command: &str) -> Self {
        let mut child = Command::new("script")
            .args(["-qec", command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot run script (apt-get install util-linux)");
        let keys = child.stdin.take().unwrap();
        let screen = Reader::spawn(child.stdout.take().unwrap());
        Self {
            child,
            keys,
            screen,
            shown: String::new(),
        }
    }

    /// Types `keys` at the terminal.
    pub fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits until the terminal has shown `needle` since `from` (a length of `shown`); fails
    /// with the transcript after `limit`.
    pub fn wait_for(&mut self, needle: &str, from: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.shown[from.min(self.shown.len())..].contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.screen.0.recv_timeout(left) {
                Ok(bytes) => self.shown.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!(
                    "the terminal did not show {needle:?} within {limit:?}; it shows:\n{}",
                    self.shown
                ),
            }
        }
    }

    /// Waits for the command to end (killing it after `limit`) and returns its exit code.
    pub fn finish(mut self, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the terminal session did not end; it shows:\n{}",
                    self.shown
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let rest = self.screen.rest(Instant::now() + Duration::from_secs(1));
        self.shown.push_str(&text(&rest.unwrap_or_else(|e| e)));
        (code(&status), std::mem::take(&mut self.shown))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed test leaves nothing running: the pty's hang-up stops what ran on it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
