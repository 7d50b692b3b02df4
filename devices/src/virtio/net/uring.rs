//! A run of transmitted frames written to the TAP with one syscall: a `writev` per frame,
//! submitted together to an io_uring, which runs them in order in the submitting thread.
//! They are not linked (linked requests cost the kernel a sixth more per frame here): each
//! frame has its own outcome, and `tx.rs` decides what a failure in the middle means.
//!
//! Why: a NIC whose every frame is a `writev` pays the kernel's syscall entry per frame, and
//! under a seccomp filter that entry takes the kernel's slower path (30-40 ns more on the
//! development VM, whatever the filter says: 4-7% of a transmit path that moves 1.3 million
//! frames per second). A run costs one `io_uring_enter` instead. The TAP is non-blocking, so
//! io_uring runs each write in the submitting thread (never in a kernel worker) and a full TAP
//! completes with EAGAIN, as `writev` would return. The ring is made when the TAP is opened,
//! before the device's thread installs its filter; where io_uring is unavailable (an old
//! kernel, the `kernel.io_uring_disabled` sysctl) or refuses a non-blocking write to the TAP
//! (`RWF_NOWAIT`, EOPNOTSUPP), frames go one `writev` each.
//!
//! This module owns the ring and the run's bookkeeping; what a frame is and what happens to
//! the frames after a failure is the transmit queue's (`tx.rs`).

use std::io;
use std::os::fd::RawFd;

use io_uring::register::Restriction;
use io_uring::{IoUring, opcode, types};

/// The longest run one submission carries.
pub const RUN: usize = 64;

/// What became of one frame of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written whole.
    Sent,
    /// The backend is full (EAGAIN).
    Full,
    /// The backend refused it (an errno), or took only part of it (the bytes it took).
    Refused(i32),
    Short(usize),
    /// Not tried: an earlier frame failed.
    NotTried,
}

impl Outcome {
    fn of(result: io::Result<usize>, length: usize) -> Self {
        match result {
            Ok(n) if n == length => Outcome::Sent,
            Ok(n) => Outcome::Short(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Outcome::Full,
            Err(err) => Outcome::Refused(err.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

/// Writes each of `frames` with `send` (one `writev` each), in order, until one fails (the
/// rest are not tried), into `outcomes`; a write interrupted by a signal is retried.
pub fn send_each(
    frames: &[&[libc::iovec]],
    outcomes: &mut [Outcome],
    mut send: impl FnMut(&[libc::iovec]) -> io::Result<usize>,
) {
    let mut failed = false;
    for (frame, outcome) in frames.iter().zip(outcomes) {
        if failed {
            *outcome = Outcome::NotTried;
            continue;
        }
        let result = loop {
            match send(frame) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                result => break result,
            }
        };
        *outcome = Outcome::of(result, length(frame));
        failed = *outcome != Outcome::Sent;
    }
}

/// The bytes `frame`'s iovecs describe.
pub fn length(frame: &[libc::iovec]) -> usize {
    frame.iter().map(|iov| iov.iov_len).sum()
}

/// The ring of one TAP's transmit runs.
pub struct TxRing {
    ring: IoUring,
}

impl TxRing {
    /// A ring for runs of up to [`RUN`] frames, if the kernel lets ember make one. The ring
    /// takes `writev` requests without flags and nothing else (registered restrictions,
    /// Linux 5.10): the NIC thread's seccomp filter allows `io_uring_enter`, and the ring
    /// must not become a way around it (opening files, sockets) for code on that thread.
    pub fn new() -> Option<Self> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(RUN as u32)
            .ok()?;
        let mut only_writev = [
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_flags_allowed(0),
        ];
        let submitter = ring.submitter();
        submitter.register_restrictions(&mut only_writev).ok()?;
        submitter.register_enable_rings().ok()?;
        Some(TxRing { ring })
    }

    /// Writes `frames` (at most [`RUN`]) to `fd` in order with one submission, each frame's
    /// outcome into `outcomes`. An `Err` is the ring's own failure: before the submission
    /// every outcome is `NotTried`; after it, a completion was missing (its frame `NotTried`)
    /// and the ring must not be used again.
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped for the call, and `fd` must
    /// be open.
    pub unsafe fn write(
        &mut self,
        fd: RawFd,
        frames: &[&[libc::iovec]],
        outcomes: &mut [Outcome],
    ) -> io::Result<()> {
        if frames.len() > RUN.min(outcomes.len()) {
            return Err(io::Error::other("a transmit run longer than the ring"));
        }
        outcomes.fill(Outcome::NotTried);
        {
            let mut queue = self.ring.submission();
            for (i, frame) in frames.iter().enumerate() {
                let count = u32::try_from(frame.len()).map_err(io::Error::other)?;
                // RWF_NOWAIT: a full TAP completes with EAGAIN rather than io_uring waiting
                // for it to drain, so the device thread never blocks here.
                let entry = opcode::Writev::new(types::Fd(fd), frame.as_ptr(), count)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points at the caller's iovecs and guest memory, which
                // stay valid until this call returns, after every entry has completed (the
                // wait below).
                unsafe { queue.push(&entry) }
                    .map_err(|_| io::Error::other("the io_uring submission queue is full"))?;
            }
        }
        loop {
            match self.ring.submit_and_wait(frames.len()) {
                Ok(_) => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let mut results = [None; RUN];
        for entry in self.ring.completion() {
            if let Some(slot) = results.get_mut(entry.user_data() as usize) {
                *slot = Some(entry.result());
            }
        }
        let mut missing = false;
        for ((result, frame), outcome) in results.iter().zip(frames).zip(outcomes) {
            // The outcomes known are kept whatever happened to the others: a frame written
            // must not be written again.
            *outcome = match *result {
                Some(n) => {
                    let result = usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(-n));
                    Outcome::of(result, length(frame))
                }
                None => {
                    missing = true;
                    Outcome::NotTried
                }
            };
        }
        match missing {
            // Never seen: with RWF_NOWAIT every write completes in the submitting call.
            true => Err(io::Error::other("a transmit completion is missing")),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    fn iovec(bytes: &[u8]) -> libc::iovec {
        libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        }
    }

    #[test]
    fn a_run_is_written_in_order_and_a_full_socket_fails_its_frames_without_waiting() {
        let Some(mut ring) = TxRing::new() else {
            panic!("io_uring is unavailable on this host: the transmit ring cannot be tested");
        };
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let iovecs: Vec<[libc::iovec; 2]> = payloads
            .iter()
            .map(|p| [iovec(&p[..10]), iovec(&p[10..])])
            .collect();
        let frames: Vec<&[libc::iovec]> = iovecs.iter().map(|f| &f[..]).collect();
        let mut outcomes = [Outcome::NotTried; RUN];
        // SAFETY: the iovecs point at `payloads`, alive for the call; the socket is open.
        unsafe { ring.write(a.as_raw_fd(), &frames, &mut outcomes) }.unwrap();
        assert_eq!(outcomes[..5], [Outcome::Sent; 5]);
        let mut buf = [0u8; 256];
        for p in &payloads {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..]);
        }
        // Fill the socket: the frames it does not take complete with EAGAIN at once.
        let big = vec![7u8; 60_000];
        let big_iovec = [iovec(&big)];
        let run = vec![&big_iovec[..]; RUN];
        // SAFETY: as above.
        unsafe { ring.write(a.as_raw_fd(), &run, &mut outcomes) }.unwrap();
        let sent = outcomes.iter().filter(|o| **o == Outcome::Sent).count();
        assert!(sent < RUN, "a datagram socket took {sent} 60 kB frames");
        assert_eq!(outcomes[..sent], vec![Outcome::Sent; sent][..]);
        assert!(
            outcomes[sent..].iter().all(|o| *o == Outcome::Full),
            "{outcomes:?}"
        );
        let mut received = 0;
        let mut buf = vec![0u8; 65536];
        b.set_nonblocking(true).unwrap();
        while b.recv(&mut buf).is_ok_and(|n| n == big.len()) {
            received += 1;
        }
        assert_eq!(received, sent);
    }

    #[test]
    fn frames_one_write_each_stop_at_the_first_failure_and_retry_an_interrupted_one() {
        let payload = [1u8; 10];
        let frame = [iovec(&payload)];
        let frames = vec![&frame[..]; 5];
        let mut calls = 0;
        let mut outcomes = [Outcome::Sent; 5];
        send_each(&frames, &mut outcomes, |f| {
            calls += 1;
            match calls {
                2 => Err(io::ErrorKind::Interrupted.into()),
                4 => Ok(length(f) - 1),
                _ => Ok(length(f)),
            }
        });
        use Outcome::*;
        assert_eq!(outcomes, [Sent, Sent, Short(9), NotTried, NotTried]);
        assert_eq!(calls, 4);
    }
}
