//! What `capacity` reports: every probe, the capacity found, and the full reports of the probe
//! at capacity and of the first that missed the SLO; CPU and system calls per packet over the
//! clean probes (the steadier figures to compare targets by).

use serde::Serialize;

use super::{RunReport, Slo};

/// One capacity probe.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Probe {
    pub calls: usize,
    pub pass: bool,
    pub loss_ratio: f64,
    pub steady_p99_ms: f64,
    pub failures: u64,
    pub relay_cpu_pct: Option<f64>,
    pub gen_cpu_pct: Option<f64>,
    /// Packets the target forwarded per second, both directions, in the steady window.
    pub forwarded_pps: f64,
    /// The target's system calls per forwarded packet in the steady window, if counted.
    pub syscalls_per_packet: Option<f64>,
}

impl Probe {
    /// Microseconds of the target's CPU per forwarded packet: its whole process (kernel time
    /// included) over what it forwarded. Unlike a latency percentile it hardly depends on the
    /// machine's scheduling noise, so it is the steadier way to compare targets.
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        let cpu = self.relay_cpu_pct?;
        (self.forwarded_pps > 0.0).then(|| cpu / 100.0 * 1e6 / self.forwarded_pps)
    }

    pub fn line(&self) -> String {
        format!(
            "probe {:>5} calls: {}  loss {:.4}%  steady p99 {:.2} ms  failures {}  relay cpu {}  generator cpu {}",
            self.calls,
            if self.pass { "PASS" } else { "FAIL" },
            self.loss_ratio * 100.0,
            self.steady_p99_ms,
            self.failures,
            self.relay_cpu_pct
                .map_or_else(|| "-".into(), |v| format!("{v:.0}%")),
            self.gen_cpu_pct
                .map_or_else(|| "-".into(), |v| format!("{v:.0}%")),
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CapacityReport {
    pub slo: Slo,
    /// The largest probed call count that met the SLO (0 if none did).
    pub capacity: usize,
    /// The smallest probed count that missed it.
    pub first_failure: Option<usize>,
    pub probes: Vec<Probe>,
    /// The full report of the probe at capacity.
    pub at_capacity: Option<Box<RunReport>>,
    /// The full report of the first probe that missed the SLO (what went wrong).
    pub first_failed: Option<Box<RunReport>>,
}

impl CapacityReport {
    /// Probes that lost nothing and brought every call up: their CPU per packet is clean.
    fn clean(&self) -> impl Iterator<Item = &Probe> {
        self.probes
            .iter()
            .filter(|p| p.failures == 0 && p.loss_ratio == 0.0)
    }

    pub fn clean_probes(&self) -> usize {
        self.clean()
            .filter(|p| p.cpu_us_per_packet().is_some())
            .count()
    }

    /// Median CPU per forwarded packet over the clean probes, µs (see
    /// [`Probe::cpu_us_per_packet`]).
    /// Without a clean probe, over all probes (see [`CapacityReport::clean_probes`]).
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        median(self.clean().filter_map(Probe::cpu_us_per_packet).collect()).or_else(|| {
            median(
                self.probes
                    .iter()
                    .filter_map(Probe::cpu_us_per_packet)
                    .collect(),
            )
        })
    }

    /// Median system calls per forwarded packet over the clean probes (or, without one, over
    /// all).
    pub fn syscalls_per_packet(&self) -> Option<f64> {
        median(self.clean().filter_map(|p| p.syscalls_per_packet).collect()).or_else(|| {
            median(
                self.probes
                    .iter()
                    .filter_map(|p| p.syscalls_per_packet)
                    .collect(),
            )
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(calls: usize, cpu: Option<f64>, pps: f64, loss: f64, failures: u64) -> Probe {
        Probe {
            calls,
            pass: true,
            loss_ratio: loss,
            steady_p99_ms: 1.0,
            failures,
            relay_cpu_pct: cpu,
            gen_cpu_pct: None,
            forwarded_pps: pps,
            syscalls_per_packet: None,
        }
    }

    #[test]
    fn cpu_per_packet_is_the_median_of_clean_probes() {
        // 50 % of a core for 50,000 packets/s is 10 µs a packet.
        assert_eq!(
            probe(250, Some(50.0), 50_000.0, 0.0, 0).cpu_us_per_packet(),
            Some(10.0)
        );
        assert_eq!(probe(250, None, 50_000.0, 0.0, 0).cpu_us_per_packet(), None);
        assert_eq!(
            probe(250, Some(50.0), 0.0, 0.0, 0).cpu_us_per_packet(),
            None
        );
        let report = CapacityReport {
            slo: Slo {
                loss: 0.0001,
                p99_ms: 5.0,
            },
            capacity: 0,
            first_failure: None,
            probes: vec![
                probe(125, Some(12.0), 10_000.0, 0.0, 0),  // 12 µs
                probe(250, Some(22.0), 20_000.0, 0.0, 0),  // 11 µs
                probe(500, Some(65.0), 50_000.0, 0.0, 0),  // 13 µs
                probe(1000, Some(99.0), 30_000.0, 0.4, 0), // lost packets: excluded
                probe(1000, Some(99.0), 30_000.0, 0.0, 7), // calls failed: excluded
            ],
            at_capacity: None,
            first_failed: None,
        };
        assert_eq!(report.clean_probes(), 3);
        let m = report.cpu_us_per_packet().unwrap();
        assert!((m - 12.0).abs() < 1e-9, "{m}");
    }
}
