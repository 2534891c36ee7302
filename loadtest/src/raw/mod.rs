//! The machine's ceiling: trivial forwarders with no logic in place of the relay, in two
//! socket layouts, so `compare` shows both what the relay's layout costs the kernel and what a
//! media server with one port could reach:
//!
//! - [`Layout::PerLeg`] (`raw`): a WhatsApp-side and an internal-side socket per call (a port
//!   per call and leg, like the relay), epoll over all of them, `recvmmsg` from a readable
//!   socket and `sendmmsg` to the other side's peer. Each system call moves about one datagram
//!   once the load is evenly spaced.
//! - [`Layout::Single`] (`raw-single`): one socket for everything, demultiplexed by source
//!   address with a hash map: `recvmmsg` takes up to 32 datagrams of many calls, `sendmmsg`
//!   sends them on. The relay cannot do this (Meta's candidates fix a port per call), so this
//!   is the bound, not a design option. The generator gives every peer its own socket for this
//!   target (the source address is the only thing that tells calls apart).
//!
//! - [`Layout::SharedInternal`] (`raw-shared-internal`): a socket per call toward WhatsApp and
//!   one socket shared by every call toward the internal side, demultiplexed by source address
//!   (the internal media server sends from a port per call, so the generator gives every peer
//!   its own socket). What arrives on WhatsApp-side sockets during one wake-up leaves in one
//!   `sendmmsg` on the shared socket; what arrives on the shared socket leaves datagram by
//!   datagram on each call's WhatsApp-side socket. Issue 17's "shared socket per shard on the
//!   internal leg".
//! - [`Layout::Steered`] (`raw-steered`): a port per call and leg as in `raw`, but an eBPF
//!   `sk_lookup` program ([`bpf`]) steers every datagram to those ports to one receive socket;
//!   `IP_ORIGDSTADDR` tells which port (so which call and leg) it was sent to. Replies leave
//!   from the per-call socket of the other leg (a datagram's source port must be the call's),
//!   one `sendmmsg` each. Issue 17's "eBPF sk_lookup steering a port range to one socket". It
//!   must run in a network namespace of its own (`unshare -n`).
//!
//! [`RawOptions`] adds the other levers to any layout: the per-call sockets' buffer size,
//! `UDP_GRO` on every socket, and counts of what GRO and GSO could merge.
//!
//! Both read a socket until a batch comes back short (it took everything queued; with
//! edge-triggered epoll the next datagram raises a new event), not until EAGAIN: one
//! `recvmmsg` fewer per wakeup.
//!
//! Neither parses, decrypts or keeps state beyond the destinations; the generator sends plain
//! RTP on both sides. Each runs as one thread of the load-test process, pinned with `cpu` to
//! compare it with a relay shard on the same core, and counts its own system calls.

pub mod bpf;
mod mmsg;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Serialize;

use crate::os::{current_tid, pin_current_thread, set_buffers};
pub use mmsg::Counts;
use mmsg::ForwardBatch;

const WAKER: Token = Token(usize::MAX);
/// The single socket's token.
const SINGLE: Token = Token(0);
/// Socket buffers of the one socket that carries every call.
const SINGLE_BUFFER: usize = 8 << 20;

/// Ports of the per-call sockets of [`Layout::Steered`], which its `sk_lookup` program steers
/// to the receive socket: below the ephemeral range (32768-60999 by default), so no socket
/// bound to port 0 (the generator's) lands in it.
pub const STEERED_PORTS: (u16, u16) = (20_000, 29_999);

/// How a raw forwarder lays out its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A socket per call and leg (the relay's layout).
    PerLeg,
    /// One socket for all calls, demultiplexed by source address.
    Single,
    /// A socket per call toward WhatsApp, one shared socket toward the internal side
    /// (demultiplexed by source address).
    SharedInternal,
    /// A port per call and leg, every datagram steered to one receive socket by `sk_lookup`.
    Steered,
}

/// The levers measured on top of a layout (issue 17). The default is the forwarder as it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RawOptions {
    /// Receive and send buffer of each per-call socket, in bytes as the kernel accounts them
    /// (`getsockopt` reports; the kernel doubles what `setsockopt` gives, so half is set, with
    /// the `*BUFFORCE` options past `rmem_max`): `None` = 2 MiB (as before), `Some(0)` = the
    /// kernel default (`net.core.rmem_default`, 212,992 bytes on Linux).
    pub buffer: Option<usize>,
    /// `UDP_GRO` on every socket of the forwarder, reading each datagram's segment count.
    pub gro: bool,
    /// Count what GRO and GSO could merge (printed when the forwarder stops).
    pub count: bool,
}

impl RawOptions {
    /// Sizes a per-call socket's buffers.
    fn size(&self, s: &UdpSocket) {
        match self.buffer {
            None => set_buffers(s, 1 << 20),
            Some(0) => {}
            Some(b) => set_buffers(s, b / 2),
        }
    }

    /// Turns on what the options ask of a socket (`UDP_GRO`).
    fn prepare(&self, s: &UdpSocket) {
        if self.gro {
            set_int_option(s, libc::SOL_UDP, mmsg::UDP_GRO, 1);
        }
    }

    fn batch(&self, control: bool) -> ForwardBatch {
        let mut b = if control || self.gro {
            ForwardBatch::with_control()
        } else {
            ForwardBatch::new()
        };
        b.counting = self.count;
        b
    }
}

/// `setsockopt` of an int option; false if the kernel refused it.
fn set_int_option(s: &UdpSocket, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> bool {
    mmsg::set_int_option(s.as_raw_fd(), level, name, v)
}

enum RawCmd {
    Add {
        id: u64,
        /// The call's own sockets: [WhatsApp side, internal side] per leg and steered, [WhatsApp
        /// side] with a shared internal socket, none with one socket.
        sockets: Vec<UdpSocket>,
        meta: SocketAddr,
        sip: SocketAddr,
        /// Answered once the routes are in, where a datagram that arrives before its route is
        /// dropped (a per-leg socket buffers it instead).
        done: Option<Sender<()>>,
    },
    Remove(u64),
    Stop,
}

pub struct RawForwarder {
    layout: Layout,
    opts: RawOptions,
    commands: Sender<RawCmd>,
    waker: Arc<Waker>,
    tid: Arc<AtomicI32>,
    syscalls: Arc<AtomicU64>,
    /// The shared socket's address: every call's (Single), the internal side's
    /// (SharedInternal).
    shared: Option<SocketAddr>,
    /// The next port to try for a steered call's sockets.
    next_port: std::sync::Mutex<u16>,
    join: Option<JoinHandle<()>>,
    bind_ip: std::net::IpAddr,
}

impl std::fmt::Debug for RawForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawForwarder")
            .field("layout", &self.layout)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// What each layout's thread needs besides the commands.
enum Shared {
    None,
    /// The socket every call (Single) or every call's internal side (SharedInternal) uses.
    Socket(UdpSocket),
    /// The receive socket and the steering that feeds it.
    Steered(UdpSocket, bpf::Steering),
}

impl RawForwarder {
    pub fn start(
        bind_ip: std::net::IpAddr,
        cpu: Option<usize>,
        layout: Layout,
    ) -> io::Result<RawForwarder> {
        Self::start_with(bind_ip, cpu, layout, RawOptions::default())
    }

    pub fn start_with(
        bind_ip: std::net::IpAddr,
        cpu: Option<usize>,
        layout: Layout,
        opts: RawOptions,
    ) -> io::Result<RawForwarder> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let tid = Arc::new(AtomicI32::new(0));
        let syscalls = Arc::new(AtomicU64::new(0));
        let shared_socket = || -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
            s.set_nonblocking(true)?;
            set_buffers(&s, SINGLE_BUFFER);
            opts.prepare(&s);
            Ok(s)
        };
        let (shared, shared_addr) = match layout {
            Layout::PerLeg => (Shared::None, None),
            Layout::Single | Layout::SharedInternal => {
                let s = shared_socket()?;
                let a = s.local_addr()?;
                (Shared::Socket(s), Some(a))
            }
            Layout::Steered => {
                let s = shared_socket()?;
                if !set_int_option(&s, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1) {
                    return Err(io::Error::last_os_error());
                }
                let steering = bpf::Steering::attach(&s, STEERED_PORTS.0, STEERED_PORTS.1)?;
                (Shared::Steered(s, steering), None)
            }
        };
        let join = {
            let (tid, syscalls) = (tid.clone(), syscalls.clone());
            std::thread::Builder::new()
                .name(format!("raw-{layout:?}").to_lowercase())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_current_thread(cpu);
                    }
                    tid.store(current_tid(), Ordering::Relaxed);
                    let counts = match shared {
                        Shared::None => run_per_leg(poll, rx, &syscalls, opts),
                        Shared::Socket(s) if layout == Layout::Single => {
                            run_single(poll, rx, s, &syscalls, opts)
                        }
                        Shared::Socket(s) => run_shared_internal(poll, rx, s, &syscalls, opts),
                        Shared::Steered(s, steering) => {
                            let c = run_steered(poll, rx, s, &syscalls, opts);
                            drop(steering);
                            c
                        }
                    };
                    if opts.count {
                        print_counts(layout, &counts);
                    }
                })?
        };
        Ok(RawForwarder {
            layout,
            opts,
            commands: tx,
            waker,
            tid,
            syscalls,
            shared: shared_addr,
            next_port: std::sync::Mutex::new(STEERED_PORTS.0),
            join: Some(join),
            bind_ip,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Sets up a call; returns (WhatsApp side, internal side) for the peers to send to (the
    /// same address twice with one socket).
    pub fn add(
        &self,
        id: u64,
        meta: SocketAddr,
        sip: SocketAddr,
    ) -> io::Result<(SocketAddr, SocketAddr)> {
        let bind = |port: u16| -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(SocketAddr::new(self.bind_ip, port))?;
            s.set_nonblocking(true)?;
            self.opts.size(&s);
            self.opts.prepare(&s);
            Ok(s)
        };
        let sockets = match self.layout {
            Layout::Single => Vec::new(),
            Layout::PerLeg => vec![bind(0)?, bind(0)?],
            Layout::SharedInternal => vec![bind(0)?],
            Layout::Steered => vec![self.bind_steered(&bind)?, self.bind_steered(&bind)?],
        };
        let addrs = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let waits = self.layout != Layout::PerLeg;
        let (done, added) = crossbeam_channel::bounded(1);
        self.send(RawCmd::Add {
            id,
            sockets,
            meta,
            sip,
            done: waits.then_some(done),
        });
        if waits {
            added
                .recv_timeout(Duration::from_secs(2))
                .map_err(|_| io::Error::other("the forwarder did not take the call"))?;
        }
        let shared = || {
            self.shared
                .ok_or_else(|| io::Error::other("no shared socket"))
        };
        match addrs[..] {
            [wa, internal] => Ok((wa, internal)),
            [wa] => Ok((wa, shared()?)),
            _ => Ok((shared()?, shared()?)),
        }
    }

    /// A socket on the next free port of [`STEERED_PORTS`].
    fn bind_steered(&self, bind: &dyn Fn(u16) -> io::Result<UdpSocket>) -> io::Result<UdpSocket> {
        let mut next = self.next_port.lock().unwrap_or_else(|p| p.into_inner());
        let (lo, hi) = STEERED_PORTS;
        for _ in lo..=hi {
            let port = *next;
            *next = if port >= hi { lo } else { port + 1 };
            match bind(port) {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free port in the steered range"))
    }

    pub fn remove(&self, id: u64) {
        self.send(RawCmd::Remove(id));
    }

    fn send(&self, cmd: RawCmd) {
        if self.commands.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// The forwarder thread's kernel ID, once it runs.
    pub fn tid(&self) -> Option<i32> {
        let t = self.tid.load(Ordering::Relaxed);
        (t > 0).then_some(t)
    }

    /// System calls the forwarder thread made so far (epoll_wait, recvmmsg, sendmmsg;
    /// published once per loop turn).
    pub fn syscalls(&self) -> Arc<AtomicU64> {
        self.syscalls.clone()
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.send(RawCmd::Stop);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn print_counts(layout: Layout, c: &Counts) {
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    eprintln!(
        "raw forwarder ({layout:?}) counts over the whole run: {} datagrams received in {} \
         receives ({:.2} a receive), {} ({:.3} %) right after one of the same flow in the same \
         receive (GRO could merge at best these); UDP_GRO merged {} datagrams ({} segments); \
         {} datagrams sent in {} sendmmsg ({:.2} a send), {} ({:.3} %) to the same destination \
         as the one before in the same send (one UDP_SEGMENT send could carry these with it)",
        c.received,
        c.receives,
        c.received as f64 / c.receives.max(1) as f64,
        c.same_flow_received,
        pct(c.same_flow_received, c.received),
        c.gro_merged,
        c.gro_segments,
        c.sent,
        c.sends,
        c.sent as f64 / c.sends.max(1) as f64,
        c.same_dest_sent,
        pct(c.same_dest_sent, c.sent),
    );
}

struct Pair {
    id: u64,
    /// [WhatsApp side, internal side]
    sockets: [mio::net::UdpSocket; 2],
    /// Where what arrives on each side goes: [to SIP peer, to Meta peer].
    dest: [SocketAddr; 2],
}

/// `LOADTEST_RAW_BATCH_US`: sleep this long before each wait, so a wake-up finds the
/// datagrams of that span together, as the relay's io_uring driver gathers completions for
/// `batch_wait_us` (its default 200 µs) before waking. 0 (the default): wake per readiness.
/// Read once per forwarder (benchmarks: the ceiling with the same batching as the relay).
fn batch_sleep() -> Duration {
    std::env::var("LOADTEST_RAW_BATCH_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_micros)
}

/// Waits for readiness; `false` on a fatal poll error. Counts the epoll_wait (and the sleep
/// before it, with [`batch_sleep`]).
fn wait(poll: &mut Poll, events: &mut Events, syscalls: &mut u64, batch: Duration) -> bool {
    if !batch.is_zero() {
        *syscalls += 1;
        std::thread::sleep(batch);
    }
    *syscalls += 1;
    match poll.poll(events, Some(Duration::from_millis(100))) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::Interrupted,
    }
}

fn run_per_leg(
    mut poll: Poll,
    commands: Receiver<RawCmd>,
    published: &AtomicU64,
    opts: RawOptions,
) -> Counts {
    let mut events = Events::with_capacity(1024);
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut batch = opts.batch(false);
    let mut waits = 0u64;
    let pause = batch_sleep();
    loop {
        if !wait(&mut poll, &mut events, &mut waits, pause) {
            return batch.counts;
        }
        for ev in events.iter() {
            let t = ev.token();
            if t == WAKER {
                continue;
            }
            let (i, side) = (t.0 / 2, t.0 % 2);
            let Some(Some(p)) = pairs.get(i) else {
                continue;
            };
            let from_fd = p.sockets[side].as_raw_fd();
            let out_fd = p.sockets[1 - side].as_raw_fd();
            let dest = p.dest[side];
            // Edge-triggered: read until a batch comes back short (it then took everything
            // queued; the next datagram raises a new edge).
            while let Ok(n @ 1..) = batch.recv(from_fd) {
                for k in 0..n {
                    batch.forward(k, dest);
                }
                batch.send(out_fd);
                if n < mmsg::BATCH {
                    break;
                }
            }
        }
        published.store(waits + batch.syscalls, Ordering::Relaxed);
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                RawCmd::Add {
                    id,
                    sockets,
                    meta,
                    sip,
                    ..
                } => {
                    let Ok([wa, internal]) = <[UdpSocket; 2]>::try_from(sockets) else {
                        continue;
                    };
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let mut sockets = [
                        mio::net::UdpSocket::from_std(wa),
                        mio::net::UdpSocket::from_std(internal),
                    ];
                    let mut ok = true;
                    for (side, s) in sockets.iter_mut().enumerate() {
                        ok &= poll
                            .registry()
                            .register(s, Token(2 * i + side), Interest::READABLE)
                            .is_ok();
                    }
                    if !ok {
                        free.push(i);
                        continue;
                    }
                    if let Some(slot) = pairs.get_mut(i) {
                        *slot = Some(Pair {
                            id,
                            sockets,
                            dest: [sip, meta],
                        });
                    }
                }
                RawCmd::Remove(id) => {
                    if let Some(i) = pairs
                        .iter()
                        .position(|p| p.as_ref().is_some_and(|p| p.id == id))
                        && let Some(mut p) = pairs.get_mut(i).and_then(Option::take)
                    {
                        for s in &mut p.sockets {
                            let _ = poll.registry().deregister(s);
                        }
                        free.push(i);
                    }
                }
                RawCmd::Stop => return batch.counts,
            }
        }
    }
}

fn run_single(
    mut poll: Poll,
    commands: Receiver<RawCmd>,
    socket: UdpSocket,
    published: &AtomicU64,
    opts: RawOptions,
) -> Counts {
    let mut batch = opts.batch(false);
    let Some((_socket, fd)) = register_single(&poll, socket) else {
        return batch.counts;
    };
    let mut events = Events::with_capacity(64);
    // Source → destination, both directions of every call.
    let mut routes: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let mut calls: HashMap<u64, [SocketAddr; 2]> = HashMap::new();
    let mut waits = 0u64;
    let pause = batch_sleep();
    loop {
        if !wait(&mut poll, &mut events, &mut waits, pause) {
            return batch.counts;
        }
        let mut commands_waiting = false;
        for ev in events.iter() {
            if ev.token() == WAKER {
                commands_waiting = true;
                continue;
            }
            while let Ok(n @ 1..) = batch.recv(fd) {
                for k in 0..n {
                    if let Some(to) = batch.source(k).and_then(|s| routes.get(&s)) {
                        batch.forward(k, *to);
                    }
                }
                batch.send(fd);
                if n < mmsg::BATCH {
                    break;
                }
            }
        }
        published.store(waits + batch.syscalls, Ordering::Relaxed);
        if !commands_waiting {
            continue;
        }
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                RawCmd::Add {
                    id,
                    meta,
                    sip,
                    done,
                    ..
                } => {
                    routes.insert(meta, sip);
                    routes.insert(sip, meta);
                    calls.insert(id, [meta, sip]);
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                }
                RawCmd::Remove(id) => {
                    if let Some(ends) = calls.remove(&id) {
                        for a in ends {
                            routes.remove(&a);
                        }
                    }
                }
                RawCmd::Stop => return batch.counts,
            }
        }
    }
}

/// A call of [`Layout::SharedInternal`]: its WhatsApp-side socket and both peers.
struct WaLeg {
    id: u64,
    socket: mio::net::UdpSocket,
    meta: SocketAddr,
    sip: SocketAddr,
}

/// [`Layout::SharedInternal`]: token 0 is the shared internal socket, token 1 + i the
/// WhatsApp-side socket of slot i.
fn run_shared_internal(
    mut poll: Poll,
    commands: Receiver<RawCmd>,
    socket: UdpSocket,
    published: &AtomicU64,
    opts: RawOptions,
) -> Counts {
    // Internal side in (many calls per receive), out datagram by datagram on each call's
    // WhatsApp-side socket.
    let mut inward = opts.batch(false);
    // WhatsApp side in (a socket per call), gathered over the wake-up, out in one sendmmsg on
    // the shared socket.
    let mut outward = opts.batch(false);
    let Some((_socket, shared_fd)) = register_single(&poll, socket) else {
        return inward.counts;
    };
    let mut events = Events::with_capacity(1024);
    let mut legs: Vec<Option<WaLeg>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // The internal peer's address → slot.
    let mut routes: HashMap<SocketAddr, usize> = HashMap::new();
    let mut waits = 0u64;
    let pause = batch_sleep();
    let total = |a: &ForwardBatch, b: &ForwardBatch| {
        let mut c = a.counts;
        c.add(&b.counts);
        c
    };
    loop {
        if !wait(&mut poll, &mut events, &mut waits, pause) {
            return total(&inward, &outward);
        }
        for ev in events.iter() {
            let t = ev.token();
            if t == WAKER {
                continue;
            }
            if t == SINGLE {
                while let Ok(n @ 1..) = inward.recv(shared_fd) {
                    for k in 0..n {
                        let leg = inward
                            .source(k)
                            .and_then(|s| routes.get(&s))
                            .and_then(|&i| legs.get(i))
                            .and_then(Option::as_ref);
                        if let Some(leg) = leg {
                            let (out, to) = (leg.socket.as_raw_fd(), leg.meta);
                            inward.forward(k, to);
                            inward.send(out);
                        }
                    }
                    if n < mmsg::BATCH {
                        break;
                    }
                }
                continue;
            }
            let Some(Some(leg)) = legs.get(t.0 - 1) else {
                continue;
            };
            let (fd, to) = (leg.socket.as_raw_fd(), leg.sip);
            loop {
                let (before, room) = (outward.len(), mmsg::BATCH - outward.len());
                let Ok(n @ 1..) = outward.recv_append(fd) else {
                    break;
                };
                for k in before..before + n {
                    outward.forward(k, to);
                }
                if outward.len() == mmsg::BATCH {
                    outward.send(shared_fd);
                    outward.clear();
                }
                if n < room {
                    break;
                }
            }
        }
        if !outward.is_empty() {
            outward.send(shared_fd);
            outward.clear();
        }
        published.store(
            waits + inward.syscalls + outward.syscalls,
            Ordering::Relaxed,
        );
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                RawCmd::Add {
                    id,
                    sockets,
                    meta,
                    sip,
                    done,
                } => {
                    let Some(wa) = sockets.into_iter().next() else {
                        continue;
                    };
                    let i = free.pop().unwrap_or_else(|| {
                        legs.push(None);
                        legs.len() - 1
                    });
                    let mut wa = mio::net::UdpSocket::from_std(wa);
                    if poll
                        .registry()
                        .register(&mut wa, Token(1 + i), Interest::READABLE)
                        .is_err()
                    {
                        free.push(i);
                        continue;
                    }
                    routes.insert(sip, i);
                    if let Some(slot) = legs.get_mut(i) {
                        *slot = Some(WaLeg {
                            id,
                            socket: wa,
                            meta,
                            sip,
                        });
                    }
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                }
                RawCmd::Remove(id) => {
                    if let Some(i) = legs
                        .iter()
                        .position(|l| l.as_ref().is_some_and(|l| l.id == id))
                        && let Some(mut l) = legs.get_mut(i).and_then(Option::take)
                    {
                        let _ = poll.registry().deregister(&mut l.socket);
                        routes.remove(&l.sip);
                        free.push(i);
                    }
                }
                RawCmd::Stop => return total(&inward, &outward),
            }
        }
    }
}

/// Where a datagram to one steered port goes: out of the other leg's socket to its peer.
#[derive(Clone, Copy)]
struct Route {
    out: RawFd,
    to: SocketAddr,
}

/// [`Layout::Steered`]: one receive socket (token 0) gets every call's datagrams; the local
/// port each was sent to picks the route.
fn run_steered(
    mut poll: Poll,
    commands: Receiver<RawCmd>,
    socket: UdpSocket,
    published: &AtomicU64,
    opts: RawOptions,
) -> Counts {
    let mut batch = opts.batch(true);
    let Some((_socket, fd)) = register_single(&poll, socket) else {
        return batch.counts;
    };
    let (lo, hi) = STEERED_PORTS;
    let mut routes: Vec<Option<Route>> = vec![None; usize::from(hi - lo) + 1];
    // The calls' sockets (send only: sk_lookup takes what arrives at their ports) and ports.
    let mut calls: HashMap<u64, ([UdpSocket; 2], [u16; 2])> = HashMap::new();
    let mut events = Events::with_capacity(64);
    let mut waits = 0u64;
    let pause = batch_sleep();
    loop {
        if !wait(&mut poll, &mut events, &mut waits, pause) {
            return batch.counts;
        }
        let mut commands_waiting = false;
        for ev in events.iter() {
            if ev.token() == WAKER {
                commands_waiting = true;
                continue;
            }
            while let Ok(n @ 1..) = batch.recv(fd) {
                for k in 0..n {
                    let route = batch
                        .orig_port(k)
                        .and_then(|p| p.checked_sub(lo))
                        .and_then(|i| routes.get(usize::from(i)))
                        .copied()
                        .flatten();
                    if let Some(r) = route {
                        batch.forward(k, r.to);
                        batch.send(r.out);
                    }
                }
                if n < mmsg::BATCH {
                    break;
                }
            }
        }
        published.store(waits + batch.syscalls, Ordering::Relaxed);
        if !commands_waiting {
            continue;
        }
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                RawCmd::Add {
                    id,
                    sockets,
                    meta,
                    sip,
                    done,
                } => {
                    let Ok(pair @ [_, _]) = <[UdpSocket; 2]>::try_from(sockets) else {
                        continue;
                    };
                    let port = |s: &UdpSocket| s.local_addr().map_or(0, |a| a.port());
                    let ports = [port(&pair[0]), port(&pair[1])];
                    // To the WhatsApp-side port: out of the internal socket to the SIP peer,
                    // and the other way round.
                    let legs = [
                        (ports[0], pair[1].as_raw_fd(), sip),
                        (ports[1], pair[0].as_raw_fd(), meta),
                    ];
                    for (p, out, to) in legs {
                        if let Some(slot) = p
                            .checked_sub(lo)
                            .and_then(|i| routes.get_mut(usize::from(i)))
                        {
                            *slot = Some(Route { out, to });
                        }
                    }
                    calls.insert(id, (pair, ports));
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                }
                RawCmd::Remove(id) => {
                    if let Some((_sockets, ports)) = calls.remove(&id) {
                        for p in ports {
                            if let Some(slot) = p
                                .checked_sub(lo)
                                .and_then(|i| routes.get_mut(usize::from(i)))
                            {
                                *slot = None;
                            }
                        }
                    }
                }
                RawCmd::Stop => return batch.counts,
            }
        }
    }
}

/// The one shared socket of the single, shared-internal and steered layouts, registered
/// as [`SINGLE`]; `None` if the poll refuses it. Keep the socket: dropping it closes `fd`.
fn register_single(poll: &Poll, socket: UdpSocket) -> Option<(mio::net::UdpSocket, RawFd)> {
    let mut socket = mio::net::UdpSocket::from_std(socket);
    poll.registry()
        .register(&mut socket, SINGLE, Interest::READABLE)
        .ok()?;
    let fd = socket.as_raw_fd();
    Some((socket, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Sends a datagram through each call both ways and checks it reaches that call's other
    /// peer.
    fn carries_each_call(f: &RawForwarder, what: &str) {
        let calls: Vec<(UdpSocket, UdpSocket)> = (0..3).map(|_| (peer(), peer())).collect();
        let mut targets = Vec::new();
        for (id, (meta, sip)) in calls.iter().enumerate() {
            let t = f
                .add(
                    id as u64,
                    meta.local_addr().unwrap(),
                    sip.local_addr().unwrap(),
                )
                .unwrap();
            targets.push(t);
        }
        // Let the thread take the calls.
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 64];
        for (k, ((meta, sip), (wa, internal))) in calls.iter().zip(&targets).enumerate() {
            meta.send_to(&[k as u8, 1], wa).unwrap();
            let (n, from) = sip.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[k as u8, 1], "{what}");
            assert_eq!(from, *internal, "{what}: leaves from the internal side");
            sip.send_to(&[k as u8, 2], internal).unwrap();
            let (n, from) = meta.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[k as u8, 2], "{what}");
            assert_eq!(
                from, *wa,
                "{what}: leaves from the call's WhatsApp-side port"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(f.syscalls().load(Ordering::Relaxed) >= 6, "{what}");
        f.remove(0);
    }

    /// Every layout carries each call's datagrams to that call's other peer, both ways, from
    /// the right port, and counts the system calls it made.
    #[test]
    fn every_layout_forwards_each_call_to_its_own_peer() {
        for layout in [Layout::PerLeg, Layout::Single, Layout::SharedInternal] {
            for opts in [
                RawOptions::default(),
                RawOptions {
                    buffer: Some(64 << 10),
                    gro: true,
                    count: true,
                },
            ] {
                let f =
                    RawForwarder::start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), None, layout, opts)
                        .unwrap();
                carries_each_call(&f, &format!("{layout:?} {opts:?}"));
            }
        }
    }

    /// The steered layout refuses the initial network namespace, and in a namespace of its own
    /// (root only; skipped otherwise) carries every call through its one receive socket.
    #[test]
    fn steered_layout_forwards_by_the_port_a_datagram_was_sent_to() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if bpf::in_initial_netns().unwrap_or(false) {
            let e = RawForwarder::start(ip, None, Layout::Steered).unwrap_err();
            assert!(e.to_string().contains("namespace"), "{e}");
        }
        std::thread::spawn(move || {
            if let Err(e) = bpf::private_netns_for_this_thread() {
                eprintln!("skipped: no network namespace of our own ({e})");
                return;
            }
            let f = match RawForwarder::start(ip, None, Layout::Steered) {
                Ok(f) => f,
                // bpf() refused (no CAP_BPF, a seccomp profile) or missing.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                    ) =>
                {
                    eprintln!("skipped: no bpf() here ({e})");
                    return;
                }
                Err(e) => panic!("sk_lookup steering in a private namespace: {e}"),
            };
            carries_each_call(&f, "steered");
        })
        .join()
        .unwrap();
    }

    /// `--raw-buffer` sets the size the kernel reports (it doubles what is set).
    #[test]
    fn buffer_option_sets_the_size_the_kernel_accounts() {
        let size = |s: &UdpSocket| socket2::SockRef::from(s).recv_buffer_size().unwrap();
        let s = peer();
        let default = size(&s);
        RawOptions {
            buffer: Some(0),
            ..RawOptions::default()
        }
        .size(&s);
        assert_eq!(size(&s), default);
        let sized = |want| {
            let s = peer();
            RawOptions {
                buffer: Some(want),
                ..RawOptions::default()
            }
            .size(&s);
            size(&s)
        };
        // Below rmem_max: exactly; above, root forces it, others get the cap.
        assert_eq!(sized(64 << 10), 64 << 10);
        assert!(sized(64 << 20) <= 64 << 20);
    }
}
