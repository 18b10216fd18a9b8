#!/usr/bin/env bash
# The eager path users take today, as every benchmark here measures it: copy
# the whole image with skopeo, then unpack every layer with umoci.
#
#   bench/eager.sh SRC DEST [SKOPEO_COPY_ARGS...]
#
# SRC is a skopeo source (oci:LAYOUT:TAG, docker://HOST:PORT/REPO:TAG, ...);
# DEST, a directory that must not exist yet, gets the copied OCI layout in
# DEST/copy and the unpacked bundle in DEST/bundle, whose root filesystem is
# DEST/bundle/rootfs.  Extra arguments go to `skopeo copy` (for example
# --src-tls-verify=false for a plain-http local registry).  The caller times
# it and removes DEST.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bench/eager.sh SRC DEST [SKOPEO_COPY_ARGS...]" >&2; exit 2; }
src=$1 dest=$2
shift 2
for t in skopeo umoci; do
  command -v $t >/dev/null || { echo "bench/eager.sh: $t is missing (scripts/apt-packages.txt)" >&2; exit 1; }
done
[ ! -e "$dest" ] || { echo "bench/eager.sh: $dest already exists; give a new directory" >&2; exit 1; }
mkdir -p "$dest"
skopeo copy -q "$@" "$src" "oci:$dest/copy:eager" >/dev/null
umoci unpack --image "$dest/copy:eager" "$dest/bundle" >/dev/null
