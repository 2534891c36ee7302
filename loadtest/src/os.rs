//! The operating-system calls std does not wrap, as safe functions: pinning threads, their IDs,
//! socket buffers, nice, limits, signals, and what a started target does between fork and exec.
//! With `raw/mmsg.rs` and `generator/timerfd.rs` (the batch and timer I/O), the
//! only code of this crate allowed `unsafe`; every block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// A CPU set holding only `cpu`; `None` past what a `cpu_set_t` holds.
fn cpu_set(cpu: usize) -> Option<libc::cpu_set_t> {
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return None;
    }
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set); CPU_SET writes inside it,
    // `cpu` being in range.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        Some(set)
    }
}

/// Pins the calling thread to `cpu` (best effort: an invalid CPU leaves it unpinned).
pub fn pin_current_thread(cpu: usize) -> bool {
    let Some(set) = cpu_set(cpu) else {
        return false;
    };
    // SAFETY: sched_setaffinity(0, ..) reads `set` of the size given and affects only the
    // calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// The calling thread's kernel ID (for its CPU time in /proc).
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Socket buffers of `bytes`: past `net.core.rmem_max`/`wmem_max` (212,992 bytes by default)
/// when allowed (root: the `*BUFFORCE` options), else as much as the limits give. A socket
/// shared by hundreds of calls needs more than the default to ride out a descheduled reader.
pub fn set_buffers(s: &UdpSocket, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt: libc::c_int| {
        // SAFETY: a valid fd and a c_int option value of the declared size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // Failure only leaves the default buffer size.
        let _ = set(force) || set(plain);
    }
}

/// Timer slack of the calling thread, in ns (50 µs by default would bunch evenly spaced
/// sends).
pub fn set_timer_slack(ns: u64) {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong);
    }
}

/// Sets the calling process's nice value (threads and children started later inherit it).
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority on the calling process (who = 0) has no memory effects.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Clock ticks per second of the CPU times in /proc (100 when unknown).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The machine's online CPUs (not this process's: --taskset pins it to one).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
        .unwrap_or(1)
        .max(1)
}

/// Sends `signal` to our own `child` (nothing if it has no valid pid).
pub fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child by its pid has no memory effects here.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it): every call
/// costs the relay three sockets and, with per-peer sockets, the generator two.
pub fn raise_fd_limit() {
    // SAFETY: plain struct in/out parameters.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A target started with `cmd` dies with this process (SIGKILL if we go away without stopping
/// it) and runs on `cpu`, if given.
pub fn die_with_parent_on_cpu(cmd: &mut Command, cpu: Option<usize>) {
    let set = cpu.and_then(cpu_set);
    // SAFETY: only async-signal-safe calls (prctl, sched_setaffinity) between fork and exec,
    // on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(set) = &set {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
            }
            Ok(())
        });
    }
}
