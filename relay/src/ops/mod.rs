//! Running the relay as a service: metrics and health over HTTP, per-call logs and records,
//! and the SIGTERM drain.
//!
//! - [`metrics::render`]: Prometheus text from the engine's [`MetricsSnapshot`].
//! - [`http::serve`]: `/metrics`, `/healthz`, `/readyz` on the metrics listener.
//! - [`calllog::CallLog`]: one log line per call event (with `call_id`), one JSON record per
//!   ended call ([`record::CallRecord`], with a [`mos`] estimate).
//! - [`run`]: all of the above plus the gRPC control plane, until SIGTERM/SIGINT and the drain.
//!
//! [`MetricsSnapshot`]: crate::engine::snapshot::MetricsSnapshot

pub mod calllog;
pub mod hep;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod mos;
pub mod ports;
#[allow(unsafe_code)] // sysconf
pub mod process;
pub mod quality;
pub mod record;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Settings;
use crate::control::{self, ControlError};
use crate::engine::EngineHandle;

use calllog::{CallLog, CallLogConfig};
use record::RecorderLimits;

/// After the engine ended the remaining calls, how long to wait for their end events to reach
/// the call log before writing what it has.
const END_EVENTS_WAIT: Duration = Duration::from_secs(2);
/// How often the drain checks whether every call has ended on its own.
const DRAIN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the call log: {0}")]
    CallLog(std::io::Error),
    #[error("control plane: {0}")]
    Control(#[from] ControlError),
}

/// How the drain ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every call ended on its own.
    Empty,
    /// The deadline passed with calls left.
    Deadline,
    /// Another termination signal: end now.
    Signal,
}

/// Serve everything until a termination request arrives on `signals`, drain, and return.
/// The binary feeds `signals` from SIGTERM and SIGINT ([`forward_signals`]).
pub async fn run(
    engine: EngineHandle,
    settings: &Settings,
    mut signals: mpsc::Receiver<()>,
) -> Result<(), RunError> {
    let metrics_listener = TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(|source| RunError::MetricsBind {
            addr: settings.metrics_listen,
            source,
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .unwrap_or(settings.metrics_listen);
    tracing::info!(addr = %metrics_addr, "metrics and health listening (/metrics, /healthz, /readyz)");

    let engine_arc = Arc::new(engine.clone());
    let call_log = CallLog::start(
        Arc::clone(&engine_arc),
        CallLogConfig {
            dir: settings.call_log_dir.clone(),
            poll_interval: settings.call_log_poll_interval,
            limits: RecorderLimits {
                max_calls: (settings.capacity as usize).saturating_mul(2).max(1024),
                ..RecorderLimits::default()
            },
        },
    )
    .map_err(RunError::CallLog)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let http = tokio::spawn(http::serve(
        metrics_listener,
        Arc::clone(&engine_arc),
        stop_rx.clone(),
    ));

    if let Some(sink) = hep::sink() {
        use crate::api::CallControl;
        tokio::spawn(hep::export_ends(engine.subscribe(), sink, stop_rx.clone()));
    }

    let observed = Arc::new(call_log.observe(Arc::clone(&engine_arc)));
    // One drain for SIGTERM and the gRPC Drain request alike.
    let the_drain = control::Drain::spawn(
        Arc::clone(&observed),
        settings.drain_deadline,
        stop_rx.clone(),
    );
    let mut control_stop = stop_rx.clone();
    let control = control::serve_with_drain(
        observed,
        settings.control_config(),
        Some(Arc::clone(&the_drain)),
        async move {
            stopped(&mut control_stop).await;
        },
    );
    tokio::pin!(control);

    // The control plane runs through the drain (Terminate and GetCall keep working) and stops
    // after it; if it fails first (cannot bind), that is the result.
    let first = tokio::select! {
        result = &mut control => Some(result),
        _ = signals.recv() => None,
    };
    if let Some(result) = first {
        engine.shutdown();
        let _ = stop_tx.send(true);
        call_log.finish(END_EVENTS_WAIT).await;
        return result.map_err(RunError::from);
    }

    let end = tokio::select! {
        end = drain(&engine, &the_drain, settings.drain_deadline, &mut signals) => end,
        result = &mut control => {
            tracing::error!(?result, "control plane stopped during the drain");
            DrainEnd::Signal
        }
    };
    let left = engine.active_calls();
    if left > 0 {
        tracing::info!(
            ?end,
            calls = left,
            "drain over; ending the remaining calls (cause drained)"
        );
    } else {
        tracing::info!(?end, "drain over; no calls left");
    }
    // Ends whatever is left (cause drained) and stops the shards.
    engine.shutdown();
    call_log.finish(END_EVENTS_WAIT).await;
    let _ = stop_tx.send(true);
    let result = control.await;
    let _ = http.await;
    tracing::info!("relay stopped");
    result.map_err(RunError::from)
}

/// Start `the_drain` (refuse new calls: CreateCall answers UNAVAILABLE, `/readyz` 503) and
/// wait until every call has ended, the drain's deadline passed and it ended the rest, or
/// another termination request arrives (then the rest are ended at once). A drain already
/// started by a Drain request keeps its deadline if that is sooner.
pub async fn drain(
    engine: &EngineHandle,
    the_drain: &control::Drain,
    deadline: Duration,
    signals: &mut mpsc::Receiver<()>,
) -> DrainEnd {
    the_drain.start(deadline);
    tracing::info!(
        calls = engine.active_calls(),
        deadline = %humantime::format_duration(deadline),
        "termination requested: draining (no new calls; a second signal ends every call now)"
    );
    let mut check = tokio::time::interval(DRAIN_POLL);
    loop {
        tokio::select! {
            _ = the_drain.finished() => return DrainEnd::Deadline,
            _ = signals.recv() => {
                the_drain.start(Duration::ZERO);
                // The drain ends them now; the engine's shutdown would otherwise.
                let _ = tokio::time::timeout(END_EVENTS_WAIT, the_drain.finished()).await;
                return DrainEnd::Signal;
            }
            _ = check.tick() => if engine.active_calls() == 0 {
                return DrainEnd::Empty;
            },
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone). Returns `()` rather than the watch's
/// read guard, which must not live across an await in a spawned task.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Send one `()` per SIGTERM or SIGINT (needs a tokio runtime with signals enabled).
pub fn forward_signals() -> std::io::Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
