#!/usr/bin/env bash
# The whole test suite: installs and builds first, then runs
#   1. every test (unit, fuzz-corpus replays, integration against real tools)
#      on a -Werror build;
#   2. unit tests, fuzz replays and the import/flatten integration tests on an
#      ASan+UBSan build;
#   3. the concurrent import pipeline under ThreadSanitizer.
# An unexpected skip is a failure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" -eq 0 ] || { echo "test: run as root (the tests mount EROFS images and start servers)"; exit 1; }

passed=0; failed=0
run_ctest() {
  local dir=$1; shift
  local log; log=$(mktemp)
  set +e
  (cd "$dir" && ctest --output-on-failure --timeout 900 -j2 "$@") 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local p f
  p=$(grep -Eo '[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -1 | awk '{print $NF - $4}')
  f=$(grep -Eo '[0-9]+ tests failed out of' "$log" | tail -1 | awk '{print $1}')
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if grep -q '(Skipped)' "$log"; then
    echo "test: a test was skipped; every test must run here" >&2
    failed=$((failed + 1))
  fi
  [ "$rc" -eq 0 ] || [ "${f:-0}" -gt 0 ] || failed=$((failed + 1))
  rm -f "$log"
}

scripts/setup.sh "$top/build" -DKINDLING_WERROR=ON
echo "== release build: all tests"
run_ctest build

scripts/setup.sh "$top/build-asan" -DKINDLING_WERROR=ON -DKINDLING_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
echo "== ASan+UBSan build: every test not labelled no-asan"
ASAN_OPTIONS=detect_leaks=1 run_ctest build-asan -LE no-asan

scripts/setup.sh "$top/build-tsan" -DKINDLING_WERROR=ON -DKINDLING_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug
echo "== TSan build: every test not labelled no-tsan (the concurrent paths)"
TSAN_OPTIONS=halt_on_error=1 run_ctest build-tsan -LE no-tsan

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
