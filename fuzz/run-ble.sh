#!/usr/bin/env bash
# Runs every BLE fuzz target for SECONDS each (default 300), JOBS at a time (default 1),
# built optimized with debug assertions and overflow checks (cargo-fuzz's default),
# on the stable toolchain (RUSTC_BOOTSTRAP=1 enables the nightly-only sanitizer flags
# cargo-fuzz passes). Prints one line per target: name, seconds, executions, result.
# Logs go to fuzz/target/logs/; a crash leaves its input in fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-300}
jobs=${2:-1}
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null 2>&1 || { echo "cargo fuzz build failed" >&2; exit 1; }
mkdir -p target/logs
targets=$(cargo fuzz list | grep '^ble_')
run_one() {
  local t=$1 log=target/logs/$1.log
  if cargo fuzz run "$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
  fi
  runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | awk '{print $2" runs in "$5" s"}')
  echo "$t  ${runs:-no stats}  $result"
}
export -f run_one
export seconds
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}'
