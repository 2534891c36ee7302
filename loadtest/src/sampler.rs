//! Once a second: take the generator's counters, read the relay's CPU and RSS from /proc, and
//! turn the interval into a [`Sample`] (printed as the live line and kept for the report).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::generator::Generator;
use crate::procfs::{CpuMeter, CpuSource, rss_bytes};
use crate::scrape;
use crate::stats::Totals;
use crate::syscalls::SyscallMeter;

/// One interval (normally one second) of a run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the run started (end of the interval).
    pub t_s: f64,
    /// The interval's length, s.
    pub dt_s: f64,
    /// Calls with media on.
    pub calls: usize,
    /// Stamped packets received per second, WhatsApp → internal and internal → WhatsApp.
    pub up_pps: f64,
    pub down_pps: f64,
    /// Packets lost in this interval (stamp-counter gaps).
    pub up_lost: u64,
    pub down_lost: u64,
    pub up_p50_ms: f64,
    pub up_p99_ms: f64,
    pub down_p50_ms: f64,
    pub down_p99_ms: f64,
    pub relay_cpu_pct: Option<f64>,
    pub relay_rss_bytes: Option<u64>,
    /// The generator threads' CPU, percent of one core.
    pub gen_cpu_pct: Option<f64>,
    /// This whole process (generator, gRPC client, and an in-process relay or forwarder).
    pub process_cpu_pct: Option<f64>,
    /// Setups completed in this interval.
    pub setups: u64,
}

/// Aggregates over a window (the steady part of a run, or one ramp step).
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub totals: Totals,
    pub samples: Vec<Sample>,
    /// The target's system calls per second over the window, and how they were counted.
    pub syscalls_per_s: Option<(f64, &'static str)>,
    /// Silence-fill packets the relay itself counted over the window (its `/metrics`).
    pub relay_fill: Option<u64>,
}

impl Window {
    fn mean(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
    pub fn relay_cpu_mean(&self) -> Option<f64> {
        self.mean(|s| s.relay_cpu_pct)
    }
    pub fn gen_cpu_mean(&self) -> Option<f64> {
        self.mean(|s| s.gen_cpu_pct)
    }
    pub fn process_cpu_mean(&self) -> Option<f64> {
        self.mean(|s| s.process_cpu_pct)
    }
    /// The time the window's samples cover, s (per-second rates divide by this, not by the
    /// nominal hold: a window holds whole sampler intervals).
    pub fn covered_s(&self) -> f64 {
        self.samples.iter().map(|s| s.dt_s).sum()
    }
    pub fn relay_rss_max(&self) -> Option<u64> {
        self.samples.iter().filter_map(|s| s.relay_rss_bytes).max()
    }
}

pub struct Sampler {
    generator: Arc<Generator>,
    relay_pid: Option<u32>,
    relay_cpu: Option<CpuMeter>,
    gen_cpu: CpuMeter,
    process_cpu: CpuMeter,
    started: Instant,
    last: Instant,
    active: Arc<AtomicUsize>,
    pub cumulative: Totals,
    pub timeline: Vec<Sample>,
    window: Option<Window>,
    pub rss_max: Option<u64>,
    live: bool,
    syscalls: Option<SyscallMeter>,
    /// The relay's /metrics, and its fill counter when the window opened.
    relay_metrics: Option<std::net::SocketAddr>,
    fill_at_open: Option<f64>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    /// `relay_cpu`: where the relay's CPU time is (its process, or the forwarder thread).
    pub fn new(
        generator: Arc<Generator>,
        relay_pid: Option<u32>,
        relay_cpu: Option<CpuSource>,
        active: Arc<AtomicUsize>,
        live: bool,
    ) -> Sampler {
        let now = Instant::now();
        Sampler {
            gen_cpu: CpuMeter::new(CpuSource::Threads(generator.thread_ids())),
            process_cpu: CpuMeter::new(CpuSource::Process(std::process::id())),
            relay_cpu: relay_cpu.map(CpuMeter::new),
            relay_pid,
            generator,
            started: now,
            last: now,
            active,
            cumulative: Totals::default(),
            timeline: Vec::new(),
            window: None,
            rss_max: None,
            live,
            syscalls: None,
            relay_metrics: None,
            fill_at_open: None,
        }
    }

    /// Also count the target's system calls and read the relay's fill counter per window.
    pub fn with_meters(
        mut self,
        syscalls: Option<SyscallMeter>,
        relay_metrics: Option<std::net::SocketAddr>,
    ) -> Sampler {
        self.syscalls = syscalls;
        self.relay_metrics = relay_metrics;
        self
    }

    fn relay_fill(&self) -> Option<f64> {
        let text = scrape::scrape(self.relay_metrics?).ok()?;
        scrape::fill_packets(&text)
    }

    pub fn open_window(&mut self) {
        self.window = Some(Window::default());
        if let Some(m) = self.syscalls.as_mut() {
            m.start();
        }
        self.fill_at_open = self.relay_fill();
    }

    pub fn close_window(&mut self) -> Window {
        let mut w = self.window.take().unwrap_or_default();
        if let Some(m) = self.syscalls.as_mut() {
            let how = m.describe();
            w.syscalls_per_s = m
                .stop()
                .filter(|(_, t)| !t.is_zero())
                .map(|(n, t)| (n as f64 / t.as_secs_f64(), how));
        }
        if let (Some(before), Some(after)) = (self.fill_at_open.take(), self.relay_fill()) {
            w.relay_fill = Some((after - before).max(0.0) as u64);
        }
        w
    }

    /// Takes the interval since the last call; prints the live line if enabled.
    pub fn tick(&mut self) -> Sample {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        let t = self.generator.take_totals();
        let rss = self.relay_pid.and_then(rss_bytes);
        if let Some(r) = rss {
            self.rss_max = Some(self.rss_max.map_or(r, |m| m.max(r)));
        }
        let s = Sample {
            t_s: now.duration_since(self.started).as_secs_f64(),
            dt_s: dt,
            calls: self.active.load(Ordering::Relaxed),
            up_pps: t.up.received as f64 / dt,
            down_pps: t.down.received as f64 / dt,
            up_lost: t.up.lost(),
            down_lost: t.down.lost(),
            up_p50_ms: t.up.latency.quantile(0.5) as f64 / 1000.0,
            up_p99_ms: t.up.latency.quantile(0.99) as f64 / 1000.0,
            down_p50_ms: t.down.latency.quantile(0.5) as f64 / 1000.0,
            down_p99_ms: t.down.latency.quantile(0.99) as f64 / 1000.0,
            relay_cpu_pct: self.relay_cpu.as_mut().and_then(CpuMeter::sample),
            relay_rss_bytes: rss,
            gen_cpu_pct: self.gen_cpu.sample(),
            process_cpu_pct: self.process_cpu.sample(),
            setups: t.setups,
        };
        self.cumulative.merge(&t);
        if let Some(w) = self.window.as_mut() {
            w.totals.merge(&t);
            w.samples.push(s.clone());
        }
        if self.live {
            eprintln!("{}", live_line(&s, t.up.received + t.down.received));
        }
        self.timeline.push(s.clone());
        s
    }
}

fn pct(lost: u64, got: f64) -> f64 {
    let total = lost as f64 + got;
    if total > 0.0 {
        100.0 * lost as f64 / total
    } else {
        0.0
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}{unit}"))
}

/// `t=12s calls=200 pps up/down 10000/10000 loss 0.000%/0.000% p99 0.41/0.38 ms relay 23% 45MiB generator 20%`
pub fn live_line(s: &Sample, _received: u64) -> String {
    format!(
        "t={:>4.0}s calls={:<5} pps up/down {:>7.0}/{:<7.0} loss {:.3}%/{:.3}% p99 {:.2}/{:.2} ms  relay cpu {} rss {}  generator cpu {}",
        s.t_s,
        s.calls,
        s.up_pps,
        s.down_pps,
        pct(s.up_lost, s.up_pps),
        pct(s.down_lost, s.down_pps),
        s.up_p99_ms,
        s.down_p99_ms,
        opt(s.relay_cpu_pct, "%"),
        s.relay_rss_bytes
            .map_or_else(|| "-".into(), |b| format!("{}MiB", b >> 20)),
        opt(s.gen_cpu_pct, "%"),
    )
}
