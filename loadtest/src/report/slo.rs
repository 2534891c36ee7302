//! The service level a call count must meet (`ramp`, `capacity`, `compare`).

use serde::Serialize;

use super::RunReport;

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
