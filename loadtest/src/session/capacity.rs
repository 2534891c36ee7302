//! `capacity`: the largest call count that meets the SLO, by doubling and then bisection,
//! each probe a fresh `run`.

use std::time::Duration;

use super::Session;
use crate::report::{CapacityReport, Probe, RunReport, Slo};

impl Session {
    /// The largest call count that meets `slo`: doubling from `min` until a probe fails (or
    /// `max`), then bisection down to `resolution` calls. Each probe is a fresh `run`.
    pub async fn capacity(
        &self,
        slo: Slo,
        min: usize,
        max: usize,
        resolution: usize,
        probe_hold: Duration,
    ) -> CapacityReport {
        let mut probes = Vec::new();
        let mut best: Option<Box<RunReport>> = None;
        let mut first_failed: Option<Box<RunReport>> = None;
        let mut pass_n = 0usize;
        let mut fail_n: Option<usize> = None;
        let mut n = min.max(1);
        loop {
            let r = self.probe(n, probe_hold, slo, &mut probes).await;
            if slo.met_by(&r) {
                pass_n = n;
                best = Some(Box::new(r));
                if n >= max {
                    break;
                }
                n = (n * 2).min(max);
            } else {
                fail_n = Some(n);
                first_failed = Some(Box::new(r));
                break;
            }
        }
        if let Some(mut hi) = fail_n {
            while hi.saturating_sub(pass_n) > resolution.max(1) {
                let mid = pass_n + (hi - pass_n) / 2;
                let r = self.probe(mid, probe_hold, slo, &mut probes).await;
                if slo.met_by(&r) {
                    pass_n = mid;
                    best = Some(Box::new(r));
                } else {
                    hi = mid;
                }
            }
        }
        CapacityReport {
            slo,
            capacity: pass_n,
            first_failure: fail_n,
            probes,
            at_capacity: best,
            first_failed,
        }
    }

    async fn probe(
        &self,
        n: usize,
        hold: Duration,
        slo: Slo,
        probes: &mut Vec<Probe>,
    ) -> RunReport {
        let r = self.run(n, hold, &format!("probe {n}")).await;
        let p = Probe {
            calls: n,
            pass: slo.met_by(&r),
            loss_ratio: r.loss_ratio(),
            steady_p99_ms: r.steady_p99_ms(),
            failures: r.failures_total(),
            relay_cpu_pct: r.resources.relay_cpu_pct,
            gen_cpu_pct: r.resources.gen_cpu_pct,
            forwarded_pps: r.forwarded_pps(),
            syscalls_per_packet: r.syscalls_per_packet(),
        };
        if self.ctx.opts.live {
            eprintln!("{}", p.line());
        }
        probes.push(p);
        // Let the relay release the probe's calls before the next one.
        tokio::time::sleep(Duration::from_secs(1)).await;
        r
    }
}
