#!/bin/bash
# A kindling fleet on loopback (tests/tools/fleet.sh): a three-member etcd
# cluster, a placement service, four host agents (each with its own home, L1
# and mount) and two frontends (`kindling serve --etcd`), driven by Debian's
# AWS CLI and by @aws-sdk/client-lambda through either frontend:
#   - a function created on one frontend is seen, invoked and warm on the
#     other (warm reuse across frontends: the handler's counter goes on);
#   - static stability: with every etcd member down, warm invokes through
#     both frontends keep succeeding and a cold start fails fast with a clear
#     503; when etcd is back, cold starts work again with no operator action;
#     the same with the placement service down;
#   - SnapStart ApplyOn PublishedVersions is refused (no registered agent
#     can snapshot: they run process sandboxes), naming --isolation microvm;
#   - one etcd member of three killed: no visible effect;
#   - a host agent killed: its function is started elsewhere on the next
#     invoke, an invocation in flight on it gets a clear error, and Event
#     invokes accepted meanwhile are all delivered;
#   - a frontend killed with Event invokes it accepted still held back
#     (reserved concurrency 0): the other frontend serves every function and
#     delivers those events once the limit is lifted;
#   - a bounded load (bench/fleet_load.py: 12 functions, Zipf popularity, 40
#     clients for 30 s) with an agent, an etcd member and a frontend killed
#     in the middle: no accepted Event invoke is lost.
# ctest-labels: no-asan (many processes and sandboxes end to end; the fleet's C pieces run under ASan in their unit tests); no-tsan (fork-heavy sandboxes; the router and etcd client run under TSan in their unit tests)
. "$(dirname "$0")/lib.sh"
AWS=/usr/bin/aws
PY=/usr/bin/python3
KINDLING=$KINDLING_BUILD_DIR/kindling
RAW=$KINDLING_SOURCE_DIR/tests/integration/lambda_raw.py
export PEERS=$KINDLING_SOURCE_DIR/tests/peers/node_modules
[ -x "$KINDLING" ] || die "kindling not built at $KINDLING (build the project first)"
[ -x "$AWS" ] || die "$AWS is missing (Debian package awscli; see scripts/apt-packages.txt)"
for tool in jq curl umoci etcd etcdctl node; do command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"; done
[ -d "$PEERS/@aws-sdk/client-lambda" ] || die "@aws-sdk/client-lambda is missing (scripts/setup.sh runs npm ci in tests/peers)"
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
. "$KINDLING_SOURCE_DIR/tests/tools/fleet.sh"
trap '_rc=$?; set +e; stop_fleet; (exit $_rc); _cleanup' EXIT

timeout 840 "$KINDLING_SOURCE_DIR/tests/images/make-lambda-images.sh" "$T/img" >"$T/images.log" 2>&1 ||
  { tail -30 "$T/images.log" >&2; die "building the Lambda test images failed"; }
SHELL1=oci:$T/img/lambda-shell:1
# The tenant key and salt every process of the fleet shares.
"$KINDLING_BUILD_DIR/chunkify" --store "$T/warmup-store" import "$SHELL1" --name warm:1 >"$T/warmup.log" 2>&1 ||
  { cat "$T/warmup.log" >&2; die "chunkify import of the shell image failed"; }

start_fleet "$T/fleet" 4 2
pass "fleet up: etcd x3, placement, agents $(fleet_hosts), frontends on ${FE_PORT[0]} and ${FE_PORT[1]}"

export AWS_SHARED_CREDENTIALS_FILE=$FLEET_CREDS AWS_PROFILE=kindling AWS_CONFIG_FILE=$T/aws-config AWS_MAX_ATTEMPTS=1 AWS_PAGER=""
: >"$T/aws-config"
lam() { local fe=$1; shift; "$AWS" --endpoint-url "http://127.0.0.1:${FE_PORT[$fe]}" --region us-east-1 \
  --cli-binary-format raw-in-base64-out --cli-read-timeout 300 --output json lambda "$@"; }
# inv FE NAME PAYLOAD: a sync invoke through frontend FE; the answer in $T/out.json
inv() { lam "$1" invoke --function-name "$2" --payload "$3" "$T/out.json" >"$T/inv.json"; }
# count_of: the handler's counter in the last answer
count_of() { jq -r .count "$T/out.json"; }
# raw FE METHOD PATH [options]: one signed request (lambda_raw.py)
raw() { local fe=$1; shift; $PY "$RAW" "${FE_PORT[$fe]}" "$FLEET_CREDS" kindling "$@"; }
# warm_hosts NAME: the hosts whose registration lists an idle sandbox of NAME
warm_hosts() {
  etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout=3s get --prefix --print-value-only kindling/hosts/ 2>/dev/null |
    jq -r --arg f "$1" 'select(any(.warm[]?; .function == $f and .idle > 0)) | .id' | sort | tr '\n' ' ' | sed 's/ $//'
}
# wait_warm NAME: until some host publishes an idle sandbox of NAME
wait_warm() {
  local i
  for ((i = 0; i < 150; i++)); do
    [ -n "$(warm_hosts "$1")" ] && return 0
    sleep 0.2
  done
  die "no host registered an idle sandbox of $1 within 30 s"
}
# seen_ids FILE: every request id that started on some agent (its log has
# START) or sits in the dead-letter list, sorted, into FILE
seen_ids() {
  { grep -rhos --include='*.log*' 'START RequestId: [^ ]*' "$T"/fleet/agent*/ | awk '{print $3}'
    etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout=3s get --prefix --print-value-only kindling/dlq/ 2>/dev/null |
      jq -r '.RequestId // empty' 2>/dev/null; } | sort -u >"$1"
}
# wait_delivered FILE SECONDS: until every id in FILE is delivered or dead-lettered
wait_delivered() {
  local i missing
  sort -u "$1" | grep . >"$1.sorted" || true
  for ((i = 0; i < $2; i++)); do
    seen_ids "$T/seen"
    missing=$(comm -23 "$1.sorted" "$T/seen" | wc -l)
    [ "$missing" = 0 ] && return 0
    sleep 1
  done
  die "$missing accepted Event invokes were neither delivered nor dead-lettered after $2 s: $(comm -23 "$1.sorted" "$T/seen" | head -3)"
}
# event FE NAME: an Event invoke through FE; prints its request id
event() {
  raw "$1" POST "/2015-03-31/functions/$2/invocations" --body '{"event":true}' --header X-Amz-Invocation-Type:Event >"$T/ev.json"
  jq -e '.status == 202' "$T/ev.json" >/dev/null || die "Event invoke of $2 on frontend $1: $(cat "$T/ev.json")"
  jq -r '.headers["x-amzn-requestid"]' "$T/ev.json"
}

# ---- one function, two frontends -----------------------------------------------------------------------------------
for f in f1 f2 f3 f4; do
  lam 0 create-function --function-name $f --package-type Image --code "ImageUri=$SHELL1" --timeout 60 \
    --memory-size 128 --role arn:aws:iam::000000000000:role/test >/dev/null
done
lam 1 wait function-active-v2 --function-name f1
lam 1 wait function-active-v2 --function-name f4
[ "$(lam 1 list-functions | jq -r '[.Functions[].FunctionName] | join(",")')" = "f1,f2,f3,f4" ] ||
  die "frontend 1 does not list the functions created on frontend 0"
inv 1 f1 '{"n":1}'
[ "$(count_of)" = 1 ] || die "the first invoke of f1 was not a cold start: $(cat "$T/out.json")"
inv 1 f1 '{"n":2}'
[ "$(count_of)" = 2 ] || die "the second invoke of f1 through the same frontend was not warm: $(cat "$T/out.json")"
wait_warm f1
inv 0 f1 '{"n":3}'
[ "$(count_of)" = 3 ] || die "frontend 0 did not find f1's warm sandbox through the registrations: $(cat "$T/out.json")"
node --input-type=module -e "
import { LambdaClient, InvokeCommand, GetFunctionCommand } from '$PEERS/@aws-sdk/client-lambda/dist-cjs/index.js';
const c = new LambdaClient({ endpoint: 'http://127.0.0.1:${FE_PORT[1]}', region: 'us-east-1', maxAttempts: 1 });
const g = await c.send(new GetFunctionCommand({ FunctionName: 'f1' }));
if (g.Configuration.State !== 'Active') throw new Error('GetFunction: ' + g.Configuration.State);
const r = await c.send(new InvokeCommand({ FunctionName: 'f1', Payload: Buffer.from('{\"sdk\":1}') }));
const a = JSON.parse(Buffer.from(r.Payload).toString());
if (r.StatusCode !== 200 || r.FunctionError || a.count < 2) throw new Error('Invoke: ' + JSON.stringify(a));
" 2>"$T/sdk.err" || { cat "$T/sdk.err" >&2; die "@aws-sdk/client-lambda through frontend 1 failed"; }
pass "created on frontend 0, listed, invoked cold then warm on frontend 1, warm through frontend 0, and the SDK drove frontend 1"

# ---- SnapStart: refused while no agent of the fleet can snapshot ---------------------------------------------------
if lam 0 update-function-configuration --function-name f2 --snap-start ApplyOn=PublishedVersions >"$T/snap.out" 2>"$T/snap.err"; then
  die "SnapStart was accepted by a fleet of process-sandbox agents: $(cat "$T/snap.out")"
fi
grep -q "(InvalidParameterValueException)" "$T/snap.err" && grep -q "none of the fleet's [0-9]* host agents can take snapshots" "$T/snap.err" &&
  grep -q -- "--isolation microvm" "$T/snap.err" || die "the fleet's SnapStart refusal: $(cat "$T/snap.err")"
pass "SnapStart through a fleet of process agents: refused, naming --isolation microvm"

# ---- static stability: etcd down -------------------------------------------------------------------------------------
inv 0 f2 '{}'   # f2 warm somewhere, known to frontend 0
wait_warm f2
inv 1 f2 '{}'
for i in 0 1 2; do kill_etcd_member $i; done
for i in $(seq 1 10); do
  inv 0 f1 '{}' || die "a warm invoke through frontend 0 failed with etcd down"
  [ "$(count_of)" -gt 1 ] || die "f1 went cold with etcd down"
  inv 1 f2 '{}' || die "a warm invoke through frontend 1 failed with etcd down"
  [ "$(count_of)" -gt 1 ] || die "f2 went cold with etcd down"
done
raw 1 POST /2015-03-31/functions/f3/invocations --body '{}' >"$T/cold.json"
jq -e '.status >= 500 and .status < 600 and (.headers["x-amzn-errortype"] | length) > 0 and (.json.message // .json.Message | length) > 0' \
  "$T/cold.json" >/dev/null || die "a cold start with etcd down did not fail with a clear 5xx: $(cat "$T/cold.json")"
for i in 0 1 2; do restart_etcd_member $i; done
ok=
for i in $(seq 1 60); do
  if raw 1 POST /2015-03-31/functions/f3/invocations --body '{}' | jq -e '.status == 200' >/dev/null; then ok=1; break; fi
  sleep 1
done
[ -n "$ok" ] || die "cold starts did not work again within 60 s of etcd coming back"
wait_hosts "h0 h1 h2 h3" 30
pass "etcd down: 20 warm invokes through both frontends succeeded, a cold start got $(jq .status "$T/cold.json"); etcd back: cold starts work, every agent re-registered"

# ---- static stability: placement down --------------------------------------------------------------------------------
kill_placement
for i in $(seq 1 5); do
  inv 0 f1 '{}' || die "a warm invoke failed with placement down"
  inv 1 f3 '{}' || die "a warm invoke of f3 failed with placement down"
done
raw 0 POST /2015-03-31/functions/f4/invocations --body '{}' >"$T/cold.json"
jq -e '.status == 503' "$T/cold.json" >/dev/null || die "a cold start with placement down: $(cat "$T/cold.json")"
start_placement
inv 0 f4 '{}' || die "a cold start failed after placement came back"
pass "placement down: warm invokes succeeded, a cold start got 503; placement back: cold starts work"

# ---- one etcd member of three down: no visible effect ----------------------------------------------------------------
kill_etcd_member 1
lam 0 create-function --function-name f5 --package-type Image --code "ImageUri=$SHELL1" --timeout 60 \
  --memory-size 128 --role arn:aws:iam::000000000000:role/test >/dev/null
lam 1 wait function-active-v2 --function-name f5
inv 1 f5 '{}' && inv 0 f5 '{}' && inv 1 f1 '{}' || die "an invoke failed with one etcd member of three down"
restart_etcd_member 1
pass "one etcd member down: create, activate and invoke through both frontends, no error"

# ---- a host agent killed -----------------------------------------------------------------------------------------------
wait_warm f1
# An invocation in flight: a sleeping one; the victim is whichever agent
# runs it, as its own /v1/stats shows (nothing else runs meanwhile).
( inv 1 f1 '{"sleep_ms":30000}' >"$T/inflight.rc" 2>&1; echo "rc=$?" >>"$T/inflight.rc"; cp "$T/out.json" "$T/inflight.json" 2>/dev/null ) &
inflight=$!
victim=
for i in $(seq 1 100); do
  for a in 0 1 2 3; do
    curl -fsS --max-time 3 "${AGENT_URL[$a]}/v1/stats" 2>/dev/null | jq -e '.busy > 0' >/dev/null 2>&1 && victim=h$a
  done
  [ -n "$victim" ] && break
  sleep 0.2
done
[ -n "$victim" ] || die "no host registered a busy sandbox of f1 while the sleeping invoke ran"
vi=${victim#h}
: >"$T/agent-events"
for i in 1 2 3 4 5; do event 0 f1 >>"$T/agent-events"; done
kill_agent "$vi"
wait $inflight || true
grep -q "rc=0" "$T/inflight.rc" && die "the invocation in flight on the killed agent h$vi succeeded: $(cat "$T/inflight.rc" "$T/inflight.json")"
grep -Eq "ServiceException|lost" "$T/inflight.rc" || die "the invocation in flight on the killed agent got no clear error: $(cat "$T/inflight.rc")"
inv 0 f1 '{}' || die "f1 was not started elsewhere after its host h$vi was killed"
for i in 6 7 8; do event 1 f1 >>"$T/agent-events"; done
wait_delivered "$T/agent-events" 120
start_agent "$vi"
wait_hosts "h0 h1 h2 h3" 30
pass "agent h$vi killed: the in-flight invoke got a clear error, f1 started elsewhere, 8 Event invokes delivered"

# ---- a frontend killed with accepted events held back ------------------------------------------------------------------
lam 1 put-function-concurrency --function-name f2 --reserved-concurrent-executions 0 >/dev/null
# Frontend 0 sees the limit once its record cache has caught up (about 1 s).
ok=
for i in $(seq 1 100); do
  if raw 0 POST /2015-03-31/functions/f2/invocations --body '{}' | jq -e '.status == 429' >/dev/null; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || die "frontend 0 never applied the reserved concurrency 0 set on frontend 1"
: >"$T/fe-events"
for i in 1 2 3 4; do event 0 f2 >>"$T/fe-events"; done
kill_frontend 0
for f in f1 f3 f4 f5; do inv 1 $f '{}' || die "frontend 1 could not serve $f with frontend 0 dead"; done
lam 1 delete-function-concurrency --function-name f2
wait_delivered "$T/fe-events" 120
start_frontend 0
pass "frontend 0 killed: frontend 1 served every function and delivered the 4 events frontend 0 had accepted"

# ---- bounded load with faults ------------------------------------------------------------------------------------------
fns=""
for i in $(seq -w 1 12); do
  lam $((10#$i % 2)) create-function --function-name load$i --package-type Image --code "ImageUri=$SHELL1" \
    --timeout 60 --memory-size 128 --role arn:aws:iam::000000000000:role/test >/dev/null
  fns="$fns${fns:+,}load$i"
done
for i in $(seq -w 1 12); do lam 0 wait function-active-v2 --function-name load$i; done
$PY "$KINDLING_SOURCE_DIR/bench/fleet_load.py" --endpoints "http://127.0.0.1:${FE_PORT[0]},http://127.0.0.1:${FE_PORT[1]}" \
  --credentials "$FLEET_CREDS" --functions "$fns" --clients 40 --seconds 30 --event-fraction 0.2 \
  --accepted "$T/load-events" --out "$T/load.json" >"$T/load.out" 2>"$T/load.err" &
load=$!
sleep 8; kill_agent 2
sleep 6; kill_etcd_member 0
sleep 6; kill_frontend 1
wait $load || { cat "$T/load.err" >&2; die "the load generator failed"; }
restart_etcd_member 0
start_agent 2
start_frontend 1
jq -e '.invokes > 0 and .events_accepted > 0' "$T/load.json" >/dev/null || die "the load made no progress: $(cat "$T/load.json")"
# The only errors a client may see are the faults' own: a sync invoke in
# flight on the killed agent (502, "lost during the invocation") or on the
# killed frontend (its connection drops).  A fleet that is merely busy
# answers 429, never 5xx.
jq -e '.errors | keys | all(test("was lost during the invocation|connection lost in flight"))' "$T/load.json" >/dev/null ||
  die "the load saw errors beyond the injected faults: $(jq -c .errors "$T/load.json")"
wait_delivered "$T/load-events" 180
pass "load with faults: $(jq -c '{invokes, invokes_per_s, cold_fraction, p50_ms, p99_ms, throttled, error_count, errors, events_accepted}' "$T/load.json"); every accepted event delivered"
