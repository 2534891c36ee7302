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
    /// I/O system calls made so far, by [`crate::engine::IO_SYSCALLS`] kind.
    pub io_syscalls: [u64; crate::engine::IO_SYSCALLS.len()],
    /// Share of the last publish interval the shard spent working rather than waiting in
    /// poll (0..=1): the admission signal, since a shard owns one core's worth of work.
    pub busy_ratio: f64,
    /// Seconds spent working since the shard started (the counter behind `busy_ratio`, so
    /// `rate()` over any window gives the busy share).
    pub busy_seconds: f64,
    /// Datagrams received + sent per second over the last publish interval.
    pub packets_per_second: u64,
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
            io_syscalls: [0; crate::engine::IO_SYSCALLS.len()],
            busy_ratio: 0.0,
            busy_seconds: 0.0,
            packets_per_second: 0,
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
