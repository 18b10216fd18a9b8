#!/usr/bin/env bash
# Warm process-sandbox start: `kindling run` of a small Python image with L1
# and the page cache warm, against the floor, `unshare -mpf --mount-proc
# chroot TREE python3 -c 'print(1)'` on the same page-cached unpacked tree.
# A measurement tool, not a test: it asserts nothing about times.
#
#   tests/tools/warmstart.sh [ROUNDS]     (default 7; needs root)
#
# The image is scripts/python-rootfs.sh (python3, its loader and libraries)
# plus the standard library as a second layer, imported with chunkify into a
# private KINDLING_HOME.  One warm-up run of each fills L1 and the page cache;
# then each round runs, alternating:
#   kindling      kindling run IMAGE --no-prefetch -- python3 -c 'print(1)'
#                 (a private blockd, as a plain `kindling run` does)
#   kindling-blockd  the same with --blockd SOCK against one `blockd serve` on
#                 the same store and L1, started once (skipped where this
#                 kindling has no --blockd)
#   kindling-auto plain `kindling run IMAGE -- python3 ...`, which finds that
#                 `blockd serve` at $KINDLING_HOME/blockd.sock on its own, the
#                 way users run it (skipped where this kindling has no
#                 --private-blockd, i.e. no discovery)
#   floor         unshare -mpf --mount-proc chroot TREE python3 -c 'print(1)'
# Each is timed from spawn to its first output line, by this script, the same
# way for all.  Prints one JSON object: medians in ms, the ratios against the
# floor, the spread (min and max) of each, and the median of each `--timings`
# phase (where supported), and how many reads the serving blockd's FUSE mount
# still answered during the timed rounds (blockd_served_during_rounds).
#
# KINDLING_BUILD_DIR says where the programs are [build/].  With
# KINDLING_BASELINE_BUILD_DIR, a second build's kindling (e.g. one before a
# change) joins the same alternation as "baseline" (and "baseline-blockd"),
# so before and after are measured in one run against one floor.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-7}
build=${KINDLING_BUILD_DIR:-$top/build}
for t in chunkify kindling blockd; do
  [ -x "$build/$t" ] || { echo "warmstart: $build/$t is not built" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "warmstart: needs root (the process sandbox mounts the image)" >&2; exit 1; }
for t in unshare chroot python3 jq; do
  command -v $t >/dev/null || { echo "warmstart: $t is missing" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-warmstart.XXXXXX")
export KINDLING_HOME=$work/home
export TMPDIR=$work/tmp
mkdir -p "$KINDLING_HOME" "$TMPDIR"
bpid=
cleanup() {
  [ -z "$bpid" ] || { kill "$bpid" 2>/dev/null || true; wait "$bpid" 2>/dev/null || true; }
  mountpoint -q "$work/mnt" 2>/dev/null && { umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt"; }
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the image and the floor's tree ------------------------------------------------------------------------------
"$top/scripts/python-rootfs.sh" "$work/base" >&2
tar -C "$work/base" -cf "$work/layer1.tar" .
tar -C / -cf "$work/layer2.tar" usr/lib/python3.11
python3 "$top/bench/make_layout.py" "$work/layout" py "$work/layer1.tar" "$work/layer2.tar" >/dev/null
"$build/chunkify" import "oci:$work/layout:py" --name warm:1 >/dev/null
mkdir -p "$work/tree"
tar -C "$work/tree" -xf "$work/layer1.tar"
tar -C "$work/tree" -xf "$work/layer2.tar"
mkdir -p "$work/tree/proc"
rm -f "$work/layer1.tar" "$work/layer2.tar"

baseline=${KINDLING_BASELINE_BUILD_DIR:+$KINDLING_BASELINE_BUILD_DIR/kindling}
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "warmstart: $baseline is not built" >&2; exit 1; }
blockd_args=()
# The help text first, then grep: piped into grep -q, kindling could die of
# SIGPIPE once grep has its match, and pipefail would then skip the blockd.
run_help=$("$build/kindling" run --help 2>&1 || true)
if grep -q -- "--blockd" <<<"$run_help"; then
  mkdir -p "$work/mnt"
  "$build/blockd" serve --store "$KINDLING_HOME/store" --l1-dir "$KINDLING_HOME/l1" --no-prefetch \
     --mount "$work/mnt" --control "$KINDLING_HOME/blockd.sock" >"$work/blockd.out" 2>"$work/blockd.err" &
  bpid=$!
  for _ in $(seq 100); do grep -q ready "$work/blockd.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$work/blockd.out" || { cat "$work/blockd.err" >&2; echo "warmstart: blockd serve never became ready" >&2; exit 1; }
  blockd_args=(--blockd "$KINDLING_HOME/blockd.sock")
fi

# ---- alternate and time ---------------------------------------------------------------------------------------
python3 - "$rounds" "$build/kindling" "$work" "$baseline" "$build/blockd" "${blockd_args[@]}" <<'PY'
import json, os, statistics, subprocess, sys, time
rounds, kindling, work, baseline, blockd_prog = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
blockd = sys.argv[6:]

def served_reads():
    """The serving blockd's FUSE reads of the image so far: (reads, bytes)."""
    r = subprocess.run([blockd_prog, "--control", blockd[1], "stats", "warm:1"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"warmstart: blockd stats failed: {r.stderr[-2000:]}")
    st = json.loads(r.stdout)
    return st["reads"], st["bytes_read"]

cmd = ["--", "python3", "-c", "print(1)"]

def supports(prog, opt):
    r = subprocess.run([prog, "run", "--help"], capture_output=True, text=True)
    return opt in r.stdout + r.stderr

def first_line(argv):
    """ms from spawn to the first line on stdout; the command must print 1."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stdout.readline()
    t = (time.monotonic() - t0) * 1e3
    out, err = p.communicate()
    if line.strip() != b"1" or p.returncode != 0:
        sys.exit(f"warmstart: {argv[0]} failed ({p.returncode}): {line!r} {err.decode()[-2000:]}")
    return t

kinds = {}
for label, prog in (("baseline", baseline), ("kindling", kindling)):
    if not prog:
        continue
    kinds[label] = [prog, "run", "warm:1", "--no-prefetch"]
    if blockd and supports(prog, "--blockd"):
        kinds[label + "-blockd"] = [prog, "run", "warm:1"] + blockd
    if blockd and supports(prog, "--private-blockd"):
        kinds[label + "-auto"] = [prog, "run", "warm:1"]
timed = {k: supports(argv[0], "--timings") for k, argv in kinds.items()}
kinds["floor"] = ["unshare", "-mpf", f"--mount-proc={work}/tree/proc", "chroot", f"{work}/tree", "python3", "-c", "print(1)"]
times = {k: [] for k in kinds}
phases = {k: {} for k in kinds if k != "floor" and timed[k]}
tpath = os.path.join(work, "timings.json")
for warm in range(2):  # fill L1, the page cache and the serving blockd's memory tier
    for k, argv in kinds.items():
        first_line(argv + ([] if k == "floor" else cmd))
reads_before = served_reads() if blockd else None
for r in range(rounds):
    for k, argv in kinds.items():
        if k == "floor":
            times[k].append(first_line(argv))
            continue
        extra = ["--timings", tpath] if timed[k] else []
        times[k].append(first_line(argv[:3] + extra + argv[3:] + cmd))
        if timed[k]:
            with open(tpath) as f:
                for ph in json.load(f)["phases"]:
                    phases[k].setdefault(ph["name"], []).append(ph["ms"])
med = {k: statistics.median(v) for k, v in times.items()}
res = {"rounds": rounds, "workload": "python3 -c 'print(1)'", "median_ms": med,
       "ratio_vs_floor": {k: med[k] / med["floor"] for k in med if k != "floor"},
       "spread_ms": {k: [min(v), max(v)] for k, v in times.items()}, "samples_ms": times}
if blockd:
    # What the warm runs through the serving blockd still asked its FUSE
    # mount for (0 when the kernel's page cache of the mount serves them).
    reads_after = served_reads()
    res["blockd_served_during_rounds"] = {"reads": reads_after[0] - reads_before[0],
                                          "bytes": reads_after[1] - reads_before[1]}
if phases:
    res["phases_median_ms"] = {k: {n: statistics.median(v) for n, v in ph.items()} for k, ph in phases.items()}
print(json.dumps(res, indent=1))
PY
