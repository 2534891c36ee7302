//! `loadtest compare`: the same capacity search against several targets, one after the other
//! (each started fresh), and the results side by side.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::capacity::CapacityArgs;
use super::target::{TargetKind, check_mode, open_target, session_options};
use super::{CliError, Common};
use crate::report::{CompareEntry, ModeReport, load_average};
use crate::session::{Session, WaMode};

/// One target of `compare`: what to load and how the WhatsApp side secures media.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CompareTarget {
    pub kind: TargetKind,
    pub wa: WaMode,
}

impl CompareTarget {
    pub fn name(&self) -> String {
        match self.kind {
            TargetKind::Raw => "raw".into(),
            TargetKind::RawSingle => "raw-single".into(),
            TargetKind::RawSharedInternal => "raw-shared-internal".into(),
            TargetKind::RawSteered => "raw-steered".into(),
            TargetKind::Relay => format!("relay-{}", wa_name(self.wa)),
            TargetKind::Rtpengine => format!("rtpengine-{}", wa_name(self.wa)),
        }
    }
}

fn wa_name(w: WaMode) -> &'static str {
    match w {
        WaMode::Dtls => "dtls",
        WaMode::Sdes => "sdes",
        WaMode::Plain => "plain",
    }
}

/// "relay-dtls", "relay-sdes", "rtpengine-sdes", "rtpengine-plain", "raw", "raw-single",
/// "raw-shared-internal", "raw-steered".
pub fn parse_compare_target(s: &str) -> Result<CompareTarget, String> {
    let t = |kind, wa| Ok(CompareTarget { kind, wa });
    match s.trim() {
        "relay-dtls" | "relay" => t(TargetKind::Relay, WaMode::Dtls),
        "relay-sdes" => t(TargetKind::Relay, WaMode::Sdes),
        "rtpengine-sdes" | "rtpengine" => t(TargetKind::Rtpengine, WaMode::Sdes),
        "rtpengine-plain" => t(TargetKind::Rtpengine, WaMode::Plain),
        "raw" | "raw-per-leg" => t(TargetKind::Raw, WaMode::Plain),
        "raw-single" => t(TargetKind::RawSingle, WaMode::Plain),
        "raw-shared-internal" => t(TargetKind::RawSharedInternal, WaMode::Plain),
        "raw-steered" => t(TargetKind::RawSteered, WaMode::Plain),
        other => Err(format!(
            "`{other}`: expected relay-dtls, relay-sdes, rtpengine-sdes, rtpengine-plain, raw, raw-single, raw-shared-internal or raw-steered"
        )),
    }
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Targets, in order (comma-separated or repeated).
    #[arg(
        long = "targets",
        value_delimiter = ',',
        value_parser = parse_compare_target,
        default_value = "relay-sdes,rtpengine-sdes,raw,raw-single"
    )]
    pub targets: Vec<CompareTarget>,
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// Runs `compare`: every target in turn; prints the side-by-side table. Returns the report, whether
/// every target could be measured, and the targets' names for the report.
pub(super) async fn run(
    o: &Common,
    a: &CompareArgs,
    relay_cpu: Option<usize>,
    gen_cpu: Option<usize>,
) -> (ModeReport, bool, String) {
    let mut entries = Vec::new();
    for t in &a.targets {
        entries.push(compare_one(o, *t, &a.capacity, relay_cpu, gen_cpu).await);
    }
    println!(
        "== compare: capacity within the SLO (loss <= {}%, steady p99 <= {} ms), {} s probes, target on CPU {}, generator on CPU {}",
        a.capacity.slo.slo_loss * 100.0,
        a.capacity.slo.slo_p99_ms,
        a.capacity.probe_duration.as_secs_f64(),
        relay_cpu.map_or_else(|| "any".into(), |c| c.to_string()),
        gen_cpu.map_or_else(|| "any".into(), |c| c.to_string())
    );
    println!("{}", CompareEntry::header());
    for e in &entries {
        println!("{}", e.row());
    }
    if entries
        .iter()
        .filter_map(|e| e.capacity.as_ref()?.at_capacity.as_ref())
        .any(|r| r.generator_warning().is_some())
    {
        println!(
            "!: the generator ran late in that probe (tick lag or CPU): its latency figures include the generator's own delays"
        );
    }
    let ok = entries.iter().all(|e| e.error.is_none());
    let names: Vec<String> = a.targets.iter().map(CompareTarget::name).collect();
    (
        ModeReport::Compare { compare: entries },
        ok,
        format!("compare: {}", names.join(", ")),
    )
}

/// One target of `compare`: start it, search its capacity, stop it.
async fn compare_one(
    o: &Common,
    t: CompareTarget,
    a: &CapacityArgs,
    relay_cpu: Option<usize>,
    gen_cpu: Option<usize>,
) -> CompareEntry {
    let load_start = load_average();
    if !o.quiet {
        eprintln!("== {} (load average {load_start})", t.name());
    }
    let measured = async {
        check_mode(t.kind, t.wa)?;
        let (backend, desc, child) = open_target(o, t.kind, relay_cpu).await?;
        let session = Session::new(backend, session_options(o, t.kind, t.wa, gen_cpu))?;
        let r = session
            .capacity(a.slo.slo(), a.min, a.max, a.resolution, a.probe_duration)
            .await;
        drop(session);
        drop(child);
        Ok::<_, CliError>((desc, r))
    }
    .await;
    let (description, capacity, error) = match measured {
        Ok((d, r)) => (d, Some(r), None),
        Err(e) => (String::new(), None, Some(e.to_string())),
    };
    // Let the kernel release the target's ports before the next one starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    CompareEntry {
        target: t.name(),
        description,
        load_start,
        load_end: load_average(),
        capacity,
        error,
    }
}
