//! What `ramp` reports: a line per level, the last level within the SLO, the whole run.

use serde::Serialize;

use super::{RunReport, Slo};
use crate::sampler::Window;

/// One level of a ramp.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepReport {
    pub calls: usize,
    pub setup_failures: usize,
    pub up_received: u64,
    pub down_received: u64,
    pub up_lost: u64,
    pub down_lost: u64,
    pub loss_ratio: f64,
    pub up_p99_ms: f64,
    pub down_p99_ms: f64,
    pub relay_cpu_pct: Option<f64>,
    pub relay_rss_bytes: Option<u64>,
    pub gen_cpu_pct: Option<f64>,
    pub pass: bool,
}

impl StepReport {
    pub(crate) fn new(
        calls: usize,
        setup_failures: usize,
        w: &Window,
        slo: Option<Slo>,
    ) -> StepReport {
        let t = &w.totals;
        let ratio = |lost: u64, got: u64| {
            let total = lost + got;
            if total == 0 {
                0.0
            } else {
                lost as f64 / total as f64
            }
        };
        let loss_ratio =
            ratio(t.up.lost(), t.up.received).max(ratio(t.down.lost(), t.down.received));
        let up_p99_ms = t.up.latency.quantile(0.99) as f64 / 1000.0;
        let down_p99_ms = t.down.latency.quantile(0.99) as f64 / 1000.0;
        let pass = setup_failures == 0
            && slo.is_none_or(|s| loss_ratio <= s.loss && up_p99_ms.max(down_p99_ms) <= s.p99_ms);
        StepReport {
            calls,
            setup_failures,
            up_received: t.up.received,
            down_received: t.down.received,
            up_lost: t.up.lost(),
            down_lost: t.down.lost(),
            loss_ratio,
            up_p99_ms,
            down_p99_ms,
            relay_cpu_pct: w.relay_cpu_mean(),
            relay_rss_bytes: w.relay_rss_max(),
            gen_cpu_pct: w.gen_cpu_mean(),
            pass,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "step {:>5} calls: loss {:.4}%  p99 {:.2}/{:.2} ms  relay cpu {}  rss {}  generator cpu {}  {}",
            self.calls,
            self.loss_ratio * 100.0,
            self.up_p99_ms,
            self.down_p99_ms,
            self.relay_cpu_pct
                .map_or_else(|| "-".into(), |v| format!("{v:.0}%")),
            self.relay_rss_bytes
                .map_or_else(|| "-".into(), |b| format!("{}MiB", b >> 20)),
            self.gen_cpu_pct
                .map_or_else(|| "-".into(), |v| format!("{v:.0}%")),
            if self.pass { "ok" } else { "MISSES SLO" }
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RampReport {
    pub steps: Vec<StepReport>,
    /// The last step of the unbroken run of passing steps.
    pub last_pass: Option<usize>,
    pub run: RunReport,
}
