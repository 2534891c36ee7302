//! `run`: N calls up at the setup rate, held with audio both ways, ended; and `call_once`,
//! the one call `loadtest call` explains.

use std::time::Duration;

use control::pb;

use super::{Backend, Session, lock};
use crate::report::RunReport;

impl Session {
    /// `calls` calls: brought up at the setup rate, held with audio both ways for `hold`, then
    /// ended. Latency percentiles of the hold window are reported as "steady".
    pub async fn run(&self, calls: usize, hold: Duration, label: &str) -> RunReport {
        let (sampler, stop) = self.start_sampler();
        let (live, mut failures) = self.setup_many(calls).await;
        tokio::time::sleep(self.ctx.opts.warmup).await;
        lock(&sampler).open_window();
        tokio::time::sleep(hold).await;
        let window = lock(&sampler).close_window();
        let (calls_ok, counters) = self.wind_up(live, &mut failures, &sampler, stop).await;
        self.report(
            label,
            calls,
            calls_ok,
            failures,
            (self.ctx.opts.warmup, hold),
            &sampler,
            &window,
            counters,
        )
    }

    /// One call held for `hold`, for `loadtest call`: the run's report, and from the relay the
    /// call as `GetCall` shows it halfway through and, after it ended, its event log.
    pub async fn call_once(
        &self,
        hold: Duration,
    ) -> (RunReport, Option<pb::GetCallResponse>, Vec<pb::CallEvent>) {
        let (sampler, stop) = self.start_sampler();
        let (live, mut failures) = self.setup_many(1).await;
        lock(&sampler).open_window();
        tokio::time::sleep(hold / 2).await;
        let client = match &self.ctx.backend {
            Backend::Relay { client, .. } => Some(client.clone()),
            _ => None,
        };
        let call_id = live.first().map(|c| c.call_id.clone());
        let mut during = None;
        if let (Some(mut c), Some(id)) = (client.clone(), call_id.clone()) {
            during = c.get_call(id).await.ok();
        }
        tokio::time::sleep(hold - hold / 2).await;
        let window = lock(&sampler).close_window();
        let (calls_ok, counters) = self.wind_up(live, &mut failures, &sampler, stop).await;
        let mut events = Vec::new();
        if let (Some(mut c), Some(id)) = (client, call_id)
            && let Ok(r) = c.get_call(id).await
        {
            events = r.events;
        }
        let report = self.report(
            "call",
            1,
            calls_ok,
            failures,
            (Duration::ZERO, hold),
            &sampler,
            &window,
            counters,
        );
        (report, during, events)
    }
}
