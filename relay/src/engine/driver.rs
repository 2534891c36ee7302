//! The I/O drivers under a shard's [`ShardCore`]: what they must do, which one runs, and the
//! waker the control plane uses to get a shard's attention.
//!
//! Two drivers implement [`Driver`]:
//! - [`super::uring`]: io_uring with one multishot `recvmsg` per socket over a shared provided
//!   buffer ring, sends queued as SQEs and submitted with the next wait, so a loop turn is one
//!   `io_uring_enter` whatever the number of sockets and datagrams.
//! - [`super::epoll`]: epoll (mio) + `recvmmsg`/`sendmmsg`, for kernels or sandboxes that refuse
//!   io_uring (`kernel.io_uring_disabled`, the default seccomp profiles of container runtimes).
//!
//! [`IoDriverChoice::Auto`] tries io_uring and falls back to epoll, saying so in the log, in
//! `/metrics` (`relay_io_driver_info`) and in `relayctl load`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::core::{IoCounters, ShardCore, ShardIo};

/// Which I/O driver the shards use (`--io-driver`, `RELAY_IO_DRIVER`, `engine.io_driver`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriverChoice {
    /// io_uring where the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring or fail to start.
    IoUring,
    /// epoll + recvmmsg/sendmmsg.
    Epoll,
}

impl FromStr for IoDriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoDriverChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(IoDriverChoice::IoUring),
            "epoll" => Ok(IoDriverChoice::Epoll),
            other => Err(format!(
                "unknown I/O driver {other:?} (expected auto, io_uring or epoll)"
            )),
        }
    }
}

impl std::fmt::Display for IoDriverChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoDriverChoice::Auto => "auto",
            IoDriverChoice::IoUring => "io_uring",
            IoDriverChoice::Epoll => "epoll",
        })
    }
}

/// What a shard's loop needs from its I/O. One turn:
/// `wait` → `deliver` (completions into the core) → commands and timers (sends queued through
/// [`Driver::io`]) → `flush`.
pub(crate) trait Driver {
    type Io: ShardIo;

    /// "io_uring" or "epoll".
    fn name(&self) -> &'static str;

    /// Hand the kernel what is queued and wait until a completion is ready, the waker fires, or
    /// `deadline` passes.
    fn wait(&mut self, deadline: Instant) -> io::Result<()>;

    /// Hand every datagram received so far to `core` (the sends it causes are queued).
    fn deliver(&mut self, now: Instant, core: &mut ShardCore);

    /// Before timers run: hand `core` what arrived since [`Self::deliver`] without waiting
    /// (io_uring: completions the kernel holds as deferred work until asked). Default: nothing
    /// (epoll's `deliver` read the sockets just now).
    fn collect(&mut self, now: Instant, core: &mut ShardCore) {
        let _ = (now, core);
    }

    /// The send side, for the core's commands and timers.
    fn io(&mut self) -> &mut Self::Io;

    /// End of a turn: make sure what was queued leaves (epoll sends it now; io_uring hands it
    /// to the kernel with the next wait).
    fn flush(&mut self);

    /// The shard stops: send what is queued now.
    fn finish(&mut self);

    fn counters(&self) -> IoCounters;
}

/// An eventfd the control plane writes to after queueing a command. The epoll driver polls it;
/// the io_uring driver keeps a read of it in flight on the ring.
#[derive(Clone)]
pub(crate) struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Waker {
            fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    pub(crate) fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // EAGAIN: the counter is saturated, so the shard is woken anyway.
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// The epoll driver reads the eventfd without blocking; the io_uring driver needs it
    /// blocking, or the ring's read of it would complete at once with EAGAIN instead of
    /// waiting for a wake.
    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on our own descriptor.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = if nonblocking {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reset the counter (epoll driver; the io_uring driver's read does it).
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}
