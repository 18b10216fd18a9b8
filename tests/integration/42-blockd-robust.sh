#!/bin/bash
# blockd under failure, and startup-trace prefetch, over real FUSE:
#   (a) first attach records a startup trace and stores it in the origin at
#       traces/<manifest digest>;
#   (b) SIGKILL while attached: reads of image.raw and rootfs/ fail at once
#       with ENOTCONN (never wrong data, never a hang); a restart detaches
#       the stale mount, re-attaches from --state-dir and serves again with
#       L1 intact: the chunks read before the kill need no origin fetch;
#   (c) static stability: origin store renamed away, L1 warm: the attached
#       image still serves every byte;
#   (d) restart with L1 emptied: the trace is prefetched, the same reads
#       then use it, stats.json shows prefetch accuracy > 0;
#   (e) one chunk gone from every tier (deleted from the origin, no L1, no
#       memory tier, no L2): EIO for reads of that chunk only, logged; every
#       other byte still reads correctly.
. "$(dirname "$0")/lib.sh"
BLOCKD=$KINDLING_BUILD_DIR/blockd
[ -x "$BLOCKD" ] || die "blockd not built at $BLOCKD (build the project first)"
for tool in fusermount3 jq python3 cmp sha256sum; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done

# ---- an image: python stdlib pieces and an 8 MB random file ---------------------------------------------------
mkdir -p "$T/src/usr/lib" "$T/src/app"
cp -a /usr/lib/python3.11/email /usr/lib/python3.11/json /usr/lib/python3.11/asyncio "$T/src/usr/lib/"
head -c 8000000 /dev/urandom >"$T/src/app/blob.bin"
tar -C "$T/src" -cf "$T/layer.tar" .
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout" 1 "$T/layer.tar"
STORE=$T/store
"$CHUNKIFY" --store "$STORE" import "oci:$T/layout:1" --name py:1 >/dev/null
"$CHUNKIFY" --store "$STORE" export py:1 "$T/py.raw"
DIGEST=$("$CHUNKIFY" --store "$STORE" --json inspect py:1 | jq -r .manifest)

MNT=$T/mnt
CTL=$T/blockd.sock
mkdir -p "$MNT"
track_mount "$MNT"
# start_blockd TAG ARGS...: start blockd serve on $MNT, wait until ready; sets BPID.
start_blockd() {
  local tag=$1 i
  shift
  "$BLOCKD" serve --store "$STORE" --mount "$MNT" --control "$CTL" --state-dir "$T/state" --mem-size 0 \
    "$@" >"$T/$tag.out" 2>"$T/$tag.err" &
  BPID=$!
  track_pid $BPID
  for ((i = 0; i < 100; i++)); do
    grep -q ready "$T/$tag.out" 2>/dev/null && return 0
    kill -0 $BPID 2>/dev/null || { cat "$T/$tag.err" >&2; die "blockd serve ($tag) exited"; }
    sleep 0.1
  done
  die "blockd serve ($tag) never became ready"
}
stop_blockd() {
  kill -TERM $BPID
  local rc=0
  wait $BPID || rc=$?
  [ $rc = 0 ] || { tail -20 "$T/$1.err" >&2; die "blockd ($1) exited $rc on SIGTERM"; }
}
bd() { "$BLOCKD" --control "$CTL" "$@"; }
stats() { cat "$MNT/py:1/stats.json"; }
R=$MNT/py:1/rootfs
# The files a "startup" reads, and their expected hashes.
FILES=(usr/lib/json/__init__.py usr/lib/json/decoder.py usr/lib/email/message.py usr/lib/asyncio/base_events.py)
read_startup() {
  local f
  for f in "${FILES[@]}"; do
    [ "$(sha256sum <"$R/$f")" = "$(sha256sum <"$T/src/$f")" ] || die "$f read back wrong ($1)"
  done
}

# ---- (a) the first attach records a trace ----------------------------------------------------------------------
start_blockd run1 --l1-dir "$T/l1" --trace-seconds 3
bd attach py:1 >/dev/null || die "attach failed"
read_startup run1
[ "$(stats | jq -r .prefetch.trace)" = recording ] || die "first attach is not recording a trace: $(stats)"
for ((i = 0; i < 300; i++)); do [ -e "$STORE/traces/$DIGEST" ] && break; sleep 0.1; done
[ -e "$STORE/traces/$DIGEST" ] || die "no trace stored at traces/$DIGEST after the recording window"
n_trace=$(jq '.chunks | length' "$STORE/traces/$DIGEST")
jq -e --arg d "$DIGEST" '.format == "kindling-trace-1" and .manifest == $d and .chunk_size == 524288' \
  "$STORE/traces/$DIGEST" >/dev/null || die "the stored trace is malformed: $(cat "$STORE/traces/$DIGEST")"
[ "$n_trace" -ge 2 ] && [ "$n_trace" -le 8 ] || die "trace has $n_trace chunks for ${#FILES[@]} small files"
pass "(a) first attach recorded a trace of $n_trace chunks at traces/$DIGEST"

# ---- (b) SIGKILL and restart ---------------------------------------------------------------------------------
kill -KILL $BPID
wait $BPID 2>/dev/null || true
t0=$(date +%s%N)
if timeout 10 cat "$MNT/py:1/image.raw" >/dev/null 2>"$T/kill.err"; then die "image.raw read after SIGKILL"; fi
grep -q "Transport endpoint is not connected" "$T/kill.err" || { cat "$T/kill.err" >&2; die "image.raw: not ENOTCONN"; }
if timeout 10 cat "$R/${FILES[0]}" >/dev/null 2>"$T/kill2.err"; then die "rootfs read after SIGKILL"; fi
grep -q "Transport endpoint is not connected" "$T/kill2.err" || { cat "$T/kill2.err" >&2; die "rootfs: not ENOTCONN"; }
ms=$((($(date +%s%N) - t0) / 1000000))
[ $ms -lt 3000 ] || die "reads after SIGKILL took ${ms} ms to fail"
pass "(b) after SIGKILL, image.raw and rootfs/ fail with ENOTCONN within ${ms} ms"

start_blockd run2 --l1-dir "$T/l1" --no-prefetch
[ "$(bd ls | cut -f1)" = "py:1" ] || die "restart did not re-attach py:1: $(bd ls)"
read_startup run2
S=$(stats)
[ "$(jq .chunks_fetched <<<"$S")" = 0 ] || die "restart fetched from the origin, L1 was lost: $S"
[ "$(jq .served_by_tier.l1 <<<"$S")" -gt 0 ] || die "nothing served from L1 after restart: $S"
grep -q "stale FUSE mount" "$T/run2.err" || die "the restart did not report the stale mount"
pass "(b) restart re-attached py:1 from the state dir; the same reads came from L1, no origin fetch"

# ---- (c) origin down, L1 warm ----------------------------------------------------------------------------------
cmp "$MNT/py:1/image.raw" "$T/py.raw" || die "image.raw differs (warming L1)"
mv "$STORE" "$T/store.away"
cmp "$MNT/py:1/image.raw" "$T/py.raw" || die "image.raw differs with the origin down"
(cd "$R" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums.fuse" || die "rootfs walk failed (origin down)"
(cd "$T/src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums.src"
diff "$T/sums.src" "$T/sums.fuse" >&2 || die "rootfs/ content differs with the origin down"
[ "$(stats | jq .read_errors)" = 0 ] || die "read errors with the origin down: $(stats)"
mv "$T/store.away" "$STORE"
stop_blockd run2
pass "(c) origin store gone: the attached image served every byte from L1"

# ---- (d) prefetch from the trace, L1 empty ----------------------------------------------------------------------
rm -rf "$T/l1"
start_blockd run3 --l1-dir "$T/l1" --trace-seconds 3
for ((i = 0; i < 300; i++)); do [ "$(stats | jq -r .prefetch.trace)" = prefetched ] && break; sleep 0.1; done
S=$(stats)
[ "$(jq -r .prefetch.trace <<<"$S")" = prefetched ] || die "the trace was not prefetched: $S"
[ "$(jq .prefetch.prefetched <<<"$S")" = "$n_trace" ] || die "prefetched $(jq .prefetch.prefetched <<<"$S") of $n_trace"
read_startup run3
S=$(stats)
jq -e '.prefetch.used > 0 and .prefetch.accuracy > 0 and .prefetch.accuracy <= 1 and
  .fetched_by_tier.l3 <= .prefetch.fetched + .readahead.fetched' <<<"$S" >/dev/null || { echo "$S" >&2; die "prefetch accuracy"; }
pass "(d) restart with L1 empty prefetched $n_trace chunks; accuracy $(jq .prefetch.accuracy <<<"$S"), reads fetched nothing more"
stop_blockd run3

# ---- (e) a chunk lost on every tier -------------------------------------------------------------------------------
# The chunk holding blob.bin's bytes at 2 MiB (wholly inside blob.bin).
K=$(python3 - "$T/py.raw" "$T/src/app/blob.bin" <<'PY'
import sys
img = open(sys.argv[1], "rb").read()
blob = open(sys.argv[2], "rb").read()
start = img.find(blob[1 << 20:(1 << 20) + 4096]) - (1 << 20)
assert start >= 0
print((start + (2 << 20)) // 524288)
PY
)
NAME=$("$CHUNKIFY" --store "$STORE" --json inspect py:1 --chunks | jq -r --argjson k "$K" '.chunks[] | select(.index == $k) | .name')
[ -n "$NAME" ] || die "chunk $K is not stored"
rm "$STORE/chunks/$NAME"
rm -rf "$T/l1"
start_blockd run4 --no-prefetch
if cat "$R/app/blob.bin" >/dev/null 2>"$T/eio.err"; then die "blob.bin read although its chunk is gone"; fi
grep -q "Input/output error" "$T/eio.err" || { cat "$T/eio.err" >&2; die "blob.bin: not EIO"; }
if dd if="$MNT/py:1/image.raw" of=/dev/null bs=4096 skip=$((K * 128 + 5)) count=1 2>"$T/eio2.err"; then
  die "image.raw read of the lost chunk succeeded"
fi
grep -q "Input/output error" "$T/eio2.err" || { cat "$T/eio2.err" >&2; die "image.raw: not EIO"; }
grep -q "chunk $K ($NAME) is unavailable from every tier" "$T/run4.err" || die "the lost chunk was not logged"
# Every other chunk of image.raw and every other file still read correctly.
python3 - "$MNT/py:1/image.raw" "$T/py.raw" "$K" <<'PY' || die "reads around the lost chunk failed"
import sys
K, C = int(sys.argv[3]), 524288
with open(sys.argv[1], "rb", buffering=0) as f, open(sys.argv[2], "rb") as g:
    n = g.seek(0, 2) // C
    for i in range(n):
        if i == K:
            continue
        f.seek(i * C); g.seek(i * C)
        if f.read(C) != g.read(C):
            sys.exit("chunk %d differs" % i)
PY
read_startup run4
[ "$(stats | jq .read_errors)" -ge 1 ] || die "stats do not count the read errors"
stop_blockd run4
pass "(e) a chunk gone from every tier: EIO for it only (logged), the other $(( $(stat -c %s "$T/py.raw") / 524288 - 1 )) chunks read correctly"
