//! `overload`: offer more calls than one core carries and check that admission control
//! protects the calls already up.

use std::time::Duration;

use super::Session;
use crate::report::OverloadReport;

impl Session {
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
}
