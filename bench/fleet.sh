#!/usr/bin/env bash
# A kindling fleet under load (bench/fleet_load.py) on this machine: three
# etcd members, a placement service, four host agents and two frontends on
# loopback (tests/tools/fleet.sh), 20 functions of the shell Lambda test
# image with Zipf popularity.  Two runs of the same load, one after the
# other: healthy, then with a host agent, an etcd member and a frontend
# killed at 1/4, 1/2 and 3/4 of the run.  Each prints invokes/s, the
# cold-start fraction, p50/p99, 429s, errors and Event invokes accepted; the
# faulty run also checks that every accepted Event invoke was delivered.
# Then the baseline, in the same run: the fleet stopped, the same load on one
# `kindling serve` (its in-process agent, state on its disk, no etcd), and
# the healthy fleet's figures as ratios to it.
#
#   bench/fleet.sh [CLIENTS=200] [SECONDS=60]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/fleet.sh: run as root (sandboxes mount images)" >&2; exit 1; }
build=${KINDLING_BUILD_DIR:-$top/build}
[ -x "$build/kindling" ] || "$top/scripts/setup.sh" "$build"
CLIENTS=${1:-200} SECONDS_RUN=${2:-60}
T=$(mktemp -d "${TMPDIR:-/tmp}/kindling-bench-fleet.XXXXXX")
KINDLING=$build/kindling
_pids=()
track_pid() { _pids+=("$1"); }
die() { echo "bench/fleet.sh: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
. "$top/tests/tools/fleet.sh"
cleanup() {
  set +e
  stop_fleet 2>/dev/null
  local p i m
  for p in "${_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${_pids[@]}"; do
    for ((i = 0; i < 300; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  # A process killed hard leaves its FUSE mount behind.
  for m in $(awk -v t="$T" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m"; done
  rm -rf "$T"
}
trap cleanup EXIT
export KINDLING_HOME=$T/home
mkdir -p "$KINDLING_HOME"

timeout 900 "$top/tests/images/make-lambda-images.sh" "$T/img" >"$T/images.log" 2>&1 ||
  { tail -20 "$T/images.log" >&2; die "building the Lambda images failed"; }
"$build/chunkify" --store "$T/warmup" import "oci:$T/img/lambda-shell:1" --name warm:1 >/dev/null
start_fleet "$T/fleet" 4 2
export AWS_SHARED_CREDENTIALS_FILE=$FLEET_CREDS AWS_PROFILE=kindling AWS_CONFIG_FILE=/dev/null AWS_MAX_ATTEMPTS=1 AWS_PAGER=""
API_PORT=${FE_PORT[0]}
lam() { /usr/bin/aws --endpoint-url "http://127.0.0.1:$API_PORT" --region us-east-1 --output json lambda "$@"; }
create_functions() {
  fns=""
  for i in $(seq -w 1 20); do
    lam create-function --function-name load$i --package-type Image --code "ImageUri=oci:$T/img/lambda-shell:1" \
      --timeout 60 --memory-size 128 --role arn:aws:iam::000000000000:role/bench >/dev/null
    fns="$fns${fns:+,}load$i"
  done
  for i in $(seq -w 1 20); do lam wait function-active-v2 --function-name load$i; done
}
create_functions
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
run_load() { # NAME [ENDPOINTS]
  python3 "$top/bench/fleet_load.py" --endpoints "${2:-http://127.0.0.1:${FE_PORT[0]},http://127.0.0.1:${FE_PORT[1]}}" \
    --credentials "$FLEET_CREDS" --functions "$fns" --clients "$CLIENTS" --seconds "$SECONDS_RUN" \
    --event-fraction 0.1 --accepted "$T/$1.events" --out "$T/$1.json" >/dev/null
}
run_load healthy
echo "healthy: $(jq -c . "$T/healthy.json")"
run_load faults &
load=$!
quarter=$(awk -v s="$SECONDS_RUN" 'BEGIN { printf "%.1f", s / 4 }')
sleep "$quarter"; kill_agent 3
sleep "$quarter"; kill_etcd_member 2
sleep "$quarter"; kill_frontend 1
wait $load
restart_etcd_member 2
start_agent 3
start_frontend 1
echo "faults (agent h3, etcd member 2, frontend 1 killed at 1/4, 1/2, 3/4): $(jq -c . "$T/faults.json")"
cat "$T/faults.events" "$T/healthy.events" | grep . | sort -u >"$T/accepted"
for _ in $(seq 1 180); do
  { grep -rhos --include='*.log*' 'START RequestId: [^ ]*' "$T"/fleet/agent*/ | awk '{print $3}'
    etcdctl --endpoints "$ETCD_ENDPOINTS" get --prefix --print-value-only kindling/dlq/ 2>/dev/null | jq -r '.RequestId // empty'; } |
    sort -u >"$T/seen"
  lost=$(comm -23 "$T/accepted" "$T/seen" | wc -l)
  [ "$lost" = 0 ] && break
  sleep 1
done
echo "accepted Event invokes not delivered within 3 minutes: $lost of $(wc -l <"$T/accepted")"

stop_fleet
API_PORT=$(free_port)
mkdir -p "$T/single"
"$KINDLING" serve --listen "127.0.0.1:$API_PORT" --state-dir "$T/single" --credentials "$FLEET_CREDS" \
  --store "$FLEET_STORE" >"$T/single/serve.out" 2>"$T/single/serve.err" &
track_pid $!
for _ in $(seq 1 600); do
  grep -q "Lambda API on http://127.0.0.1:$API_PORT" "$T/single/serve.out" 2>/dev/null && break
  sleep 0.1
done
create_functions
run_load single "http://127.0.0.1:$API_PORT"
echo "baseline, one kindling serve (no etcd, one agent): $(jq -c . "$T/single.json")"
jq -rn --slurpfile f "$T/healthy.json" --slurpfile b "$T/single.json" \
  '"healthy fleet / one kindling serve: invokes/s \($f[0].invokes_per_s / $b[0].invokes_per_s * 100 | round / 100)x, p50 \($f[0].p50_ms / $b[0].p50_ms * 100 | round / 100)x, p99 \($f[0].p99_ms / $b[0].p99_ms * 100 | round / 100)x"'
