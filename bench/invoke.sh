#!/usr/bin/env bash
# Invoke latency of `kindling serve` (bench/invoke.py), with its baselines in
# the same run: a plain loopback HTTP echo server for warm invokes, and
# `kindling run` of the same plain image for a cold invoke.
#
#   bench/invoke.sh [WARM_N] [BURST_N]     (defaults 500 and 50)
#
# Builds the Node.js Lambda test image (tests/images/make-lambda-images.sh;
# its aws-lambda-ric build is cached), starts `kindling serve --no-auth` on a
# free loopback port with a private KINDLING_HOME, and stops it on exit.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/invoke.sh: run as root (sandboxes mount images)" >&2; exit 1; }
build=${KINDLING_BUILD_DIR:-$top/build}
[ -x "$build/kindling" ] || "$top/scripts/setup.sh" "$build"
work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-bench-invoke.XXXXXX")
serve_pid=
cleanup() {
  [ -z "$serve_pid" ] || { kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
export KINDLING_HOME=$work/home
mkdir -p "$KINDLING_HOME"

timeout 900 "$top/tests/images/make-lambda-images.sh" "$work/img" >"$work/images.log" 2>&1 ||
  { tail -20 "$work/images.log" >&2; echo "bench/invoke.sh: building the Lambda images failed" >&2; exit 1; }
timeout 600 "$top/tests/images/make-hostagent-images.sh" "$work/haimg" >"$work/haimages.log" 2>&1 ||
  { tail -20 "$work/haimages.log" >&2; echo "bench/invoke.sh: building the plain image failed" >&2; exit 1; }
"$build/chunkify" import "oci:$work/haimg/py-stdio:1" --name bench-plain:1 >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$build/kindling" serve --no-auth --listen "127.0.0.1:$port" --state-dir "$work/serve" --isolation process \
  >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 1 600); do
  grep -q "Lambda API on http://127.0.0.1:$port" "$work/serve.out" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
  sleep 0.1
done
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
timeout 1200 python3 "$top/bench/invoke.py" "$port" "oci:$work/img/lambda-node:1" "${1:-500}" "${2:-50}" \
  bench-plain:1 "$work/l1-run" "$build/kindling" ||
  { tail -30 "$work/serve.err" >&2; exit 1; }
