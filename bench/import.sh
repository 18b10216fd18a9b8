#!/usr/bin/env bash
# Import throughput of chunkify against this machine's crypto limit, and the
# eager pull (skopeo copy + umoci unpack) of the same image, all in one run.
#
#   bench/import.sh [MIN_GIB]      (default 1)
#
# The crypto limit is what one core can do per byte of image: SHA-256 twice
# (the chunk key and the chunk name) plus AES-256-CTR once, measured with
# `openssl speed` on 512 KiB blocks, times the number of seal workers (by
# default one fewer than the cores, at least one: the layer reader and the tar
# parser keep about a core busy).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
min_gib=${1:-1}
"$top/scripts/setup.sh" "$top/build" >/dev/null
chunkify=$top/build/chunkify
work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export KINDLING_HOME=$work/home

speed() { # $1 = openssl algorithm; prints bytes/s for 512 KiB blocks
  openssl speed -evp "$1" -bytes 524288 -seconds 2 2>/dev/null | awk -v a="$1" '
    tolower($1) == tolower(a) || tolower($1) == "aes-256-ctr" { v = $NF; sub(/k$/, "", v); print v * 1000; exit }'
}
sha=$(speed sha256)
aes=$(speed aes-256-ctr)
workers=$(nproc)
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
echo "  2xSHA-256 + AES-256-CTR = $(python3 -c "print(f'{$limit_core/1e6:.0f}')") MB/s per core; each import is compared with that times its seal workers"

cold=$("$chunkify" import "oci:$work/layout:bench" --name bench:cold --json)
warm=$("$chunkify" import "oci:$work/layout:bench" --name bench:warm --json)
# The same cold import with one seal worker per core: it shows whether sealing
# or the serial read/parse stage is what bounds the import.
coldn=$("$chunkify" --store "$work/storen" import "oci:$work/layout:bench" --name bench:coldn --workers "$workers" --json)
sync

t0=$(date +%s.%N)
"$top/bench/eager.sh" "oci:$work/layout:bench" "$work/eager"
t1=$(date +%s.%N)
rm -rf "$work/eager"

python3 - "$cold" "$warm" "$t0" "$t1" "$coldn" "$limit_core" <<'PY'
import json, sys
cold, warm = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
coldn, limit_core = json.loads(sys.argv[5]), float(sys.argv[6])
eager = t1 - t0
for name, r in (("cold store (every chunk new)", cold),
                ("warm store (every chunk deduplicated)", warm),
                ("cold store, one seal worker per core", coldn)):
    lim = limit_core * r["workers"]
    mbs = r["image_size"] / 1e6 / r["seconds"]
    print(f"import, {name}: {r['image_size']/2**30:.2f} GiB image in {r['seconds']:.2f} s = {mbs:.0f} MB/s"
          f" = {100*mbs/(lim/1e6):.0f}% of the crypto limit of its {r['workers']} seal worker(s)"
          f" ({r['chunks_new']} new, {r['chunks_dedup']} dedup, {r['chunks_zero']} zero chunks)")
print(f"eager pull for scale: skopeo copy + umoci unpack = {eager:.2f} s"
      f" ({eager/cold['seconds']:.1f}x the cold import time)")
PY
