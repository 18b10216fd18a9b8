#!/bin/bash
# The host agent (placement/hostagent/) for real: images built with umoci
# (tests/images/make-hostagent-images.sh: a shell custom runtime that speaks
# the Lambda Runtime API with curl, and a plain Python image), imported with
# chunkify, run by an in-process agent (tests/tools/hostagent_invoke) in the
# process sandbox:
#   - cold, then warm: the runtime's counter goes up in the same sandbox; the
#     environment is Lambda's (reserved variables win over the function's);
#     the event's headers arrive; the log tail has START, END and REPORT;
#   - N invocations at once get N sandboxes;
#   - a handler error, a response over 6 MB, a timeout (the sandbox is ended,
#     the next invocation is cold and works), a runtime that exits during an
#     invocation and during init, an entrypoint that is not there, an init
#     error, a runtime that never asks for work, running out of memory, each
#     reported as Lambda reports it;
#   - plain (stdio) mode with the Python image: the answer, a failure with
#     the end of stderr as the message;
#   - the memory budget: idle sandboxes are evicted least recently used
#     first, and a budget full of busy sandboxes refuses with EBUSY;
#   - idle sandboxes expire; provisioned sandboxes start before any
#     invocation and take the first one warm;
#   - a drain on a new revision: the invocation in flight finishes on the
#     old sandbox, the next one runs the new revision, the old sandbox ends;
#   - the function's log has Lambda's lines;
#   - the workload is in its sandbox's memory and pids cgroups (read from its
#     own /proc/self/cgroup).
# Missing tools are a failure, not a skip.
# ctest-labels: no-tsan (fork-heavy sandboxes; the endpoint's threads run under TSan in test_hostagent_rapi)
. "$(dirname "$0")/lib.sh"
TOOL=$KINDLING_BUILD_DIR/hostagent_invoke
[ -x "$TOOL" ] || die "hostagent_invoke not built at $TOOL (build the project first)"
for tool in jq umoci curl python3; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

"$KINDLING_SOURCE_DIR/tests/images/make-hostagent-images.sh" "$T/images" >/dev/null ||
  die "building the test images failed"
RT=$("$CHUNKIFY" --json import "oci:$T/images/shell-runtime:1" --name shell-runtime:1 | jq -r .manifest)
PY=$("$CHUNKIFY" --json import "oci:$T/images/py-stdio:1" --name py-stdio:1 | jq -r .manifest)
[ ${#RT} = 64 ] && [ ${#PY} = 64 ] || die "import failed"
pass "images built and imported"

# agent NAME [options] < SCRIPT: run the tool; its output lines go to $T/NAME.out (one JSON
# object each), its stderr to $T/NAME.err.
agent() {
  local name=$1 rc=0
  shift
  timeout 600 "$TOOL" --state "$T/state-$name" --isolation process "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
  [ $rc = 0 ] || { cat "$T/$name.out" "$T/$name.err" >&2; die "$name: hostagent_invoke exited $rc"; }
  if grep -q " $T/state-$name/mnt " /proc/self/mountinfo; then
    track_mount "$T/state-$name/mnt"
    die "$name: the agent left its FUSE mount behind"
  fi
  return 0
}
# nth NAME N: the Nth output object (from 0).
nth() { jq -s ".[$2]" "$T/$1.out"; }
# expect NAME N FILTER WHAT: the Nth object satisfies the jq FILTER ($id is its request id).
expect() {
  nth "$1" "$2" | jq -e ".request_id as \$id | $3" >/dev/null || { nth "$1" "$2" >&2; die "$1: $4"; }
}

# ---- does the sandbox give a Runtime API endpoint at all? -------------------------------------------------------------
# Without one the runtime has no AWS_LAMBDA_RUNTIME_API, its curl fails and it
# exits 4 at once; say so plainly instead of failing (or waiting on stop_fd) later.
agent probe <<EOF
fn probe image=$RT timeout=10
invoke probe {"n":1}
EOF
if nth probe 0 | jq -e '.payload.errorType == "Runtime.ExitError" and (.payload.errorMessage | endswith("exit status 4"))' >/dev/null; then
  die "the process sandbox gave the runtime no Runtime API endpoint (sandbox_spec.runtime_api_port, on_ready and stop_fd are not implemented in this build)"
fi
expect probe 0 '.outcome == "ok"' "the first Runtime API invocation failed"

# ---- warm reuse, environment, headers, tail, concurrency, errors -----------------------------------------------------
agent main <<EOF
fn echo image=$RT memory=128 timeout=10 env=REV=one env=AWS_REGION=eu-west-9 env=TZ=Europe/Paris
invoke echo {"n":1}
invoke echo tail {"print":true}
par echo 4 {"sleep":3}
stats
invoke echo {"error":true}
invoke echo {"n":2}
invoke echo {"big":true}
fn slow image=$RT timeout=2
invoke slow {"sleep":30}
invoke slow {"n":1}
fn crash image=$RT timeout=10
invoke crash {"exit":true}
invoke crash {"n":1}
fn initexit image=$RT env=INIT_MODE=exit
invoke initexit {"n":1}
fn badep image=$RT entrypoint=/var/runtime/nonexistent
invoke badep {"n":1}
fn initerr image=$RT env=INIT_MODE=error
invoke initerr {"n":1}
fn hang image=$RT timeout=2 env=INIT_MODE=hang
invoke hang {"n":1}
fn oom image=$RT memory=64 timeout=60
invoke oom {"oom":true}
fn py image=$PY mode=stdio timeout=30
invoke py {"name":"kindling"}
invoke py {"fail":"bad input"}
log echo
EOF
expect main 0 '.rc == 0 and .outcome == "ok" and .cold == true and .init_s > 0 and .payload.count == 1' "first invocation not a cold ok"
expect main 0 '.payload.handler == "handler.echo" and .payload.fn == "echo" and .payload.version == "$LATEST"
  and .payload.memory == "128" and .payload.region == "us-east-1" and .payload.tz == ":UTC" and .payload.rev == "one"
  and .payload.exec_env == "AWS_Lambda_Image" and .payload.task_root == "/var/task" and .payload.init_type == "on-demand"
  and (.payload.stream | test("^[0-9]{4}/[0-9]{2}/[0-9]{2}/\\[\\$LATEST\\][0-9a-f]{32}$"))
  and .payload.arn == "arn:aws:lambda:us-east-1:000000000000:function:echo"
  and (.payload.trace | startswith("Root=1-"))
  and .payload.deadline / 1000 > now - 600 and .payload.deadline / 1000 <= now + 10' "environment or headers wrong"
pass "cold start: Lambda's environment (reserved variables win over the function's), the event's headers"
expect main 1 '.outcome == "ok" and .cold == false and .payload.count == 2' "second invocation not warm on the same sandbox"
expect main 1 '(.tail | startswith("START RequestId: " + $id + " Version: $LATEST\n"))
  and (.tail | contains("printed by " + $id + "\n")) and (.tail | contains("END RequestId: " + $id + "\n"))
  and (.tail | test("REPORT RequestId: [^\t]+\tDuration: [0-9.]+ ms\tBilled Duration: [0-9]+ ms\tMemory Size: 128 MB\tMax Memory Used: [0-9]+ MB\t\n$"))
  and (.tail | contains("Init Duration") | not)' "the log tail is wrong"
pass "warm: the runtime's counter went up in the same sandbox; the log tail has START, the output, END, REPORT"
for i in 2 3 4 5; do expect main $i '.outcome == "ok" and .payload.event.sleep == 3' "a concurrent invocation failed"; done
streams=$(jq -s '[.[2:6][] | .payload.stream] | unique | length' "$T/main.out")
[ "$streams" = 4 ] || die "4 invocations at once ran in $streams sandboxes, not 4"
expect main 6 '.sandboxes == 4 and .idle == 4 and .cold_starts == 4 and .warm_starts == 2' "stats after the burst"
pass "4 invocations at once: 4 sandboxes (3 cold starts, one warm)"
expect main 7 '.outcome == "error" and .payload.errorType == "TestError" and .payload.errorMessage == "handler failed on purpose"' "handler error"
expect main 8 '.outcome == "ok" and .cold == false' "the sandbox did not survive a handler error"
pass "a handler error is the runtime's error JSON; the sandbox stays warm"
expect main 9 '.outcome == "error" and .payload.errorType == "Function.ResponseSizeTooLarge"
  and (.payload.errorMessage | test("^Response payload size \\(7000000 bytes\\) exceeded maximum allowed payload size \\(6291556 bytes\\)\\.$"))' "oversized response"
pass "a 7 MB response: Function.ResponseSizeTooLarge"
expect main 10 '.outcome == "error" and .payload.errorType == "Sandbox.Timedout"
  and (.payload.errorMessage | test("^[0-9-]+T[0-9:.]+Z " + $id + " Task timed out after 2.00 seconds$"))' "timeout"
expect main 11 '.outcome == "ok" and .cold == true and .payload.count == 1' "after a timeout the next invocation is not a fresh cold start"
pass "a timeout is Sandbox.Timedout; the sandbox is ended and the next invocation starts a new one"
expect main 12 '.outcome == "error" and .payload.errorType == "Runtime.ExitError"
  and .payload.errorMessage == "RequestId: " + $id + " Error: Runtime exited with error: exit status 7"' "runtime exit"
expect main 13 '.outcome == "ok" and .cold == true' "after a runtime exit"
expect main 14 '.outcome == "error" and .payload.errorType == "Runtime.ExitError"
  and .payload.errorMessage == "RequestId: " + $id + " Error: Runtime exited with error: exit status 3"' "exit during init"
pass "a runtime that exits (in an invocation, during init): Runtime.ExitError with its status"
expect main 15 '.outcome == "error" and .payload.errorType == "Runtime.InvalidEntrypoint"
  and (.payload.errorMessage | test("fork/exec /var/runtime/nonexistent: no such file or directory$"))' "bad entrypoint"
pass "a missing entrypoint: Runtime.InvalidEntrypoint"
expect main 16 '.outcome == "error" and .payload.errorType == "Runtime.InitTest" and .payload.errorMessage == "init failed on purpose"' "init error"
pass "an init error reaches the invocation"
expect main 17 '.outcome == "error" and .payload.errorType == "Sandbox.Timedout"' "a runtime that never asks for work"
pass "a runtime that never asks for work: ended and reported (Sandbox.Timedout)"
expect main 18 '.outcome == "error" and .payload.errorType == "Runtime.OutOfMemory"
  and .payload.errorMessage == "RequestId: " + $id + " Error: Runtime exited with error: signal: killed"' "out of memory"
pass "past MemorySize: Runtime.OutOfMemory"
expect main 19 '.outcome == "ok" and .payload == {"hello": "kindling", "from": "stdio"} and .cold == true' "stdio mode"
expect main 20 '.outcome == "error" and .payload.errorType == "Runtime.ExitError"
  and (.payload.errorMessage | endswith("something went wrong: bad input"))' "stdio failure"
pass "plain mode: stdin to stdout; a non-zero exit is Runtime.ExitError with the end of stderr"
LOG=$(nth main 21 | jq -r .log)
[ "$(grep -c '^START RequestId: .* Version: \$LATEST$' <<<"$LOG")" = 9 ] &&
  [ "$(grep -c '^END RequestId: ' <<<"$LOG")" = 9 ] && [ "$(grep -c '^REPORT RequestId: ' <<<"$LOG")" = 9 ] &&
  [ "$(grep -c 'Init Duration: ' <<<"$LOG")" = 4 ] && grep -q '^init: handler handler.echo, function echo$' <<<"$LOG" ||
  { echo "$LOG" >&2; die "the function's log lacks Lambda's lines"; }
pass "the function's log: START, END and REPORT for each invocation, Init Duration on the 4 cold starts"

# ---- the workload's cgroups ------------------------------------------------------------------------------------------
# The workload of a host-agent sandbox (forked from the agent's many threads)
# reads its own /proc/self/cgroup, with python3 (the image's only program; no
# spaces or commas, which the script's fn line would split on): on cgroup v1
# it must be in the sandbox's memory and pids cgroups (kindling-sandbox-<pid
# of the monitor>, the same name in both), on v2 in one kindling-sandbox-<pid>
# cgroup.  Without this a sandbox running unlimited would only show as a
# memory hog that is not ended.
agent cgroup <<EOF
fn cg image=$PY mode=stdio timeout=30 entrypoint=python3 command=-c,__import__('sys').stdout.write(open('/proc/self/cgroup').read())
invoke cg {}
EOF
CG=$(nth cgroup 0 | jq -r 'select(.outcome == "ok") | .payload')
if [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/pids ] &&
  ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  MEMCG=$(grep -E "^[0-9]+:memory:" <<<"$CG" | grep -oE "/kindling-sandbox-[0-9]+$" || true)
  PIDSCG=$(grep -E "^[0-9]+:pids:" <<<"$CG" | grep -oE "/kindling-sandbox-[0-9]+$" || true)
  [ -n "$MEMCG" ] && [ "$MEMCG" = "$PIDSCG" ] ||
    die "the host-agent workload is not in its sandbox's memory and pids cgroups (v1): $CG$(cat "$T/cgroup.err")"
  pass "the host-agent workload runs in its sandbox's memory and pids cgroups (v1: ${MEMCG#/})"
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  grep -qE "^0::.*/kindling-sandbox-[0-9]+$" <<<"$CG" ||
    die "the host-agent workload is not in its sandbox's cgroup (v2): $CG$(cat "$T/cgroup.err")"
  pass "the host-agent workload runs in its sandbox's cgroup (v2)"
else
  pass "no cgroup memory controller on this host: the workload runs without limits (50 checks the notice)"
fi

# ---- the memory budget -----------------------------------------------------------------------------------------------
agent budget --budget 256 <<EOF
fn a image=$RT memory=128 timeout=10
fn b image=$RT memory=128 timeout=10
fn c image=$RT memory=128 timeout=10
invoke a {"n":1}
invoke b {"n":1}
invoke a {"n":2}
invoke c {"n":1}
stats
invoke a {"n":3}
invoke b {"n":2}
stats
start x a {"sleep":5}
start y c {"sleep":5}
await busy == 2
invoke b {"n":3}
wait x
wait y
EOF
expect budget 2 '.cold == false and .payload.count == 2' "a was not warm"
expect budget 3 '.cold == true' "c"
expect budget 4 '.evictions == 1 and .sandboxes == 2 and .memory_in_use == 268435456' "eviction of the least recently used (b)"
expect budget 5 '.cold == false and .payload.count == 3' "a (recently used) was evicted instead of b"
expect budget 6 '.cold == true' "b should have been evicted"
expect budget 7 '.evictions == 2' "second eviction"
expect budget 9 '.rc == -16' "a budget full of busy sandboxes must refuse (EBUSY)"
expect budget 10 '.outcome == "ok"' "busy a"
expect budget 11 '.outcome == "ok"' "busy c"
pass "memory budget: the least recently used idle sandbox is evicted; full of busy ones, EBUSY"

# ---- idle expiry -------------------------------------------------------------------------------------------------------
agent idle --idle 1 <<EOF
fn e image=$RT timeout=10
invoke e {"n":1}
await expirations == 1
await sandboxes == 0
invoke e {"n":1}
EOF
expect idle 3 '.outcome == "ok" and .cold == true and .payload.count == 1' "after expiry"
pass "an idle sandbox expires; the next invocation is cold"

# ---- provisioned concurrency ------------------------------------------------------------------------------------------
agent prov <<EOF
fn p image=$RT timeout=10
provision p 2
await provisioned == 2
stats
invoke p {"n":1}
stats
provision p 0
EOF
expect prov 0 '.rc == 0' "provision"
expect prov 2 '.cold_starts == 2 and .warm_starts == 0 and .idle == 2' "provisioned sandboxes before any invocation"
expect prov 3 '.outcome == "ok" and .cold == false and .payload.init_type == "provisioned-concurrency"' "invocation on a provisioned sandbox"
expect prov 4 '.cold_starts == 2 and .warm_starts == 1' "stats after"
pass "provisioned concurrency: 2 sandboxes initialised before any invocation; the first invocation is warm"

# ---- drain on a new revision ----------------------------------------------------------------------------------------
agent drain <<EOF
fn d1 name=drainfn revision=r1 timeout=20 env=REV=one image=$RT
fn d2 name=drainfn revision=r2 timeout=20 env=REV=two image=$RT
invoke d1 {"n":1}
start inflight d1 {"sleep":3}
await busy == 1
drain d2 \$LATEST r2
invoke d2 {"n":2}
wait inflight
await sandboxes == 1
stats
EOF
expect drain 3 '.outcome == "ok" and .cold == true and .payload.rev == "two"' "the invocation after the drain must run the new revision"
expect drain 4 '.outcome == "ok" and .cold == false and .payload.rev == "one" and .payload.count == 2' "the in-flight invocation must finish on the old sandbox"
expect drain 6 '.sandboxes == 1 and .idle == 1' "the old sandbox must end after its invocation"
pass "drain: the in-flight invocation completes on the old revision, the next runs the new one, the old sandbox ends"
