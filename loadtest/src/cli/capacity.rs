//! `loadtest capacity`: the largest call count meeting the SLO (doubling, then bisection); its
//! options and the SLO's are shared by `compare` and `overload`.

use std::time::Duration;

use clap::Args;

use super::parse_duration;
use crate::report::{self, ModeReport, Slo};
use crate::session::Session;

#[derive(Args, Debug, Clone)]
pub struct SloArgs {
    /// Largest loss ratio per direction (0.0001 = 0.01 %).
    #[arg(long, default_value_t = 0.0001)]
    pub slo_loss: f64,
    /// Largest steady p99 one-way latency per direction, ms.
    #[arg(long, default_value_t = 5.0)]
    pub slo_p99_ms: f64,
}

impl SloArgs {
    pub(super) fn slo(&self) -> Slo {
        Slo {
            loss: self.slo_loss,
            p99_ms: self.slo_p99_ms,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub slo: SloArgs,
    /// First probe.
    #[arg(long, default_value_t = 100)]
    pub min: usize,
    #[arg(long, default_value_t = 5000)]
    pub max: usize,
    /// Stop bisecting when the bracket is this narrow.
    #[arg(long, default_value_t = 50)]
    pub resolution: usize,
    /// Steady time of each probe.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub probe_duration: Duration,
}

/// Runs `capacity` on `session`; prints its probes and the tables at and past capacity.
pub(super) async fn run(session: &Session, a: &CapacityArgs) -> (ModeReport, bool) {
    let slo = a.slo.slo();
    let r = session
        .capacity(slo, a.min, a.max, a.resolution, a.probe_duration)
        .await;
    for p in &r.probes {
        println!("{}", p.line());
    }
    if let Some(best) = &r.at_capacity {
        println!("{}", report::table(best));
    }
    if let Some(failed) = &r.first_failed {
        println!(
            "first probe that missed the SLO:\n{}",
            report::table(failed)
        );
    }
    println!(
        "capacity: {} calls within SLO (loss <= {}%, steady p99 <= {} ms){}",
        r.capacity,
        slo.loss * 100.0,
        slo.p99_ms,
        r.first_failure
            .map_or_else(String::new, |f| format!("; {f} calls missed it"))
    );
    (ModeReport::Capacity { capacity: r }, true)
}
