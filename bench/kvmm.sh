#!/bin/bash
# kvmm against QEMU, booting the same kernel, guest initramfs and EROFS root
# under the same (nested) KVM, in one run:
#   - boot: seconds from the monitor's process start to the guest init's first
#     console line ("kindling guest init started");
#   - a whole invocation: to the monitor's exit, after the init ran /bin/true,
#     sent its exit status over vsock and powered off;
#   - the monitor's own memory: VmRSS minus the resident part of guest RAM,
#     when the init's first line appears (and the largest seen, sampled every
#     100 ms); see tests/tools/vmm_bench.c.
# Each is the median of --runs runs per monitor, kvmm and QEMU alternating,
# with the ratio kvmm/QEMU (below 1 means kvmm is faster or smaller).  One
# outer vCPU: a kvmm vCPU thread once soft-locked in the outer guest with two.
#
#   bench/kvmm.sh [--runs N] [--mem MIB] [--build DIR]
#
# QEMU runs as `qemu-system-x86_64 -accel kvm -M microvm` (virtio-mmio devices
# in ACPI, as kvmm does; firmware qboot, bios-microvm.bin) with a
# vhost-vsock device; the host end of the invocation channel is guest_peer on
# a unix socket (kvmm) or on AF_VSOCK (QEMU).  The machine here has no
# /dev/kvm, so all of it runs inside tests/nested/run.sh's TCG guest:
# absolute times are those of a software-emulated CPU, so read the ratios.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tests/nested/kernel.sh"

runs=5 mem=256 build=${KINDLING_BUILD_DIR:-$top/build}
while [ $# -gt 0 ]; do
	case $1 in
	--runs) runs=${2:?}; shift 2 ;;
	--mem) mem=${2:?}; shift 2 ;;
	--build) build=${2:?}; shift 2 ;;
	*) echo "usage: $0 [--runs N] [--mem MIB] [--build DIR]" >&2; exit 2 ;;
	esac
done
[[ $runs =~ ^[1-9][0-9]*$ && $mem =~ ^[1-9][0-9]*$ ]] || { echo "bench: --runs and --mem take positive numbers" >&2; exit 2; }
export KINDLING_BUILD_DIR=$build
for prog in kvmm kindling-guest-init guest_peer vmm_bench; do
	[ -x "$build/$prog" ] || { echo "bench: $prog is not built in $build (cmake --build $build)" >&2; exit 1; }
done
for tool in qemu-system-x86_64 mkfs.erofs cpio; do
	command -v "$tool" >/dev/null || { echo "bench: $tool is missing (Debian packages qemu-system-x86, erofs-utils, cpio)" >&2; exit 1; }
done
fw=/usr/share/qemu/bios-microvm.bin
[ -r "$fw" ] || { echo "bench: $fw is missing (Debian package qemu-system-data)" >&2; exit 1; }

kroot=$(kernel_pkg_dir) || { echo "bench: no kernel package" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-bench-kvmm.XXXXXX")
trap 'rm -rf "$work"' EXIT
P=$work/payload
mkdir -p "$P/qemu" "$work/root/bin" "$work/root/etc"

# The root image: static busybox is all /bin/true needs.
cp /bin/busybox "$work/root/bin/busybox"
ln -s busybox "$work/root/bin/true"
ln -s busybox "$work/root/bin/sh"
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/root/etc/passwd"
mkfs.erofs --quiet --all-root -T0 "$P/rootfs.erofs" "$work/root" >/dev/null
cp "$(ls "$kroot"/boot/vmlinuz-* | head -1)" "$P/vmlinuz"
"$top/scripts/guest-initramfs.sh" --init "$build/kindling-guest-init" "$P/initrd.cpio.gz" "$kroot"
cp "$build/kvmm" "$build/guest_peer" "$build/vmm_bench" "$(command -v qemu-system-x86_64)" "$P/"
cp -L "$fw" "$P/qemu/"

cat >"$P/vm.json" <<EOF
{
  "boot-source": { "kernel_image_path": "/payload/vmlinuz", "initrd_path": "/payload/initrd.cpio.gz" },
  "drives": [ { "drive_id": "rootfs", "path_on_host": "/payload/rootfs.erofs", "is_root_device": true, "is_read_only": true } ],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $mem },
  "vsock": { "guest_cid": 3, "uds_path": "/tmp/k.sock" }
}
EOF

cat >"$P/bench.sh" <<EOF
#!/bin/sh
runs=$runs mem=$mem
EOF
cat >>"$P/bench.sh" <<'EOF'
cd /payload
marker="kindling guest init started"
[ -c /dev/vhost-vsock ] || { echo "bench: no /dev/vhost-vsock in the TCG guest (vhost_vsock module)"; exit 1; }
wait_sock() { w=0; while [ ! -S "$1" ] && [ $w -lt 200 ]; do sleep 0.05; w=$((w+1)); done; }
one() {
	kind=$1
	if [ "$kind" = kvmm ]; then
		./guest_peer --unix /tmp/k.sock_1024 --timeout 90 -- /bin/true >/tmp/peer.out 2>&1 &
		peer=$!
		wait_sock /tmp/k.sock_1024
		./vmm_bench --label kvmm --marker "$marker" --guest-mib "$mem" --timeout 90 -- \
			./kvmm --no-api --config-file /payload/vm.json </dev/null >/tmp/one.out || echo "bench: a kvmm run failed"
	else
		./guest_peer --vsock 1024 --timeout 90 -- /bin/true >/tmp/peer.out 2>&1 &
		peer=$!
		sleep 0.2 # AF_VSOCK has no file to wait for; listen() is immediate
		./vmm_bench --label qemu --marker "$marker" --guest-mib "$mem" --timeout 90 -- \
			./qemu-system-x86_64 -accel kvm -cpu host -M microvm,x-option-roms=off -m "$mem" -smp 1 \
			-nodefaults -no-user-config -nographic -no-reboot -serial stdio -L /payload/qemu \
			-kernel /payload/vmlinuz -initrd /payload/initrd.cpio.gz \
			-append "console=ttyS0 reboot=k panic=1 pci=off quiet" \
			-drive id=root,file=/payload/rootfs.erofs,format=raw,if=none,readonly=on \
			-device virtio-blk-device,drive=root -device vhost-vsock-device,guest-cid=3 \
			</dev/null >/tmp/one.out || echo "bench: a qemu run failed"
	fi
	wait $peer || { echo "bench: the $kind guest's /bin/true did not report exit 0:"; cat /tmp/peer.out; }
	# On the console as it happens, so a run that hangs shows where.
	cat /tmp/one.out
	cat /tmp/one.out >>/tmp/results
}
: >/tmp/results
run=0
while [ $run -lt $runs ]; do
	one kvmm
	one qemu
	run=$((run + 1))
done
# Medians per monitor and field, then kvmm/qemu.
awk '
function median(kind, f,   n, i, j, t, a) {
	n = cnt[kind]
	for (i = 1; i <= n; i++) a[i] = v[kind, f, i]
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
$1 == "vmm_bench:" && $6 >= 0 && $8 == 0 {
	k = $2; c = ++cnt[k]
	for (i = 3; i < NF; i += 2) v[k, $i, c] = $(i + 1)
}
END {
	if (!cnt["kvmm"] || !cnt["qemu"]) { print "bench: not enough good runs (kvmm " cnt["kvmm"] + 0 ", qemu " cnt["qemu"] + 0 ")"; exit 1 }
	split("marker_s exit_s overhead_kib max_overhead_kib rss_kib", fs, " ")
	for (i = 1; i <= 5; i++) {
		f = fs[i]; a = median("kvmm", f); b = median("qemu", f)
		printf "bench: %-17s kvmm %10.3f  qemu %10.3f  kvmm/qemu %.2f\n", f, a, b, b ? a / b : 0
	}
	printf "bench: runs: kvmm %d, qemu %d good\n", cnt["kvmm"], cnt["qemu"]
}' /tmp/results
EOF
chmod 755 "$P/bench.sh"

log=$work/nested.out
rc=0
"$top/tests/nested/run.sh" --mem $((mem * 2 + 1024)) --smp 1 --timeout $((runs * 90 + 120)) --modules vhost_vsock \
	"$P" bench.sh >"$log" 2>&1 || rc=$?
tr -d '\r' <"$log" | grep -a '^bench:\|^vmm_bench:\|^nested:'
[ $rc = 0 ] || { tail -40 "$log" >&2; echo "bench: the nested run failed ($rc)" >&2; exit 1; }
