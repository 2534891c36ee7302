//! The command line: `loadtest [OPTIONS] [run|call|ramp|capacity|churn|compare|overload ...]`;
//! see `--help`. The binary is a thin wrapper around [`main`].
//!
//! - this file: the parser ([`Cli`], the options every mode shares in [`Common`], [`Mode`]),
//!   the process setup (nice, pinning, the runtime), the dispatch to a mode, and writing the
//!   report (`--json`, `--html`);
//! - one file per mode: [`run`], [`call`], [`ramp`], [`capacity`] (with the SLO options),
//!   [`churn`], [`compare`], [`overload`]: its arguments and how it runs and prints;
//! - [`target`]: start or reach what is loaded, and the session options for it;
//! - [`host`]: the autogroup nice.
//!
//! What a run writes ([`Report`](crate::report::Report) and the modes' reports) lives in
//! [`report`](crate::report).

pub mod call;
pub mod capacity;
pub mod churn;
pub mod compare;
mod host;
pub mod overload;
pub mod ramp;
pub mod run;
pub mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay::srtp::SrtpProfile;

pub use call::CallArgs;
pub use capacity::{CapacityArgs, SloArgs};
pub use churn::ChurnArgs;
pub use compare::{CompareArgs, CompareTarget, parse_compare_target};
pub use overload::OverloadArgs;
pub use ramp::RampArgs;
pub use run::RunArgs;
pub use target::TargetKind;

use crate::generator::Spacing;
use crate::os::pin_current_thread;
use crate::report::{Machine, ModeReport, Report, Settings, html, load_average};
use crate::session::{Session, WaMode};
use host::AutogroupNice;
use target::{check_mode, open_target, session_options};

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
    /// source address; issue 17's levers: `raw-shared-internal` with a socket per call toward
    /// WhatsApp and one shared internal socket, `raw-steered` with an eBPF sk_lookup program
    /// steering every per-call port to one receive socket, root and `unshare -n` only), or
    /// rtpengine over its ng protocol (started from --rtpengine-bin unless --rtpengine-ng).
    /// Raw forwarders also read LOADTEST_RAW_BATCH_US (sleep that long before each wait, to
    /// batch like the relay's io_uring driver; default 0).
    #[arg(long, global = true, value_enum, default_value_t = TargetKind::Relay)]
    pub target: TargetKind,
    /// Same as --target raw: a trivial recvmmsg/sendmmsg forwarder (a socket per call and leg)
    /// replaces the relay.
    #[arg(long, global = true, conflicts_with_all = ["relay_bin", "relay_addr"])]
    pub raw: bool,
    /// Same as --target rtpengine.
    #[arg(long, global = true)]
    pub rtpengine: bool,
    /// Raw forwarders: receive and send buffer of each per-call socket in bytes, as the kernel
    /// accounts them (it doubles what setsockopt is given, so half is set; forced past
    /// rmem_max as root). 0 = the kernel default (net.core.rmem_default). Default: 2 MiB, as
    /// before. Shared sockets keep 16 MiB.
    #[arg(long, global = true)]
    pub raw_buffer: Option<usize>,
    /// Raw forwarders: UDP_GRO on every socket, reading each datagram's segment count (a
    /// datagram GRO merged from several is dropped and counted; see --raw-count).
    #[arg(long, global = true)]
    pub raw_gro: bool,
    /// Raw forwarders: count what GRO and GSO could merge (datagrams right after one of the
    /// same flow in one receive; datagrams to the same destination as the one before in one
    /// sendmmsg) and print it when the forwarder stops.
    #[arg(long, global = true)]
    pub raw_count: bool,
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
    Target(#[from] crate::target::TargetError),
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
            TargetKind::Raw
            | TargetKind::RawSingle
            | TargetKind::RawSharedInternal
            | TargetKind::RawSteered => WaMode::Plain,
        })
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let o = &cli.opts;
    if let Some(Mode::Call(a)) = &cli.mode {
        return call::call(o, a);
    }
    let kind = o.target_kind();
    if !matches!(cli.mode, Some(Mode::Compare(_))) {
        check_mode(kind, o.wa_mode(kind))?;
    }
    crate::os::raise_fd_limit();
    // With autogroup scheduling, nice only ranks threads inside this session's group; the
    // group's own nice decides its share against other sessions' builds. Restored on return.
    let _autogroup = o.nice.and_then(AutogroupNice::set);
    // Before any thread or child exists: they inherit it.
    if let Some(n) = o.nice
        && let Err(e) = crate::os::set_nice(n)
    {
        eprintln!("loadtest: warning: cannot set nice {n}: {e}");
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

impl Cli {
    fn clone_parts(&self) -> (Common, Mode) {
        let mode = self.mode.clone().unwrap_or(Mode::Run(RunArgs {
            calls: 100,
            duration: Duration::from_secs(10),
        }));
        (self.opts.clone(), mode)
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
        compare::run(&o, a, relay_cpu, gen_cpu).await
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

/// Runs `mode` (anything but compare) on `session`; prints its table.
async fn run_mode(session: &Session, mode: &Mode) -> (ModeReport, bool) {
    match mode {
        Mode::Run(a) => run::run(session, a).await,
        Mode::Churn(a) => churn::run(session, a).await,
        Mode::Ramp(a) => ramp::run(session, a).await,
        Mode::Capacity(a) => capacity::run(session, a).await,
        Mode::Overload(a) => overload::run(session, a).await,
        Mode::Call(_) => (
            ModeReport::Compare {
                compare: Vec::new(),
            },
            false,
        ),
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
