//! Drain: stop admitting calls, and end the remaining ones when the deadline passes.
//!
//! [`CallControl`] has no drain operation, so the control plane does it with the operations it
//! has: while draining, CreateCall answers UNAVAILABLE (except a repeat for a call that already
//! exists, which stays idempotent), GetLoad reports `draining`, the health status of
//! `relay.v1.Relay` turns NOT_SERVING (readiness off, so no new calls are routed here), and when
//! the deadline passes every live call is terminated.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::CallControl;

/// Longest accepted drain deadline; longer requests are clamped (and the deadline must stay
/// representable as an `Instant`).
pub const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Terminate reason for calls still live at the deadline.
pub const DRAIN_REASON: &str = "drain deadline passed";

#[derive(Debug)]
pub struct DrainState {
    /// `None` until a drain starts; then the instant remaining calls are ended.
    deadline: watch::Sender<Option<(Instant, SystemTime)>>,
}

impl Default for DrainState {
    fn default() -> Self {
        DrainState {
            deadline: watch::Sender::new(None),
        }
    }
}

impl DrainState {
    pub fn is_draining(&self) -> bool {
        self.deadline.borrow().is_some()
    }

    /// Start draining, or bring the deadline forward if a drain is already under way (a later
    /// request never extends it). Returns the wall-clock deadline in force.
    pub fn start(&self, after: Duration) -> SystemTime {
        let after = after.min(MAX_DRAIN_DEADLINE);
        let target = (Instant::now() + after, SystemTime::now() + after);
        self.deadline.send_modify(|d| match d {
            Some(current) if current.0 <= target.0 => {}
            _ => *d = Some(target),
        });
        self.deadline.borrow().map_or(target.1, |d| d.1)
    }

    fn subscribe(&self) -> watch::Receiver<Option<(Instant, SystemTime)>> {
        self.deadline.subscribe()
    }
}

/// Waits for a drain to start and its deadline to pass, then terminates every live call.
pub async fn run_drain<C: CallControl>(
    engine: Arc<C>,
    state: Arc<DrainState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = state.subscribe();
    let mut deadline = loop {
        if let Some((at, _)) = *rx.borrow_and_update() {
            break at;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(deadline) => break,
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Some((at, _)) = *rx.borrow_and_update() {
                    deadline = at;
                }
            }
        }
    }
    match engine.end_all_drained().await {
        Ok(n) => tracing::info!(calls = n, "drain deadline passed; ended remaining calls"),
        Err(e) => tracing::error!(error = %e, "drain: cannot end the remaining calls"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_drain_never_extends_the_deadline() {
        let s = DrainState::default();
        assert!(!s.is_draining());
        let first = s.start(Duration::from_secs(10));
        assert!(s.is_draining());
        assert_eq!(s.start(Duration::from_secs(60)), first);
        let sooner = s.start(Duration::from_secs(1));
        assert!(sooner < first);
    }
}
