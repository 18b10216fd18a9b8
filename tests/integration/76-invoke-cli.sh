#!/bin/bash
# `kindling serve` driven by Debian's AWS CLI v2 (/usr/bin/aws) over loopback,
# signing with the key kindling serve writes into $KINDLING_HOME/credentials
# on its first start, against the Lambda test images
# (tests/images/make-lambda-images.sh: lambda-shell, a curl custom runtime, and
# lambda-node, Debian's Node.js with aws-lambda-ric 3.3.0):
#   - Create (from oci: layouts, Pending -> Active; a missing image -> Failed
#     with the reason), Get, GetConfiguration, List (paged by the CLI with
#     --page-size 1, and raw MaxItems/Marker), Delete;
#   - invokes cold then warm (the handler's counter goes up in one sandbox),
#     Tail logs (START/END/REPORT), a function error (X-Amz-Function-Error),
#     DryRun 204, Event 202 delivered;
#   - UpdateFunctionConfiguration (environment seen by the next cold start;
#     a reserved key refused), PublishVersion and qualified invokes,
#     UpdateFunctionCode seen by the next invoke while version 1 keeps the old
#     code;
#   - a timeout and a memory hog: ended and reported, the next invoke works;
#   - a plain Python image (tests/images/make-hostagent-images.sh) in stdio
#     mode, selected by KINDLING_INVOKE_MODE=stdio in its environment;
#   - reserved concurrency: 429 (ReservedFunctionConcurrentInvocationLimitExceeded)
#     exactly while the one slot is busy, and for every invoke at 0;
#     provisioned concurrency: the sandbox is initialised as provisioned
#     before the first invoke;
#   - Event invokes held back by reserved concurrency 0 survive kill -9 of
#     kindling serve and are delivered after the restart; a failing Event
#     invoke is tried three times and lands in `kindling dlq`;
#   - a wrong secret, an unknown key and a stale date get 403; malformed JSON,
#     unknown fields, path traversal in names, oversized bodies and a huge
#     header get Lambda's errors and the service keeps serving;
#   - SnapStart: GetFunction shows ApplyOn None / Off; --snap-start
#     ApplyOn=PublishedVersions is refused with the process sandbox, naming
#     --isolation microvm, and an unknown ApplyOn naming the value;
#   - SIGTERM stops it cleanly.
# Missing tools are a failure, not a skip.
# ctest-labels: no-asan (sandboxes and the AWS CLI end to end; the frontend's logic runs under ASan in its unit tests and fuzz replay); no-tsan (fork-heavy sandboxes; the frontend's threads run under TSan in test_frontend_api)
. "$(dirname "$0")/lib.sh"
AWS=/usr/bin/aws
PY=/usr/bin/python3
KINDLING=$KINDLING_BUILD_DIR/kindling
RAW=$KINDLING_SOURCE_DIR/tests/integration/lambda_raw.py
[ -x "$KINDLING" ] || die "kindling not built at $KINDLING (build the project first)"
[ -x "$AWS" ] || die "$AWS is missing (Debian package awscli; see scripts/apt-packages.txt)"
$PY -c 'import awscli, botocore.auth' 2>/dev/null || die "Debian's awscli (and the botocore in it) is not importable by $PY"
for tool in jq curl umoci; do command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"; done
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

timeout 840 "$KINDLING_SOURCE_DIR/tests/images/make-lambda-images.sh" "$T/img" >"$T/images.log" 2>&1 ||
  { tail -30 "$T/images.log" >&2; die "building the Lambda test images failed"; }
"$KINDLING_SOURCE_DIR/tests/images/make-hostagent-images.sh" "$T/haimg" >"$T/haimages.log" 2>&1 ||
  { tail -30 "$T/haimages.log" >&2; die "building the plain Python test image failed"; }
SHELL1=oci:$T/img/lambda-shell:1 SHELL2=oci:$T/img/lambda-shell:2 NODE1=oci:$T/img/lambda-node:1

PORT=$(free_port)
STATE=$T/state
SERVES=0
# start_serve: kindling serve in the background ($SERVE_PID), waiting (bounded)
# for its "Lambda API on" line.
start_serve() {
  SERVES=$((SERVES + 1))
  "$KINDLING" serve --listen "127.0.0.1:$PORT" --state-dir "$STATE" --retry-delay-ms 300 \
    --isolation process >"$T/serve.$SERVES.out" 2>"$T/serve.$SERVES.err" &
  SERVE_PID=$!
  track_pid $SERVE_PID
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q "Lambda API on http://127.0.0.1:$PORT" "$T/serve.$SERVES.out" 2>/dev/null && return 0
    kill -0 $SERVE_PID 2>/dev/null || { cat "$T/serve.$SERVES.err" >&2; die "kindling serve exited at start"; }
    sleep 0.1
  done
  die "kindling serve did not start in 60 s"
}
start_serve
CREDS=$KINDLING_HOME/credentials
[ -f "$CREDS" ] || die "kindling serve did not write $CREDS"
[ "$(stat -c %a "$CREDS")" = 600 ] || die "$CREDS is not mode 0600"
grep -q "^\[kindling\]" "$CREDS" || die "$CREDS has no [kindling] profile"
pass "kindling serve started and wrote a fresh key to $CREDS (0600, profile kindling)"

export AWS_SHARED_CREDENTIALS_FILE=$CREDS AWS_PROFILE=kindling AWS_CONFIG_FILE=$T/aws-config AWS_MAX_ATTEMPTS=1 AWS_PAGER=""
: >"$T/aws-config"
lam() { "$AWS" --endpoint-url "http://127.0.0.1:$PORT" --region us-east-1 --cli-binary-format raw-in-base64-out \
  --cli-read-timeout 300 --output json lambda "$@"; }
# raw METHOD PATH [options]: one request signed by botocore (lambda_raw.py)
raw() { $PY "$RAW" "$PORT" "$CREDS" kindling "$@"; }
# inv NAME PAYLOAD [aws options]: a sync invoke; the answer in $T/out.json, the metadata on stdout
inv() { local n=$1 p=$2; shift 2; lam invoke --function-name "$n" --payload "$p" "$@" "$T/out.json"; }
# expect_err CODE CMD...: the CLI fails with Lambda error CODE
expect_err() {
  local code=$1; shift
  if "$@" >"$T/err.out" 2>"$T/err.txt"; then cat "$T/err.out" >&2; die "expected $code from: $*"; fi
  grep -q "($code)" "$T/err.txt" || { cat "$T/err.txt" >&2; die "expected $code from: $*"; }
}
# wait_state NAME: wait (bounded) until the function is no longer Pending / InProgress
wait_state() {
  local i s
  for ((i = 0; i < 300; i++)); do
    s=$(lam get-function-configuration --function-name "$1" | jq -r '.State + "/" + (.LastUpdateStatus // "")')
    case $s in Pending/* | */InProgress) sleep 0.5 ;; *) echo "$s"; return 0 ;; esac
  done
  die "$1 stayed $s for 150 s"
}
# wait_log NAME TEXT [COUNT]: wait (bounded) until the function's log has TEXT COUNT times
wait_log() {
  local i n
  for ((i = 0; i < 600; i++)); do
    n=$("$KINDLING" logs "$1" --state-dir "$STATE" 2>/dev/null | grep -c -- "$2" || true)
    [ "$n" -ge "${3:-1}" ] && return 0
    sleep 0.2
  done
  die "the log of $1 never showed '$2' ${3:-1} times (saw $n)"
}

# ---- create, get, list -------------------------------------------------------------------------------------------
lam list-functions | jq -e '.Functions == []' >/dev/null || die "a fresh service lists functions"
lam create-function --function-name sh --package-type Image --code "ImageUri=$SHELL1" --timeout 30 \
  --memory-size 128 --environment 'Variables={TEST_VAR=one}' --role arn:aws:iam::000000000000:role/test >"$T/c.json"
jq -e '.State == "Pending" and .FunctionArn == "arn:aws:lambda:us-east-1:000000000000:function:sh"' "$T/c.json" >/dev/null ||
  die "CreateFunction did not answer Pending: $(cat "$T/c.json")"
lam create-function --function-name node --package-type Image --code "ImageUri=$NODE1" --timeout 30 --memory-size 256 \
  --role arn:aws:iam::000000000000:role/test >/dev/null
lam create-function --function-name broken --package-type Image --code "ImageUri=oci:$T/nowhere:1" \
  --role arn:aws:iam::000000000000:role/test >/dev/null
lam wait function-active-v2 --function-name sh
lam wait function-active-v2 --function-name node
[ "$(wait_state broken)" = "Failed/Failed" ] || die "a missing image did not make the function Failed"
lam get-function-configuration --function-name broken | jq -e '.StateReasonCode == "InvalidImage" or .StateReasonCode == "ImageDeleted"' >/dev/null &&
  lam get-function-configuration --function-name broken | jq -e '.StateReason | contains("nowhere")' >/dev/null ||
  die "the Failed function's StateReason does not name the image"
expect_err ResourceConflictException inv broken '{}'
lam get-function --function-name sh >"$T/g.json"
jq -e '.Configuration.State == "Active" and .Configuration.PackageType == "Image" and (.Configuration.CodeSha256 | length) == 64
  and .Code.ImageUri == "'"$SHELL1"'" and .Configuration.Environment.Variables.TEST_VAR == "one"' "$T/g.json" >/dev/null ||
  die "GetFunction: $(cat "$T/g.json")"
[ "$(lam list-functions --page-size 1 | jq -r '[.Functions[].FunctionName] | join(",")')" = "broken,node,sh" ] ||
  die "ListFunctions paged one by one did not list broken,node,sh"
raw GET '/2015-03-31/functions/?MaxItems=2' >"$T/l.json"
jq -e '.status == 200 and (.json.Functions | length) == 2 and .json.NextMarker == "node"' "$T/l.json" >/dev/null || die "MaxItems: $(cat "$T/l.json")"
raw GET '/2015-03-31/functions/?MaxItems=2&Marker=node' | jq -e '[.json.Functions[].FunctionName] == ["sh"] and .json.NextMarker == null' >/dev/null ||
  die "Marker did not continue the listing"
expect_err ResourceConflictException lam create-function --function-name sh --package-type Image --code "ImageUri=$SHELL1" --role arn:aws:iam::000000000000:role/test
pass "create (Pending -> Active, a missing image -> Failed with the reason), get, list paged by Marker/MaxItems, duplicate -> 409"

# ---- SnapStart: refused where sandboxes cannot be snapshotted -----------------------------------------------------
jq -e '.Configuration.SnapStart == {"ApplyOn": "None", "OptimizationStatus": "Off"}' "$T/g.json" >/dev/null ||
  die "GetFunction has no SnapStart None/Off: $(cat "$T/g.json")"
expect_err InvalidParameterValueException lam create-function --function-name snap --package-type Image \
  --code "ImageUri=$SHELL1" --snap-start ApplyOn=PublishedVersions --role arn:aws:iam::000000000000:role/test
grep -q -- "--isolation microvm" "$T/err.txt" || die "the SnapStart refusal does not name --isolation microvm: $(cat "$T/err.txt")"
expect_err InvalidParameterValueException lam update-function-configuration --function-name sh --snap-start ApplyOn=Sometimes
grep -q "Value Sometimes at 'snapStart.applyOn'" "$T/err.txt" || die "a bad ApplyOn: $(cat "$T/err.txt")"
expect_err ResourceNotFoundException lam get-function --function-name snap
pass "SnapStart: None/Off in GetFunction; ApplyOn PublishedVersions refused with the process sandbox (naming --isolation microvm), a bad ApplyOn refused naming the value"

# ---- invokes: cold, warm, tail, errors ----------------------------------------------------------------------------
for fn in sh node; do
  inv $fn '{"n":1}' >"$T/m.json"
  jq -e '.StatusCode == 200 and .ExecutedVersion == "$LATEST"' "$T/m.json" >/dev/null || die "$fn: $(cat "$T/m.json")"
  jq -e '.echo == {"n":1} and .count == 1 and .version == "1"' "$T/out.json" >/dev/null || die "$fn cold: $(cat "$T/out.json")"
  pid=$(jq .pid "$T/out.json")
  inv $fn '{"n":2}' >/dev/null
  jq -e ".count == 2 and .pid == $pid" "$T/out.json" >/dev/null || die "$fn warm: not the same sandbox: $(cat "$T/out.json")"
done
pass "cold then warm: the handler's counter went up in the same sandbox (shell and Node.js runtimes)"
inv sh '{"stdout":"tail-marker"}' --log-type Tail >"$T/m.json"
jq -r .LogResult "$T/m.json" | base64 -d >"$T/tail.txt"
grep -q "^START RequestId: .* Version: \$LATEST" "$T/tail.txt" && grep -q "tail-marker" "$T/tail.txt" &&
  grep -q "^END RequestId: " "$T/tail.txt" && grep -q "^REPORT RequestId: .*Duration: .*Memory Size: 128 MB" "$T/tail.txt" ||
  { cat "$T/tail.txt" >&2; die "the Tail log result is wrong"; }
inv node '{"fail":"boom"}' >"$T/m.json"
jq -e '.FunctionError == "Unhandled"' "$T/m.json" >/dev/null || die "no FunctionError: $(cat "$T/m.json")"
jq -e '.errorType == "Error" and .errorMessage == "boom"' "$T/out.json" >/dev/null || die "error body: $(cat "$T/out.json")"
lam invoke --function-name sh --invocation-type DryRun "$T/out.json" | jq -e '.StatusCode == 204' >/dev/null || die "DryRun is not 204"
lam invoke --function-name sh --invocation-type Event --payload '{"stdout":"event-one"}' "$T/out.json" |
  jq -e '.StatusCode == 202' >/dev/null || die "Event is not 202"
wait_log sh event-one
"$KINDLING" logs sh --state-dir "$STATE" | grep -q "^REPORT RequestId" || die "kindling logs shows no REPORT line"
pass "Tail log (START/END/REPORT), function error (Unhandled + error JSON), DryRun 204, Event 202 delivered, kindling logs"

# ---- timeout, memory -------------------------------------------------------------------------------------------------
lam create-function --function-name slow --package-type Image --code "ImageUri=$SHELL1" --timeout 2 --role arn:aws:iam::000000000000:role/t >/dev/null
lam create-function --function-name hog --package-type Image --code "ImageUri=$NODE1" --timeout 60 --memory-size 128 --role arn:aws:iam::000000000000:role/t >/dev/null
lam wait function-active-v2 --function-name slow
lam wait function-active-v2 --function-name hog
inv slow '{"sleep_ms":60000}' >"$T/m.json"
jq -e '.FunctionError == "Unhandled"' "$T/m.json" >/dev/null && jq -e '.errorMessage | contains("Task timed out after 2.00 seconds")' "$T/out.json" >/dev/null ||
  die "timeout not reported: $(cat "$T/m.json" "$T/out.json")"
inv slow '{"n":1}' >/dev/null
jq -e '.count == 1' "$T/out.json" >/dev/null || die "after a timeout the next invoke did not get a new sandbox: $(cat "$T/out.json")"
inv hog '{"alloc_mb":512}' >"$T/m.json"
jq -e '.FunctionError == "Unhandled"' "$T/m.json" >/dev/null && jq -e '.errorType | startswith("Runtime.")' "$T/out.json" >/dev/null ||
  die "a memory hog was not ended: $(cat "$T/m.json" "$T/out.json")"
HOG_ERR=$(jq -r .errorType "$T/out.json")
inv hog '{"n":1}' >/dev/null
jq -e '.count == 1' "$T/out.json" >/dev/null || die "after the memory hog the next invoke failed: $(cat "$T/out.json")"
pass "a timeout (Task timed out after 2.00 seconds) and a memory hog ($HOG_ERR) are ended and reported"

# ---- plain mode ------------------------------------------------------------------------------------------------------
lam create-function --function-name py --package-type Image --code "ImageUri=oci:$T/haimg/py-stdio:1" --timeout 30 \
  --environment 'Variables={KINDLING_INVOKE_MODE=stdio}' --role arn:aws:iam::000000000000:role/t >/dev/null
lam wait function-active-v2 --function-name py
inv py '{"name":"kindling"}' >/dev/null
jq -e '. == {"hello": "kindling", "from": "stdio"}' "$T/out.json" >/dev/null || die "plain mode: $(cat "$T/out.json")"
inv py '{"fail":"bad input"}' | jq -e '.FunctionError == "Unhandled"' >/dev/null || die "plain mode failure not Unhandled"
jq -e '.errorType == "Runtime.ExitError" and (.errorMessage | endswith("something went wrong: bad input"))' "$T/out.json" >/dev/null ||
  die "plain mode failure: $(cat "$T/out.json")"
pass "plain mode (KINDLING_INVOKE_MODE=stdio): the Python image's stdout is the answer; a failure is Runtime.ExitError"

# ---- configuration, versions, code -------------------------------------------------------------------------------
lam update-function-configuration --function-name sh --environment 'Variables={TEST_VAR=two}' >/dev/null
wait_state sh >/dev/null
inv sh '{"env":true}' >/dev/null
jq -e '.env.TEST_VAR == "two" and .count == 1' "$T/out.json" >/dev/null || die "the new environment was not seen by a new sandbox: $(cat "$T/out.json")"
expect_err InvalidParameterValueException lam update-function-configuration --function-name sh --environment 'Variables={AWS_REGION=eu-west-9}'
lam publish-version --function-name sh >"$T/v.json"
jq -e '.Version == "1" and .FunctionArn == "arn:aws:lambda:us-east-1:000000000000:function:sh:1"' "$T/v.json" >/dev/null || die "PublishVersion: $(cat "$T/v.json")"
lam update-function-code --function-name sh --image-uri "$SHELL2" | jq -e '.LastUpdateStatus == "InProgress"' >/dev/null || die "UpdateFunctionCode not InProgress"
lam wait function-updated-v2 --function-name sh
inv sh '{}' | jq -e '.ExecutedVersion == "$LATEST"' >/dev/null || die "ExecutedVersion"
jq -e '.version == "2"' "$T/out.json" >/dev/null || die "the next invoke after UpdateFunctionCode ran the old code: $(cat "$T/out.json")"
inv sh '{}' --qualifier 1 | jq -e '.ExecutedVersion == "1"' >/dev/null || die "qualified invoke: ExecutedVersion is not 1"
jq -e '.version == "1"' "$T/out.json" >/dev/null || die "version 1 did not keep the old code"
inv sh:1 '{}' >/dev/null && jq -e '.version == "1"' "$T/out.json" >/dev/null || die "NAME:1 did not run version 1"
inv arn:aws:lambda:us-east-1:000000000000:function:sh '{}' >/dev/null && jq -e '.version == "2"' "$T/out.json" >/dev/null || die "the ARN did not run \$LATEST"
expect_err ResourceNotFoundException inv sh '{}' --qualifier 7
[ "$(lam list-versions-by-function --function-name sh | jq -r '[.Versions[].Version] | join(",")')" = '$LATEST,1' ] || die "ListVersionsByFunction"
pass "UpdateFunctionConfiguration (new environment; reserved key refused), PublishVersion, UpdateFunctionCode seen by the next invoke, version 1 keeps its code"

# ---- concurrency ------------------------------------------------------------------------------------------------------
lam put-function-concurrency --function-name sh --reserved-concurrent-executions 1 | jq -e '.ReservedConcurrentExecutions == 1' >/dev/null || die "PutFunctionConcurrency"
lam get-function-concurrency --function-name sh | jq -e '.ReservedConcurrentExecutions == 1' >/dev/null || die "GetFunctionConcurrency"
inv sh '{"stdout":"busy-marker","sleep_ms":20000}' >"$T/bg.json" &
BG=$!
wait_log sh busy-marker
raw POST /2015-03-31/functions/sh/invocations --body '{}' >"$T/r.json"
jq -e '.status == 429 and .headers["x-amzn-errortype"] == "TooManyRequestsException" and .json.Reason == "ReservedFunctionConcurrentInvocationLimitExceeded"' "$T/r.json" >/dev/null ||
  die "no 429 while the one reserved slot was busy: $(cat "$T/r.json")"
expect_err TooManyRequestsException inv sh '{}'
wait $BG || die "the invoke holding the slot failed: $(cat "$T/bg.json")"
inv sh '{}' >/dev/null || die "the slot was not given back"
lam put-function-concurrency --function-name sh --reserved-concurrent-executions 0 >/dev/null
expect_err TooManyRequestsException inv sh '{}'
lam delete-function-concurrency --function-name sh
lam get-function-concurrency --function-name sh | jq -e '.ReservedConcurrentExecutions == null' >/dev/null || die "DeleteFunctionConcurrency"
inv sh '{}' >/dev/null || die "invoke after DeleteFunctionConcurrency"
pass "reserved concurrency: 429 (ReservedFunctionConcurrentInvocationLimitExceeded) exactly while the slot is busy, always at 0"

lam publish-version --function-name node | jq -e '.Version == "1"' >/dev/null || die "publish node"
lam put-provisioned-concurrency-config --function-name node --qualifier 1 --provisioned-concurrent-executions 1 >"$T/p.json"
jq -e '.RequestedProvisionedConcurrentExecutions == 1' "$T/p.json" >/dev/null || die "PutProvisionedConcurrencyConfig: $(cat "$T/p.json")"
for ((i = 0; i < 600; i++)); do
  lam get-provisioned-concurrency-config --function-name node --qualifier 1 | jq -e '.Status == "READY"' >/dev/null && break
  sleep 0.2
done
[ $i -lt 600 ] || die "provisioned concurrency never became READY"
inv node '{"env":true}' --qualifier 1 >/dev/null
jq -e '.env.AWS_LAMBDA_INITIALIZATION_TYPE == "provisioned-concurrency" and .count == 1' "$T/out.json" >/dev/null ||
  die "the first invoke of version 1 did not run in the provisioned sandbox: $(jq -c '{count, t: .env.AWS_LAMBDA_INITIALIZATION_TYPE}' "$T/out.json")"
expect_err InvalidParameterValueException lam put-provisioned-concurrency-config --function-name node --qualifier '$LATEST' --provisioned-concurrent-executions 1
lam delete-provisioned-concurrency-config --function-name node --qualifier 1
expect_err ProvisionedConcurrencyConfigNotFoundException lam get-provisioned-concurrency-config --function-name node --qualifier 1
pass "provisioned concurrency: READY, the first invoke finds an initialised provisioned sandbox; deleted"

# ---- Event durability, retries, dead letters ---------------------------------------------------------------------
lam create-function --function-name ev --package-type Image --code "ImageUri=$SHELL1" --timeout 30 --role arn:aws:iam::000000000000:role/t >/dev/null
lam wait function-active-v2 --function-name ev
lam put-function-concurrency --function-name ev --reserved-concurrent-executions 0 >/dev/null
for i in 1 2 3; do
  lam invoke --function-name ev --invocation-type Event --payload "{\"stdout\":\"durable-$i\"}" "$T/out.json" | jq -e '.StatusCode == 202' >/dev/null || die "Event $i"
done
[ "$(ls "$STATE/queue" | grep -c '\.json$')" = 3 ] || die "the three held events are not on disk in $STATE/queue"
kill -9 $SERVE_PID
wait $SERVE_PID 2>/dev/null || true
for m in $(awk -v d="$STATE/agent/mnt" '$5 == d {print $5}' /proc/self/mountinfo); do umount -l "$m" 2>/dev/null || true; done
start_serve
lam delete-function-concurrency --function-name ev
for i in 1 2 3; do wait_log ev "durable-$i"; done
pass "three Event invokes accepted before kill -9 of kindling serve were delivered after the restart"

lam invoke --function-name ev --invocation-type Event --payload '{"fail":"dead-letter-me"}' "$T/out.json" >/dev/null
for ((i = 0; i < 600; i++)); do
  "$KINDLING" dlq --state-dir "$STATE" >"$T/dlq.txt"
  grep -q dead-letter-me "$T/dlq.txt" && break
  sleep 0.2
done
jq -e 'select(.LastError.errorMessage == "dead-letter-me") | .Attempts == 3 and .FunctionName == "ev"' "$T/dlq.txt" >/dev/null ||
  die "the failing event is not in kindling dlq after three attempts: $(cat "$T/dlq.txt")"
ID=$(jq -r 'select(.LastError.errorMessage == "dead-letter-me") | .RequestId' "$T/dlq.txt")
[ "$("$KINDLING" logs ev --state-dir "$STATE" | grep -c "^START RequestId: $ID ")" = 3 ] || die "the failing event did not run exactly three times"
pass "a failing Event invoke ran three times (two retries) and was dead-lettered (kindling dlq)"

# ---- authentication ---------------------------------------------------------------------------------------------------
sed 's/^aws_secret_access_key = .*/aws_secret_access_key = wrongwrongwrong/' "$CREDS" >"$T/wrong-creds"
AWS_SHARED_CREDENTIALS_FILE=$T/wrong-creds expect_err InvalidSignatureException lam list-functions
printf '[kindling]\naws_access_key_id = AKIAUNKNOWN000000000\naws_secret_access_key = x\n' >"$T/unknown-creds"
AWS_SHARED_CREDENTIALS_FILE=$T/unknown-creds expect_err UnrecognizedClientException lam list-functions
raw GET /2015-03-31/functions/ --date-offset -1200 | jq -e '.status == 403 and .headers["x-amzn-errortype"] == "InvalidSignatureException"' >/dev/null ||
  die "a stale date was not refused"
curl -s -o "$T/unsigned.txt" -w '%{http_code}' "http://127.0.0.1:$PORT/2015-03-31/functions/" | grep -q 403 || die "an unsigned request was served"
pass "wrong secret, unknown key, stale date, unsigned: 403 with Lambda's error types"

# ---- bad input ----------------------------------------------------------------------------------------------------------
chk() { # chk STATUS TYPE RAW-ARGS...
  local st=$1 ty=$2; shift 2
  raw "$@" >"$T/r.json"
  jq -e ".status == $st and .headers[\"x-amzn-errortype\"] == \"$ty\" and (.json.message | length) > 0" "$T/r.json" >/dev/null ||
    die "$* -> expected $st $ty: $(head -c 600 "$T/r.json")"
}
chk 400 InvalidRequestContentException POST /2015-03-31/functions --body '{"FunctionName": "x",'
chk 400 InvalidRequestContentException POST /2015-03-31/functions/sh/invocations --body '{not json'
chk 400 InvalidParameterValueException POST /2015-03-31/functions --body '{"FunctionName":"x","Code":{"ImageUri":"a:b"},"Bogus":1}'
chk 400 InvalidParameterValueException POST /2015-03-31/functions --body '{"FunctionName":"../../etc","Code":{"ImageUri":"a:b"}}'
chk 400 InvalidParameterValueException GET /2015-03-31/functions/..%2F..%2Fetc%2Fpasswd/configuration
chk 400 InvalidParameterValueException GET /2015-03-31/functions/.%2E/configuration
chk 400 InvalidParameterValueException POST /2015-03-31/functions --body '{"FunctionName":"x","Code":{"ImageUri":"a:b"},"MemorySize":"big"}'
chk 400 InvalidParameterValueException POST /2015-03-31/functions/sh/invocations --header X-Amz-Invocation-Type:Sometimes
chk 404 ResourceNotFoundException GET /2015-03-31/functions/nope/configuration
chk 404 UnknownOperationException GET /2015-03-31/nothing-here
chk 413 RequestTooLargeException POST /2015-03-31/functions/sh/invocations --body-size 7000000
chk 413 RequestTooLargeException POST /2015-03-31/functions/sh/invocations --body-size 1100000 --header X-Amz-Invocation-Type:Event
ls "$STATE/functions" | grep -vq '^[A-Za-z0-9_-]*\.json$' && die "a file other than NAME.json appeared in $STATE/functions"
[ ! -e "$STATE/etc.json" ] && [ ! -e "$T/etc.json" ] || die "path traversal wrote a file"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Hostile: $(head -c 60000 /dev/zero | tr '\0' a)" "http://127.0.0.1:$PORT/2015-03-31/functions/")
case $code in 4*) ;; *) die "a 60 KB header got $code" ;; esac
lam list-functions >/dev/null || die "the service stopped serving after bad input"
kill -0 $SERVE_PID || die "kindling serve died"
pass "malformed JSON, unknown fields, bad types, path traversal, oversized bodies, a huge header: Lambda's errors, and the service keeps serving"

# ---- delete, shutdown -------------------------------------------------------------------------------------------------
lam delete-function --function-name sh --qualifier 1
expect_err ResourceNotFoundException inv sh '{}' --qualifier 1
lam delete-function --function-name sh
expect_err ResourceNotFoundException lam get-function --function-name sh
kill -TERM $SERVE_PID
rc=0
wait $SERVE_PID || rc=$?
[ $rc = 0 ] || { tail -20 "$T/serve.$SERVES.err" >&2; die "kindling serve exited $rc on SIGTERM"; }
grep -q " $STATE/agent/mnt " /proc/self/mountinfo && { track_mount "$STATE/agent/mnt"; die "kindling serve left its FUSE mount"; }
pass "DeleteFunction (a version, then the function); SIGTERM stops kindling serve cleanly"
