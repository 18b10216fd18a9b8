#!/usr/bin/env bash
# The benchmark suite itself: bench/run.sh --quick on the tiny busybox image,
# every scenario but invoke (kindling side by side with podman, skopeo + umoci and the
# page-cached chroot; import; the registry; the warm start; the cache tiers),
# then results.json checked against its schema and every plot against the
# PNG format (tests/tools/check_bench_results.py).  No figure is judged here:
# the suite's numbers are for bench/, this checks that it measures and reports.
# ctest-labels: no-asan (the suite measures the release binaries; what it drives is covered by 13, 30 and 51 under ASan); no-tsan (the same)
. "$(dirname "$0")/lib.sh"
for tool in podman runc skopeo umoci docker-registry memcached gnuplot openssl python3; do
  command -v $tool >/dev/null || die "$tool is missing (scripts/apt-packages.txt)"
done
[ "$(id -u)" = 0 ] || die "needs root (the suite's sandboxes mount images and drop the page cache)"
export KINDLING_BUILD_DIR
bench=$KINDLING_SOURCE_DIR/bench/run.sh

# Bad arguments are refused before anything runs, naming what is wrong.
expect_fail "$bench" --workloads nosuch --out "$T/bad"
grep -q "unknown workload 'nosuch'" "$T/last.err" || die "an unknown workload is not named: $(cat "$T/last.err")"
"$bench" nosuch --out "$T/bad" >"$T/bad.out" 2>&1 && die "an unknown scenario was accepted"
grep -q "unknown scenario 'nosuch'" "$T/bad.out" || die "an unknown scenario is not named: $(cat "$T/bad.out")"
pass "unknown workloads and scenarios are refused by name"

# Every scenario but invoke (bench/invoke.sh drives the service 76 and 77 test, and takes minutes).
timeout 600 "$bench" --quick --workloads tiny --reps 2 --cache-iters 100 --out "$T/out" --cache-dir "$T/cache" \
  crypto import registry coldstart warmstart cache >"$T/run.out" 2>&1 || { tail -30 "$T/run.out" >&2; die "bench/run.sh --quick failed"; }
grep -q "done: $T/out/report.md" "$T/run.out" || die "the suite did not report where its results are"
pass "bench/run.sh --quick ran every scenario ($(grep -c '^\[' "$T/run.out") progress lines)"

python3 "$KINDLING_SOURCE_DIR/tests/tools/check_bench_results.py" "$T/out" tiny >"$T/check.out" ||
  { cat "$T/check.out" >&2; die "the suite's results do not hold up"; }
pass "results.json follows the schema; $(ls "$T/out"/*.png | wc -l) plots are valid PNGs, all linked from report.md"

# The checker itself catches a broken plot and a record without samples.
cp -r "$T/out" "$T/broken"
truncate -s 100 "$T/broken/bytes.png"
python3 - "$T/broken/results.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["records"][0]["samples"] = []
json.dump(d, open(sys.argv[1], "w"))
PY
python3 "$KINDLING_SOURCE_DIR/tests/tools/check_bench_results.py" "$T/broken" tiny >"$T/check2.out" &&
  die "the checker passed a truncated PNG and an empty record"
grep -q "bytes.png: not a valid PNG" "$T/check2.out" || die "the truncated PNG was not named: $(cat "$T/check2.out")"
grep -q "samples must be a non-empty list" "$T/check2.out" || die "the empty record was not named"
pass "the checker names a truncated PNG and a record without samples"
