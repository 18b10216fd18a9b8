#!/bin/bash
# blockd under failure, and startup-trace prefetch, over real FUSE:
#   (a) first attach records a startup trace and stores it in the origin at
#       traces/<manifest digest>;
#   (b) SIGKILL while attached: reads in flight at that moment (blockd
#       stopped first, so they are certainly waiting for it) fail with
#       ECONNABORTED, as the kernel ends them; reads after it of image.raw
#       and rootfs/ fail at once with ENOTCONN (never wrong data, never a
#       hang); a restart detaches the stale mount, re-attaches from
#       --state-dir and serves again with L1 intact: the chunks read before
#       the kill need no origin fetch;
#   (c) static stability: origin store renamed away, L1 warm: the attached
#       image still serves every byte;
#   (d) restart with L1 emptied: the trace is prefetched, the same reads
#       then use it, stats.json shows prefetch accuracy > 0;
#   (e) one chunk gone from every tier (deleted from the origin, no L1, no
#       memory tier, no L2): EIO for reads of that chunk only, logged; every
#       other byte still reads correctly.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/blockd-lib.sh"
for tool in fusermount3 jq python3 cmp sha256sum; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done

# ---- an image: python stdlib pieces and an 8 MB random file ---------------------------------------------------
mkdir -p "$T/src/usr/lib" "$T/src/app"
cp -a /usr/lib/python3.11/email /usr/lib/python3.11/json /usr/lib/python3.11/asyncio "$T/src/usr/lib/"
head -c 8000000 /dev/urandom >"$T/src/app/blob.bin"
STORE=$T/store
blockd_import_tree "$T/src" py:1 "$T/py.raw"
DIGEST=$("$CHUNKIFY" --store "$STORE" --json inspect py:1 | jq -r .manifest)

MNT=$T/mnt
CTL=$T/blockd.sock
mkdir -p "$MNT"
track_mount "$MNT"
# start_blockd TAG ARGS...: blockd serve on $MNT with this test's store, control socket and state.
start_blockd() {
  local tag=$1
  shift
  blockd_start "$tag" "$MNT" --store "$STORE" --control "$CTL" --state-dir "$T/state" --mem-size 0 "$@"
}
stop_blockd() { blockd_stop "$1"; }
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
# Reads in flight when blockd dies: blockd is stopped (SIGSTOP), two readers
# start a read it must answer (stats.json is direct I/O; image.raw opened
# with O_DIRECT), and once both sleep inside their read system call blockd is
# killed.  The kernel ends every request its daemon had not answered with
# ECONNABORTED; what comes after the death gets ENOTCONN (checked below).
python3 - "$BPID" "$MNT/py:1" "$T/inflight.ready" >"$T/inflight.out" <<'PY' &
import errno, mmap, os, signal, sys, time
pid, d, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
readers = {"stats.json": (os.open(d + "/stats.json", os.O_RDONLY), 0),
           "image.raw(O_DIRECT)": (os.open(d + "/image.raw", os.O_RDONLY | os.O_DIRECT), 6 * 524288)}
os.kill(pid, signal.SIGSTOP)
# SIGSTOP takes effect asynchronously: a blockd thread still on a CPU could
# answer a reader's request first.  Fork the readers once every thread of
# blockd is stopped.
def stopped():
    states = []
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            states.append(open("/proc/%d/task/%s/stat" % (pid, t)).read().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass  # a thread that just ended
    return all(st in ("T", "t") for st in states)
for _ in range(1200):  # bounded: at least 60 s
    if stopped():
        break
    time.sleep(0.05)
kids = {}
for name, (fd, off) in readers.items():
    c = os.fork()
    if c == 0:
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        try:
            os.preadv(fd, [buf], off)
            os._exit(0)
        except OSError as e:
            os._exit(e.errno)
    kids[c] = name
def where(c):
    call = open("/proc/%d/syscall" % c).read().split()[0]
    state = open("/proc/%d/stat" % c).read().rsplit(")", 1)[1].split()[0]
    return call, state
def in_read(c):
    # Sleeping inside a system call: the read, which only blockd can answer.
    call, state = where(c)
    return call.isdigit() and state in ("S", "D")
for _ in range(1200):  # bounded: at least 60 s
    if all(in_read(c) for c in kids):
        open(ready, "w").write("blocked\n")
        break
    time.sleep(0.05)
else:
    open(ready, "w").write("never blocked: " + "; ".join(
        "%s in syscall %s, state %s" % ((kids[c],) + where(c)) for c in kids) + "\n")
for c, name in kids.items():
    _, st = os.waitpid(c, 0)
    e = os.waitstatus_to_exitcode(st)
    print(name, errno.errorcode.get(e, str(e)))
PY
RPID=$!
track_pid $RPID
for ((i = 0; i < 900; i++)); do [ -s "$T/inflight.ready" ] && break; sleep 0.1; done
kill -KILL $BPID
{ wait $BPID; } 2>/dev/null || true # "Killed" is what we expect here
wait $RPID || die "the in-flight readers failed"
[ "$(cat "$T/inflight.ready")" = blocked ] || die "the readers did not both wait in their reads: $(cat "$T/inflight.ready")"
for r in stats.json "image.raw(O_DIRECT)"; do
  grep -qxF "$r ECONNABORTED" "$T/inflight.out" || { cat "$T/inflight.out" >&2; die "$r in flight at SIGKILL: not ECONNABORTED"; }
done
pass "(b) reads in flight when blockd was killed failed with ECONNABORTED"
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
