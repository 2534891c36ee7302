//! CPU time and memory of a process or thread, from /proc (Linux).

use std::time::Instant;

/// utime + stime in seconds from a /proc/.../stat file.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / crate::os::clock_ticks_per_second())
}

/// Resident set size in bytes (VmRSS of /proc/<pid>/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// A whole process.
    Process(u32),
    /// Some threads of this process (kernel thread IDs).
    Threads(Vec<i32>),
}

impl CpuSource {
    fn seconds(&self) -> Option<f64> {
        match self {
            CpuSource::Process(pid) => cpu_seconds(&format!("/proc/{pid}/stat")),
            CpuSource::Threads(tids) => tids
                .iter()
                .map(|t| cpu_seconds(&format!("/proc/self/task/{t}/stat")))
                .sum(),
        }
    }
}

/// CPU use between successive samples, in percent of one core.
#[derive(Debug)]
pub struct CpuMeter {
    source: CpuSource,
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    pub fn new(source: CpuSource) -> Self {
        let mut m = CpuMeter { source, last: None };
        m.sample();
        m
    }

    /// Percent of one core since the previous sample; `None` on the first or if /proc failed.
    pub fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let secs = self.source.seconds()?;
        let pct = self.last.and_then(|(t, s)| {
            let wall = now.duration_since(t).as_secs_f64();
            (wall > 0.0).then(|| 100.0 * (secs - s).max(0.0) / wall)
        });
        self.last = Some((now, secs));
        pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).is_some_and(|b| b > 0));
        let mut m = CpuMeter::new(CpuSource::Process(pid));
        // Burn a little CPU so the second sample has something to show.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(m.sample().is_some_and(|p| p >= 0.0));
    }
}
