#!/usr/bin/env bash
# Install what kindling needs on Debian 12 and build it.  Idempotent: a second
# run installs nothing and rebuilds only what changed.
#   scripts/setup.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
shift || true

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

mapfile -t pkgs < <(grep -v '^\s*#' "$top/scripts/apt-packages.txt" | sed 's/\s//g' | grep .)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# Node.js runs the npm test peers; install Debian's only if no node is present
# (a machine may carry its own Node.js build, which Debian's npm conflicts with).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Test peers from npm (s3rver), pinned by package-lock.json.
if [ -f "$top/tests/peers/package.json" ]; then
  if [ ! -d "$top/tests/peers/node_modules" ] || [ "$top/tests/peers/package-lock.json" -nt "$top/tests/peers/node_modules" ]; then
    (cd "$top/tests/peers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules)
  fi
fi

# The Node.js Lambda test image's runtime: aws-lambda-ric built against Debian's
# Node.js 18, once per machine, into KINDLING_PEER_CACHE (default
# /var/cache/kindling/peers).  The first build takes minutes; later runs reuse
# it.  KINDLING_SETUP_LAMBDA_RUNTIME=0 skips it (the tests then build it).
if [ "${KINDLING_SETUP_LAMBDA_RUNTIME:-1}" != 0 ]; then
  "${sudo_cmd[@]}" env ${KINDLING_PEER_CACHE:+KINDLING_PEER_CACHE="$KINDLING_PEER_CACHE"} \
    "$top/tests/images/make-lambda-images.sh" --prepare
fi

cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
echo "setup: built in $build"
