//! Runs a sans-IO peer core on real loopback UDP sockets in its own thread (mio, so timers and
//! datagrams wake it without polling). Handles share the core behind a mutex: this is test
//! equipment, and the lock is held only to feed a datagram or run a command.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::media::{ReceivedRtcp, ReceivedRtp, Recorder};

/// What a runner needs from a peer: datagrams in (with the index of the socket they arrived
/// on), datagrams out (with the index of the socket to send from), and a deadline.
pub trait PeerCore: Send + 'static {
    fn handle(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]);
    fn poll(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_transmit(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)>;
}

/// What a media peer's core tells its handle: its counters and what it has received.
pub trait MediaPeer: PeerCore {
    type Stats: Clone;
    fn stats(&self) -> Self::Stats;
    fn recorder(&self) -> &Recorder;
}

/// A running peer: its core on its own thread, shared with this handle. Dropping the handle
/// stops the thread. What every peer reports is here; each peer's own commands are on its
/// alias (`MetaHandle`, `SipHandle`, `BrowserHandle`).
pub struct PeerHandle<C: PeerCore> {
    pub(crate) runner: Runner<C>,
}

impl<C: PeerCore> std::fmt::Debug for PeerHandle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHandle").finish_non_exhaustive()
    }
}

impl<C: MediaPeer> PeerHandle<C> {
    pub fn stats(&self) -> C::Stats {
        self.runner.lock().stats()
    }
    pub fn received(&self) -> Vec<ReceivedRtp> {
        self.runner.lock().recorder().rtp.clone()
    }
    pub fn received_rtcp(&self) -> Vec<ReceivedRtcp> {
        self.runner.lock().recorder().rtcp.clone()
    }
    /// Polls `stats()` every few milliseconds until `cond` holds or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&C::Stats) -> bool) -> bool {
        wait_until(timeout, || cond(&self.stats()))
    }
    pub fn stop(mut self) {
        self.runner.stop();
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Longest the thread sleeps without a deadline, so `stop` is noticed even if a wake is lost.
const MAX_SLEEP: Duration = Duration::from_millis(50);
const WAKER: Token = Token(usize::MAX);

pub(crate) struct Runner<C: PeerCore> {
    pub core: Arc<Mutex<C>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: PeerCore> Runner<C> {
    pub fn spawn(name: &str, core: C, sockets: Vec<std::net::UdpSocket>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut mio_sockets = Vec::with_capacity(sockets.len());
        for (i, s) in sockets.into_iter().enumerate() {
            s.set_nonblocking(true)?;
            let mut s = UdpSocket::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)?;
            mio_sockets.push(s);
        }
        let core = Arc::new(Mutex::new(core));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (core, stop) = (core.clone(), stop.clone());
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || run(poll, mio_sockets, core, stop))?
        };
        Ok(Runner {
            core,
            waker,
            stop,
            thread: Some(thread),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, C> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the core, then wakes the thread so whatever `f` queued goes out now.
    pub fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        let r = f(&mut self.lock());
        let _ = self.waker.wake();
        r
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<C: PeerCore> Drop for Runner<C> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<C: PeerCore>(
    mut poll: Poll,
    sockets: Vec<UdpSocket>,
    core: Arc<Mutex<C>>,
    stop: Arc<AtomicBool>,
) {
    let mut events = Events::with_capacity(16);
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let sleep = {
            let core = core.lock().unwrap_or_else(|p| p.into_inner());
            core.poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP)
        };
        if let Err(e) = poll.poll(&mut events, Some(sleep))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return;
        }
        let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
        // Edge-triggered: drain every socket until it would block.
        for (i, s) in sockets.iter().enumerate() {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let now = Instant::now();
                core.handle(now, i, from, &buf[..n]);
            }
        }
        core.poll(Instant::now());
        while let Some((i, to, data)) = core.poll_transmit() {
            if let Some(s) = sockets.get(i) {
                // Loopback send errors (peer gone) are not this peer's problem.
                let _ = s.send_to(&data, to);
            }
        }
    }
}
