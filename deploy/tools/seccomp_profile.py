#!/usr/bin/env python3
"""Writes deploy/seccomp/relay-io-uring.json: a seccomp profile for the relay's pod that is the
container runtimes' default policy plus io_uring.

Why: Docker (since 25.0), containerd (since 1.7) and CRI-O removed io_uring_setup,
io_uring_enter and io_uring_register from their default profiles after a run of io_uring
privilege-escalation bugs, so a pod with `seccompProfile: RuntimeDefault` (the chart's default)
gets EPERM from io_uring_setup and the relay falls back to its epoll driver. This profile keeps
the default's shape (deny by default with EPERM, allow by name) for what a pod without
capabilities may call on x86_64 and aarch64, and adds the three io_uring calls. The trade-off is
in deploy/README.md ("Seccomp and io_uring").

The format is the OCI runtime spec's `linux.seccomp` object (what containerd and CRI-O read for a
`Localhost` profile; Docker's `--security-opt seccomp=` reads it too): no Docker-only conditions
(`includes`/`excludes` on capabilities), because a runtime that ignores them would apply a
capability-only rule to everyone. So the default's rules that need CAP_SYS_ADMIN, CAP_SYS_PTRACE,
CAP_SYS_MODULE and friends are left out (the chart drops every capability), and so are rules for
other architectures' calls. Names a kernel does not know (32-bit variants on a 64-bit-only kernel)
are skipped by runc and crun.

  python3 deploy/tools/seccomp_profile.py          # rewrite the JSON
  python3 deploy/tools/seccomp_profile.py --check  # exit 1 if the JSON is not what this writes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "seccomp" / "relay-io-uring.json"

# The addition, and the only reason this profile exists.
IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]

# The runtime default's unconditional allow list, grouped for review. A group per concern keeps
# a diff against a runtime's new default readable.
ALLOWED = {
    "files and directories": """
        access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2 dup3
        faccessat faccessat2 fadvise64 fadvise64_64 fallocate fchdir fchmod fchmodat fchmodat2
        fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock
        fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
        ftruncate64 futimesat getcwd getdents getdents64 getxattr lchown lchown32 lgetxattr link
        linkat listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 mkdir
        mkdirat mknod mknodat name_to_handle_at newfstatat open openat openat2 pread64 preadv
        preadv2 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv removexattr
        rename renameat renameat2 rmdir sendfile sendfile64 setxattr splice stat stat64 statfs
        statfs64 statx symlink symlinkat sync sync_file_range syncfs tee truncate truncate64
        umask unlink unlinkat utime utimensat utimensat_time64 utimes vmsplice write writev
    """,
    "memory": """
        brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2 mlockall mmap mmap2
        mprotect mremap msync munlock munlockall munmap pkey_alloc pkey_free pkey_mprotect
        remap_file_pages map_shadow_stack
    """,
    "processes, threads and signals": """
        capget capset execve execveat exit exit_group fork get_robust_list get_thread_area
        getcpu getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
        getitimer getpgid getpgrp getpid getppid getpriority getresgid getresgid32 getresuid
        getresuid32 getrlimit getrusage getsid gettid getuid getuid32 ioprio_get ioprio_set kill
        pause pidfd_open pidfd_send_signal prctl prlimit64 process_mrelease restart_syscall rseq
        rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
        rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
        sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
        sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
        sched_setparam sched_setscheduler sched_yield seccomp set_robust_list set_thread_area
        set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups
        setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
        setresuid setresuid32 setreuid setreuid32 setrlimit setsid setuid setuid32 sigaltstack
        sigprocmask sigreturn tgkill tkill ugetrlimit vfork wait4 waitid waitpid
        landlock_add_rule landlock_create_ruleset landlock_restrict_self
    """,
    "time and timers": """
        adjtimex alarm clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
        clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 gettimeofday
        nanosleep time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
        timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
        timerfd_settime timerfd_settime64 times
    """,
    "waiting and events (epoll: the relay's fallback driver)": """
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
        epoll_wait_old eventfd eventfd2 futex futex_requeue futex_time64 futex_wait futex_waitv
        futex_wake inotify_add_watch inotify_init inotify_init1 inotify_rm_watch poll ppoll
        ppoll_time64 pselect6 pselect6_time64 select _newselect signalfd signalfd4 fanotify_mark
        pipe pipe2
    """,
    "sockets (socket itself is below: not AF_VSOCK)": """
        accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom
        recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown
        socketcall socketpair
    """,
    "System V IPC, POSIX message queues, AIO": """
        ipc msgctl msgget msgrcv msgsnd semctl semget semop semtimedop semtimedop_time64 shmat
        shmctl shmdt shmget mq_getsetattr mq_notify mq_open mq_timedreceive
        mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink io_cancel io_destroy
        io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit
    """,
    "system information": """
        getrandom sysinfo uname cachestat ioctl
    """,
    "x86_64 only": """
        arch_prctl modify_ldt
    """,
}

# Namespace flags of clone(2): refused without CAP_SYS_ADMIN, as the runtime default does.
CLONE_NAMESPACES = 0x7E020000
AF_VSOCK = 40
ENOSYS = 38


def profile() -> dict:
    names: list[str] = []
    for group in ALLOWED.values():
        names.extend(group.split())
    names.extend(IO_URING)
    rules = [
        {"names": sorted(set(names)), "action": "SCMP_ACT_ALLOW"},
        # Threads, not namespaces.
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": CLONE_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        # clone3's flags are in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]},
    ]
    # personality(2): the Linux personalities and the query, nothing else.
    for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64",
                          "SCMP_ARCH_ARM"],
        "syscalls": rules,
    }


def text() -> str:
    return json.dumps(profile(), indent=2) + "\n"


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text():
            print(f"{OUT} is not what {Path(__file__).name} writes: run it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
