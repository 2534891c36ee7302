//! The CPU the process may use: its cgroup's CFS quota (`cpu.max` on cgroup v2,
//! `cpu.cfs_quota_us` ÷ `cpu.cfs_period_us` on v1). A Kubernetes `limits.cpu` is exactly this
//! quota, so a pod with a 1-core limit on a 32-core node may run one core's worth of work however
//! many threads it has; without knowing it, admission would treat each shard as owning a whole
//! core and admit until the pod is throttled (BENCHMARKS.md, issue 17 session 8: the limit had
//! to be set by hand).
//!
//! Read once at start and again every [`REFRESH_EVERY`] on a thread of its own (the quota can
//! change: `kubectl` in-place resize, an operator editing the cgroup), never on the packet path.
//! The shards read the result from an atomic once a second.
//!
//! Parsing is pure functions over the files' texts, so every layout is tested without a cgroup:
//! bad or missing files mean "no limit found" (`None`), never a panic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How often the limit is read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// v2 `cpu.max`: `"$MAX $PERIOD"`, `MAX` being `max` when unlimited. Cores, or `None`
/// (unlimited or unreadable).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_ascii_whitespace();
    let quota = it.next()?;
    let period = it.next().unwrap_or("100000");
    if quota == "max" {
        return None;
    }
    ratio(quota, period)
}

/// v1 `cpu.cfs_quota_us` (`-1` when unlimited) and `cpu.cfs_period_us`. Cores, or `None`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    ratio(quota.trim(), period.trim())
}

fn ratio(quota: &str, period: &str) -> Option<f64> {
    // Negative quota (-1) is "no limit"; parsing as u64 refuses it, as it refuses garbage.
    let q: u64 = quota.parse().ok()?;
    let p: u64 = period.parse().ok()?;
    if q == 0 || p == 0 {
        return None;
    }
    Some(q as f64 / p as f64)
}

/// Which cgroup the process is in, from `/proc/self/cgroup` (`id:controllers:path` lines):
/// `(v1 path of the hierarchy holding the cpu controller, v2 path)`.
pub fn cgroup_paths(proc_self_cgroup: &str) -> (Option<String>, Option<String>) {
    let (mut v1, mut v2) = (None, None);
    for line in proc_self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_string());
        }
    }
    (v1, v2)
}

/// A cgroup filesystem mount: the cgroup at its root and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub root: String,
    pub mount_point: String,
}

/// The v1 mount carrying the cpu controller and the v2 mount, from `/proc/self/mountinfo`
/// (`id parent maj:min root mount-point options [optional...] - fstype source super-options`).
pub fn cgroup_mounts(mountinfo: &str) -> (Option<CgroupMount>, Option<CgroupMount>) {
    let (mut v1, mut v2) = (None, None);
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
            continue;
        };
        let m = CgroupMount {
            root: unescape(root),
            mount_point: unescape(mount_point),
        };
        match *fstype {
            "cgroup2" if v2.is_none() => v2 = Some(m),
            "cgroup"
                if v1.is_none() && r.get(2).is_some_and(|o| o.split(',').any(|c| c == "cpu")) =>
            {
                v1 = Some(m)
            }
            _ => {}
        }
    }
    (v1, v2)
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's cgroup directory and its ancestors up to the mount point, leaf first.
/// `path` is the cgroup as `/proc/self/cgroup` names it; the mount shows the cgroup `root` at
/// its mount point (a container usually sees its own cgroup mounted as `/`, and with a cgroup
/// namespace its path is `/` too).
pub fn cgroup_dirs(m: &CgroupMount, path: &str) -> Vec<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        match path.strip_prefix(m.root.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            // Not under the mount's root: only the mount point itself is ours to read.
            _ => "",
        }
    };
    let mut dirs = Vec::new();
    let mut rel = rel.trim_end_matches('/');
    loop {
        // `..` would climb out of the mount; treat the path as garbage past that point.
        if rel.split('/').any(|c| c == "..") {
            rel = "";
        }
        dirs.push(Path::new(&m.mount_point).join(rel.trim_start_matches('/')));
        if rel.is_empty() {
            return dirs;
        }
        rel = match rel.rfind('/') {
            Some(i) => &rel[..i],
            None => "",
        };
    }
}

/// The process's CPU limit in cores (the smallest quota on the way from its cgroup up to the
/// mount's root), or `None` when no quota applies or nothing could be read. `read` returns a
/// file's text; the real one is [`read_cpu_limit`].
pub fn detect(read: impl Fn(&Path) -> Option<String>) -> Option<f64> {
    let cgroups = read(Path::new("/proc/self/cgroup"))?;
    let mounts = read(Path::new("/proc/self/mountinfo"))?;
    let (v1_path, v2_path) = cgroup_paths(&cgroups);
    let (v1_mount, v2_mount) = cgroup_mounts(&mounts);
    let smallest = |it: &mut dyn Iterator<Item = Option<f64>>| {
        it.flatten()
            .filter(|c| c.is_finite() && *c > 0.0)
            .reduce(f64::min)
    };
    // cgroup v1 (or a hybrid host: v2 mounted, but the cpu controller on v1).
    if let (Some(p), Some(m)) = (&v1_path, &v1_mount) {
        return smallest(&mut cgroup_dirs(m, p).into_iter().map(|d| {
            parse_cfs(
                &read(&d.join("cpu.cfs_quota_us"))?,
                &read(&d.join("cpu.cfs_period_us"))?,
            )
        }));
    }
    if let (Some(p), Some(m)) = (&v2_path, &v2_mount) {
        return smallest(
            &mut cgroup_dirs(m, p)
                .into_iter()
                .map(|d| parse_cpu_max(&read(&d.join("cpu.max"))?)),
        );
    }
    None
}

/// [`detect`] on this process's /proc and cgroup filesystem.
pub fn read_cpu_limit() -> Option<f64> {
    detect(|p| std::fs::read_to_string(p).ok())
}

/// The limit as the shards read it: thousandths of a core (0 = none), and the shard count it
/// is divided among.
#[derive(Debug)]
pub struct CpuBudget {
    millicores: AtomicU32,
    shards: u32,
}

impl CpuBudget {
    pub fn new(limit: Option<f64>, shards: usize) -> Self {
        let b = CpuBudget {
            millicores: AtomicU32::new(0),
            shards: shards.max(1) as u32,
        };
        b.set(limit);
        b
    }

    /// Store a newly read limit; true when it changed.
    pub fn set(&self, limit: Option<f64>) -> bool {
        let m = limit.map_or(0, |c| {
            (c * 1000.0).round().clamp(1.0, u32::MAX as f64) as u32
        });
        self.millicores.swap(m, Ordering::Relaxed) != m
    }

    /// The process's CPU limit in cores, `None` when unlimited.
    pub fn limit(&self) -> Option<f64> {
        match self.millicores.load(Ordering::Relaxed) {
            0 => None,
            m => Some(f64::from(m) / 1000.0),
        }
    }

    /// The share of a core each shard may use: the limit split evenly, at most one core (a
    /// shard is one thread). 1.0 when unlimited.
    pub fn shard_share(&self) -> f64 {
        shard_share(self.limit(), self.shards as usize)
    }
}

/// See [`CpuBudget::shard_share`].
pub fn shard_share(limit: Option<f64>, shards: usize) -> f64 {
    match limit {
        Some(c) if c > 0.0 => (c / shards.max(1) as f64).min(1.0),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn v2_cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("25000 100000\n"), Some(0.25));
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        // The period may be left out when written; the kernel always prints it.
        assert_eq!(parse_cpu_max("50000"), Some(0.5));
        for junk in [
            "",
            "\n",
            "max",
            "-1 100000",
            "x 100000",
            "25000 0",
            "0 100000",
            "1 y",
        ] {
            assert_eq!(parse_cpu_max(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn v1_quota_and_period() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("2500\n", "10000\n"), Some(0.25));
        assert_eq!(parse_cfs("200000", "100000"), Some(2.0));
        assert_eq!(parse_cfs("", "100000"), None);
        assert_eq!(parse_cfs("100", "0"), None);
        assert_eq!(parse_cfs("1e5", "100000"), None);
        assert_eq!(parse_cfs("99999999999999999999999", "1"), None);
    }

    #[test]
    fn proc_self_cgroup_v1_hybrid_and_v2() {
        // This machine: cgroup v1 with a v2 hierarchy mounted beside it (hybrid).
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/8\n2:cpuacct:/\n1:cpu:/bench\n0::/\n";
        assert_eq!(
            cgroup_paths(hybrid),
            (Some("/bench".into()), Some("/".into()))
        );
        let joint = "3:cpu,cpuacct:/kubepods/burstable/pod1/c1\n2:cpuset:/x\n";
        assert_eq!(
            cgroup_paths(joint),
            (Some("/kubepods/burstable/pod1/c1".into()), None)
        );
        assert_eq!(
            cgroup_paths("0::/kubepods.slice/a.scope\n"),
            (None, Some("/kubepods.slice/a.scope".into()))
        );
        // cpuacct alone is not the cpu controller; garbage lines are skipped.
        assert_eq!(cgroup_paths("2:cpuacct:/a\nnonsense\n::\n"), (None, None));
        assert_eq!(cgroup_paths(""), (None, None));
    }

    #[test]
    fn mountinfo_finds_the_cpu_controller_and_v2() {
        let mi = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let (v1, v2) = cgroup_mounts(mi);
        assert_eq!(v1.unwrap().mount_point, "/sys/fs/cgroup/cpu");
        assert_eq!(v2.unwrap().mount_point, "/sys/fs/cgroup/unified");
        // A container's view: its own cgroup mounted at the root, optional fields present.
        let c = "1 0 0:1 /kubepods/pod1/c1 /sys/fs/cgroup/cpu,cpuacct ro,nosuid master:12 - cgroup cgroup rw,cpu,cpuacct\n";
        let (v1, v2) = cgroup_mounts(c);
        assert_eq!(
            v1,
            Some(CgroupMount {
                root: "/kubepods/pod1/c1".into(),
                mount_point: "/sys/fs/cgroup/cpu,cpuacct".into()
            })
        );
        assert_eq!(v2, None);
        let (v1, v2) = cgroup_mounts("nonsense\n1 2 - \n - cgroup2\n");
        assert_eq!((v1, v2), (None, None));
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\04"), "/a\\04");
    }

    #[test]
    fn dirs_walk_up_to_the_mount_point() {
        let m = CgroupMount {
            root: "/".into(),
            mount_point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(
            cgroup_dirs(&m, "/kubepods/pod1/c1"),
            [
                "/sys/fs/cgroup/kubepods/pod1/c1",
                "/sys/fs/cgroup/kubepods/pod1",
                "/sys/fs/cgroup/kubepods",
                "/sys/fs/cgroup"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(cgroup_dirs(&m, "/"), [PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(cgroup_dirs(&m, ""), [PathBuf::from("/sys/fs/cgroup")]);
        // The container's own cgroup is the mount's root: only the mount point is visible.
        let c = CgroupMount {
            root: "/kubepods/pod1/c1".into(),
            mount_point: "/sys/fs/cgroup/cpu".into(),
        };
        assert_eq!(
            cgroup_dirs(&c, "/kubepods/pod1/c1"),
            [PathBuf::from("/sys/fs/cgroup/cpu")]
        );
        assert_eq!(
            cgroup_dirs(&c, "/kubepods/pod1/c1/sub"),
            ["/sys/fs/cgroup/cpu/sub", "/sys/fs/cgroup/cpu"].map(PathBuf::from)
        );
        // Elsewhere, or trying to climb out: the mount point only.
        assert_eq!(
            cgroup_dirs(&c, "/other"),
            [PathBuf::from("/sys/fs/cgroup/cpu")]
        );
        assert_eq!(
            cgroup_dirs(&c, "/kubepods/pod1/c10"),
            [PathBuf::from("/sys/fs/cgroup/cpu")]
        );
        assert_eq!(
            cgroup_dirs(&m, "/a/../../etc"),
            [PathBuf::from("/sys/fs/cgroup")]
        );
    }

    fn fs(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let m: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| m.get(p).cloned()
    }

    const MI_V1: &str = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    const MI_V2: &str = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn v1_nested_takes_the_smallest_quota() {
        let read = fs(&[
            ("/proc/self/cgroup", "1:cpu:/pod/c1\n0::/\n"),
            ("/proc/self/mountinfo", MI_V1),
            ("/sys/fs/cgroup/cpu/pod/c1/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/cpu/pod/c1/cpu.cfs_period_us", "100000\n"),
            ("/sys/fs/cgroup/cpu/pod/cpu.cfs_quota_us", "150000\n"),
            ("/sys/fs/cgroup/cpu/pod/cpu.cfs_period_us", "100000\n"),
            ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(detect(read), Some(1.5));
        // The leaf tighter than its parent.
        let read = fs(&[
            ("/proc/self/cgroup", "1:cpu:/pod/c1\n"),
            ("/proc/self/mountinfo", MI_V1),
            ("/sys/fs/cgroup/cpu/pod/c1/cpu.cfs_quota_us", "2500\n"),
            ("/sys/fs/cgroup/cpu/pod/c1/cpu.cfs_period_us", "10000\n"),
            ("/sys/fs/cgroup/cpu/pod/cpu.cfs_quota_us", "150000\n"),
            ("/sys/fs/cgroup/cpu/pod/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(detect(read), Some(0.25));
    }

    #[test]
    fn v2_limit_and_unlimited() {
        let read = fs(&[
            (
                "/proc/self/cgroup",
                "0::/kubepods.slice/pod.slice/c.scope\n",
            ),
            ("/proc/self/mountinfo", MI_V2),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/c.scope/cpu.max",
                "max 100000\n",
            ),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/cpu.max",
                "100000 100000\n",
            ),
            ("/sys/fs/cgroup/kubepods.slice/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(detect(read), Some(1.0));
        let read = fs(&[
            ("/proc/self/cgroup", "0::/\n"),
            ("/proc/self/mountinfo", MI_V2),
            // The root cgroup has no cpu.max at all.
        ]);
        assert_eq!(detect(read), None);
        // A hybrid host with the cpu controller on v1 reads v1, even with v2 mounted.
        let read = fs(&[
            ("/proc/self/cgroup", "1:cpu:/\n0::/\n"),
            ("/proc/self/mountinfo", MI_V1),
            ("/sys/fs/cgroup/unified/cpu.max", "50000 100000\n"),
            ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(detect(read), None);
    }

    #[test]
    fn garbage_and_missing_files_mean_no_limit() {
        assert_eq!(detect(fs(&[])), None);
        assert_eq!(
            detect(fs(&[
                ("/proc/self/cgroup", "\u{0}\u{1}garbage"),
                ("/proc/self/mountinfo", "x - y")
            ])),
            None
        );
        let read = fs(&[
            ("/proc/self/cgroup", "0::/a\n"),
            ("/proc/self/mountinfo", MI_V2),
            ("/sys/fs/cgroup/a/cpu.max", "lots 100000\n"),
            ("/sys/fs/cgroup/cpu.max", "\n"),
        ]);
        assert_eq!(detect(read), None);
    }

    /// Whatever this machine has, reading it works and gives a positive figure or none.
    #[test]
    fn reads_this_process() {
        if let Some(c) = read_cpu_limit() {
            assert!(c > 0.0 && c.is_finite(), "{c}");
        }
    }

    #[test]
    fn budget_splits_the_limit_among_shards_at_most_a_core_each() {
        assert_eq!(shard_share(None, 4), 1.0);
        assert_eq!(shard_share(Some(0.25), 1), 0.25);
        assert_eq!(shard_share(Some(1.0), 4), 0.25);
        assert_eq!(shard_share(Some(8.0), 2), 1.0);
        assert_eq!(shard_share(Some(1.5), 0), 1.0);
        let b = CpuBudget::new(Some(0.25), 1);
        assert_eq!(b.limit(), Some(0.25));
        assert_eq!(b.shard_share(), 0.25);
        assert!(!b.set(Some(0.25)));
        assert!(b.set(None));
        assert_eq!((b.limit(), b.shard_share()), (None, 1.0));
        // A tiny quota is still a limit, never "unlimited".
        b.set(Some(0.0001));
        assert_eq!(b.limit(), Some(0.001));
    }
}
