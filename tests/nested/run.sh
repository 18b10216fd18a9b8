#!/bin/bash
# Run a payload inside a Linux guest that has a working /dev/kvm, on a host
# that has none: QEMU in software emulation (TCG) with an AMD CPU model that
# offers SVM and nested paging boots Debian's own kernel, and the guest's
# init loads irqbypass, kvm, ccp and kvm-amd (DESIGN.md, "testing KVM code").
#
#   tests/nested/run.sh [--mem MIB] [--smp N] [--timeout S] [--append ARGS]
#                       [--modules M1,M2,...] PAYLOAD_DIR SCRIPT [ARG...]
#
# PAYLOAD_DIR is copied to /payload in the guest, with the shared libraries of
# every ELF in it (ldd) at their host paths; /payload/SCRIPT ARG... runs with
# /payload as its working directory, after proc, sys, dev (devtmpfs) and /tmp
# (tmpfs) are mounted and /dev/kvm exists.  busybox provides the usual
# commands.  --modules loads more of the kernel's modules (with their
# dependencies) after the KVM ones, e.g. fuse or vhost_vsock.  The console
# streams to stdout and to $NESTED_LOG if that is set.
#
# Exit status: SCRIPT's, read from the marker line the guest's init prints
# after it; 124 if no marker appeared within the timeout (the QEMU this script
# started is killed); 125 if the guest stopped without a marker (a panic, no
# /dev/kvm: see the console) or the harness could not be set up.
#
# The kernel package is downloaded once into $KINDLING_CACHE_DIR (default
# $KINDLING_BUILD_DIR/cache); see tests/nested/kernel.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/kernel.sh"

mem=1024 smp=1 timeout_s=300 append="" extra_mods=""
usage() {
	echo "usage: $0 [--mem MIB] [--smp N] [--timeout S] [--append ARGS] [--modules M,...] PAYLOAD_DIR SCRIPT [ARG...]" >&2
	exit 125
}
while [ $# -gt 0 ]; do
	case $1 in
	--mem) mem=${2:?}; shift 2 ;;
	--smp) smp=${2:?}; shift 2 ;;
	--timeout) timeout_s=${2:?}; shift 2 ;;
	--append) append=${2:?}; shift 2 ;;
	--modules) extra_mods=${2:?}; shift 2 ;;
	--) shift; break ;;
	-*) usage ;;
	*) break ;;
	esac
done
[ $# -ge 2 ] || usage
payload=$(cd "$1" && pwd) || { echo "nested: no payload directory $1" >&2; exit 125; }
script=$2
shift 2
[ -x "$payload/$script" ] || { echo "nested: $payload/$script is not an executable file" >&2; exit 125; }
for v in "$mem" "$smp" "$timeout_s"; do
	[[ $v =~ ^[0-9]+$ ]] || usage
done
for tool in qemu-system-x86_64 cpio ldd; do
	command -v "$tool" >/dev/null || { echo "nested: $tool is missing (Debian packages qemu-system-x86, cpio, libc-bin)" >&2; exit 125; }
done
busybox=/bin/busybox
[ -x "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1 ||
	{ echo "nested: a static /bin/busybox is needed (Debian package busybox-static)" >&2; exit 125; }

rc=0
kroot=$(kernel_pkg_dir) || rc=$?
[ $rc = 0 ] || { echo "nested: no kernel package" >&2; exit 125; }
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1)

work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-nested.XXXXXX")
qpid="" tpid=""
cleanup() {
	[ -n "$qpid" ] && kill "$qpid" 2>/dev/null || true
	[ -n "$qpid" ] && wait "$qpid" 2>/dev/null || true
	[ -n "$tpid" ] && kill "$tpid" 2>/dev/null || true
	[ -n "$tpid" ] && wait "$tpid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the outer initramfs -------------------------------------------------------------------------------------------
R=$work/root
mkdir -p "$R"/{sbin,tmp,run,etc}
kernel_inner_root "$kroot" "$R" irqbypass kvm ccp kvm_amd ${extra_mods//,/ } ||
	{ echo "nested: cannot set up the guest's root and its modules" >&2; exit 125; }

cp -a "$payload" "$R/payload"
# Every dynamically linked ELF gets its libraries and loader at the host paths.
copy_libs() {
	local f=$1 lib
	ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(0x/ {print $1}' | while read -r lib; do
		[ -e "$R$lib" ] && continue
		mkdir -p "$R$(dirname "$lib")"
		cp -L "$lib" "$R$lib"
	done
}
while IFS= read -r -d '' f; do
	[ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
	copy_libs "$f"
done < <(find "$R/payload" -type f -print0)
# copy_dlopened SONAME PACKAGE: a library opened with dlopen, which ldd does
# not show, at its host path with what it needs.  awk reads to the end:
# leaving early would SIGPIPE ldconfig, which pipefail and set -e turn into a
# silent exit.
copy_dlopened() {
	local path
	path=$(ldconfig -p | awk -v l="$1" '$1 == l && /x86-64/ && !found {print $NF; found = 1}')
	[ -n "$path" ] || { echo "nested: $1 not found (ldconfig -p); install $2" >&2; exit 125; }
	[ -e "$R$path" ] && return 0
	mkdir -p "$R$(dirname "$path")"
	cp -L "$path" "$R$path"
	copy_libs "$path"
}
# glibc opens libgcc_s (pthread_cancel, unwinding); kindling's programs open
# libcrypto on first use (common/crypto_lazy.c).
copy_dlopened libgcc_s.so.1 libgcc-s1
if [ -n "$(find "$R/payload" -maxdepth 1 -type f \( -name kvmm -o -name kindling -o -name chunkify \) -print -quit)" ]; then
	copy_dlopened libcrypto.so.3 libssl3
fi

args=""
for a in "$@"; do
	args+=" '${a//\'/\'\\\'\'}'"
done
marker=KINDLING_NESTED_EXIT
cat >"$R/init" <<EOF
#!/bin/sh
# The applet links are made here: hundreds of ln on the host cost seconds.
/bin/busybox --install -s /bin
export PATH=/payload:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
echo "nested: up \$(cut -d' ' -f1 /proc/uptime) s after kernel start"
while read -r m; do
	insmod "\$m" || echo "nested: insmod \$m failed"
done </modules.order
if [ -c /dev/kvm ]; then
	echo "nested: /dev/kvm ready at \$(cut -d' ' -f1 /proc/uptime) s"
	cd /payload
	/payload/$script$args
	rc=\$?
else
	echo "nested: no /dev/kvm after loading the modules (is the CPU model missing svm?)"
	rc=125
fi
sync
echo "$marker=\$rc"
poweroff -f
EOF
chmod 755 "$R/init"
(cd "$R" && find . -print0 | cpio --null -o -H newc --quiet) >"$work/outer.cpio" ||
	{ echo "nested: cpio failed" >&2; exit 125; }

# ---- boot ------------------------------------------------------------------------------------------------------------
log=${NESTED_LOG:-$work/console.log}
: >"$log"
t0=$(date +%s.%N)
qemu-system-x86_64 -accel tcg -cpu qemu64,+svm,+npt -m "$mem" -smp "$smp" -nographic -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/outer.cpio" \
	-append "console=ttyS0 panic=-1 quiet loglevel=4 $append" </dev/null >>"$log" 2>&1 &
qpid=$!
tail -n +1 -f --pid="$qpid" "$log" &
tpid=$!

status=""
deadline=$((SECONDS + timeout_s))
while [ $SECONDS -lt $deadline ]; do
	if status=$(grep -ao "$marker=[0-9]*" "$log" | tail -1) && [ -n "$status" ]; then
		break
	fi
	kill -0 "$qpid" 2>/dev/null || break
	sleep 0.2
done
# The marker comes before poweroff; give the guest a moment to stop by itself.
for ((i = 0; i < 50; i++)); do
	kill -0 "$qpid" 2>/dev/null || break
	sleep 0.1
done
if kill -0 "$qpid" 2>/dev/null; then
	kill "$qpid" 2>/dev/null || true
fi
wait "$qpid" 2>/dev/null || true
qpid=""
wait "$tpid" 2>/dev/null || true
tpid=""
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
if [ -z "$status" ]; then
	status=$(grep -ao "$marker=[0-9]*" "$log" | tail -1 || true)
fi
if [ -z "$status" ]; then
	if [ $SECONDS -ge $deadline ]; then
		echo "nested: no exit marker within ${timeout_s}s; QEMU stopped (console above)" >&2
		exit 124
	fi
	echo "nested: the guest stopped after ${took}s without an exit marker (panic or crash? console above)" >&2
	exit 125
fi
rc=${status#*=}
echo "nested: $script exited $rc; ${took}s from QEMU start to poweroff" >&2
exit "$rc"
