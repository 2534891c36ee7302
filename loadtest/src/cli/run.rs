//! `loadtest run` (the default mode): N calls for T seconds; with `--record`, the relay's
//! recording counters afterwards.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse_duration;
use crate::report::{self, ModeReport};
use crate::session::Session;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// How long all calls hold audio once up ("20", "20s", "1m").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// Runs `run` on `session`; prints its table (and the recording totals with `--record`).
pub(super) async fn run(session: &Session, a: &RunArgs) -> (ModeReport, bool) {
    let r = session.run(a.calls, a.duration, "run").await;
    println!("{}", report::table(&r));
    if session.records() {
        print_recording_totals(session);
    }
    let ok = r.failures_total() == 0;
    (ModeReport::Run { run: r }, ok)
}

/// Where a relay started with `--record` writes (removed after the run).
pub(super) fn recording_dir() -> PathBuf {
    std::env::temp_dir().join(format!("loadtest-recordings-{}", std::process::id()))
}

/// The relay's recording counters after a `--record` run: what the disk writer kept and what
/// it dropped (the live calls' own loss is in the run's table).
fn print_recording_totals(session: &Session) {
    let Some(text) = session
        .relay_metrics()
        .and_then(|m| crate::scrape::scrape(m).ok())
    else {
        return;
    };
    let get = |name: &str| crate::scrape::sum(&text, |n| n == name).unwrap_or(0.0) as u64;
    println!(
        "recordings: {} started, {} packets written, {} dropped (writer behind or disk errors), {} write errors",
        get("relay_recordings_started_total"),
        get("relay_recording_packets_written_total"),
        get("relay_recording_dropped_packets_total"),
        get("relay_recording_write_errors_total"),
    );
    // Why: the writer behind (queue_full), a payload too large, or not placeable (invalid).
    let reasons: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("relay_recording_dropped_packets_total{"))
        .map(|l| l.replace('}', ""))
        .collect();
    if !reasons.is_empty() {
        println!("recording drops by reason: {}", reasons.join(", "));
    }
    let _ = std::fs::remove_dir_all(recording_dir());
}
