#!/bin/bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer targets in build-fuzz (clang, ASan + UBSan) and runs each for SECONDS (default 180), nice'd,
# from seed corpora: configs/*.ini for the config parser, tiny ensembles and a checkpoint that make_seeds.sh makes
# with build/bin/latflow (the normal build) for the readers. Prints executions and findings per target; crashing
# inputs are kept in $OUT/artifacts. Usage: tests/fuzz/run_fuzzers.sh [SECONDS] [OUT=/tmp/latflow_fuzz]
# (The normal build's ctest entries with label fuzz replay the same corpora without libFuzzer: replay_main.cpp.)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-180}
OUT=${2:-/tmp/latflow_fuzz}
LATFLOW=${LATFLOW:-build/bin/latflow}
command -v clang++ >/dev/null || { echo "needs clang (Debian: apt-get install -y clang libfuzzer-14-dev)"; exit 2; }
[ -x "$LATFLOW" ] || { echo "needs the normal build ($LATFLOW) to make the seed files"; exit 2; }
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLATFLOW_FUZZ=ON \
    -DLATFLOW_BUILD_TESTS=OFF >/dev/null
fi
nice ninja -C build-fuzz $(for t in ${TARGETS:-config ensemble checkpoint}; do echo fuzz_$t; done)

mkdir -p "$OUT"/{config,artifacts}
cp configs/*.ini "$OUT/config/"
tests/fuzz/make_seeds.sh "$LATFLOW" "$OUT"
# LibTorch and Open MPI keep global allocations for the life of the process: not our leaks, and not per input.
export ASAN_OPTIONS=detect_leaks=0:detect_container_overflow=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# Fork mode keeps fuzzing after a crash or hang (each is saved to artifacts/) instead of stopping at the first.
for t in ${TARGETS:-config ensemble checkpoint}; do
  log="$OUT/$t.log"
  nice -n 10 build-fuzz/tests/fuzz/fuzz_$t -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$SECONDS_EACH" -timeout=20 -max_len=200000 -rss_limit_mb=4096 \
    -artifact_prefix="$OUT/artifacts/$t-" "$OUT/$t" >"$log" 2>&1 || true
  execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  finds=$(ls "$OUT/artifacts" | grep -c "^$t-" || true)
  echo "fuzz_$t: ${execs:-?} executions in ${SECONDS_EACH}s, $finds crashing/hanging inputs saved (log $log)"
done
