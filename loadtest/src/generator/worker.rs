//! One generator thread: a mio poll loop over its sockets, a timer heap of 20 ms media ticks,
//! and a command queue from the orchestrator.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use e2e::rtp::unix_micros;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use relay::engine::udp::{BATCH, BUF_SIZE, RecvBatch, SendBatch, enable_timestamps};

use super::timerfd::TimerFd;
use crate::generator::{Command, NewCall, PeerSocket, Spacing};
use crate::peer::media::PTIME;
use crate::peer::sip::SipPeer;
use crate::peer::wa::WaPeer;
use crate::stats::{FLUSH_EVERY, Totals};

pub(super) const WAKER: Token = Token(usize::MAX);
/// The timerfd that wakes the thread for the next due stream (`Spacing::Even`).
const TIMER: Token = Token(usize::MAX - 1);
/// Tokens of per-peer sockets start here: OWN_BASE + 2 * slot + side.
const OWN_BASE: usize = 1 << 20;
/// A tick later than this is skipped rather than sent in a burst.
const MAX_LAG: Duration = Duration::from_millis(100);
/// Datagrams from an address no call knows yet are held this long: the relay starts ICE while
/// CreateCall is still being answered, before this thread has the call. A socket of its own
/// would hold them in its buffer; the shared sockets hold them here.
const EARLY_HOLD: Duration = Duration::from_millis(500);
const EARLY_MAX: usize = 4096;
/// Longest sleep with nothing scheduled (commands wake the thread anyway).
const IDLE: Duration = Duration::from_millis(50);
/// With calls up, shared sockets are read at least this often. They are not registered for
/// readiness: waking per datagram would cost the generator a wakeup per packet, and the kernel
/// timestamps each datagram's arrival, so reading a little later does not skew latency.
const SHARED_POLL: Duration = Duration::from_millis(1);
/// 1/φ: stream k's phase is frac(k / φ) of the packet time, a sequence that stays evenly
/// spread over the period for any number of streams (each new phase falls in the largest gap).
const GOLDEN: f64 = 0.618_033_988_749_895;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    Meta,
    Sip,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Meta => 0,
            Side::Sip => 1,
        }
    }
}

struct Slot {
    id: u64,
    meta: WaPeer,
    sip: SipPeer,
    /// The relay addresses that map to this call (removed from the demux map at the end).
    remotes: Vec<SocketAddr>,
    own: Option<[UdpSocket; 2]>,
    audio: bool,
    /// Each stream's tick currently in the heap, [Meta peer, SIP peer] (stale heap entries
    /// don't match it).
    next_tick: [Option<Instant>; 2],
    /// Each stream's offset in the 20 ms period (`Spacing::Even`).
    phase: [Duration; 2],
    created_at: Instant,
    ready: Option<tokio::sync::oneshot::Sender<Result<Instant, String>>>,
    setup_done: bool,
}

/// The calls of one thread, addressed by slot.
struct Calls {
    spacing: Spacing,
    /// Origin of the 20 ms grid the even phases are placed on.
    epoch: Instant,
    /// Streams given a phase so far (the golden-ratio sequence's index).
    streams: u64,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    demux: HashMap<SocketAddr, (usize, Side)>,
    /// Slots whose Meta peer is not ready yet (DTLS timers, readiness checks).
    pending: Vec<usize>,
    /// Media ticks: (when, slot, side index). Entries that no longer match the slot's
    /// `next_tick` are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, usize, usize)>>,
    /// Datagrams that arrived before their call was added (see [`EARLY_HOLD`]).
    early: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

struct Io {
    rx: RecvBatch,
    meta_out: SendBatch,
    sip_out: SendBatch,
    scratch: Box<[u8; BUF_SIZE]>,
}

pub(super) struct Worker {
    poll: Poll,
    commands: Receiver<Command>,
    /// Shared sockets: Meta pool at tokens 0..n, SIP pool at n..2n.
    pool: Vec<UdpSocket>,
    pool_half: usize,
    calls: Calls,
    io: Io,
    local: Totals,
    shared: Arc<Mutex<Totals>>,
    last_publish: Instant,
    /// Wakes the thread at the next stream's instant (`Spacing::Even`; poll timeouts only
    /// have millisecond resolution).
    timer: Option<TimerFd>,
    /// When the shared sockets were last read.
    last_drain: Instant,
}

impl Worker {
    pub(super) fn new(
        poll: Poll,
        commands: Receiver<Command>,
        meta_pool: Vec<std::net::UdpSocket>,
        sip_pool: Vec<std::net::UdpSocket>,
        shared: Arc<Mutex<Totals>>,
        spacing: Spacing,
    ) -> io::Result<Worker> {
        let pool_half = meta_pool.len();
        let mut pool = Vec::new();
        for s in meta_pool.into_iter().chain(sip_pool) {
            enable_timestamps(s.as_raw_fd());
            pool.push(UdpSocket::from_std(s));
        }
        let timer = match spacing {
            Spacing::Even => {
                let t = TimerFd::new()?;
                poll.registry().register(
                    &mut mio::unix::SourceFd(&t.fd()),
                    TIMER,
                    Interest::READABLE,
                )?;
                Some(t)
            }
            Spacing::Burst => None,
        };
        let now = Instant::now();
        Ok(Worker {
            poll,
            commands,
            pool,
            pool_half,
            calls: Calls {
                spacing,
                epoch: now,
                streams: 0,
                slots: Vec::new(),
                free: Vec::new(),
                by_id: HashMap::new(),
                demux: HashMap::new(),
                pending: Vec::new(),
                timers: BinaryHeap::new(),
                early: VecDeque::new(),
            },
            io: Io {
                rx: RecvBatch::with_timestamps(),
                meta_out: SendBatch::new(),
                sip_out: SendBatch::new(),
                scratch: Box::new([0u8; BUF_SIZE]),
            },
            local: Totals::default(),
            shared,
            last_publish: now,
            timer,
            last_drain: now,
        })
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut ready: Vec<Token> = Vec::with_capacity(1024);
        if self.timer.is_some() {
            // Timer slack (50 µs by default) would bunch the evenly spaced sends.
            crate::os::set_timer_slack(1);
        }
        loop {
            let now = Instant::now();
            let polling_shared = !self.calls.by_id.is_empty() && !self.pool.is_empty();
            let deadline = [
                self.calls.timers.peek().map(|Reverse((t, _, _))| *t),
                self.calls.next_dtls_timeout(),
                Some(self.last_publish + FLUSH_EVERY),
                polling_shared.then_some(self.last_drain + SHARED_POLL),
            ]
            .into_iter()
            .flatten()
            .min();
            let cap = if polling_shared { SHARED_POLL } else { IDLE };
            let sleep = deadline.map_or(cap, |d| d.saturating_duration_since(now).min(cap));
            let timeout = match &self.timer {
                // The timerfd wakes us at the deadline to the nanosecond; the poll timeout is
                // only a backstop.
                Some(t) if !sleep.is_zero() => {
                    t.arm(sleep);
                    Some(IDLE)
                }
                _ => Some(sleep),
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return;
            }
            ready.clear();
            ready.extend(events.iter().map(|e| e.token()));
            let mut commands = false;
            let now = Instant::now();
            if self.timer.is_none() || now >= self.last_drain + SHARED_POLL {
                self.last_drain = now;
                for i in 0..self.pool.len() {
                    self.drain(Token(i));
                }
            }
            for t in &ready {
                if *t == WAKER {
                    commands = true;
                } else if *t != TIMER {
                    self.drain(*t);
                }
            }
            if commands && !self.commands() {
                self.publish();
                return;
            }
            let now = Instant::now();
            self.run_timers(now);
            self.calls.poll_pending(now, &mut self.io.meta_out);
            self.io.meta_out.flush();
            self.io.sip_out.flush();
            if now >= self.last_publish + FLUSH_EVERY {
                self.publish();
            }
        }
    }

    fn fd_of(&self, token: Token) -> Option<RawFd> {
        if let Some(s) = self.pool.get(token.0) {
            return Some(s.as_raw_fd());
        }
        let i = token.0.checked_sub(OWN_BASE)?;
        let slot = self.calls.slots.get(i / 2)?.as_ref()?;
        slot.own.as_ref().map(|o| o[i % 2].as_raw_fd())
    }

    /// Reads everything queued on one socket.
    fn drain(&mut self, token: Token) {
        let Some(fd) = self.fd_of(token) else { return };
        // A peer's own socket belongs to one stream: what arrives there is that stream's,
        // whatever its source (a target with one socket for all calls has one source).
        let owner = token.0.checked_sub(OWN_BASE).map(|i| {
            let side = if i % 2 == 0 { Side::Meta } else { Side::Sip };
            (i / 2, side)
        });
        loop {
            let n = match self.io.rx.recv(fd) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = Instant::now();
            let now_us = unix_micros();
            for i in 0..n {
                let stamp = self.io.rx.timestamp_us(i);
                let (buf, len, from) = self.io.rx.get(i);
                let Some(from) = from else {
                    continue;
                };
                let data = &mut buf[..len];
                // Kernel arrival time if we have it: latency excludes our own read delay.
                let arrived_us = stamp.unwrap_or(now_us).min(now_us);
                self.calls.dispatch(
                    now,
                    arrived_us,
                    from,
                    owner,
                    data,
                    &mut self.io.meta_out,
                    &mut self.local,
                );
            }
            // A short batch took everything queued: no need for a read that finds nothing
            // (edge-triggered epoll reports the next datagram anyway; shared sockets are read
            // again within SHARED_POLL).
            if n < BATCH {
                return;
            }
        }
    }

    /// Handles queued commands; `false` when told to stop.
    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Add(call) => self.add(*call),
                Command::Media { id, on } => {
                    let now = Instant::now();
                    if let Some(&i) = self.calls.by_id.get(&id)
                        && let Some(Some(slot)) = self.calls.slots.get_mut(i)
                    {
                        slot.audio = on;
                        // Burst: audio starts now, both streams together, not at the next
                        // tick of the RTCP schedule. Even: each stream keeps its phase.
                        if on && self.calls.spacing == Spacing::Burst {
                            for side in 0..2 {
                                slot.next_tick[side] = Some(now);
                                self.calls.timers.push(Reverse((now, i, side)));
                            }
                        }
                    }
                }
                Command::Remove(id) => self.remove(id),
                Command::Flush(done) => {
                    self.io.meta_out.flush();
                    self.io.sip_out.flush();
                    self.publish();
                    let _ = done.send(());
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn add(&mut self, call: NewCall) {
        let NewCall {
            id,
            mut meta,
            meta_socket,
            meta_remotes,
            mut sip,
            sip_socket,
            sip_remote,
            created_at,
            ready,
        } = call;
        let i = self.calls.free.pop().unwrap_or_else(|| {
            self.calls.slots.push(None);
            self.calls.slots.len() - 1
        });
        let mut own: Vec<UdpSocket> = Vec::new();
        for (side, sock) in [(0usize, meta_socket), (1, sip_socket)] {
            let fd = match sock {
                PeerSocket::Pool(p) => {
                    let index = if side == 0 { p } else { self.pool_half + p };
                    self.pool.get(index).map(|s| s.as_raw_fd())
                }
                PeerSocket::Own(s) => {
                    enable_timestamps(s.as_raw_fd());
                    let mut s = UdpSocket::from_std(s);
                    let token = Token(OWN_BASE + 2 * i + side);
                    if self
                        .poll
                        .registry()
                        .register(&mut s, token, Interest::READABLE)
                        .is_err()
                    {
                        None
                    } else {
                        let fd = s.as_raw_fd();
                        own.push(s);
                        Some(fd)
                    }
                }
            };
            let Some(fd) = fd else {
                let _ = ready.send(Err("generator socket unavailable".into()));
                self.calls.free.push(i);
                return;
            };
            if side == 0 {
                meta.attach(fd);
            } else {
                sip.attach(fd);
            }
        }
        let own = match <[UdpSocket; 2]>::try_from(own) {
            Ok(o) => Some(o),
            Err(v) if v.is_empty() => None,
            Err(_) => {
                let _ = ready.send(Err("mixed pool and own sockets".into()));
                self.calls.free.push(i);
                return;
            }
        };
        let phase = [(); 2].map(|()| {
            let k = self.calls.streams;
            self.calls.streams += 1;
            PTIME.mul_f64((k as f64 * GOLDEN).fract())
        });
        let mut remotes = meta_remotes;
        for r in &remotes {
            self.calls.demux.insert(*r, (i, Side::Meta));
        }
        self.calls.demux.insert(sip_remote, (i, Side::Sip));
        remotes.push(sip_remote);
        self.calls.by_id.insert(id, i);
        if let Some(s) = self.calls.slots.get_mut(i) {
            *s = Some(Slot {
                id,
                meta,
                sip,
                remotes,
                own,
                audio: false,
                next_tick: [None; 2],
                phase,
                created_at,
                ready: Some(ready),
                setup_done: false,
            });
        }
        self.calls.pending.push(i);
        let now = Instant::now();
        self.calls
            .replay_early(now, &mut self.io.meta_out, &mut self.local);
        // Plain mode is ready at once; DTLS peers once their handshake completes.
        self.calls.check_ready(i, now);
    }

    fn remove(&mut self, id: u64) {
        let Some(i) = self.calls.by_id.remove(&id) else {
            return;
        };
        let Some(slot) = self.calls.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        for r in &slot.remotes {
            if self.calls.demux.get(r).is_some_and(|(s, _)| *s == i) {
                self.calls.demux.remove(r);
            }
        }
        if let Some(mut own) = slot.own {
            for s in &mut own {
                let _ = self.poll.registry().deregister(s);
            }
        }
        if slot.meta.rx.first_at.is_some() {
            self.local.down.jitter.record(slot.meta.rx.jitter_us());
        }
        if slot.sip.rx.first_at.is_some() {
            self.local.up.jitter.record(slot.sip.rx.jitter_us());
        }
        self.calls.pending.retain(|p| *p != i);
        if let Some(tx) = slot.ready {
            let _ = tx.send(Err("call removed before it was ready".into()));
        }
        self.calls.free.push(i);
        debug_assert_eq!(slot.id, id);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, i, side))) = self.calls.timers.peek().copied() {
            if at > now {
                break;
            }
            self.calls.timers.pop();
            let Some(Some(slot)) = self.calls.slots.get_mut(i) else {
                continue;
            };
            if slot.next_tick[side] != Some(at) {
                continue; // stale: the call was removed, replaced, or rescheduled
            }
            let late = now.saturating_duration_since(at);
            self.local.tick_lag.record(late.as_micros() as u64);
            let unix_us = unix_micros();
            let scratch = &mut self.io.scratch[..];
            if side == Side::Meta.index() {
                slot.meta.tick(
                    now,
                    unix_us,
                    slot.audio,
                    scratch,
                    &mut self.io.meta_out,
                    &mut self.local,
                );
            } else {
                slot.sip.tick(
                    now,
                    unix_us,
                    slot.audio,
                    scratch,
                    &mut self.io.sip_out,
                    &mut self.local,
                );
            }
            let mut next = at + PTIME;
            if late > MAX_LAG {
                // Resume the cadence instead of bursting what is overdue (as a real endpoint
                // after a stall), on the same phase; the receiver sees no gap in the stamp
                // counters.
                let missed = late.as_nanos() / PTIME.as_nanos();
                self.local.ticks_skipped += missed as u64;
                next = at + PTIME * (missed as u32 + 1);
            }
            slot.next_tick[side] = Some(next);
            self.calls.timers.push(Reverse((next, i, side)));
        }
    }

    fn publish(&mut self) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.merge(&self.local);
        drop(shared);
        self.local = Totals::default();
        self.last_publish = Instant::now();
    }
}

impl Calls {
    /// Hands one datagram to its peer: `owner` when it came on a peer's own socket, else the
    /// call that expects its source address.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        now: Instant,
        now_us: u64,
        from: SocketAddr,
        owner: Option<(usize, Side)>,
        data: &mut [u8],
        meta_out: &mut SendBatch,
        totals: &mut Totals,
    ) {
        let Some((i, side)) = owner.or_else(|| self.demux.get(&from).copied()) else {
            while self
                .early
                .front()
                .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > EARLY_HOLD)
                || self.early.len() >= EARLY_MAX
            {
                self.early.pop_front();
                totals.unknown_source += 1;
            }
            self.early.push_back((now, from, data.to_vec()));
            return;
        };
        let Some(Some(slot)) = self.slots.get_mut(i) else {
            totals.unknown_source += 1;
            return;
        };
        match side {
            Side::Meta => slot.meta.handle(now, now_us, from, data, meta_out, totals),
            Side::Sip => slot.sip.handle(now, now_us, data, totals),
        }
        if !slot.setup_done
            && let (Some(a), Some(b)) = (slot.meta.rx.first_at, slot.sip.rx.first_at)
        {
            slot.setup_done = true;
            totals.setups += 1;
            let both = a.max(b).saturating_duration_since(slot.created_at);
            totals.setup.record(both.as_micros() as u64);
        }
        if slot.ready.is_some() {
            self.check_ready(i, now);
        }
    }

    /// Tells the orchestrator once slot `i`'s Meta peer is ready (or failed), and starts its
    /// tick schedule (RTCP now, audio once told).
    fn check_ready(&mut self, i: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(i) else {
            return;
        };
        let outcome = if slot.meta.is_ready() {
            Ok(now)
        } else if let Some(why) = slot.meta.failure() {
            Err(why.to_string())
        } else {
            return;
        };
        let ok = outcome.is_ok();
        if let Some(tx) = slot.ready.take() {
            let _ = tx.send(outcome);
        }
        if ok {
            // Start the tick schedule (RTCP now, audio once told). Burst: a random phase per
            // call, both streams together. Even: each stream on its own phase of the grid.
            let random = now + PTIME.mul_f64(rand::random::<f64>());
            for side in 0..2 {
                let first = match self.spacing {
                    Spacing::Burst => random,
                    Spacing::Even => next_on_grid(self.epoch, slot.phase[side], now),
                };
                slot.next_tick[side] = Some(first);
                self.timers.push(Reverse((first, i, side)));
            }
        }
        self.pending.retain(|p| *p != i);
    }

    /// Feeds held datagrams whose source is now known to their call.
    fn replay_early(&mut self, now: Instant, out: &mut SendBatch, totals: &mut Totals) {
        if self.early.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.early);
        let now_us = unix_micros();
        for (at, from, mut data) in held {
            if self.demux.contains_key(&from) {
                let age = now.saturating_duration_since(at).as_micros() as u64;
                self.dispatch(
                    now,
                    now_us.saturating_sub(age),
                    from,
                    None,
                    &mut data,
                    out,
                    totals,
                );
            } else {
                self.early.push_back((at, from, data));
            }
        }
    }

    fn next_dtls_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter_map(|i| self.slots.get(*i)?.as_ref()?.meta.dtls_timeout())
            .min()
    }

    fn poll_pending(&mut self, now: Instant, out: &mut SendBatch) {
        let mut k = 0;
        while let Some(&i) = self.pending.get(k) {
            if let Some(Some(slot)) = self.slots.get_mut(i) {
                slot.meta.poll_dtls(now, out);
            }
            let before = self.pending.len();
            self.check_ready(i, now);
            if self.pending.len() == before {
                k += 1;
            }
        }
    }
}

/// The first instant at or after `now` that lies `phase` past a multiple of the packet time
/// from `epoch`.
fn next_on_grid(epoch: Instant, phase: Duration, now: Instant) -> Instant {
    let origin = epoch + phase;
    let since = now.saturating_duration_since(origin).as_nanos();
    let period = PTIME.as_nanos();
    let periods = since.div_ceil(period) as u32;
    (origin + PTIME * periods).max(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_instants_keep_their_phase_and_never_precede_now() {
        let epoch = Instant::now();
        let phase = Duration::from_millis(7);
        assert_eq!(next_on_grid(epoch, phase, epoch), epoch + phase);
        let now = epoch + Duration::from_millis(30);
        assert_eq!(
            next_on_grid(epoch, phase, now),
            epoch + Duration::from_millis(47)
        );
        let now = epoch + Duration::from_millis(27);
        assert_eq!(next_on_grid(epoch, phase, now), now);
    }

    #[test]
    fn golden_ratio_phases_stay_evenly_spread() {
        // However many streams there are, no gap between neighbouring phases is more than
        // about 2.6 times the even gap (the three-distance theorem bounds it by φ²).
        for n in [10usize, 400, 2000] {
            let mut p: Vec<f64> = (0..n).map(|k| (k as f64 * GOLDEN).fract()).collect();
            p.sort_by(f64::total_cmp);
            let widest = p
                .windows(2)
                .map(|w| w[1] - w[0])
                .chain([1.0 - p[n - 1] + p[0]])
                .fold(0.0, f64::max);
            assert!(widest * n as f64 <= 2.7, "n={n}: widest gap {widest}");
        }
    }
}
