//! System calls a target makes over a measurement window, from the best source there is:
//!
//! - the raw forwarders count their own (exact, no overhead);
//! - the relay exports its I/O system calls in `/metrics` (`relay_io_syscalls_total{shard,
//!   kind}` or any `relay_*syscalls*_total`): epoll/io_uring waits, receives and sends, not the
//!   control plane's;
//! - otherwise (rtpengine, or a relay without the counters) `perf stat -e
//!   raw_syscalls:sys_enter -p PID`: every system call of every thread of the process,
//!   control threads included, and the tracepoint adds a little cost to each call;
//! - without perf: not measured.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::scrape;

#[derive(Clone, Debug)]
pub enum SyscallSource {
    /// A counter an in-process forwarder keeps.
    Counter(Arc<AtomicU64>),
    /// The relay's `/metrics` at this address.
    Metrics(SocketAddr),
    /// `perf stat` attached to this process.
    Perf(u32),
}

impl SyscallSource {
    /// How the count was taken, for the report.
    pub fn describe(&self) -> &'static str {
        match self {
            SyscallSource::Counter(_) => "self-counted",
            SyscallSource::Metrics(_) => "relay /metrics",
            SyscallSource::Perf(_) => "perf raw_syscalls",
        }
    }

    /// The relay's source: its metrics if they carry the counters, else perf if it works.
    pub fn for_relay(metrics: Option<SocketAddr>, pid: Option<u32>) -> Option<SyscallSource> {
        if let Some(addr) = metrics
            && scrape::scrape(addr)
                .ok()
                .and_then(|t| scrape::io_syscalls(&t))
                .is_some()
        {
            return Some(SyscallSource::Metrics(addr));
        }
        Self::perf(pid?)
    }

    /// `perf stat` on `pid`, if perf can count system calls here.
    pub fn perf(pid: u32) -> Option<SyscallSource> {
        perf_works().then_some(SyscallSource::Perf(pid))
    }
}

/// Whether `perf stat -e raw_syscalls:sys_enter` works (installed, tracepoint readable).
fn perf_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .is_ok_and(|o| {
                o.status.success() && parse_perf(&String::from_utf8_lossy(&o.stderr)).is_some()
            })
    })
}

/// The count from `perf stat -x,` output ("count,unit,event,running ns,percent,..."). The
/// running time there is the time the counted threads were on a CPU, not wall time: the rate
/// is taken over our own wall clock instead.
fn parse_perf(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))?;
    line.split(',').next()?.trim().parse().ok()
}

enum Running {
    Count(u64, Instant),
    Perf(Child, Instant),
}

/// Counts between `start` and `stop`.
pub struct SyscallMeter {
    source: SyscallSource,
    running: Option<Running>,
}

impl std::fmt::Debug for SyscallMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyscallMeter")
            .field("source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

impl SyscallMeter {
    pub fn new(source: SyscallSource) -> SyscallMeter {
        SyscallMeter {
            source,
            running: None,
        }
    }

    pub fn describe(&self) -> &'static str {
        self.source.describe()
    }

    fn read(&self) -> Option<u64> {
        match &self.source {
            SyscallSource::Counter(c) => Some(c.load(Ordering::Relaxed)),
            SyscallSource::Metrics(addr) => scrape::scrape(*addr)
                .ok()
                .and_then(|t| scrape::io_syscalls(&t))
                .map(|v| v as u64),
            SyscallSource::Perf(_) => None,
        }
    }

    pub fn start(&mut self) {
        self.running = match &self.source {
            SyscallSource::Perf(pid) => Command::new("perf")
                .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .ok()
                .map(|c| Running::Perf(c, Instant::now())),
            _ => self.read().map(|n| Running::Count(n, Instant::now())),
        };
    }

    /// System calls since `start` and over how long they were counted (perf attaches a little
    /// after `start`); `None` if they could not be counted.
    pub fn stop(&mut self) -> Option<(u64, Duration)> {
        match self.running.take()? {
            Running::Count(before, at) => Some((self.read()?.saturating_sub(before), at.elapsed())),
            Running::Perf(child, at) => {
                // perf prints its counts on SIGINT.
                crate::os::signal(&child, libc::SIGINT);
                let elapsed = at.elapsed();
                let out = child.wait_with_output().ok()?;
                parse_perf(&String::from_utf8_lossy(&out.stderr)).map(|n| (n, elapsed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perfs_csv_line() {
        let text = "# started on ...\n\n48211,,raw_syscalls:sys_enter,10012345678,100.00,,\n";
        assert_eq!(parse_perf(text), Some(48211));
        assert_eq!(
            parse_perf("<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n"),
            None
        );
    }

    #[test]
    fn a_counter_source_counts_the_window_only() {
        let c = Arc::new(AtomicU64::new(100));
        let mut m = SyscallMeter::new(SyscallSource::Counter(c.clone()));
        m.start();
        c.fetch_add(42, Ordering::Relaxed);
        assert_eq!(m.stop().map(|(n, _)| n), Some(42));
        assert_eq!(m.stop(), None, "not started");
    }
}
