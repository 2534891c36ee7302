//! `loadtest ramp`: add calls step by step, holding each level; stop at the first step that
//! misses the SLO.

use std::time::Duration;

use clap::Args;

use super::capacity::SloArgs;
use super::parse_duration;
use crate::report::{self, ModeReport};
use crate::session::Session;

#[derive(Args, Debug, Clone)]
pub struct RampArgs {
    #[arg(long, default_value_t = 100)]
    pub start: usize,
    #[arg(long, default_value_t = 100)]
    pub step: usize,
    #[arg(long, default_value_t = 2000)]
    pub max: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// Keep ramping past steps that miss the SLO.
    #[arg(long)]
    pub no_stop: bool,
    #[command(flatten)]
    pub slo: SloArgs,
}

/// Runs `ramp` on `session`; prints its steps and table.
pub(super) async fn run(session: &Session, a: &RampArgs) -> (ModeReport, bool) {
    let slo = a.slo.slo();
    let r = session
        .ramp(
            a.start,
            a.step,
            a.max,
            a.step_duration,
            (!a.no_stop).then_some(slo),
        )
        .await;
    for s in &r.steps {
        println!("{}", s.line());
    }
    println!(
        "ramp: last step within SLO (loss <= {}%, p99 <= {} ms): {}",
        slo.loss * 100.0,
        slo.p99_ms,
        r.last_pass
            .map_or_else(|| "none".into(), |n| format!("{n} calls"))
    );
    println!("{}", report::table(&r.run));
    (ModeReport::Ramp { ramp: r }, true)
}
