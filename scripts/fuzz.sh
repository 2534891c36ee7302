#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) for SECONDS_PER_TARGET seconds (default 10),
# one at a time, each on a copy of its committed seed corpus (fuzz/corpus/<target>/), so runs
# never dirty the tree. Exits non-zero if any target crashed; crashing inputs are left in
# fuzz/artifacts/<target>/ (git-ignored). Prints a table of executions per target at the end.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# cargo-fuzz wants nightly for its -Z flags (-Zsanitizer=address and friends). This project
# pins stable, so RUSTC_BOOTSTRAP=1 lets the stable compiler accept them; the std library is
# not rebuilt with ASan, but our code and every dependency are. FUZZ_SANITIZER=none skips ASan
# (faster, still finds panics and overflows). What cargo-fuzz runs, for the record:
#   RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4
#     -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table
#     -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions
#     -Coverflow-checks -Zsanitizer=address"
#   cargo build --manifest-path fuzz/Cargo.toml --release --bins --target x86_64-unknown-linux-gnu
# The first build instruments the whole dependency tree: several minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
shift || true
sanitizer="${FUZZ_SANITIZER:-address}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed -n 's/\.rs$//p' | sort)
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  cp -r "fuzz/corpus/$t" "$work/$t"
  log="$work/$t.log"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: the relay must not balloon.
  if cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$t" "$work/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    grep -E "panicked|ERROR:|SUMMARY|Test unit written" "$log" | head -20 || true
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
  corpus="$(ls "$work/$t" | wc -l)"
  summary+=("$(printf '%-16s %6ss %12s %10s %6s %7s  %s' "$t" "$secs" "${runs:-?}" \
    "$(( ${runs:-0} / (secs > 0 ? secs : 1) ))" "${cov:-?}" "$corpus" "$status")")
done

echo
printf '%-16s %7s %12s %10s %6s %7s  %s\n' target time execs execs/s cov corpus result
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
