//! What `compare` reports: one entry per target, and the side-by-side table (text and HTML).

use serde::Serialize;

use super::CapacityReport;

/// One target's result in `compare`.
#[derive(Debug, Serialize)]
pub struct CompareEntry {
    pub target: String,
    pub description: String,
    pub load_start: String,
    pub load_end: String,
    pub capacity: Option<CapacityReport>,
    /// Why the target could not be measured, if it could not.
    pub error: Option<String>,
}

impl CompareEntry {
    /// The columns of the side-by-side table (text and HTML).
    pub const COLUMNS: [&'static str; 11] = [
        "target",
        "capacity",
        "missed at",
        "fwd pkts/s",
        "p99 ms",
        "cpu",
        "cpu us/pkt",
        "syscalls/pkt",
        "rss/call",
        "gen cpu",
        "load before/after",
    ];
    const WIDTHS: [usize; 11] = [16, 8, 10, 12, 10, 9, 12, 16, 12, 9, 15];

    /// One row's cells; `None` when the target could not be measured.
    pub fn cells(&self) -> Option<[String; 11]> {
        let c = self.capacity.as_ref()?;
        let at = c.at_capacity.as_deref();
        let pps = at.map_or(0.0, |r| r.forwarded_pps());
        let opt =
            |v: Option<f64>, unit: &str| v.map_or_else(|| "-".into(), |v| format!("{v:.0}{unit}"));
        let syscalls_src = at
            .and_then(|r| r.resources.syscalls_source.as_deref())
            .map_or("", |s| match s {
                "self-counted" => " self",
                "relay /metrics" => " metrics",
                _ => " perf",
            });
        // "!": the generator ran late in that probe, so its latency is not the target's.
        let late = at.is_some_and(|r| r.generator_warning().is_some());
        Some([
            self.target.clone(),
            c.capacity.to_string(),
            c.first_failure
                .map_or_else(|| "-".into(), |f| f.to_string()),
            format!("{pps:.0}"),
            format!(
                "{:.2}{}",
                at.map_or(f64::NAN, |r| r.steady_p99_ms()),
                if late { "!" } else { "" }
            ),
            opt(at.and_then(|r| r.resources.relay_cpu_pct), "%"),
            // n: the clean probes (nothing lost, every call up) the median is over; "lossy":
            // there were none, so it is over probes that lost packets.
            c.cpu_us_per_packet().map_or_else(
                || "-".into(),
                |v| match c.clean_probes() {
                    0 => format!("{v:.1} (lossy)"),
                    n => format!("{v:.1} (n={n})"),
                },
            ),
            c.syscalls_per_packet()
                .map_or_else(|| "n/a".into(), |v| format!("{v:.2}{syscalls_src}")),
            opt(
                at.and_then(|r| r.resources.relay_rss_per_call_bytes)
                    .map(|b| b / 1024.0),
                " KiB",
            ),
            opt(at.and_then(|r| r.resources.gen_cpu_pct), "%"),
            format!("{} / {}", self.load_start, self.load_end),
        ])
    }

    /// One row of the side-by-side table.
    pub fn row(&self) -> String {
        let Some(cells) = self.cells() else {
            return format!(
                "{:<16} {}",
                self.target,
                self.error.as_deref().unwrap_or("-")
            );
        };
        Self::line(&cells)
    }

    fn line(cells: &[String]) -> String {
        let mut out = String::new();
        for (k, (cell, w)) in cells.iter().zip(Self::WIDTHS).enumerate() {
            if k == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!(" {cell:>w$}"));
            }
        }
        out
    }

    pub fn header() -> String {
        Self::line(&Self::COLUMNS.map(String::from))
    }
}
