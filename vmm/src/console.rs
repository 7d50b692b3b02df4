//! The host side of the serial console: where guest output goes and where guest input comes
//! from.
//!
//! Output: the UART writes on a vCPU thread, byte by byte, and must never wait on a slow
//! terminal, pipe or disk. [`ConsoleOutput`] appends to a bounded in-memory buffer that a
//! `serial_out` thread drains to the sinks; if the sinks fall more than [`OUTPUT_BUFFER_LIMIT`]
//! behind, further bytes are dropped and counted. [`ConsoleDrain::finish`] writes out whatever is
//! buffered, so the log is complete when ember exits. A serial rate limiter (`PUT /serial`'s
//! `rate_limiter`, one bucket of bytes) drops and counts what exceeds it, as Firecracker does:
//! delaying the bytes would stall the guest's UART.
//!
//! The output is also watched for Linux's panic banner, so that a panic ends the VM even when
//! the guest kernel has no pvpanic driver: "Kernel panic - not syncing" marks the guest as
//! panicking (a reset that follows, from `panic=N`, is reported as the panic) and the final
//! "---[ end Kernel panic - not syncing" line, which a kernel without `panic=N` prints before it
//! halts for good, ends the VM with the panic status.
//!
//! Input: [`ConsoleInput`] is an event-loop subscriber that reads stdin only while the UART's
//! receive FIFO has room, and waits for the UART's "FIFO drained" event otherwise, so a guest
//! that never reads its console costs no host CPU. [`StdinKind`] decides what ember may do with
//! its stdin: an interactive terminal is put in raw mode ([`RawTerminal`], restored on every
//! exit path) and gets the escape keys of [`crate::escape`]; a terminal that another process
//! group owns (`ember ... &` in a shell with job control) is neither read nor changed, since
//! either would stop ember with SIGTTIN or SIGTTOU.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};

use devices::legacy::SerialDevice;
use devices::rate_limiter::{LimiterConfig, RateLimiter, TokenKind};
use devices::sync::{self, lock};
use devices::{ExitNotifier, GuestExit};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::escape::{self, EscapeKeys};
use crate::seccomp::{self, ThreadKind};

/// Guest output the sinks may fall behind by before bytes are dropped.
pub const OUTPUT_BUFFER_LIMIT: usize = 1 << 20;

#[derive(Default)]
struct OutputState {
    pending: VecDeque<u8>,
    dropped: DroppedOutput,
    closed: bool,
}

/// Guest console output that never reached the sinks, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedOutput {
    /// The sinks were too slow for it.
    pub slow: u64,
    /// It exceeded the serial rate limiter.
    pub rate_limited: u64,
}

#[derive(Default)]
struct OutputShared {
    state: Mutex<OutputState>,
    wake: Condvar,
}

/// The UART's writer: a bounded buffer in front of the real sinks. Never blocks on I/O.
pub struct ConsoleOutput {
    shared: Arc<OutputShared>,
    panic_watch: Option<PanicWatch>,
    /// Only when a limit is configured.
    limiter: Option<RateLimiter>,
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(watch) = &mut self.panic_watch {
            buf.iter().for_each(|b| watch.feed(*b));
        }
        let whole = buf.len();
        // Charged byte by byte (the UART writes one at a time anyway), so a write is never
        // larger than the bucket, which the limiter would grant; the limiter refuses every byte
        // until a byte's worth has refilled.
        let allowed = self.limiter.as_ref().map_or(whole, |limiter| {
            buf.iter()
                .take_while(|_| limiter.consume(1, TokenKind::Bytes))
                .count()
        });
        let buf = &buf[..allowed];
        let mut state = lock(&self.shared.state);
        if allowed < whole {
            if state.dropped.rate_limited == 0 {
                warn!("console output exceeds the serial rate limiter; dropping what exceeds it");
            }
            state.dropped.rate_limited += (whole - allowed) as u64;
        }
        // The drain thread only sleeps on an empty buffer: wake it on that transition alone,
        // not for every byte.
        let was_empty = state.pending.is_empty();
        let room = OUTPUT_BUFFER_LIMIT.saturating_sub(state.pending.len());
        let taken = room.min(buf.len());
        state.pending.extend(&buf[..taken]);
        if taken < buf.len() {
            if state.dropped.slow == 0 {
                warn!("console output is not being consumed; dropping guest output");
            }
            state.dropped.slow += (buf.len() - taken) as u64;
        }
        drop(state);
        if was_empty && taken > 0 {
            self.shared.wake.notify_one();
        }
        // The bytes are accounted for (written or counted as dropped): the guest's UART must not
        // see an error for a slow host or a limit.
        Ok(whole)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The thread that writes buffered guest output to the sinks.
pub struct ConsoleDrain {
    shared: Arc<OutputShared>,
    thread: JoinHandle<()>,
}

impl ConsoleDrain {
    /// Writes out everything buffered so far, stops the thread and says how much output was
    /// dropped.
    pub fn finish(self) -> DroppedOutput {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
        if self.thread.join().is_err() {
            warn!("the console output thread panicked");
        }
        lock(&self.shared.state).dropped
    }
}

/// Starts the output thread writing to `sinks` (each gets every byte) at most as fast as
/// `limit`'s bandwidth bucket allows. Panic banners are reported to `panics`, if given, whatever
/// the limit drops.
pub fn console_output(
    sinks: Vec<Box<dyn Write + Send>>,
    panics: Option<ExitNotifier>,
    limit: LimiterConfig,
) -> io::Result<(ConsoleOutput, ConsoleDrain)> {
    let limiter = limit
        .bandwidth
        .is_some()
        .then(|| RateLimiter::new(limit))
        .transpose()?;
    let shared = Arc::new(OutputShared::default());
    let thread_shared = shared.clone();
    let thread = thread::Builder::new()
        .name("ember_serial_out".into())
        .spawn(move || {
            seccomp::apply_or_exit(ThreadKind::SerialOut);
            drain_loop(&thread_shared, sinks);
        })?;
    let output = ConsoleOutput {
        shared: shared.clone(),
        panic_watch: panics.map(PanicWatch::new),
        limiter,
    };
    Ok((output, ConsoleDrain { shared, thread }))
}

fn drain_loop(shared: &OutputShared, mut sinks: Vec<Box<dyn Write + Send>>) {
    let mut chunk = Vec::new();
    loop {
        let closed = {
            let mut state = lock(&shared.state);
            while state.pending.is_empty() && !state.closed {
                state = sync::wait(&shared.wake, state);
            }
            chunk.clear();
            chunk.extend(state.pending.drain(..));
            state.closed
        };
        // A sink that fails (a closed pipe, a full disk) is dropped; the others keep going.
        sinks.retain_mut(
            |sink| match sink.write_all(&chunk).and_then(|()| sink.flush()) {
                Ok(()) => true,
                Err(err) => {
                    warn!("console output sink failed, no more output goes there: {err}");
                    false
                }
            },
        );
        if closed {
            return;
        }
    }
}

/// Default `--serial-out-max-bytes`: room for the longest CI console logs, a bound on what a
/// guest that prints without end can take of the host's disk.
pub const DEFAULT_SERIAL_FILE_LIMIT: u64 = 256 << 20;

/// A console output file with a size cap. The guest decides how much it prints, and the
/// in-memory buffer bounds only memory: at the cap the file keeps what it has, one warning says
/// so, and further bytes are counted and reported when the file is closed.
pub struct CappedFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    limit: u64,
    written: u64,
    dropped: u64,
}

impl CappedFile {
    /// Writes at most `limit` bytes to `file`, which was opened from `path`.
    pub fn new(file: std::fs::File, path: std::path::PathBuf, limit: u64) -> Self {
        Self {
            file,
            path,
            limit,
            written: 0,
            dropped: 0,
        }
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.written;
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        self.file.write_all(&buf[..take])?;
        self.written += take as u64;
        if take < buf.len() {
            if self.dropped == 0 {
                warn!(
                    "console file {} reached its limit of {} bytes (--serial-out-max-bytes); \
                     further guest output is not written to it",
                    self.path.display(),
                    self.limit
                );
            }
            self.dropped += (buf.len() - take) as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for CappedFile {
    fn drop(&mut self) {
        if self.dropped > 0 {
            warn!(
                "{} bytes of guest console output were not written to {}, which was full",
                self.dropped,
                self.path.display()
            );
        }
    }
}

/// Finds a fixed byte string in a stream, one byte at a time (Knuth-Morris-Pratt).
struct Matcher {
    pattern: &'static [u8],
    /// For each prefix length, the length of its longest proper prefix that is also a suffix.
    fallback: Vec<usize>,
    matched: usize,
}

impl Matcher {
    fn new(pattern: &'static [u8]) -> Self {
        let mut fallback = vec![0; pattern.len() + 1];
        let mut k = 0;
        for i in 1..pattern.len() {
            while k > 0 && pattern[i] != pattern[k] {
                k = fallback[k];
            }
            if pattern[i] == pattern[k] {
                k += 1;
            }
            fallback[i + 1] = k;
        }
        Self {
            pattern,
            fallback,
            matched: 0,
        }
    }

    /// True when `byte` completes the pattern.
    fn feed(&mut self, byte: u8) -> bool {
        while self.matched > 0 && self.pattern[self.matched] != byte {
            self.matched = self.fallback[self.matched];
        }
        if self.pattern[self.matched] == byte {
            self.matched += 1;
        }
        if self.matched == self.pattern.len() {
            self.matched = self.fallback[self.matched];
            return true;
        }
        false
    }
}

const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";
const PANIC_END_BANNER: &[u8] = b"---[ end Kernel panic - not syncing";

struct PanicWatch {
    exit: ExitNotifier,
    start: Matcher,
    end: Matcher,
}

impl PanicWatch {
    fn new(exit: ExitNotifier) -> Self {
        Self {
            exit,
            start: Matcher::new(PANIC_BANNER),
            end: Matcher::new(PANIC_END_BANNER),
        }
    }

    fn feed(&mut self, byte: u8) {
        if self.start.feed(byte) {
            self.exit.note_panicking();
        }
        if self.end.feed(byte) {
            self.exit.notify(GuestExit::Panic);
        }
    }
}

/// The UART as the VMM shares it between vCPU threads and the event loop.
pub type SharedSerial = Arc<Mutex<SerialDevice<ConsoleOutput>>>;

const TOKEN_STDIN: u32 = 0;
const TOKEN_FIFO_FREE: u32 = 1;

/// What ember's standard input is, which decides what the console does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinKind {
    /// A terminal in ember's foreground: raw mode and escape keys.
    Terminal,
    /// A terminal whose foreground process group is not ember's: left alone.
    Background,
    /// Anything else (a pipe, a file, /dev/null): read as it is.
    Stream,
}

impl StdinKind {
    /// Classifies `fd`. A terminal that is not ember's controlling terminal (so has no
    /// foreground process group ember could be missing from) is read like any other.
    pub fn of(fd: RawFd) -> Self {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(fd) } != 1 {
            return Self::Stream;
        }
        // SAFETY: tcgetpgrp and getpgrp only query the kernel; a failure returns -1.
        let (foreground, own) = unsafe { (libc::tcgetpgrp(fd), libc::getpgrp()) };
        if foreground >= 0 && foreground != own {
            debug!(
                "stdin is a terminal owned by process group {foreground}, not ember's ({own}): \
                 running in the background, so the console neither reads the terminal nor \
                 changes its mode"
            );
            return Self::Background;
        }
        Self::Terminal
    }
}

/// Escape keys and where a quit goes.
struct Escapes {
    keys: EscapeKeys,
    quit: EventFd,
}

/// Feeds host input (stdin) to the UART, with back-pressure from the receive FIFO.
pub struct ConsoleInput {
    serial: SharedSerial,
    input: RawFd,
    fifo_free: EventFd,
    escapes: Option<Escapes>,
    reading: bool,
    eof: bool,
}

impl ConsoleInput {
    /// Reads `input` (a file descriptor the caller keeps open) into `serial`; `fifo_free` is the
    /// UART's drained-FIFO event. With `quit`, the input is typed by a person: Ctrl-A keys
    /// are ember's ([`crate::escape`]), and Ctrl-A x signals `quit`.
    pub fn new(
        serial: SharedSerial,
        input: RawFd,
        fifo_free: EventFd,
        quit: Option<EventFd>,
    ) -> Self {
        Self {
            serial,
            input,
            fifo_free,
            escapes: quit.map(|quit| Escapes {
                keys: EscapeKeys::default(),
                quit,
            }),
            reading: false,
            eof: false,
        }
    }

    /// Hands typed bytes to the guest, or to the escape keys first.
    fn deliver(
        escapes: Option<&mut Escapes>,
        serial: &mut SerialDevice<ConsoleOutput>,
        bytes: &[u8],
    ) {
        let Some(escapes) = escapes else {
            serial.enqueue_input(bytes);
            return;
        };
        let mut guest = Vec::with_capacity(bytes.len());
        for command in escapes.keys.filter(bytes, &mut guest) {
            match command {
                escape::Command::Help => {
                    let _ = io::stderr().write_all(escape::HELP.as_bytes());
                }
                escape::Command::Quit => {
                    if let Err(err) = escapes.quit.write(1) {
                        warn!("cannot end the VM from the console: {err}");
                    }
                }
            }
        }
        serial.enqueue_input(&guest);
    }

    fn set_reading(&mut self, ops: &mut EventOps, on: bool) {
        if self.reading == on || (on && self.eof) {
            return;
        }
        let events = Events::with_data_raw(self.input, TOKEN_STDIN, EventSet::IN);
        let result = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.reading = on,
            Err(err) => {
                // A regular file or a closed descriptor cannot be polled: no console input then.
                debug!("console input not polled: {err}");
                self.eof = true;
            }
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut serial = lock(&self.serial);
        let room = serial.input_capacity();
        if room == 0 {
            drop(serial);
            self.set_reading(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        // SAFETY: reads at most `want` bytes into `buf`, which is at least that long and lives
        // across the call; `self.input` is a descriptor the owner keeps open.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), want) };
        match n {
            0 => {
                drop(serial);
                self.eof = true;
                let events = Events::with_data_raw(self.input, TOKEN_STDIN, EventSet::IN);
                let _ = ops.remove(events);
                self.reading = false;
            }
            n if n > 0 => {
                Self::deliver(self.escapes.as_mut(), &mut serial, &buf[..n as usize]);
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::WouldBlock
                    && err.kind() != io::ErrorKind::Interrupted
                {
                    drop(serial);
                    warn!("console input failed, no more input is read: {err}");
                    self.eof = true;
                    self.set_reading(ops, false);
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::with_data(
            &self.fifo_free,
            TOKEN_FIFO_FREE,
            EventSet::IN,
        )) {
            warn!("console input disabled: {err}");
            return;
        }
        self.set_reading(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_STDIN => {
                if events.event_set().intersects(EventSet::IN) {
                    self.read_input(ops);
                } else {
                    // Hang-up or error with nothing to read.
                    self.eof = true;
                    self.set_reading(ops, false);
                }
            }
            TOKEN_FIFO_FREE => {
                let _ = self.fifo_free.read();
                self.set_reading(ops, true);
            }
            _ => {}
        }
    }
}

static SAVED_TERMIOS: OnceLock<(RawFd, libc::termios)> = OnceLock::new();

/// An interactive terminal in raw mode for as long as this guard lives (and restored by the
/// panic hook too), so keys such as Ctrl-C reach the guest instead of the host's shell. Only
/// for a [`StdinKind::Terminal`]: changing a background job's terminal would stop it.
pub struct RawTerminal {
    fd: RawFd,
}

impl RawTerminal {
    /// Puts `fd` in raw mode if it is a terminal; `None` otherwise.
    pub fn enable(fd: &impl AsRawFd) -> io::Result<Option<Self>> {
        let fd = fd.as_raw_fd();
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain data; all-zero is a valid value that tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write to; `fd` is an open terminal.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so host-side messages still start on a new line.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: `raw` is a fully initialised termios for the open terminal `fd`.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = SAVED_TERMIOS.set((fd, saved));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Ok(Some(Self { fd }))
    }
}

fn restore_terminal() {
    if let Some((fd, saved)) = SAVED_TERMIOS.get() {
        // SAFETY: restores settings read from this same terminal by `RawTerminal::enable`.
        unsafe { libc::tcsetattr(*fd, libc::TCSANOW, saved) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        debug!("restoring terminal {}", self.fd);
        restore_terminal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that blocks until released, like a terminal nobody reads.
    struct Stuck(Arc<AtomicBool>);
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            while !self.0.load(Ordering::Acquire) {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_sink_gets_everything_before_finish_returns() {
        let (a, b) = (Shared::default(), Shared::default());
        let (mut out, drain) = console_output(
            vec![Box::new(a.clone()), Box::new(b.clone())],
            None,
            LimiterConfig::default(),
        )
        .unwrap();
        let text: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for byte in &text {
            out.write_all(&[*byte]).unwrap();
        }
        assert_eq!(drain.finish(), DroppedOutput::default());
        assert_eq!(*a.0.lock().unwrap(), text);
        assert_eq!(*b.0.lock().unwrap(), text);
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_writer_and_drops_are_counted() {
        let release = Arc::new(AtomicBool::new(false));
        let (mut out, drain) = console_output(
            vec![Box::new(Stuck(release.clone()))],
            None,
            LimiterConfig::default(),
        )
        .unwrap();
        let chunk = vec![b'x'; 4096];
        let total = 3 * OUTPUT_BUFFER_LIMIT;
        for _ in 0..total / chunk.len() {
            assert_eq!(out.write(&chunk).unwrap(), chunk.len());
        }
        release.store(true, Ordering::Release);
        let dropped = drain.finish().slow;
        // The drain thread holds at most one chunk outside the buffer, so at least
        // total - 2 * limit bytes had nowhere to go.
        assert!(
            dropped >= (total - 2 * OUTPUT_BUFFER_LIMIT) as u64,
            "{dropped}"
        );
        assert!(dropped < total as u64);
    }

    /// `size` bytes, refilled at 10 bytes a second: nearly nothing over a test.
    fn slow_limit(size: u64) -> LimiterConfig {
        LimiterConfig {
            bandwidth: Some(devices::rate_limiter::BucketConfig {
                size,
                one_time_burst: 0,
                refill_time_ms: size * 100,
            }),
            ops: None,
        }
    }

    #[test]
    fn a_rate_limited_console_writes_at_most_its_limit_and_counts_what_it_drops() {
        let sink = Shared::default();
        let started = std::time::Instant::now();
        let (mut out, drain) =
            console_output(vec![Box::new(sink.clone())], None, slow_limit(100)).unwrap();
        for _ in 0..1000 {
            // The guest's UART never sees the limit.
            assert_eq!(out.write(b"x").unwrap(), 1);
        }
        let dropped = drain.finish();
        let refilled = started.elapsed().as_secs() * 10 + 10;
        let written = sink.0.lock().unwrap().len() as u64;
        assert!(
            (100..=100 + refilled).contains(&written),
            "{written} bytes written"
        );
        assert_eq!(
            dropped,
            DroppedOutput {
                slow: 0,
                rate_limited: 1000 - written
            }
        );
    }

    #[test]
    fn a_panic_is_recognised_in_output_the_rate_limiter_drops() {
        let exit = ExitNotifier::new().unwrap();
        let (mut out, drain) = console_output(
            vec![Box::new(io::sink())],
            Some(exit.clone()),
            slow_limit(4),
        )
        .unwrap();
        out.write_all(b"Kernel panic - not syncing: x\n---[ end Kernel panic - not syncing: x")
            .unwrap();
        assert!(drain.finish().rate_limited > 0);
        assert_eq!(exit.requested(), Some(GuestExit::Panic));
    }

    #[test]
    fn a_failing_sink_does_not_stop_the_others() {
        let good = Shared::default();
        let (mut out, drain) = console_output(
            vec![Box::new(Broken), Box::new(good.clone())],
            None,
            LimiterConfig::default(),
        )
        .unwrap();
        out.write_all(b"one").unwrap();
        out.write_all(b"two").unwrap();
        drain.finish();
        assert_eq!(*good.0.lock().unwrap(), b"onetwo");
    }

    #[test]
    fn a_console_file_stops_at_its_limit_and_counts_the_rest() {
        let path = std::env::temp_dir().join(format!("ember-capped-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut capped = CappedFile::new(file, path.clone(), 10);
        assert_eq!(capped.write(b"0123456").unwrap(), 7);
        assert_eq!(capped.write(b"789abc").unwrap(), 6);
        assert_eq!(capped.write(b"def").unwrap(), 3);
        assert_eq!(capped.dropped, 6);
        drop(capped);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn matcher_finds_overlapping_and_split_occurrences() {
        let mut m = Matcher::new(b"abab");
        let hits: Vec<usize> = b"xabababab"
            .iter()
            .enumerate()
            .filter_map(|(i, b)| m.feed(*b).then_some(i))
            .collect();
        assert_eq!(hits, vec![4, 6, 8]);
        let mut m = Matcher::new(b"aab");
        assert!(!b"aaa".iter().any(|b| m.feed(*b)));
        assert!(m.feed(b'b'));
    }

    fn watched(output: &[&[u8]]) -> Option<GuestExit> {
        let exit = ExitNotifier::new().unwrap();
        let (mut out, drain) = console_output(
            vec![Box::new(io::sink())],
            Some(exit.clone()),
            LimiterConfig::default(),
        )
        .unwrap();
        for chunk in output {
            out.write_all(chunk).unwrap();
        }
        exit.notify(GuestExit::Reset);
        drain.finish();
        exit.requested()
    }

    #[test]
    fn panic_banners_are_recognised_byte_by_byte() {
        assert_eq!(watched(&[b"all fine\n"]), Some(GuestExit::Reset));
        assert_eq!(
            watched(&[b"[ 1.0] Kernel pa", b"nic - not syncing: VFS\n"]),
            Some(GuestExit::Panic),
            "a reset after the banner is the panic reboot"
        );
        assert_eq!(
            watched(&[
                b"Kernel panic - not syncing: x\n---[ end Kernel panic - not syncing: x ]---"
            ]),
            Some(GuestExit::Panic)
        );
        assert_eq!(
            watched(&[b"Kernel panic - not syncin"]),
            Some(GuestExit::Reset)
        );
    }
}
