//! Scenario tests of the shard core in simulated time: no sockets, no threads, no sleeping. A
//! recording [`ShardIo`] stands in for the driver; completions are handed in as a driver
//! would, with whatever `now` the test chooses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::*;
use crate::api::{CallEvent, CallEventKind, CallState, EndCause};
use crate::call::CallConfig;
use crate::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RtpSource,
};
use crate::dtls::DtlsIdentity;
use crate::engine::ShardStats;
use crate::engine::ratelimit::RateLimitConfig;
use crate::engine::snapshot::ShardTotals;
use crate::net::SocketRef;
use crate::srtp::SrtpProfile;

/// What the core asked of the driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IoOp {
    Send {
        via: SockKey,
        to: SocketAddr,
        len: usize,
    },
    Attach(SlotKey, usize),
    Detach(SlotKey),
    AttachSocket(SockKey),
    DetachSocket(SockKey),
}

#[derive(Default)]
struct Recorder {
    ops: Vec<IoOp>,
    /// Keep sends (false: only count them, for the 10,000-call test).
    keep_sends: bool,
    sends: u64,
    /// The last datagram sent, if kept.
    last: Vec<u8>,
    /// Sockets whose kernel queue holds a datagram the core has not been handed yet.
    queued: Vec<SockKey>,
    /// How often the core asked.
    queue_checks: u64,
    /// Connected-twin requests, in order.
    twins: Vec<(SockKey, Option<SocketAddr>)>,
}

impl ShardIo for Recorder {
    fn send(&mut self, via: SockKey, to: SocketAddr, data: &[u8]) {
        self.sends += 1;
        if self.keep_sends {
            self.ops.push(IoOp::Send {
                via,
                to,
                len: data.len(),
            });
            self.last = data.to_vec();
        }
    }

    fn attach(&mut self, call: SlotKey, sockets: Vec<Option<std::net::UdpSocket>>) {
        self.ops.push(IoOp::Attach(call, sockets.len()));
    }

    fn detach(&mut self, call: SlotKey) {
        self.ops.push(IoOp::Detach(call));
    }

    fn attach_socket(&mut self, key: SockKey, _: std::net::UdpSocket) -> std::io::Result<()> {
        self.ops.push(IoOp::AttachSocket(key));
        Ok(())
    }

    fn detach_socket(&mut self, key: SockKey) {
        self.ops.push(IoOp::DetachSocket(key));
    }

    fn queued(&mut self, key: SockKey) -> bool {
        self.queue_checks += 1;
        self.queued.contains(&key)
    }

    fn connect_twin(&mut self, key: SockKey, peer: Option<SocketAddr>) {
        self.twins.push((key, peer));
    }
}

struct Shard {
    core: ShardCore,
    io: Recorder,
    events: Receiver<CallEvent>,
    identity: Arc<DtlsIdentity>,
    now: Instant,
}

impl Shard {
    fn new() -> Shard {
        let (tx, rx) = crossbeam_channel::unbounded();
        let now = Instant::now();
        Shard {
            core: ShardCore::new(
                0,
                tx,
                Arc::new(ShardStats::default()),
                Arc::new(std::sync::Mutex::new(ShardTotals::new(0))),
                RateLimitConfig::default(),
                now,
            ),
            io: Recorder {
                keep_sends: true,
                ..Recorder::default()
            },
            events: rx,
            identity: Arc::new(DtlsIdentity::generate().expect("identity")),
            now,
        }
    }

    /// Insert an SDES call named `id` (three sockets, as the engine binds them); returns Meta's
    /// side of it.
    fn insert(&mut self, id: &str, cfg: CallConfig) -> MetaPeer {
        let (mut meta, offer) = MetaPeer::sdes(SrtpProfile::Aes128CmHmacSha1_80);
        let created =
            testing::create_call(&offer, cfg, self.identity.clone(), self.now).expect("create");
        meta.accept_answer(&created.whatsapp_sdp, self.now)
            .expect("answer");
        let mut call = Box::new(created.call);
        call.call_id = id.to_string();
        let (reply, _) = tokio::sync::oneshot::channel();
        let cmd = Command::Insert {
            call,
            sockets: CallSockets {
                sockets: vec![None, None, None],
            },
            reply,
        };
        assert!(self.core.on_command(self.now, cmd, &mut self.io));
        meta
    }

    fn open_gate(&mut self, id: &str) -> Result<CallInfo, ApiError> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let cmd = Command::OpenGate {
            call_id: id.to_string(),
            reply,
        };
        assert!(self.core.on_command(self.now, cmd, &mut self.io));
        rx.try_recv().expect("reply")
    }

    fn get(&mut self, id: &str) -> Option<CallInfo> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let cmd = Command::Get {
            call_id: id.to_string(),
            reply,
        };
        assert!(self.core.on_command(self.now, cmd, &mut self.io));
        rx.try_recv().expect("reply")
    }

    fn terminate(&mut self, id: &str) -> Option<CallInfo> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let cmd = Command::Terminate {
            call_id: id.to_string(),
            cause: EndCause::Terminated,
            reply,
        };
        assert!(self.core.on_command(self.now, cmd, &mut self.io));
        rx.try_recv().expect("reply")
    }

    /// Advance to the core's next wake-up (never past `limit`) and run its timers.
    fn turn(&mut self, limit: Instant) -> bool {
        let next = self.core.next_wake().max(self.now);
        if next > limit {
            return false;
        }
        self.now = next;
        self.core.run_timers(self.now, &mut self.io);
        self.core
            .end_turn(self.now, Duration::ZERO, &IoCounters::default());
        true
    }

    fn ended(&self) -> Vec<(String, EndCause)> {
        self.events
            .try_iter()
            .filter_map(|e| match e.kind {
                CallEventKind::Ended { cause, .. } => Some((e.call_id, cause)),
                _ => None,
            })
            .collect()
    }
}

fn key(slot: u32, generation: u32, socket: SocketRef) -> SockKey {
    SockKey {
        call: SlotKey { slot, generation },
        socket: socket.index() as u16,
    }
}

#[test]
fn sock_key_round_trips_any_socket_index_and_wraps_generations() {
    for (slot, generation, socket) in [
        (0, 0, 0),
        (7, 3, 2),
        (u32::MAX, GENERATION_MASK, 1023),
        (12, 5, 17),
    ] {
        let k = SockKey {
            call: SlotKey { slot, generation },
            socket,
        };
        let v = k.encode();
        assert_eq!(v >> 62, 0, "top bits are the driver's");
        assert_eq!(SockKey::decode(v), k);
    }
}

/// 10,000 calls with their gates open send silence fill every 20 ms. Each turn runs only the
/// calls that are due: over 200 ms of simulated time the calls are run about as many times as
/// they sent packets, where a scan would have visited all 10,000 at every turn.
#[test]
fn ten_thousand_calls_timers_cost_per_due_call() {
    const CALLS: usize = 10_000;
    let mut s = Shard::new();
    s.io.keep_sends = false;
    let cfg = CallConfig::default();
    for i in 0..CALLS {
        s.insert(&format!("call-{i}"), cfg.clone());
        // Gates open spread over one packet time, as calls answered at different moments.
        if i % 500 == 0 {
            s.now += Duration::from_millis(1);
        }
        s.open_gate(&format!("call-{i}")).expect("gate");
    }
    assert_eq!(s.core.calls(), CALLS);
    // Each gate sent its maiden silence packet.
    assert_eq!(s.io.sends, CALLS as u64);
    let start = s.now;
    let end = start + Duration::from_millis(200);
    let mut turns = 0u64;
    while s.turn(end) {
        turns += 1;
    }
    let packets = s.io.sends - CALLS as u64;
    // 200 ms at 20 ms: 10 more fill packets per call (±1 at the window's edges).
    assert!(
        (9 * CALLS as u64..=11 * CALLS as u64).contains(&packets),
        "{packets} fill packets"
    );
    // Every call run by its timer sent a packet or RTCP: no idle visits.
    let runs = s.core.timer_runs();
    assert!(
        runs <= packets + CALLS as u64,
        "{runs} runs for {packets} packets"
    );
    assert!(
        runs * 10 < turns * CALLS as u64,
        "{runs} runs in {turns} turns: the heap should not visit every call every turn"
    );
    // About one heap entry per call.
    assert!(
        s.core.timer_entries() <= 2 * CALLS,
        "{}",
        s.core.timer_entries()
    );
    assert!(s.ended().is_empty());
}

/// Timeouts of many calls fire in simulated time, each call once, at its own deadline.
#[test]
fn media_timeouts_end_each_call_at_its_deadline() {
    let mut s = Shard::new();
    let cfg = CallConfig {
        silence_fill: false,
        ..CallConfig::default()
    };
    let start_media = cfg.start_media_timeout;
    let mut opened = Vec::new();
    for i in 0..200 {
        s.insert(&format!("c{i}"), cfg.clone());
        s.open_gate(&format!("c{i}")).expect("gate");
        opened.push(s.now);
        s.now += Duration::from_millis(37);
    }
    let end = s.now + start_media + Duration::from_secs(1);
    let mut ended_at = Vec::new();
    while s.turn(end) {
        for (id, cause) in s.ended() {
            assert_eq!(cause, EndCause::NoMediaAfterAccept);
            ended_at.push((id, s.now));
        }
    }
    assert_eq!(ended_at.len(), 200);
    for (id, at) in ended_at {
        let i: usize = id[1..].parse().unwrap();
        let due = opened[i] + start_media;
        assert!(
            at >= due && at <= due + TIMER_SLACK,
            "{id} ended {:?} late",
            at - due
        );
    }
    assert_eq!(s.core.calls(), 0);
    let detached =
        s.io.ops
            .iter()
            .filter(|o| matches!(o, IoOp::Detach(_)))
            .count();
    assert_eq!(detached, 200);
}

/// A call ends while datagrams for it are still queued in the driver (io_uring reports them
/// after the socket is gone), and a new call takes its slot: the stale datagrams reach neither,
/// and the BYEs of the ended call were queued before its sockets were released.
#[test]
fn a_call_ending_while_its_datagrams_are_queued() {
    let mut s = Shard::new();
    let mut meta = s.insert("old", CallConfig::default());
    s.open_gate("old").expect("gate");
    let old = key(0, 0, SocketRef::WaV4);
    // Meta's packet for the old call, as the driver holds it.
    let mut src = RtpSource::new(0x1111, META_OPUS_PT, 1, 0);
    let mut queued = [0u8; 2048];
    let n = src.write_next(&mut queued, 160);
    let queued_len = meta.protect_rtp(&mut queued, n).expect("protect");

    s.io.ops.clear();
    let info = s.terminate("old").expect("info");
    assert_eq!(info.state, CallState::Ended);
    // BYEs first (RTCP on both legs), then the sockets go.
    let detach_at =
        s.io.ops
            .iter()
            .position(|o| matches!(o, IoOp::Detach(k) if *k == old.call))
            .expect("detached");
    assert!(
        s.io.ops[..detach_at]
            .iter()
            .any(|o| matches!(o, IoOp::Send { via, .. } if via.call == old.call)),
        "{:?}",
        s.io.ops
    );

    // A new call reuses slot 0 with the next generation.
    s.insert("new", CallConfig::default());
    let attached = s.io.ops.iter().find_map(|o| match o {
        IoOp::Attach(k, n) => Some((*k, *n)),
        _ => None,
    });
    assert_eq!(
        attached,
        Some((
            SlotKey {
                slot: 0,
                generation: 1
            },
            3
        ))
    );
    s.io.ops.clear();

    // The stale completion arrives now.
    s.core
        .on_datagram(s.now, old, Some(META), &mut queued, queued_len, &mut s.io);
    assert_eq!(s.core.stale_completions(), 1);
    assert!(s.io.ops.is_empty(), "nothing forwarded: {:?}", s.io.ops);
    let new = s.get("new").expect("new call");
    assert_eq!(new.whatsapp.received.packets, 0);
}

/// Commands and completions interleave as the driver hands them in: media forwarded both ways,
/// the gate opened between two datagrams, a query seeing the counters so far, a terminate, and
/// a datagram after it dropped.
#[test]
fn commands_interleaved_with_completions() {
    let mut s = Shard::new();
    let mut meta = s.insert("c", CallConfig::default());
    let wa = key(0, 0, SocketRef::WaV4);
    let internal = key(0, 0, SocketRef::Internal);
    let mut from_meta = RtpSource::new(0xaaaa, META_OPUS_PT, 100, 0);
    let mut from_server = RtpSource::new(0xbbbb, INTERNAL_OPUS_PT, 200, 0);
    let mut buf = [0u8; 2048];

    // Meta → internal before the gate opens: forwarded (the gate holds only toward Meta).
    let n = from_meta.write_next(&mut buf, 160);
    let n = meta.protect_rtp(&mut buf, n).unwrap();
    s.io.ops.clear();
    s.core
        .on_datagram(s.now, wa, Some(META), &mut buf, n, &mut s.io);
    assert!(
        s.io.ops.iter().any(
            |o| matches!(o, IoOp::Send { via, to, .. } if *via == internal && *to == MEDIA_SERVER)
        ),
        "{:?}",
        s.io.ops
    );

    // Internal → Meta is held until the gate opens.
    s.now += Duration::from_millis(20);
    let n = from_server.write_next(&mut buf, 160);
    s.io.ops.clear();
    s.core
        .on_datagram(s.now, internal, Some(MEDIA_SERVER), &mut buf, n, &mut s.io);
    assert!(
        !s.io
            .ops
            .iter()
            .any(|o| matches!(o, IoOp::Send { to, .. } if *to == META)),
        "gate closed: {:?}",
        s.io.ops
    );

    // The gate opens between two datagrams: the held packet plays out toward Meta.
    s.io.ops.clear();
    let info = s.open_gate("c").unwrap();
    assert!(info.gate_open);
    s.turn(s.now + Duration::from_millis(1));
    assert!(
        s.io.ops
            .iter()
            .any(|o| matches!(o, IoOp::Send { via, to, .. } if *via == wa && *to == META)),
        "{:?}",
        s.io.ops
    );

    s.now += Duration::from_millis(20);
    let n = from_server.write_next(&mut buf, 160);
    s.core
        .on_datagram(s.now, internal, Some(MEDIA_SERVER), &mut buf, n, &mut s.io);
    let info = s.get("c").unwrap();
    assert_eq!(info.whatsapp.received.packets, 1);
    assert_eq!(info.internal.received.packets, 2);

    s.terminate("c").expect("ended");
    assert!(s.get("c").is_none());
    s.io.ops.clear();
    let n = from_server.write_next(&mut buf, 160);
    s.core
        .on_datagram(s.now, internal, Some(MEDIA_SERVER), &mut buf, n, &mut s.io);
    assert!(s.io.ops.is_empty());
    assert_eq!(s.ended(), vec![("c".to_string(), EndCause::Terminated)]);
}

/// Sockets added to a live call take fresh indices (never reused, even after one was refused
/// or given back), and a refused or given-back one is unregistered.
#[test]
fn sockets_added_to_a_live_call_take_fresh_indices() {
    let mut s = Shard::new();
    s.insert("a", CallConfig::default());
    let add = |s: &mut Shard, keep: bool, release: Option<SocketRef>| {
        let (tx, rx) = std::sync::mpsc::channel();
        let cmd = Command::WithNewSocket {
            call_id: "a".into(),
            socket: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            run: Box::new(move |ctx: Result<NewSocket<'_>, ApiError>| {
                let c = ctx.expect("live");
                if let Some(r) = release {
                    c.call.release_socket(r);
                }
                tx.send(c.id).unwrap();
                keep
            }),
        };
        assert!(s.core.on_command(s.now, cmd, &mut s.io));
        rx.recv().unwrap()
    };
    let first = add(&mut s, true, None);
    assert_eq!(first, SocketRef::FIRST_EXTRA);
    let refused = add(&mut s, false, None);
    let third = add(&mut s, true, Some(first));
    assert_eq!(
        [refused.index(), third.index()],
        [first.index() + 1, first.index() + 2]
    );
    let socket_ops: Vec<_> =
        s.io.ops
            .iter()
            .filter_map(|o| match o {
                IoOp::AttachSocket(k) => Some((true, k.socket)),
                IoOp::DetachSocket(k) => Some((false, k.socket)),
                _ => None,
            })
            .collect();
    let i = |r: SocketRef| r.index() as u16;
    assert_eq!(
        socket_ops,
        [
            (true, i(first)),
            (true, i(refused)),
            (false, i(refused)),
            (true, i(third)),
            (false, i(first)),
        ]
    );
    // A request for a call that is not there gets the reason, and nothing is registered.
    let (tx, rx) = std::sync::mpsc::channel();
    let cmd = Command::WithNewSocket {
        call_id: "nope".into(),
        socket: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        run: Box::new(move |ctx: Result<NewSocket<'_>, ApiError>| {
            tx.send(ctx.err()).unwrap();
            false
        }),
    };
    let ops = s.io.ops.len();
    assert!(s.core.on_command(s.now, cmd, &mut s.io));
    assert!(matches!(rx.recv().unwrap(), Some(ApiError::NotFound(_))));
    assert_eq!(s.io.ops.len(), ops);
}

#[test]
fn schedstat_parses_run_and_wait_and_refuses_garbage() {
    assert_eq!(
        parse_schedstat(b"70707484 8513483 374\n"),
        Some((70_707_484, 8_513_483))
    );
    assert_eq!(parse_schedstat(b""), None);
    assert_eq!(parse_schedstat(b"12"), None);
    assert_eq!(parse_schedstat(b"x 1 2"), None);
    assert_eq!(parse_schedstat(b"18446744073709551615 1 1"), None);
}

/// The thread's own demand grows with the work it does (where /proc has schedstat).
#[test]
fn thread_demand_counts_this_threads_work() {
    let Some(mut d) = ThreadDemand::open() else {
        // Only where the kernel has no schedstat; it used to skip here everywhere (open()
        // always failed) and nobody noticed.
        assert!(
            std::fs::metadata("/proc/thread-self/schedstat").is_err(),
            "schedstat is there but ThreadDemand::open() failed"
        );
        return;
    };
    let mut x = 0u64;
    let until = Instant::now() + Duration::from_millis(20);
    while Instant::now() < until {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let (run, wait) = d.delta().expect("readable");
    let ns = run + wait;
    assert!(ns >= 10_000_000, "{ns} ns for 20 ms of spinning");
}

/// A due deadline is visible to the driver before the timers run.
#[test]
fn timers_due_follows_the_earliest_deadline() {
    let mut sh = Shard::new();
    let now = sh.now;
    assert!(!sh.core.timers_due(now));
    let mut armed = None;
    sh.core
        .timers
        .arm(&mut armed, 0, 0, Some(now + Duration::from_millis(5)));
    assert!(!sh.core.timers_due(now));
    assert!(sh.core.timers_due(now + Duration::from_millis(5)));
}

/// Silence fill never stands in for an internal packet that is already waiting in the socket
/// (a shard behind its load): while the driver reports the internal socket's queue non-empty,
/// the due fill frame waits, the call is run again next turn, and the packet, once handed in,
/// is forwarded (not refused as late). With the queue empty, fill runs as before; and a queue
/// that never drains (junk on the internal port) delays fill by at most `fill::MAX_DEFER`.
#[test]
fn fill_never_fires_for_a_stream_whose_packet_is_already_waiting() {
    let mut s = Shard::new();
    let _meta = s.insert("c", CallConfig::default());
    s.open_gate("c").expect("gate");
    let internal = key(0, 0, SocketRef::Internal);
    let wa = key(0, 0, SocketRef::WaV4);
    let mut from_server = RtpSource::new(0xbbbb, INTERNAL_OPUS_PT, 200, 0);
    let mut buf = [0u8; 2048];
    let ptime = Duration::from_millis(20);
    let to_meta = |io: &Recorder| {
        io.ops
            .iter()
            .filter(|o| matches!(o, IoOp::Send { via, to, .. } if *via == wa && *to == META))
            .count()
    };
    // Steady internal media: one packet every 20 ms, each forwarded to Meta.
    let mut feed = |s: &mut Shard, buf: &mut [u8; 2048]| {
        let n = from_server.write_next(buf, 160);
        s.core
            .on_datagram(s.now, internal, Some(MEDIA_SERVER), buf, n, &mut s.io);
    };
    for _ in 0..50 {
        s.io.ops.clear();
        feed(&mut s, &mut buf);
        assert_eq!(to_meta(&s.io), 1, "{:?}", s.io.ops);
        s.now += ptime;
        s.core.run_timers(s.now, &mut s.io);
    }

    // The shard falls behind: the next packets sit in the internal socket while the clock runs
    // past the fill deadline (fill_after: 60 ms). Turn after turn, 1 ms apart, for 150 ms: no
    // silence goes to Meta, though the call is due and asked.
    s.io.queued.push(internal);
    s.io.ops.clear();
    let checks = s.io.queue_checks;
    for _ in 0..150 {
        s.now += Duration::from_millis(1);
        s.core.run_timers(s.now, &mut s.io);
    }
    assert_eq!(to_meta(&s.io), 0, "fill while media waits: {:?}", s.io.ops);
    assert!(s.io.queue_checks > checks, "the core never asked");
    // The call stays due, so the driver keeps turning without a long wait.
    assert!(s.core.next_wake() <= s.now + TIMER_SLACK);

    // The waiting packets are handed in: forwarded, none refused as late.
    s.io.queued.clear();
    let late_before = s.get("c").unwrap().internal.dropped;
    for _ in 0..3 {
        s.io.ops.clear();
        feed(&mut s, &mut buf);
        assert_eq!(to_meta(&s.io), 1, "{:?}", s.io.ops);
    }
    assert_eq!(s.get("c").unwrap().internal.dropped, late_before);

    // Real silence (nothing queued): fill starts once the call's fill wait has passed, as
    // before (the 150 ms gap just seen stretched that wait toward fill_after_max).
    s.io.ops.clear();
    for _ in 0..400 {
        s.now += Duration::from_millis(1);
        s.core.run_timers(s.now, &mut s.io);
    }
    assert!(to_meta(&s.io) >= 5, "no fill in silence: {:?}", s.io.ops);

    // A queue that never drains (junk on the internal port): fill is late by at most MAX_DEFER.
    for _ in 0..10 {
        feed(&mut s, &mut buf);
        s.now += ptime;
        s.core.run_timers(s.now, &mut s.io);
    }
    s.io.queued.push(internal);
    s.io.ops.clear();
    let mut first_fill = None;
    for ms in 1..=600u64 {
        s.now += Duration::from_millis(1);
        s.core.run_timers(s.now, &mut s.io);
        if first_fill.is_none() && to_meta(&s.io) > 0 {
            first_fill = Some(ms);
        }
    }
    let first = first_fill.expect("fill never came");
    let bound = CallConfig::default().fill_after_max + crate::call::fill::MAX_DEFER + ptime;
    assert!(
        Duration::from_millis(first) <= bound,
        "fill {first} ms after the last packet (bound {bound:?})"
    );
}

/// The core asks the driver for a connected twin for each socket whose peer the call fixed
/// (an SDES call: Meta's address from the offer, the media server's from its SDP), once; the
/// ended call's twins go with its sockets (detach). With `connect_twins` off it never asks.
#[test]
fn fixed_peers_get_connected_twins_unless_switched_off() {
    let mut s = Shard::new();
    s.insert("a", CallConfig::default());
    assert_eq!(
        s.io.twins,
        [
            (key(0, 0, SocketRef::WaV4), Some(META)),
            (key(0, 0, SocketRef::Internal), Some(MEDIA_SERVER)),
        ]
    );
    s.open_gate("a").expect("gate");
    assert_eq!(s.io.twins.len(), 2, "asked once per peer");
    s.terminate("a");
    assert_eq!(s.io.twins.len(), 2, "closed by the detach, not one by one");
    assert!(s.io.ops.contains(&IoOp::Detach(SlotKey {
        slot: 0,
        generation: 0
    })));

    let mut s = Shard::new();
    s.core.set_connect_twins(false);
    s.insert("b", CallConfig::default());
    s.open_gate("b").expect("gate");
    assert_eq!(s.io.twins, []);
}
