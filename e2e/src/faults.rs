//! `FaultProxy`: a loopback UDP proxy between a peer (the Meta emulator) and the relay that
//! injects loss, duplication, delay jitter and reordering, per direction, from a seeded RNG.
//!
//! The relay sees the peer at [`FaultHandle::relay_facing`] (rewrite the peer's SDP with
//! [`rewrite_candidate`] so the relay checks that address); the peer sees the relay at the
//! proxy's other socket, and answers there because an ICE-lite peer answers whoever checked
//! it. Every datagram is decided once on arrival:
//! 1. lost with probability `loss` (never duplicated then);
//! 2. otherwise sent after `delay + U(0, jitter)`, plus `reorder_extra` with probability
//!    `reorder` (so it overtakes nothing but is overtaken);
//! 3. and with probability `duplicate`, a second copy with its own delay.
//!
//! Reordering thus comes from jitter (two packets 20 ms apart swap when their delays differ by
//! more than 20 ms) and from the explicit hold-back. The proxy counts what it did by packet
//! kind (RFC 7983 first byte; RTCP by packet type), so tests compare the relay's statistics
//! with exactly what was injected.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Faults applied to one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultSpec {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a delivered datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back an extra `reorder_extra`.
    pub reorder: f64,
    pub reorder_extra: Duration,
    /// Every datagram waits `delay` plus a uniform draw in `[0, jitter]`.
    pub delay: Duration,
    pub jitter: Duration,
}

impl FaultSpec {
    /// The network of the issue: 5 % loss, 1 % duplication, 2 % held back 60 ms, 20 ms base
    /// delay with 40 ms of uniform jitter.
    pub fn lossy() -> Self {
        FaultSpec {
            loss: 0.05,
            duplicate: 0.01,
            reorder: 0.02,
            reorder_extra: Duration::from_millis(60),
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(40),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the peer to the relay.
    ToRelay,
    /// From the relay to the peer.
    ToPeer,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToRelay => 0,
            Direction::ToPeer => 1,
        }
    }
}

/// What the proxy did in one direction, by packet kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub sent: u64,
    pub lost: u64,
    pub lost_rtp: u64,
    pub duplicated: u64,
    pub duplicated_rtp: u64,
    pub duplicated_rtcp: u64,
    pub received_rtp: u64,
    /// Datagrams sent after one that arrived later than them.
    pub reordered: u64,
    /// Highest delay drawn (base + jitter + hold-back).
    pub max_delay: Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
    Other,
}

fn kind(data: &[u8]) -> Kind {
    match (data.first(), data.get(1)) {
        (Some(128..=191), Some(pt)) if (200..=204).contains(pt) => Kind::Rtcp,
        (Some(128..=191), Some(_)) => Kind::Rtp,
        _ => Kind::Other,
    }
}

struct Queued {
    at: Instant,
    order: u64,
    /// Arrival index within its direction (for counting reordering).
    arrival: u64,
    dir: Direction,
    data: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// The proxy's decisions without its sockets: datagrams arrive in a direction at `now`, and
/// come out at their delivery time. Seeded, so the same arrivals at the same times give the same
/// faults; the loopback proxy runs it on a thread, simulated-time tests (`relay/tests/
/// sim_call.rs`) call it directly between a peer and the relay.
pub struct FaultNet {
    specs: [FaultSpec; 2],
    stats: [FaultStats; 2],
    rng: StdRng,
    queue: BinaryHeap<Reverse<Queued>>,
    order: u64,
    arrivals: [u64; 2],
    max_sent_arrival: [Option<u64>; 2],
}

impl FaultNet {
    /// Faults off until [`FaultNet::set`].
    pub fn new(seed: u64) -> Self {
        FaultNet {
            specs: [FaultSpec::default(); 2],
            stats: [FaultStats::default(); 2],
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            order: 0,
            arrivals: [0; 2],
            max_sent_arrival: [None; 2],
        }
    }

    /// Faults for datagrams arriving from now on in `dir`.
    pub fn set(&mut self, dir: Direction, spec: FaultSpec) {
        self.specs[dir.index()] = spec;
    }

    pub fn stats(&self, dir: Direction) -> FaultStats {
        self.stats[dir.index()]
    }

    /// Datagrams waiting for their delivery time.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the next datagram is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(q)| q.at)
    }

    /// A datagram arrives in `dir` at `now`: lost, or queued (maybe twice) for its delivery.
    pub fn arrive(&mut self, now: Instant, dir: Direction, data: &[u8]) {
        let d = dir.index();
        let arrival = self.arrivals[d];
        self.arrivals[d] += 1;
        let k = kind(data);
        let spec = self.specs[d];
        let st = &mut self.stats[d];
        st.received += 1;
        st.received_rtp += u64::from(k == Kind::Rtp);
        if self.rng.random_bool(spec.loss.clamp(0.0, 1.0)) {
            st.lost += 1;
            st.lost_rtp += u64::from(k == Kind::Rtp);
            return;
        }
        let copies = if self.rng.random_bool(spec.duplicate.clamp(0.0, 1.0)) {
            st.duplicated += 1;
            st.duplicated_rtp += u64::from(k == Kind::Rtp);
            st.duplicated_rtcp += u64::from(k == Kind::Rtcp);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = spec.jitter.mul_f64(self.rng.random::<f64>());
            let mut delay = spec.delay + jitter;
            if self.rng.random_bool(spec.reorder.clamp(0.0, 1.0)) {
                delay += spec.reorder_extra;
            }
            st.max_delay = st.max_delay.max(delay);
            self.order += 1;
            self.queue.push(Reverse(Queued {
                at: now + delay,
                order: self.order,
                arrival,
                dir,
                data: data.to_vec(),
            }));
        }
    }

    /// The next datagram due by `now`, with its direction. The caller delivers it (and says
    /// whether that worked with [`FaultNet::count_sent`]).
    pub fn poll_due(&mut self, now: Instant) -> Option<(Direction, Vec<u8>)> {
        if self.queue.peek().is_none_or(|Reverse(q)| q.at > now) {
            return None;
        }
        let Reverse(q) = self.queue.pop()?;
        let d = q.dir.index();
        match self.max_sent_arrival[d] {
            Some(max) if q.arrival < max => self.stats[d].reordered += 1,
            _ => self.max_sent_arrival[d] = Some(q.arrival),
        }
        Some((q.dir, q.data))
    }

    pub fn count_sent(&mut self, dir: Direction) {
        self.stats[dir.index()].sent += 1;
    }
}

/// Spawns fault proxies.
pub struct FaultProxy;

impl FaultProxy {
    /// A proxy in front of `peer` (one of its addresses), faults off until
    /// [`FaultHandle::set`]. `seed` makes every decision reproducible for a given arrival order.
    pub fn spawn(peer: SocketAddr, seed: u64) -> io::Result<FaultHandle> {
        let lo = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let near = std::net::UdpSocket::bind(lo)?;
        let far = std::net::UdpSocket::bind(lo)?;
        let relay_facing = near.local_addr()?;
        let peer_facing = far.local_addr()?;
        near.set_nonblocking(true)?;
        far.set_nonblocking(true)?;
        let mut near = UdpSocket::from_std(near);
        let mut far = UdpSocket::from_std(far);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut near, Token(0), Interest::READABLE)?;
        poll.registry()
            .register(&mut far, Token(1), Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(2))?);
        let shared = Arc::new(Mutex::new(FaultNet::new(seed)));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            poll,
            near,
            far,
            peer,
            relay: None,
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || worker.run())?;
        Ok(FaultHandle {
            relay_facing,
            peer_facing,
            shared,
            waker,
            stop,
            thread: Some(thread),
        })
    }
}

/// A running proxy; dropping it stops the thread.
pub struct FaultHandle {
    relay_facing: SocketAddr,
    peer_facing: SocketAddr,
    shared: Arc<Mutex<FaultNet>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultHandle {
    /// Where the relay must send to reach the peer (the peer's address as the relay sees it).
    pub fn relay_facing(&self) -> SocketAddr {
        self.relay_facing
    }
    /// Where the peer sees the relay.
    pub fn peer_facing(&self) -> SocketAddr {
        self.peer_facing
    }
    fn lock(&self) -> MutexGuard<'_, FaultNet> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Faults for datagrams arriving from now on in `dir`.
    pub fn set(&self, dir: Direction, spec: FaultSpec) {
        self.lock().set(dir, spec);
    }
    pub fn stats(&self, dir: Direction) -> FaultStats {
        self.lock().stats(dir)
    }
    /// Datagrams waiting for their delivery time.
    pub fn queued(&self) -> usize {
        self.lock().queued()
    }
}

impl Drop for FaultHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    poll: Poll,
    /// Faces the relay (the relay sees the peer here).
    near: UdpSocket,
    /// Faces the peer (the peer sees the relay here).
    far: UdpSocket,
    peer: SocketAddr,
    /// The relay's socket, learned from its first datagram.
    relay: Option<SocketAddr>,
    /// Shared with the handle (settings, statistics); locked per datagram, a test tool.
    shared: Arc<Mutex<FaultNet>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let mut buf = vec![0u8; 2048];
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .net()
                .poll_timeout()
                .map_or(Duration::from_millis(20), |at| {
                    at.saturating_duration_since(now)
                })
                .min(Duration::from_millis(20));
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return;
            }
            while let Ok((n, from)) = self.near.recv_from(&mut buf) {
                self.relay = Some(from);
                let data = buf.get(..n).unwrap_or_default();
                self.net().arrive(Instant::now(), Direction::ToPeer, data);
            }
            while let Ok((n, from)) = self.far.recv_from(&mut buf) {
                if from != self.peer {
                    continue;
                }
                let data = buf.get(..n).unwrap_or_default();
                self.net().arrive(Instant::now(), Direction::ToRelay, data);
            }
            self.release(Instant::now());
        }
    }

    fn net(&self) -> MutexGuard<'_, FaultNet> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&mut self, now: Instant) {
        let mut net = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((dir, data)) = net.poll_due(now) {
            let sent = match dir {
                Direction::ToPeer => self.far.send_to(&data, self.peer).is_ok(),
                Direction::ToRelay => match self.relay {
                    Some(r) => self.near.send_to(&data, r).is_ok(),
                    None => false,
                },
            };
            if sent {
                net.count_sent(dir);
            }
        }
    }
}

/// Rewrites the SDP so the relay reaches `from` (one of the peer's addresses) at `to` (the
/// proxy): candidate lines, the `m=` port and `c=` line when they name `from`.
pub fn rewrite_candidate(sdp: &str, from: SocketAddr, to: SocketAddr) -> String {
    let (fip, fport) = (from.ip().to_string(), from.port().to_string());
    let (tip, tport) = (to.ip().to_string(), to.port().to_string());
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let end = &line[body.len()..];
        let rewritten = if body.starts_with("a=candidate:") {
            body.replace(&format!(" {fip} {fport} "), &format!(" {tip} {tport} "))
        } else if body.starts_with("m=audio ") {
            body.replacen(
                &format!("m=audio {fport} "),
                &format!("m=audio {tport} "),
                1,
            )
        } else if body == format!("c=IN IP4 {fip}") && fip != tip {
            format!("c=IN IP4 {tip}")
        } else {
            body.to_string()
        };
        out.push_str(&rewritten);
        out.push_str(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_named_address() {
        let sdp = "v=0\r\nm=audio 4000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\n\
                   a=candidate:0 1 udp 2122260223 127.0.0.1 4000 typ host\r\n\
                   a=candidate:1 1 udp 2122260222 ::1 4001 typ host\r\n";
        let out = rewrite_candidate(
            sdp,
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
        );
        assert!(out.contains("m=audio 5000 "));
        assert!(out.contains(" 127.0.0.1 5000 typ host\r\n"));
        assert!(out.contains(" ::1 4001 typ host\r\n"));
        assert!(!out.contains("4000"));
    }

    #[test]
    fn the_same_seed_and_arrivals_give_the_same_network() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut net = FaultNet::new(seed);
            net.set(Direction::ToRelay, FaultSpec::lossy());
            let mut out = Vec::new();
            for i in 0..500u32 {
                let at = t0 + Duration::from_millis(20) * i;
                net.arrive(
                    at,
                    Direction::ToRelay,
                    &[0x80, 111, (i >> 8) as u8, i as u8],
                );
                while let Some((_, d)) = net.poll_due(at) {
                    out.push((at, d));
                }
            }
            while let Some(at) = net.poll_timeout() {
                while let Some((_, d)) = net.poll_due(at) {
                    out.push((at, d));
                }
            }
            (out, net.stats(Direction::ToRelay))
        };
        let (a, sa) = run(9);
        let (b, sb) = run(9);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_eq!(a.len() as u64, 500 - sa.lost + sa.duplicated);
        assert!(sa.lost > 0 && sa.duplicated > 0 && sa.reordered > 0);
        assert!(sa.max_delay <= Duration::from_millis(120));
        assert_ne!(run(10).1, sa, "another seed, other faults");
    }

    #[test]
    fn delivers_with_the_configured_faults() {
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        relay
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let proxy = FaultProxy::spawn(peer.local_addr().unwrap(), 7).unwrap();
        // The relay speaks first (as its checks do), so the proxy learns where it is.
        relay.send_to(&[0, 1, 0, 0], proxy.relay_facing()).unwrap();
        let mut buf = [0u8; 64];
        let (_, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(from, proxy.peer_facing());
        proxy.set(
            Direction::ToRelay,
            FaultSpec {
                loss: 0.5,
                duplicate: 0.0,
                ..FaultSpec::default()
            },
        );
        for i in 0..400u16 {
            let mut p = [0x80u8, 111, 0, 0];
            p[2..4].copy_from_slice(&i.to_be_bytes());
            peer.send_to(&p, proxy.peer_facing()).unwrap();
            if i % 20 == 19 {
                // Paced, so the proxy's socket buffer never overflows on a busy machine.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.stats(Direction::ToRelay).received < 400 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = 0;
        while got < proxy.stats(Direction::ToRelay).sent && relay.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        let st = proxy.stats(Direction::ToRelay);
        assert_eq!(st.received, 400);
        assert_eq!(st.received_rtp, 400);
        assert_eq!(st.lost + st.sent, 400);
        assert_eq!(got, st.sent);
        // 400 fair coin flips: 200 ± 5 sigma.
        assert!((150..=250).contains(&st.lost), "lost {}", st.lost);
    }
}
