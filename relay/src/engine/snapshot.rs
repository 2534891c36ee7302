//! Engine-wide counters for metrics, published by the shards once a second.
//!
//! The packet path only bumps plain integers inside each call; a shard folds them into a
//! [`ShardTotals`] (ended calls' final counters plus live calls' current ones) on a 1 s timer
//! and publishes a copy behind a mutex that only the metrics scrape and the shard's once-a-second
//! publish ever take. No packet touches it.

use std::time::Duration;

use crate::api::{EndCause, RefusedReason};

/// Counters of one leg: the call's own totals type, summed over calls and shards.
pub use crate::call::stats::LegTotals;

/// Observations for histograms, as raw samples since the last scrape would be unbounded; we
/// keep fixed buckets instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds (seconds or ratio), ascending; an implicit +Inf bucket follows.
    pub bounds: &'static [f64],
    /// Cumulative-free counts per bucket (len = bounds.len() + 1).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn observe_duration(&mut self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

pub const SETUP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub const LOSS_BUCKETS: &[f64] = &[0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
pub const JITTER_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16];

/// What one shard publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardTotals {
    pub shard: u32,
    pub calls: u64,
    pub calls_created: u64,
    /// Ended calls by cause.
    pub calls_ended: Vec<(EndCause, u64)>,
    pub whatsapp: LegTotals,
    pub internal: LegTotals,
    pub srtp_auth_failures_whatsapp: u64,
    pub srtp_auth_failures_internal: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub send_errors: u64,
    /// io_uring's pools running out, by [`crate::engine::IO_PRESSURE`] kind.
    pub io_pressure: [u64; crate::engine::IO_PRESSURE.len()],
    /// Connected twins open now (sockets whose fixed peer has a socket `connect`ed to it;
    /// `relay_connected_sockets`), and twins that could not be opened so far.
    pub connected_sockets: u64,
    pub twin_failures: u64,
    /// I/O system calls made so far, by [`crate::engine::IO_SYSCALLS`] kind.
    pub io_syscalls: [u64; crate::engine::IO_SYSCALLS.len()],
    /// Share of the last publish interval the shard spent working rather than waiting in
    /// poll (0..=1), of the CPU it may use ([`busy_share`]: a core, or its part of the
    /// process's CPU quota): the admission signal.
    pub busy_ratio: f64,
    /// `busy_ratio` integrated over time since the shard started (seconds of work, counted
    /// against the shard's CPU share), so `rate()` over any window gives the busy share.
    pub busy_seconds: f64,
    /// Datagrams received + sent per second over the last publish interval.
    pub packets_per_second: u64,
    /// How late the shard's turns started behind their earliest due deadline, p99 over the
    /// last publish interval (seconds, an upper bound: [`Lateness`]); 0 when no timer was due.
    pub turn_lateness_p99: f64,
    /// Time from create to ICE connected / DTLS connected.
    pub ice_setup: Histogram,
    pub dtls_setup: Histogram,
    /// Per ended call: loss ratio and jitter of what WhatsApp sent us.
    pub call_loss: Histogram,
    pub call_jitter: Histogram,
    /// Live calls sampled once a second (see [`crate::ops::quality`]).
    pub quality: crate::ops::quality::LiveQuality,
}

impl ShardTotals {
    pub fn new(shard: u32) -> Self {
        ShardTotals {
            shard,
            calls: 0,
            calls_created: 0,
            calls_ended: Vec::new(),
            whatsapp: LegTotals::default(),
            internal: LegTotals::default(),
            srtp_auth_failures_whatsapp: 0,
            srtp_auth_failures_internal: 0,
            packets_in: 0,
            packets_out: 0,
            send_errors: 0,
            io_pressure: [0; crate::engine::IO_PRESSURE.len()],
            connected_sockets: 0,
            twin_failures: 0,
            io_syscalls: [0; crate::engine::IO_SYSCALLS.len()],
            busy_ratio: 0.0,
            busy_seconds: 0.0,
            packets_per_second: 0,
            turn_lateness_p99: 0.0,
            ice_setup: Histogram::new(SETUP_BUCKETS),
            dtls_setup: Histogram::new(SETUP_BUCKETS),
            call_loss: Histogram::new(LOSS_BUCKETS),
            call_jitter: Histogram::new(JITTER_BUCKETS),
            quality: Default::default(),
        }
    }

    pub fn count_ended(&mut self, cause: EndCause) {
        match self.calls_ended.iter_mut().find(|(c, _)| *c == cause) {
            Some((_, n)) => *n += 1,
            None => self.calls_ended.push((cause, 1)),
        }
    }
}

/// The whole engine, for a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    /// The shards' I/O driver ("io_uring", "epoll").
    pub io_driver: &'static str,
    pub active_calls: u64,
    pub capacity: u64,
    pub draining: bool,
    /// Admission refuses new calls when every shard is at least this busy (1.0 = never).
    pub max_shard_busy: f64,
    /// The process's CPU limit (cgroup CFS quota) in cores, `None` when unlimited
    /// ([`crate::engine::cpu_limit`]).
    pub cpu_limit_cores: Option<f64>,
    pub shards: Vec<ShardTotals>,
    /// CreateCalls refused, indexed like [`RefusedReason::ALL`].
    pub refused: [u64; RefusedReason::ALL.len()],
    /// `None` when recording is not configured.
    pub recording: Option<RecordingTotals>,
}

/// The recorder's counters (see [`crate::record::RecorderStats`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordingTotals {
    pub active: u64,
    pub started: u64,
    pub packets_written: u64,
    pub bytes_written: u64,
    pub dropped_queue_full: u64,
    pub dropped_oversize: u64,
    pub dropped_invalid: u64,
    pub write_errors: u64,
}

impl From<&crate::record::RecorderStats> for RecordingTotals {
    fn from(s: &crate::record::RecorderStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        RecordingTotals {
            active: s.active.load(Relaxed),
            started: s.started.load(Relaxed),
            packets_written: s.packets_written.load(Relaxed),
            bytes_written: s.bytes_written.load(Relaxed),
            dropped_queue_full: s.dropped_queue_full.load(Relaxed),
            dropped_oversize: s.dropped_oversize.load(Relaxed),
            dropped_invalid: s.dropped_invalid.load(Relaxed),
            write_errors: s.write_errors.load(Relaxed),
        }
    }
}

impl MetricsSnapshot {
    /// Every shard is too busy to take another call: admission refuses, readiness is off.
    pub fn overloaded(&self) -> bool {
        overloaded(
            self.shards.iter().map(|s| s.busy_ratio),
            self.max_shard_busy,
        )
    }
}

/// A shard's busy share over `elapsed`, as published and as admission reads it (0..=1).
///
/// `thread` is the shard thread's time on a CPU and time runnable but waiting for one
/// (`/proc/thread-self/schedstat`), when measured; `loop_busy` the loop's own time outside its
/// wait (the floor, and the whole figure where schedstat is missing). `share` is the part of a
/// core the shard may use: 1.0, or its part of the process's CPU quota
/// ([`crate::engine::cpu_limit::CpuBudget::shard_share`]).
///
/// The figure is the larger of
/// - run + wait over the interval: the thread's demand. It reaches 1.0 when the thread is
///   never idle, whether the CPU was taken by others or the cgroup's quota throttled it
///   (measured on this kernel, 6.18: a busy loop under a quarter-core quota read run 0.249,
///   run_delay 0.747 of the wall time; at half a core 0.500 and 0.501; the throttled time is
///   counted as waiting). But under a quota it does not rise gradually: below the quota the
///   thread is rarely throttled and the demand is about its run time, at the quota it jumps to
///   1.0 (BENCHMARKS.md, session 8: 0.26 with 748 calls up, 0.90 with 750), too late to refuse.
/// - run ÷ share: the run time against what the quota lets this shard use, which rises with
///   the load up to the quota. Without a quota (share 1.0) it never exceeds the demand, so
///   nothing changes there.
pub fn busy_share(
    elapsed: Duration,
    loop_busy: Duration,
    thread: Option<(Duration, Duration)>,
    share: f64,
) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let share = if share.is_finite() && share > 0.0 {
        share.min(1.0)
    } else {
        1.0
    };
    let lp = loop_busy.as_secs_f64() / secs;
    let b = match thread {
        Some((run, wait)) => {
            let run = run.as_secs_f64() / secs;
            (run + wait.as_secs_f64() / secs).max(run / share).max(lp)
        }
        None => lp / share,
    };
    b.clamp(0.0, 1.0)
}

/// How late a shard's turns start behind their deadlines: per turn with a due timer, how long
/// after the earliest due deadline the turn began (the loop wakes 1 ms after it when idle). A
/// shard that keeps up is late by about that; one that is behind (its CPU taken, throttled by
/// a quota, more work than it can do) by tens of milliseconds, every turn. Counted in
/// power-of-two microsecond buckets (a fixed array: no allocation), read as a p99 once a second.
/// A metric only: as an admission rule (refuse a shard over 20 ms while at least half busy) it
/// did not fire before loss under a CPU quota (BENCHMARKS.md, "Admission under a CPU quota"):
/// timer turns read 1-16 ms at the edge and 33 ms only once calls were already losing packets.
#[derive(Clone, Debug, Default)]
pub struct Lateness {
    buckets: [u32; LATENESS_BUCKETS],
    n: u32,
}

const LATENESS_BUCKETS: usize = 25; // up to 2^25 µs ≈ 33 s

/// Below this many late-turn observations in a second the p99 is not read (0).
pub const LATENESS_MIN_TURNS: u32 = 50;

impl Lateness {
    pub fn observe(&mut self, late: Duration) {
        let us = late.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = (u64::BITS - us.leading_zeros()) as usize; // 0 for 0 µs, 1 for 1 µs, 2 for 2-3 ...
        self.buckets[i.min(LATENESS_BUCKETS - 1)] += 1;
        self.n = self.n.saturating_add(1);
    }

    /// The p99's bucket's upper bound in seconds (0 with fewer than [`LATENESS_MIN_TURNS`]
    /// observations), and start over.
    pub fn take_p99(&mut self) -> f64 {
        let n = std::mem::take(&mut self.n);
        let buckets = std::mem::take(&mut self.buckets);
        if n < LATENESS_MIN_TURNS {
            return 0.0;
        }
        let want = n - n / 100; // at least 99 % at or below
        let mut seen = 0u32;
        for (i, c) in buckets.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (1u64 << i) as f64 / 1e6;
            }
        }
        (1u64 << (LATENESS_BUCKETS - 1)) as f64 / 1e6
    }
}

/// Packets (in + out) per second a call moves at packet time `ptime` when both legs talk: one
/// datagram each way on each leg per packet time.
pub fn nominal_call_pps(ptime: std::time::Duration) -> f64 {
    4.0 / ptime.as_secs_f64().max(0.001)
}

/// Below this many packets per second (50 calls at 20 ms) a shard's busy share is mostly fixed
/// work (timers, the once-a-second publish) and time spent waiting for a contended CPU, not a
/// cost per packet worth extrapolating: with one call measured, the projection would double
/// whatever the share is, and on a busy machine refuse a shard's second call. Admission reads
/// the measured share as it is there, as before; the projection matters at the edge, hundreds
/// of calls up.
pub(crate) const PROJECT_MIN_PPS: u64 = 10_000;

/// A shard's busy share once its calls' media flows, one more call included: the measured cost
/// per packet (`busy` ÷ `packets_per_second`, both over the last published second, when
/// `measured_calls` were up) times the packet rate of `calls_now + 1` calls, each at least
/// `call_pps` (a call admitted since the last publish, or whose media has not started yet, is
/// counted at its nominal rate before the measurement sees it). Never below `busy`.
///
/// Why: the measured share trails admission by a second or more (one publish interval, plus
/// setup until media flows), so at 25-50 setups a second admission on `busy` alone lets
/// dozens of calls past the limit before it sees them (BENCHMARKS.md, 2026-12-05: demand 0.26
/// with 748 calls up, 0.90 with 750). The projection counts every admitted call at once.
pub fn projected_busy(
    busy: f64,
    packets_per_second: u64,
    measured_calls: u64,
    calls_now: u64,
    call_pps: f64,
) -> f64 {
    if packets_per_second < PROJECT_MIN_PPS || busy.is_nan() || busy <= 0.0 {
        return busy;
    }
    let pps = packets_per_second as f64;
    let cost = busy / pps;
    let per_call = if measured_calls > 0 {
        (pps / measured_calls as f64).max(call_pps)
    } else {
        call_pps
    };
    busy.max(cost * per_call * (calls_now + 1) as f64)
}

/// True when no shard is below `limit` (and there is at least one shard).
pub fn overloaded(busy: impl Iterator<Item = f64>, limit: f64) -> bool {
    if limit >= 1.0 {
        return false;
    }
    let mut shards = 0;
    for b in busy {
        if b < limit {
            return false;
        }
        shards += 1;
    }
    shards > 0
}

#[cfg(test)]
mod projection_tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lateness_p99_in_power_of_two_buckets() {
        let mut l = Lateness::default();
        // Too few turns: not read.
        for _ in 0..49 {
            l.observe(Duration::from_secs(1));
        }
        assert_eq!(l.take_p99(), 0.0);
        // 990 turns 1 ms late and 10 at 100 ms: the p99 is the 1 ms bucket (≤ 1.024 ms).
        for _ in 0..990 {
            l.observe(Duration::from_micros(1000));
        }
        for _ in 0..10 {
            l.observe(Duration::from_millis(100));
        }
        assert_eq!(l.take_p99(), 1024e-6);
        // Taken: starts over.
        assert_eq!(l.take_p99(), 0.0);
        // Every turn 30 ms late: p99 ≥ 30 ms (the 32.768 ms bound).
        for _ in 0..100 {
            l.observe(Duration::from_millis(30));
        }
        assert_eq!(l.take_p99(), 32768e-6);
        for _ in 0..100 {
            l.observe(Duration::ZERO);
            l.observe(Duration::from_secs(10_000));
        }
        assert_eq!(l.take_p99(), (1u64 << 24) as f64 / 1e6);
    }

    /// Without a quota the share is the demand (run + wait), as before.
    #[test]
    fn busy_share_without_a_quota_is_the_demand() {
        let s = ms(1000);
        let b = busy_share(s, ms(100), Some((ms(200), ms(100))), 1.0);
        assert!((b - 0.3).abs() < 1e-9, "{b}");
        // The loop's own time is the floor.
        assert_eq!(busy_share(s, ms(500), Some((ms(200), ms(100))), 1.0), 0.5);
        assert_eq!(busy_share(s, ms(400), None, 1.0), 0.4);
        assert_eq!(busy_share(s, ms(100), Some((ms(900), ms(900))), 1.0), 1.0);
        assert_eq!(busy_share(Duration::ZERO, ms(1), None, 1.0), 0.0);
    }

    /// Under a quarter-core quota, run time is counted against the quarter: it rises with the
    /// load, where run + wait stays low until the shard is throttled and then reads 1.0.
    #[test]
    fn busy_share_under_a_quota_counts_run_time_against_the_share() {
        let s = ms(1000);
        // 200 ms on a CPU, little waiting: 80 % of what a quarter core allows.
        let b = busy_share(s, ms(150), Some((ms(200), ms(20))), 0.25);
        assert!((b - 0.8).abs() < 1e-9, "{b}");
        // Throttled: run 250 ms, 750 ms waiting on the quota.
        assert_eq!(busy_share(s, ms(900), Some((ms(250), ms(750))), 0.25), 1.0);
        // No schedstat: the loop's time against the share.
        assert!((busy_share(s, ms(100), None, 0.25) - 0.4).abs() < 1e-9);
        // Nonsense shares fall back to a whole core.
        assert_eq!(busy_share(s, ms(0), Some((ms(200), ms(0))), 0.0), 0.2);
        assert_eq!(busy_share(s, ms(0), Some((ms(200), ms(0))), f64::NAN), 0.2);
        assert_eq!(busy_share(s, ms(0), Some((ms(200), ms(0))), 3.0), 0.2);
    }

    const PPS: f64 = 200.0; // 20 ms packets

    #[test]
    fn nominal_rate_is_four_streams_at_the_packet_time() {
        assert_eq!(nominal_call_pps(Duration::from_millis(20)), PPS);
    }

    /// Calls admitted since the last publish count at their packet rate before any measurement
    /// sees them; with no new calls the projection is the measured share plus one call.
    #[test]
    fn calls_not_yet_measured_count_at_their_rate() {
        // 700 calls measured at 0.80 of a core, 140,000 packets/s.
        let p = |now| projected_busy(0.80, 140_000, 700, now, PPS);
        assert!((p(700) - 0.80 * 701.0 / 700.0).abs() < 1e-9);
        // 80 more admitted meanwhile: 0.80 measured, but 781 calls' worth projected.
        assert!(p(780) < 0.9);
        assert!(p(788) > 0.9, "{}", p(788));
        // A shard that just lost calls is never projected below its measured share.
        assert_eq!(p(100), 0.80);
        // Idle or lightly loaded shards: the measured share as it is (one call on a contended
        // machine reading 0.5 must not project to 1.0 for the second).
        assert_eq!(projected_busy(0.01, 100, 1, 50, PPS), 0.01);
        assert_eq!(projected_busy(0.50, 200, 1, 1, PPS), 0.50);
        assert_eq!(projected_busy(0.50, 9_999, 49, 49, PPS), 0.50);
        assert_eq!(projected_busy(0.0, 0, 0, 0, PPS), 0.0);
        assert!(projected_busy(f64::NAN, 9_000, 10, 10, PPS).is_nan());
    }

    /// Calls still setting up (no media yet) in the measurement do not dilute the cost per
    /// call: each counts at least at the nominal rate.
    #[test]
    fn silent_calls_in_the_measurement_count_at_the_nominal_rate() {
        // 500 calls, only 250 with media flowing: 50,000 packets/s at 0.40.
        let p = projected_busy(0.40, 50_000, 500, 500, PPS);
        assert!((p - 0.40 / 50_000.0 * PPS * 501.0).abs() < 1e-9, "{p}");
    }

    /// The edge, simulated: a shard whose true demand is 4 µs per packet, calls set up at 50
    /// a second, media starting 0.5 s after admission, the busy share published once a second
    /// (as the shard does), admission limit 0.9. On the measured share alone, admission lets
    /// calls past the limit for the second and a half the measurement trails; on the projection
    /// it stops within a call of it.
    #[test]
    fn projected_admission_stops_at_the_edge_where_measured_share_overshoots() {
        fn run(project: bool) -> (u64, f64) {
            const COST: f64 = 4e-6;
            let limit = 0.9;
            let media_after = 25; // steps (0.5 s)
            let mut admitted_at: Vec<u64> = Vec::new();
            let (mut busy, mut pps, mut measured) = (0.0f64, 0u64, 0u64);
            for t in 0..(30 * 50u64) {
                // Once a second: publish what the last second measured.
                if t % 50 == 0 {
                    let flowing = admitted_at
                        .iter()
                        .filter(|&&a| a + media_after <= t)
                        .count();
                    pps = (flowing as f64 * PPS) as u64;
                    busy = pps as f64 * COST;
                    measured = admitted_at.len() as u64;
                }
                let calls_now = admitted_at.len() as u64;
                let b = if project {
                    projected_busy(busy, pps, measured, calls_now, PPS)
                } else {
                    busy
                };
                if !overloaded(std::iter::once(b), limit) {
                    admitted_at.push(t);
                }
            }
            let n = admitted_at.len() as u64;
            (n, n as f64 * PPS * COST)
        }
        let edge = (0.9 / (PPS * 4e-6)) as u64; // 1,125 calls
        let (n, demand) = run(true);
        assert!(n <= edge + 1 && n + 60 >= edge, "{n} admitted, edge {edge}");
        assert!(demand <= 0.9 + PPS * 4e-6, "{demand}");
        let (n_raw, demand_raw) = run(false);
        assert!(n_raw >= edge + 20, "measured share alone admitted {n_raw}");
        assert!(demand_raw > 0.9 + 0.01, "{demand_raw}");
    }
}
