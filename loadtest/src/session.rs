//! The signaling tier's part: one task per call drives the relay's gRPC API exactly as a
//! business's signaling service would for a user-initiated call, and hands the peers to the
//! generator:
//!
//! 1. `CreateCall(USER_INITIATED)` with the Meta peer's offer and the SIP peer's SDP;
//! 2. the answer to the Meta peer, the internal SDP to the SIP peer, both to a generator thread;
//! 3. wait until the Meta peer's DTLS is up, then `OpenGate`, then audio both ways;
//! 4. at the end: audio off, a settle time for packets in flight, `Terminate`.
//!
//! The modes (run, ramp, churn, capacity) are compositions of these steps; a [`Sampler`] task
//! takes a [`Sample`](crate::sampler::Sample) every second meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::client::RelayClient;
use control::pb;
use e2e::dtls::PeerCertificate;
use relay::srtp::SrtpProfile;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use crate::generator::{Command, GenConfig, Generator, NewCall};
use crate::hist::Histogram;
use crate::peer::meta::{MetaPeer, Security};
use crate::peer::sip::SipPeer;
use crate::procfs::{CpuSource, rss_bytes};
use crate::raw::RawForwarder;
use crate::report::{self, RelayCounters, RunInputs, RunReport, SetupBreakdown};
use crate::sampler::{Sampler, Window};
use crate::syscalls::{SyscallMeter, SyscallSource};
use crate::target_rtpengine::NgClient;

/// Calls per business phone number (Meta's concurrency limit per number is 1,000).
const CALLS_PER_NUMBER: u64 = 500;
/// Concurrent Terminate requests at teardown.
const TERMINATE_CONCURRENCY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot start the generator: {0}")]
    Generator(std::io::Error),
    #[error("cannot create the Meta peers' certificate: {0}")]
    Certificate(String),
}

/// What stands in for the relay.
pub enum Backend {
    /// A relay, driven over its gRPC control API. `pid` (a local process) enables CPU and RSS;
    /// `metrics` (its `/metrics` address) its own I/O system call and fill counters.
    Relay {
        client: RelayClient,
        pid: Option<u32>,
        metrics: Option<std::net::SocketAddr>,
    },
    /// The trivial forwarder: the machine's ceiling.
    Raw(RawForwarder),
    /// rtpengine, driven over its ng protocol (offer from the WhatsApp side, answer from the
    /// SIP side, delete). `pid` (a local process) enables CPU and RSS.
    RtpEngine { ng: Arc<NgClient>, pid: Option<u32> },
}

/// How the WhatsApp side secures media.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WaMode {
    /// ICE-lite + DTLS-SRTP, as Meta does by default (relay only).
    Dtls,
    /// SDES-SRTP: RTP/SAVP with a=crypto, no ICE (relay and rtpengine).
    Sdes,
    /// Plain RTP/AVP (rtpengine plain <-> plain; the raw forwarder always).
    Plain,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub generator: GenConfig,
    /// SRTP profiles the Meta peers accept, in preference order.
    pub profiles: Vec<SrtpProfile>,
    /// Setups per second when bringing calls up (run, ramp, capacity probes).
    pub setup_rate: f64,
    /// Wait between stopping audio and reading the counters, for packets in flight.
    pub settle: Duration,
    /// Wait between the last call coming up and opening the measurement window, so the setup
    /// burst's tail (handshakes, first reports) is not counted as steady latency.
    pub warmup: Duration,
    /// Longest wait for a call's DTLS.
    pub ready_timeout: Duration,
    /// Print a live line every second.
    pub live: bool,
    /// How the WhatsApp side secures media (the raw forwarder is always plain). SDES uses the
    /// first of `profiles`.
    pub wa_mode: WaMode,
    /// Record every call (StartRecording right after OpenGate; relay targets only).
    pub record: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            generator: GenConfig::default(),
            profiles: vec![
                SrtpProfile::AeadAes128Gcm,
                SrtpProfile::Aes128CmHmacSha1_80,
                SrtpProfile::AeadAes256Gcm,
            ],
            setup_rate: 200.0,
            settle: Duration::from_millis(500),
            warmup: Duration::ZERO,
            ready_timeout: Duration::from_secs(10),
            live: true,
            wa_mode: WaMode::Dtls,
            record: false,
        }
    }
}

/// The SLO a call count must meet.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Slo {
    /// Largest loss ratio in either direction (0.0001 = 0.01 %).
    pub loss: f64,
    /// Largest steady p99 one-way latency in either direction, ms.
    pub p99_ms: f64,
}

impl Slo {
    pub fn met_by(&self, r: &RunReport) -> bool {
        r.failures_total() == 0
            && r.calls_ok == r.calls
            && r.loss_ratio() <= self.loss
            && r.steady_p99_ms() <= self.p99_ms
    }
}

struct Ctx {
    backend: Backend,
    generator: Arc<Generator>,
    security: Security,
    opts: Options,
    nonce: u32,
    next_id: AtomicU64,
    /// Calls with audio on.
    active: Arc<AtomicUsize>,
    stages: Mutex<SetupStages>,
    /// Calls up and not yet being ended by us: call ID → generator ID. A call the relay ends
    /// on its own (its Watch stream says so) leaves here, stops sending and counts as failed.
    up: Mutex<HashMap<String, u64>>,
    /// Calls the relay ended on its own, with the cause.
    ended_by_relay: Mutex<Vec<(String, String)>>,
}

impl Ctx {
    /// The relay ended `call_id` without being asked (e.g. a media timeout at overload):
    /// stop its peers and count it as failed. Calls we are ending ourselves are ignored.
    fn relay_ended(&self, call_id: &str, cause: String) {
        let Some(id) = lock(&self.up).remove(call_id) else {
            return;
        };
        self.generator.send(id, Command::Media { id, on: false });
        self.generator.send(id, Command::Remove(id));
        self.active.fetch_sub(1, Ordering::Relaxed);
        lock(&self.ended_by_relay).push((call_id.to_string(), cause));
    }

    /// We are ending `c`: `false` if the relay already ended it (nothing left to do).
    fn claim_for_ending(&self, c: &LiveCall) -> bool {
        lock(&self.up).remove(&c.call_id).is_some()
    }
}

/// Follows the relay's events for calls it ends on its own, until the session is gone.
async fn watch_relay_ends(ctx: std::sync::Weak<Ctx>, mut client: RelayClient) {
    let Ok(mut stream) = client.watch(None).await else {
        return;
    };
    while let Ok(Some(item)) = stream.message().await {
        let Some(ctx) = ctx.upgrade() else { return };
        if let Some(pb::watch_response::Item::Event(ev)) = item.item
            && let Some(pb::call_event::Kind::Ended(end)) = ev.kind
        {
            let cause = pb::EndCause::try_from(end.cause)
                .ok()
                .and_then(control::json::end_cause)
                .unwrap_or_else(|| format!("cause {}", end.cause));
            ctx.relay_ended(&ev.call_id, cause);
        }
    }
}

/// Where setup time goes, per call (µs).
#[derive(Default)]
struct SetupStages {
    /// CreateCall round trip.
    create: Histogram,
    /// CreateCall answered → the Meta peer's DTLS is up (ICE + DTLS).
    connect: Histogram,
    /// OpenGate round trip.
    open_gate: Histogram,
}

struct LiveCall {
    id: u64,
    call_id: String,
}

#[derive(Debug)]
struct Failure {
    stage: &'static str,
    why: String,
}

fn fail(stage: &'static str) -> impl FnOnce(String) -> Failure {
    move |why| Failure { stage, why }
}

pub struct Session {
    ctx: Arc<Ctx>,
    relay_pid: Option<u32>,
    relay_cpu: Option<CpuSource>,
    rss_baseline: Option<u64>,
    syscalls: Option<SyscallSource>,
    relay_metrics: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// The relay's `/metrics` address, when the session knows it.
    pub fn relay_metrics(&self) -> Option<std::net::SocketAddr> {
        self.relay_metrics
    }

    /// Does this session record its calls?
    pub fn records(&self) -> bool {
        self.ctx.opts.record
    }

    pub fn new(backend: Backend, opts: Options) -> Result<Session, SessionError> {
        let generator =
            Arc::new(Generator::start(opts.generator.clone()).map_err(SessionError::Generator)?);
        let (relay_pid, relay_cpu) = match &backend {
            Backend::Relay { pid, .. } | Backend::RtpEngine { pid, .. } => {
                (*pid, pid.map(CpuSource::Process))
            }
            Backend::Raw(f) => (None, f.tid().map(|t| CpuSource::Threads(vec![t]))),
        };
        let (syscalls, relay_metrics) = match &backend {
            Backend::Relay { pid, metrics, .. } => {
                (SyscallSource::for_relay(*metrics, *pid), *metrics)
            }
            Backend::RtpEngine { pid, .. } => (pid.and_then(SyscallSource::perf), None),
            Backend::Raw(f) => (Some(SyscallSource::Counter(f.syscalls())), None),
        };
        let sdes_profile = opts
            .profiles
            .first()
            .copied()
            .unwrap_or(SrtpProfile::Aes128CmHmacSha1_80);
        let security = match (&backend, opts.wa_mode) {
            (Backend::Raw(_), _) | (_, WaMode::Plain) => Security::Plain,
            (_, WaMode::Sdes) => Security::Sdes {
                profile: sdes_profile,
            },
            (_, WaMode::Dtls) => Security::Dtls {
                // One certificate for all Meta peers: key generation per call would only load
                // the generator (Meta's fingerprint per call is not what the relay is tested on).
                cert: PeerCertificate::generate()
                    .map_err(|e| SessionError::Certificate(e.to_string()))?,
                profiles: opts.profiles.clone(),
            },
        };
        let session = Session {
            ctx: Arc::new(Ctx {
                backend,
                generator,
                security,
                opts,
                nonce: rand::random::<u32>() % 1_000_000,
                next_id: AtomicU64::new(0),
                active: Arc::new(AtomicUsize::new(0)),
                stages: Mutex::new(SetupStages::default()),
                up: Mutex::new(HashMap::new()),
                ended_by_relay: Mutex::new(Vec::new()),
            }),
            rss_baseline: relay_pid.and_then(rss_bytes),
            relay_pid,
            relay_cpu,
            syscalls,
            relay_metrics,
        };
        if let Backend::Relay { client, .. } = &session.ctx.backend
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(watch_relay_ends(
                Arc::downgrade(&session.ctx),
                client.clone(),
            ));
        }
        Ok(session)
    }

    /// Calls the relay ended on its own since the last call, as failures.
    fn take_relay_ends(&self) -> Vec<Failure> {
        std::mem::take(&mut *lock(&self.ctx.ended_by_relay))
            .into_iter()
            .map(|(call_id, cause)| Failure {
                stage: "ended_by_relay",
                why: format!("{call_id}: {cause}"),
            })
            .collect()
    }

    fn start_sampler(&self) -> (Arc<Mutex<Sampler>>, oneshot::Sender<()>) {
        *lock(&self.ctx.stages) = SetupStages::default();
        let sampler = Arc::new(Mutex::new(
            Sampler::new(
                self.ctx.generator.clone(),
                self.relay_pid,
                self.relay_cpu.clone(),
                self.ctx.active.clone(),
                self.ctx.opts.live,
            )
            .with_meters(
                self.syscalls.clone().map(SyscallMeter::new),
                self.relay_metrics,
            ),
        ));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let s = sampler.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        lock(&s).tick();
                    }
                    _ = &mut stop_rx => return,
                }
            }
        });
        (sampler, stop_tx)
    }

    /// Final counters: stops the sampler task, makes the generator publish, takes the rest.
    async fn finish_sampler(&self, sampler: &Arc<Mutex<Sampler>>, stop: oneshot::Sender<()>) {
        let _ = stop.send(());
        self.ctx.generator.flush().await;
        lock(sampler).tick();
    }

    async fn setup_many(&self, n: usize) -> (Vec<LiveCall>, Vec<Failure>) {
        let mut set = JoinSet::new();
        let gap = Duration::from_secs_f64(1.0 / self.ctx.opts.setup_rate.max(0.001));
        let start = tokio::time::Instant::now();
        for k in 0..n {
            tokio::time::sleep_until(start + gap.mul_f64(k as f64)).await;
            let ctx = self.ctx.clone();
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            set.spawn(async move { setup(&ctx, id).await });
        }
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(c)) => ok.push(c),
                Ok(Err(f)) => failed.push(f),
                Err(e) => failed.push(Failure {
                    stage: "task",
                    why: e.to_string(),
                }),
            }
        }
        (ok, failed)
    }

    /// Audio off everywhere, settle, terminate and forget every call.
    async fn teardown(&self, calls: Vec<LiveCall>) -> (Option<RelayCounters>, Vec<Failure>) {
        let calls: Vec<LiveCall> = calls
            .into_iter()
            .filter(|c| self.ctx.claim_for_ending(c))
            .collect();
        for c in &calls {
            stop_audio(&self.ctx, c);
        }
        tokio::time::sleep(self.ctx.opts.settle).await;
        let limit = Arc::new(Semaphore::new(TERMINATE_CONCURRENCY));
        let mut set = JoinSet::new();
        for c in calls {
            let ctx = self.ctx.clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                end(&ctx, &c).await
            });
        }
        let mut counters =
            matches!(self.ctx.backend, Backend::Relay { .. }).then(RelayCounters::default);
        let mut failed = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(info)) => {
                    if let (Some(c), Some(info)) = (counters.as_mut(), info) {
                        add_counters(c, &info);
                    }
                }
                Ok(Err(f)) => failed.push(f),
                Err(e) => failed.push(Failure {
                    stage: "task",
                    why: e.to_string(),
                }),
            }
        }
        (counters, failed)
    }

    /// `calls` calls: brought up at the setup rate, held with audio both ways for `hold`, then
    /// ended. Latency percentiles of the hold window are reported as "steady".
    pub async fn run(&self, calls: usize, hold: Duration, label: &str) -> RunReport {
        let (sampler, stop) = self.start_sampler();
        let (live, mut failures) = self.setup_many(calls).await;
        let calls_ok = live.len();
        tokio::time::sleep(self.ctx.opts.warmup).await;
        lock(&sampler).open_window();
        tokio::time::sleep(hold).await;
        let window = lock(&sampler).close_window();
        let (counters, more) = self.teardown(live).await;
        failures.extend(more);
        let ended = self.take_relay_ends();
        let calls_ok = calls_ok - ended.len().min(calls_ok);
        failures.extend(ended);
        self.finish_sampler(&sampler, stop).await;
        self.report(
            label,
            calls,
            calls_ok,
            failures,
            (self.ctx.opts.warmup, hold),
            &sampler,
            &window,
            counters,
        )
    }

    /// One call held for `hold`, for `loadtest call`: the run's report, and from the relay the
    /// call as `GetCall` shows it halfway through and, after it ended, its event log.
    pub async fn call_once(
        &self,
        hold: Duration,
    ) -> (RunReport, Option<pb::GetCallResponse>, Vec<pb::CallEvent>) {
        let (sampler, stop) = self.start_sampler();
        let (live, mut failures) = self.setup_many(1).await;
        let calls_ok = live.len();
        lock(&sampler).open_window();
        tokio::time::sleep(hold / 2).await;
        let client = match &self.ctx.backend {
            Backend::Relay { client, .. } => Some(client.clone()),
            _ => None,
        };
        let call_id = live.first().map(|c| c.call_id.clone());
        let mut during = None;
        if let (Some(mut c), Some(id)) = (client.clone(), call_id.clone()) {
            during = c.get_call(id).await.ok();
        }
        tokio::time::sleep(hold - hold / 2).await;
        let window = lock(&sampler).close_window();
        let (counters, more) = self.teardown(live).await;
        failures.extend(more);
        let ended = self.take_relay_ends();
        let calls_ok = calls_ok - ended.len().min(calls_ok);
        failures.extend(ended);
        self.finish_sampler(&sampler, stop).await;
        let mut events = Vec::new();
        if let (Some(mut c), Some(id)) = (client, call_id)
            && let Ok(r) = c.get_call(id).await
        {
            events = r.events;
        }
        let report = self.report(
            "call",
            1,
            calls_ok,
            failures,
            (Duration::ZERO, hold),
            &sampler,
            &window,
            counters,
        );
        (report, during, events)
    }

    /// Setups at `rate` per second for `total`, each call holding audio for `call_len`.
    pub async fn churn(
        &self,
        rate: f64,
        call_len: Duration,
        total: Duration,
        label: &str,
    ) -> RunReport {
        let (sampler, stop) = self.start_sampler();
        lock(&sampler).open_window();
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let n = (total.as_secs_f64() * rate).round() as usize;
        let start = tokio::time::Instant::now();
        let mut set = JoinSet::new();
        for k in 0..n {
            tokio::time::sleep_until(start + gap.mul_f64(k as f64)).await;
            let ctx = self.ctx.clone();
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            set.spawn(async move {
                let live = setup(&ctx, id).await?;
                tokio::time::sleep(call_len).await;
                if !ctx.claim_for_ending(&live) {
                    // The relay ended it meanwhile (counted from its event).
                    return Ok(None);
                }
                stop_audio(&ctx, &live);
                tokio::time::sleep(ctx.opts.settle).await;
                end(&ctx, &live).await
            });
        }
        let mut failures = Vec::new();
        let mut counters =
            matches!(self.ctx.backend, Backend::Relay { .. }).then(RelayCounters::default);
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(info)) => {
                    ok += 1;
                    if let (Some(c), Some(info)) = (counters.as_mut(), info) {
                        add_counters(c, &info);
                    }
                }
                Ok(Err(f)) => failures.push(f),
                Err(e) => failures.push(Failure {
                    stage: "task",
                    why: e.to_string(),
                }),
            }
        }
        let window = lock(&sampler).close_window();
        let ended = self.take_relay_ends();
        ok -= ended.len().min(ok);
        failures.extend(ended);
        self.finish_sampler(&sampler, stop).await;
        let hold = start.elapsed();
        let no_warmup = Duration::ZERO;
        self.report(
            label,
            n,
            ok,
            failures,
            (no_warmup, hold),
            &sampler,
            &window,
            counters,
        )
    }

    /// Adds `step` calls at a time from `start` up to `max`, holding each level for
    /// `step_hold`; stops early at the first step that misses `slo`, if given.
    pub async fn ramp(
        &self,
        start: usize,
        step: usize,
        max: usize,
        step_hold: Duration,
        slo: Option<Slo>,
    ) -> RampReport {
        let (sampler, stop) = self.start_sampler();
        let mut live: Vec<LiveCall> = Vec::new();
        let mut failures = Vec::new();
        let mut steps = Vec::new();
        let mut target = start.max(1);
        let ramp_start = Instant::now();
        loop {
            let (more, failed) = self.setup_many(target.saturating_sub(live.len())).await;
            live.extend(more);
            let step_failures = failed.len();
            failures.extend(failed);
            tokio::time::sleep(self.ctx.opts.warmup).await;
            lock(&sampler).open_window();
            tokio::time::sleep(step_hold).await;
            let w = lock(&sampler).close_window();
            let s = StepReport::new(live.len(), step_failures, &w, slo);
            if self.ctx.opts.live {
                eprintln!("{}", s.line());
            }
            let pass = s.pass;
            steps.push(s);
            if (slo.is_some() && !pass) || target >= max {
                break;
            }
            target = (target + step.max(1)).min(max);
        }
        let calls_ok = live.len();
        let (counters, more) = self.teardown(live).await;
        failures.extend(more);
        let ended = self.take_relay_ends();
        let calls_ok = calls_ok - ended.len().min(calls_ok);
        failures.extend(ended);
        self.finish_sampler(&sampler, stop).await;
        let whole = Window::default();
        let run = self.report(
            "ramp",
            target,
            calls_ok,
            failures,
            (self.ctx.opts.warmup, ramp_start.elapsed()),
            &sampler,
            &whole,
            counters,
        );
        let last_pass = steps.iter().take_while(|s| s.pass).last().map(|s| s.calls);
        RampReport {
            steps,
            last_pass,
            run,
        }
    }

    /// The largest call count that meets `slo`: doubling from `min` until a probe fails (or
    /// `max`), then bisection down to `resolution` calls. Each probe is a fresh `run`.
    pub async fn capacity(
        &self,
        slo: Slo,
        min: usize,
        max: usize,
        resolution: usize,
        probe_hold: Duration,
    ) -> CapacityReport {
        let mut probes = Vec::new();
        let mut best: Option<Box<RunReport>> = None;
        let mut first_failed: Option<Box<RunReport>> = None;
        let mut pass_n = 0usize;
        let mut fail_n: Option<usize> = None;
        let mut n = min.max(1);
        loop {
            let r = self.probe(n, probe_hold, slo, &mut probes).await;
            if slo.met_by(&r) {
                pass_n = n;
                best = Some(Box::new(r));
                if n >= max {
                    break;
                }
                n = (n * 2).min(max);
            } else {
                fail_n = Some(n);
                first_failed = Some(Box::new(r));
                break;
            }
        }
        if let Some(mut hi) = fail_n {
            while hi.saturating_sub(pass_n) > resolution.max(1) {
                let mid = pass_n + (hi - pass_n) / 2;
                let r = self.probe(mid, probe_hold, slo, &mut probes).await;
                if slo.met_by(&r) {
                    pass_n = mid;
                    best = Some(Box::new(r));
                } else {
                    hi = mid;
                }
            }
        }
        CapacityReport {
            slo,
            capacity: pass_n,
            first_failure: fail_n,
            probes,
            at_capacity: best,
            first_failed,
        }
    }

    /// Offers `factor` × `base` calls (`base`: what one core carries within the SLO) and checks
    /// that overload is handled as an operator needs: the relay's admission control refuses
    /// what it cannot carry, the calls it admitted keep their loss ≤ `max_loss`, and no silence
    /// fill goes to WhatsApp in the steady window (the SIP peers send every 20 ms throughout,
    /// so fill there means the relay filled while real media waited).
    pub async fn overload(
        &self,
        base: usize,
        factor: f64,
        hold: Duration,
        max_loss: f64,
    ) -> OverloadReport {
        let offered = ((base as f64) * factor).ceil().max(1.0) as usize;
        let run = self
            .run(offered, hold, &format!("overload {offered}"))
            .await;
        let refused: u64 = run
            .failures
            .values()
            .filter(|(_, e)| e.contains(relay::engine::OVERLOADED))
            .map(|(n, _)| n)
            .sum();
        let other_failures = run.failures_total() - refused;
        let fill = run.generator.steady_fill_received + run.generator.relay_fill.unwrap_or(0);
        let loss_ratio = run.loss_ratio();
        OverloadReport {
            base_calls: base,
            factor,
            offered,
            admitted: run.calls_ok,
            refused,
            other_failures,
            loss_ratio,
            max_loss,
            steady_fill: run.generator.steady_fill_received,
            relay_fill: run.generator.relay_fill,
            pass: other_failures == 0 && loss_ratio <= max_loss && fill == 0,
            run,
            capacity: None,
        }
    }

    async fn probe(
        &self,
        n: usize,
        hold: Duration,
        slo: Slo,
        probes: &mut Vec<Probe>,
    ) -> RunReport {
        let r = self.run(n, hold, &format!("probe {n}")).await;
        let p = Probe {
            calls: n,
            pass: slo.met_by(&r),
            loss_ratio: r.loss_ratio(),
            steady_p99_ms: r.steady_p99_ms(),
            failures: r.failures_total(),
            relay_cpu_pct: r.resources.relay_cpu_pct,
            gen_cpu_pct: r.resources.gen_cpu_pct,
            forwarded_pps: r.forwarded_pps(),
            syscalls_per_packet: r.syscalls_per_packet(),
        };
        if self.ctx.opts.live {
            eprintln!("{}", p.line());
        }
        probes.push(p);
        // Let the relay release the probe's calls before the next one.
        tokio::time::sleep(Duration::from_secs(1)).await;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        label: &str,
        calls: usize,
        calls_ok: usize,
        failures: Vec<Failure>,
        (warmup, hold): (Duration, Duration),
        sampler: &Arc<Mutex<Sampler>>,
        steady: &Window,
        relay: Option<RelayCounters>,
    ) -> RunReport {
        let mut by_stage: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for f in failures {
            let e = by_stage
                .entry(f.stage.to_string())
                .or_insert((0, f.why.clone()));
            e.0 += 1;
        }
        let st = lock(&self.ctx.stages);
        let stages = SetupBreakdown {
            create_rpc: st.create.percentiles(),
            ice_dtls: st.connect.percentiles(),
            open_gate_rpc: st.open_gate.percentiles(),
        };
        drop(st);
        let s = lock(sampler);
        report::build(RunInputs {
            stages,
            label: label.to_string(),
            calls,
            calls_ok,
            failures: by_stage,
            hold_s: hold.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            all: &s.cumulative,
            steady,
            timeline: s.timeline.clone(),
            rss_baseline: self.rss_baseline,
            rss_peak: s.rss_max,
            relay,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn add_counters(c: &mut RelayCounters, info: &pb::CallInfo) {
    c.calls += 1;
    let packets = |s: &Option<pb::StreamStats>| s.as_ref().map_or(0, |s| s.packets);
    if let Some(w) = &info.whatsapp {
        c.whatsapp_received += packets(&w.received);
        c.whatsapp_sent += packets(&w.sent);
        c.dropped += w.dropped;
        c.auth_failures += w.auth_failures;
    }
    if let Some(i) = &info.internal {
        c.internal_received += packets(&i.received);
        c.internal_sent += packets(&i.sent);
        c.dropped += i.dropped;
        c.auth_failures += i.auth_failures;
    }
}

async fn setup(ctx: &Ctx, id: u64) -> Result<LiveCall, Failure> {
    let socks = ctx
        .generator
        .sockets_for(id)
        .map_err(|e| fail("create")(e.to_string()))?;
    let mut meta = MetaPeer::new(socks.meta_addr, ctx.security.clone());
    let mut sip = SipPeer::new(socks.sip_addr);
    let call_id = format!("wacid.lt{}-{id}", ctx.nonce);
    let created_at = Instant::now();
    let (meta_remotes, sip_remote) = match &ctx.backend {
        Backend::Relay { client, .. } => {
            let req = pb::CreateCallRequest {
                call_id: call_id.clone(),
                business_number: format!("1555{:07}", id / CALLS_PER_NUMBER),
                consumer: format!("lt{}-{id}", ctx.nonce),
                direction: pb::CallDirection::UserInitiated.into(),
                whatsapp_offer_sdp: meta.offer_sdp(),
                whatsapp: None,
                internal: Some(pb::InternalLeg {
                    transport: pb::InternalTransport::PlainRtp.into(),
                    remote_sdp: sip.sdp(),
                    ..Default::default()
                }),
            };
            let resp = client
                .clone()
                .create_call(req)
                .await
                .map_err(|s| fail("create")(format!("{}: {}", s.code(), s.message())))?;
            lock(&ctx.stages)
                .create
                .record(created_at.elapsed().as_micros() as u64);
            let remotes = match meta.set_answer(&resp.whatsapp_sdp, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    terminate(ctx, &call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            let sip_remote = match sip.set_remote_sdp(&resp.internal_sdp, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    terminate(ctx, &call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            (remotes, sip_remote)
        }
        Backend::RtpEngine { ng, .. } => {
            // offer (WhatsApp side's SDP) → SDP for the SIP side; answer (SIP side's SDP) →
            // SDP for the WhatsApp side. Both round trips count as the "create" stage.
            let to_plain = matches!(ctx.security, Security::Sdes { .. });
            let sip_sdp = ng
                .offer(&call_id, &meta.offer_sdp(), to_plain)
                .await
                .map_err(|e| fail("create")(e.to_string()))?;
            let sip_remote = match sip.set_remote_sdp(&sip_sdp, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ng.delete(&call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            let wa_sdp = match ng.answer(&call_id, &sip.sdp()).await {
                Ok(sdp) => sdp,
                Err(e) => {
                    let _ = ng.delete(&call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            lock(&ctx.stages)
                .create
                .record(created_at.elapsed().as_micros() as u64);
            match meta.set_answer(&wa_sdp, Instant::now()) {
                Ok(remotes) => (remotes, sip_remote),
                Err(e) => {
                    let _ = ng.delete(&call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            }
        }
        Backend::Raw(fwd) => {
            let (wa, internal) = fwd
                .add(id, socks.meta_addr, socks.sip_addr)
                .map_err(|e| fail("create")(e.to_string()))?;
            meta.set_plain_target(wa);
            sip.set_remote(internal, Instant::now());
            (vec![wa], internal)
        }
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    ctx.generator.send(
        id,
        Command::Add(Box::new(NewCall {
            id,
            meta,
            meta_socket: socks.meta,
            meta_remotes,
            sip,
            sip_socket: socks.sip,
            sip_remote,
            created_at,
            ready: ready_tx,
        })),
    );
    let live = LiveCall { id, call_id };
    let handed_over = Instant::now();
    let ready = tokio::time::timeout(ctx.opts.ready_timeout, ready_rx).await;
    let why = match ready {
        Ok(Ok(Ok(_))) => None,
        Ok(Ok(Err(why))) => Some(why),
        Ok(Err(_)) => Some("generator thread gone".to_string()),
        Err(_) => Some(format!("not ready within {:?}", ctx.opts.ready_timeout)),
    };
    if let Some(why) = why {
        let _ = end(ctx, &live).await;
        return Err(fail("ready")(why));
    }
    let connected = Instant::now();
    lock(&ctx.stages)
        .connect
        .record(connected.duration_since(handed_over).as_micros() as u64);
    if let Backend::Relay { client, .. } = &ctx.backend {
        if let Err(s) = client.clone().open_gate(live.call_id.clone()).await {
            let _ = end(ctx, &live).await;
            return Err(fail("open_gate")(format!("{}: {}", s.code(), s.message())));
        }
        lock(&ctx.stages)
            .open_gate
            .record(connected.elapsed().as_micros() as u64);
        if ctx.opts.record
            && let Err(s) = client
                .clone()
                .recording(live.call_id.clone(), control::client::RecordingOp::Start)
                .await
        {
            let _ = end(ctx, &live).await;
            return Err(fail("start_recording")(format!(
                "{}: {}",
                s.code(),
                s.message()
            )));
        }
    }
    lock(&ctx.up).insert(live.call_id.clone(), id);
    ctx.generator.send(id, Command::Media { id, on: true });
    ctx.active.fetch_add(1, Ordering::Relaxed);
    Ok(live)
}

fn stop_audio(ctx: &Ctx, c: &LiveCall) {
    ctx.generator.send(
        c.id,
        Command::Media {
            id: c.id,
            on: false,
        },
    );
    ctx.active.fetch_sub(1, Ordering::Relaxed);
}

async fn terminate(ctx: &Ctx, call_id: &str) -> Option<Result<Option<pb::CallInfo>, String>> {
    match &ctx.backend {
        Backend::Relay { client, .. } => Some(
            client
                .clone()
                .terminate(call_id.to_string(), "loadtest: call over")
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message())),
        ),
        Backend::RtpEngine { ng, .. } => Some(
            ng.delete(call_id)
                .await
                .map(|_| None)
                .map_err(|e| e.to_string()),
        ),
        Backend::Raw(_) => None,
    }
}

/// Terminate at the relay (or release the forwarder's ports) and drop the peers.
async fn end(ctx: &Ctx, c: &LiveCall) -> Result<Option<pb::CallInfo>, Failure> {
    let result = match terminate(ctx, &c.call_id).await {
        Some(r) => r,
        None => {
            if let Backend::Raw(f) = &ctx.backend {
                f.remove(c.id);
            }
            Ok(None)
        }
    };
    ctx.generator.send(c.id, Command::Remove(c.id));
    result.map_err(fail("terminate"))
}

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
    fn new(calls: usize, setup_failures: usize, w: &Window, slo: Option<Slo>) -> StepReport {
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

/// One capacity probe.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Probe {
    pub calls: usize,
    pub pass: bool,
    pub loss_ratio: f64,
    pub steady_p99_ms: f64,
    pub failures: u64,
    pub relay_cpu_pct: Option<f64>,
    pub gen_cpu_pct: Option<f64>,
    /// Packets the target forwarded per second, both directions, in the steady window.
    pub forwarded_pps: f64,
    /// The target's system calls per forwarded packet in the steady window, if counted.
    pub syscalls_per_packet: Option<f64>,
}

impl Probe {
    /// Microseconds of the target's CPU per forwarded packet: its whole process (kernel time
    /// included) over what it forwarded. Unlike a latency percentile it hardly depends on the
    /// machine's scheduling noise, so it is the steadier way to compare targets.
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        let cpu = self.relay_cpu_pct?;
        (self.forwarded_pps > 0.0).then(|| cpu / 100.0 * 1e6 / self.forwarded_pps)
    }

    pub fn line(&self) -> String {
        format!(
            "probe {:>5} calls: {}  loss {:.4}%  steady p99 {:.2} ms  failures {}  relay cpu {}  generator cpu {}",
            self.calls,
            if self.pass { "PASS" } else { "FAIL" },
            self.loss_ratio * 100.0,
            self.steady_p99_ms,
            self.failures,
            self.relay_cpu_pct
                .map_or_else(|| "-".into(), |v| format!("{v:.0}%")),
            self.gen_cpu_pct
                .map_or_else(|| "-".into(), |v| format!("{v:.0}%")),
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CapacityReport {
    pub slo: Slo,
    /// The largest probed call count that met the SLO (0 if none did).
    pub capacity: usize,
    /// The smallest probed count that missed it.
    pub first_failure: Option<usize>,
    pub probes: Vec<Probe>,
    /// The full report of the probe at capacity.
    pub at_capacity: Option<Box<RunReport>>,
    /// The full report of the first probe that missed the SLO (what went wrong).
    pub first_failed: Option<Box<RunReport>>,
}

impl CapacityReport {
    /// Probes that lost nothing and brought every call up: their CPU per packet is clean.
    fn clean(&self) -> impl Iterator<Item = &Probe> {
        self.probes
            .iter()
            .filter(|p| p.failures == 0 && p.loss_ratio == 0.0)
    }

    pub fn clean_probes(&self) -> usize {
        self.clean()
            .filter(|p| p.cpu_us_per_packet().is_some())
            .count()
    }

    /// Median CPU per forwarded packet over the clean probes, µs (see
    /// [`Probe::cpu_us_per_packet`]).
    /// Without a clean probe, over all probes (see [`CapacityReport::clean_probes`]).
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        median(self.clean().filter_map(Probe::cpu_us_per_packet).collect()).or_else(|| {
            median(
                self.probes
                    .iter()
                    .filter_map(Probe::cpu_us_per_packet)
                    .collect(),
            )
        })
    }

    /// Median system calls per forwarded packet over the clean probes (or, without one, over
    /// all).
    pub fn syscalls_per_packet(&self) -> Option<f64> {
        median(self.clean().filter_map(|p| p.syscalls_per_packet).collect()).or_else(|| {
            median(
                self.probes
                    .iter()
                    .filter_map(|p| p.syscalls_per_packet)
                    .collect(),
            )
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(calls: usize, cpu: Option<f64>, pps: f64, loss: f64, failures: u64) -> Probe {
        Probe {
            calls,
            pass: true,
            loss_ratio: loss,
            steady_p99_ms: 1.0,
            failures,
            relay_cpu_pct: cpu,
            gen_cpu_pct: None,
            forwarded_pps: pps,
            syscalls_per_packet: None,
        }
    }

    #[test]
    fn cpu_per_packet_is_the_median_of_clean_probes() {
        // 50 % of a core for 50,000 packets/s is 10 µs a packet.
        assert_eq!(
            probe(250, Some(50.0), 50_000.0, 0.0, 0).cpu_us_per_packet(),
            Some(10.0)
        );
        assert_eq!(probe(250, None, 50_000.0, 0.0, 0).cpu_us_per_packet(), None);
        assert_eq!(
            probe(250, Some(50.0), 0.0, 0.0, 0).cpu_us_per_packet(),
            None
        );
        let report = CapacityReport {
            slo: Slo {
                loss: 0.0001,
                p99_ms: 5.0,
            },
            capacity: 0,
            first_failure: None,
            probes: vec![
                probe(125, Some(12.0), 10_000.0, 0.0, 0),  // 12 µs
                probe(250, Some(22.0), 20_000.0, 0.0, 0),  // 11 µs
                probe(500, Some(65.0), 50_000.0, 0.0, 0),  // 13 µs
                probe(1000, Some(99.0), 30_000.0, 0.4, 0), // lost packets: excluded
                probe(1000, Some(99.0), 30_000.0, 0.0, 7), // calls failed: excluded
            ],
            at_capacity: None,
            first_failed: None,
        };
        assert_eq!(report.clean_probes(), 3);
        let m = report.cpu_us_per_packet().unwrap();
        assert!((m - 12.0).abs() < 1e-9, "{m}");
    }
}

/// What `overload` found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OverloadReport {
    /// Calls one core carries within the SLO (given, or the capacity search's result).
    pub base_calls: usize,
    pub factor: f64,
    /// Calls asked for: `factor` × `base_calls`.
    pub offered: usize,
    /// Calls that came up and stayed up to the end.
    pub admitted: usize,
    /// CreateCall refused by the relay's admission control (expected under overload).
    pub refused: u64,
    /// Every other failure: setups that broke, calls the relay ended on its own.
    pub other_failures: u64,
    /// Loss of the admitted calls' media over the whole run, worst direction.
    pub loss_ratio: f64,
    pub max_loss: f64,
    /// Silence fill the Meta peers received in the steady window.
    pub steady_fill: u64,
    /// Silence fill the relay counted in the steady window (its /metrics), if exported.
    pub relay_fill: Option<u64>,
    /// No failure but refusals, loss ≤ `max_loss`, no fill.
    pub pass: bool,
    pub run: RunReport,
    /// The capacity search that chose `base_calls`, if one ran.
    pub capacity: Option<CapacityReport>,
}

impl OverloadReport {
    pub fn summary(&self) -> String {
        format!(
            "overload: offered {} calls ({}x {}): {} admitted, {} refused by admission control, {} other failures; loss of admitted calls {:.4}% (limit {}%); silence fill in the steady window {}{} (limit 0): {}",
            self.offered,
            self.factor,
            self.base_calls,
            self.admitted,
            self.refused,
            self.other_failures,
            self.loss_ratio * 100.0,
            self.max_loss * 100.0,
            self.steady_fill,
            self.relay_fill
                .map_or_else(String::new, |n| format!(" (the relay counted {n})")),
            if self.pass { "PASS" } else { "FAIL" }
        )
    }
}
