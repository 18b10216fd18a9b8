#!/usr/bin/env bash
# The whole test suite: installs and builds first, then runs
#   1. every test (unit, fuzz-corpus replays, integration against real tools)
#      on a -Werror build;
#   2. unit tests, fuzz replays and the import/flatten integration tests on an
#      ASan+UBSan build;
#   3. the concurrent import pipeline under ThreadSanitizer.
# An unexpected skip is a failure, and so is a process a test left running.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" -eq 0 ] || { echo "test: run as root (the tests mount EROFS images and start servers)"; exit 1; }

passed=0; failed=0

# Every process a test starts inherits this mark, so anything still running
# with it after a stage was left behind by a test: list it, end it, and fail.
export KINDLING_TEST_RUN="suite-$$-$(date +%s%N)"
left_running() {
  local stage=$1 pid found=0 mark="KINDLING_TEST_RUN=$KINDLING_TEST_RUN"
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$pid" != $$ ] && [ "$pid" != "$BASHPID" ] || continue
    { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "$mark" || continue
    found=$((found + 1))
    echo "test: left running after the $stage stage: pid $pid: $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-200)" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$found" -gt 0 ]; then
    echo "test: $found processes were left running by the $stage tests; each test must end what it starts" >&2
    failed=$((failed + 1))
  fi
}

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
left_running release

scripts/setup.sh "$top/build-asan" -DKINDLING_WERROR=ON -DKINDLING_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
echo "== ASan+UBSan build: every test not labelled no-asan"
ASAN_OPTIONS=detect_leaks=1 run_ctest build-asan -LE no-asan
left_running ASan

scripts/setup.sh "$top/build-tsan" -DKINDLING_WERROR=ON -DKINDLING_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug
echo "== TSan build: every test not labelled no-tsan (the concurrent paths)"
TSAN_OPTIONS=halt_on_error=1 run_ctest build-tsan -LE no-tsan
left_running TSan

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
