//! The command line. `loadtest [OPTIONS] [run|ramp|capacity|churn ...]`; see `--help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay::srtp::SrtpProfile;
use serde::Serialize;

use crate::generator::{GenConfig, Spacing, pin_current_thread};
use crate::raw::{Layout, RawForwarder};
use crate::report::{self, html};
use crate::session::{
    Backend, CapacityReport, Options, OverloadReport, RampReport, Session, Slo, WaMode,
};
use crate::target::{self, RelayProcess, SpawnOptions};
use crate::target_rtpengine::{NgClient, RtpEngineOptions, RtpEngineProcess};

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "Load-test the relay with Meta-faithful WhatsApp peers and SIP media peers",
    long_about = "Load-test the relay with Meta-faithful WhatsApp peers (ICE-lite, DTLS, SRTP, \
Opus-like audio every 20 ms) and SIP media peers (plain RTP), creating calls through the relay's \
gRPC API as a signaling tier does.\n\n\
Pinning on a small machine: --taskset puts the relay (or the raw forwarder) on CPU 0 and the \
generator on CPU 1, so each has a core and the generator's CPU line shows whether it kept up. \
The relay is started under `taskset -c 0` when the taskset binary exists (else with \
sched_setaffinity); this process pins itself with sched_setaffinity, like `taskset -p`. \
The same by hand: `taskset -c 0 target/release/relay --shards 1 &` then \
`taskset -c 1 target/release/loadtest --relay-addr http://127.0.0.1:7070 run`."
)]
pub struct Cli {
    #[command(flatten)]
    pub opts: Common,
    #[command(subcommand)]
    pub mode: Option<Mode>,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Start this relay binary as a child (on a free control port; stopped at exit).
    /// Default: `relay` next to this binary, unless --relay-addr or --raw is given.
    #[arg(long, global = true)]
    pub relay_bin: Option<PathBuf>,
    /// Use a running relay's control API instead (e.g. http://127.0.0.1:7070).
    #[arg(long, global = true, conflicts_with = "relay_bin")]
    pub relay_addr: Option<String>,
    /// PID of the --relay-addr relay, for its CPU and RSS (when it runs on this machine).
    #[arg(long, global = true)]
    pub relay_pid: Option<u32>,
    /// The --relay-addr relay's metrics address (host:port of /metrics), for its own I/O
    /// system call and silence-fill counters. A started relay gets a free port.
    #[arg(long, global = true)]
    pub relay_metrics: Option<std::net::SocketAddr>,
    /// Bearer token for the control API.
    #[arg(long, global = true, env = "RELAY_CONTROL_TOKEN")]
    pub token: Option<String>,
    /// Relay shards (engine threads) when this tool starts the relay.
    #[arg(long, global = true, default_value_t = 1)]
    pub relay_shards: usize,
    /// Extra flag for a started relay (repeat for more), e.g. --relay-arg=--port-min=20000.
    #[arg(long = "relay-arg", global = true, allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// Where a started relay's output goes.
    #[arg(long, global = true, default_value = "/tmp/loadtest-relay.log")]
    pub relay_log: PathBuf,
    /// What to load: the relay (default), a raw forwarder (the machine's ceiling: `raw` with a
    /// socket per call and leg like the relay, `raw-single` with one socket demultiplexed by
    /// source address), or rtpengine over its ng protocol (started from --rtpengine-bin unless
    /// --rtpengine-ng).
    #[arg(long, global = true, value_enum, default_value_t = TargetKind::Relay)]
    pub target: TargetKind,
    /// Same as --target raw: a trivial recvmmsg/sendmmsg forwarder (a socket per call and leg)
    /// replaces the relay.
    #[arg(long, global = true, conflicts_with_all = ["relay_bin", "relay_addr"])]
    pub raw: bool,
    /// Same as --target rtpengine.
    #[arg(long, global = true)]
    pub rtpengine: bool,
    /// How the WhatsApp side secures media: dtls (relay default), sdes (rtpengine default; the
    /// relay supports it too), plain (rtpengine only). SDES uses the first --profile
    /// (default AES_CM_128_HMAC_SHA1_80).
    #[arg(long, global = true, value_enum)]
    pub wa_security: Option<WaMode>,
    /// The rtpengine binary to start (Debian: apt-get install -y rtpengine-daemon).
    #[arg(long, global = true, default_value = "/usr/bin/rtpengine")]
    pub rtpengine_bin: PathBuf,
    /// A running rtpengine's ng address (loopback, e.g. 127.0.0.1:22222, as
    /// scripts/rtpengine.sh starts it) instead of starting one.
    #[arg(long, global = true)]
    pub rtpengine_ng: Option<std::net::SocketAddr>,
    /// PID of the --rtpengine-ng rtpengine, for its CPU and RSS.
    #[arg(long, global = true)]
    pub rtpengine_pid: Option<u32>,
    /// rtpengine media worker threads (num-threads) when this tool starts it.
    #[arg(long, global = true, default_value_t = 1)]
    pub rtpengine_threads: usize,
    /// Where a started rtpengine's output goes.
    #[arg(long, global = true, default_value = "/tmp/loadtest-rtpengine.log")]
    pub rtpengine_log: PathBuf,
    /// Pin the relay (or raw forwarder) to CPU 0 and the generator to CPU 1.
    #[arg(long, global = true)]
    pub taskset: bool,
    /// CPU for the relay or raw forwarder (overrides --taskset's 0).
    #[arg(long, global = true)]
    pub relay_cpu: Option<usize>,
    /// CPU for the generator (overrides --taskset's 1).
    #[arg(long, global = true)]
    pub gen_cpu: Option<usize>,
    /// Run this process, its threads and a started relay at this nice value (e.g. -20 as root)
    /// so that other work on a shared machine does not starve the measurement.
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub nice: Option<i32>,
    /// Generator threads.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// When each stream's packets leave within the 20 ms packet time: `even` (each stream at
    /// its own instant, spread evenly over the period, as independent endpoints send) or
    /// `burst` (each call's two packets together, gathered into 1 ms batches: how loadtest
    /// sent before; it flatters a target that batches).
    #[arg(long, global = true, value_enum, default_value_t = Spacing::Even)]
    pub spacing: Spacing,
    /// Sockets per side per generator thread, shared by its calls (like Meta's media ports);
    /// 0 gives every peer its own socket.
    #[arg(long, global = true, default_value_t = 1)]
    pub pool: usize,
    /// Call setups per second when bringing calls up.
    #[arg(long, global = true, default_value_t = 200.0)]
    pub setup_rate: f64,
    /// Wait after stopping audio before counting (packets in flight).
    #[arg(long, global = true, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Hold this long after the last call is up before the steady window opens (run, ramp,
    /// capacity): the setup burst's tail is setup latency, which `churn` measures.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// SRTP profiles the Meta peers accept, in preference order (repeat):
    /// aead-aes-128-gcm, aes-cm-128-hmac-sha1-80, aead-aes-256-gcm. Default: all three.
    #[arg(long = "profile", global = true, value_parser = parse_profile)]
    pub profiles: Vec<SrtpProfile>,
    /// Record every call (StartRecording right after OpenGate). A relay loadtest starts gets
    /// `--recording-dir` under the temp dir (removed afterwards); the relay's recording
    /// counters are printed after the run.
    #[arg(long, global = true)]
    pub record: bool,
    /// Write the report as JSON.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts.
    #[arg(long, global = true)]
    pub html: Option<PathBuf>,
    /// No live line.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Mode {
    /// N calls for T seconds (the default mode).
    Run(RunArgs),
    /// One call through a running relay, explained: setup time, packets each way, the call as
    /// `relayctl list` shows it, its events.
    Call(CallArgs),
    /// Add calls step by step, holding each level; stop at the first step that misses the SLO.
    Ramp(RampArgs),
    /// Find the largest call count meeting the SLO (doubling, then bisection).
    Capacity(CapacityArgs),
    /// Setups per second with short calls: setup time under churn.
    Churn(ChurnArgs),
    /// The same capacity search against several targets, one after the other (each started
    /// fresh, pinned to --relay-cpu), and the results side by side.
    Compare(CompareArgs),
    /// Offer more calls than one core carries (--factor × --base-calls, or × the capacity found
    /// by a search first) and check admission protects the calls already up: their loss stays
    /// within --max-loss and no silence fill goes out while real media waits.
    Overload(OverloadArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// The relay's control address (its default is 127.0.0.1:7070); --relay-addr works too.
    #[arg(long)]
    pub relay: Option<String>,
    /// How long the call holds audio.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
}

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

/// What `--target` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Relay,
    /// The raw forwarder with a socket per call and leg.
    Raw,
    /// The raw forwarder with one socket, demultiplexed by source address.
    RawSingle,
    Rtpengine,
}

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

/// "relay-dtls", "relay-sdes", "rtpengine-sdes", "rtpengine-plain", "raw", "raw-single".
pub fn parse_compare_target(s: &str) -> Result<CompareTarget, String> {
    let t = |kind, wa| Ok(CompareTarget { kind, wa });
    match s.trim() {
        "relay-dtls" | "relay" => t(TargetKind::Relay, WaMode::Dtls),
        "relay-sdes" => t(TargetKind::Relay, WaMode::Sdes),
        "rtpengine-sdes" | "rtpengine" => t(TargetKind::Rtpengine, WaMode::Sdes),
        "rtpengine-plain" => t(TargetKind::Rtpengine, WaMode::Plain),
        "raw" | "raw-per-leg" => t(TargetKind::Raw, WaMode::Plain),
        "raw-single" => t(TargetKind::RawSingle, WaMode::Plain),
        other => Err(format!(
            "`{other}`: expected relay-dtls, relay-sdes, rtpengine-sdes, rtpengine-plain, raw or raw-single"
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

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// How long all calls hold audio once up ("20", "20s", "1m").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

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
    fn slo(&self) -> Slo {
        Slo {
            loss: self.slo_loss,
            p99_ms: self.slo_p99_ms,
        }
    }
}

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

/// "20" (seconds), "20s", "500ms", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 20, 20s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("`{s}`: not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_profile(s: &str) -> Result<SrtpProfile, String> {
    let norm = s.to_ascii_uppercase().replace('-', "_");
    SrtpProfile::ALL
        .into_iter()
        .find(|p| p.sdes_name() == norm)
        .ok_or_else(|| {
            format!("`{s}`: expected aead-aes-128-gcm, aes-cm-128-hmac-sha1-80 or aead-aes-256-gcm")
        })
}

/// Everything written to --json (and rendered into --html).
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub command: String,
    pub started_unix_s: u64,
    /// Load average when the run started.
    pub load_start: String,
    pub target: String,
    pub machine: Machine,
    pub settings: Settings,
    #[serde(flatten)]
    pub result: ModeReport,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub threads: usize,
    pub pool: usize,
    pub setup_rate: f64,
    pub relay_shards: Option<usize>,
    pub relay_cpu: Option<usize>,
    pub gen_cpu: Option<usize>,
    pub nice: Option<i32>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ModeReport {
    Run { run: report::RunReport },
    Ramp { ramp: RampReport },
    Capacity { capacity: CapacityReport },
    Churn { run: report::RunReport },
    Compare { compare: Vec<CompareEntry> },
    Overload { overload: OverloadReport },
}

#[derive(Debug, Serialize)]
pub struct Machine {
    /// 1/5/15-minute load averages when the report was written: other work on the machine
    /// skews latency (and pinned processes cannot move away from it).
    pub load_average: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Machine {
            load_average: load_average(),
            // The machine's, not this process's (which --taskset pins to one).
            // SAFETY: sysconf has no memory effects.
            cpus: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
                .unwrap_or(1)
                .max(1),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_ascii_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "no relay: give --relay-bin PATH, --relay-addr URL or --raw (no `relay` binary next to this one)"
    )]
    NoRelay,
    #[error("--wa-security {wa:?} does not apply to {target:?}: {why}")]
    Unsupported {
        wa: WaMode,
        target: TargetKind,
        why: &'static str,
    },
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error(transparent)]
    RtpEngine(#[from] crate::target_rtpengine::RtpEngineError),
    #[error("rtpengine ng: {0}")]
    Ng(#[from] crate::target_rtpengine::NgError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error("cannot start the raw forwarder: {0}")]
    Raw(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Call(#[from] crate::call::CallError),
}

/// Parses the command line and runs; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

impl Common {
    /// The target `--target`, `--raw` and `--rtpengine` select together.
    pub fn target_kind(&self) -> TargetKind {
        if self.raw {
            TargetKind::Raw
        } else if self.rtpengine {
            TargetKind::Rtpengine
        } else {
            self.target
        }
    }

    /// `--wa-security`, or the target's default.
    pub fn wa_mode(&self, kind: TargetKind) -> WaMode {
        self.wa_security.unwrap_or(match kind {
            TargetKind::Relay => WaMode::Dtls,
            TargetKind::Rtpengine => WaMode::Sdes,
            TargetKind::Raw | TargetKind::RawSingle => WaMode::Plain,
        })
    }
}

/// Which WhatsApp-side security each target can do.
fn check_mode(kind: TargetKind, wa: WaMode) -> Result<(), CliError> {
    let why = match (kind, wa) {
        (TargetKind::Relay, WaMode::Plain) => "the relay requires SRTP on the WhatsApp leg",
        (TargetKind::Rtpengine, WaMode::Dtls) => {
            "this tool drives rtpengine with SDES or plain RTP on the WhatsApp side (ICE-lite + DTLS toward Meta is what the relay specialises in)"
        }
        (TargetKind::Raw | TargetKind::RawSingle, WaMode::Dtls | WaMode::Sdes) => {
            "the raw forwarders only copy plain RTP"
        }
        _ => return Ok(()),
    };
    Err(CliError::Unsupported {
        wa,
        target: kind,
        why,
    })
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let o = &cli.opts;
    if let Some(Mode::Call(a)) = &cli.mode {
        return call(o, a);
    }
    let kind = o.target_kind();
    if !matches!(cli.mode, Some(Mode::Compare(_))) {
        check_mode(kind, o.wa_mode(kind))?;
    }
    target::raise_fd_limit();
    // With autogroup scheduling, nice only ranks threads inside this session's group; the
    // group's own nice decides its share against other sessions' builds. Restored on return.
    let _autogroup = o.nice.and_then(AutogroupNice::set);
    // Before any thread or child exists: they inherit it.
    if let Some(n) = o.nice {
        // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
        if r != 0 {
            eprintln!(
                "loadtest: warning: cannot set nice {n}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let relay_cpu = o.relay_cpu.or(o.taskset.then_some(0));
    let gen_cpu = o.gen_cpu.or(o.taskset.then_some(1));
    // Pin before the runtime exists so every thread of this process inherits it.
    if let Some(cpu) = gen_cpu
        && !pin_current_thread(cpu)
    {
        eprintln!("loadtest: warning: could not pin to CPU {cpu}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(run_async(cli.clone_parts(), relay_cpu, gen_cpu))
}

/// `loadtest call`: no target to start, no pinning, one call and its story.
fn call(o: &Common, a: &CallArgs) -> Result<ExitCode, CliError> {
    let endpoint = crate::call::endpoint(
        a.relay
            .as_deref()
            .or(o.relay_addr.as_deref())
            .unwrap_or("127.0.0.1:7070"),
    );
    let wa = o.wa_security.unwrap_or(WaMode::Dtls);
    check_mode(TargetKind::Relay, wa)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let outcome = rt.block_on(crate::call::one_call(
        &endpoint,
        o.token.clone(),
        wa,
        a.duration,
    ))?;
    print!("{}", outcome.render());
    Ok(if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// This session's autogroup nice (`/proc/self/autogroup`, Linux with
/// `kernel.sched_autogroup_enabled = 1`), set for the run and put back when dropped. Without it
/// a process at nice -20 still gets only its session's share of the CPUs: on this project's
/// shared 2-vCPU machine a pinned busy loop got 40 % of its core at nice -20, 99 % with the
/// autogroup at -20 too. (If this process is killed, the session keeps the value.)
struct AutogroupNice {
    previous: i32,
}

impl AutogroupNice {
    const PATH: &'static str = "/proc/self/autogroup";

    fn read() -> Option<i32> {
        // "/autogroup-104 nice 0"
        std::fs::read_to_string(Self::PATH)
            .ok()?
            .split_ascii_whitespace()
            .last()?
            .parse()
            .ok()
    }

    fn set(nice: i32) -> Option<AutogroupNice> {
        let previous = Self::read()?;
        match std::fs::write(Self::PATH, nice.to_string()) {
            Ok(()) => Some(AutogroupNice { previous }),
            Err(e) => {
                eprintln!("loadtest: warning: cannot set the autogroup nice to {nice}: {e}");
                None
            }
        }
    }
}

impl Drop for AutogroupNice {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.previous.to_string());
    }
}

impl Cli {
    fn clone_parts(&self) -> (Common, Mode) {
        let mode = self.mode.clone().unwrap_or(Mode::Run(RunArgs {
            calls: 100,
            duration: Duration::from_secs(10),
        }));
        (self.opts.clone(), mode)
    }
}

/// A started target process, stopped when dropped.
enum Child {
    Relay(#[allow(dead_code)] RelayProcess),
    RtpEngine(#[allow(dead_code)] RtpEngineProcess),
}

/// The backend for `kind`, started (relay, rtpengine, raw forwarder) or reached (--relay-addr,
/// --rtpengine-ng), with a description for the report and the child to keep alive.
async fn open_target(
    o: &Common,
    kind: TargetKind,
    relay_cpu: Option<usize>,
) -> Result<(Backend, String, Option<Child>), CliError> {
    match kind {
        TargetKind::Raw | TargetKind::RawSingle => {
            let (layout, desc) = if kind == TargetKind::Raw {
                (
                    Layout::PerLeg,
                    "raw forwarder: a socket per call and leg, epoll + recvmmsg/sendmmsg, no logic",
                )
            } else {
                (
                    Layout::Single,
                    "raw forwarder: one socket, recvmmsg/sendmmsg, hash demux by source, no logic",
                )
            };
            let f = RawForwarder::start(GenConfig::default().bind_ip, relay_cpu, layout)
                .map_err(CliError::Raw)?;
            // Let the thread record its ID for the CPU meter.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok((Backend::Raw(f), desc.to_string(), None))
        }
        TargetKind::Rtpengine => {
            if let Some(addr) = o.rtpengine_ng {
                let ng = NgClient::connect(addr).await?;
                ng.ping().await?;
                return Ok((
                    Backend::RtpEngine {
                        ng: std::sync::Arc::new(ng),
                        pid: o.rtpengine_pid,
                    },
                    format!("rtpengine at {addr} (ng)"),
                    None,
                ));
            }
            let opts = RtpEngineOptions {
                bin: o.rtpengine_bin.clone(),
                threads: o.rtpengine_threads,
                cpu: relay_cpu,
                log: o.rtpengine_log.clone(),
                ..RtpEngineOptions::default()
            };
            let mut p = RtpEngineProcess::spawn(&opts)?;
            let ng = NgClient::connect(p.ng).await?;
            p.wait_ready(&ng, Duration::from_secs(10)).await?;
            let pid = p.pid();
            if !o.quiet {
                eprintln!(
                    "rtpengine {} started: pid {pid}, ng {}, num-threads {}, CPU {}, log {}",
                    opts.bin.display(),
                    p.ng,
                    opts.threads,
                    relay_cpu.map_or_else(|| "any".into(), |c| c.to_string()),
                    p.log.display()
                );
            }
            Ok((
                Backend::RtpEngine {
                    ng: std::sync::Arc::new(ng),
                    pid: Some(pid),
                },
                format!(
                    "rtpengine {} (userspace, num-threads {})",
                    opts.bin.display(),
                    opts.threads
                ),
                Some(Child::RtpEngine(p)),
            ))
        }
        TargetKind::Relay => {
            if let Some(addr) = &o.relay_addr {
                let client =
                    target::connect(addr, o.token.clone(), Duration::from_secs(10), None).await?;
                return Ok((
                    Backend::Relay {
                        client,
                        pid: o.relay_pid,
                        metrics: o.relay_metrics,
                    },
                    format!("relay at {addr}"),
                    None,
                ));
            }
            let bin = o
                .relay_bin
                .clone()
                .or_else(target::default_relay_bin)
                .ok_or(CliError::NoRelay)?;
            let metrics = target::free_port().map_err(target::TargetError::Port)?;
            let mut extra_args = vec!["--metrics-listen".to_string(), metrics.to_string()];
            if o.record
                && !o
                    .relay_args
                    .iter()
                    .any(|a| a.starts_with("--recording-dir"))
            {
                extra_args.push(format!("--recording-dir={}", recording_dir().display()));
            }
            extra_args.extend(o.relay_args.iter().cloned());
            let mut p = RelayProcess::spawn(&SpawnOptions {
                bin: bin.clone(),
                shards: o.relay_shards,
                cpu: relay_cpu,
                extra_args,
                log: o.relay_log.clone(),
            })?;
            let client = target::connect(
                &p.endpoint(),
                o.token.clone(),
                Duration::from_secs(15),
                Some(&mut p),
            )
            .await?;
            let pid = p.pid();
            if !o.quiet {
                eprintln!(
                    "relay {} started: pid {pid}, control {}, shards {}, log {}",
                    bin.display(),
                    p.control,
                    o.relay_shards,
                    p.log.display()
                );
            }
            Ok((
                Backend::Relay {
                    client,
                    pid: Some(pid),
                    // A --relay-arg=--metrics-listen=... given by the user wins over ours.
                    metrics: (!o
                        .relay_args
                        .iter()
                        .any(|a| a.starts_with("--metrics-listen")))
                    .then_some(metrics),
                },
                format!("relay {} (--shards {})", bin.display(), o.relay_shards),
                Some(Child::Relay(p)),
            ))
        }
    }
}

fn session_options(o: &Common, kind: TargetKind, wa: WaMode, gen_cpu: Option<usize>) -> Options {
    let profiles = if !o.profiles.is_empty() {
        o.profiles.clone()
    } else if wa == WaMode::Sdes {
        // The SDES suite SIP equipment (and rtpengine) use most.
        vec![SrtpProfile::Aes128CmHmacSha1_80]
    } else {
        Options::default().profiles
    };
    Options {
        generator: GenConfig {
            threads: o.threads.max(1),
            // One forwarder socket for every call: only the peers' own addresses tell the
            // calls apart.
            pool: if kind == TargetKind::RawSingle {
                0
            } else {
                o.pool
            },
            cpus: gen_cpu.into_iter().collect(),
            spacing: o.spacing,
            ..GenConfig::default()
        },
        profiles,
        setup_rate: o.setup_rate,
        settle: o.settle,
        warmup: o.warmup,
        live: !o.quiet,
        wa_mode: wa,
        record: o.record,
        ..Options::default()
    }
}

/// Where a relay started with `--record` writes (removed after the run).
fn recording_dir() -> PathBuf {
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

async fn run_async(
    (o, mode): (Common, Mode),
    relay_cpu: Option<usize>,
    gen_cpu: Option<usize>,
) -> Result<ExitCode, CliError> {
    let load_start = load_average();
    let kind = o.target_kind();
    let (result, ok, target_desc) = if let Mode::Compare(a) = &mode {
        let mut entries = Vec::new();
        for t in &a.targets {
            entries.push(compare_one(&o, *t, &a.capacity, relay_cpu, gen_cpu).await);
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
    } else {
        let (backend, desc, child) = open_target(&o, kind, relay_cpu).await?;
        let session = Session::new(backend, session_options(&o, kind, o.wa_mode(kind), gen_cpu))?;
        if !o.quiet {
            eprintln!(
                "load average before the run: {load_start} ({} CPUs); WhatsApp side: {:?}",
                Machine::detect().cpus,
                o.wa_mode(kind)
            );
        }
        let (result, ok) = run_mode(&session, &mode).await;
        drop(session);
        drop(child);
        (result, ok, desc)
    };
    let report = Report {
        tool: concat!("loadtest ", env!("CARGO_PKG_VERSION")),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_start,
        target: target_desc,
        machine: Machine::detect(),
        settings: Settings {
            threads: o.threads,
            pool: o.pool,
            setup_rate: o.setup_rate,
            relay_shards: (kind == TargetKind::Relay && o.relay_addr.is_none())
                .then_some(o.relay_shards),
            relay_cpu,
            gen_cpu,
            nice: o.nice,
        },
        result,
    };
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &o.html {
        std::fs::write(path, html::render(&report)).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

/// Runs `mode` (anything but compare) on `session`; prints its table.
async fn run_mode(session: &Session, mode: &Mode) -> (ModeReport, bool) {
    match mode {
        Mode::Run(a) => {
            let r = session.run(a.calls, a.duration, "run").await;
            println!("{}", report::table(&r));
            if session.records() {
                print_recording_totals(session);
            }
            let ok = r.failures_total() == 0;
            (ModeReport::Run { run: r }, ok)
        }
        Mode::Churn(a) => {
            let r = session
                .churn(a.rate, a.call_duration, a.duration, "churn")
                .await;
            println!("{}", report::table(&r));
            let ok = r.failures_total() == 0;
            (ModeReport::Churn { run: r }, ok)
        }
        Mode::Ramp(a) => {
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
        Mode::Capacity(a) => {
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
        Mode::Call(_) => (
            ModeReport::Compare {
                compare: Vec::new(),
            },
            false,
        ),
        Mode::Overload(a) => {
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
        Mode::Compare(_) => (
            ModeReport::Compare {
                compare: Vec::new(),
            },
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn profiles() {
        assert_eq!(
            parse_profile("aead-aes-128-gcm"),
            Ok(SrtpProfile::AeadAes128Gcm)
        );
        assert_eq!(
            parse_profile("AES_CM_128_HMAC_SHA1_80"),
            Ok(SrtpProfile::Aes128CmHmacSha1_80)
        );
        assert!(parse_profile("rot13").is_err());
    }

    #[test]
    fn the_documented_command_lines_parse() {
        let c = Cli::try_parse_from([
            "loadtest",
            "--relay-bin",
            "target/release/relay",
            "run",
            "--calls",
            "200",
            "--duration",
            "20",
        ])
        .unwrap();
        assert!(matches!(
            c.mode,
            Some(Mode::Run(RunArgs { calls: 200, .. }))
        ));
        let c = Cli::try_parse_from([
            "loadtest",
            "capacity",
            "--slo-loss",
            "0.0001",
            "--slo-p99-ms",
            "5",
            "--taskset",
        ])
        .unwrap();
        assert!(c.opts.taskset);
        assert!(matches!(c.mode, Some(Mode::Capacity(_))));
        assert!(Cli::try_parse_from(["loadtest", "--raw", "--relay-addr", "http://x"]).is_err());
    }
}
