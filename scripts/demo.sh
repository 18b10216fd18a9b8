#!/usr/bin/env bash
# The main job on the embedded defaults: build a demo image from local files,
# import it into the default file store, import a second version that shares
# its base layers and show what deduplicated, then run it with `kindling run`:
# cold (an empty L1 cache: chunks come from the store as Python touches them)
# and again warm (from L1), printing the time to first output of each.
# Running needs root (the process sandbox mounts the image and makes namespaces).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh" "$top/build"
chunkify=$top/build/chunkify
kindling=$top/build/kindling
export KINDLING_HOME=${KINDLING_HOME:-$HOME/.kindling}

work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "== building a demo OCI image from this machine's files (umoci)"
umoci init --layout demo >/dev/null
umoci new --image demo:v1
umoci unpack --image demo:v1 bundle >/dev/null
# Layer 1: the python3 interpreter, its loader and shared libraries.  Layer 2:
# the Python standard library.  Layer 3: time zone data.  Layer 4: the app.
"$top/scripts/python-rootfs.sh" bundle/rootfs
umoci repack --refresh-bundle --image demo:v1 bundle
mkdir -p bundle/rootfs/usr/lib
cp -a /usr/lib/python3.11 bundle/rootfs/usr/lib/
umoci repack --refresh-bundle --image demo:v1 bundle
mkdir -p bundle/rootfs/usr/share
cp -a /usr/share/zoneinfo bundle/rootfs/usr/share/
umoci repack --refresh-bundle --image demo:v1 bundle
mkdir -p bundle/rootfs/app
printf 'import json, zoneinfo\nprint(json.dumps({"hello": "from kindling"}))\n' > bundle/rootfs/app/handler.py
umoci repack --refresh-bundle --image demo:v1 bundle
umoci config --image demo:v1 --config.entrypoint python3 --config.cmd /app/handler.py \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.workingdir /app

# Version 2: the same base layers plus a changed app layer.
umoci tag --image demo:v1 v2
printf 'import json, zoneinfo\nprint(json.dumps({"hello": "from kindling", "version": 2}))\n' > bundle/rootfs/app/handler.py
echo "extra" > bundle/rootfs/app/extra.txt
umoci repack --refresh-bundle --image demo:v2 bundle
umoci config --image demo:v2 --config.entrypoint python3 --config.cmd /app/handler.py \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.workingdir /app

echo
echo "== chunkify import oci:demo:v1  (store: $KINDLING_HOME/store)"
"$chunkify" import "oci:$work/demo:v1" --name demo:v1
echo
echo "== chunkify import oci:demo:v2  (shares the base layers with v1)"
"$chunkify" import "oci:$work/demo:v2" --name demo:v2
echo
echo "== chunkify ls"
"$chunkify" ls
echo
echo "== chunkify verify demo:v2"
"$chunkify" verify demo:v2
"$chunkify" export demo:v2 "$work/demo-v2.erofs"
if command -v fsck.erofs >/dev/null; then
  fsck.erofs "$work/demo-v2.erofs" >/dev/null && echo "fsck.erofs: the exported image is a valid EROFS filesystem"
fi

echo
if [ "$(id -u)" != 0 ]; then
  echo "== kindling run needs root (the process sandbox mounts the image); skipping the runs"
  exit 0
fi
# A fresh L1 directory makes the first run cold; the second run finds its chunks there.
echo "== kindling run demo:v2  (cold: empty L1, chunks fetched from the store as they are read)"
"$kindling" run demo:v2 --l1-dir "$work/l1"
echo
echo "== kindling run demo:v2  (warm: the same L1)"
"$kindling" run demo:v2 --l1-dir "$work/l1"
