//! `loadtest churn`: setups per second with short calls, for setup time under churn.

use std::time::Duration;

use clap::Args;

use super::parse_duration;
use crate::report::{self, ModeReport};
use crate::session::Session;

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Setups per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long each call holds audio.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub call_duration: Duration,
    /// How long to keep creating calls.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// Runs `churn` on `session`; prints its table.
pub(super) async fn run(session: &Session, a: &ChurnArgs) -> (ModeReport, bool) {
    let r = session
        .churn(a.rate, a.call_duration, a.duration, "churn")
        .await;
    println!("{}", report::table(&r));
    let ok = r.failures_total() == 0;
    (ModeReport::Churn { run: r }, ok)
}
