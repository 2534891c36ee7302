#!/usr/bin/env bash
# Soak: the relay binary under the load test's churn mode (calls created and ended
# continuously) for a long time, sampling its RSS, open descriptors and active calls every
# SAMPLE seconds into a CSV, then checking that nothing leaked:
#   - RSS flat: mean of the last minute within RSS_TOLERANCE (ratio) of minute 2's mean
#     (minute 1 is warm-up: allocator arenas, DTLS identity, thread stacks);
#   - open descriptors back to the baseline sampled before the first call;
#   - active calls 0 once the load test has ended every call.
# Not part of CI: it takes DURATION plus a minute. Loopback only.
#
# Usage: scripts/soak.sh [--duration 10m] [--rate 50] [--call-duration 6s] [--out DIR]
#   rate x call-duration = concurrent calls (50/s x 6 s = 300).
# Environment: SAMPLE (s, default 10), RSS_TOLERANCE (default 0.10), FD_SLACK (default 0),
#   SHARDS (default 2), RELAY_BIN / LOADTEST_BIN (default: release builds, built if missing).
set -euo pipefail

duration=10m
rate=50
call_duration=6s
out=/tmp/soak-$(date +%Y%m%d-%H%M%S)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --call-duration) call_duration=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
sample=${SAMPLE:-10}
rss_tol=${RSS_TOLERANCE:-0.10}
fd_slack=${FD_SLACK:-0}
shards=${SHARDS:-2}

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
relay_bin=${RELAY_BIN:-$target/release/relay}
loadtest_bin=${LOADTEST_BIN:-$target/release/loadtest}
if [[ ! -x $relay_bin || ! -x $loadtest_bin ]]; then
    (cd "$root" && cargo build --release -p relay -p loadtest)
fi

to_seconds() { # 10m, 90s, 90 -> seconds
    local v=$1
    case "$v" in
        *ms) echo $(( ${v%ms} / 1000 )) ;;
        *m) echo $(( ${v%m} * 60 )) ;;
        *s) echo "${v%s}" ;;
        *) echo "$v" ;;
    esac
}
total=$(to_seconds "$duration")

mkdir -p "$out"
csv=$out/soak.csv
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
control_port=$(free_port)
metrics_port=$(free_port)

"$relay_bin" --control-listen "127.0.0.1:$control_port" --metrics-listen "127.0.0.1:$metrics_port" \
    --shards "$shards" --whatsapp-v6 none --capacity 5000 --max-calls-per-number 5000 \
    >"$out/relay.log" 2>&1 &
relay_pid=$!
loadtest_pid=
cleanup() {
    [[ -n $loadtest_pid ]] && kill "$loadtest_pid" 2>/dev/null || true
    kill "$relay_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

metric() { # value of an unlabelled metric, or empty
    curl -fsS "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null | awk -v m="$1" '$1 == m { print $2 }'
}
for _ in $(seq 100); do
    [[ -n $(metric relay_active_calls) ]] && break
    sleep 0.1
done
[[ -n $(metric relay_active_calls) ]] || { echo "relay did not come up; see $out/relay.log" >&2; exit 1; }

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$relay_pid/status"; }
fds() { ls "/proc/$relay_pid/fd" | wc -l; }
load1() { cut -d' ' -f1 /proc/loadavg; }

baseline_fds=$(fds)
echo "t_s,rss_kb,fds,active_calls,load1" >"$csv"
echo "t_s,rss_kb,fds,active_calls,load1"
row() { # t
    local line="$1,$(rss_kb),$(fds),$(metric relay_active_calls),$(load1)"
    echo "$line" >>"$csv"
    echo "$line"
}
row 0

"$loadtest_bin" --relay-addr "http://127.0.0.1:$control_port" --relay-pid "$relay_pid" --quiet \
    --json "$out/loadtest.json" churn --rate "$rate" --call-duration "$call_duration" \
    --duration "$duration" >"$out/loadtest.log" 2>&1 &
loadtest_pid=$!

start=$(date +%s)
while kill -0 "$loadtest_pid" 2>/dev/null; do
    sleep "$sample"
    row $(( $(date +%s) - start ))
done
wait "$loadtest_pid" && lt_rc=0 || lt_rc=$?
loadtest_pid=
# The load test ends its calls; give the relay a few samples to settle.
for _ in 1 2 3; do
    sleep "$sample"
    row $(( $(date +%s) - start ))
done

# ---- checks ------------------------------------------------------------------------------
verdict=0
report() { echo "$*" | tee -a "$out/summary.txt"; }
: >"$out/summary.txt"
report "soak: ${total}s churn at ${rate}/s x ${call_duration} (${shards} shards); loadtest exit $lt_rc"
mean_rss() { # from to (seconds, inclusive) -> mean RSS kB
    awk -F, -v a="$1" -v b="$2" 'NR > 1 && $1 >= a && $1 <= b { s += $2; n++ } END { if (n) printf "%d", s / n }' "$csv"
}
minute2=$(mean_rss 60 120)
last=$(mean_rss $(( total - 60 )) "$total")
first_rss=$(awk -F, 'NR == 2 { print $2 }' "$csv")
final=$(tail -1 "$csv")
final_rss=$(echo "$final" | cut -d, -f2)
final_fds=$(echo "$final" | cut -d, -f3)
final_calls=$(echo "$final" | cut -d, -f4)
peak_calls=$(awk -F, 'NR > 1 && $4 > m { m = $4 } END { print m + 0 }' "$csv")
max_load=$(awk -F, 'NR > 1 && $5 > m { m = $5 } END { print m + 0 }' "$csv")
report "RSS kB: start $first_rss, minute-2 mean $minute2, last-minute mean $last, end $final_rss"
report "fds: baseline $baseline_fds, end $final_fds; active calls: peak $peak_calls, end $final_calls; max load1 $max_load"
if [[ -z $minute2 || -z $last ]]; then
    report "FAIL: not enough samples for the RSS comparison (duration too short?)"; verdict=1
elif awk -v a="$minute2" -v b="$last" -v t="$rss_tol" 'BEGIN { exit !(b > a * (1 + t)) }'; then
    report "FAIL: RSS grew more than ${rss_tol} between minute 2 and the last minute"; verdict=1
else
    report "ok: RSS flat within ${rss_tol}"
fi
if (( final_fds > baseline_fds + fd_slack )); then
    report "FAIL: $(( final_fds - baseline_fds )) descriptors more than at the start"; verdict=1
else
    report "ok: descriptors back to baseline"
fi
if [[ $final_calls != 0 ]]; then
    report "FAIL: $final_calls calls still active"; verdict=1
else
    report "ok: no active calls"
fi
(( peak_calls > 0 )) || { report "FAIL: the load test never had a call up"; verdict=1; }
(( lt_rc == 0 )) || report "note: the load test exited $lt_rc (see $out/loadtest.log)"
report "CSV: $csv"
exit $verdict
