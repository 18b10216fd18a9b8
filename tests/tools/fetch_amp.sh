#!/bin/bash
# fetch_amp.sh BASE_BUILD NEW_BUILD [REPS]: fetch amplification of two builds,
# measured in the same run.  A measurement tool, not a test.
#
# For each workload of the bench suite (bench/suite/workloads.py: python3
# hello, node hello, a numpy/scipy import and a JDK start, in images built
# from this machine's Debian packages), each build imports the image with its
# own chunkify into a KINDLING_HOME of its own, then runs it cold with
# `kindling run --json`: the page cache dropped and an empty L1 every run,
# every chunk from the origin.  Two modes per workload: `nopf` (--no-prefetch)
# and `pf` (prefetching the startup trace that a first, unmeasured run of the
# same build recorded).  The builds alternate run by run (the order flips
# every repetition), so drift on a shared machine falls on both.
#
# Prints one line per run and then, per workload, mode and build, medians of:
# bytes fetched, bytes read, the metadata region, the ratio
# fetched / (read + metadata), fetched / read, "strict": fetched / the chunks
# readers touched (1.0: nothing fetched that was not read), and the time to
# first output.
#
#   WORKLOADS="python node"     workloads to run [python node scipy java]
#   MODES="nopf"                modes to run [nopf pf]
#   FETCH_AMP_CACHE=DIR         where the images' OCI layouts are built once
#                               [/var/cache/kindling/bench]
#   FETCH_AMP_WORK=DIR          scratch directory, removed at exit [a mktemp -d]
#   LAYOUT_TRACE=1              the new build lays each image out from a
#                               startup trace: it imports, runs the workload
#                               once (unmeasured, recording the trace), then
#                               imports again with `chunkify import
#                               --layout-trace` under the same name, and that
#                               import is what it runs.  Images two workloads
#                               share (scipy and java) take the first one's.
# Needs root (the process sandbox mounts the image; drop_caches), jq, and the
# Debian packages the images are built from (python3, nodejs, python3-numpy,
# python3-scipy, openjdk-17-jdk-headless, ...: see bench/suite/workloads.py).
set -euo pipefail

usage() { echo "usage: $0 BASE_BUILD NEW_BUILD [REPS]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
BASE=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
REPS=${3:-3}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORKLOADS=${WORKLOADS:-python node scipy java}
MODES=${MODES:-nopf pf}
CACHE=${FETCH_AMP_CACHE:-/var/cache/kindling/bench}
for b in "$BASE" "$NEW"; do
  for p in chunkify kindling; do
    [ -x "$b/$p" ] || { echo "fetch_amp: $b/$p is missing: build it first (cmake --build $b)" >&2; exit 1; }
  done
done
[ "$(id -u)" = 0 ] || { echo "fetch_amp: needs root (sandbox mounts, drop_caches)" >&2; exit 1; }
command -v jq >/dev/null || { echo "fetch_amp: needs jq" >&2; exit 1; }

W=${FETCH_AMP_WORK:-$(mktemp -d /tmp/fetch_amp.XXXXXX)}
mkdir -p "$W"
cleanup() { rm -rf "$W"; }
trap cleanup EXIT
export TMPDIR=$W/tmp
mkdir -p "$TMPDIR"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# The workloads' images and commands, from the bench suite (built once).
python3 - "$SRC" "$CACHE" "$W/workloads.tsv" $WORKLOADS <<'PY'
import json, sys
src, cache, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sys.path[:0] = [src + "/bench/suite", src + "/bench"]
import workloads
with open(out, "w") as f:
    for n in names:
        spec = workloads.WORKLOADS[n]
        meta = workloads.build_image(spec["image"], cache, say=lambda m: print("fetch_amp: " + m, file=sys.stderr))
        f.write("\t".join([n, spec["image"], f"oci:{meta['layout']}:{meta['tag']}", spec["expect"],
                           json.dumps(spec["cmd"])]) + "\n")
PY

label() { [ "$1" = "$BASE" ] && echo base || echo new; }

# import BUILD IMAGE SOURCE [WORKLOAD EXPECT CMD_JSON]: import once per build
# and image; with LAYOUT_TRACE=1 and the workload, the new build re-imports
# it laid out from the trace of one run.
import_image() {
  local home=$W/home-$(label "$1") digest
  [ -e "$home/imported-$2" ] && return 0
  mkdir -p "$home"
  KINDLING_HOME=$home "$1/chunkify" --json import "$3" --name "$2:1" >"$W/import.json" 2>"$W/import.err" ||
    { cat "$W/import.err" >&2; echo "fetch_amp: import of $2 with $1 failed" >&2; exit 1; }
  if [ "${LAYOUT_TRACE:-0}" = 1 ] && [ "$(label "$1")" = new ] && [ $# -ge 6 ]; then
    digest=$(jq -r .manifest "$W/import.json")
    rm -rf "$home/store/traces"
    run_one "$1" "$4" "$2" "$5" "$6" pf >/dev/null
    [ -s "$home/store/traces/$digest" ] || { echo "fetch_amp: the run of $2 recorded no trace" >&2; exit 1; }
    cp "$home/store/traces/$digest" "$W/trace-$2.json"
    rm -rf "$home/store/traces"
    KINDLING_HOME=$home "$1/chunkify" --json import "$3" --name "$2:1" --layout-trace "$W/trace-$2.json" \
      >"$W/import.json" 2>"$W/import.err" ||
      { cat "$W/import.err" >&2; echo "fetch_amp: import of $2 with $1 and its layout trace failed" >&2; exit 1; }
    echo "fetch_amp: $2 re-imported with its layout trace: $(jq -c .layout_trace "$W/import.json")" >&2
  fi
  touch "$home/imported-$2"
}

# run BUILD WORKLOAD IMAGE EXPECT CMD_JSON MODE: one cold run; prints its JSON report.
run_one() {
  local build=$1 w=$2 img=$3 expect=$4 cmd=$5 mode=$6 home=$W/home-$(label "$1") l1
  local -a argv pf=()
  mapfile -t argv < <(jq -r '.[]' <<<"$cmd")
  [ "$mode" = nopf ] && pf=(--no-prefetch)
  l1=$(mktemp -d "$W/l1.XXXXXX")
  drop_caches
  if ! KINDLING_HOME=$home "$build/kindling" run "$img:1" --json --isolation process --l1-dir "$l1" \
      "${pf[@]+"${pf[@]}"}" -- "${argv[@]}" >"$W/run.out" 2>"$W/run.err" ||
      ! grep -qF "$expect" "$W/run.out"; then
    tail -5 "$W/run.err" >&2
    echo "fetch_amp: $w ($mode) with $build failed or printed no \"$expect\"" >&2
    exit 1
  fi
  rm -rf "$l1"
  tail -1 "$W/run.err"
}

RESULTS=$W/results.jsonl
: >"$RESULTS"
printf '%-7s %-5s %-4s %3s %10s %10s %10s %7s %7s %7s %8s %6s %6s\n' workload mode build rep fetched_MiB read_MiB \
  meta_MiB ratio f/read strict first_s ra_iss ra_untr
while IFS=$'\t' read -r w img src expect cmd; do
  import_image "$BASE" "$img" "$src"
  import_image "$NEW" "$img" "$src" "$w" "$expect" "$cmd"
  for mode in $MODES; do
    if [ "$mode" = pf ]; then
      # Each build records this workload's startup trace (unmeasured).  A
      # trace is per image, and workloads share images (scipy and java), so
      # the previous workload's is removed first.
      for b in "$BASE" "$NEW"; do
        rm -rf "$W/home-$(label "$b")/store/traces"
        run_one "$b" "$w" "$img" "$expect" "$cmd" pf >/dev/null
      done
    fi
    for ((rep = 1; rep <= REPS; rep++)); do
      order=("$BASE" "$NEW")
      ((rep % 2)) || order=("$NEW" "$BASE")
      for b in "${order[@]}"; do
        j=$(run_one "$b" "$w" "$img" "$expect" "$cmd" "$mode")
        jq -c --arg w "$w" --arg m "$mode" --arg b "$(label "$b")" --argjson r "$rep" \
          '{w: $w, mode: $m, build: $b, rep: $r, fetched: .bytes_fetched, read: .bytes_read, touched: (.chunks_read * 524288),
            meta: .metadata_bytes, first: .first_output_s, ra_issued: (.readahead.issued // 0),
            ra_untraced: (.readahead.untraced // 0), prefetched: (.prefetch.prefetched // 0)}' <<<"$j" |
          tee -a "$RESULTS" |
          jq -r '[.w, .mode, .build, .rep, (.fetched / 1048576 * 10 | round / 10),
                  (.read / 1048576 * 10 | round / 10), (.meta / 1048576 * 10 | round / 10),
                  (.fetched / (.read + .meta) * 100 | round / 100), (.fetched / .read * 100 | round / 100),
                  (.fetched / .touched * 100 | round / 100), (.first * 1000 | round / 1000), .ra_issued,
                  .ra_untraced] | map(tostring) | join("\t")' |
          while IFS=$'\t' read -r a b2 c d e f g h i k l m n; do
            printf '%-7s %-5s %-4s %3s %10s %10s %10s %7s %7s %7s %8s %6s %6s\n' "$a" "$b2" "$c" "$d" "$e" "$f" "$g" \
              "$h" "$i" "$k" "$l" "$m" "$n"
          done
      done
    done
  done
done <"$W/workloads.tsv"

echo
echo "medians over $REPS runs (ratio = fetched / (read + metadata))"
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def mib: . / 1048576 * 10 | round / 10;
  group_by([.w, .mode, .build]) | sort_by(.[0].w, .[0].mode, (.[0].build != "base")) | .[] |
  "\(.[0].w)\t\(.[0].mode)\t\(.[0].build)\t\(map(.fetched) | median | mib)\t\(map(.read) | median | mib)\t\(map(.meta) | median | mib)\t\(map(.fetched / (.read + .meta)) | median * 100 | round / 100)\t\(map(.fetched / .read) | median * 100 | round / 100)\t\(map(.fetched / .touched) | median * 100 | round / 100)\t\(map(.first) | median * 1000 | round / 1000)"' \
  "$RESULTS" | {
  printf '%-7s %-5s %-4s %10s %10s %10s %7s %7s %7s %8s\n' workload mode build fetched_MiB read_MiB meta_MiB ratio \
    f/read strict first_s
  while IFS=$'\t' read -r a b c d e f g h i k; do
    printf '%-7s %-5s %-4s %10s %10s %10s %7s %7s %7s %8s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$k"
  done
}
