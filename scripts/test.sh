#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration tests of every crate.
# Works on a fresh Debian machine with the Rust toolchain; installs anything else it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# A cold run writes about 1.7 GB to target/ (see README). Say how much room there is, so a
# "No space left on device" from the linker is recognised for what it is.
disk_free() { df -Pk "${CARGO_TARGET_DIR:-target}" 2>/dev/null || df -Pk .; }
free_kb=$(disk_free | awk 'NR==2 {print $4}')
echo "== disk: $((free_kb / 1024 / 1024)) GiB free where target/ lives"
if [ "${free_kb:-0}" -lt $((4 * 1024 * 1024)) ]; then
  echo "warning: under 4 GiB free; a cold build and test run needs about 2 GiB" >&2
fi
trap 'echo "== disk at exit: $(disk_free | awk '"'"'NR==2 {print int($4/1048576)}'"'"') GiB free"' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== promtool (checks the alert rules in deploy/validate.py and /metrics in relay/tests/ops_metrics.rs)"
# Debian's `prometheus` package carries promtool. Only the binary is unpacked (apt-get download +
# dpkg-deb -x): installing the package would also install and start a Prometheus server.
if [ -z "${PROMTOOL:-}" ]; then
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL=$(command -v promtool)
  else
    PROMTOOL="$PWD/target/tools/promtool"
    if [ ! -x "$PROMTOOL" ]; then
      tmp=$(mktemp -d)
      if (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } \
            && dpkg-deb -x prometheus_*.deb x); then
        install -D -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL"
      else
        echo "warning: cannot fetch Debian's prometheus package; the promtool check will be skipped" >&2
      fi
      rm -rf "$tmp"
    fi
  fi
fi
export PROMTOOL
"$PROMTOOL" --version 2>/dev/null | head -1 || true

echo "== tshark (decodes the relay's HEP3 export in relay/tests/hep_export.rs)"
if ! command -v tshark >/dev/null 2>&1; then
  # Debian's Wireshark has no HEP dissector; the test loads deploy/tools/hep3.lua into tshark.
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tshark >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tshark >/dev/null 2>&1; }; } \
    || echo "warning: cannot install tshark; the HEP test's tshark half will be skipped" >&2
fi

echo "== deploy/ manifests, chart and dashboard (stdlib Python + PyYAML)"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 deploy/validate.py

echo "== Python interop peers (e2e/python: aiortc, aioice, pyOpenSSL, pylibsrtp; pinned wheels)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --only-binary=:all: \
  -r e2e/python/requirements.txt

echo "== opus-tools (opusinfo reads the Ogg Opus recordings in relay/tests/process.rs, relay/src/record)"
if ! command -v opusinfo >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq opus-tools >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq opus-tools >/dev/null 2>&1; } \
    || echo "warning: cannot install opus-tools; the opusinfo checks will be skipped" >&2
fi
command -v opusinfo >/dev/null 2>&1 && opusinfo -V 2>&1 | head -1 || true

echo "== chromium + iproute2 (e2e/tests/listen_in.rs: a supervisor listens in from headless Chromium, run in a private network namespace)"
if ! command -v chromium >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends chromium iproute2 >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 \
         && $sudo apt-get install -y -qq --no-install-recommends chromium iproute2 >/dev/null 2>&1; } \
    || echo "warning: cannot install chromium/iproute2; the Chromium listen-in test will be skipped" >&2
fi
command -v chromium >/dev/null 2>&1 && chromium --version 2>/dev/null | head -1 || true

echo "== tests"
# The engine's tests a second time on the other I/O driver: the first run uses the default
# (auto: io_uring where the kernel allows it), this one the epoll fallback. Only the test
# binaries that start an engine run twice (the relay crate's unit tests drive both drivers
# themselves).
ENGINE_TESTS=(-p relay --test admission --test health_probes --test hep_export --test ops_drain
  --test ops_metrics --test process --test refusals --test spoofed_flood --test tombstones)
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  echo "== engine tests again on the epoll driver (RELAY_IO_DRIVER=epoll)"
  RELAY_IO_DRIVER=epoll cargo nextest run --locked --no-fail-fast "${ENGINE_TESTS[@]}"
  RELAY_IO_DRIVER=epoll cargo nextest run --locked --no-fail-fast -p e2e
  # nextest does not run doctests
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
  echo "== engine tests again on the epoll driver (RELAY_IO_DRIVER=epoll)"
  RELAY_IO_DRIVER=epoll cargo test --locked --no-fail-fast "${ENGINE_TESTS[@]}"
  RELAY_IO_DRIVER=epoll cargo test --locked --no-fail-fast -p e2e
fi
