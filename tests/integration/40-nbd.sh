#!/bin/bash
# blockd's NBD server against real NBD clients.  nbd_serve_file serves a
# 64 MiB file of random data with holes, read-only, on a unix socket and on
# tcp:127.0.0.1:0, and we check, byte for byte where it applies:
#   nbdinfo (size, read-only, block size constraints, --list), nbdcopy and
#   qemu-img convert copies, an unknown export name, four concurrent
#   nbdcopy runs, hostile clients next to a running nbdcopy, writes refused
#   with EPERM and a backend read error reported as EIO (nbdsh with libnbd's
#   client-side checks off), and a clean exit 0 on SIGTERM.
# Missing tools are a failure, not a skip (see scripts/apt-packages.txt).
. "$(dirname "$0")/lib.sh"

SERVE=$TOOLS_DIR/nbd_serve_file
[ -x "$SERVE" ] || die "nbd_serve_file not built at $SERVE (build the project first)"
for tool in nbdinfo nbdcopy nbdsh qemu-img jq python3 cmp; do
  command -v $tool >/dev/null || die "$tool is not installed (apt-get install libnbd-bin python3-libnbd qemu-utils jq; see scripts/apt-packages.txt)"
done
# nbdsh is "python3 -m nbd"; a python3 earlier in PATH (pyenv, venv) may
# lack the libnbd bindings that Debian installs for /usr/bin/python3.
NBDPY=
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import nbd' 2>/dev/null; then NBDPY=$py; break; fi
done
[ -n "$NBDPY" ] || die "no python3 with the libnbd bindings (apt-get install python3-libnbd)"
nbdsh() { "$NBDPY" -m nbd "$@"; }

SIZE=$((64 * 1024 * 1024))
IMG=$T/image.raw
# Random data with holes: 8 MiB random, a 4 MiB hole, then random pieces at
# odd offsets, and a hole at the end.
truncate -s $SIZE "$IMG"
python3 - "$IMG" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for off, n in ((0, 8 << 20), (12582912, 3000001), (20000001, 3000001), (33554431, 3000001), (50331648, 3000001)):
        f.seek(off)
        f.write(os.urandom(n))
PY
[ "$(stat -c %s "$IMG")" = $SIZE ] || die "test image has the wrong size"

# Start nbd_serve_file on $2 with export name $3; sets SRV_PID and SRV_ADDR.
start_server() {
  local tag=$1 addr=$2 name=$3 i
  "$SERVE" "$IMG" "$addr" "$name" >"$T/$tag.out" 2>"$T/$tag.err" &
  SRV_PID=$!
  track_pid $SRV_PID
  for ((i = 0; i < 100; i++)); do
    [ -s "$T/$tag.out" ] && break
    kill -0 $SRV_PID 2>/dev/null || { cat "$T/$tag.err" >&2; die "nbd_serve_file on $addr exited"; }
    sleep 0.1
  done
  SRV_ADDR=$(head -n 1 "$T/$tag.out")
  [ -n "$SRV_ADDR" ] || die "nbd_serve_file on $addr printed no address"
}

# Stop a server with SIGTERM and insist on exit status 0.
stop_server() {
  local pid=$1 tag=$2 rc=0
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  [ $rc = 0 ] || { tail -n 20 "$T/$tag.err" >&2; die "nbd_serve_file ($tag) exited $rc on SIGTERM"; }
}

# ---- unix socket -----------------------------------------------------------------
SOCK=$T/nbd.sock
start_server unix "unix:$SOCK" disk
UPID=$SRV_PID
[ "$SRV_ADDR" = "unix:$SOCK" ] || die "unexpected address $SRV_ADDR"
URI="nbd+unix:///disk?socket=$SOCK"

nbdinfo --json "$URI" >"$T/info.json" || die "nbdinfo failed on $URI"
jq -e --argjson size $SIZE '.exports[0] |
    .["export-size"] == $size and .is_read_only == true and
    .block_size_minimum == 1 and .block_size_preferred == 4096 and .block_size_maximum == 33554432 and
    .["export-name"] == "disk" and (.description | startswith("file ")) and .can_flush == true and .can_multi_conn == true' "$T/info.json" >/dev/null ||
  { cat "$T/info.json"; die "nbdinfo --json reports the wrong export"; }
pass "nbdinfo: size, read-only, block sizes"

nbdinfo --list "nbd+unix://?socket=$SOCK" >"$T/list.out" || die "nbdinfo --list failed"
grep -q 'export="disk"' "$T/list.out" || { cat "$T/list.out"; die "nbdinfo --list does not show the export"; }
pass "nbdinfo --list"

expect_fail nbdinfo "nbd+unix:///nope?socket=$SOCK"
grep -qi 'unknown export\|not found\|nope' "$T/last.err" || { cat "$T/last.err"; die "unknown export failed without a clear reason"; }
pass "unknown export refused"

nbdcopy "$URI" "$T/out.raw" || die "nbdcopy failed"
cmp "$IMG" "$T/out.raw" || die "nbdcopy copy differs"
pass "nbdcopy copy is identical"

qemu-img convert -f raw -O raw "$URI" "$T/out2.raw" || die "qemu-img convert failed"
cmp "$IMG" "$T/out2.raw" || die "qemu-img copy differs"
pass "qemu-img convert copy is identical"
rm -f "$T/out.raw" "$T/out2.raw"

pids=()
for i in 1 2 3 4; do
  nbdcopy "$URI" "$T/par$i.raw" & pids+=($!)
done
for i in 1 2 3 4; do
  wait "${pids[$((i - 1))]}" || die "concurrent nbdcopy $i failed"
  cmp "$IMG" "$T/par$i.raw" || die "concurrent nbdcopy $i differs"
  rm -f "$T/par$i.raw"
done
pass "4 concurrent nbdcopy runs identical"

# Hostile clients while a copy runs: junk instead of client flags, a huge
# option length, junk after a good handshake, a slow half-sent request, and
# a client that vanishes mid-read.
nbdcopy --connections=1 --requests=4 "$URI" "$T/bg.raw" & BG=$!
python3 - "$SOCK" <<'PY' || die "hostile client script failed"
import socket, struct, sys, time
path = sys.argv[1]
IH = 0x49484156454f5054
def conn():
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(path); return s
def drain(s):
    try:
        while s.recv(65536): pass
    except OSError: pass
def opt(o, d=b""): return struct.pack(">QII", IH, o, len(d)) + d
def go(name): n = name.encode(); return opt(7, struct.pack(">I", len(n)) + n + b"\0\0")
for round_ in range(20):
    s = conn(); s.sendall(b"junk" * 100); drain(s); s.close()
    s = conn(); s.sendall(struct.pack(">I", 3) + struct.pack(">QII", IH, 7, 0xffffffff)); drain(s); s.close()
    s = conn(); s.sendall(struct.pack(">I", 3) + go("disk")); s.recv(4096); time.sleep(0.01)
    s.sendall(b"\xff" * 28); drain(s); s.close()
    s = conn(); s.sendall(struct.pack(">I", 3) + go("disk")); time.sleep(0.01)
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 32 << 20)); s.close()
    s = conn(); s.sendall(struct.pack(">I", 3)[:2]); s.close()
PY
wait $BG || die "nbdcopy next to hostile clients failed"
cmp "$IMG" "$T/bg.raw" || die "nbdcopy next to hostile clients differs"
rm -f "$T/bg.raw"
kill -0 $UPID || die "the server died under hostile clients"
grep -q 'protocol violation' "$T/unix.err" || die "protocol violations were not logged"
pass "hostile clients do not disturb a concurrent copy"

# Writes, trims and write-zeroes reach the server (libnbd's own checks off)
# and are refused with EPERM; the connection stays usable.
nbdsh -c "
import errno
h.set_strict_mode(0)
h.connect_uri('$URI')
assert h.is_read_only()
for name, fn in (('pwrite', lambda: h.pwrite(b'x' * 4096, 0)),
                 ('trim', lambda: h.trim(4096, 0)),
                 ('zero', lambda: h.zero(4096, 0))):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, (name, e)
    else:
        raise SystemExit(name + ' was not refused')
h.flush()
h.cache(65536, 0)
assert len(h.pread(4096, $SIZE - 4096)) == 4096
try:
    h.pread(4096, $SIZE - 1000)
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
else:
    raise SystemExit('read past the end was not refused')
h.shutdown()
" || die "write refusal / range checks over nbdsh failed"
pass "writes refused with EPERM, reads past the end with EINVAL"

stop_server $UPID unix
[ ! -e "$SOCK" ] || die "the socket file was left behind"
pass "SIGTERM stops the unix server (exit 0)"

# A stale socket file (nothing listening) is replaced.
python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])" "$SOCK"
start_server stale "unix:$SOCK" disk
nbdinfo --size "$URI" | grep -qx $SIZE || die "server on a replaced stale socket does not serve"
# ...but a live one is not.
expect_fail "$SERVE" "$IMG" "unix:$SOCK" disk
stop_server $SRV_PID stale
pass "stale socket replaced, live socket kept"

# ---- tcp, ephemeral port -----------------------------------------------------------
start_server tcp "tcp:127.0.0.1:0" ""
TPID=$SRV_PID
case $SRV_ADDR in tcp:127.0.0.1:[1-9]*) ;; *) die "unexpected tcp address $SRV_ADDR" ;; esac
PORT=${SRV_ADDR##*:}
nbdinfo --size "nbd://127.0.0.1:$PORT" | grep -qx $SIZE || die "nbdinfo over tcp reports the wrong size"
nbdcopy "nbd://127.0.0.1:$PORT" "$T/tcp.raw" || die "nbdcopy over tcp failed"
cmp "$IMG" "$T/tcp.raw" || die "nbdcopy over tcp differs"
rm -f "$T/tcp.raw"
qemu-img convert -f raw -O raw "nbd://127.0.0.1:$PORT" "$T/tcp2.raw" || die "qemu-img over tcp failed"
cmp "$IMG" "$T/tcp2.raw" || die "qemu-img over tcp differs"
rm -f "$T/tcp2.raw"
stop_server $TPID tcp
pass "tcp:127.0.0.1:0 -> $SRV_ADDR: nbdinfo, nbdcopy, qemu-img"

# ---- a backend read error is EIO for that request only ---------------------------
FAIL_AT=$((10 * 1024 * 1024 + 5))
KINDLING_NBD_FAIL_AT=$FAIL_AT start_server eio "unix:$T/eio.sock" disk
nbdsh -c "
import errno
h.connect_uri('nbd+unix:///disk?socket=$T/eio.sock')
try:
    h.pread(65536, $FAIL_AT - 100)
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
else:
    raise SystemExit('read over the bad byte succeeded')
with open('$IMG', 'rb') as f:
    f.seek(0)
    assert h.pread(65536, 0) == f.read(65536)
h.shutdown()
" || die "EIO check failed"
stop_server $SRV_PID eio
pass "backend read error -> EIO, connection stays up"

echo "40-nbd: all passed"
