#!/usr/bin/env bash
# Runs Debian's rtpengine (package rtpengine-daemon, 10.5 on bookworm) in the foreground for the
# side-by-side benchmark in BENCHMARKS.md: userspace only (table = -1, no kernel module), media
# and the ng control protocol on loopback only, one media worker thread. Ctrl-C stops it.
#
#   bash scripts/rtpengine.sh                 # ng on 127.0.0.1:22222, any CPU
#   CPU=0 bash scripts/rtpengine.sh           # the whole process pinned to CPU 0 (taskset)
#   NG_PORT=2223 PORT_MIN=40000 PORT_MAX=59999 THREADS=1 LOG_LEVEL=4 bash scripts/rtpengine.sh
#
# Then drive it with: target/release/loadtest --target rtpengine --rtpengine-ng 127.0.0.1:22222
#   --rtpengine-pid <pid> run ...  (or let loadtest start it itself: --target rtpengine).
# Install once with: apt-get install -y rtpengine-daemon (the packaged service is not needed and
# not started by this script). This is a benchmark aid, not part of the tests or CI.
set -euo pipefail

NG_PORT=${NG_PORT:-22222}
PORT_MIN=${PORT_MIN:-40000}
PORT_MAX=${PORT_MAX:-59999}
THREADS=${THREADS:-1}
LOG_LEVEL=${LOG_LEVEL:-4}
BIN=${RTPENGINE_BIN:-$(command -v rtpengine || echo /usr/bin/rtpengine)}
CONF=${CONF:-/tmp/rtpengine-bench.conf}

if [[ ! -x "$BIN" ]]; then
    echo "rtpengine not found; install it with: apt-get install -y rtpengine-daemon" >&2
    exit 1
fi

cat >"$CONF" <<EOF
[rtpengine]
# Userspace forwarding only: no kernel table, no xt_RTPENGINE module.
table = -1
# Loopback only, for media and for control.
interface = 127.0.0.1
listen-ng = 127.0.0.1:${NG_PORT}
port-min = ${PORT_MIN}
port-max = ${PORT_MAX}
num-threads = ${THREADS}
media-num-threads = 1
timeout = 60
silent-timeout = 3600
delete-delay = 0
log-level = ${LOG_LEVEL}
EOF

echo "rtpengine: config $CONF, ng 127.0.0.1:${NG_PORT}, ports ${PORT_MIN}-${PORT_MAX}, ${THREADS} thread(s)${CPU:+, CPU $CPU}" >&2
if [[ -n "${CPU:-}" ]]; then
    exec taskset -c "$CPU" "$BIN" --config-file="$CONF" --foreground --log-stderr
fi
exec "$BIN" --config-file="$CONF" --foreground --log-stderr
