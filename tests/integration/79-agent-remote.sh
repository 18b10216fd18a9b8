#!/bin/bash
# `kindling agent` as its own process, driven over HTTP by the remote client
# (hostagent_remote_ops, through tests/tools/agent_call), with the images of
# tests/images/make-hostagent-images.sh in real process sandboxes:
#   - warm_only before any start is EAGAIN (Runtime API and plain mode);
#   - cold, then warm (the runtime's counter goes up, cold is false), and
#     warm_only takes the warm sandbox; the log tail comes back;
#   - a handler's error passes through as a function error;
#   - a 6 MB event goes through raw and its echo comes back byte for byte;
#   - plain mode: warm_only works once the image is attached;
#   - stats, the function's log, provisioned concurrency, drain;
#   - `kindling serve --agent URL` in front of it, driven by Debian's AWS
#     CLI: a function created there runs on the agent; SnapStart ApplyOn
#     PublishedVersions is refused (InvalidParameterValueException naming
#     --isolation microvm) because the agent's GET /v1/info says its process
#     sandboxes cannot be snapshotted;
#   - the agent killed (SIGKILL) under an invocation: ECONNRESET; then
#     nothing listening: ENOTCONN;
#   - SIGTERM stops the agent cleanly (exit 0, its FUSE mount gone).
# Missing tools are a failure, not a skip.
# ctest-labels: no-tsan (fork-heavy sandboxes; the client and server run under TSan in the unit tests)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/agent-lib.sh"
pass "images built and imported"

call() { "$TOOL" "$URL" "$@"; }

# A generous function timeout: a cold start on a loaded two-core machine
# (78-fleet beside it) once took more than 10 s; what is checked is the
# outcome, never how long it took.
FN_RT='{"name":"echo","version":"$LATEST","image":"'$RT'","revision":"r1","memory_mb":128,"timeout_s":60}'
FN_PY='{"name":"py","version":"$LATEST","image":"'$PY'","revision":"r1","memory_mb":256,"timeout_s":60,"mode":"stdio"}'

start_agent --host-id h79
pass "kindling agent answers on $URL"

# ---- warm_only with nothing warm ------------------------------------------------------------------------------------
out=$(call invoke "$FN_RT" --warm-only --payload '{"n":0}')
expect "$out" '.rc != 0 and .errno == "EAGAIN"' "warm_only before any start is not EAGAIN"
out=$(call invoke "$FN_PY" --warm-only --payload '{"name":"x"}')
expect "$out" '.errno == "EAGAIN"' "plain-mode warm_only before the image is attached is not EAGAIN"
out=$(call stats)
expect "$out" '.cold_starts == 0 and .sandboxes == 0' "warm_only started something"
pass "warm_only with nothing warm: EAGAIN, nothing started"

# ---- cold, warm, tail, function error --------------------------------------------------------------------------------
out=$(call invoke "$FN_RT" --id cold-1 --payload '{"n":1}')
expect "$out" '.rc == 0 and .outcome == "ok" and .cold == true and .payload.count == 1 and .init_s > 0' "the cold invocation"
out=$(call invoke "$FN_RT" --id warm-1 --payload '{"n":2}')
expect "$out" '.outcome == "ok" and .cold == false and .payload.count == 2' "the warm invocation"
out=$(call invoke "$FN_RT" --id warm-2 --warm-only --tail --payload '{"print":true}')
expect "$out" '.outcome == "ok" and .cold == false and .payload.count == 3' "warm_only after a cold start"
expect "$out" '(.tail | contains("START RequestId: warm-2")) and (.tail | contains("printed by warm-2")) and (.tail | contains("REPORT RequestId: warm-2"))' \
  "the log tail"
out=$(call invoke "$FN_RT" --id err-1 --payload '{"error":true}')
expect "$out" '.rc == 0 and .outcome == "error" and .payload.errorType == "TestError" and .payload.errorMessage == "handler failed on purpose"' \
  "a handler's error"
pass "cold, warm, warm_only, log tail, function error"

# ---- 6 MB through plain mode -------------------------------------------------------------------------------------------
python3 -c 'import json,sys; sys.stdout.write(json.dumps({"name": "a" * 6000000}))' >"$T/big.json"
[ "$(stat -c %s "$T/big.json")" -gt 6000000 ] || die "the 6 MB event was not made"
out=$(call invoke "$FN_PY" --id big-1 --payload-file "$T/big.json" --payload-out "$T/big.out")
expect "$out" '.rc == 0 and .outcome == "ok" and .cold == true' "the 6 MB invocation"
python3 -c 'import json,sys; sys.stdout.write(json.dumps({"hello": "a" * 6000000, "from": "stdio"}) + "\n")' >"$T/big.want"
cmp -s "$T/big.out" "$T/big.want" || die "the 6 MB answer differs from what the handler printed"
out=$(call invoke "$FN_PY" --id py-warm --warm-only --payload '{"name":"warm"}')
expect "$out" '.outcome == "ok" and .payload.hello == "warm"' "plain-mode warm_only once the image is attached"
out=$(call invoke "$FN_PY" --id py-fail --payload '{"fail":"on purpose"}')
expect "$out" '.outcome == "error" and .payload.errorType == "Runtime.ExitError" and (.payload.errorMessage | contains("something went wrong: on purpose"))' \
  "a plain-mode failure"
pass "a 6 MB event and its answer byte for byte; plain mode warm_only and errors"

# ---- stats, log, provision, drain ------------------------------------------------------------------------------------
out=$(call stats)
expect "$out" '.memory_budget == 1073741824 and .cold_starts >= 1 and .warm_starts >= 3 and .idle == 1' "stats"
out=$(call log echo)
expect "$out" '.rc == 0 and (.log | contains("START RequestId: cold-1")) and (.log | contains("END RequestId: err-1"))' "the log"
out=$(call log never-ran)
expect "$out" '.errno == "ENOENT"' "the log of a function that never ran"
out=$(call provision "$FN_RT" 2)
expect "$out" '.rc == 0' "provision"
for ((i = 0; i < 600; i++)); do
  [ "$(call stats | jq .provisioned)" -ge 2 ] && break
  sleep 0.2
done
expect "$(call stats)" '.provisioned >= 2' "provisioned sandboxes did not start"
out=$(call provision "$FN_PY" 1)
expect "$out" '.errno == "EINVAL"' "provisioning a plain-mode function"
call drain echo - - >/dev/null
for ((i = 0; i < 600; i++)); do
  [ "$(call stats | jq .sandboxes)" = 0 ] && break
  sleep 0.2
done
expect "$(call stats)" '.sandboxes == 0 and .provisioned == 0' "drain left sandboxes"
pass "stats, logs, provisioned concurrency, drain"

# ---- kindling serve --agent, and SnapStart refused by a process agent --------------------------------------------------
[ -x /usr/bin/aws ] || die "/usr/bin/aws is missing (Debian package awscli; see scripts/apt-packages.txt)"
expect "$(curl -sS "$URL/v1/info")" '.isolation == "process" and .snapshot == false and (.snapshot_why | contains("--isolation microvm"))' \
  "the agent's GET /v1/info"
SPORT=$(free_port)
"$KINDLING" serve --listen "127.0.0.1:$SPORT" --state-dir "$T/serve" --agent "$URL" >"$T/serve.out" 2>"$T/serve.err" &
SERVE=$!
track_pid $SERVE
wait_port "$SPORT" 60
export AWS_SHARED_CREDENTIALS_FILE=$KINDLING_HOME/credentials AWS_PROFILE=kindling AWS_CONFIG_FILE=$T/aws-config \
  AWS_MAX_ATTEMPTS=1 AWS_PAGER=""
: >"$T/aws-config"
lam() { /usr/bin/aws --endpoint-url "http://127.0.0.1:$SPORT" --region us-east-1 --cli-binary-format raw-in-base64-out \
  --cli-read-timeout 300 --output json lambda "$@"; }
lam create-function --function-name viaagent --package-type Image --code ImageUri=shell-runtime:1 --timeout 60 \
  --memory-size 128 --role arn:aws:iam::000000000000:role/test >/dev/null
lam wait function-active-v2 --function-name viaagent
lam invoke --function-name viaagent --payload '{"n":1}' "$T/via.json" >/dev/null
jq -e '.count >= 1' "$T/via.json" >/dev/null || die "an invoke through kindling serve --agent: $(cat "$T/via.json")"
call log viaagent | jq -e '.log | contains("START RequestId")' >/dev/null ||
  die "the invocation through kindling serve --agent did not run on the agent: $(call log viaagent)"
if lam update-function-configuration --function-name viaagent --snap-start ApplyOn=PublishedVersions >"$T/snap.out" 2>"$T/snap.err"; then
  die "SnapStart was accepted with a process-sandbox agent: $(cat "$T/snap.out")"
fi
grep -q "(InvalidParameterValueException)" "$T/snap.err" && grep -q -- "--isolation microvm" "$T/snap.err" ||
  die "the SnapStart refusal through kindling serve --agent: $(cat "$T/snap.err")"
if lam create-function --function-name snapagent --package-type Image --code ImageUri=shell-runtime:1 \
  --snap-start ApplyOn=PublishedVersions --role arn:aws:iam::000000000000:role/test >"$T/snap.out" 2>"$T/snap.err"; then
  die "CreateFunction with SnapStart was accepted with a process-sandbox agent"
fi
grep -q -- "--isolation microvm" "$T/snap.err" || die "the CreateFunction refusal: $(cat "$T/snap.err")"
lam delete-function --function-name viaagent
kill -TERM $SERVE
wait $SERVE || die "kindling serve --agent did not stop cleanly"
pass "kindling serve --agent: the AWS CLI's function ran on the agent; SnapStart refused naming --isolation microvm (GET /v1/info: process, no snapshots)"

# ---- the agent lost under an invocation -----------------------------------------------------------------------------
call invoke "$FN_RT" --id lost-1 --payload '{"sleep":30}' >"$T/lost.json" &
CALL=$!
for ((i = 0; i < 600; i++)); do
  [ "$(call stats | jq .busy)" -ge 1 ] && break
  sleep 0.2
done
expect "$(call stats)" '.busy >= 1' "the slow invocation never started"
sleep 1
kill -9 $AGENT
wait $AGENT 2>/dev/null || true
wait $CALL || die "agent_call failed"
expect "$(cat "$T/lost.json")" '.errno == "ECONNRESET"' "an agent killed under an invocation is not ECONNRESET"
out=$(call invoke "$FN_RT" --id nobody --payload '{"n":1}')
expect "$out" '.errno == "ENOTCONN"' "no agent listening is not ENOTCONN"
# Its FUSE mount outlives a SIGKILL.
umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
pass "agent killed mid-invocation: ECONNRESET; nothing listening: ENOTCONN"

# ---- SIGTERM: a clean stop -------------------------------------------------------------------------------------------
start_agent --host-id h79
out=$(call invoke "$FN_RT" --id after-restart --payload '{"n":1}')
expect "$out" '.outcome == "ok" and .cold == true' "an invocation after the restart"
kill -TERM $AGENT
rc=0
wait $AGENT || rc=$?
[ $rc = 0 ] || die "kindling agent exited $rc on SIGTERM"
if grep -q " $MNT " /proc/self/mountinfo; then
  track_mount "$MNT"
  die "kindling agent left its FUSE mount behind after SIGTERM"
fi
pass "SIGTERM: exit 0, mount gone"
