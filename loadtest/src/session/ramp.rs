//! `ramp`: add calls step by step, hold each level, stop at the first step that misses the SLO.

use std::time::{Duration, Instant};

use super::{LiveCall, Session, lock};
use crate::report::{RampReport, Slo, StepReport};
use crate::sampler::Window;

impl Session {
    /// Adds `step` calls at a time from `start` up to `max`, holding each level for
    /// `step_hold`; stops early at the first step that misses `slo`, if given.
    pub async fn ramp(
        &self,
        start: usize,
        step: usize,
        max: usize,
        step_hold: Duration,
        slo: Option<Slo>,
    ) -> RampReport {
        let (sampler, stop) = self.start_sampler();
        let mut live: Vec<LiveCall> = Vec::new();
        let mut failures = Vec::new();
        let mut steps = Vec::new();
        let mut target = start.max(1);
        let ramp_start = Instant::now();
        loop {
            let (more, failed) = self.setup_many(target.saturating_sub(live.len())).await;
            live.extend(more);
            let step_failures = failed.len();
            failures.extend(failed);
            tokio::time::sleep(self.ctx.opts.warmup).await;
            lock(&sampler).open_window();
            tokio::time::sleep(step_hold).await;
            let w = lock(&sampler).close_window();
            let s = StepReport::new(live.len(), step_failures, &w, slo);
            if self.ctx.opts.live {
                eprintln!("{}", s.line());
            }
            let pass = s.pass;
            steps.push(s);
            if (slo.is_some() && !pass) || target >= max {
                break;
            }
            target = (target + step.max(1)).min(max);
        }
        let (calls_ok, counters) = self.wind_up(live, &mut failures, &sampler, stop).await;
        let whole = Window::default();
        let run = self.report(
            "ramp",
            target,
            calls_ok,
            failures,
            (self.ctx.opts.warmup, ramp_start.elapsed()),
            &sampler,
            &whole,
            counters,
        );
        let last_pass = steps.iter().take_while(|s| s.pass).last().map(|s| s.calls);
        RampReport {
            steps,
            last_pass,
            run,
        }
    }
}
