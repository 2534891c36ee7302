//! The signaling tier's part: one task per call drives the relay's gRPC API exactly as a
//! business's signaling service would for a user-initiated call, and hands the peers to the
//! generator:
//!
//! 1. `CreateCall(USER_INITIATED)` with the Meta peer's offer and the SIP peer's SDP;
//! 2. the answer to the Meta peer, the internal SDP to the SIP peer, both to a generator thread;
//! 3. wait until the Meta peer's DTLS is up, then `OpenGate`, then audio both ways;
//! 4. at the end: audio off, a settle time for packets in flight, `Terminate`.
//!
//! The modes are compositions of these steps; a [`Sampler`] task takes a
//! [`Sample`](crate::sampler::Sample) every second meanwhile. One file each:
//!
//! - this file: the [`Session`] (its [`Backend`], [`Options`], the sampler, bringing many calls
//!   up and tearing them down, turning a run into a [`RunReport`]);
//! - [`steps`]: one call's steps 1-4 through the relay, rtpengine or the raw forwarder;
//! - [`run`], [`churn`], [`ramp`], [`capacity`], [`overload`]: the modes (`run` also holds
//!   `call_once` for `loadtest call`).
//!
//! What the modes return ([`RunReport`], [`RampReport`](crate::report::RampReport),
//! [`CapacityReport`](crate::report::CapacityReport), ...) lives in [`report`](crate::report).

mod capacity;
mod churn;
mod overload;
mod ramp;
mod run;
mod steps;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::client::RelayClient;
use control::pb;
use e2e::dtls::PeerCertificate;
use e2e::meta::MetaConfig;
use relay::srtp::SrtpProfile;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use crate::generator::{Command, GenConfig, Generator};
use crate::hist::Histogram;
use crate::procfs::{CpuSource, rss_bytes};
use crate::raw::RawForwarder;
use crate::report::{self, RelayCounters, RunInputs, RunReport, SetupBreakdown};
use crate::sampler::{Sampler, Window};
use crate::syscalls::{SyscallMeter, SyscallSource};
use crate::target_rtpengine::NgClient;
use steps::{end, setup, stop_audio};

/// Calls per business phone number (Meta's concurrency limit per number is 1,000).
const CALLS_PER_NUMBER: u64 = 500;
/// Concurrent Terminate requests at teardown.
const TERMINATE_CONCURRENCY: usize = 64;
/// The WhatsApp-side peers' first DTLS retransmission.
const DTLS_RETRANSMIT: Duration = Duration::from_millis(100);

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

struct Ctx {
    backend: Backend,
    generator: Arc<Generator>,
    /// Every WhatsApp-side peer's configuration (how it secures media).
    meta: MetaConfig,
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
        // IPv4 only (a peer has one socket), DTLS retransmitting after 100 ms, not rtc-dtls's
        // 1 s (Meta's stack is quicker), and one certificate for all Meta peers (in every mode:
        // a link makes one otherwise): key generation per call would only load the generator
        // (Meta's fingerprint per call is not what the relay is tested on).
        let meta = MetaConfig {
            dtls_retransmit: DTLS_RETRANSMIT,
            ..MetaConfig::default().ipv4_only().certificate(
                PeerCertificate::generate()
                    .map_err(|e| SessionError::Certificate(e.to_string()))?,
            )
        };
        let meta = match (&backend, opts.wa_mode) {
            (Backend::Raw(_), _) | (_, WaMode::Plain) => meta.plain(),
            (_, WaMode::Sdes) => meta.sdes(sdes_profile),
            (_, WaMode::Dtls) => meta.profiles(&opts.profiles),
        };
        let session = Session {
            ctx: Arc::new(Ctx {
                backend,
                generator,
                meta,
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

    /// The end of a mode that holds `live` calls: tear them down, count the calls the relay
    /// ended on its own as failed, take the final counters. Returns how many of `live` stayed
    /// up to the end and the relay's per-call counters.
    async fn wind_up(
        &self,
        live: Vec<LiveCall>,
        failures: &mut Vec<Failure>,
        sampler: &Arc<Mutex<Sampler>>,
        stop: oneshot::Sender<()>,
    ) -> (usize, Option<RelayCounters>) {
        let calls_ok = live.len();
        let (counters, more) = self.teardown(live).await;
        failures.extend(more);
        let ended = self.take_relay_ends();
        let calls_ok = calls_ok - ended.len().min(calls_ok);
        failures.extend(ended);
        self.finish_sampler(sampler, stop).await;
        (calls_ok, counters)
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
