#!/bin/bash
# Several `kindling run` of one image on one host, and an L1 that cannot be
# used or is full: the cache never fails a run.
#   - four runs started at once with one KINDLING_HOME all succeed with the
#     right output and share L1: none is locked out of it, and a run after
#     them is served by L1 with nothing from L3;
#   - an L1 path that is a regular file (unusable even for root): the run
#     succeeds from the origin and says so in one notice naming --l1-dir;
#   - an L1 bound far below the bytes read (--l1-size 2M): the run succeeds,
#     L1 evicts and stays within its bound, and the "L1 is full" warning with
#     its --l1-size advice is printed once, not once per chunk;
#   - a filesystem under L1 smaller than its bound (a 3 MB tmpfs): writes
#     that fail with ENOSPC evict and retry, one warning, and L1 keeps
#     serving.
# Missing tools are a failure, not a skip (need_kindling_run).
# ctest-labels: no-asan (kindling run end to end, as 51; the shared L1 is covered by unit/test_cache_l1_shared under ASan); no-tsan (as 51; the shared L1's threads and processes are covered by unit/test_cache_l1_shared under TSan)
. "$(dirname "$0")/lib.sh"
need_kindling_run jq python3 tar md5sum

# ---- the image: static busybox and 6 MB of data the workload hashes ----------------------------------------------
R=$T/rootfs
mkdir -p "$R/bin" "$R/data"
cp /bin/busybox "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
ln -s busybox "$R/bin/md5sum"
head -c 6000000 /dev/urandom >"$R/data/blob.bin"
WANT="$(md5sum <"$R/data/blob.bin" | cut -d' ' -f1)  /data/blob.bin"
tar -C "$R" -cf "$T/layer.tar" .
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout" 1 "$T/layer.tar"
"$CHUNKIFY" import "oci:$T/layout:1" --name share:1 >/dev/null 2>"$T/import.err" ||
  { cat "$T/import.err" >&2; die "chunkify import failed"; }
pass "image built and imported"

export TMPDIR=$T/tmp
mkdir -p "$TMPDIR"
# hash_run NAME ARGS...: kr NAME of the image hashing its data (lib.sh).
hash_run() {
  local name=$1
  shift
  kr "$name" share:1 --isolation process --json --no-prefetch "$@" -- md5sum /data/blob.bin
}
# check NAME RC: the run exited 0 with the right output.
check() {
  [ "$2" = 0 ] || die "run $1 exited $2: $(cat "$T/$1.out" "$T/$1.err")"
  [ "$(cat "$T/$1.out")" = "$WANT" ] || die "run $1 printed $(cat "$T/$1.out"), want $WANT"
}

# ---- four runs at once, one KINDLING_HOME ----------------------------------------------------------------------------
pids=()
for i in 1 2 3 4; do
  hash_run "c$i" &
  pids+=($!)
  track_pid $!
done
# Wait for all four before judging any: a run still going would keep its
# mount while the cleanup removes $T (each run ends within kr's timeout).
rcs=()
for i in 1 2 3 4; do
  rc=0; wait "${pids[$((i - 1))]}" || rc=$?
  rcs+=("$rc")
done
for i in 1 2 3 4; do
  check "c$i" "${rcs[$((i - 1))]}"
  ! grep -q "L1" "$T/c$i.err" || die "run c$i had trouble with L1: $(cat "$T/c$i.err")"
done
l3=0
for i in 1 2 3 4; do l3=$((l3 + $(tail -1 "$T/c$i.err" | jq .chunks.l3))); done
pass "four concurrent runs with one KINDLING_HOME all succeeded, none locked out of L1 ($l3 chunks from L3 between them)"

rc=0; hash_run after || rc=$?
check after "$rc"
J=$(tail -1 "$T/after.err")
echo "$J" | jq -e '.chunks.l3 == 0 and .chunks.l1 > 0' >/dev/null || die "the run after them was not served by L1: $J"
pass "the run after them: $(jq .chunks.l1 <<<"$J") chunks from the shared L1, 0 from L3"

# ---- an L1 that cannot be used ----------------------------------------------------------------------------------------
echo "not a directory" >"$T/l1-file"
rc=0; hash_run nol1 --l1-dir "$T/l1-file" || rc=$?
check nol1 "$rc"
[ "$(grep -c "L1 disk cache off" "$T/nol1.err")" = 1 ] && grep -q -- "--l1-dir" "$T/nol1.err" ||
  die "no single notice for the unusable L1: $(cat "$T/nol1.err")"
pass "an L1 path that is a file: the run succeeded without L1, with one notice: $(grep "L1 disk cache off" "$T/nol1.err")"

# ---- a full L1: evicts, stays in its bound, warns once --------------------------------------------------------------
rc=0; hash_run full --l1-dir "$T/l1-small" --l1-size 2M || rc=$?
check full "$rc"
[ "$(grep -c "is full" "$T/full.err")" = 1 ] && grep "is full" "$T/full.err" | grep -q -- "--l1-size" ||
  die "want one 'L1 is full' warning naming --l1-size: $(cat "$T/full.err")"
bytes=$(find "$T/l1-small" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' -printf '%s\n' |
  awk '{s += $1} END {print s + 0}')
[ "$bytes" -gt 0 ] && [ "$bytes" -le $((2 * 1024 * 1024)) ] || die "L1 holds $bytes bytes with --l1-size 2M"
pass "--l1-size 2M for a 6 MB read: one warning, L1 evicted and holds $bytes bytes"

# ---- a full filesystem under L1: evicts to make room, warns once --------------------------------------------------
mkdir -p "$T/l1-tiny"
mount -t tmpfs -o size=3m tmpfs "$T/l1-tiny" || die "cannot mount a 3 MB tmpfs for the full-filesystem case"
track_mount "$T/l1-tiny"
rc=0; hash_run tiny --l1-dir "$T/l1-tiny" --l1-size 64M || rc=$?
check tiny "$rc"
[ "$(grep -c "filesystem of .* is full" "$T/tiny.err")" = 1 ] && grep "is full" "$T/tiny.err" | grep -q -- "--l1-size" &&
  ! grep -q "cannot write chunk" "$T/tiny.err" ||
  die "want one 'filesystem is full' warning naming --l1-size: $(cat "$T/tiny.err")"
n=$(find "$T/l1-tiny" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' | wc -l)
[ "$n" -gt 0 ] || die "nothing cached on the 3 MB filesystem"
J=$(tail -1 "$T/tiny.err")
echo "$J" | jq -e '.served_by_tier.l1 > 0' >/dev/null || die "L1 on the full filesystem served nothing: $J"
umount "$T/l1-tiny"
pass "a 3 MB filesystem under a 64 MB L1: one warning, evicted to make room ($n chunks kept, $(jq .served_by_tier.l1 <<<"$J") reads served by L1)"

[ -z "$(ls -A "$TMPDIR")" ] || die "temporary mount points left in TMPDIR: $(ls -A "$TMPDIR")"
