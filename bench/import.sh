#!/usr/bin/env bash
# Import throughput of chunkify against this machine's crypto limit, and the
# eager pull (skopeo copy + umoci unpack) of the same image, all in one run.
#
#   bench/import.sh [MIN_GIB] [ROUNDS]     (defaults 1 and 1)
#
# The crypto limit is what the cores can do per byte of image: SHA-256 twice
# (the chunk key and the chunk name) plus AES-256-CTR once, measured with
# `openssl speed` on 512 KiB blocks, times the number of cores (and, for
# scale, times the import's seal workers).
#
# Each round imports the image into empty stores, alternating: the default
# (layers read ahead, one seal worker per core), the serial settings
# (--jobs 1 --workers 1, one layer at a time, one seal worker) and, with
# BASELINE=/path/to/another/chunkify, that build with its own defaults, so a
# change is measured against a baseline from the same run.  EAGER=0 skips the
# eager pull.  STORE_DIR puts the stores elsewhere (say /dev/shm, to take a
# busy disk's syncs out of the comparison); by default they sit beside the
# image in $TMPDIR.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
min_gib=${1:-1}
rounds=${2:-1}
baseline=${BASELINE:-}
"$top/scripts/setup.sh" "$top/build" >/dev/null
chunkify=$top/build/chunkify
work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-bench.XXXXXX")
store=$(mktemp -d "${STORE_DIR:-$work}/kindling-bench-store.XXXXXX")
trap 'rm -rf "$work" "$store"' EXIT
export KINDLING_HOME=$work/home

speed() { # $1 = openssl algorithm; prints bytes/s for 512 KiB blocks
  openssl speed -evp "$1" -bytes 524288 -seconds 2 2>/dev/null | awk -v a="$1" '
    tolower($1) == tolower(a) || tolower($1) == "aes-256-ctr" { v = $NF; sub(/k$/, "", v); print v * 1000; exit }'
}
sha=$(speed sha256)
aes=$(speed aes-256-ctr)
cores=$(nproc)
limit_core=$(python3 -c "print(1/(2/$sha + 1/$aes))")

# Layers: real files from this machine, plain tar, until MIN_GIB is reached.
min_bytes=$((min_gib * 1024 * 1024 * 1024))
total=0; n=0; layers=()
for d in usr/share usr/lib/x86_64-linux-gnu usr/lib/python3.11 usr/lib/gcc usr/libexec usr/bin usr/lib; do
  [ -d "/$d" ] || continue
  [ "$total" -lt "$min_bytes" ] || break
  n=$((n + 1))
  tar -C / --one-file-system -cf "$work/layer$n.tar" "$d" 2>/dev/null || true
  layers+=("$work/layer$n.tar")
  total=$((total + $(stat -c %s "$work/layer$n.tar")))
done
python3 "$top/bench/make_layout.py" "$work/layout" bench "${layers[@]}"
rm -f "${layers[@]}"
cat "$work"/layout/blobs/sha256/* >/dev/null # warm the page cache for every contender

echo "image: $n uncompressed layers, $(python3 -c "print(f'{$total/2**30:.2f}')") GiB of tar"
echo "crypto limit: SHA-256 $(python3 -c "print(f'{$sha/1e6:.0f}')") MB/s, AES-256-CTR $(python3 -c "print(f'{$aes/1e6:.0f}')") MB/s per core;"
echo "  2xSHA-256 + AES-256-CTR = $(python3 -c "print(f'{$limit_core/1e6:.0f}')") MB/s per core, $(python3 -c "print(f'{$cores*$limit_core/1e6:.0f}')") MB/s on the $cores cores"

with_cpu() { # COMMAND...: runs it; prints its JSON output with the CPU time it
  # took (user + sys, all threads) added as cpu_seconds: on a shared host the
  # CPU an import needs varies much less than its wall time, and it bounds
  # what idle cores could do.
  python3 - "$@" <<'PY'
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, check=True).stdout
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
r = json.loads(out)
r["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 3)
print(json.dumps(r))
PY
}
cold() { # BINARY NAME [options]: one import into an empty store; prints its JSON
  rm -rf "$store/s"
  with_cpu "$1" --store "$store/s" import "oci:$work/layout:bench" --name "bench:$2" --json "${@:3}"
}
results=()
for round in $(seq "$rounds"); do
  results+=("default $(cold "$chunkify" d)")
  results+=("serial $(cold "$chunkify" s --jobs 1 --workers 1)")
  [ -z "$baseline" ] || results+=("baseline $(cold "$baseline" b)")
done
# Every chunk is in the store now: the warm import only checks names.
warm=$(with_cpu "$chunkify" --store "$store/s" import "oci:$work/layout:bench" --name bench:warm --json)
rm -rf "$store/s"
sync

eager=""
if [ "${EAGER:-1}" != 0 ]; then
  t0=$(date +%s.%N)
  "$top/bench/eager.sh" "oci:$work/layout:bench" "$work/eager"
  t1=$(date +%s.%N)
  rm -rf "$work/eager"
  eager=$(python3 -c "print($t1 - $t0)")
fi

printf '%s\n' "${results[@]}" "warm $warm" >"$work/results"
sed "s/^/json: /" "$work/results"
python3 - "$limit_core" "$cores" "$eager" "$work/results" <<'PY'
import json, statistics, sys
limit_core, cores, eager = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
runs = {}
for line in open(sys.argv[4]):
    label, js = line.split(" ", 1)
    runs.setdefault(label, []).append(json.loads(js))
names = {"default": "cold store, defaults (layers read ahead, a seal worker per core)",
         "serial": "cold store, --jobs 1 --workers 1 (one layer at a time, one seal worker)",
         "baseline": "cold store, the BASELINE build's defaults",
         "warm": "warm store (every chunk deduplicated), defaults"}
secs, cpu = {}, {}
for label, rs in runs.items():
    for i, r in enumerate(rs):
        mbs = r["image_size"] / 1e6 / r["seconds"]
        print(f"import, {names[label]}, run {i + 1}: {r['image_size']/2**30:.2f} GiB in {r['seconds']:.2f} s"
              f" = {mbs:.0f} MB/s = {100*mbs/(limit_core*cores/1e6):.0f}% of the {cores}-core crypto limit"
              f" ({100*mbs/(limit_core*r['workers']/1e6):.0f}% of its {r['workers']} seal worker(s));"
              f" {r['chunks_new']} new, {r['chunks_dedup']} dedup, {r['chunks_zero']} zero chunks;"
              f" {r['cpu_seconds']:.2f} s of CPU, so at best {100*r['image_size']/r['cpu_seconds']/limit_core:.0f}%"
              f" on {cores} idle cores")
    secs[label] = statistics.median(r["seconds"] for r in rs)
    cpu[label] = statistics.median(r["cpu_seconds"] for r in rs)
for other in ("serial", "baseline"):
    if other in secs and "default" in secs:
        print(f"median time, {other} / default = {secs[other]/secs['default']:.2f}x;"
              f" median CPU, {other} / default = {cpu[other]/cpu['default']:.2f}x")
if eager:
    print(f"eager pull for scale: skopeo copy + umoci unpack = {float(eager):.2f} s"
          f" ({float(eager)/secs['default']:.1f}x the median default cold import)")
PY
