#!/usr/bin/env bash
# Build the OCI image layouts of kindling's Lambda test functions (what they
# are and the event protocol their handlers speak: tests/images/README.md).
#
#   tests/images/make-lambda-images.sh OUTDIR     the layouts, in OUTDIR
#   tests/images/make-lambda-images.sh --prepare  only the cached runtime build
#
# OUTDIR gets two OCI layouts, each with the tags "1" and "2" (2 adds one
# layer that changes only /var/task/version.txt, for code-update tests):
#   OUTDIR/lambda-node    Debian's Node.js 18 + aws-lambda-ric, /var/task/index.js
#   OUTDIR/lambda-shell   busybox sh + the host's curl, a bootstrap custom runtime
# and OUTDIR/lambda-images.env, shell assignments naming the versions inside.
#
# Debian's nodejs is never installed on the host (the host may have its own
# Node.js): its packages are fetched with `apt-get download` and unpacked with
# `dpkg-deb -x`.  aws-lambda-ric's native part is compiled against those Node.js
# 18 headers (npm_config_nodedir), from the aws-lambda-cpp and curl sources the
# package bundles; that takes minutes, so it is done once and kept in the cache
# (KINDLING_PEER_CACHE, default /var/cache/kindling/peers):
#   debian-nodejs-<deb version>/           the unpacked Debian packages
#   aws-lambda-ric-<ric>-node<node>/       the built runtime, its build log
#   layouts/<image>-<sha256 of inputs>/    finished layouts, reused while every
#                                          input file and this script are the same
# Delete the directory to start from nothing.  Runs hold $CACHE/.lock, so
# concurrent runs wait for each other instead of building twice.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
SRC=$here/lambda
RIC_VERSION=3.3.0
CACHE=${KINDLING_PEER_CACHE:-/var/cache/kindling/peers}
EPOCH=@1600000000             # every mtime in the images
CREATED=2020-09-13T12:26:40Z  # the images' and their history's creation time
# Debian packages unpacked beside nodejs/libnode108/libnode-dev: the shared
# libraries libnode links (so the image does not depend on what the host has
# installed), libuv's headers (the ric's native code includes uv.h), and the
# JavaScript modules Debian's Node.js loads from /usr/share/nodejs at start.
NODE_DEPS=(libuv1 libuv1-dev libc-ares2 libicu72 libnghttp2-14 libbrotli1
  node-acorn node-cjs-module-lexer node-undici node-busboy node-xtend)

log() { echo "make-lambda-images: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage="usage: make-lambda-images.sh OUTDIR | --prepare"
[ $# -eq 1 ] || die "$usage"
OUT=
[ "$1" = --prepare ] || OUT=$1
case $OUT in -*) die "$usage" ;; esac

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, and the layers' files are owned by root)"
need() { command -v "$1" >/dev/null || die "$1 is missing (Debian package $2; see scripts/apt-packages.txt)"; }
need apt-get apt; need apt-cache apt; need dpkg-deb dpkg; need flock util-linux
need npm npm; need node nodejs; need python3 python3; need make make; need g++ g++
need cmake cmake; need autoreconf autoconf; need automake automake; need libtoolize libtool
need umoci umoci; need tar tar; need sha256sum coreutils; need ldd libc-bin; need curl curl
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
  die "/bin/busybox is missing or not static (Debian package busybox-static)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "waiting for another run that holds $CACHE/.lock (at most 30 minutes)"
  flock -w 1800 9 || die "$CACHE/.lock is still held after 30 minutes"
fi

# Holding the lock, any .tmp-* left in the cache is a killed run's: remove it.
rm -rf "$CACHE"/.tmp-*
W=$(mktemp -d "${TMPDIR:-/tmp}/make-lambda-images.XXXXXX")
trap 'rm -rf "$W" "$CACHE"/.tmp-*."$$"' EXIT

# ---- Debian's Node.js 18, unpacked ----------------------------------------------------------------------------
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
NODE_DEB=$(candidate libnode108)
if [ -z "$NODE_DEB" ] || [ "$NODE_DEB" = "(none)" ]; then
  log "apt knows no libnode108 yet: apt-get update"
  apt-get update -qq >/dev/null || die "apt-get update failed"
  NODE_DEB=$(candidate libnode108)
fi
[ -n "$NODE_DEB" ] && [ "$NODE_DEB" != "(none)" ] ||
  die "Debian's libnode108 (Node.js 18) is not available from apt; is this Debian 12 (bookworm) with its main archive configured?"
STAGE=$CACHE/debian-nodejs-$NODE_DEB
if [ ! -e "$STAGE/.complete" ]; then
  log "fetching Debian's Node.js $NODE_DEB (apt-get download, unpacked into $STAGE)"
  tmp=$CACHE/.tmp-stage.$$
  rm -rf "$tmp"; mkdir -p "$tmp/debs" "$tmp/root"
  (cd "$tmp/debs" && apt-get download -o APT::Sandbox::User=root nodejs="$NODE_DEB" libnode108="$NODE_DEB" \
    libnode-dev="$NODE_DEB" "${NODE_DEPS[@]}") >"$tmp/download.log" 2>&1 ||
    { cat "$tmp/download.log" >&2; die "apt-get download of Debian's Node.js $NODE_DEB and its libraries failed"; }
  for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
  [ -x "$tmp/root/usr/bin/node" ] && [ -f "$tmp/root/usr/include/node/node_version.h" ] ||
    die "the unpacked packages have no usr/bin/node or node_version.h"
  touch "$tmp/.complete"
  rm -rf "$STAGE"; mv "$tmp" "$STAGE"
fi
NROOT=$STAGE/root
NODE_VERSION=$(awk '$2 == "NODE_MAJOR_VERSION" { a = $3 } $2 == "NODE_MINOR_VERSION" { b = $3 }
  $2 == "NODE_PATCH_VERSION" { c = $3 } END { print a "." b "." c }' "$NROOT/usr/include/node/node_version.h")
case $NODE_VERSION in 18.*) ;; *) die "Debian's libnode108 is Node.js $NODE_VERSION, not 18" ;; esac

# ---- aws-lambda-ric, built once against those headers --------------------------------------------------------
RIC=$CACHE/aws-lambda-ric-$RIC_VERSION-node$NODE_VERSION
ric_inputs=$(cat "$SRC/node/ric/package.json" "$SRC/node/ric/package-lock.json" | sha256sum | cut -c1-64)
if [ -e "$RIC/.complete" ] && [ "$(cat "$RIC/inputs.sha256" 2>/dev/null)" = "$ric_inputs" ]; then
  log "aws-lambda-ric $RIC_VERSION for Node.js $NODE_VERSION: cached in $RIC"
else
  tmp=$CACHE/.tmp-ric.$$
  rm -rf "$tmp"; mkdir -p "$tmp/build"
  log "building aws-lambda-ric $RIC_VERSION for Debian's Node.js $NODE_VERSION, once: this takes minutes (log: $tmp/build.log, kept as $RIC/build.log)"
  start=$(date +%s) jobs=$(nproc)
  cp "$SRC/node/ric/package.json" "$SRC/node/ric/package-lock.json" "$tmp/build/"
  # npm ci fetches the pinned packages; the ric's own install scripts then run
  # here, explicitly, whatever npm's policy on install scripts: preinstall.sh
  # builds curl and aws-lambda-cpp from deps/, postinstall.sh runs node-gyp
  # (under the host's Node.js, but against Debian's Node.js 18 headers).
  if ! (cd "$tmp/build" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error &&
    cd node_modules/aws-lambda-ric &&
    export npm_config_nodedir="$NROOT/usr" CXXFLAGS="-isystem $NROOT/usr/include" MAKEFLAGS="-j$jobs" &&
    sh scripts/preinstall.sh && sh scripts/postinstall.sh) >"$tmp/build.log" 2>&1; then
    tail -40 "$tmp/build.log" >&2
    cp "$tmp/build.log" "$CACHE/aws-lambda-ric-failed-build.log"
    die "building aws-lambda-ric failed (whole log: $CACHE/aws-lambda-ric-failed-build.log; it needs cmake, g++, autoconf, automake, libtool, python3 and the npm registry)"
  fi
  pkg=$tmp/build/node_modules/aws-lambda-ric
  [ -f "$pkg/dist/rapid-client.node" ] || die "aws-lambda-ric built no dist/rapid-client.node (see $tmp/build.log)"
  mkdir "$tmp/aws-lambda-ric"
  cp -a "$pkg"/{bin,dist,package.json,README.md,LICENSE,NOTICE,THIRD-PARTY-LICENSES} "$tmp/aws-lambda-ric/"
  rm -rf "$tmp/build"
  echo "$ric_inputs" >"$tmp/inputs.sha256"
  echo "$(($(date +%s) - start)) s" >"$tmp/build-time"
  touch "$tmp/.complete"
  rm -rf "$RIC" "$CACHE/aws-lambda-ric-failed-build.log"; mv "$tmp" "$RIC"
  log "aws-lambda-ric built in $(cat "$RIC/build-time")"
fi
[ -n "$OUT" ] || exit 0

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- root file system pieces ----------------------------------------------------------------------------------
# add_elf ROOT LIBDIR FILE...: copy the shared libraries each FILE needs (ldd,
# with LIBDIR searched first) into ROOT's /usr/lib/x86_64-linux-gnu, and the
# dynamic loader to /lib64.
add_elf() {
  local root=$1 libdir=$2 f lib
  shift 2
  mkdir -p "$root/usr/lib/x86_64-linux-gnu" "$root/lib64"
  [ -e "$root/lib" ] || ln -s usr/lib "$root/lib"
  cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
  for f in "$@"; do
    LD_LIBRARY_PATH=$libdir ldd "$f" >"$W/ldd" 2>&1 || die "ldd $f failed: $(cat "$W/ldd")"
    ! grep -q "not found" "$W/ldd" || die "$f needs libraries that are missing here: $(grep "not found" "$W/ldd" | tr -s '\t ' ' ')"
    awk '$2 == "=>" && $3 ~ /^\// { print $3 }' "$W/ldd" | while read -r lib; do
      [ -e "$root/usr/lib/x86_64-linux-gnu/${lib##*/}" ] || cp -L "$lib" "$root/usr/lib/x86_64-linux-gnu/"
    done
  done
}

base_files() { # ROOT
  mkdir -p "$1/etc" "$1/tmp" "$1/var/task" "$1/var/runtime"
  chmod 1777 "$1/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
  echo 'root:x:0:' >"$1/etc/group"
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$1/etc/hosts"
}

# Each image is a list of layer directories under $W/NAME/ (l1, l2, ... and v2
# for tag 2) plus its config; build_layers writes them.
build_node_layers() {
  local d=$W/lambda-node
  # layer 1: Debian's node, its libraries and the modules it loads from /usr/share/nodejs
  base_files "$d/l1"
  mkdir -p "$d/l1/usr/bin" "$d/l1/usr/share"
  cp -L "$NROOT/usr/bin/node" "$d/l1/usr/bin/node"
  add_elf "$d/l1" "$NROOT/usr/lib/x86_64-linux-gnu" "$NROOT/usr/bin/node" "$RIC/aws-lambda-ric/dist/rapid-client.node"
  cp -a "$NROOT/usr/share/nodejs" "$d/l1/usr/share/nodejs"
  ln -s nodejs "$d/l1/usr/share/node_modules"
  # layer 2: the runtime interface client
  mkdir -p "$d/l2/var/runtime/node_modules"
  cp -a "$RIC/aws-lambda-ric" "$d/l2/var/runtime/node_modules/aws-lambda-ric"
  # layer 3: the function; v2: a new code version
  mkdir -p "$d/l3/var/task" "$d/v2/var/task"
  cp "$SRC/node/index.js" "$d/l3/var/task/index.js"
  echo 1 >"$d/l3/var/task/version.txt"
  echo 2 >"$d/v2/var/task/version.txt"
  cat >"$d/config" <<EOF
--config.entrypoint /usr/bin/node --config.entrypoint /var/runtime/node_modules/aws-lambda-ric/bin/index.mjs
--config.cmd index.handler --config.workingdir /var/task
--config.env PATH=/usr/local/bin:/usr/bin:/bin --config.env LANG=C.UTF-8
--config.env LAMBDA_TASK_ROOT=/var/task --config.env LAMBDA_RUNTIME_DIR=/var/runtime
--config.env NODE_PATH=/var/runtime/node_modules:/var/runtime:/var/task
EOF
  echo "Debian nodejs $NODE_DEB|aws-lambda-ric $RIC_VERSION|function index.js" >"$d/history"
}

build_shell_layers() {
  local d=$W/lambda-shell a
  # layer 1: busybox (sh and the tools the bootstrap uses) and the host's curl
  base_files "$d/l1"
  mkdir -p "$d/l1/bin" "$d/l1/usr/bin"
  cp /bin/busybox "$d/l1/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$d/l1/bin/$a"; done
  cp -L "$(command -v curl)" "$d/l1/usr/bin/curl"
  add_elf "$d/l1" "" "$d/l1/usr/bin/curl"
  # layer 2: the runtime; layer 3: the function; v2: a new code version
  mkdir -p "$d/l2/var/runtime" "$d/l3/var/task" "$d/v2/var/task"
  install -m 0755 "$SRC/shell/bootstrap" "$d/l2/var/runtime/bootstrap"
  cp "$SRC/shell/function.sh" "$d/l3/var/task/function.sh"
  echo 1 >"$d/l3/var/task/version.txt"
  echo 2 >"$d/v2/var/task/version.txt"
  cat >"$d/config" <<EOF
--config.entrypoint /var/runtime/bootstrap --config.cmd function.handler --config.workingdir /var/task
--config.env PATH=/usr/local/bin:/usr/bin:/bin --config.env LANG=C.UTF-8
--config.env LAMBDA_TASK_ROOT=/var/task --config.env LAMBDA_RUNTIME_DIR=/var/runtime
EOF
  echo "busybox-static and curl|custom runtime bootstrap|function function.sh" >"$d/history"
}

pin_times() { find "$1" -exec touch -h -d "$EPOCH" {} +; }

# tree_hash DIR: a digest of DIR's names, types, modes, owners and contents.
tree_hash() {
  tar --sort=name --mtime="$EPOCH" --owner=0 --group=0 --numeric-owner -C "$1" -cf - . | sha256sum | cut -c1-64
}

# make_layout NAME: OUT/NAME from the layer directories, through the cache.
make_layout() {
  local name=$1 d=$W/$1 key l hist i=0 cached tag
  key=$( {
    sha256sum "$0" | cut -c1-64
    for l in l1 l2 l3 v2; do tree_hash "$d/$l"; done
    cat "$d/config" "$d/history"
  } | sha256sum | cut -c1-64)
  cached=$CACHE/layouts/$name-$key
  if [ -e "$cached/.complete" ]; then
    log "$name: layout cached ($cached)"
  else
    log "$name: building the layout with umoci"
    local tmp=$CACHE/.tmp-layout-$name.$$ hist_args=(--history.created "$CREATED" --history.author kindling-tests)
    rm -rf "$tmp"; mkdir -p "$CACHE/layouts"
    umoci init --layout "$tmp"
    umoci new --image "$tmp:1"
    umoci config --image "$tmp:1" --created "$CREATED" --no-history --os linux --architecture amd64
    umoci unpack --image "$tmp:1" "$W/bundle-$name" >/dev/null
    IFS='|' read -r -a hist <"$d/history"
    for l in l1 l2 l3; do
      cp -a "$d/$l/." "$W/bundle-$name/rootfs/"
      pin_times "$W/bundle-$name/rootfs"
      umoci repack --refresh-bundle "${hist_args[@]}" --history.created_by "${hist[$i]}" \
        --image "$tmp:1" "$W/bundle-$name" >/dev/null
      i=$((i + 1))
    done
    # tag 2: tag 1's layers plus the new code version (repack appends to the
    # manifest the bundle was last refreshed from, so the config comes after)
    cp -a "$d/v2/." "$W/bundle-$name/rootfs/"
    pin_times "$W/bundle-$name/rootfs"
    umoci repack --refresh-bundle "${hist_args[@]}" --history.created_by "code version 2" \
      --image "$tmp:2" "$W/bundle-$name" >/dev/null
    for tag in 1 2; do
      # shellcheck disable=SC2046 # the config file holds one flag and value per word
      umoci config --image "$tmp:$tag" --no-history $(cat "$d/config")
    done
    umoci gc --layout "$tmp"
    rm -rf "$W/bundle-$name"
    touch "$tmp/.complete"
    rm -rf "$CACHE/layouts/$name"-*
    mv "$tmp" "$cached"
  fi
  if [ "$(cat "$OUT/.$name.key" 2>/dev/null)" != "$key" ]; then
    rm -rf "${OUT:?}/$name" "$OUT/.$name.key"
    cp -a "$cached" "$OUT/$name"
    rm -f "$OUT/$name/.complete"
    echo "$key" >"$OUT/.$name.key"
  fi
  log "$name: oci:$OUT/$name:1 and :2"
}

build_node_layers
build_shell_layers
make_layout lambda-node
make_layout lambda-shell
cat >"$OUT/lambda-images.env" <<EOF
LAMBDA_NODE_LAYOUT=$OUT/lambda-node
LAMBDA_SHELL_LAYOUT=$OUT/lambda-shell
LAMBDA_NODE_VERSION=$NODE_VERSION
LAMBDA_NODE_DEB_VERSION=$NODE_DEB
LAMBDA_RIC_VERSION=$RIC_VERSION
EOF
