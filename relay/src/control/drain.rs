//! Drain: stop admitting calls, and end the remaining ones (cause `drained`) when the deadline
//! passes.
//!
//! There is one drain per process, [`Drain`], and every trigger goes through it: the gRPC
//! `Drain` request (`relayctl drain`) and SIGTERM in the `relay` binary
//! ([`crate::ops::run`]). Starting it turns the engine's admission off at once
//! ([`CallControl::set_draining`]: CreateCall answers UNAVAILABLE except for a repeat of a call
//! that exists, `/readyz` answers 503, `relay_draining` is 1, GetLoad says `draining`, and the
//! gRPC health of `relay.v1.Relay` turns NOT_SERVING); one task waits for the deadline and
//! then ends every live call with [`CallControl::end_all_drained`]. A second trigger can only
//! bring the deadline forward.

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

type Deadline = Option<(Instant, SystemTime)>;

/// The process's drain. Create it with [`Drain::spawn`]; share the `Arc`.
pub struct Drain {
    /// `None` until a drain starts; then the instant remaining calls are ended.
    deadline: watch::Sender<Deadline>,
    /// Turns true once the deadline passed and the remaining calls were ended.
    finished: watch::Sender<bool>,
    /// Turns the engine's admission off (called synchronously by [`Drain::start`], so the
    /// relay is unready before a Drain request returns).
    stop_admitting: Box<dyn Fn() + Send + Sync>,
    /// The deadline of a Drain request that gives none (the `relay` binary: its SIGTERM
    /// deadline, `drain_deadline`).
    default_deadline: Duration,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("deadline", &*self.deadline.borrow())
            .field("finished", &*self.finished.borrow())
            .finish()
    }
}

impl Drain {
    /// A drain of `engine`, not started, and the task that ends the remaining calls when it
    /// is started and its deadline passes (needs a tokio runtime). The task stops when `stop`
    /// turns true. `default_deadline` serves Drain requests that give none.
    pub fn spawn<C: CallControl>(
        engine: Arc<C>,
        default_deadline: Duration,
        stop: watch::Receiver<bool>,
    ) -> Arc<Drain> {
        let admission = Arc::clone(&engine);
        let drain = Arc::new(Drain {
            deadline: watch::Sender::new(None),
            finished: watch::Sender::new(false),
            stop_admitting: Box::new(move || admission.set_draining(true)),
            default_deadline,
        });
        tokio::spawn(run(engine, Arc::clone(&drain), stop));
        drain
    }

    /// The deadline of a Drain request that gives none.
    pub fn default_deadline(&self) -> Duration {
        self.default_deadline
    }

    pub fn is_draining(&self) -> bool {
        self.deadline.borrow().is_some()
    }

    /// Start draining, or bring the deadline forward if a drain is already under way (a later
    /// request never extends it). Returns the wall-clock deadline in force.
    pub fn start(&self, after: Duration) -> SystemTime {
        (self.stop_admitting)();
        let after = after.min(MAX_DRAIN_DEADLINE);
        let target = (Instant::now() + after, SystemTime::now() + after);
        self.deadline.send_modify(|d| match d {
            Some(current) if current.0 <= target.0 => {}
            _ => *d = Some(target),
        });
        self.deadline.borrow().map_or(target.1, |d| d.1)
    }

    /// Resolves once a drain has started.
    pub async fn started(&self) {
        let mut rx = self.deadline.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Resolves once the deadline passed and the remaining calls were ended.
    pub async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }
}

/// Waits for a drain to start and its deadline to pass, then ends every live call.
async fn run<C: CallControl>(engine: Arc<C>, drain: Arc<Drain>, mut stop: watch::Receiver<bool>) {
    let mut rx = drain.deadline.subscribe();
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
        Ok(n) => tracing::info!(
            calls = n,
            "drain deadline passed; ended remaining calls (cause drained)"
        ),
        Err(e) => tracing::error!(error = %e, "drain: cannot end the remaining calls"),
    }
    drain.finished.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstarted() -> Drain {
        Drain {
            deadline: watch::Sender::new(None),
            finished: watch::Sender::new(false),
            stop_admitting: Box::new(|| {}),
            default_deadline: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_later_drain_never_extends_the_deadline() {
        let s = unstarted();
        assert!(!s.is_draining());
        let first = s.start(Duration::from_secs(10));
        assert!(s.is_draining());
        assert_eq!(s.start(Duration::from_secs(60)), first);
        let sooner = s.start(Duration::from_secs(1));
        assert!(sooner < first);
    }
}
