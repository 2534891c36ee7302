//! What `overload` reports: offered, admitted and refused calls, the admitted calls' loss and the
//! silence fill, and the verdict.

use serde::Serialize;

use super::{CapacityReport, RunReport};

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
