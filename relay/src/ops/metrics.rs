//! Prometheus text exposition (format 0.0.4) of a [`MetricsSnapshot`].
//!
//! Label values all come from closed sets (legs, directions, drop reasons, end causes, shard
//! numbers), so the number of series is fixed by the build and the shard count: no per-call
//! labels. Every series is written even at zero, so `rate()` works from the first scrape.

use std::fmt::Write;

use super::ports::{PortPlan, PortPool};
use super::process::{self, ProcessStats};
use super::quality::{self, LiveQuality};
use crate::api::{EndCause, RefusedReason};
use crate::call::stats::DROP_REASONS;
use crate::engine::snapshot::{
    Histogram, JITTER_BUCKETS, LOSS_BUCKETS, LegTotals, MetricsSnapshot, SETUP_BUCKETS, ShardTotals,
};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every end cause, in the order they are written.
pub const END_CAUSES: [EndCause; 16] = [
    EndCause::Terminated,
    EndCause::IceFailed,
    EndCause::DtlsFailed,
    EndCause::FingerprintMismatch,
    EndCause::NoMediaAfterAccept,
    EndCause::MediaReceiveTimeout,
    EndCause::ConsentLost,
    EndCause::InternalLegTimeout,
    EndCause::PeerClosed,
    EndCause::Drained,
    EndCause::InternalLegFailed,
    EndCause::AnswerTimeout,
    EndCause::AcceptTimeout,
    EndCause::MaxDuration,
    EndCause::BotHangup,
    EndCause::BotFailed,
];

// A new EndCause variant fails to compile here: add it to END_CAUSES too.
const _: fn(EndCause) = |c| match c {
    EndCause::Terminated
    | EndCause::IceFailed
    | EndCause::DtlsFailed
    | EndCause::FingerprintMismatch
    | EndCause::NoMediaAfterAccept
    | EndCause::MediaReceiveTimeout
    | EndCause::ConsentLost
    | EndCause::InternalLegTimeout
    | EndCause::PeerClosed
    | EndCause::Drained
    | EndCause::InternalLegFailed
    | EndCause::AnswerTimeout
    | EndCause::AcceptTimeout
    | EndCause::MaxDuration
    | EndCause::BotHangup
    | EndCause::BotFailed => {}
};

/// The whole `/metrics` page.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;

    family(
        o,
        "relay_active_calls",
        "gauge",
        "Calls the relay holds now.",
    );
    sample(o, "relay_active_calls", "", s.active_calls as f64);
    family(
        o,
        "relay_capacity",
        "gauge",
        "Calls the relay admits in total (configured).",
    );
    sample(o, "relay_capacity", "", s.capacity as f64);
    family(
        o,
        "relay_draining",
        "gauge",
        "1 while the relay refuses new calls to drain.",
    );
    sample(o, "relay_draining", "", if s.draining { 1.0 } else { 0.0 });

    family(o, "relay_calls_created_total", "counter", "Calls created.");
    let created: u64 = s.shards.iter().map(|t| t.calls_created).sum();
    sample(o, "relay_calls_created_total", "", created as f64);

    family(
        o,
        "relay_calls_refused_total",
        "counter",
        "CreateCalls refused, by reason (capacity, draining, overloaded, per_number_limit, duplicate, invalid_request, terminated).",
    );
    for reason in RefusedReason::ALL {
        let n = s.refused.get(reason.index()).copied().unwrap_or(0);
        let labels = format!("reason=\"{}\"", reason.as_str());
        sample(o, "relay_calls_refused_total", &labels, n as f64);
    }

    family(
        o,
        "relay_calls_ended_total",
        "counter",
        "Calls ended, by cause.",
    );
    for cause in END_CAUSES {
        let n: u64 = s
            .shards
            .iter()
            .flat_map(|t| t.calls_ended.iter())
            .filter(|(c, _)| *c == cause)
            .map(|(_, n)| n)
            .sum();
        let labels = format!("cause=\"{}\"", cause.as_str());
        sample(o, "relay_calls_ended_total", &labels, n as f64);
    }

    let legs = [
        ("whatsapp", sum_legs(&s.shards, |t| &t.whatsapp)),
        ("internal", sum_legs(&s.shards, |t| &t.internal)),
    ];
    family(
        o,
        "relay_packets_total",
        "counter",
        "Media datagrams per leg and direction.",
    );
    for (leg, t) in &legs {
        for (dir, n) in [("rx", t.rx_packets), ("tx", t.tx_packets)] {
            let labels = format!("leg=\"{leg}\",direction=\"{dir}\"");
            sample(o, "relay_packets_total", &labels, n as f64);
        }
    }
    family(
        o,
        "relay_bytes_total",
        "counter",
        "Media bytes (UDP payload) per leg and direction.",
    );
    for (leg, t) in &legs {
        for (dir, n) in [("rx", t.rx_bytes), ("tx", t.tx_bytes)] {
            let labels = format!("leg=\"{leg}\",direction=\"{dir}\"");
            sample(o, "relay_bytes_total", &labels, n as f64);
        }
    }
    family(
        o,
        "relay_drops_total",
        "counter",
        "Received datagrams dropped, per leg and reason. late_dtls is not lost media: DTLS the peer retransmitted after the handshake finished (or its close_notify).",
    );
    for (leg, t) in &legs {
        for (reason, n) in DROP_REASONS.iter().zip(t.drops.iter()) {
            let labels = format!("leg=\"{leg}\",reason=\"{}\"", reason.as_str());
            sample(o, "relay_drops_total", &labels, *n as f64);
        }
    }
    family(
        o,
        "relay_srtp_auth_failures_total",
        "counter",
        "SRTP/SRTCP packets that failed authentication, per leg.",
    );
    let auth = [
        (
            "whatsapp",
            s.shards
                .iter()
                .map(|t| t.srtp_auth_failures_whatsapp)
                .sum::<u64>(),
        ),
        (
            "internal",
            s.shards
                .iter()
                .map(|t| t.srtp_auth_failures_internal)
                .sum::<u64>(),
        ),
    ];
    for (leg, n) in auth {
        sample(
            o,
            "relay_srtp_auth_failures_total",
            &format!("leg=\"{leg}\""),
            n as f64,
        );
    }

    histogram(
        o,
        "relay_ice_setup_seconds",
        "Time from call creation to ICE connected.",
        &merged(&s.shards, SETUP_BUCKETS, |t| &t.ice_setup),
    );
    histogram(
        o,
        "relay_dtls_setup_seconds",
        "Time from call creation to DTLS connected.",
        &merged(&s.shards, SETUP_BUCKETS, |t| &t.dtls_setup),
    );
    histogram(
        o,
        "relay_call_loss_ratio",
        "Per ended call: share of WhatsApp's packets lost on the way to the relay.",
        &merged(&s.shards, LOSS_BUCKETS, |t| &t.call_loss),
    );
    histogram(
        o,
        "relay_call_jitter_seconds",
        "Per ended call: interarrival jitter of WhatsApp's packets (RFC 3550).",
        &merged(&s.shards, JITTER_BUCKETS, |t| &t.call_jitter),
    );

    let mut live = LiveQuality::default();
    for t in &s.shards {
        live.add(&t.quality);
    }
    for (name, help, h) in [
        (
            "relay_live_loss_ratio",
            "Live calls sampled once a second: packet loss over that second, per leg and direction (rx: sequence gaps; tx: the peer's RTCP fraction lost). _count is call-seconds with media.",
            &live.loss,
        ),
        (
            "relay_live_jitter_seconds",
            "Live calls sampled once a second: interarrival jitter per leg and direction (rx: measured by the relay; tx: reported by the peer over RTCP).",
            &live.jitter,
        ),
    ] {
        family(o, name, "histogram", help);
        for (l, leg) in quality::LEGS.iter().enumerate() {
            for (d, dir) in quality::DIRECTIONS.iter().enumerate() {
                let labels = format!(
                    "leg=\"{}\",direction=\"{dir}\"",
                    super::logs::leg_name(*leg)
                );
                histogram_series(o, name, &labels, &h[l][d]);
            }
        }
    }
    family(
        o,
        "relay_live_rtt_seconds",
        "histogram",
        "Live calls sampled once a second: round-trip time per leg from RTCP (LSR/DLSR), once the peer reported it.",
    );
    for (l, leg) in quality::LEGS.iter().enumerate() {
        let labels = format!("leg=\"{}\"", super::logs::leg_name(*leg));
        histogram_series(o, "relay_live_rtt_seconds", &labels, &live.rtt[l]);
    }
    histogram(
        o,
        "relay_live_mos",
        "Live calls sampled once a second: MOS estimate (ITU-T G.107 E-model) of the WhatsApp leg from its worse direction's loss and jitter and its RTT.",
        &live.mos,
    );

    family(
        o,
        "relay_shard_calls",
        "gauge",
        "Calls per engine shard (thread).",
    );
    for t in &s.shards {
        sample(
            o,
            "relay_shard_calls",
            &format!("shard=\"{}\"", t.shard),
            t.calls as f64,
        );
    }
    family(
        o,
        "relay_shard_packets_total",
        "counter",
        "Datagrams received per engine shard.",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(o, "relay_shard_packets_total", &labels, t.packets_in as f64);
    }
    family(
        o,
        "relay_shard_busy_ratio",
        "gauge",
        "Share of the last second each shard spent working rather than waiting, of the CPU it may use: a core, or under a CPU limit (relay_cpu_limit_cores) its part of it (admission refuses new calls when every shard is over max_shard_busy_percent).",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(o, "relay_shard_busy_ratio", &labels, t.busy_ratio);
    }
    family(
        o,
        "relay_shard_busy_seconds_total",
        "counter",
        "Seconds each shard spent working rather than waiting, counted against the CPU it may use (a core, or its part of relay_cpu_limit_cores); rate() over any window is the busy share (1 = its CPU saturated).",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(o, "relay_shard_busy_seconds_total", &labels, t.busy_seconds);
    }
    family(
        o,
        "relay_shard_turn_lateness_seconds",
        "gauge",
        "How late each shard's turns with a due timer started behind that deadline, p99 over the last second (an upper bound: power-of-two microsecond buckets; 0 below 50 such turns). A shard that keeps up is about 1 ms late; one that is behind, tens of ms.",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(
            o,
            "relay_shard_turn_lateness_seconds",
            &labels,
            t.turn_lateness_p99,
        );
    }
    family(
        o,
        "relay_shard_send_errors_total",
        "counter",
        "Datagrams the operating system refused to send, per engine shard.",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(
            o,
            "relay_shard_send_errors_total",
            &labels,
            t.send_errors as f64,
        );
    }
    family(
        o,
        "relay_io_driver_info",
        "gauge",
        "The engine's I/O driver: io_uring, or epoll (configured, or io_uring missing or refused, e.g. by a container seccomp profile).",
    );
    sample(
        o,
        "relay_io_driver_info",
        &format!("driver=\"{}\"", s.io_driver),
        1.0,
    );
    family(
        o,
        "relay_cpu_limit_cores",
        "gauge",
        "The relay process's CPU limit in cores: its cgroup's CFS quota (a Kubernetes limits.cpu), read at start and every 10 s; no sample when there is none. Each shard's busy share is counted against its part of it (the limit over the shards, at most one core each).",
    );
    if let Some(c) = s.cpu_limit_cores {
        sample(o, "relay_cpu_limit_cores", "", c);
    }
    family(
        o,
        "relay_io_syscalls_total",
        "counter",
        "I/O system calls per engine shard, by kind (epoll_wait, recvmmsg, sendmmsg, eventfd_read for the epoll driver; io_uring_enter for io_uring). Divide by relay_shard_packets_total plus packets sent for system calls per packet.",
    );
    for t in &s.shards {
        for (kind, n) in crate::engine::IO_SYSCALLS.iter().zip(t.io_syscalls) {
            let labels = format!("shard=\"{}\",kind=\"{kind}\"", t.shard);
            sample(o, "relay_io_syscalls_total", &labels, n as f64);
        }
    }
    family(
        o,
        "relay_io_pressure_total",
        "counter",
        "io_uring's pools running out, per engine shard: send_slots_full (datagrams dropped, also in relay_shard_send_errors_total), recv_ring_dry (receives re-armed; datagrams waited in their sockets). Always 0 on epoll.",
    );
    for t in &s.shards {
        for (kind, n) in crate::engine::IO_PRESSURE.iter().zip(t.io_pressure) {
            let labels = format!("shard=\"{}\",kind=\"{kind}\"", t.shard);
            sample(o, "relay_io_pressure_total", &labels, n as f64);
        }
    }
    family(
        o,
        "relay_connected_sockets",
        "gauge",
        "Connected twins open per engine shard: media sockets whose fixed peer has a second socket connect()ed to it (SO_REUSEPORT), so its datagrams skip the route lookup. 0 with connect_twins off.",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(
            o,
            "relay_connected_sockets",
            &labels,
            t.connected_sockets as f64,
        );
    }
    family(
        o,
        "relay_connected_socket_failures_total",
        "counter",
        "Connected twins that could not be opened (socket, bind or connect refused), per engine shard: that peer's sends stay on the unconnected socket.",
    );
    for t in &s.shards {
        let labels = format!("shard=\"{}\"", t.shard);
        sample(
            o,
            "relay_connected_socket_failures_total",
            &labels,
            t.twin_failures as f64,
        );
    }
    if let Some(r) = &s.recording {
        recording(o, r);
    }
    out
}

/// Recording families (present only when `recording_dir` is set).
fn recording(o: &mut String, r: &crate::engine::snapshot::RecordingTotals) {
    // (name, type, help, [(labels, value)])
    type Family<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, u64)]);
    let families: [Family; 6] = [
        (
            "relay_recordings_active",
            "gauge",
            "Recordings being written now.",
            &[("", r.active)],
        ),
        (
            "relay_recordings_started_total",
            "counter",
            "Recordings started.",
            &[("", r.started)],
        ),
        (
            "relay_recording_packets_written_total",
            "counter",
            "RTP packets written into recording files.",
            &[("", r.packets_written)],
        ),
        (
            "relay_recording_bytes_written_total",
            "counter",
            "Bytes of Ogg Opus written into recording audio files.",
            &[("", r.bytes_written)],
        ),
        (
            "relay_recording_dropped_packets_total",
            "counter",
            "Packets not recorded, by reason: queue_full (the disk writer is behind; the live \
             call is unaffected), oversize (larger than a queue slot), invalid (not a valid \
             Opus packet, a duplicate, or for a recording already closed).",
            &[
                ("reason=\"queue_full\"", r.dropped_queue_full),
                ("reason=\"oversize\"", r.dropped_oversize),
                ("reason=\"invalid\"", r.dropped_invalid),
            ],
        ),
        (
            "relay_recording_write_errors_total",
            "counter",
            "Recordings abandoned because their files could not be written.",
            &[("", r.write_errors)],
        ),
    ];
    for (name, kind, help, samples) in families {
        family(o, name, kind, help);
        for (labels, v) in samples {
            sample(o, name, labels, *v as f64);
        }
    }
}

/// What `/metrics` serves besides the engine's counters: read at scrape time, not published by
/// the shards.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub process: ProcessStats,
    pub ports: Vec<PortPool>,
}

impl Extras {
    /// This process and the kernel's socket tables, now.
    pub fn read(ports: &PortPlan) -> Self {
        Extras {
            process: ProcessStats::read(),
            ports: ports.read(),
        }
    }
}

/// The whole `/metrics` page: the engine's families, then build, process and port pool.
pub fn page(s: &MetricsSnapshot, x: &Extras) -> String {
    let mut out = render(s);
    let o = &mut out;
    family(
        o,
        "relay_build_info",
        "gauge",
        "Always 1; the labels say which build is running.",
    );
    sample(
        o,
        "relay_build_info",
        &format!(
            "version=\"{}\",commit=\"{}\"",
            label_value(process::VERSION),
            label_value(process::COMMIT)
        ),
        1.0,
    );
    let p = &x.process;
    let process_families: [(&str, &str, &str, Option<f64>); 7] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            p.threads.map(|v| v as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, v) in process_families {
        if let Some(v) = v {
            family(o, name, kind, help);
            sample(o, name, "", v);
        }
    }
    if let Some(h) = super::hep::stats() {
        use std::sync::atomic::Ordering::Relaxed;
        family(
            o,
            "relay_hep_records_total",
            "counter",
            "HEP3 reports for Homer, by result: sent, dropped (queue full; the exporter never blocks the shards) or send_error.",
        );
        for (result, n) in [
            ("sent", h.sent.load(Relaxed)),
            ("dropped", h.dropped.load(Relaxed)),
            ("send_error", h.send_errors.load(Relaxed)),
        ] {
            let labels = format!("result=\"{result}\"");
            sample(o, "relay_hep_records_total", &labels, n as f64);
        }
    }
    if !x.ports.is_empty() {
        family(
            o,
            "relay_udp_ports_used",
            "gauge",
            "Media ports taken (by the relay or anything else) per address family, over every bind address of that family.",
        );
        for pool in &x.ports {
            let labels = format!("family=\"{}\"", pool.family);
            sample(o, "relay_udp_ports_used", &labels, pool.used as f64);
        }
        family(
            o,
            "relay_udp_ports_free",
            "gauge",
            "Media ports still free per address family (each call takes one per family it binds).",
        );
        for pool in &x.ports {
            let labels = format!("family=\"{}\"", pool.family);
            sample(o, "relay_udp_ports_free", &labels, pool.free() as f64);
        }
    }
    out
}

/// A label value escaped as the text format wants (backslash, quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn sample(o: &mut String, name: &str, labels: &str, v: f64) {
    if labels.is_empty() {
        let _ = writeln!(o, "{name} {}", number(v));
    } else {
        let _ = writeln!(o, "{name}{{{labels}}} {}", number(v));
    }
}

/// Go-style float text, which is what Prometheus parses (Rust would print `inf`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

fn sum_legs(shards: &[ShardTotals], leg: impl Fn(&ShardTotals) -> &LegTotals) -> LegTotals {
    let mut t = LegTotals::default();
    for s in shards {
        t.add(leg(s));
    }
    t
}

/// Shards' histograms added up. Shards share the bucket constants; one with other bounds
/// (which would be a bug) is left out rather than added wrongly.
fn merged(
    shards: &[ShardTotals],
    bounds: &'static [f64],
    h: impl Fn(&ShardTotals) -> &Histogram,
) -> Histogram {
    let mut total = Histogram::new(bounds);
    for s in shards {
        let x = h(s);
        if x.bounds == bounds && x.counts.len() == total.counts.len() {
            total.add(x);
        }
    }
    total
}

fn histogram(o: &mut String, name: &str, help: &str, h: &Histogram) {
    family(o, name, "histogram", help);
    histogram_series(o, name, "", h);
}

/// One histogram's series; `labels` (may be empty) go before `le`.
fn histogram_series(o: &mut String, name: &str, labels: &str, h: &Histogram) {
    let bucket = format!("{name}_bucket");
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        sample(
            o,
            &bucket,
            &format!("{labels}{sep}le=\"{}\"", number(*bound)),
            cumulative as f64,
        );
    }
    cumulative += h.counts.get(h.bounds.len()).copied().unwrap_or(0);
    sample(
        o,
        &bucket,
        &format!("{labels}{sep}le=\"+Inf\""),
        cumulative as f64,
    );
    sample(o, &format!("{name}_sum"), labels, h.sum);
    // The +Inf bucket and _count must agree; both come from the same buckets.
    sample(o, &format!("{name}_count"), labels, cumulative as f64);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::call::stats::DropReason;
    use crate::ops::quality::{MOS_BUCKETS, RTT_BUCKETS};

    /// The exposition parsed back: series (name plus labels, as written) → value, with the
    /// family each HELP/TYPE line announced.
    struct Parsed {
        values: HashMap<String, f64>,
        types: HashMap<String, String>,
        order: Vec<String>,
    }

    fn parse(text: &str) -> Parsed {
        let mut p = Parsed {
            values: HashMap::new(),
            types: HashMap::new(),
            order: Vec::new(),
        };
        let mut current: Option<String> = None;
        let mut helped: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(rest.len() > name.len() + 1, "empty HELP for {name}");
                helped.push(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert_eq!(
                    helped.last().map(String::as_str),
                    Some(name),
                    "HELP precedes TYPE"
                );
                assert!(["gauge", "counter", "histogram"].contains(&kind));
                assert!(
                    p.types.insert(name.into(), kind.into()).is_none(),
                    "{name} twice"
                );
                current = Some(name.to_string());
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let name = series.split('{').next().unwrap();
            let family = current.as_deref().expect("a sample after a TYPE line");
            let base = match p.types[family].as_str() {
                "histogram" => name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .unwrap_or(name),
                _ => name,
            };
            assert_eq!(base, family, "{line} sits under its own family");
            if p.types[family] == "counter" {
                assert!(name.ends_with("_total"), "{name}: counters end in _total");
            }
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            assert!(
                p.values.insert(series.to_string(), v).is_none(),
                "{series} twice"
            );
            p.order.push(series.to_string());
        }
        p
    }

    fn shard(id: u32) -> ShardTotals {
        ShardTotals::new(id)
    }

    fn snapshot() -> MetricsSnapshot {
        let mut a = shard(0);
        a.calls = 2;
        a.calls_created = 5;
        a.count_ended(EndCause::Terminated);
        a.count_ended(EndCause::Terminated);
        a.count_ended(EndCause::IceFailed);
        a.whatsapp.rx_packets = 100;
        a.whatsapp.rx_bytes = 10_000;
        a.whatsapp.tx_packets = 90;
        a.whatsapp.tx_bytes = 9_000;
        a.whatsapp.drops[DropReason::BadSource.index()] = 3;
        a.internal.rx_packets = 80;
        a.internal.tx_packets = 70;
        a.srtp_auth_failures_whatsapp = 4;
        a.packets_in = 180;
        a.io_syscalls[crate::engine::IoSyscall::IoUringEnter as usize] = 42;
        a.ice_setup.observe_duration(Duration::from_millis(30));
        a.ice_setup.observe_duration(Duration::from_millis(700));
        a.call_loss.observe(0.0);
        a.call_jitter.observe(0.5); // beyond the last bound: +Inf only
        let mut b = shard(1);
        b.calls = 1;
        b.calls_created = 2;
        b.count_ended(EndCause::Drained);
        b.whatsapp.rx_packets = 1;
        b.whatsapp.drops[DropReason::AuthFailed.index()] = 4;
        b.srtp_auth_failures_internal = 1;
        b.packets_in = 7;
        b.send_errors = 2;
        b.io_pressure = [3, 5];
        b.busy_ratio = 0.25;
        b.ice_setup.observe_duration(Duration::from_millis(3));
        a.quality.rtt[0].observe(0.08);
        b.quality.rtt[0].observe(0.3);
        b.quality.loss[1][1].observe(0.02);
        b.quality.mos.observe(4.41);
        MetricsSnapshot {
            io_driver: "io_uring",
            refused: Default::default(),
            active_calls: 3,
            capacity: 100,
            draining: true,
            max_shard_busy: 0.9,
            cpu_limit_cores: Some(1.5),
            shards: vec![a, b],
            recording: None,
        }
    }

    #[test]
    fn values_add_up_across_shards() {
        let p = parse(&render(&snapshot()));
        let v = |s: &str| *p.values.get(s).unwrap_or_else(|| panic!("missing {s}"));
        assert_eq!(v("relay_active_calls"), 3.0);
        assert_eq!(v("relay_shard_busy_ratio{shard=\"1\"}"), 0.25);
        assert_eq!(v("relay_capacity"), 100.0);
        assert_eq!(v("relay_draining"), 1.0);
        assert_eq!(v("relay_calls_created_total"), 7.0);
        assert_eq!(v("relay_calls_ended_total{cause=\"terminated\"}"), 2.0);
        assert_eq!(v("relay_calls_ended_total{cause=\"ice_failed\"}"), 1.0);
        assert_eq!(v("relay_calls_ended_total{cause=\"drained\"}"), 1.0);
        assert_eq!(v("relay_calls_ended_total{cause=\"consent_lost\"}"), 0.0);
        assert_eq!(
            v("relay_packets_total{leg=\"whatsapp\",direction=\"rx\"}"),
            101.0
        );
        assert_eq!(
            v("relay_packets_total{leg=\"whatsapp\",direction=\"tx\"}"),
            90.0
        );
        assert_eq!(
            v("relay_packets_total{leg=\"internal\",direction=\"rx\"}"),
            80.0
        );
        assert_eq!(
            v("relay_packets_total{leg=\"internal\",direction=\"tx\"}"),
            70.0
        );
        assert_eq!(
            v("relay_bytes_total{leg=\"whatsapp\",direction=\"rx\"}"),
            10_000.0
        );
        assert_eq!(
            v("relay_drops_total{leg=\"whatsapp\",reason=\"bad_source\"}"),
            3.0
        );
        assert_eq!(
            v("relay_drops_total{leg=\"whatsapp\",reason=\"auth_failed\"}"),
            4.0
        );
        assert_eq!(
            v("relay_drops_total{leg=\"internal\",reason=\"not_ready\"}"),
            0.0
        );
        assert_eq!(v("relay_srtp_auth_failures_total{leg=\"whatsapp\"}"), 4.0);
        assert_eq!(v("relay_srtp_auth_failures_total{leg=\"internal\"}"), 1.0);
        assert_eq!(v("relay_shard_calls{shard=\"0\"}"), 2.0);
        assert_eq!(v("relay_shard_calls{shard=\"1\"}"), 1.0);
        assert_eq!(v("relay_shard_packets_total{shard=\"1\"}"), 7.0);
        assert_eq!(v("relay_shard_send_errors_total{shard=\"1\"}"), 2.0);
        assert_eq!(
            v("relay_io_pressure_total{shard=\"1\",kind=\"send_slots_full\"}"),
            3.0
        );
        assert_eq!(
            v("relay_io_pressure_total{shard=\"1\",kind=\"recv_ring_dry\"}"),
            5.0
        );
        assert_eq!(v("relay_io_driver_info{driver=\"io_uring\"}"), 1.0);
        assert_eq!(v("relay_cpu_limit_cores"), 1.5);
        assert_eq!(
            v("relay_io_syscalls_total{shard=\"0\",kind=\"io_uring_enter\"}"),
            42.0
        );
        assert_eq!(
            v("relay_io_syscalls_total{shard=\"0\",kind=\"recvmmsg\"}"),
            0.0
        );
        // Live quality: both shards' samples, per leg and direction.
        assert_eq!(
            v("relay_live_rtt_seconds_bucket{leg=\"whatsapp\",le=\"0.1\"}"),
            1.0
        );
        assert_eq!(v("relay_live_rtt_seconds_count{leg=\"whatsapp\"}"), 2.0);
        assert_eq!(v("relay_live_rtt_seconds_count{leg=\"internal\"}"), 0.0);
        assert_eq!(
            v("relay_live_loss_ratio_bucket{leg=\"internal\",direction=\"tx\",le=\"0.02\"}"),
            1.0
        );
        assert_eq!(
            v("relay_live_loss_ratio_count{leg=\"whatsapp\",direction=\"rx\"}"),
            0.0
        );
        assert_eq!(v("relay_live_mos_bucket{le=\"4.4\"}"), 0.0);
        assert_eq!(v("relay_live_mos_bucket{le=\"4.5\"}"), 1.0);
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let p = parse(&render(&snapshot()));
        let v = |s: &str| *p.values.get(s).unwrap_or_else(|| panic!("missing {s}"));
        // Observations 3 ms, 30 ms, 700 ms.
        assert_eq!(v("relay_ice_setup_seconds_bucket{le=\"0.005\"}"), 1.0);
        assert_eq!(v("relay_ice_setup_seconds_bucket{le=\"0.05\"}"), 2.0);
        assert_eq!(v("relay_ice_setup_seconds_bucket{le=\"0.5\"}"), 2.0);
        assert_eq!(v("relay_ice_setup_seconds_bucket{le=\"1\"}"), 3.0);
        assert_eq!(v("relay_ice_setup_seconds_bucket{le=\"+Inf\"}"), 3.0);
        assert_eq!(v("relay_ice_setup_seconds_count"), 3.0);
        assert!((v("relay_ice_setup_seconds_sum") - 0.733).abs() < 1e-9);
        assert_eq!(v("relay_call_loss_ratio_bucket{le=\"0\"}"), 1.0);
        assert_eq!(v("relay_call_jitter_seconds_bucket{le=\"0.16\"}"), 0.0);
        assert_eq!(v("relay_call_jitter_seconds_bucket{le=\"+Inf\"}"), 1.0);
        assert_eq!(v("relay_dtls_setup_seconds_count"), 0.0);
        // Buckets never decrease and end at +Inf, for every histogram.
        for (family, kind) in &p.types {
            if kind != "histogram" {
                continue;
            }
            // One histogram per label set (labelled families have several): the labels before
            // `le` name it.
            let prefix = format!("{family}_bucket{{");
            let mut groups: Vec<(String, Vec<&String>)> = Vec::new();
            for series in p.order.iter().filter(|s| s.starts_with(&prefix)) {
                let labels = &series[prefix.len()..series.find("le=").unwrap()];
                match groups.iter_mut().find(|(l, _)| l == labels) {
                    Some((_, v)) => v.push(series),
                    None => groups.push((labels.to_string(), vec![series])),
                }
            }
            assert!(!groups.is_empty(), "{family}");
            for (labels, series) in groups {
                let buckets: Vec<f64> = series.iter().map(|s| p.values[*s]).collect();
                assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{family}{labels}");
                let last = series.last().unwrap();
                assert!(last.ends_with("le=\"+Inf\"}"), "{family}");
                let count = match labels.trim_end_matches(',') {
                    "" => format!("{family}_count"),
                    l => format!("{family}_count{{{l}}}"),
                };
                assert_eq!(p.values[*last], p.values[&count], "{count}");
            }
        }
    }

    #[test]
    fn every_family_the_deployment_expects_is_typed() {
        let p = parse(&render(&MetricsSnapshot {
            io_driver: "io_uring",
            refused: Default::default(),
            active_calls: 0,
            capacity: 1,
            draining: false,
            max_shard_busy: 0.9,
            cpu_limit_cores: None,
            shards: vec![shard(0)],
            recording: None,
        }));
        let expected = [
            ("relay_active_calls", "gauge"),
            ("relay_capacity", "gauge"),
            ("relay_draining", "gauge"),
            ("relay_shard_calls", "gauge"),
            ("relay_calls_created_total", "counter"),
            ("relay_calls_ended_total", "counter"),
            ("relay_calls_refused_total", "counter"),
            ("relay_packets_total", "counter"),
            ("relay_bytes_total", "counter"),
            ("relay_drops_total", "counter"),
            ("relay_srtp_auth_failures_total", "counter"),
            ("relay_shard_packets_total", "counter"),
            ("relay_shard_busy_ratio", "gauge"),
            ("relay_io_driver_info", "gauge"),
            ("relay_cpu_limit_cores", "gauge"),
            ("relay_shard_turn_lateness_seconds", "gauge"),
            ("relay_io_syscalls_total", "counter"),
            ("relay_io_pressure_total", "counter"),
            ("relay_connected_sockets", "gauge"),
            ("relay_connected_socket_failures_total", "counter"),
            ("relay_ice_setup_seconds", "histogram"),
            ("relay_dtls_setup_seconds", "histogram"),
            ("relay_call_loss_ratio", "histogram"),
            ("relay_call_jitter_seconds", "histogram"),
        ];
        for (name, kind) in expected {
            assert_eq!(p.types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        // Bounded cardinality: the series count depends on the shard count only.
        assert_eq!(p.values.len(), render_series_count(1));
        let two = parse(&render(&MetricsSnapshot {
            io_driver: "io_uring",
            refused: Default::default(),
            active_calls: 0,
            capacity: 1,
            draining: false,
            max_shard_busy: 0.9,
            cpu_limit_cores: None,
            shards: vec![shard(0), shard(1)],
            recording: None,
        }));
        assert_eq!(two.values.len(), render_series_count(2));
    }

    fn render_series_count(shards: usize) -> usize {
        let fixed = 3
            + 1
            + RefusedReason::ALL.len()
            + END_CAUSES.len()
            + 4
            + 4
            + 2 * DROP_REASONS.len()
            + 2;
        let hist = |b: &[f64]| b.len() + 1 + 2;
        // + relay_connected_sockets and relay_connected_socket_failures_total per shard.
        let io =
            1 + (crate::engine::IO_SYSCALLS.len() + crate::engine::IO_PRESSURE.len() + 2) * shards;
        let live = 4 * hist(LOSS_BUCKETS) + 4 * hist(JITTER_BUCKETS) + 2 * hist(RTT_BUCKETS);
        fixed
            + hist(SETUP_BUCKETS) * 2
            + hist(LOSS_BUCKETS)
            + hist(JITTER_BUCKETS)
            + live
            + hist(MOS_BUCKETS)
            + 6 * shards
            + io
    }

    #[test]
    fn recording_families_render_when_recording_is_configured() {
        let p = parse(&render(&MetricsSnapshot {
            io_driver: "io_uring",
            active_calls: 0,
            capacity: 1,
            draining: false,
            max_shard_busy: 0.9,
            cpu_limit_cores: None,
            shards: vec![shard(0)],
            refused: Default::default(),
            recording: Some(crate::engine::snapshot::RecordingTotals {
                active: 2,
                dropped_queue_full: 5,
                ..Default::default()
            }),
        }));
        assert_eq!(p.values["relay_recordings_active"], 2.0);
        assert_eq!(
            p.values["relay_recording_dropped_packets_total{reason=\"queue_full\"}"],
            5.0
        );
        assert_eq!(p.values.len(), render_series_count(1) + 8);
    }

    #[test]
    fn numbers_are_prometheus_floats() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
