//! `loadtest overload`: offer more calls than one core carries and check admission control
//! protects the calls already up.

use std::time::Duration;

use clap::Args;

use super::capacity::CapacityArgs;
use super::parse_duration;
use crate::report::{self, ModeReport};
use crate::session::Session;

#[derive(Args, Debug, Clone)]
pub struct OverloadArgs {
    /// Calls one core carries within the SLO (e.g. from `capacity`); without it a capacity
    /// search (the capacity options) runs first.
    #[arg(long)]
    pub base_calls: Option<usize>,
    /// Offered load as a multiple of --base-calls.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// How long the admitted calls hold audio.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Largest loss ratio of the admitted calls (0.001 = 0.1 %).
    #[arg(long, default_value_t = 0.001)]
    pub max_loss: f64,
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// Runs `overload` on `session` (a capacity search first without --base-calls); prints the
/// table and the verdict.
pub(super) async fn run(session: &Session, a: &OverloadArgs) -> (ModeReport, bool) {
    let (base, capacity) = match a.base_calls {
        Some(b) => (b, None),
        None => {
            let c = &a.capacity;
            let r = session
                .capacity(c.slo.slo(), c.min, c.max, c.resolution, c.probe_duration)
                .await;
            println!(
                "capacity: {} calls within the SLO; offering {}x that",
                r.capacity, a.factor
            );
            (r.capacity, Some(r))
        }
    };
    let mut r = session
        .overload(base, a.factor, a.duration, a.max_loss)
        .await;
    r.capacity = capacity;
    println!("{}", report::table(&r.run));
    println!("{}", r.summary());
    let ok = r.pass;
    (ModeReport::Overload { overload: r }, ok)
}
