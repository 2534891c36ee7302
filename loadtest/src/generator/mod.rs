//! The media generator: `threads` OS threads, each running many calls' peers on nonblocking
//! sockets under one mio poll loop, reading with `recvmmsg` and writing with `sendmmsg`.
//!
//! Sockets: by default each thread has one socket for all its Meta peers and one for all its
//! SIP peers (`pool = 1`), the way Meta's media servers answer many calls on one port; sends
//! and receives then batch across calls. `pool = 0` gives every peer its own socket instead
//! (as a media server with a port per call does); that costs the generator more syscalls.
//! Calls are told apart by the relay's address (the relay uses a port per call and leg).

mod timerfd;
mod worker;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::{Poll, Waker};
use tokio::sync::oneshot;

use crate::os::{current_tid, pin_current_thread, set_buffers};
use crate::peer::sip::SipPeer;
use crate::peer::wa::WaPeer;
use crate::stats::Totals;

/// Socket buffers for shared sockets: a second or more of a thread's traffic at 1,000s of
/// calls, so a briefly descheduled generator does not drop (the kernel caps it at rmem_max).
const SHARED_SOCKET_BUFFER: usize = 4 << 20;

/// When each stream's packets leave within the 20 ms packet time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    /// Every stream (each call's Meta peer and SIP peer separately) gets its own phase in the
    /// 20 ms period, spread evenly over it (a golden-ratio sequence, so it stays even whatever
    /// the number of calls), and is sent at that instant (a timerfd wakes the thread with
    /// nanosecond resolution). The target sees datagrams arrive one by one as from
    /// independent endpoints: its batching gets no help from the generator.
    #[default]
    Even,
    /// Both packets of a call leave together, at a phase set by when its audio started, and
    /// the thread wakes on a 1 ms poll timeout, so the calls due in the same millisecond go
    /// out together in one `sendmmsg`: about calls/20 calls' packets per burst. This is how
    /// loadtest sent before `--spacing` existed; it flatters a target that batches.
    Burst,
}

#[derive(Clone, Debug)]
pub struct GenConfig {
    pub threads: usize,
    /// Sockets per side per thread shared by its calls; 0 = one socket per peer.
    pub pool: usize,
    pub bind_ip: IpAddr,
    /// Pin generator threads to these CPUs (round-robin), if any.
    pub cpus: Vec<usize>,
    pub spacing: Spacing,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            threads: 1,
            pool: 1,
            bind_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            cpus: Vec::new(),
            spacing: Spacing::Even,
        }
    }
}

/// Where a peer's socket comes from.
#[derive(Debug)]
pub enum PeerSocket {
    /// The thread's shared socket with this index.
    Pool(usize),
    /// A socket of its own.
    Own(UdpSocket),
}

/// A call handed to a generator thread, with both peers already configured from the relay's
/// SDP.
pub struct NewCall {
    pub id: u64,
    pub meta: WaPeer,
    pub meta_socket: PeerSocket,
    /// The relay's WhatsApp-side addresses (its checks, DTLS and media come from there).
    pub meta_remotes: Vec<SocketAddr>,
    pub sip: SipPeer,
    pub sip_socket: PeerSocket,
    pub sip_remote: SocketAddr,
    /// When the signaling tier sent CreateCall: setup time counts from here.
    pub created_at: Instant,
    /// Answered when the Meta peer's media is ready (DTLS up), or setup failed.
    pub ready: oneshot::Sender<Result<Instant, String>>,
}

pub enum Command {
    Add(Box<NewCall>),
    /// Start or stop audio on both peers of a call.
    Media {
        id: u64,
        on: bool,
    },
    Remove(u64),
    /// Publish the thread's counters now, then answer.
    Flush(oneshot::Sender<()>),
    Stop,
}

struct ThreadHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    meta_pool: Vec<SocketAddr>,
    sip_pool: Vec<SocketAddr>,
    shared: Arc<Mutex<Totals>>,
    tid: Arc<AtomicI32>,
    join: Option<JoinHandle<()>>,
}

pub struct Generator {
    cfg: GenConfig,
    threads: Vec<ThreadHandle>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The ports for one new call and the addresses to write into its SDPs.
#[derive(Debug)]
pub struct CallSockets {
    pub meta: PeerSocket,
    pub meta_addr: SocketAddr,
    pub sip: PeerSocket,
    pub sip_addr: SocketAddr,
}

fn bind(ip: IpAddr, buffer: Option<usize>) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    s.set_nonblocking(true)?;
    if let Some(b) = buffer {
        set_buffers(&s, b);
    }
    Ok(s)
}

impl Generator {
    pub fn start(cfg: GenConfig) -> io::Result<Generator> {
        let mut threads = Vec::new();
        for t in 0..cfg.threads.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
            let mut meta_pool = Vec::new();
            let mut sip_pool = Vec::new();
            for _ in 0..cfg.pool {
                meta_pool.push(bind(cfg.bind_ip, Some(SHARED_SOCKET_BUFFER))?);
            }
            for _ in 0..cfg.pool {
                sip_pool.push(bind(cfg.bind_ip, Some(SHARED_SOCKET_BUFFER))?);
            }
            let addr = |v: &Vec<UdpSocket>| v.iter().map(UdpSocket::local_addr).collect();
            let meta_addrs: io::Result<Vec<SocketAddr>> = addr(&meta_pool);
            let sip_addrs: io::Result<Vec<SocketAddr>> = addr(&sip_pool);
            let (tx, rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(Mutex::new(Totals::default()));
            let tid = Arc::new(AtomicI32::new(0));
            let cpu = (!cfg.cpus.is_empty()).then(|| cfg.cpus[t % cfg.cpus.len()]);
            let w =
                worker::Worker::new(poll, rx, meta_pool, sip_pool, shared.clone(), cfg.spacing)?;
            let join = {
                let tid = tid.clone();
                std::thread::Builder::new()
                    .name(format!("gen-{t}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            pin_current_thread(cpu);
                        }
                        tid.store(current_tid(), Ordering::Relaxed);
                        w.run();
                    })?
            };
            threads.push(ThreadHandle {
                commands: tx,
                waker,
                meta_pool: meta_addrs?,
                sip_pool: sip_addrs?,
                shared,
                tid,
                join: Some(join),
            });
        }
        // The CPU meter needs every thread's kernel ID: wait (briefly) until each has run.
        let until = Instant::now() + std::time::Duration::from_secs(2);
        while threads.iter().any(|t| t.tid.load(Ordering::Relaxed) == 0) && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(Generator { cfg, threads })
    }

    fn thread(&self, id: u64) -> Option<&ThreadHandle> {
        let n = self.threads.len() as u64;
        self.threads.get((id % n.max(1)) as usize)
    }

    /// Chooses (pool) or binds (per-peer) the sockets for call `id`.
    pub fn sockets_for(&self, id: u64) -> io::Result<CallSockets> {
        let t = self
            .thread(id)
            .ok_or_else(|| io::Error::other("no generator thread"))?;
        if self.cfg.pool == 0 {
            let meta = bind(self.cfg.bind_ip, None)?;
            let sip = bind(self.cfg.bind_ip, None)?;
            return Ok(CallSockets {
                meta_addr: meta.local_addr()?,
                sip_addr: sip.local_addr()?,
                meta: PeerSocket::Own(meta),
                sip: PeerSocket::Own(sip),
            });
        }
        let i = ((id / self.threads.len() as u64) % self.cfg.pool as u64) as usize;
        let (Some(meta_addr), Some(sip_addr)) = (t.meta_pool.get(i), t.sip_pool.get(i)) else {
            return Err(io::Error::other("pool index out of range"));
        };
        Ok(CallSockets {
            meta: PeerSocket::Pool(i),
            meta_addr: *meta_addr,
            sip: PeerSocket::Pool(i),
            sip_addr: *sip_addr,
        })
    }

    /// Sends `cmd` to the thread that owns call `id`.
    pub fn send(&self, id: u64, cmd: Command) {
        if let Some(t) = self.thread(id)
            && t.commands.send(cmd).is_ok()
        {
            let _ = t.waker.wake();
        }
    }

    fn broadcast(&self, mut make: impl FnMut() -> Command) {
        for t in &self.threads {
            if t.commands.send(make()).is_ok() {
                let _ = t.waker.wake();
            }
        }
    }

    /// Counters published since the last call (all threads merged).
    pub fn take_totals(&self) -> Totals {
        let mut all = Totals::default();
        for t in &self.threads {
            let mut shared = t.shared.lock().unwrap_or_else(|p| p.into_inner());
            all.merge(&shared);
            *shared = Totals::default();
        }
        all
    }

    /// Makes every thread publish its counters; returns when all have.
    pub async fn flush(&self) {
        let mut waits = Vec::new();
        self.broadcast(|| {
            let (tx, rx) = oneshot::channel();
            waits.push(rx);
            Command::Flush(tx)
        });
        for w in waits {
            let _ = w.await;
        }
    }

    /// Kernel thread IDs of the generator threads (for their CPU time in /proc).
    pub fn thread_ids(&self) -> Vec<i32> {
        self.threads
            .iter()
            .map(|t| t.tid.load(Ordering::Relaxed))
            .filter(|t| *t > 0)
            .collect()
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.broadcast(|| Command::Stop);
        for t in &mut self.threads {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
    }
}
