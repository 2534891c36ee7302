//! `churn`: setups at a fixed rate, each call short: setup time under churn.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;

use super::steps::{end, setup, stop_audio};
use super::{Backend, Failure, Session, add_counters, lock};
use crate::report::{RelayCounters, RunReport};

impl Session {
    /// Setups at `rate` per second for `total`, each call holding audio for `call_len`.
    pub async fn churn(
        &self,
        rate: f64,
        call_len: Duration,
        total: Duration,
        label: &str,
    ) -> RunReport {
        let (sampler, stop) = self.start_sampler();
        lock(&sampler).open_window();
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let n = (total.as_secs_f64() * rate).round() as usize;
        let start = tokio::time::Instant::now();
        let mut set = JoinSet::new();
        for k in 0..n {
            tokio::time::sleep_until(start + gap.mul_f64(k as f64)).await;
            let ctx = self.ctx.clone();
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            set.spawn(async move {
                let live = setup(&ctx, id).await?;
                tokio::time::sleep(call_len).await;
                if !ctx.claim_for_ending(&live) {
                    // The relay ended it meanwhile (counted from its event).
                    return Ok(None);
                }
                stop_audio(&ctx, &live);
                tokio::time::sleep(ctx.opts.settle).await;
                end(&ctx, &live).await
            });
        }
        let mut failures = Vec::new();
        let mut counters =
            matches!(self.ctx.backend, Backend::Relay { .. }).then(RelayCounters::default);
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(info)) => {
                    ok += 1;
                    if let (Some(c), Some(info)) = (counters.as_mut(), info) {
                        add_counters(c, &info);
                    }
                }
                Ok(Err(f)) => failures.push(f),
                Err(e) => failures.push(Failure {
                    stage: "task",
                    why: e.to_string(),
                }),
            }
        }
        let window = lock(&sampler).close_window();
        let ended = self.take_relay_ends();
        ok -= ended.len().min(ok);
        failures.extend(ended);
        self.finish_sampler(&sampler, stop).await;
        let hold = start.elapsed();
        let no_warmup = Duration::ZERO;
        self.report(
            label,
            n,
            ok,
            failures,
            (no_warmup, hold),
            &sampler,
            &window,
            counters,
        )
    }
}
