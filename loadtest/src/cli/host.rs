//! The host side of a run: this session's autogroup nice.

/// This session's autogroup nice (`/proc/self/autogroup`, Linux with
/// `kernel.sched_autogroup_enabled = 1`), set for the run and put back when dropped. Without it
/// a process at nice -20 still gets only its session's share of the CPUs: on this project's
/// shared 2-vCPU machine a pinned busy loop got 40 % of its core at nice -20, 99 % with the
/// autogroup at -20 too. (If this process is killed, the session keeps the value.)
pub(super) struct AutogroupNice {
    previous: i32,
}

impl AutogroupNice {
    const PATH: &'static str = "/proc/self/autogroup";

    fn read() -> Option<i32> {
        // "/autogroup-104 nice 0"
        std::fs::read_to_string(Self::PATH)
            .ok()?
            .split_ascii_whitespace()
            .last()?
            .parse()
            .ok()
    }

    pub(super) fn set(nice: i32) -> Option<AutogroupNice> {
        let previous = Self::read()?;
        match std::fs::write(Self::PATH, nice.to_string()) {
            Ok(()) => Some(AutogroupNice { previous }),
            Err(e) => {
                eprintln!("loadtest: warning: cannot set the autogroup nice to {nice}: {e}");
                None
            }
        }
    }
}

impl Drop for AutogroupNice {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.previous.to_string());
    }
}
