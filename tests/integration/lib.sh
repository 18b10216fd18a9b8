# Shared helpers for integration tests.  Source it first thing:
#   . "$(dirname "$0")/lib.sh"
# It gives every test a private scratch directory and KINDLING_HOME, kills the
# servers the test started (by PID, nothing else) and removes the scratch
# directory on exit.
set -euo pipefail

KINDLING_SOURCE_DIR=${KINDLING_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
KINDLING_BUILD_DIR=${KINDLING_BUILD_DIR:-$KINDLING_SOURCE_DIR/build}
CHUNKIFY=${CHUNKIFY:-$KINDLING_BUILD_DIR/chunkify}
TOOLS_DIR=$KINDLING_BUILD_DIR

T=$(mktemp -d "${TMPDIR:-/tmp}/kindling-test.XXXXXX")
export KINDLING_HOME=$T/home
# A host blockd named in the environment must not serve the tests' runs.
unset KINDLING_BLOCKD_CONTROL
mkdir -p "$KINDLING_HOME"
_pids=()
_mounts=()

_cleanup() {
  local rc=$?
  for m in "${_mounts[@]+"${_mounts[@]}"}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for p in "${_pids[@]+"${_pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${_pids[@]+"${_pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
  exit $rc
}
trap _cleanup EXIT

# Remember a background PID so cleanup kills it.
track_pid() { _pids+=("$1"); }
# Remember a mount point so cleanup unmounts it.
track_mount() { _mounts+=("$1"); }

die() { echo "FAIL: $*" >&2; exit 1; }

# Why this host cannot run a micro-VM from the build directory, as the
# sandbox words it: without a usable /dev/kvm it says so; with one (some hosts
# have it) the guest kernel, which nothing puts next to the programs, is what
# is missing.  The nested-KVM tests (61-67) cover the micro-VM itself.
# The -c test comes first: bash's <> creates a file that is not there, and a
# regular /dev/kvm left behind would change every later test's answer.
kvm_usable() { [ -c /dev/kvm ] && (exec 3<>/dev/kvm) 2>/dev/null; }
microvm_refusal() {
  if kvm_usable; then
    echo "microvm sandbox cannot run on this host: the guest kernel $KINDLING_BUILD_DIR/kindling-guest-kernel: No such file or directory (set KINDLING_GUEST_KERNEL)"
  else
    echo "microvm sandbox cannot run on this host: cannot open /dev/kvm"
  fi
}
# The reason isolation auto gives for falling back to the process sandbox.
microvm_auto_fallback() {
  if kvm_usable; then
    echo "notice: isolation auto: using the process sandbox (the guest kernel $KINDLING_BUILD_DIR/kindling-guest-kernel: No such file or directory (set KINDLING_GUEST_KERNEL))"
  else
    echo "notice: isolation auto: using the process sandbox (no usable /dev/kvm on this host)"
  fi
}
skip() { echo "SKIP: $*" >&2; exit 77; }
pass() { echo "ok: $*"; }

# A free TCP port on 127.0.0.1.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# Wait (at most $2 seconds, default 20) until 127.0.0.1:$1 accepts connections.
wait_port() {
  local port=$1 limit=${2:-20} i
  for ((i = 0; i < limit * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listening on 127.0.0.1:$port after ${limit}s"
}

# Expect a command to fail; prints its stderr to $T/last.err.
expect_fail() {
  if "$@" >"$T/last.out" 2>"$T/last.err"; then
    cat "$T/last.out" "$T/last.err" >&2
    die "expected failure: $*"
  fi
}

# Assert that no temporary files remain under a directory.
assert_no_tmp() {
  local left
  left=$(find "$1" -name '.tmp-*' -o -name '*.tmp' 2>/dev/null | head -5)
  [ -z "$left" ] || die "temporary files left behind in $1: $left"
}

# start_memcached INDEX [PORT]: a memcached on 127.0.0.1 (a free port unless
# given), recorded in the caller's arrays PID[INDEX] and PORT[INDEX], killed at
# exit.  Values up to 2 MiB (a fragment or chunk plus header).
start_memcached() {
  local i=$1 p=${2:-$(free_port)} user=()
  [ "$(id -u)" = 0 ] && user=(-u root) # memcached refuses to run as root without -u
  memcached "${user[@]}" -l 127.0.0.1 -p "$p" -U 0 -m 64 -I 2m &
  PID[$i]=$!
  PORT[$i]=$p
  track_pid "${PID[$i]}"
  wait_port "$p"
}

# For the tests of `kindling run` in the process sandbox: set KINDLING, and
# die (missing tools are a failure, not a skip) unless it is built and the
# tools "$@", static busybox, root and /dev/fuse are there.
need_kindling_run() {
  KINDLING=$KINDLING_BUILD_DIR/kindling
  [ -x "$KINDLING" ] || die "kindling not built at $KINDLING (build the project first)"
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
  done
  [ -x /bin/busybox ] || die "/bin/busybox is missing (Debian package busybox-static)"
  [ "$(id -u)" = 0 ] || die "the process sandbox needs root"
  [ -e /dev/fuse ] || die "/dev/fuse is missing"
}

# kr NAME ARGS...: kindling run ARGS (at most 120 s); stdout to $T/NAME.out,
# stderr to $T/NAME.err; returns its status.
kr() {
  local name=$1 rc=0
  shift
  timeout 120 "$KINDLING" run "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
  return $rc
}

# microvm_payload P [TOOL...]: for the tests that run kindling's micro-VMs
# inside a nested-KVM guest (tests/nested/run.sh): check the tools (QEMU,
# cpio, gzip, objcopy, static busybox, and TOOL...) and the build (kvmm,
# kindling, chunkify, the guest init), get Debian's kernel (skip where apt
# does not know it), and fill the payload directory P: kvmm, kindling,
# chunkify, the libraries kindling opens on first use (libcurl for kvmm's
# API socket, libmicrohttpd for an HTTP server; run.sh brings libcrypto),
# which ldd does not show, the guest kernel and the guest initramfs.  Inside, set
# KINDLING_KVMM=/payload/kvmm KINDLING_GUEST_KERNEL=/payload/vmlinuz
# KINDLING_GUEST_INITRD=/payload/initrd.cpio.gz KINDLING_GUEST_BOOT_TIMEOUT=300 LD_LIBRARY_PATH=/payload/lib.
microvm_payload() {
  local P=$1 tool prog rc=0 kroot vmlinuz lib path
  shift
  . "$KINDLING_SOURCE_DIR/tests/nested/kernel.sh"
  for tool in qemu-system-x86_64 cpio gzip objcopy "$@"; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt: qemu-system-x86, cpio, binutils, ...)"
  done
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "a static /bin/busybox is needed (busybox-static)"
  for prog in kvmm kindling chunkify kindling-guest-init; do
    [ -x "$KINDLING_BUILD_DIR/$prog" ] || die "$prog is not built in $KINDLING_BUILD_DIR"
  done
  kroot=$(kernel_pkg_dir) || rc=$?
  [ $rc = 2 ] && skip "apt does not know linux-image-amd64 here"
  [ $rc = 0 ] || die "cannot get Debian's kernel package"
  vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1)
  mkdir -p "$P/lib"
  cp "$KINDLING_BUILD_DIR/kvmm" "$KINDLING_BUILD_DIR/kindling" "$KINDLING_BUILD_DIR/chunkify" "$P/"
  for lib in libcurl.so.4 libmicrohttpd.so.12; do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !found {print $NF; found = 1}') # to the end: no SIGPIPE
    [ -n "$path" ] || die "$lib not found (ldconfig -p); install libcurl4 and libmicrohttpd12"
    cp -L "$path" "$P/lib/$lib"
  done
  cp "$vmlinuz" "$P/vmlinuz"
  "$KINDLING_SOURCE_DIR/scripts/guest-initramfs.sh" --init "$KINDLING_BUILD_DIR/kindling-guest-init" \
    "$P/initrd.cpio.gz" "$kroot" 2>"$T/initramfs.log" || { cat "$T/initramfs.log" >&2; die "scripts/guest-initramfs.sh failed"; }
}

# nested_outcome OUT RC N: after tests/nested/run.sh wrote its console to OUT
# and exited RC, show the payload's "nested-ok:"/"nested-fail:" lines; on a
# failure show it and what the payload printed after it (or the console's
# end) and die; die unless exactly N checks passed.
nested_outcome() {
  local out=$1 rc=$2 want=$3 n
  grep -a '^nested-\|^nested:' "$out" | tr -d '\r' || true # none at all: the harness failed; shown below
  if [ "$rc" != 0 ]; then
    # From the first failure on: the check, then the files it printed.
    sed -n '/^nested-fail/,$p' "$out" | head -300 >&2
    grep -aq '^nested-fail' "$out" || tail -80 "$out" >&2
    die "the nested run failed with $rc"
  fi
  n=$(grep -ac '^nested-ok' "$out")
  [ "$n" = "$want" ] || die "$n of $want nested checks passed"
}
