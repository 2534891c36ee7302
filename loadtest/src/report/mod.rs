//! What a run reports: the final table, JSON (serde) and the HTML report ([`html`]).
//!
//! - this file: one run's report ([`RunReport`]: per direction, resources, the generator's
//!   health, the timeline) and its text table;
//! - [`document`]: the whole `--json` file ([`Report`]: command, machine, settings, result);
//! - one file per mode that reports more than a run: [`ramp`], [`capacity`], [`overload`],
//!   [`compare`]; [`slo`]: the service level those modes judge by;
//! - [`html`]: the self-contained HTML report.

pub mod capacity;
pub mod compare;
pub mod document;
pub mod html;
pub mod overload;
pub mod ramp;
pub mod slo;

pub use capacity::{CapacityReport, Probe};
pub use compare::CompareEntry;
pub use document::{Machine, ModeReport, Report, Settings, load_average};
pub use overload::OverloadReport;
pub use ramp::{RampReport, StepReport};
pub use slo::Slo;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::hist::{Bucket, Percentiles};
use crate::sampler::{Sample, Window};
use crate::stats::{DirTotals, Totals};

/// One direction's result.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DirReport {
    pub sent: u64,
    pub received: u64,
    /// Received in the steady window (all calls up, after the warmup, before teardown).
    pub steady_received: u64,
    /// `sent - received` after the settle time: packets that never arrived.
    pub lost: u64,
    pub loss_ratio: f64,
    /// Late or duplicated packets (stamp counter not above the highest seen).
    pub reordered: u64,
    /// One-way latency over the whole run.
    pub latency: Percentiles,
    /// One-way latency in the steady window (all calls up, before teardown).
    pub steady_latency: Percentiles,
    pub latency_buckets: Vec<Bucket>,
    /// RFC 3550 jitter per stream at call end.
    pub jitter: Percentiles,
}

impl DirReport {
    fn new(all: &DirTotals, steady: &DirTotals) -> DirReport {
        let lost = all.sent.saturating_sub(all.received);
        DirReport {
            sent: all.sent,
            received: all.received,
            steady_received: steady.received,
            lost,
            loss_ratio: if all.sent > 0 {
                lost as f64 / all.sent as f64
            } else {
                0.0
            },
            reordered: all.reordered,
            latency: all.latency.percentiles(),
            steady_latency: steady.latency.percentiles(),
            latency_buckets: all.latency.buckets(),
            jitter: all.jitter.percentiles(),
        }
    }
}

/// Relay CPU and memory.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Resources {
    /// Mean over the steady window, percent of one core.
    pub relay_cpu_pct: Option<f64>,
    pub relay_cpu_pct_max: Option<f64>,
    pub relay_rss_baseline_bytes: Option<u64>,
    pub relay_rss_peak_bytes: Option<u64>,
    /// (peak − baseline) / the most calls that were up at once.
    pub relay_rss_per_call_bytes: Option<f64>,
    /// The generator threads, mean over the steady window.
    pub gen_cpu_pct: Option<f64>,
    /// The whole load-test process (with an in-process relay or forwarder, if any).
    pub process_cpu_pct: Option<f64>,
    /// The target's system calls per second over the steady window.
    pub syscalls_per_s: Option<f64>,
    /// How they were counted: "self-counted" (raw forwarders), "relay /metrics" (the relay's
    /// I/O counters), "perf raw_syscalls" (every thread of the process).
    pub syscalls_source: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GeneratorHealth {
    /// How late the generator's 20 ms ticks ran: if this grows, the generator is the
    /// bottleneck, not the relay.
    pub tick_lag: Percentiles,
    pub ticks_skipped: u64,
    pub send_errors: u64,
    pub unknown_source: u64,
    pub srtp_errors: u64,
    /// Unstamped media from the relay (its silence fill toward WhatsApp), whole run.
    pub fill_received: u64,
    /// The same in the steady window: the SIP peers send every 20 ms throughout, so any fill
    /// here was sent while real media was on its way (late or queued at the relay).
    pub steady_fill_received: u64,
    /// Fill packets the relay counted itself in the steady window (its `/metrics`), if it
    /// exports them.
    pub relay_fill: Option<u64>,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
}

/// Tick lag (p99) above which the generator's own delays swamp what it measures.
const LAG_LIMIT_MS: f64 = 2.0;
/// Generator CPU (percent of a core) above which it is the bottleneck.
const GEN_CPU_LIMIT: f64 = 90.0;

impl RunReport {
    /// Why the latency figures cannot be trusted, if they cannot: the generator ran its 20 ms
    /// ticks late (it was starved or saturated), so its own delays are in the numbers and the
    /// load it offered was burstier than asked.
    pub fn generator_warning(&self) -> Option<String> {
        let lag = self.generator.tick_lag.p99_ms;
        let cpu = self.resources.gen_cpu_pct.unwrap_or(0.0);
        let skipped = self.generator.ticks_skipped;
        if lag <= LAG_LIMIT_MS && cpu <= GEN_CPU_LIMIT && skipped == 0 {
            return None;
        }
        Some(format!(
            "the generator itself ran late (tick lag p99 {lag:.1} ms, {skipped} ticks skipped, generator CPU {cpu:.0}%): latency and loss include its own delays, not only the target's. Give it a core of its own (--taskset), more --threads, --nice -20 on a busy machine, or fewer calls."
        ))
    }
}

/// The relay's own counters, summed from the final CallInfo of each Terminate.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RelayCounters {
    pub calls: u64,
    pub whatsapp_received: u64,
    pub whatsapp_sent: u64,
    pub internal_received: u64,
    pub internal_sent: u64,
    pub dropped: u64,
    pub auth_failures: u64,
}

impl RelayCounters {
    /// "WhatsApp rx .. tx .., internal rx .. tx .., dropped .., auth failures ..", as the table
    /// and the HTML report show them.
    pub fn counts(&self) -> String {
        format!(
            "WhatsApp rx {} tx {}, internal rx {} tx {}, dropped {}, auth failures {}",
            self.whatsapp_received,
            self.whatsapp_sent,
            self.internal_received,
            self.internal_sent,
            self.dropped,
            self.auth_failures
        )
    }
}

/// Where setup time goes.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SetupBreakdown {
    pub create_rpc: Percentiles,
    /// CreateCall answered → the Meta peer's DTLS is up (ICE checks, nomination, handshake).
    pub ice_dtls: Percentiles,
    pub open_gate_rpc: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RunReport {
    pub label: String,
    /// Calls asked for (run, capacity probe) or created (churn).
    pub calls: usize,
    pub calls_ok: usize,
    /// Failed calls by stage ("create", "ready", "open_gate", "terminate"), with one example.
    pub failures: BTreeMap<String, (u64, String)>,
    pub hold_s: f64,
    /// Time between the last call coming up and the steady window (not measured).
    pub warmup_s: f64,
    /// The time the steady window's samples cover (whole sampler intervals; about `hold_s`).
    pub steady_s: f64,
    /// WhatsApp → internal (Meta peer → relay → SIP peer).
    pub up: DirReport,
    /// Internal → WhatsApp (SIP peer → relay → Meta peer).
    pub down: DirReport,
    /// Create request → first stamped media received at both peers.
    pub setup: Percentiles,
    pub setup_buckets: Vec<Bucket>,
    pub setup_stages: SetupBreakdown,
    pub resources: Resources,
    pub generator: GeneratorHealth,
    pub relay: Option<RelayCounters>,
    pub timeline: Vec<Sample>,
}

impl RunReport {
    pub fn failures_total(&self) -> u64 {
        self.failures.values().map(|(n, _)| n).sum()
    }

    /// Worst loss ratio of the two directions.
    pub fn loss_ratio(&self) -> f64 {
        self.up.loss_ratio.max(self.down.loss_ratio)
    }

    /// Packets forwarded per second in the steady window, both directions.
    pub fn forwarded_pps(&self) -> f64 {
        let covered = if self.steady_s > 0.0 {
            self.steady_s
        } else {
            self.hold_s
        };
        (self.up.steady_received + self.down.steady_received) as f64 / covered.max(0.001)
    }

    /// The target's system calls per forwarded packet in the steady window.
    pub fn syscalls_per_packet(&self) -> Option<f64> {
        let pps = self.forwarded_pps();
        self.resources
            .syscalls_per_s
            .filter(|_| pps > 0.0)
            .map(|s| s / pps)
    }

    /// The target's CPU per forwarded packet in the steady window, µs (kernel time included).
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        let pps = self.forwarded_pps();
        self.resources
            .relay_cpu_pct
            .filter(|_| pps > 0.0)
            .map(|c| c / 100.0 * 1e6 / pps)
    }

    /// Worst steady p99 of the two directions, ms.
    pub fn steady_p99_ms(&self) -> f64 {
        self.up
            .steady_latency
            .p99_ms
            .max(self.down.steady_latency.p99_ms)
    }
}

pub struct RunInputs<'a> {
    pub stages: SetupBreakdown,
    pub label: String,
    pub calls: usize,
    pub calls_ok: usize,
    pub failures: BTreeMap<String, (u64, String)>,
    pub hold_s: f64,
    pub warmup_s: f64,
    pub all: &'a Totals,
    pub steady: &'a Window,
    pub timeline: Vec<Sample>,
    pub rss_baseline: Option<u64>,
    pub rss_peak: Option<u64>,
    pub relay: Option<RelayCounters>,
}

pub fn build(r: RunInputs<'_>) -> RunReport {
    // Without a steady window (a ramp's whole run), the whole run is the window.
    let whole;
    let steady = if r.steady.samples.is_empty() {
        whole = Window {
            totals: r.all.clone(),
            samples: r.timeline.clone(),
            ..Window::default()
        };
        &whole
    } else {
        r.steady
    };
    let s = &steady.totals;
    // Per call at the peak of concurrent calls (under churn, far fewer than were created).
    let peak_calls = r
        .timeline
        .iter()
        .map(|x| x.calls)
        .max()
        .unwrap_or(0)
        .max(if r.timeline.is_empty() { r.calls_ok } else { 0 });
    let per_call = match (r.rss_baseline, r.rss_peak) {
        (Some(b), Some(p)) if peak_calls > 0 => {
            Some(p.saturating_sub(b) as f64 / peak_calls as f64)
        }
        _ => None,
    };
    let max = steady
        .samples
        .iter()
        .filter_map(|x| x.relay_cpu_pct)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    RunReport {
        label: r.label,
        calls: r.calls,
        calls_ok: r.calls_ok,
        failures: r.failures,
        hold_s: r.hold_s,
        warmup_s: r.warmup_s,
        steady_s: steady.covered_s(),
        up: DirReport::new(&r.all.up, &s.up),
        down: DirReport::new(&r.all.down, &s.down),
        setup: r.all.setup.percentiles(),
        setup_buckets: r.all.setup.buckets(),
        setup_stages: r.stages,
        resources: Resources {
            relay_cpu_pct: steady.relay_cpu_mean(),
            relay_cpu_pct_max: max,
            relay_rss_baseline_bytes: r.rss_baseline,
            relay_rss_peak_bytes: r.rss_peak,
            relay_rss_per_call_bytes: per_call,
            gen_cpu_pct: steady.gen_cpu_mean(),
            process_cpu_pct: steady.process_cpu_mean(),
            syscalls_per_s: steady.syscalls_per_s.map(|(v, _)| v),
            syscalls_source: steady.syscalls_per_s.map(|(_, how)| how.to_string()),
        },
        generator: GeneratorHealth {
            tick_lag: r.all.tick_lag.percentiles(),
            ticks_skipped: r.all.ticks_skipped,
            send_errors: r.all.send_errors,
            unknown_source: r.all.unknown_source,
            srtp_errors: r.all.srtp_errors,
            fill_received: r.all.fill_received,
            steady_fill_received: s.fill_received,
            relay_fill: steady.relay_fill,
            rtcp_sent: r.all.rtcp_sent,
            rtcp_received: r.all.rtcp_received,
        },
        relay: r.relay,
        timeline: r.timeline,
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}%"))
}

fn opt_mib(v: Option<u64>) -> String {
    v.map_or_else(
        || "-".into(),
        |v| format!("{:.1} MiB", v as f64 / 1048576.0),
    )
}

/// Printed under failures whose message carries the relay's admission refusal
/// ([`relay::engine::OVERLOADED`]; see the relay's README, "Admission").
const ADMISSION_HINT: &str = "   the relay's admission control refused these: every shard was busier than \
--max-shard-busy-percent (default 90) over the last second. That protects the calls already up; \
to load a shard past it, start the relay with --relay-arg=--max-shard-busy-percent=100, or give \
it more shards (--relay-shards).";

/// The final table.
pub fn table(r: &RunReport) -> String {
    let mut o = String::new();
    let line = |o: &mut String, s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(
        &mut o,
        format!(
            "== {}: {} calls ({} ok, {} failed), steady {:.0} s after {:.0} s warmup",
            r.label,
            r.calls,
            r.calls_ok,
            r.failures_total(),
            r.hold_s,
            r.warmup_s
        ),
    );
    for (stage, (n, example)) in &r.failures {
        let what = if stage == "ended_by_relay" {
            "ended by the relay before the run ended".to_string()
        } else {
            format!("failed at {stage}")
        };
        line(&mut o, format!("   {what}: {n} (e.g. {example})"));
    }
    if let Some(w) = r.generator_warning() {
        line(&mut o, format!("   WARNING: {w}"));
    }
    if r.failures
        .values()
        .any(|(_, e)| e.contains(relay::engine::OVERLOADED))
    {
        line(&mut o, ADMISSION_HINT.to_string());
    }
    line(
        &mut o,
        format!(
            "{:<22} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "direction",
            "sent",
            "received",
            "lost",
            "loss",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "jitter"
        ),
    );
    for (name, d) in [
        ("WhatsApp -> internal", &r.up),
        ("internal -> WhatsApp", &r.down),
    ] {
        line(
            &mut o,
            format!(
                "{:<22} {:>10} {:>10} {:>8} {:>8.4}% {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6.3}ms",
                name,
                d.sent,
                d.received,
                d.lost,
                d.loss_ratio * 100.0,
                d.latency.p50_ms,
                d.latency.p90_ms,
                d.latency.p99_ms,
                d.latency.max_ms,
                d.jitter.p50_ms,
            ),
        );
    }
    line(
        &mut o,
        format!(
            "steady p99: up {:.3} ms, down {:.3} ms",
            r.up.steady_latency.p99_ms, r.down.steady_latency.p99_ms
        ),
    );
    line(
        &mut o,
        format!(
            "setup (create -> media both ways): p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
            r.setup.p50_ms, r.setup.p90_ms, r.setup.p99_ms, r.setup.max_ms, r.setup.count
        ),
    );
    let st = &r.setup_stages;
    line(
        &mut o,
        format!(
            "  stages p50/p99 ms: CreateCall {:.1}/{:.1}, ICE+DTLS {:.1}/{:.1}, OpenGate {:.1}/{:.1}",
            st.create_rpc.p50_ms,
            st.create_rpc.p99_ms,
            st.ice_dtls.p50_ms,
            st.ice_dtls.p99_ms,
            st.open_gate_rpc.p50_ms,
            st.open_gate_rpc.p99_ms
        ),
    );
    let x = &r.resources;
    line(
        &mut o,
        format!(
            "target: cpu {} (max {}), {} us/pkt, {} syscalls/pkt, rss {} -> {}, per call {}",
            opt_pct(x.relay_cpu_pct),
            opt_pct(x.relay_cpu_pct_max),
            r.cpu_us_per_packet()
                .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
            r.syscalls_per_packet().map_or_else(
                || "-".into(),
                |v| format!("{v:.2} ({})", x.syscalls_source.as_deref().unwrap_or("?"))
            ),
            opt_mib(x.relay_rss_baseline_bytes),
            opt_mib(x.relay_rss_peak_bytes),
            x.relay_rss_per_call_bytes
                .map_or_else(|| "-".into(), |b| format!("{:.1} KiB", b / 1024.0)),
        ),
    );
    let g = &r.generator;
    line(
        &mut o,
        format!(
            "generator: cpu {} (process {}), tick lag p99 {:.2} ms max {:.2} ms, skipped {}, send errors {}, unknown {}, srtp errors {}",
            opt_pct(x.gen_cpu_pct),
            opt_pct(x.process_cpu_pct),
            g.tick_lag.p99_ms,
            g.tick_lag.max_ms,
            g.ticks_skipped,
            g.send_errors,
            g.unknown_source,
            g.srtp_errors,
        ),
    );
    line(
        &mut o,
        format!(
            "silence fill toward WhatsApp: {} packets in the steady window ({} in the whole run){}",
            g.steady_fill_received,
            g.fill_received,
            g.relay_fill
                .map_or_else(String::new, |n| format!("; the relay counted {n}")),
        ),
    );
    if let Some(c) = &r.relay {
        line(
            &mut o,
            format!("relay counters ({} calls): {}", c.calls, c.counts()),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_explains_creates_refused_by_admission_control() {
        let mut r = RunReport {
            label: "run".into(),
            calls: 1000,
            calls_ok: 740,
            ..RunReport::default()
        };
        r.failures.insert(
            "create".into(),
            (
                260,
                "status: Unavailable, message: \"relay overloaded: the least busy shard worked \
                 93% of the last second (limit 90%)\""
                    .into(),
            ),
        );
        let t = table(&r);
        assert!(t.contains("1000 calls (740 ok, 260 failed)"), "{t}");
        assert!(t.contains("failed at create: 260"), "{t}");
        assert!(t.contains("--max-shard-busy-percent=100"), "{t}");

        // Other failures get no such hint.
        r.failures.clear();
        r.failures
            .insert("ready".into(), (3, "no media within 10 s".into()));
        assert!(!table(&r).contains("admission"));
    }

    #[test]
    fn the_table_warns_when_the_generator_ran_late() {
        let mut r = RunReport {
            label: "run".into(),
            calls: 10,
            calls_ok: 10,
            ..RunReport::default()
        };
        r.generator.tick_lag.p99_ms = 0.4;
        r.resources.gen_cpu_pct = Some(35.0);
        assert_eq!(r.generator_warning(), None);
        assert!(!table(&r).contains("WARNING"));
        // The case: p99 46 ms reported while the generator's tick lag was 64 ms.
        r.generator.tick_lag.p99_ms = 64.0;
        let t = table(&r);
        assert!(
            t.contains("WARNING: the generator itself ran late (tick lag p99 64.0 ms"),
            "{t}"
        );
        r.generator.tick_lag.p99_ms = 0.4;
        r.resources.gen_cpu_pct = Some(97.0);
        assert!(r.generator_warning().is_some(), "a saturated generator");
    }

    #[test]
    fn calls_the_relay_ended_are_reported_as_such() {
        let mut r = RunReport {
            label: "run".into(),
            calls: 10,
            calls_ok: 0,
            ..RunReport::default()
        };
        r.failures.insert(
            "ended_by_relay".into(),
            (10, "wacid.x-1: media_receive_timeout".into()),
        );
        let t = table(&r);
        assert!(t.contains("10 calls (0 ok, 10 failed)"), "{t}");
        assert!(
            t.contains("ended by the relay before the run ended: 10"),
            "{t}"
        );
    }
}
