//! The Watch stream and the per-call event log, both fed by [`CallControl::subscribe`].
//!
//! The engine publishes into a tokio broadcast channel, which never waits for receivers: a slow
//! reader only lags. Each watcher gets its own forwarding task that reads the broadcast and
//! writes into a small bounded channel toward the gRPC stream. When the client reads slowly the
//! task waits on that channel, its broadcast receiver falls behind, and the next read reports how
//! many events were skipped; the watcher is told with a `lagged` item. The engine is never slowed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use control::pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::{CallControl, CallEvent, CallEventKind, CallInfo, CallState};

use super::convert;

/// Items buffered per watcher between its forwarding task and the gRPC stream.
const WATCH_BUFFER: usize = 64;

pub type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

/// Start forwarding `rx` (already subscribed, so nothing published after this call is missed)
/// to a new Watch stream. It ends when the client goes away, the engine closes the broadcast,
/// or `stop` turns true (server shutdown).
pub fn watch_stream(
    rx: broadcast::Receiver<CallEvent>,
    call_id: Option<String>,
    stop: watch::Receiver<bool>,
) -> WatchStream {
    let (tx, out) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(forward(rx, call_id, tx, stop));
    ReceiverStream::new(out)
}

async fn forward(
    mut rx: broadcast::Receiver<CallEvent>,
    call_id: Option<String>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    mut stop: watch::Receiver<bool>,
) {
    use pb::watch_response::Item;
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tx.closed() => return,
            r = rx.recv() => r,
        };
        let item = match received {
            Ok(ev) => {
                if call_id.as_ref().is_some_and(|id| *id != ev.call_id) {
                    continue;
                }
                Item::Event(convert::call_event(&ev))
            }
            // The skipped events may include the watched call's: always tell.
            Err(RecvError::Lagged(skipped)) => Item::Lagged(pb::Lagged { skipped }),
            Err(RecvError::Closed) => return,
        };
        let resp = pb::WatchResponse { item: Some(item) };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            sent = tx.send(Ok(resp)) => if sent.is_err() { return },
        }
    }
}

/// How much history the event log keeps.
#[derive(Copy, Clone, Debug)]
pub struct LogLimits {
    /// Events kept per call. Past it only the final `ended` event is added (a DTMF-heavy IVR
    /// call must not grow without bound).
    pub events_per_call: usize,
    /// Ended calls whose log is kept, oldest forgotten first.
    pub ended_calls: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            events_per_call: 64,
            ended_calls: 1024,
        }
    }
}

/// Recent events per call, served with GetCall (like Meta's Call Logs).
#[derive(Debug)]
pub struct EventLog {
    limits: LogLimits,
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    calls: HashMap<String, CallLog>,
    /// Ended calls, oldest first: the eviction order.
    ended: VecDeque<String>,
}

#[derive(Debug, Default)]
struct CallLog {
    events: Vec<pb::CallEvent>,
    ended: bool,
}

impl EventLog {
    pub fn new(limits: LogLimits) -> Self {
        EventLog {
            limits,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        // The log is diagnostics: a panic elsewhere while holding it leaves consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, ev: &CallEvent) {
        let is_end = matches!(ev.kind, CallEventKind::Ended { .. });
        let mut inner = self.lock();
        let log = inner.calls.entry(ev.call_id.clone()).or_default();
        if log.ended {
            // After the end nothing more belongs to this call (a new call with the same ID is a
            // repeat create of an ended call, which the engine refuses or treats as new).
            return;
        }
        if log.events.len() < self.limits.events_per_call || is_end {
            log.events.push(convert::call_event(ev));
        }
        if is_end {
            log.ended = true;
            inner.ended.push_back(ev.call_id.clone());
            self.evict(&mut inner);
        }
    }

    /// After a lag some `ended` events may have been missed: calls the engine no longer lists
    /// as live are marked ended so their logs age out instead of leaking.
    pub fn reconcile(&self, live: &[CallInfo]) {
        let live: HashSet<&str> = live
            .iter()
            .filter(|c| c.state != CallState::Ended)
            .map(|c| c.call_id.as_str())
            .collect();
        let mut inner = self.lock();
        let LogInner { calls, ended } = &mut *inner;
        for (id, log) in calls.iter_mut() {
            if !log.ended && !live.contains(id.as_str()) {
                log.ended = true;
                ended.push_back(id.clone());
            }
        }
        self.evict(&mut inner);
    }

    fn evict(&self, inner: &mut LogInner) {
        while inner.ended.len() > self.limits.ended_calls {
            if let Some(id) = inner.ended.pop_front() {
                inner.calls.remove(&id);
            }
        }
    }

    /// The call's events, oldest first (empty if unknown or forgotten).
    pub fn get(&self, call_id: &str) -> Vec<pb::CallEvent> {
        self.lock()
            .calls
            .get(call_id)
            .map(|l| l.events.clone())
            .unwrap_or_default()
    }
}

/// Feeds `log` from `rx` until `stop` or the engine closes the broadcast.
pub async fn run_log<C: CallControl>(
    engine: Arc<C>,
    log: Arc<EventLog>,
    mut rx: broadcast::Receiver<CallEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = rx.recv() => r,
        };
        match received {
            Ok(ev) => log.record(&ev),
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "event log lagged behind the engine; reconciling");
                if let Ok(calls) = engine.list_calls().await {
                    log.reconcile(&calls);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::api::{EndCause, LegKind};

    fn ev(id: &str, kind: CallEventKind) -> CallEvent {
        CallEvent {
            call_id: id.into(),
            at: SystemTime::UNIX_EPOCH,
            kind,
        }
    }

    fn ended(id: &str) -> CallEvent {
        ev(
            id,
            CallEventKind::Ended {
                cause: EndCause::Terminated,
                meta_code: None,
                stats: Box::new(crate::api::CallInfo {
                    call_id: id.into(),
                    business_number: String::new(),
                    consumer: String::new(),
                    direction: crate::api::CallDirection::UserInitiated,
                    state: crate::api::CallState::Ended,
                    gate_open: false,
                    srtp_profile: None,
                    whatsapp_remote: None,
                    internal_remote: None,
                    whatsapp: Default::default(),
                    internal: Default::default(),
                    end_cause: Some(EndCause::Terminated),
                    created_at: SystemTime::UNIX_EPOCH,
                }),
            },
        )
    }

    #[test]
    fn per_call_cap_still_keeps_the_end() {
        let log = EventLog::new(LogLimits {
            events_per_call: 3,
            ended_calls: 10,
        });
        log.record(&ev("a", CallEventKind::Created));
        for _ in 0..10 {
            log.record(&ev(
                "a",
                CallEventKind::DtmfReceived {
                    from: LegKind::WhatsApp,
                    digit: '1',
                },
            ));
        }
        log.record(&ended("a"));
        let got = log.get("a");
        assert_eq!(got.len(), 4);
        assert!(matches!(
            got.last().and_then(|e| e.kind.as_ref()),
            Some(pb::call_event::Kind::Ended(_))
        ));
    }

    #[test]
    fn oldest_ended_calls_are_forgotten_first() {
        let log = EventLog::new(LogLimits {
            events_per_call: 8,
            ended_calls: 2,
        });
        for id in ["a", "b", "c"] {
            log.record(&ev(id, CallEventKind::Created));
            log.record(&ended(id));
        }
        log.record(&ev("live", CallEventKind::Created));
        assert!(log.get("a").is_empty());
        assert_eq!(log.get("b").len(), 2);
        assert_eq!(log.get("c").len(), 2);
        assert_eq!(log.get("live").len(), 1);
    }

    #[test]
    fn reconcile_ages_out_calls_whose_end_was_missed() {
        let log = EventLog::new(LogLimits {
            events_per_call: 8,
            ended_calls: 0,
        });
        log.record(&ev("gone", CallEventKind::Created));
        log.reconcile(&[]);
        assert!(log.get("gone").is_empty());
    }
}
