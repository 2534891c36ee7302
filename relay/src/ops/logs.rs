//! One log line per call event, each with the call's ID as the `call_id` field.
//!
//! The engine publishes every state change of every call; logging them from one subscriber
//! keeps the packet path free of logging and gives each line the same shape. Ends with a Meta
//! error code (setup or media failures) log at WARN, everything else at INFO. DTMF digits can
//! be PINs: INFO says a digit arrived, only DEBUG says which.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::api::{CallEvent, CallEventKind, LegKind};

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info";

/// Changes the log filter of the running process (the `SetLogLevel` RPC).
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevel {
    /// Replace the filter with `directives` (`RUST_LOG` syntax: `debug`, `info,relay=debug`).
    /// Returns the filter now in force.
    pub fn set(&self, directives: &str) -> Result<String, String> {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        let now = filter.to_string();
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(now)
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}

/// Install the process's subscriber: JSON lines or text on stdout, filtered by `RUST_LOG`
/// (default [`DEFAULT_FILTER`]). Text has colour only on a terminal (and never with
/// `NO_COLOR` set), so files and log collectors get no escape codes.
pub fn init(json: bool) -> LogLevel {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt::layer().json()).init();
    } else {
        registry.with(fmt::layer().with_ansi(colour)).init();
    }
    let level = LogLevel { handle };
    let _ = LOG_LEVEL.set(level.clone());
    level
}

static LOG_LEVEL: std::sync::OnceLock<LogLevel> = std::sync::OnceLock::new();

/// The process's log filter control, once [`init`] ran (not in tests that log elsewhere).
pub fn log_level() -> Option<&'static LogLevel> {
    LOG_LEVEL.get()
}

pub fn leg_name(leg: LegKind) -> &'static str {
    match leg {
        LegKind::WhatsApp => "whatsapp",
        LegKind::Internal => "internal",
    }
}

/// The event's name in logs and call records.
pub fn event_name(kind: &CallEventKind) -> &'static str {
    match kind {
        CallEventKind::Created => "created",
        CallEventKind::IceConnected { .. } => "ice_connected",
        CallEventKind::DtlsConnected { .. } => "dtls_connected",
        CallEventKind::WhatsAppReady => "whatsapp_ready",
        CallEventKind::GateOpened => "gate_opened",
        CallEventKind::FirstMedia { .. } => "first_media",
        CallEventKind::FirstMediaSent => "first_media_sent",
        CallEventKind::DtmfReceived { .. } => "dtmf_received",
        CallEventKind::ConsentLost => "consent_lost",
        CallEventKind::InternalLegSilent { .. } => "internal_leg_silent",
        CallEventKind::OneWayAudio { .. } => "one_way_audio",
        CallEventKind::IcePairNominated { .. } => "ice_pair_nominated",
        CallEventKind::InternalLegReplaced { .. } => "internal_leg_replaced",
        CallEventKind::Recording { change, .. } => match change {
            crate::api::RecordingChange::Started => "recording_started",
            crate::api::RecordingChange::Paused => "recording_paused",
            crate::api::RecordingChange::Resumed => "recording_resumed",
            crate::api::RecordingChange::Stopped => "recording_stopped",
        },
        CallEventKind::Listen { change, .. } => match change {
            crate::api::ListenChange::Started => "listen_started",
            crate::api::ListenChange::Connected => "listen_connected",
            crate::api::ListenChange::Stopped => "listen_stopped",
        },
        CallEventKind::Ended { .. } => "ended",
    }
}

/// Calls with debug logging on ([`set_call_debug`]).
static DEBUG_CALLS: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn debug_calls() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    DEBUG_CALLS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turn per-call debug logging on or off (the `SetCallDebug` RPC): every event of the call at
/// INFO with its details (DTMF digits included), a statistics line per call-log sample, and the
/// full final statistics. Cleared when the call ends. Returns whether it is on.
pub fn set_call_debug(call_id: &str, on: bool) -> bool {
    let mut calls = debug_calls();
    if on {
        calls.insert(call_id.to_string());
    } else {
        calls.remove(call_id);
    }
    on
}

/// Whether `call_id` has debug logging on.
pub fn call_debug(call_id: &str) -> bool {
    let calls = debug_calls();
    !calls.is_empty() && calls.contains(call_id)
}

/// One statistics line for a call with debug logging on.
pub fn log_call_stats(info: &crate::api::CallInfo) {
    let (wa, int) = (&info.whatsapp, &info.internal);
    tracing::info!(
        call_id = %info.call_id,
        event = "debug_stats",
        state = ?info.state,
        wa_rx_packets = wa.received.packets,
        wa_rx_lost = wa.received.lost,
        wa_rx_jitter_ms = wa.received.jitter_ms,
        wa_tx_packets = wa.sent.packets,
        wa_tx_lost = wa.sent.lost,
        wa_dropped = wa.dropped,
        wa_rtt_ms = ?wa.rtt_ms,
        int_rx_packets = int.received.packets,
        int_rx_lost = int.received.lost,
        int_tx_packets = int.sent.packets,
        int_dropped = int.dropped,
        int_rtt_ms = ?int.rtt_ms,
        "call statistics (debug)"
    );
}

pub fn log_event(ev: &CallEvent) {
    let call_id = ev.call_id.as_str();
    let event = event_name(&ev.kind);
    if call_debug(call_id) {
        // Everything the event carries, at INFO so the process's filter need not change.
        tracing::info!(call_id, event, detail = ?ev.kind, "call event (debug)");
        if matches!(ev.kind, CallEventKind::Ended { .. }) {
            debug_calls().remove(call_id);
        }
    }
    match &ev.kind {
        CallEventKind::IceConnected { remote } => {
            tracing::info!(call_id, event, %remote, "ICE connected toward WhatsApp");
        }
        CallEventKind::DtlsConnected { profile } => {
            tracing::info!(call_id, event, profile = %profile, "DTLS connected");
        }
        CallEventKind::FirstMedia { from } => {
            tracing::info!(call_id, event, leg = leg_name(*from), "first media");
        }
        CallEventKind::DtmfReceived { from, digit } => {
            tracing::info!(call_id, event, leg = leg_name(*from), "DTMF digit received");
            tracing::debug!(call_id, event, leg = leg_name(*from), %digit, "DTMF digit");
        }
        CallEventKind::ConsentLost => {
            tracing::warn!(call_id, event, "ICE consent lost toward WhatsApp");
        }
        CallEventKind::InternalLegSilent { silent_for_ms } => {
            tracing::warn!(call_id, event, silent_for_ms, "internal leg silent");
        }
        CallEventKind::OneWayAudio { silent } => {
            tracing::warn!(
                call_id,
                event,
                silent_leg = leg_name(*silent),
                "one-way audio"
            );
        }
        CallEventKind::IcePairNominated {
            local,
            remote,
            checks_sent,
            checks_answered,
        } => {
            tracing::info!(
                call_id,
                event,
                %local,
                %remote,
                checks_sent,
                checks_answered,
                "ICE pair nominated toward WhatsApp"
            );
        }
        CallEventKind::InternalLegReplaced { previous, remote } => {
            let (previous, remote) = (addr_or_unknown(*previous), addr_or_unknown(*remote));
            tracing::info!(call_id, event, %previous, %remote, "internal leg replaced");
        }
        CallEventKind::Ended {
            cause, meta_code, ..
        } => match meta_code {
            Some(code) => {
                tracing::warn!(
                    call_id,
                    event,
                    cause = cause.as_str(),
                    meta_code = code,
                    "call ended"
                );
            }
            None => tracing::info!(call_id, event, cause = cause.as_str(), "call ended"),
        },
        CallEventKind::Created => tracing::info!(call_id, event, "call created"),
        CallEventKind::WhatsAppReady => {
            tracing::info!(call_id, event, "WhatsApp leg ready for media");
        }
        CallEventKind::GateOpened => tracing::info!(call_id, event, "gate opened"),
        CallEventKind::FirstMediaSent => {
            tracing::info!(
                call_id,
                event,
                "first media sent to WhatsApp (Meta's answer)"
            );
        }
        CallEventKind::Recording { status, .. } => tracing::info!(
            call_id,
            event,
            consumer_file = %status.files.consumer.display(),
            agent_file = %status.files.agent.display(),
            dropped_packets = status.dropped_packets,
            "recording"
        ),
        CallEventKind::Listen { status, .. } => tracing::info!(
            call_id,
            event,
            local = %status.local,
            supervisor = %addr_or_unknown(status.remote),
            consumer_packets = status.consumer_packets,
            agent_packets = status.agent_packets,
            dropped_packets = status.dropped_packets,
            reason = status.stop_reason.as_deref().unwrap_or(""),
            "listen-in"
        ),
    }
}

/// An address for a log field, or "unknown" (learned later from the first packet).
fn addr_or_unknown(a: Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}
