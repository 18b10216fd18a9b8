#!/bin/bash
# Build the initramfs of a kindling micro-VM: the guest init as /init and the
# kernel modules it needs to reach its root image and the host, for Debian's
# kernel package of this release (the one kvmm boots).
#
#   scripts/guest-initramfs.sh [--init PATH] OUT.cpio.gz [KERNEL_PKG_DIR]
#
#   --init PATH      the static init (default: kindling-guest-init in
#                    $KINDLING_BUILD_DIR, else build/)
#   KERNEL_PKG_DIR   an unpacked linux-image package (its root, holding boot/
#                    and lib/modules/); default: download and cache it with
#                    tests/nested/kernel.sh
#
# Modules: virtio, virtio_ring, virtio_mmio, virtio_blk, erofs, overlay, vsock,
# vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport and their
# dependencies, decompressed, listed in /modules.order dependencies first.
# What the package's config builds in (=y, modules.builtin) is left out.
# crc32c_generic goes first when it is a module: libcrc32c (which erofs
# needs) asks the crypto API for "crc32c" at load time, and with no modprobe in
# the initramfs only an already-loaded implementation can answer.
#
# The archive is reproducible: fixed timestamps, owner root, sorted names.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tests/nested/kernel.sh"

init=""
if [ "${1:-}" = --init ]; then
	init=${2:?--init needs a path}
	shift 2
fi
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 [--init PATH] OUT.cpio.gz [KERNEL_PKG_DIR]" >&2; exit 2; }
out=$1
kroot=${2:-}
if [ -z "$init" ]; then
	init=${KINDLING_BUILD_DIR:-$top/build}/kindling-guest-init
fi
[ -x "$init" ] || { echo "guest-initramfs: no init at $init (build the kindling-guest-init target, or pass --init)" >&2; exit 1; }
if ldd "$init" >/dev/null 2>&1; then
	echo "guest-initramfs: $init is dynamically linked; the initramfs has no libraries (use the kindling-guest-init target)" >&2
	exit 1
fi
command -v cpio >/dev/null || { echo "guest-initramfs: cpio is missing (Debian package cpio)" >&2; exit 1; }
if [ -z "$kroot" ]; then
	kroot=$(kernel_pkg_dir) || { echo "guest-initramfs: no kernel package; pass KERNEL_PKG_DIR" >&2; exit 1; }
fi
[ -d "$kroot/lib/modules" ] || { echo "guest-initramfs: $kroot has no lib/modules (want the root of an unpacked linux-image package)" >&2; exit 1; }

want=(virtio virtio_ring virtio_mmio virtio_blk erofs overlay vsock vmw_vsock_virtio_transport_common
	vmw_vsock_virtio_transport)
# Report what the config says about each, so a kernel that lacks one fails here
# and not at boot.
declare -A opt=([virtio]=VIRTIO [virtio_ring]=VIRTIO [virtio_mmio]=VIRTIO_MMIO [virtio_blk]=VIRTIO_BLK
	[erofs]=EROFS_FS [overlay]=OVERLAY_FS [vsock]=VSOCKETS [vmw_vsock_virtio_transport_common]=VIRTIO_VSOCKETS_COMMON
	[vmw_vsock_virtio_transport]=VIRTIO_VSOCKETS)
for m in "${want[@]}"; do
	v=$(kernel_config "$kroot" "${opt[$m]}")
	[ "$v" = y ] || [ "$v" = m ] || { echo "guest-initramfs: the kernel has CONFIG_${opt[$m]}=$v; kindling guests need it (y or m)" >&2; exit 1; }
done
[ "$(kernel_config "$kroot" DEVTMPFS)" = y ] || { echo "guest-initramfs: the kernel lacks CONFIG_DEVTMPFS" >&2; exit 1; }
if [ "$(kernel_config "$kroot" CRYPTO_CRC32C)" = m ]; then
	want=(crc32c_generic "${want[@]}")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
R=$work/root
mkdir -p "$R/lib/modules"
# Stripped: debug info would only make every boot unpack more bytes.
strip --strip-all -o "$R/init" "$init"
chmod 755 "$R/init"
mods=$(kernel_mod_closure "$kroot" "${want[@]}") || { echo "guest-initramfs: cannot resolve the modules" >&2; exit 1; }
: >"$R/modules.order"
for rel in $mods; do
	name=${rel##*/}
	name=${name%%.ko*}.ko
	kernel_mod_install "$kroot" "$rel" "$R/lib/modules/$name"
	echo "/lib/modules/$name" >>"$R/modules.order"
done
find "$R" -exec touch -h -d @0 {} +
tmp=$out.tmp-$$
(cd "$R" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc --quiet --reproducible --owner=0:0) | gzip -n -6 >"$tmp" ||
	{ rm -f "$tmp"; echo "guest-initramfs: writing $out failed" >&2; exit 1; }
mv -f "$tmp" "$out"
echo "guest-initramfs: $out: init $(stat -c %s "$init") bytes, $(wc -l <"$R/modules.order") modules ($(tr '\n' ' ' <"$R/modules.order" | sed 's|/lib/modules/||g; s|\.ko||g')), $(stat -c %s "$out") bytes" >&2
