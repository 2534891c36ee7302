//! The shard's core, sans-IO: the slot table of calls, command handling, event forwarding and
//! the deadline heap. It never touches a socket or reads the clock: a driver (see
//! [`super::driver`]) hands it completions — "datagram from A arrived on socket S of the call
//! in slot K" ([`ShardCore::on_datagram`]), "command C" ([`ShardCore::on_command`]) — with
//! `now`, and it pushes the datagrams to send into the driver's [`ShardIo`]. So the same code
//! runs under io_uring, epoll, and the scenario tests below, which run 10,000 calls' timers in
//! simulated time.
//!
//! A call's sockets are a list indexed by a small integer ([`SocketRef::index`]); a
//! [`SockKey`] names one of them as (slot, generation, socket index). The generation changes
//! whenever a slot is freed, so a completion still in flight for a removed call (io_uring
//! delivers them after the socket is gone) is recognised as stale, never handed to the call
//! that reused the slot.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;

use crate::api::{
    ApiError, CallEvent, CallEventKind, CallInfo, EndCause, InternalLegReplaced, InternalLegSpec,
    LegKind,
};
use crate::call::stats::DropReason;
use crate::call::{Advertised, Call, LocalSockets};
use crate::engine::ShardStats;
use crate::engine::ratelimit::{RateLimitConfig, RateLimiter};
use crate::engine::snapshot::ShardTotals;
use crate::engine::timers::TimerHeap;
use crate::net::{Outbox, SocketRef};

/// Timer resolution: the shard wakes this long after the earliest deadline, and runs every call
/// due by then, so a thousand 20 ms timers do not mean a thousand wake-ups. Waking late rather
/// than running calls early keeps `now` honest (a call run before its deadline does nothing and
/// must run again), and gives a datagram that arrives just after a fill deadline the chance to
/// be handled first.
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How often a shard folds its counters into the published snapshot (metrics resolution).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Bits of a [`SockKey`]'s encoding (see [`SockKey::encode`]).
const SLOT_BITS: u32 = 32;
const SOCKET_BITS: u32 = 10;
const GENERATION_BITS: u32 = 19;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
const SOCKET_MASK: u64 = (1 << SOCKET_BITS) - 1;
/// Marks a socket's connected twin in an encoded [`SockKey`] (above the generation).
pub(crate) const TWIN_BIT: u64 = 1 << (SLOT_BITS + SOCKET_BITS + GENERATION_BITS);

/// A call's place in the shard: its slot index and the slot's generation when it was inserted.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SlotKey {
    pub slot: u32,
    pub generation: u32,
}

/// One socket of one call: the call's [`SlotKey`] and the socket's index in the call's list.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SockKey {
    pub call: SlotKey,
    pub socket: u16,
}

impl SockKey {
    /// The largest socket index a key can carry (a call with more sockets than this cannot be
    /// inserted).
    pub(crate) const MAX_SOCKETS: usize = 1 << SOCKET_BITS;

    /// The key as 61 bits (slot 32, socket index 10, generation 19), for an io_uring
    /// `user_data` or a mio token. The top two bits are left at zero for the driver's own
    /// tags (waker, send completions), and bit 61 for [`TWIN_BIT`].
    pub(crate) fn encode(self) -> u64 {
        u64::from(self.call.slot)
            | (u64::from(self.socket) & SOCKET_MASK) << SLOT_BITS
            | u64::from(self.call.generation & GENERATION_MASK) << (SLOT_BITS + SOCKET_BITS)
    }

    /// The key of the socket's connected twin (see [`ShardIo::connect_twin`]): the same key
    /// with [`TWIN_BIT`] set, so a driver tells the twin's completions from the primary's.
    /// [`SockKey::decode`] ignores the bit: the core sees the primary's key either way.
    pub(crate) fn encode_twin(self) -> u64 {
        self.encode() | TWIN_BIT
    }

    pub(crate) fn decode(v: u64) -> SockKey {
        SockKey {
            call: SlotKey {
                slot: v as u32,
                generation: (v >> (SLOT_BITS + SOCKET_BITS)) as u32 & GENERATION_MASK,
            },
            socket: ((v >> SLOT_BITS) & SOCKET_MASK) as u16,
        }
    }
}

/// The [`SocketRef`] a socket index stands for (the call speaks `SocketRef`, the engine
/// indices). The one place that maps between them.
fn socket_ref(index: u16) -> Option<SocketRef> {
    u8::try_from(index).ok().map(SocketRef::new)
}

/// What the core needs from the I/O below it. Implemented by each driver's send side, and by
/// a recording stub in the tests.
pub(crate) trait ShardIo {
    /// Queue `data` to `to` from socket `via`. A key whose call is gone is dropped.
    fn send(&mut self, via: SockKey, to: SocketAddr, data: &[u8]);
    /// A new call's sockets, in [`SocketRef::index`] order (`None` for one not bound): start
    /// receiving on them.
    fn attach(&mut self, call: SlotKey, sockets: Vec<Option<UdpSocket>>);
    /// The call ended: stop receiving on its sockets and close them once the datagrams already
    /// queued on them (the RTCP BYEs) have left.
    fn detach(&mut self, call: SlotKey);
    /// A live call gained socket `key.socket` (a fork's leg): start receiving on it. An error
    /// (no such call, the driver cannot take it) leaves nothing registered.
    fn attach_socket(&mut self, key: SockKey, socket: UdpSocket) -> std::io::Result<()> {
        drop((key, socket));
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this driver cannot add a socket to a live call",
        ))
    }
    /// A live call gave socket `key` back: stop receiving on it and close it once what is
    /// queued on it has left. Unknown keys are ignored.
    fn detach_socket(&mut self, key: SockKey) {
        let _ = key;
    }
    /// Are datagrams waiting unread on socket `key` (in the kernel's queue, not yet handed to
    /// the core)? Asked when a call's silence fill is due, never per packet. Unknown keys: no.
    fn queued(&mut self, key: SockKey) -> bool {
        let _ = key;
        false
    }
    /// Socket `key`'s peer became `peer` (`Some`: fixed, `None`: no longer fixed). The driver
    /// closes the socket's connected twin, if any, and with `Some` opens a new one: a socket
    /// with `SO_REUSEPORT` bound to the same local address and `connect`ed to the peer. The
    /// kernel then delivers the peer's datagrams to the twin (a connected socket outscores the
    /// unconnected primary in the reuseport group) and every other source's to the primary;
    /// the driver hands the twin's datagrams to the core under `key` (the call cannot tell),
    /// and sends to the peer go out on the twin without an address (no route lookup per
    /// send). A twin that cannot be opened is counted ([`IoCounters::twin_failures`]); sends
    /// then stay on the primary. Unknown keys are ignored.
    ///
    /// What a switch can lose: datagrams from the old peer still queued on the old twin when
    /// it closes (the receive is cancelled and the socket closed after the turn's submit).
    /// Datagrams from the new peer arrive on the primary until the new twin is connected, so
    /// none of those are lost.
    fn connect_twin(&mut self, key: SockKey, peer: Option<SocketAddr>) {
        let _ = (key, peer);
    }
}

/// Requests from the control plane. Replies go back on tokio oneshots (a plain send, no
/// runtime needed on the shard thread).
pub(crate) enum Command {
    Insert {
        call: Box<Call>,
        sockets: CallSockets,
        reply: tokio::sync::oneshot::Sender<()>,
    },
    OpenGate {
        call_id: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, ApiError>>,
    },
    SetRemote {
        call_id: String,
        leg: LegKind,
        sdp: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, ApiError>>,
    },
    /// Transfer: a new internal peer for the call (sockets stay, the SDP is rebuilt).
    ReplaceInternal {
        call_id: String,
        spec: InternalLegSpec,
        advertised: Advertised,
        /// The new peer is a voice bot: its connected WebSocket.
        bot: Option<crate::bot::client::BotAttach>,
        reply: tokio::sync::oneshot::Sender<Result<InternalLegReplaced, ApiError>>,
    },
    Terminate {
        call_id: String,
        cause: EndCause,
        reply: tokio::sync::oneshot::Sender<Option<CallInfo>>,
    },
    Get {
        call_id: String,
        reply: tokio::sync::oneshot::Sender<Option<CallInfo>>,
    },
    List {
        reply: tokio::sync::oneshot::Sender<Vec<CallInfo>>,
    },
    /// End every call with `cause` (drain deadline); the shard keeps running.
    EndAll {
        cause: EndCause,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// A call's recording: start (files already created), stop, pause, resume, status.
    Record {
        call_id: String,
        req: crate::call::fork::RecordRequest,
        reply: tokio::sync::oneshot::Sender<Result<Option<crate::api::RecordingStatus>, ApiError>>,
    },
    /// A call's listen-in: stop or status (a start comes with its socket: `WithNewSocket`).
    Listen {
        call_id: String,
        req: crate::call::fork::ListenRequest,
        reply: tokio::sync::oneshot::Sender<Result<Option<crate::api::ListenStatus>, ApiError>>,
    },
    /// Give a live call one more socket (bound by the control plane) and run `run` with it.
    WithNewSocket {
        call_id: String,
        socket: UdpSocket,
        run: NewSocketFn,
    },
    /// End every call (`Drained`) and stop the thread.
    Stop,
}

/// What a closure run on a call's shard with a socket the call just gained gets (see
/// `EngineHandle::with_new_socket`).
pub struct NewSocket<'a> {
    pub call: &'a mut Call,
    /// The socket's place in the call's list: datagrams on it reach
    /// [`Call::handle_datagram`] with this `via`, and the call sends on it with this `via`.
    pub id: SocketRef,
    /// Where it is bound (its port goes into the SDP of the leg that uses it).
    pub local: SocketAddr,
    pub now: Instant,
    /// Sends queued here leave on the call's sockets (this one included).
    pub out: &'a mut dyn Outbox,
}

/// Runs on the shard with the call and its new socket, or the reason there is none; it
/// replies to its requester itself and returns whether the call keeps the socket.
pub(crate) type NewSocketFn =
    Box<dyn for<'a> FnOnce(Result<NewSocket<'a>, ApiError>) -> bool + Send>;

/// The sockets bound for one call: a list indexed by [`SocketRef::index`].
pub(crate) struct CallSockets {
    pub sockets: Vec<Option<UdpSocket>>,
}

/// What a driver counted since it started (the core publishes it with its own counters).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct IoCounters {
    pub sent: u64,
    /// Datagrams the kernel refused (buffer full, unreachable) or that could not be queued:
    /// counted, never retried.
    pub send_errors: u64,
    pub recv_errors: u64,
    /// io_uring under pressure: sends dropped because every send slot was in flight (also in
    /// `send_errors`), and receives stopped because the buffer ring was empty (the datagrams
    /// waited in their sockets). Always 0 on epoll.
    pub send_slots_full: u64,
    pub recv_ring_dry: u64,
    /// Connected twins open now (see [`ShardIo::connect_twin`]), and twins that could not be
    /// opened (socket, bind or connect refused; sends then stay on the primary).
    pub twins: u64,
    pub twin_failures: u64,
    /// System calls the driver made, by [`crate::engine::IO_SYSCALLS`] kind.
    pub syscalls: [u64; crate::engine::IO_SYSCALLS.len()],
}

struct Slot {
    call: Box<Call>,
    generation: u32,
    /// The call's socket list: each socket's local address by index (for a replaced internal
    /// leg's SDP), `None` for one not bound or given back. Only grows: its length is the next
    /// index a socket added to the live call gets, so an index is never reused within a call.
    local: Vec<Option<SocketAddr>>,
    /// The time of this call's live heap entry (see [`TimerHeap`]).
    armed: Option<Instant>,
    /// The call transcodes (counted in [`ShardStats::transcoding`]).
    transcodes: bool,
}

/// The engine's [`Outbox`] for one call: names the call's socket and queues into the driver.
struct SlotOutbox<'a, I> {
    io: &'a mut I,
    call: SlotKey,
}

impl<I: ShardIo> Outbox for SlotOutbox<'_, I> {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]) {
        self.io.send(
            SockKey {
                call: self.call,
                socket: via.index() as u16,
            },
            to,
            data,
        );
    }

    fn queued(&mut self, via: SocketRef) -> bool {
        self.io.queued(SockKey {
            call: self.call,
            socket: via.index() as u16,
        })
    }
}

pub(crate) struct ShardCore {
    id: usize,
    events_out: Sender<CallEvent>,
    slots: Vec<Option<Slot>>,
    /// Each slot's current generation (bumped when the slot is freed).
    generations: Vec<u32>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    timers: TimerHeap,
    /// Scratch for [`Self::run_timers`]: the slots due this turn (kept to reuse its capacity).
    due: Vec<u32>,
    stats: Arc<ShardStats>,
    /// Counters of calls that ended, plus setup/end histograms; live calls are added at publish.
    totals: ShardTotals,
    published: Arc<std::sync::Mutex<ShardTotals>>,
    next_publish: Instant,
    /// Time spent working (not waiting for I/O) since the last publish.
    busy: Duration,
    last_publish: Instant,
    /// Packets in + out at the last publish, for the packets/s figure.
    packets_at_publish: u64,
    packets_in: u64,
    /// Completions for a call that is gone (its slot freed or reused).
    stale: u64,
    /// Timer entries that found their call due (the work the heap saves is the difference to
    /// "every call every turn").
    timer_runs: u64,
    /// Budget of datagrams from sources no call knows, and what it dropped per leg
    /// (WhatsApp, internal).
    limiter: RateLimiter,
    rate_limited: [u64; 2],
    /// Live calls' quality, sampled once a second into the totals.
    quality: crate::ops::quality::QualitySampler,
    /// The shard thread's CPU demand, when measured ([`Self::measure_thread_demand`]).
    demand: Option<ThreadDemand>,
    /// Give sockets whose peer is fixed a connected twin (`EngineConfig::connect_twins`).
    connect_twins: bool,
    /// The process's CPU limit, when known ([`Self::set_cpu_budget`]): the busy share counts
    /// run time against this shard's part of it.
    cpu: Option<Arc<crate::engine::cpu_limit::CpuBudget>>,
    /// How late turns with a due timer started behind it, for the once-a-second p99.
    lateness: crate::engine::snapshot::Lateness,
}

/// A thread's CPU demand from `/proc/thread-self/schedstat`: nanoseconds on a CPU plus
/// nanoseconds runnable and waiting for one. The loop's own busy time misses both the kernel
/// work done inside its wait (io_uring sends and receives run in `io_uring_enter`) and the time
/// it was ready but the CPU was taken (other processes, a noisy neighbour): at the same
/// packets the shard then looked idle and admission never refused (BENCHMARKS.md, 2026-12-05).
pub(crate) struct ThreadDemand {
    file: std::fs::File,
    last: Option<(u64, u64)>,
}

impl ThreadDemand {
    /// The calling thread's (open it on the shard thread). `None` where /proc or schedstat is
    /// missing: the loop's busy time alone is used then.
    pub(crate) fn open() -> Option<ThreadDemand> {
        let file = std::fs::File::open("/proc/thread-self/schedstat").ok()?;
        // The first reading is the baseline. (Until session 9 this took `delta()?`, which is
        // `None` the first time by definition, so the relay never measured its demand and the
        // busy share was the loop's own time only: 0.14 where schedstat said 0.39.)
        let last = Some(Self::read(&file)?);
        Some(ThreadDemand { file, last })
    }

    /// Time on a CPU and time runnable but waiting (ns) since the previous call (`None` if
    /// unreadable). Reads into a stack buffer: no allocation.
    pub(crate) fn delta(&mut self) -> Option<(u64, u64)> {
        let (run, wait) = Self::read(&self.file)?;
        let prev = self.last.replace((run, wait));
        prev.map(|(r, w)| (run.saturating_sub(r), wait.saturating_sub(w)))
    }

    fn read(file: &std::fs::File) -> Option<(u64, u64)> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = file.read_at(&mut buf, 0).ok()?;
        parse_schedstat(buf.get(..n)?)
    }
}

/// `run_ns wait_ns timeslices` → (run, wait).
fn parse_schedstat(b: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let mut it = s.split_ascii_whitespace();
    let run: u64 = it.next()?.parse().ok()?;
    let wait: u64 = it.next()?.parse().ok()?;
    run.checked_add(wait)?;
    Some((run, wait))
}

impl ShardCore {
    pub(crate) fn new(
        id: usize,
        events_out: Sender<CallEvent>,
        stats: Arc<ShardStats>,
        published: Arc<std::sync::Mutex<ShardTotals>>,
        rate_limit: RateLimitConfig,
        now: Instant,
    ) -> Self {
        ShardCore {
            id,
            events_out,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            timers: TimerHeap::with_capacity(1024),
            due: Vec::with_capacity(1024),
            stats,
            totals: ShardTotals::new(id as u32),
            published,
            next_publish: now,
            busy: Duration::ZERO,
            last_publish: now,
            packets_at_publish: 0,
            packets_in: 0,
            stale: 0,
            timer_runs: 0,
            limiter: RateLimiter::new(rate_limit, now),
            rate_limited: [0; 2],
            quality: Default::default(),
            demand: None,
            connect_twins: true,
            cpu: None,
            lateness: Default::default(),
        }
    }

    /// Whether sockets whose peer is fixed get a connected twin (see
    /// [`ShardIo::connect_twin`]; `EngineConfig::connect_twins`). On by default.
    pub(crate) fn set_connect_twins(&mut self, on: bool) {
        self.connect_twins = on;
    }

    /// Count the busy share against this shard's part of the process's CPU limit.
    pub(crate) fn set_cpu_budget(&mut self, budget: Arc<crate::engine::cpu_limit::CpuBudget>) {
        self.cpu = Some(budget);
    }

    /// Count the calling thread's CPU demand (schedstat) in the busy share admission reads,
    /// not only the loop's time outside its wait. Called on the shard thread at start.
    pub(crate) fn measure_thread_demand(&mut self) {
        self.demand = ThreadDemand::open();
    }

    /// Whether a call's deadline has passed: the driver then collects what the kernel holds
    /// for us before the timers run, so silence fill never goes out for a packet that is
    /// already here.
    pub(crate) fn timers_due(&self, now: Instant) -> bool {
        self.timers.peek().is_some_and(|d| d <= now)
    }

    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// When the driver must wake the core at the latest: the earliest call deadline, and the
    /// once-a-second publish so an idle shard's metrics stay fresh.
    pub(crate) fn next_wake(&self) -> Instant {
        self.timers.peek().map_or(self.next_publish, |d| {
            (d + TIMER_SLACK).min(self.next_publish)
        })
    }

    /// A datagram arrived on socket `key`. `buf` is its buffer (room to grow in place), `len`
    /// its length, `from` its source (`None` for an address family we don't speak).
    pub(crate) fn on_datagram<I: ShardIo>(
        &mut self,
        now: Instant,
        key: SockKey,
        from: Option<SocketAddr>,
        buf: &mut [u8],
        len: usize,
        io: &mut I,
    ) {
        self.packets_in += 1;
        let idx = key.call.slot;
        let Some(slot) = self
            .slots
            .get_mut(idx as usize)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == key.call.generation)
        else {
            self.stale += 1;
            return;
        };
        let (Some(from), Some(via)) = (from, socket_ref(key.socket)) else {
            return;
        };
        // Strangers pay per source before anything reads their bytes.
        if !slot.call.knows_source(via, from) && !self.limiter.allow(from.ip(), now) {
            self.rate_limited[usize::from(!via.is_whatsapp())] += 1;
            return;
        }
        let mut out = SlotOutbox { io, call: key.call };
        slot.call
            .handle_datagram(now, via, from, buf, len, &mut out);
        self.after_call_activity(idx, io);
    }

    /// Run every call whose deadline is due by `now`. Costs per due call: the heap hands out
    /// only those.
    pub(crate) fn run_timers<I: ShardIo>(&mut self, now: Instant, io: &mut I) {
        let until = now;
        // Collect first: a call re-armed at or before `until` while it runs waits for the next
        // turn, as a scan visiting each call once per turn would.
        self.due.clear();
        let mut first = true;
        while let Some((deadline, idx, generation)) = self.timers.pop_due(until) {
            let Some(Some(slot)) = self.slots.get_mut(idx as usize) else {
                continue;
            };
            if slot.generation != generation || slot.armed != Some(deadline) {
                continue; // stale: slot reused, or re-armed earlier since
            }
            if first {
                // The earliest live deadline: how late this turn started behind it.
                self.lateness
                    .observe(now.saturating_duration_since(deadline));
                first = false;
            }
            slot.armed = None;
            self.due.push(idx);
        }
        for i in 0..self.due.len() {
            let idx = self.due[i];
            let Some(Some(slot)) = self.slots.get_mut(idx as usize) else {
                continue;
            };
            if slot.call.poll_timeout().is_some_and(|d| d <= until) {
                self.timer_runs += 1;
                let mut out = SlotOutbox {
                    io,
                    call: SlotKey {
                        slot: idx,
                        generation: slot.generation,
                    },
                };
                slot.call.handle_timeout(now, &mut out);
            }
            self.after_call_activity(idx, io);
        }
    }

    /// Forward a call's events, re-arm its timer, and remove it if it ended.
    fn after_call_activity<I: ShardIo>(&mut self, idx: u32, io: &mut I) {
        let Some(Some(slot)) = self.slots.get_mut(idx as usize) else {
            return;
        };
        self.timers.arm(
            &mut slot.armed,
            idx,
            slot.generation,
            slot.call.poll_timeout(),
        );
        while let Some(id) = slot.call.poll_released_socket() {
            if let Some(l) = slot.local.get_mut(id.index()) {
                *l = None;
            }
            io.detach_socket(SockKey {
                call: SlotKey {
                    slot: idx,
                    generation: slot.generation,
                },
                socket: id.index() as u16,
            });
        }
        // A leg's peer became fixed or moved: the driver (re)connects the socket's twin.
        // Polled after the released sockets (a released socket's twin closed with it).
        if self.connect_twins {
            while let Some((id, peer)) = slot.call.poll_peer_change() {
                io.connect_twin(
                    SockKey {
                        call: SlotKey {
                            slot: idx,
                            generation: slot.generation,
                        },
                        socket: id.index() as u16,
                    },
                    peer,
                );
            }
        }
        while let Some(kind) = slot.call.poll_event() {
            let (ice, dtls) = slot.call.setup_times();
            match &kind {
                CallEventKind::Created => self.totals.calls_created += 1,
                CallEventKind::IceConnected { .. } => {
                    if let Some(d) = ice {
                        self.totals.ice_setup.observe_duration(d);
                    }
                }
                CallEventKind::DtlsConnected { .. } => {
                    if let Some(d) = dtls {
                        self.totals.dtls_setup.observe_duration(d);
                    }
                }
                CallEventKind::Ended { cause, .. } => self.totals.count_ended(*cause),
                _ => {}
            }
            let _ = self.events_out.send(CallEvent {
                call_id: slot.call.call_id.clone(),
                at: SystemTime::now(),
                kind,
            });
        }
        if slot.call.is_ended() {
            self.remove(idx, io);
        }
    }

    fn remove<I: ShardIo>(&mut self, idx: u32, io: &mut I) -> Option<CallInfo> {
        let slot = self.slots.get_mut(idx as usize)?.take()?;
        let Slot {
            call,
            generation,
            transcodes,
            ..
        } = slot;
        if transcodes {
            self.stats.transcoding.fetch_sub(1, Ordering::Relaxed);
        }
        io.detach(SlotKey {
            slot: idx,
            generation,
        });
        self.generations[idx as usize] = (generation + 1) & GENERATION_MASK;
        self.by_id.remove(&call.call_id);
        self.free.push(idx);
        // Fold the call's counters into the shard's totals.
        let t = &mut self.totals;
        t.whatsapp.add(&call.leg_totals(LegKind::WhatsApp));
        t.internal.add(&call.leg_totals(LegKind::Internal));
        t.srtp_auth_failures_whatsapp += call.dropped(LegKind::WhatsApp, DropReason::AuthFailed);
        t.srtp_auth_failures_internal += call.dropped(LegKind::Internal, DropReason::AuthFailed);
        let info = call.info();
        let rx = &info.whatsapp.received;
        if rx.packets > 0 {
            t.call_loss
                .observe(rx.lost as f64 / (rx.packets + rx.lost) as f64);
            t.call_jitter.observe(rx.jitter_ms / 1000.0);
        }
        self.stats.calls.fetch_sub(1, Ordering::Relaxed);
        Some(info)
    }

    /// Handle one command. Returns false when the shard must stop.
    pub(crate) fn on_command<I: ShardIo>(
        &mut self,
        now: Instant,
        cmd: Command,
        io: &mut I,
    ) -> bool {
        match cmd {
            Command::Insert {
                call,
                sockets,
                reply,
            } => {
                self.insert(call, sockets, io);
                let _ = reply.send(());
            }
            Command::OpenGate { call_id, reply } => {
                let r = self.with_call(&call_id, io, |call, out| {
                    call.open_gate(now, out);
                    Ok(call.info())
                });
                let _ = reply.send(r);
            }
            Command::SetRemote {
                call_id,
                leg,
                sdp,
                reply,
            } => {
                let r = self.with_call(&call_id, io, |call, out| {
                    call.set_remote_description(leg, &sdp, now, out)?;
                    Ok(call.info())
                });
                let _ = reply.send(r);
            }
            Command::ReplaceInternal {
                call_id,
                spec,
                advertised,
                bot,
                reply,
            } => {
                let r = self.local_sockets(&call_id).and_then(|sockets| {
                    self.with_call(&call_id, io, |call, out| {
                        let internal_sdp =
                            call.replace_internal_leg(&spec, sockets, advertised, now, out)?;
                        if let Some(bot) = bot {
                            call.attach_bot(bot, now)?;
                        }
                        Ok(InternalLegReplaced {
                            internal_sdp,
                            call: call.info(),
                        })
                    })
                });
                let _ = reply.send(r);
            }
            Command::Terminate {
                call_id,
                cause,
                reply,
            } => {
                let info = self.by_id.get(&call_id).copied().and_then(|idx| {
                    let info = self.terminate(idx, now, cause, io);
                    self.after_call_activity(idx, io);
                    info
                });
                let _ = reply.send(info);
            }
            Command::Get { call_id, reply } => {
                let info = self
                    .by_id
                    .get(&call_id)
                    .and_then(|&i| self.slots.get(i as usize)?.as_ref())
                    .map(|s| s.call.info());
                let _ = reply.send(info);
            }
            Command::List { reply } => {
                let all = self.slots.iter().flatten().map(|s| s.call.info()).collect();
                let _ = reply.send(all);
            }
            Command::EndAll { cause, reply } => {
                let _ = reply.send(self.end_all(now, cause, io));
            }
            Command::Record {
                call_id,
                req,
                reply,
            } => {
                let _ = reply.send(self.with_call(&call_id, io, |c, _| {
                    c.record(req, now).map_err(ApiError::from)
                }));
            }
            Command::Listen {
                call_id,
                req,
                reply,
            } => {
                let _ = reply.send(self.with_call(&call_id, io, |c, out| {
                    c.listen(req, now, out).map_err(ApiError::from)
                }));
            }
            Command::WithNewSocket {
                call_id,
                socket,
                run,
            } => self.with_new_socket(now, &call_id, socket, io, run),
            Command::Stop => {
                self.end_all(now, EndCause::Drained, io);
                return false;
            }
        }
        true
    }

    /// End the call in `idx` (BYEs queued; the driver sends them before closing its sockets).
    fn terminate<I: ShardIo>(
        &mut self,
        idx: u32,
        now: Instant,
        cause: EndCause,
        io: &mut I,
    ) -> Option<CallInfo> {
        let slot = self.slots.get_mut(idx as usize)?.as_mut()?;
        let mut out = SlotOutbox {
            io,
            call: SlotKey {
                slot: idx,
                generation: slot.generation,
            },
        };
        slot.call.terminate(now, cause, &mut out);
        Some(slot.call.info())
    }

    /// End every call with `cause`, sending their BYEs. Returns how many ended.
    fn end_all<I: ShardIo>(&mut self, now: Instant, cause: EndCause, io: &mut I) -> usize {
        let live: Vec<u32> = self.by_id.values().copied().collect();
        for &idx in &live {
            self.terminate(idx, now, cause, io);
            self.after_call_activity(idx, io);
        }
        live.len()
    }

    /// The addresses a call's sockets are bound to (a replaced internal leg keeps its port).
    fn local_sockets(&self, call_id: &str) -> Result<LocalSockets, ApiError> {
        let slot = self
            .by_id
            .get(call_id)
            .and_then(|&i| self.slots.get(i as usize)?.as_ref())
            .ok_or_else(|| ApiError::NotFound(call_id.to_string()))?;
        let addr = |r: SocketRef| slot.local.get(r.index()).copied().flatten();
        Ok(LocalSockets {
            wa_v4: addr(SocketRef::WaV4),
            wa_v6: addr(SocketRef::WaV6),
            internal: addr(SocketRef::Internal).ok_or_else(|| {
                ApiError::Internal(format!("call {call_id} has no internal socket address"))
            })?,
        })
    }

    fn with_call<T, I: ShardIo>(
        &mut self,
        call_id: &str,
        io: &mut I,
        f: impl FnOnce(&mut Call, &mut SlotOutbox<'_, I>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let idx = *self
            .by_id
            .get(call_id)
            .ok_or_else(|| ApiError::NotFound(call_id.to_string()))?;
        let Some(Some(slot)) = self.slots.get_mut(idx as usize) else {
            return Err(ApiError::NotFound(call_id.to_string()));
        };
        let mut out = SlotOutbox {
            io,
            call: SlotKey {
                slot: idx,
                generation: slot.generation,
            },
        };
        let r = f(&mut slot.call, &mut out);
        // A command may start or stop the call's transcoding (a bot attached or replaced).
        let transcodes = slot.call.transcodes();
        if transcodes != slot.transcodes {
            slot.transcodes = transcodes;
            if transcodes {
                self.stats.transcoding.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.transcoding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Commands may make a call due now (gate opened: maiden packet, fill timer).
        self.after_call_activity(idx, io);
        r
    }

    /// Give the live call `call_id` one more socket (a fork's leg, bound by the control
    /// plane: see `sockets::bind_extra`) and run `run` with the call, the socket's new
    /// [`SocketRef`] and its local address (or with the reason there is none). The socket
    /// takes the call's next unused index (never one a removed socket had, so a completion
    /// still in flight for that one cannot reach it) and is registered with the driver before
    /// `run` runs; if `run` says the call does not keep it, it is unregistered and closed. The
    /// call gives it back later with `Call::release_socket`.
    fn with_new_socket<I: ShardIo>(
        &mut self,
        now: Instant,
        call_id: &str,
        socket: UdpSocket,
        io: &mut I,
        run: NewSocketFn,
    ) {
        let Some(&idx) = self.by_id.get(call_id) else {
            run(Err(ApiError::NotFound(call_id.to_string())));
            return;
        };
        let Some(Some(slot)) = self.slots.get_mut(idx as usize) else {
            run(Err(ApiError::NotFound(call_id.to_string())));
            return;
        };
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                run(Err(ApiError::Internal(format!(
                    "a new socket for call {call_id}: {e}"
                ))));
                return;
            }
        };
        let index = slot.local.len().max(SocketRef::FIRST_EXTRA.index());
        let (Ok(index8), true) = (u8::try_from(index), index < SockKey::MAX_SOCKETS) else {
            run(Err(ApiError::Unavailable(format!(
                "call {call_id} has used all {} socket indices",
                SocketRef::MAX
            ))));
            return;
        };
        let key = SockKey {
            call: SlotKey {
                slot: idx,
                generation: slot.generation,
            },
            socket: index as u16,
        };
        if let Err(e) = io.attach_socket(key, socket) {
            run(Err(ApiError::Internal(format!(
                "registering a new socket for call {call_id}: {e}"
            ))));
            return;
        }
        slot.local.resize(index, None);
        slot.local.push(Some(local));
        let mut out = SlotOutbox { io, call: key.call };
        let kept = run(Ok(NewSocket {
            call: &mut slot.call,
            id: SocketRef::new(index8),
            local,
            now,
            out: &mut out,
        }));
        if !kept {
            slot.local[index] = None;
            io.detach_socket(key);
        }
        self.after_call_activity(idx, io);
    }

    fn insert<I: ShardIo>(&mut self, call: Box<Call>, sockets: CallSockets, io: &mut I) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.generations[idx as usize];
        let mut sockets = sockets.sockets;
        if sockets.len() > SockKey::MAX_SOCKETS {
            tracing::error!(
                shard = self.id,
                n = sockets.len(),
                "call has too many sockets"
            );
            sockets.truncate(SockKey::MAX_SOCKETS);
        }
        let local = sockets
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.local_addr().ok()))
            .collect();
        let key = SlotKey {
            slot: idx,
            generation,
        };
        io.attach(key, sockets);
        self.by_id.insert(call.call_id.clone(), idx);
        let transcodes = call.transcodes();
        self.slots[idx as usize] = Some(Slot {
            call,
            generation,
            local,
            armed: None,
            transcodes,
        });
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if transcodes {
            self.stats.transcoding.fetch_add(1, Ordering::Relaxed);
        }
        self.after_call_activity(idx, io);
    }

    /// Once per loop turn: the counters the control plane reads as atomics. `worked` is the
    /// time this turn spent outside the driver's wait.
    pub(crate) fn end_turn(&mut self, now: Instant, worked: Duration, io: &IoCounters) {
        self.busy += worked;
        let s = &self.stats;
        // The heartbeat /healthz watches: this shard's loop still turns.
        s.turns.fetch_add(1, Ordering::Relaxed);
        s.packets_in.store(self.packets_in, Ordering::Relaxed);
        s.packets_out.store(io.sent, Ordering::Relaxed);
        s.send_errors.store(io.send_errors, Ordering::Relaxed);
        s.recv_errors.store(io.recv_errors, Ordering::Relaxed);
        s.rate_limited.store(
            self.rate_limited[0] + self.rate_limited[1],
            Ordering::Relaxed,
        );
        for (a, v) in s.io_syscalls.iter().zip(io.syscalls) {
            a.store(v, Ordering::Relaxed);
        }
        if now >= self.next_publish {
            self.publish_totals(now, io);
        }
    }

    /// Once a second: ended totals + live calls' counters → the published snapshot.
    fn publish_totals(&mut self, now: Instant, io: &IoCounters) {
        self.next_publish = now + PUBLISH_EVERY;
        // The thread's demand when measured (it covers the kernel's work inside the wait and
        // time spent ready but not running), never less than the loop's own busy time; under
        // a CPU quota, run time against this shard's part of it (snapshot::busy_share).
        let elapsed = now.saturating_duration_since(self.last_publish);
        let packets = self.packets_in + io.sent;
        let pps = match elapsed.as_secs_f64() {
            secs if secs > 0.0 => (packets.saturating_sub(self.packets_at_publish)) as f64 / secs,
            _ => 0.0,
        };
        // Time runnable but waiting for a CPU counts as demand only where the shard carries a
        // real load. Below it (a handful of calls) run_delay is the wake-up latency of a mostly
        // idle thread on a shared CPU, which can read near 100 % on a busy host while the shard
        // does almost nothing: admission then refused a test's first call in CI. Under a quota
        // the run ÷ share term still counts against the limit at any load.
        let thread = self
            .demand
            .as_mut()
            .and_then(ThreadDemand::delta)
            .map(|(r, w)| {
                let w = if pps >= crate::engine::snapshot::PROJECT_MIN_PPS as f64 {
                    w
                } else {
                    0
                };
                (Duration::from_nanos(r), Duration::from_nanos(w))
            });
        let share = self.cpu.as_ref().map_or(1.0, |c| c.shard_share());
        // The first publish comes at the shard's first turn, milliseconds after it started: a
        // ratio over so short an interval is start-up noise (a first turn that waited for a
        // CPU read 100 %), not load. Publish 0 for it; the next interval is a whole second.
        let busy_ratio = if elapsed >= PUBLISH_EVERY / 4 {
            crate::engine::snapshot::busy_share(elapsed, self.busy, thread, share)
        } else {
            0.0
        };
        self.totals.busy_seconds += busy_ratio * elapsed.as_secs_f64();
        let live = self.slots.iter().flatten().map(|s| &*s.call);
        self.quality.sample(live, &mut self.totals.quality);
        let mut t = self.totals.clone();
        for slot in self.slots.iter().flatten() {
            t.whatsapp.add(&slot.call.leg_totals(LegKind::WhatsApp));
            t.internal.add(&slot.call.leg_totals(LegKind::Internal));
            t.srtp_auth_failures_whatsapp +=
                slot.call.dropped(LegKind::WhatsApp, DropReason::AuthFailed);
            t.srtp_auth_failures_internal +=
                slot.call.dropped(LegKind::Internal, DropReason::AuthFailed);
        }
        let limited = DropReason::RateLimited.index();
        t.whatsapp.drops[limited] += self.rate_limited[0];
        t.internal.drops[limited] += self.rate_limited[1];
        t.calls = self.by_id.len() as u64;
        t.packets_in = self.packets_in;
        t.packets_out = io.sent;
        t.send_errors = io.send_errors;
        t.io_pressure = [io.send_slots_full, io.recv_ring_dry];
        t.connected_sockets = io.twins;
        t.twin_failures = io.twin_failures;
        t.io_syscalls = io.syscalls;
        if !elapsed.is_zero() {
            t.busy_ratio = busy_ratio;
            t.turn_lateness_p99 = self.lateness.take_p99();
            let packets = t.packets_in + t.packets_out;
            t.packets_per_second = ((packets.saturating_sub(self.packets_at_publish)) as f64
                / elapsed.as_secs_f64()) as u64;
            self.packets_at_publish = packets;
        }
        self.busy = Duration::ZERO;
        self.last_publish = now;
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Live calls.
    #[cfg(test)]
    pub(crate) fn calls(&self) -> usize {
        self.by_id.len()
    }

    /// Datagrams handed to the core so far.
    #[cfg(test)]
    pub(crate) fn packets_in(&self) -> u64 {
        self.packets_in
    }

    /// Completions that arrived for a call already gone.
    #[cfg(test)]
    pub(crate) fn stale_completions(&self) -> u64 {
        self.stale
    }

    /// Calls run by their timer so far.
    #[cfg(test)]
    pub(crate) fn timer_runs(&self) -> u64 {
        self.timer_runs
    }

    /// Entries in the deadline heap (stale ones included).
    #[cfg(test)]
    pub(crate) fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
