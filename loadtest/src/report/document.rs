//! The whole report of one invocation: what --json writes and --html renders (the command, the
//! machine, the settings, and the mode's result).

use serde::Serialize;

use super::{CapacityReport, CompareEntry, OverloadReport, RampReport, RunReport};

/// Everything written to --json (and rendered into --html).
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub command: String,
    pub started_unix_s: u64,
    /// Load average when the run started.
    pub load_start: String,
    pub target: String,
    pub machine: Machine,
    pub settings: Settings,
    #[serde(flatten)]
    pub result: ModeReport,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub threads: usize,
    pub pool: usize,
    pub setup_rate: f64,
    pub relay_shards: Option<usize>,
    pub relay_cpu: Option<usize>,
    pub gen_cpu: Option<usize>,
    pub nice: Option<i32>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ModeReport {
    Run { run: RunReport },
    Ramp { ramp: RampReport },
    Capacity { capacity: CapacityReport },
    Churn { run: RunReport },
    Compare { compare: Vec<CompareEntry> },
    Overload { overload: OverloadReport },
}

#[derive(Debug, Serialize)]
pub struct Machine {
    /// 1/5/15-minute load averages when the report was written: other work on the machine
    /// skews latency (and pinned processes cannot move away from it).
    pub load_average: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Machine {
            load_average: load_average(),
            // The machine's, not this process's (which --taskset pins to one).
            cpus: crate::os::online_cpus(),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_ascii_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
