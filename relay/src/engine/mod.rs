//! Shards: one OS thread per core owning its sockets, calls and timers.
//!
//! [`Engine::start`] spawns the shards and returns an [`EngineHandle`], which implements
//! [`CallControl`] for the control plane. Call setup (SDP parsing, socket binding, answer
//! writing) runs on the caller's thread; the finished call moves to its shard through the
//! shard's command queue and never leaves it. The handle keeps the control-plane registry
//! (call IDs, per-number counts, duplicate detection) behind a mutex that no packet touches.
//!
//! Inside a shard: `shard.rs` runs the loop, `core.rs` is its sans-IO logic (calls by slot,
//! commands, events, the deadline heap of `timers.rs`), and a driver (`driver.rs`) does the
//! I/O: `uring.rs` (io_uring) or `epoll.rs` (epoll + `udp.rs`'s recvmmsg/sendmmsg).

mod core;
pub mod cpu_limit;
#[allow(unsafe_code)] // eventfd waker, socket options
mod driver;
#[cfg(test)]
mod driver_tests;
mod epoll;
pub mod heartbeat;
pub mod ratelimit;
mod registry;
mod shard;
pub mod snapshot;
mod sockets;
mod timers;
#[allow(unsafe_code)] // recvmmsg/sendmmsg, sockaddr conversions
pub mod udp;
#[allow(unsafe_code)] // io_uring submission entries point at buffers the ring reads
mod uring;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crossbeam_channel::Sender;
use tokio::sync::{broadcast, oneshot};

use crate::api::{
    ApiError, CallControl, CallCreated, CallEvent, CallEventKind, CallInfo, CreateCall, EndCause,
    InternalLegReplaced, InternalLegSpec, LegKind, ListenOp, ListenStatus, Load, RecordingOp,
    RecordingState, RecordingStatus, RefusedReason, ShardLoad,
};
use crate::call::fork::{ListenRequest, RecordRequest};
use crate::call::{Advertised, Call, CallConfig, CallSetup};
use crate::dtls::DtlsIdentity;
pub use core::NewSocket;
pub use driver::IoDriverChoice;
use driver::Waker;
pub use registry::TombstoneConfig;
use registry::{Entry, RegEntry, Registry};
use shard::{CallSockets, Command, ShardSetup};
pub use sockets::PortRange;

/// How long `get_call` waits for the end of a call that left its shard a moment ago to be
/// recorded (the shard's Ended event is on its way to the events thread).
const ENDED_IN_FLIGHT_POLL: std::time::Duration = std::time::Duration::from_millis(2);
const ENDED_IN_FLIGHT_POLLS: usize = 250;

/// How an admission refusal for load begins (`UNAVAILABLE`), so clients such as loadtest can
/// tell it from other unavailability.
pub const OVERLOADED: &str = "relay overloaded";

/// [`EngineConfig::transcode_weight`] by default, measured (BENCHMARKS.md "Voice bot and
/// G.711: codec cost"): a μ-law bot or G.711 call's codec work is 140-180 µs of CPU per 20 ms,
/// L16 185-215 µs, against ~11 µs for the two packets of a forwarded call: 14-21 forwarded
/// calls; 16 is the μ-law/G.711 middle.
pub const DEFAULT_TRANSCODE_WEIGHT: u32 = 16;

/// How the engine binds and what it advertises.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of shards (threads); 0 = one per available core.
    pub shards: usize,
    /// WhatsApp-facing bind addresses; `None` disables that family.
    pub whatsapp_bind_v4: Option<IpAddr>,
    pub whatsapp_bind_v6: Option<IpAddr>,
    pub internal_bind: IpAddr,
    /// Addresses written into SDP; default to the bind addresses.
    pub advertised: Advertised,
    /// Media ports come from this range; `None` lets the OS pick.
    pub ports: Option<PortRange>,
    pub max_calls_per_number: u32,
    /// Calls this relay admits in total, counted in forwarded calls: a transcoded call (a
    /// voice-bot leg) counts as `transcode_weight` of them.
    pub capacity: u32,
    /// What one transcoded call costs in forwarded calls' CPU: Opus decode and encode every
    /// 20 ms against two forwarded packets (BENCHMARKS.md "Voice bot and G.711: codec cost").
    /// Admission (`capacity`) and shard choice count a transcoded call this many times.
    pub transcode_weight: u32,
    /// New calls go only to shards that spent less than this share of the last second working
    /// (0..1; 1.0 turns the check off). When every shard is this busy, creates are refused
    /// with UNAVAILABLE and /readyz turns 503, so the calls already up keep their core.
    pub max_shard_busy: f64,
    /// The CPU the process may use, in cores: `None` reads it from the process's cgroup (CFS
    /// quota: a Kubernetes `limits.cpu`) at start and every 10 s; `Some` fixes it (tests, or
    /// where the cgroup is not visible). Under a limit each shard's busy share counts its run
    /// time against its part of the limit (at most a core), so `max_shard_busy` refuses at
    /// that share of what the quota allows (`snapshot::busy_share`).
    pub cpu_limit_cores: Option<f64>,
    pub call: CallConfig,
    /// Per-source budget for datagrams from addresses no call knows yet.
    pub rate_limit: ratelimit::RateLimitConfig,
    /// The shards' I/O driver (io_uring where allowed, else epoll; see `driver`).
    pub io_driver: IoDriverChoice,
    /// Once a leg's peer is fixed, give its socket a connected twin (`SO_REUSEPORT` on every
    /// media socket; see `ShardIo::connect_twin`): the peer's datagrams arrive and leave on a
    /// socket `connect`ed to it, with no route lookup per send. `RELAY_CONNECT_TWINS=0` turns
    /// it off for engines built from defaults (tests, benchmarks).
    pub connect_twins: bool,
    /// How long and how many ended call IDs are remembered (see [`TombstoneConfig`]).
    pub tombstones: TombstoneConfig,
    /// A shard whose loop has not turned for this long makes `/healthz` fail.
    pub shard_stall_timeout: std::time::Duration,
    /// Call recording (off unless `recording_dir` is set).
    pub recording: crate::record::RecordingConfig,
    /// Voice-bot legs: extra CA roots for `wss://`, the connect timeout.
    pub bot: crate::bot::BotConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let v4: IpAddr = "127.0.0.1".parse().expect("literal");
        let v6: IpAddr = "::1".parse().expect("literal");
        EngineConfig {
            shards: 0,
            whatsapp_bind_v4: Some(v4),
            whatsapp_bind_v6: Some(v6),
            internal_bind: v4,
            advertised: Advertised {
                wa_v4: Some(v4),
                wa_v6: Some(v6),
                internal: v4,
            },
            ports: None,
            max_calls_per_number: 1000,
            capacity: 10_000,
            transcode_weight: DEFAULT_TRANSCODE_WEIGHT,
            max_shard_busy: 0.9,
            cpu_limit_cores: None,
            call: CallConfig::default(),
            rate_limit: ratelimit::RateLimitConfig::default(),
            // RELAY_IO_DRIVER picks the driver for engines built from defaults too, so the
            // test suites run against both (scripts/test.sh runs them with `epoll`).
            io_driver: std::env::var("RELAY_IO_DRIVER")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            connect_twins: std::env::var("RELAY_CONNECT_TWINS").map_or(true, |v| v != "0"),
            tombstones: TombstoneConfig::default(),
            shard_stall_timeout: std::time::Duration::from_secs(10),
            recording: Default::default(),
            bot: Default::default(),
        }
    }
}

/// Counters a shard publishes for the control plane (relaxed atomics, written by the shard).
#[derive(Default, Debug)]
pub struct ShardStats {
    pub calls: AtomicUsize,
    /// Of `calls`, those whose codec work runs on this shard (a voice-bot leg): each costs
    /// [`EngineConfig::transcode_weight`] forwarded calls' CPU (see [`EngineHandle::load`]).
    pub transcoding: AtomicUsize,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub send_errors: AtomicU64,
    pub recv_errors: AtomicU64,
    /// Datagrams from unknown sources dropped by the per-source limiter (both legs).
    pub rate_limited: AtomicU64,
    /// I/O system calls made by the shard's driver, by [`IO_SYSCALLS`] kind.
    pub io_syscalls: [AtomicU64; IO_SYSCALLS.len()],
    /// Loop turns so far: the heartbeat `/healthz` watches ([`heartbeat::HeartbeatWatch`]).
    pub turns: AtomicU64,
}

/// The I/O system calls a shard counts (`relay_io_syscalls_total{kind}`), indexed by
/// [`IoSyscall`]. Each driver uses its own: epoll the first four, io_uring the last.
pub const IO_SYSCALLS: [&str; 5] = [
    "epoll_wait",
    "recvmmsg",
    "sendmmsg",
    "eventfd_read",
    "io_uring_enter",
];

/// The io_uring driver's pools running out (`relay_io_pressure_total{kind}`): sends dropped
/// because every send slot was in flight, and multishot receives stopped because the provided
/// buffer ring was empty (re-armed; the datagrams wait in their sockets).
pub const IO_PRESSURE: [&str; 2] = ["send_slots_full", "recv_ring_dry"];

/// An index into [`IO_SYSCALLS`].
#[derive(Copy, Clone, Debug)]
pub enum IoSyscall {
    EpollWait = 0,
    Recvmmsg = 1,
    Sendmmsg = 2,
    EventfdRead = 3,
    IoUringEnter = 4,
}

struct ShardHandle {
    commands: Sender<Command>,
    waker: Waker,
    stats: Arc<ShardStats>,
    totals: Arc<Mutex<snapshot::ShardTotals>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The I/O driver this shard runs ("io_uring" or "epoll").
    driver: &'static str,
}

impl ShardHandle {
    fn send(&self, cmd: Command) -> Result<(), ApiError> {
        self.commands
            .send(cmd)
            .map_err(|_| ApiError::Unavailable("shard stopped".into()))?;
        self.waker
            .wake()
            .map_err(|e| ApiError::Internal(format!("waking shard: {e}")))
    }
}

struct Inner {
    cfg: EngineConfig,
    identity: Arc<DtlsIdentity>,
    shards: Vec<ShardHandle>,
    registry: Mutex<Registry>,
    events: broadcast::Sender<CallEvent>,
    ports: sockets::PortAllocator,
    next_shard: AtomicUsize,
    /// `cfg.capacity` and `cfg.max_shard_busy` (in 1/1000), changeable at run time
    /// ([`CallControl::set_limits`]).
    capacity: AtomicU32,
    busy_permille: AtomicU32,
    /// The process's CPU limit as last read (the shards hold the same `Arc`).
    cpu: Arc<cpu_limit::CpuBudget>,
    /// CreateCalls refused, by [`RefusedReason::index`].
    refused: [AtomicU64; RefusedReason::ALL.len()],
    /// Probes' view of the shards' heartbeats (taken by probes only, never by a packet).
    heartbeats: Mutex<heartbeat::HeartbeatWatch>,
    /// The disk writer for recordings, when a recording directory is configured.
    recorder: Option<Arc<crate::record::Recorder>>,
    /// Opens voice bots' WebSockets (`InternalKind::WebSocket`).
    bots: crate::bot::BotConnector,
}

/// The control plane's handle on the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

pub struct Engine;

impl Engine {
    /// Spawn the shards. Call `EngineHandle::shutdown` to stop them.
    pub fn start(cfg: EngineConfig) -> std::io::Result<EngineHandle> {
        let identity =
            Arc::new(DtlsIdentity::generate().map_err(|e| std::io::Error::other(e.to_string()))?);
        let n = if cfg.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.shards
        };
        let (events_tx, events_rx) = crossbeam_channel::unbounded::<CallEvent>();
        let fixed_limit = cfg.cpu_limit_cores.filter(|c| c.is_finite() && *c > 0.0);
        let limit = fixed_limit.or_else(cpu_limit::read_cpu_limit);
        let cpu = Arc::new(cpu_limit::CpuBudget::new(limit, n));
        match limit {
            Some(cores) => tracing::info!(
                cpu_limit_cores = cores,
                shards = n,
                shard_share = cpu.shard_share(),
                source = if fixed_limit.is_some() {
                    "configured"
                } else {
                    "cgroup"
                },
                "CPU limit: admission counts each shard's run time against its part of it"
            ),
            None => tracing::info!(shards = n, "no CPU limit (cgroup CFS quota) found"),
        }
        let mut shards = Vec::with_capacity(n);
        for id in 0..n {
            let waker = Waker::new()?;
            let (tx, rx) = crossbeam_channel::unbounded();
            let stats = Arc::new(ShardStats::default());
            let totals = Arc::new(Mutex::new(snapshot::ShardTotals::new(id as u32)));
            let setup = ShardSetup {
                id,
                driver: cfg.io_driver,
                connect_twins: cfg.connect_twins,
                waker: waker.clone(),
                commands: rx,
                events_out: events_tx.clone(),
                stats: stats.clone(),
                published: totals.clone(),
                rate_limit: cfg.rate_limit,
                cpu: cpu.clone(),
            };
            // The shard opens its driver on its own thread and says which one it got.
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("relay-shard-{id}"))
                .spawn(move || shard::run(setup, started_tx))?;
            let driver = started_rx
                .recv()
                .map_err(|_| std::io::Error::other(format!("shard {id} died while starting")))??;
            shards.push(ShardHandle {
                commands: tx,
                waker,
                stats,
                totals,
                thread: Some(thread),
                driver,
            });
        }
        if let Some(first) = shards.first() {
            tracing::info!(
                io_driver = first.driver,
                requested = %cfg.io_driver,
                shards = n,
                "engine I/O driver"
            );
        }
        let (bcast, _) = broadcast::channel(4096);
        let recorder = match cfg.recording.dir {
            Some(_) => Some(crate::record::Recorder::start(cfg.recording.clone())?),
            None => None,
        };
        let inner = Arc::new(Inner {
            bots: crate::bot::BotConnector::new(cfg.bot.clone()),
            recorder,
            ports: sockets::PortAllocator::new(cfg.ports),
            capacity: AtomicU32::new(cfg.capacity),
            busy_permille: AtomicU32::new(
                (cfg.max_shard_busy.clamp(0.0, 1.0) * 1000.0).round() as u32
            ),
            identity,
            shards,
            cpu: cpu.clone(),
            registry: Mutex::new(Registry::new(cfg.tombstones)),
            events: bcast,
            next_shard: AtomicUsize::new(0),
            refused: Default::default(),
            heartbeats: Mutex::default(),
            cfg,
        });
        // Shard events → registry bookkeeping + broadcast to watchers. A plain thread so the
        // engine works without a tokio runtime.
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("relay-events".into())
            .spawn(move || {
                for ev in events_rx {
                    let Some(inner) = weak.upgrade() else { return };
                    if let CallEventKind::Ended { stats, .. } = &ev.kind {
                        lock(&inner.registry).end(&ev.call_id, Some(stats.clone()), Instant::now());
                    }
                    let _ = inner.events.send(ev);
                }
            })?;
        if fixed_limit.is_none() {
            // The quota can change under a running pod (in-place resize): read it again now
            // and then, off the shards' threads. Stops with the engine.
            let weak = Arc::downgrade(&cpu);
            drop(cpu);
            std::thread::Builder::new()
                .name("relay-cpu-limit".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(cpu_limit::REFRESH_EVERY);
                        let Some(cpu) = weak.upgrade() else { return };
                        let limit = cpu_limit::read_cpu_limit();
                        if cpu.set(limit) {
                            tracing::info!(
                                cpu_limit_cores = limit.unwrap_or(f64::NAN),
                                shard_share = cpu.shard_share(),
                                "CPU limit changed"
                            );
                        }
                    }
                })?;
        }
        Ok(EngineHandle { inner })
    }
}

fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    // A panic while holding the registry would be a bug; keep serving rather than cascade.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EngineHandle {
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The I/O driver the shards run: "io_uring" or "epoll" ("mixed" if an `auto` start got
    /// io_uring on some shards only).
    pub fn io_driver(&self) -> &'static str {
        let mut drivers = self.inner.shards.iter().map(|s| s.driver);
        let first = drivers.next().unwrap_or("none");
        if drivers.all(|d| d == first) {
            first
        } else {
            "mixed"
        }
    }

    pub fn identity(&self) -> &Arc<DtlsIdentity> {
        &self.inner.identity
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub fn active_calls(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.stats.calls.load(Ordering::Relaxed))
            .sum()
    }

    pub fn shard_stats(&self) -> Vec<Arc<ShardStats>> {
        self.inner.shards.iter().map(|s| s.stats.clone()).collect()
    }

    /// Engine-wide counters as of each shard's last publish (at most 1 s old).
    pub fn metrics_snapshot(&self) -> snapshot::MetricsSnapshot {
        let draining = lock(&self.inner.registry).draining;
        snapshot::MetricsSnapshot {
            io_driver: self.io_driver(),
            active_calls: self.active_calls() as u64,
            capacity: self.capacity() as u64,
            draining,
            max_shard_busy: self.max_shard_busy(),
            cpu_limit_cores: self.cpu_limit_cores(),
            shards: self
                .inner
                .shards
                .iter()
                .map(|s| s.totals.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .collect(),
            refused: self.refused_calls(),
            recording: self
                .inner
                .recorder
                .as_ref()
                .map(|r| snapshot::RecordingTotals::from(r.stats())),
        }
    }

    /// Calls admitted in total (the configured capacity unless changed at run time).
    pub fn capacity(&self) -> u32 {
        self.inner.capacity.load(Ordering::Relaxed)
    }

    /// The shard busy share (0..1) over which new calls are refused.
    pub fn max_shard_busy(&self) -> f64 {
        f64::from(self.inner.busy_permille.load(Ordering::Relaxed)) / 1000.0
    }

    /// The process's CPU limit in cores as last read (`None`: no quota), which each shard's
    /// busy share is counted against.
    pub fn cpu_limit_cores(&self) -> Option<f64> {
        self.inner.cpu.limit()
    }

    /// Shards whose loop has not turned for `shard_stall_timeout` (stuck, or their thread
    /// died), as of now. Empty when all is well.
    pub fn stalled_shards(&self) -> Vec<heartbeat::Stalled> {
        let turns = self
            .inner
            .shards
            .iter()
            .map(|s| s.stats.turns.load(Ordering::Relaxed));
        self.inner
            .heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(turns, Instant::now(), self.inner.cfg.shard_stall_timeout)
    }

    /// Is the relay refusing new calls?
    pub fn is_draining(&self) -> bool {
        lock(&self.inner.registry).draining
    }

    /// Stop admitting new calls.
    pub fn set_draining(&self, draining: bool) {
        lock(&self.inner.registry).draining = draining;
    }

    /// End every call (cause `Drained`) and stop the shard threads.
    pub fn shutdown(&self) {
        for s in &self.inner.shards {
            let _ = s.send(Command::Stop);
        }
        if let Some(recorder) = &self.inner.recorder {
            // The shards end their calls, which closes their recordings; give them a moment,
            // then let the writer finish every file before the process exits.
            let deadline = Instant::now() + std::time::Duration::from_secs(2);
            while self.active_calls() > 0 && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            recorder.shutdown();
        }
    }

    /// Wait for shard threads to exit (after `shutdown`).
    pub fn join(&mut self) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            for s in &mut inner.shards {
                if let Some(t) = s.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }

    /// The shard for a new call: the one with fewest calls among those not over the busy
    /// limit, ties broken round-robin. `Unavailable` when every shard is over it.
    /// Shard `i`'s calls counted by cost: a transcoded call as `transcode_weight` calls.
    fn shard_load(&self, i: usize) -> u64 {
        let s = &self.inner.shards[i].stats;
        let extra = u64::from(self.inner.cfg.transcode_weight.saturating_sub(1));
        s.calls.load(Ordering::Relaxed) as u64
            + extra * s.transcoding.load(Ordering::Relaxed) as u64
    }

    /// The relay's load in forwarded calls, as admission counts it against `capacity`: every
    /// call (live or being set up) once, plus `transcode_weight - 1` more for each that
    /// transcodes on its shard.
    fn load(&self, calls: usize) -> u64 {
        let extra = u64::from(self.inner.cfg.transcode_weight.saturating_sub(1));
        let transcoding: u64 = (self.inner.shards.iter())
            .map(|s| s.stats.transcoding.load(Ordering::Relaxed) as u64)
            .sum();
        calls as u64 + extra * transcoding
    }

    fn pick_shard(&self) -> Result<usize, ApiError> {
        let limit = self.max_shard_busy();
        let call_pps = snapshot::nominal_call_pps(self.inner.cfg.call.ptime);
        // Each shard's busy share with its calls' media flowing and this call added: the
        // measured share trails admission by a second or more (snapshot::projected_busy).
        let busy: Vec<f64> = self
            .inner
            .shards
            .iter()
            .map(|s| {
                let t = s.totals.lock().unwrap_or_else(|p| p.into_inner());
                // (t.turn_lateness_p99 is not read here: as a refusal rule, 20 ms p99 while at
                // least half busy, it did not fire before loss in BENCHMARKS.md's quota runs.)
                snapshot::projected_busy(
                    t.busy_ratio,
                    t.packets_per_second,
                    t.calls,
                    s.stats.calls.load(Ordering::Relaxed) as u64,
                    call_pps,
                )
            })
            .collect();
        if snapshot::overloaded(busy.iter().copied(), limit) {
            let least = busy.iter().copied().fold(f64::INFINITY, f64::min);
            let of = match self.inner.cpu.limit() {
                Some(c) => format!(
                    "of its {:.2} core (CPU limit {c:.2} cores)",
                    self.inner.cpu.shard_share()
                ),
                None => "of a second".into(),
            };
            return Err(ApiError::Unavailable(format!(
                "{OVERLOADED}: the least busy shard would work {:.0}% {of} with its calls and \
                 this one (limit {:.0}%)",
                least * 100.0,
                limit * 100.0
            )));
        }
        let start = self.inner.next_shard.fetch_add(1, Ordering::Relaxed);
        let n = self.inner.shards.len();
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| limit >= 1.0 || busy.get(i).is_some_and(|b| *b < limit))
            .min_by_key(|&i| self.shard_load(i))
            .ok_or_else(|| ApiError::Unavailable("no engine shard".into()))
    }

    fn shard_of(&self, call_id: &str) -> Result<usize, ApiError> {
        match lock(&self.inner.registry)
            .calls
            .get(call_id)
            .map(|e| &e.entry)
        {
            Some(Entry::Live { shard, .. }) => Ok(*shard),
            Some(Entry::Creating { .. }) => Err(ApiError::Unavailable(format!(
                "call {call_id} is being created; retry"
            ))),
            None => Err(ApiError::NotFound(call_id.to_string())),
        }
    }

    /// Count a refused CreateCall and pass its error on.
    fn refuse(&self, reason: RefusedReason, e: ApiError) -> ApiError {
        self.count_refused(reason);
        e
    }

    /// CreateCalls refused so far, by reason (in [`RefusedReason::ALL`] order).
    pub fn refused_calls(&self) -> [u64; RefusedReason::ALL.len()] {
        std::array::from_fn(|i| self.inner.refused[i].load(Ordering::Relaxed))
    }

    /// Tombstones held now (ended call IDs still remembered).
    pub fn tombstones(&self) -> usize {
        let mut reg = lock(&self.inner.registry);
        reg.tombstones.expire(Instant::now());
        reg.tombstones.len()
    }

    async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.inner.shards[shard].send(make(tx))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("shard stopped".into()))
    }

    /// Give the live call `call_id` one more media socket (a supervisor's leg needs a port of
    /// its own) and run `f` on its shard with the call, the socket's id and its address. The
    /// socket is bound here, on the internal address from the media port pool; if `f` fails
    /// (or the call is gone) it is closed again and the error returned. The call gives it back
    /// with [`Call::release_socket`]; it closes with the call in any case.
    pub async fn with_new_socket<T: Send + 'static>(
        &self,
        call_id: String,
        f: impl FnOnce(NewSocket<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let shard = self.shard_of(&call_id)?;
        let socket = sockets::bind_extra(&self.inner.cfg, &self.inner.ports)
            .map_err(|e| ApiError::Unavailable(format!("binding a media socket: {e}")))?;
        self.ask(shard, |reply| Command::WithNewSocket {
            call_id,
            socket,
            run: Box::new(move |ctx| {
                let r = ctx.and_then(f);
                let kept = r.is_ok();
                let _ = reply.send(r);
                kept
            }),
        })
        .await?
    }

    /// Admission and idempotency. Returns `Some(existing)` for a repeated create.
    fn admit(&self, req: &CreateCall) -> Result<Option<CallCreated>, ApiError> {
        let mut reg = lock(&self.inner.registry);
        if let Some(e) = reg.calls.get(&req.call_id) {
            return match &e.entry {
                Entry::Live { created, .. } => Ok(Some(created.clone())),
                Entry::Creating { .. } => Err(self.refuse(
                    RefusedReason::Duplicate,
                    ApiError::Unavailable(format!("call {} is being created; retry", req.call_id)),
                )),
            };
        }
        if reg.tombstones.get(&req.call_id, Instant::now()).is_some() {
            return Err(self.refuse(
                RefusedReason::Terminated,
                ApiError::Terminated(req.call_id.clone()),
            ));
        }
        if reg.draining {
            return Err(self.refuse(
                RefusedReason::Draining,
                ApiError::Unavailable("relay is draining; create the call on another relay".into()),
            ));
        }
        let capacity = self.capacity();
        // A transcoded call costs `transcode_weight` forwarded calls (a voice bot: decided
        // here; a G.711 media server: counted once its answer makes the leg transcode).
        let weight = match req.internal.kind {
            crate::api::InternalKind::WebSocket(_) => {
                u64::from(self.inner.cfg.transcode_weight.max(1))
            }
            _ => 1,
        };
        if self.load(reg.calls.len()) + weight > u64::from(capacity) {
            return Err(self.refuse(
                RefusedReason::Capacity,
                ApiError::Unavailable(format!(
                    "relay at capacity ({capacity} calls; a transcoded call counts as {})",
                    self.inner.cfg.transcode_weight
                )),
            ));
        }
        let limit = self.inner.cfg.max_calls_per_number;
        if reg
            .per_number
            .get(&req.business_number)
            .copied()
            .unwrap_or(0)
            >= limit
        {
            return Err(self.refuse(
                RefusedReason::PerNumberLimit,
                ApiError::CallLimit {
                    number: req.business_number.clone(),
                    limit,
                },
            ));
        }
        let pair = (req.business_number.clone(), req.consumer.clone());
        if !req.consumer.is_empty()
            && let Some(existing) = reg.pairs.get(&pair)
        {
            return Err(self.refuse(
                RefusedReason::Duplicate,
                ApiError::DuplicateCall {
                    number: req.business_number.clone(),
                    consumer: req.consumer.clone(),
                    existing: existing.clone(),
                },
            ));
        }
        *reg.per_number
            .entry(req.business_number.clone())
            .or_insert(0) += 1;
        if !req.consumer.is_empty() {
            reg.pairs.insert(pair, req.call_id.clone());
        }
        reg.calls.insert(
            req.call_id.clone(),
            RegEntry {
                entry: Entry::Creating { terminated: false },
                business_number: req.business_number.clone(),
                consumer: req.consumer.clone(),
                last_replace: None,
            },
        );
        Ok(None)
    }

    /// A bot leg's WebSocket, connected before the call (or the replacement) is made, so an
    /// unreachable bot fails the request and changes nothing.
    async fn connect_bot(
        &self,
        spec: &InternalLegSpec,
        call_id: &str,
        business_number: &str,
    ) -> Result<Option<crate::bot::client::BotAttach>, ApiError> {
        match &spec.kind {
            crate::api::InternalKind::WebSocket(target) => Ok(Some(
                self.inner
                    .bots
                    .connect(target, call_id, business_number)
                    .await?,
            )),
            _ => Ok(None),
        }
    }

    async fn create_inner(&self, req: &CreateCall) -> Result<CallCreated, ApiError> {
        let cfg = &self.inner.cfg;
        let bot = self
            .connect_bot(&req.internal, &req.call_id, &req.business_number)
            .await?;
        let shard = self
            .pick_shard()
            .map_err(|e| self.refuse(RefusedReason::Overloaded, e))?;
        let bound = sockets::bind_call(cfg, &self.inner.ports).map_err(|e| {
            self.refuse(
                RefusedReason::Capacity,
                ApiError::Unavailable(format!("binding media sockets: {e}")),
            )
        })?;
        let created = Call::create(
            CallSetup {
                req,
                sockets: bound.addrs,
                advertised: cfg.advertised,
                identity: self.inner.identity.clone(),
                cfg: cfg.call.clone(),
            },
            Instant::now(),
            SystemTime::now(),
        )
        .map_err(|e| match ApiError::from(e) {
            e @ ApiError::InvalidArgument(_) => self.refuse(RefusedReason::InvalidRequest, e),
            e => e,
        })?;
        let out = CallCreated {
            call_id: req.call_id.clone(),
            whatsapp_sdp: created.whatsapp_sdp,
            internal_sdp: created.internal_sdp,
            shard: shard as u32,
        };
        let mut call = Box::new(created.call);
        if let Some(bot) = bot {
            call.attach_bot(bot, Instant::now())?;
        }
        self.ask(shard, |reply| Command::Insert {
            call,
            sockets: CallSockets {
                sockets: bound.sockets,
            },
            reply,
        })
        .await?;
        Ok(out)
    }
}

/// A `&mut dyn Outbox` where a sized one is wanted.
struct DynOutbox<'a>(&'a mut dyn crate::net::Outbox);

impl crate::net::Outbox for DynOutbox<'_> {
    fn push(&mut self, via: crate::net::SocketRef, to: std::net::SocketAddr, data: &[u8]) {
        self.0.push(via, to, data);
    }
}

impl CallControl for EngineHandle {
    async fn create_call(&self, req: CreateCall) -> Result<CallCreated, ApiError> {
        if req.call_id.is_empty() {
            return Err(self.refuse(
                RefusedReason::InvalidRequest,
                ApiError::InvalidArgument("call_id is empty".into()),
            ));
        }
        if let Some(existing) = self.admit(&req)? {
            return Ok(existing);
        }
        let created = match self.create_inner(&req).await {
            Ok(created) => created,
            Err(e) => {
                // A Terminate that arrived meanwhile already left the tombstone.
                lock(&self.inner.registry).forget(&req.call_id);
                return Err(e);
            }
        };
        {
            let mut reg = lock(&self.inner.registry);
            match reg.calls.get_mut(&req.call_id) {
                Some(e) if matches!(e.entry, Entry::Creating { terminated: false }) => {
                    e.entry = Entry::Live {
                        shard: created.shard as usize,
                        created: created.clone(),
                    };
                    return Ok(created);
                }
                // Terminated while it was being set up: end it below, outside the lock.
                Some(_) => {}
                // It already ended on its shard (and left its tombstone).
                None => return Ok(created),
            }
        }
        let info = self
            .ask(created.shard as usize, |reply| Command::Terminate {
                call_id: req.call_id.clone(),
                cause: EndCause::Terminated,
                reply,
            })
            .await;
        lock(&self.inner.registry).end(
            &req.call_id,
            info.ok().flatten().map(Box::new),
            Instant::now(),
        );
        Err(self.refuse(RefusedReason::Terminated, ApiError::Terminated(req.call_id)))
    }

    async fn set_remote_description(
        &self,
        call_id: String,
        leg: LegKind,
        sdp: String,
    ) -> Result<CallInfo, ApiError> {
        let shard = self.shard_of(&call_id)?;
        self.ask(shard, |reply| Command::SetRemote {
            call_id,
            leg,
            sdp,
            reply,
        })
        .await?
    }

    async fn open_gate(&self, call_id: String) -> Result<CallInfo, ApiError> {
        let shard = self.shard_of(&call_id)?;
        self.ask(shard, |reply| Command::OpenGate { call_id, reply })
            .await?
    }

    async fn replace_internal_leg(
        &self,
        call_id: String,
        spec: InternalLegSpec,
    ) -> Result<InternalLegReplaced, ApiError> {
        let shard = self.shard_of(&call_id)?;
        // A retry of the last replacement (same peer SDP) gets the same answer, not a third leg.
        let repeat = lock(&self.inner.registry)
            .calls
            .get(&call_id)
            .and_then(|e| e.last_replace.as_ref())
            .filter(|(last, _)| spec.remote_sdp.is_some() && *last == spec)
            .map(|(_, sdp)| sdp.clone());
        if let Some(internal_sdp) = repeat {
            let call = self.get_call(call_id).await?;
            return Ok(InternalLegReplaced { internal_sdp, call });
        }
        let advertised = self.inner.cfg.advertised;
        let business_number = lock(&self.inner.registry)
            .calls
            .get(&call_id)
            .map(|e| e.business_number.clone())
            .unwrap_or_default();
        let bot = self.connect_bot(&spec, &call_id, &business_number).await?;
        let replaced = self
            .ask(shard, |reply| Command::ReplaceInternal {
                call_id: call_id.clone(),
                spec: spec.clone(),
                advertised,
                bot,
                reply,
            })
            .await??;
        let mut reg = lock(&self.inner.registry);
        if let Some(e) = reg.calls.get_mut(&call_id) {
            e.last_replace = Some((spec, replaced.internal_sdp.clone()));
            // A repeated CreateCall now hands out the current internal SDP.
            if let Entry::Live { created, .. } = &mut e.entry {
                created.internal_sdp = replaced.internal_sdp.clone();
            }
        }
        Ok(replaced)
    }

    async fn recording(
        &self,
        call_id: String,
        op: RecordingOp,
    ) -> Result<Option<RecordingStatus>, ApiError> {
        let shard = self.shard_of(&call_id)?;
        let ask = |req| {
            let call_id = call_id.clone();
            self.ask(shard, move |reply| Command::Record {
                call_id,
                req,
                reply,
            })
        };
        let req = match op {
            RecordingOp::Stop => RecordRequest::Stop,
            RecordingOp::Pause => RecordRequest::Pause,
            RecordingOp::Resume => RecordRequest::Resume,
            RecordingOp::Start => {
                let recorder = self.inner.recorder.clone().ok_or_else(|| {
                    ApiError::FailedPrecondition(
                        "recording is not configured on this relay (set recording_dir / \
                         --recording-dir)"
                            .into(),
                    )
                })?;
                // Already recorded: answer with the running recording, create nothing.
                if let Some(s) = ask(RecordRequest::Status).await??
                    && s.state != RecordingState::Stopped
                {
                    return Ok(Some(s));
                }
                let (business, consumer) = {
                    let reg = lock(&self.inner.registry);
                    let e = reg
                        .calls
                        .get(&call_id)
                        .ok_or_else(|| ApiError::NotFound(call_id.clone()))?;
                    (e.business_number.clone(), e.consumer.clone())
                };
                let (id, r) = (call_id.clone(), recorder.clone());
                let open = tokio::task::spawn_blocking(move || {
                    r.create(&id, &business, &consumer, SystemTime::now())
                })
                .await
                .map_err(|e| ApiError::Internal(format!("creating recording files: {e}")))??;
                let files = open.files.clone();
                let result = ask(RecordRequest::Start {
                    open: Box::new(open),
                    link: recorder.link().clone(),
                })
                .await
                .and_then(|r| r);
                // Another start won the race (or the call is gone): these files are unused.
                if !matches!(&result, Ok(Some(s)) if s.files == files) {
                    files.remove();
                }
                return result;
            }
        };
        ask(req).await?
    }

    async fn listen(
        &self,
        call_id: String,
        op: ListenOp,
    ) -> Result<Option<ListenStatus>, ApiError> {
        let (offer_sdp, mode) = match op {
            ListenOp::Stop => {
                let shard = self.shard_of(&call_id)?;
                return self
                    .ask(shard, |reply| Command::Listen {
                        call_id,
                        req: ListenRequest::Stop,
                        reply,
                    })
                    .await?;
            }
            ListenOp::Start { offer_sdp, mode } => (offer_sdp, mode),
        };
        // The fork's own port, from the media pool, on the internal address; the call gives
        // it back when the listen-in stops (or a repeated offer leaves it unused).
        let advertised = self.inner.cfg.advertised.internal;
        self.with_new_socket(call_id, move |ns: NewSocket<'_>| {
            let id = ns.id;
            let status = ns.call.listen(
                ListenRequest::Start {
                    offer_sdp,
                    mode,
                    socket: id,
                    local: ns.local,
                    advertised: std::net::SocketAddr::new(advertised, ns.local.port()),
                },
                ns.now,
                &mut DynOutbox(ns.out),
            )?;
            if ns.call.listen_socket() != Some(id) {
                ns.call.release_socket(id);
            }
            Ok(status)
        })
        .await
    }

    async fn terminate(
        &self,
        call_id: String,
        _reason: String,
    ) -> Result<Option<CallInfo>, ApiError> {
        let shard = {
            let mut reg = lock(&self.inner.registry);
            match reg.calls.get_mut(&call_id).map(|e| &mut e.entry) {
                Some(Entry::Live { shard, .. }) => *shard,
                // The create in flight ends the call as soon as it exists.
                Some(Entry::Creating { terminated }) => {
                    *terminated = true;
                    reg.tombstones.insert(&call_id, None, Instant::now());
                    return Ok(None);
                }
                // Unknown (the terminate webhook overtook the connect) or already ended:
                // success, and the ID stays refused for the tombstone's lifetime.
                None => {
                    reg.tombstones.insert(&call_id, None, Instant::now());
                    return Ok(None);
                }
            }
        };
        let info = self
            .ask(shard, |reply| Command::Terminate {
                call_id: call_id.clone(),
                cause: EndCause::Terminated,
                reply,
            })
            .await?;
        lock(&self.inner.registry).end(&call_id, info.clone().map(Box::new), Instant::now());
        Ok(info)
    }

    async fn get_call(&self, call_id: String) -> Result<CallInfo, ApiError> {
        if let Ok(shard) = self.shard_of(&call_id) {
            let live = self
                .ask(shard, |reply| Command::Get {
                    call_id: call_id.clone(),
                    reply,
                })
                .await?;
            if let Some(info) = live {
                return Ok(info);
            }
        }
        // Ended (maybe just now): its final state while the tombstone lives. The shard removes
        // a call before the events thread records its end, so a call the shard no longer has
        // but the registry still lists ended a moment ago: wait (bounded) for its tombstone
        // rather than answer NOT_FOUND for a call that existed.
        for _ in 0..ENDED_IN_FLIGHT_POLLS {
            {
                let reg = lock(&self.inner.registry);
                match reg.calls.get(&call_id).map(|e| &e.entry) {
                    Some(Entry::Creating { .. }) => {
                        return Err(ApiError::Unavailable(format!(
                            "call {call_id} is being created; retry"
                        )));
                    }
                    Some(Entry::Live { .. }) => {}
                    None => {
                        return reg
                            .tombstones
                            .get(&call_id, Instant::now())
                            .and_then(|t| t.info.as_deref().cloned())
                            .ok_or(ApiError::NotFound(call_id));
                    }
                }
            }
            tokio::time::sleep(ENDED_IN_FLIGHT_POLL).await;
        }
        Err(ApiError::Unavailable(format!(
            "call {call_id} is ending; retry"
        )))
    }

    async fn list_calls(&self) -> Result<Vec<CallInfo>, ApiError> {
        let mut all = Vec::new();
        for shard in 0..self.inner.shards.len() {
            all.extend(self.ask(shard, |reply| Command::List { reply }).await?);
        }
        Ok(all)
    }

    async fn load(&self) -> Result<Load, ApiError> {
        let draining = lock(&self.inner.registry).draining;
        Ok(Load {
            io_driver: self.io_driver().to_string(),
            cpu_limit_cores: self.cpu_limit_cores(),
            active_calls: self.active_calls() as u32,
            capacity: self.capacity(),
            draining,
            shards: self
                .inner
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let t = s.totals.lock().unwrap_or_else(|p| p.into_inner());
                    ShardLoad {
                        shard: i as u32,
                        calls: s.stats.calls.load(Ordering::Relaxed) as u32,
                        packets_per_second: t.packets_per_second,
                        busy_ratio: t.busy_ratio,
                    }
                })
                .collect(),
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.inner.events.subscribe()
    }

    fn set_limits(
        &self,
        capacity: Option<u32>,
        busy_percent: Option<u32>,
    ) -> Result<crate::api::Limits, ApiError> {
        if capacity == Some(0) {
            return Err(ApiError::InvalidArgument(
                "capacity must be at least 1".into(),
            ));
        }
        if busy_percent.is_some_and(|p| !(1..=100).contains(&p)) {
            return Err(ApiError::InvalidArgument(
                "max_shard_busy_percent must be 1..=100 (100: never refuse for load)".into(),
            ));
        }
        if let Some(c) = capacity {
            self.inner.capacity.store(c, Ordering::Relaxed);
        }
        if let Some(p) = busy_percent {
            self.inner.busy_permille.store(p * 10, Ordering::Relaxed);
        }
        let limits = crate::api::Limits {
            capacity: self.capacity(),
            max_shard_busy_percent: (self.max_shard_busy() * 100.0).round() as u32,
        };
        tracing::info!(
            capacity = limits.capacity,
            max_shard_busy_percent = limits.max_shard_busy_percent,
            "admission limits in force"
        );
        Ok(limits)
    }

    fn set_draining(&self, draining: bool) {
        EngineHandle::set_draining(self, draining);
    }

    fn count_refused(&self, reason: RefusedReason) {
        if let Some(n) = self.inner.refused.get(reason.index()) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn end_all_drained(&self) -> Result<usize, ApiError> {
        let mut n = 0;
        for shard in 0..self.inner.shards.len() {
            n += self
                .ask(shard, |reply| Command::EndAll {
                    cause: EndCause::Drained,
                    reply,
                })
                .await?;
        }
        Ok(n)
    }
}
