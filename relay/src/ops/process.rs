//! What the binary is and what the process costs: `relay_build_info` and the standard
//! `process_*` metrics every Prometheus client library exports, read from `/proc` at scrape
//! time (so nothing runs between scrapes).

/// The commit the binary was built from (see `relay/build.rs`), or `unknown`.
pub const COMMIT: &str = env!("RELAY_COMMIT");
/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `relay --version`: `0.1.0 (commit 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RELAY_COMMIT"),
    ")"
);

/// One reading of the process's counters. Fields are `None` where `/proc` did not say (not
/// Linux, or a sandbox that hides it); those series are left out rather than written as 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// This process, now.
    pub fn read() -> Self {
        let ticks = clock_ticks();
        let page = page_size();
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| parse_max_open_files(&s));
        let mut p = ProcessStats {
            open_fds,
            max_fds,
            ..Default::default()
        };
        if let (Some(st), Some(ticks)) = (stat, ticks) {
            p.cpu_seconds = Some((st.utime + st.stime) as f64 / ticks);
            p.threads = Some(st.num_threads);
            p.virtual_bytes = Some(st.vsize);
            p.resident_bytes = page.map(|pg| st.rss_pages.saturating_mul(pg));
            p.start_time_seconds = boot.map(|b| b as f64 + st.start_ticks as f64 / ticks);
        }
        p
    }
}

/// The fields of `/proc/self/stat` we use.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    num_threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// `/proc/[pid]/stat` (proc(5)): `pid (comm) state ppid ...`. The command name may hold
/// spaces and parentheses, so fields are counted from after the last `)`.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    // After `)`: field 3 (state) is index 0.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(Stat {
        utime: n(14)?,
        stime: n(15)?,
        num_threads: n(20)?,
        start_ticks: n(22)?,
        vsize: n(23)?,
        rss_pages: n(24)?,
    })
}

/// Boot time (Unix seconds) from `/proc/stat`'s `btime` line.
fn parse_btime(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from `/proc/self/limits`.
fn parse_max_open_files(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    // "unlimited" has no number; Prometheus clients leave the series out too.
    soft.parse().ok()
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

fn page_size() -> Option<u64> {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (p > 0).then_some(p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a thread name may have.
        let line = "4242 (relay (x) y) S 1 4242 4242 0 -1 4194560 2837 0 0 0 \
                    150 25 0 0 20 0 7 0 12345 1048576000 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 150,
                stime: 25,
                num_threads: 7,
                start_ticks: 12345,
                vsize: 1_048_576_000,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn boot_time_and_fd_limit_come_from_their_lines() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1764892800\nprocesses 9\n"),
            Some(1_764_892_800)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95698                95698                processes \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1_048_576));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_reads_as_alive() {
        // On Linux (CI) every figure is there and plausible.
        let p = ProcessStats::read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.threads.unwrap() >= 1);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.max_fds.unwrap_or(u64::MAX) >= p.open_fds.unwrap());
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = p.start_time_seconds.unwrap();
        // Started before now, and not before the box booted a year ago.
        assert!(started <= now + 1.0 && started > now - 366.0 * 86400.0);
    }

    #[test]
    fn the_long_version_names_the_commit() {
        assert!(LONG_VERSION.starts_with(VERSION));
        assert!(LONG_VERSION.contains(COMMIT));
        assert!(!COMMIT.is_empty());
    }
}
