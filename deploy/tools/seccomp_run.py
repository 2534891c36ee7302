#!/usr/bin/env python3
"""Runs a command under a seccomp profile (OCI `linux.seccomp` JSON, such as
deploy/seccomp/relay-io-uring.json), the way runc would install it, to try a profile without a
cluster:

  /usr/bin/python3 deploy/tools/seccomp_run.py deploy/seccomp/relay-io-uring.json -- target/release/relay
  /usr/bin/python3 deploy/tools/seccomp_run.py --default-without-io-uring PROFILE -- CMD

`--default-without-io-uring` drops the io_uring calls from the profile: what the runtimes'
RuntimeDefault does, to see the relay fall back to epoll.

Needs libseccomp's Python binding (Debian: apt-get install python3-seccomp, for /usr/bin/python3).
"""

from __future__ import annotations

import errno
import json
import os
import sys

import seccomp

IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
OPS = {
    "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno.EPERM if errno_ret is None else errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return seccomp.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return seccomp.KILL_PROCESS
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    raise SystemExit(f"unsupported action {name}")


def main() -> int:
    args = sys.argv[1:]
    strip = "--default-without-io-uring" in args
    args = [a for a in args if a != "--default-without-io-uring"]
    if len(args) < 3 or args[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    prof = json.load(open(args[0]))
    f = seccomp.SyscallFilter(defaction=action(prof["defaultAction"], prof.get("defaultErrnoRet")))
    skipped = []
    for rule in prof["syscalls"]:
        act = action(rule["action"], rule.get("errnoRet"))
        conds = []
        for a in rule.get("args") or []:
            op = OPS[a["op"]]
            if op == seccomp.MASKED_EQ:
                conds.append(seccomp.Arg(a["index"], op, a["value"], a.get("valueTwo", 0)))
            else:
                conds.append(seccomp.Arg(a["index"], op, a["value"]))
        for name in rule["names"]:
            if strip and name in IO_URING:
                continue
            try:
                f.add_rule(act, name, *conds)
            except (ValueError, RuntimeError):
                skipped.append(name)  # not a syscall of this architecture: runc skips it too
    f.load()
    if skipped and os.environ.get("SECCOMP_RUN_VERBOSE"):
        print(f"seccomp_run: not on this architecture: {' '.join(skipped)}", file=sys.stderr)
    os.execvp(args[2], args[2:])


if __name__ == "__main__":
    sys.exit(main())
