#!/usr/bin/env python3
"""How late does this machine wake a pinned, top-priority thread? Run it before trusting a
latency SLO from `loadtest`: if a thread that sleeps 1 ms often wakes 5 ms late with nothing
else running, no relay can show a 5 ms p99 here, and capacity searches at that SLO measure the
machine, not the relay.

    python3 scripts/sched-jitter.py            # CPUs 0 and 1, 20 s each, in parallel
    python3 scripts/sched-jitter.py 0 60       # CPU 0 for 60 s

Root raises the thread to nice -20 and its session's autogroup to -20, as `loadtest --nice -20`
does; without root it runs at normal priority and says so.
"""
import os
import sys
import time
from multiprocessing import Process, Queue


def probe(cpu: int, seconds: float, out: Queue) -> None:
    os.sched_setaffinity(0, {cpu})
    prio = "nice -20"
    try:
        os.nice(-20)
        with open("/proc/self/autogroup", "w") as f:
            f.write("-20")
    except OSError:
        prio = "normal priority (not root)"
    late = []
    t = time.perf_counter()
    end = t + seconds
    while t < end:
        time.sleep(0.001)
        now = time.perf_counter()
        late.append((now - t - 0.001) * 1000.0)
        t = now
    late.sort()
    n = len(late)
    out.put(
        f"CPU {cpu} ({prio}): {n} sleeps of 1 ms, late by p50 {late[n // 2]:.2f} ms, "
        f"p99 {late[int(n * 0.99)]:.2f} ms, p99.9 {late[int(n * 0.999)]:.2f} ms, "
        f"max {late[-1]:.2f} ms; over 2 ms: {sum(x > 2 for x in late)}, "
        f"over 5 ms: {sum(x > 5 for x in late)}"
    )


def main() -> None:
    cpus = [int(sys.argv[1])] if len(sys.argv) > 1 else sorted(os.sched_getaffinity(0))[:2]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    out: Queue = Queue()
    procs = [Process(target=probe, args=(c, seconds, out)) for c in cpus]
    for p in procs:
        p.start()
    for line in sorted(out.get() for _ in procs):
        print(line)
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
