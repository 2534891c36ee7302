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
//! Both read a socket until a batch comes back short (it took everything queued; with
//! edge-triggered epoll the next datagram raises a new event), not until EAGAIN: one
//! `recvmmsg` fewer per wakeup.
//!
//! Neither parses, decrypts or keeps state beyond the destinations; the generator sends plain
//! RTP on both sides. Each runs as one thread of the load-test process, pinned with `cpu` to
//! compare it with a relay shard on the same core, and counts its own system calls.

mod mmsg;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Serialize;

use crate::os::{current_tid, pin_current_thread, set_buffers};
use mmsg::ForwardBatch;

const WAKER: Token = Token(usize::MAX);
/// The single socket's token.
const SINGLE: Token = Token(0);
/// Socket buffers of the one socket that carries every call.
const SINGLE_BUFFER: usize = 8 << 20;

/// How a raw forwarder lays out its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A socket per call and leg (the relay's layout).
    PerLeg,
    /// One socket for all calls, demultiplexed by source address.
    Single,
}

enum RawCmd {
    Add {
        id: u64,
        /// Per leg: the call's two sockets [WhatsApp side, internal side].
        sockets: Option<[UdpSocket; 2]>,
        meta: SocketAddr,
        sip: SocketAddr,
        /// One socket: answered once the routes are in (a datagram that arrives before its
        /// route is dropped; a per-leg socket buffers it instead).
        done: Option<Sender<()>>,
    },
    Remove(u64),
    Stop,
}

pub struct RawForwarder {
    layout: Layout,
    commands: Sender<RawCmd>,
    waker: Arc<Waker>,
    tid: Arc<AtomicI32>,
    syscalls: Arc<AtomicU64>,
    /// The single socket's address (Layout::Single).
    single: Option<SocketAddr>,
    join: Option<JoinHandle<()>>,
    bind_ip: std::net::IpAddr,
}

impl std::fmt::Debug for RawForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawForwarder")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl RawForwarder {
    pub fn start(
        bind_ip: std::net::IpAddr,
        cpu: Option<usize>,
        layout: Layout,
    ) -> io::Result<RawForwarder> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let tid = Arc::new(AtomicI32::new(0));
        let syscalls = Arc::new(AtomicU64::new(0));
        let single = match layout {
            Layout::PerLeg => None,
            Layout::Single => {
                let s = UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
                s.set_nonblocking(true)?;
                set_buffers(&s, SINGLE_BUFFER);
                Some(s)
            }
        };
        let single_addr = single.as_ref().map(UdpSocket::local_addr).transpose()?;
        let join = {
            let (tid, syscalls) = (tid.clone(), syscalls.clone());
            std::thread::Builder::new()
                .name(format!("raw-{layout:?}").to_lowercase())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_current_thread(cpu);
                    }
                    tid.store(current_tid(), Ordering::Relaxed);
                    match single {
                        None => run_per_leg(poll, rx, &syscalls),
                        Some(s) => run_single(poll, rx, s, &syscalls),
                    }
                })?
        };
        Ok(RawForwarder {
            layout,
            commands: tx,
            waker,
            tid,
            syscalls,
            single: single_addr,
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
        if let Some(single) = self.single {
            let (done, added) = crossbeam_channel::bounded(1);
            self.send(RawCmd::Add {
                id,
                sockets: None,
                meta,
                sip,
                done: Some(done),
            });
            added
                .recv_timeout(Duration::from_secs(2))
                .map_err(|_| io::Error::other("the forwarder did not take the call"))?;
            return Ok((single, single));
        }
        let bind = || -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let (wa, internal) = (bind()?, bind()?);
        let addrs = (wa.local_addr()?, internal.local_addr()?);
        self.send(RawCmd::Add {
            id,
            sockets: Some([wa, internal]),
            meta,
            sip,
            done: None,
        });
        Ok(addrs)
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

fn run_per_leg(mut poll: Poll, commands: Receiver<RawCmd>, published: &AtomicU64) {
    let mut events = Events::with_capacity(1024);
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut batch = ForwardBatch::new();
    let mut waits = 0u64;
    let pause = batch_sleep();
    loop {
        if !wait(&mut poll, &mut events, &mut waits, pause) {
            return;
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
                    sockets: Some([wa, internal]),
                    meta,
                    sip,
                    ..
                } => {
                    set_buffers(&wa, 1 << 20);
                    set_buffers(&internal, 1 << 20);
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
                RawCmd::Add { sockets: None, .. } => {}
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
                RawCmd::Stop => return,
            }
        }
    }
}

fn run_single(
    mut poll: Poll,
    commands: Receiver<RawCmd>,
    socket: UdpSocket,
    published: &AtomicU64,
) {
    let mut socket = mio::net::UdpSocket::from_std(socket);
    if poll
        .registry()
        .register(&mut socket, SINGLE, Interest::READABLE)
        .is_err()
    {
        return;
    }
    let fd = socket.as_raw_fd();
    let mut events = Events::with_capacity(64);
    // Source → destination, both directions of every call.
    let mut routes: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let mut calls: HashMap<u64, [SocketAddr; 2]> = HashMap::new();
    let mut batch = ForwardBatch::new();
    let mut waits = 0u64;
    let pause = batch_sleep();
    loop {
        if !wait(&mut poll, &mut events, &mut waits, pause) {
            return;
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
                RawCmd::Stop => return,
            }
        }
    }
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

    /// Both layouts carry each call's datagrams to that call's other peer, both ways, and
    /// count the system calls they made.
    #[test]
    fn both_layouts_forward_each_call_to_its_own_peer() {
        for layout in [Layout::PerLeg, Layout::Single] {
            let f = RawForwarder::start(IpAddr::V4(Ipv4Addr::LOCALHOST), None, layout).unwrap();
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
                let n = sip.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[k as u8, 1], "{layout:?}");
                sip.send_to(&[k as u8, 2], internal).unwrap();
                let n = meta.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[k as u8, 2], "{layout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
            assert!(f.syscalls().load(Ordering::Relaxed) >= 6, "{layout:?}");
            f.remove(0);
        }
    }
}
