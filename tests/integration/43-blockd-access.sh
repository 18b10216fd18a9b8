#!/bin/bash
# Who may talk to blockd, and slow clients next to a normal one, against the
# real daemon and real clients:
#   (a) started under umask 000, the control and NBD sockets are 0600 (the
#       NBD one also after an attach restarted its server), and nothing but
#       the sockets is left in their directory;
#   (b) uid 65534 (setpriv) can use neither socket: the mode keeps it out,
#       and with both modes loosened to 0666 by hand the daemon still
#       refuses it (SO_PEERCRED) and logs its uid;
#   (c) --socket-group GROUP: the sockets are 0660 with that group; uid 65534
#       with GROUP as a supplementary group runs `blockd ls` and reads the
#       export with nbdcopy, byte for byte; without the group it cannot;
#   (d) --nbd tcp:0.0.0.0:PORT is refused (exit 1, naming
#       --nbd-allow-remote) without the flag, and with it blockd serves and
#       warns that NBD has no authentication;
#   (e) three clients trickling a request one byte a second: `blockd ls`
#       from another client answers while they are still connected, and
#       each trickler is dropped (logged) before its request is complete.
# The test adds a group for (c) and removes it on exit.  Waits are bounded;
# nothing is timed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/blockd-lib.sh"
for tool in fusermount3 nbdinfo nbdcopy setpriv groupadd groupdel getent jq cmp; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
[ "$(id -u)" = 0 ] || die "run as root (the test acts as uid 65534 and adds a group)"
# uid 65534 cannot run root's python (pyenv under /root); the system one it can.
SYSPY=/usr/bin/python3
[ -x $SYSPY ] || die "$SYSPY is missing"

GROUP=kdtest$$
# lib.sh's cleanup (servers, mounts, scratch) runs last, with the test's exit
# status in $?; errexit is off here so that nothing can cut it short.
_access_cleanup() {
  local rc=$?
  set +e
  getent group "$GROUP" >/dev/null 2>&1 && groupdel "$GROUP"
  (exit $rc)
  _cleanup
}
trap _access_cleanup EXIT

# ---- an image --------------------------------------------------------------------------------------------------
mkdir -p "$T/src/app"
head -c 3000000 /dev/urandom >"$T/src/app/blob.bin"
STORE=$T/store
blockd_import_tree "$T/src" acc:1 "$T/acc.raw"

# The sockets live in $T/run; uid 65534 may pass through $T to reach them.
chmod 711 "$T"
RUN=$T/run
mkdir -p "$RUN"
CTL=$RUN/ctl.sock
NBD=$RUN/nbd.sock

# Every daemon here starts under umask 000: the sockets must not take their mode from it.
BLOCKD_UMASK=000
start_blockd() {
  local tag=$1 mnt=$2
  shift 2
  blockd_start "$tag" "$mnt" --store "$STORE" --no-prefetch "$@"
}
stop_blockd() { blockd_stop "$1"; }
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
mode() { stat -c %a "$1"; }

# ---- (a) modes under umask 000 ---------------------------------------------------------------------------------
chmod 755 "$RUN"
start_blockd a "$T/mnt" --control "$CTL" --nbd "unix:$NBD"
[ "$(mode "$CTL")" = 600 ] || die "control socket is mode $(mode "$CTL") under umask 000, not 600"
"$BLOCKD" --control "$CTL" attach acc:1 >/dev/null || die "attach failed"
[ -S "$NBD" ] || die "no NBD socket after the attach"
[ "$(mode "$NBD")" = 600 ] || die "NBD socket is mode $(mode "$NBD") under umask 000, not 600"
left=$(ls -A "$RUN" | sort | tr '\n' ' ')
[ "$left" = "ctl.sock nbd.sock " ] || die "the socket directory holds more than the sockets: $left"
nbdcopy "nbd+unix:///acc:1?socket=$NBD" "$T/copy.raw" && cmp "$T/copy.raw" "$T/acc.raw" || die "root cannot read the export"
rm -f "$T/copy.raw"
pass "(a) under umask 000: control and NBD sockets are 0600 (NBD also after a restart), nothing else left beside them"

# ---- (b) uid 65534 is refused ------------------------------------------------------------------------------------
if as_nobody "$BLOCKD" --control "$CTL" ls >"$T/b1.out" 2>"$T/b1.err"; then die "uid 65534 ran blockd ls"; fi
grep -q "Permission denied" "$T/b1.err" || { cat "$T/b1.err" >&2; die "uid 65534: not refused by the socket mode"; }
if as_nobody nbdinfo --size "nbd+unix:///acc:1?socket=$NBD" >/dev/null 2>&1; then die "uid 65534 read NBD"; fi
chmod 666 "$CTL" "$NBD"
if as_nobody "$BLOCKD" --control "$CTL" ls >"$T/b2.out" 2>"$T/b2.err"; then die "uid 65534 ran blockd ls on a 0666 socket"; fi
[ ! -s "$T/b2.out" ] || die "uid 65534 got a reply: $(cat "$T/b2.out")"
grep -q "closed the connection without a reply" "$T/b2.err" || { cat "$T/b2.err" >&2; die "the refused client was not told why"; }
if as_nobody nbdinfo --size "nbd+unix:///acc:1?socket=$NBD" >/dev/null 2>"$T/b3.err"; then die "uid 65534 read NBD on a 0666 socket"; fi
for i in $(seq 50); do
  [ "$(grep -c 'refused a connection from uid 65534' "$T/a.err")" -ge 2 ] && break
  sleep 0.1
done
grep -q "control socket $CTL: refused a connection from uid 65534" "$T/a.err" || die "control refusal not logged"
grep -q "nbd server unix:$NBD: refused a connection from uid 65534" "$T/a.err" || die "NBD refusal not logged"
pass "(b) uid 65534 is kept out by the 0600 mode, and refused (logged with its uid) on sockets loosened to 0666"

# ---- (e) trickling clients do not delay another ------------------------------------------------------------------
# Each trickler sends {"op": "ls"}\n one byte a second (13 s in all) and
# records what it sent and when the daemon closed the connection.
trickle=()
for n in 1 2 3; do
  python3 - "$CTL" "$T/trickle$n" <<'PY' &
import socket, sys, time
path, status = sys.argv[1], sys.argv[2]
msg = b'{"op": "ls"}\n'
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.settimeout(1.0)
sent = 0
def note(line):
    with open(status, "a") as f:
        f.write(line + "\n")
note("connected")
for b in msg:
    try:
        s.send(bytes([b]))
        sent += 1
        note("sent %d" % sent)
        if s.recv(1 << 16) == b"":
            break
    except socket.timeout:
        continue
    except OSError:
        break
note("closed after %d of %d bytes" % (sent, len(msg)))
PY
  trickle+=($!)
  track_pid $!
done
for n in 1 2 3; do
  for ((i = 0; i < 100; i++)); do grep -q "sent 1" "$T/trickle$n" 2>/dev/null && break; sleep 0.1; done
  grep -q "sent 1" "$T/trickle$n" || die "trickler $n never connected"
done
timeout 10 "$BLOCKD" --control "$CTL" ls >"$T/ls.out" || die "blockd ls did not answer while slow clients were connected"
[ "$(cut -f1 "$T/ls.out")" = "acc:1" ] || die "blockd ls: $(cat "$T/ls.out")"
for n in 1 2 3; do
  ! grep -q closed "$T/trickle$n" || die "trickler $n was dropped before ls answered: $(tail -1 "$T/trickle$n")"
done
for n in 1 2 3; do
  wait "${trickle[$((n - 1))]}" || die "trickler $n failed"
  last=$(tail -1 "$T/trickle$n")
  case $last in "closed after "*" of 13 bytes") ;; *) die "trickler $n: $last" ;; esac
  [ "${last#closed after 13 }" = "$last" ] || die "trickler $n sent its whole request before being dropped"
done
[ "$(grep -c 'sent no complete request within 5 s; dropping it' "$T/a.err")" = 3 ] || die "the drops were not logged"
pass "(e) blockd ls answered next to 3 trickling clients; each was dropped at the request deadline ($last)"
stop_blockd a
[ ! -e "$CTL" ] && [ ! -e "$NBD" ] || die "sockets left behind after SIGTERM"

# ---- (c) --socket-group ---------------------------------------------------------------------------------------------
groupadd "$GROUP" || die "groupadd $GROUP failed"
GID=$(getent group "$GROUP" | cut -d: -f3)
chgrp "$GROUP" "$RUN"
chmod 750 "$RUN"
as_member() { setpriv --reuid=65534 --regid=65534 --groups="$GID" -- "$@"; }
start_blockd c "$T/mnt" --control "$CTL" --nbd "unix:$NBD" --socket-group "$GROUP"
"$BLOCKD" --control "$CTL" attach acc:1 >/dev/null || die "attach failed"
for s in "$CTL" "$NBD"; do
  [ "$(stat -c '%a %G' "$s")" = "660 $GROUP" ] || die "$s is $(stat -c '%a %G' "$s"), not 660 $GROUP"
done
[ "$(as_member "$BLOCKD" --control "$CTL" ls | cut -f1)" = "acc:1" ] || die "a member of $GROUP cannot run blockd ls"
as_member nbdcopy "nbd+unix:///acc:1?socket=$NBD" - >"$T/member.raw" || die "a member of $GROUP cannot read NBD"
cmp "$T/member.raw" "$T/acc.raw" || die "the member's NBD copy differs"
if as_nobody "$BLOCKD" --control "$CTL" ls >/dev/null 2>&1; then die "a non-member ran blockd ls"; fi
if as_nobody nbdinfo --size "nbd+unix:///acc:1?socket=$NBD" >/dev/null 2>&1; then die "a non-member read NBD"; fi
grep -q "members of group $GROUP cannot reach" "$T/c.err" && die "blockd warned about a directory the group can reach"
stop_blockd c
pass "(c) --socket-group: sockets 0660 $GROUP; a member uses both, a non-member neither"

# ---- (d) a non-loopback NBD address --------------------------------------------------------------------------------
PORT=$(free_port)
if timeout 30 "$BLOCKD" serve --store "$STORE" --mount "$T/mnt" --control "$CTL" --nbd "tcp:0.0.0.0:$PORT" \
  >"$T/d1.out" 2>"$T/d1.err"; then
  die "blockd served NBD on 0.0.0.0 without --nbd-allow-remote"
fi
grep -q -- "--nbd-allow-remote" "$T/d1.err" || { cat "$T/d1.err" >&2; die "the refusal does not name --nbd-allow-remote"; }
[ ! -e "$CTL" ] || die "a refused start left its control socket"
# With the flag, and no image attached, blockd binds once (to check the
# address) and listens on nothing until an attach: the warning is printed
# and no port stays open.
start_blockd d "$T/mnt" --control "$CTL" --nbd "tcp:0.0.0.0:$PORT" --nbd-allow-remote
grep -q "NBD has no authentication" "$T/d.err" || { cat "$T/d.err" >&2; die "no warning that NBD has no authentication"; }
"$BLOCKD" --control "$CTL" ls >/dev/null || die "blockd with --nbd-allow-remote does not answer"
stop_blockd d
pass "(d) tcp:0.0.0.0 refused without --nbd-allow-remote, served with a warning with it"

echo "43-blockd-access: all passed"
