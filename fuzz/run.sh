#!/usr/bin/env bash
# Runs the fuzz targets, each for a bounded time, and prints a table of what happened.
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
# Exits non-zero if a target failed to build or found a crash (its input is in
# fuzz/artifacts/TARGET/). FOLIO_FUZZ_TARGET_DIR overrides the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes -Z sanitizer flags; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
build=(--fuzz-dir fuzz ${FOLIO_FUZZ_TARGET_DIR:+--target-dir "$FOLIO_FUZZ_TARGET_DIR"})

logs=fuzz/artifacts/logs
mkdir -p "$logs"
rows=() failed=0
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    rows+=("$t - - no-such-target"); failed=1; continue
  fi
  mkdir -p "fuzz/corpus/$t"
  if [ -d "fuzz/seeds/$t" ]; then cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t/" 2>/dev/null || true; fi
  echo "==> $t (${secs}s)" >&2
  log="$logs/$t.log"
  rc=0
  cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
  if [ "$rc" = 0 ]; then
    result=ok
  elif [ -n "$artifact" ]; then
    result="CRASH $artifact"; failed=1
  elif [ -z "$execs" ]; then
    result="FAILED (no run; see $log)"; failed=1
  else
    result="FAILED rc=$rc (see $log)"; failed=1
  fi
  rows+=("$t ${execs:--} ${rate:--} $result")
done

printf '\n%-16s %12s %9s  %s\n' target execs execs/s result
for r in "${rows[@]}"; do
  read -r t e s res <<<"$r"
  printf '%-16s %12s %9s  %s\n' "$t" "$e" "$s" "$res"
done
if [ "$failed" != 0 ]; then
  echo >&2
  echo "Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz TARGET ARTIFACT" >&2
  echo "(logs in $logs/)" >&2
fi
exit "$failed"
