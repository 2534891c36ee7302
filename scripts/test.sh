#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration tests of every crate.
# Works on a fresh Debian machine with the Rust toolchain; installs anything else it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== deploy/ manifests, chart and dashboard (stdlib Python + PyYAML)"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 deploy/validate.py

echo "== Python interop peers (e2e/python: aiortc, aioice, pyOpenSSL, pylibsrtp; pinned wheels)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --only-binary=:all: \
  -r e2e/python/requirements.txt

echo "== tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
