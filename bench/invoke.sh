#!/usr/bin/env bash
# Invoke latency of `kindling serve` (bench/invoke.py), with its baselines in
# the same run: a plain loopback HTTP echo server for warm invokes; for the
# plain Python image's cold invoke, `kindling run` of the same image and the
# eager path (bench/eager.sh: skopeo copy from a local docker-registry + umoci
# unpack, then the same handler in the same process sandbox); for the Node.js
# image's cold invoke, `kindling run` of the same image and handler.
#
#   bench/invoke.sh [WARM_N] [BURST_N]     (defaults 500 and 50)
#
# Builds the Node.js Lambda test image (tests/images/make-lambda-images.sh;
# its aws-lambda-ric build is cached) and the plain image
# (tests/images/make-hostagent-images.sh), starts docker-registry and
# `kindling serve --no-auth` on free loopback ports with a private
# KINDLING_HOME (tests/integration/lib.sh: scratch directory, cleanup), and
# stops them on exit.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/invoke.sh: run as root (sandboxes mount images)" >&2; exit 1; }
export KINDLING_BUILD_DIR=${KINDLING_BUILD_DIR:-$top/build}
build=$KINDLING_BUILD_DIR
[ -x "$build/kindling" ] || "$top/scripts/setup.sh" "$build"
for t in kindling chunkify sandbox_run; do
  [ -x "$build/$t" ] || { echo "bench/invoke.sh: $build/$t is not built" >&2; exit 1; }
done
. "$top/tests/integration/lib.sh" # T (scratch, removed on exit), KINDLING_HOME, track_pid
. "$top/tests/images/registry.sh"

timeout 900 "$top/tests/images/make-lambda-images.sh" "$T/img" >"$T/images.log" 2>&1 ||
  { tail -20 "$T/images.log" >&2; die "bench/invoke.sh: building the Lambda images failed"; }
timeout 600 "$top/tests/images/make-hostagent-images.sh" "$T/haimg" >"$T/haimages.log" 2>&1 ||
  { tail -20 "$T/haimages.log" >&2; die "bench/invoke.sh: building the plain image failed"; }
"$build/chunkify" import "oci:$T/haimg/py-stdio:1" --name bench-plain:1 >/dev/null
"$build/chunkify" inspect bench-plain:1 --json >"$T/plain-inspect.json"
"$build/chunkify" import "oci:$T/img/lambda-node:1" --name bench-node:1 >/dev/null
start_registry
push_layout "$T/haimg/py-stdio" 1 bench-plain:1

port=$(free_port)
"$build/kindling" serve --no-auth --listen "127.0.0.1:$port" --state-dir "$T/serve" --isolation process \
  >"$T/serve.out" 2>"$T/serve.err" &
serve_pid=$!
track_pid "$serve_pid"
for _ in $(seq 1 600); do
  grep -q "Lambda API on http://127.0.0.1:$port" "$T/serve.out" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$T/serve.err" >&2; exit 1; }
  sleep 0.1
done
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
timeout 1200 python3 "$top/bench/invoke.py" "$port" "oci:$T/img/lambda-node:1" "${1:-500}" "${2:-50}" \
  --kindling "$build/kindling" --scratch "$T" \
  --plain bench-plain:1 --node bench-node:1 \
  --eager "$top/bench/eager.sh" --eager-src "docker://$REGISTRY/bench-plain:1" \
  --sandbox-run "$build/sandbox_run" --plain-config "$T/plain-inspect.json" ||
  { tail -30 "$T/serve.err" >&2; exit 1; }
