#!/bin/bash
# `kindling serve` driven by the AWS SDK for JavaScript v3
# (@aws-sdk/client-lambda from tests/peers), signing with the key kindling
# serve writes on its first start: create (waiting with the SDK's
# function-active waiter), get, paginated list, invokes cold and warm on the
# shell and Node.js Lambda test images, Tail logs, function errors, DryRun,
# Event, configuration and code updates (function-updated waiter), versions,
# reserved and provisioned concurrency, a wrong secret, delete
# (tests/integration/invoke_sdk.mjs).  Then the Event invoke it sent shows in
# `kindling logs`.  Missing tools are a failure, not a skip.
# ctest-labels: no-asan (sandboxes and the SDK end to end; the frontend's logic runs under ASan in its unit test and fuzz replay); no-tsan (fork-heavy sandboxes; the frontend's threads run under TSan in test_frontend_api)
. "$(dirname "$0")/lib.sh"
KINDLING=$KINDLING_BUILD_DIR/kindling
export PEERS=$KINDLING_SOURCE_DIR/tests/peers/node_modules
[ -x "$KINDLING" ] || die "kindling not built at $KINDLING (build the project first)"
[ -d "$PEERS/@aws-sdk/client-lambda" ] || die "@aws-sdk/client-lambda is missing (scripts/setup.sh runs npm ci in tests/peers)"
command -v node >/dev/null || die "node is not installed"
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

timeout 840 "$KINDLING_SOURCE_DIR/tests/images/make-lambda-images.sh" "$T/img" >"$T/images.log" 2>&1 ||
  { tail -30 "$T/images.log" >&2; die "building the Lambda test images failed"; }

PORT=$(free_port)
STATE=$T/state
"$KINDLING" serve --listen "127.0.0.1:$PORT" --state-dir "$STATE" --isolation process >"$T/serve.out" 2>"$T/serve.err" &
SERVE_PID=$!
track_pid $SERVE_PID
for ((i = 0; i < 600; i++)); do
  grep -q "Lambda API on http://127.0.0.1:$PORT" "$T/serve.out" 2>/dev/null && break
  kill -0 $SERVE_PID 2>/dev/null || { cat "$T/serve.err" >&2; die "kindling serve exited at start"; }
  sleep 0.1
done
[ $i -lt 600 ] || die "kindling serve did not start in 60 s"
CREDS=$KINDLING_HOME/credentials
KEY=$(awk '/^aws_access_key_id/ {print $3; exit}' "$CREDS")
SECRET=$(awk '/^aws_secret_access_key/ {print $3; exit}' "$CREDS")
[ -n "$KEY" ] && [ -n "$SECRET" ] || die "no key in $CREDS"

# 3.1178.0 runs on Node.js 20 and warns that later versions need Node.js 22.
NODE_NO_WARNINGS=1 timeout 800 node "$KINDLING_SOURCE_DIR/tests/integration/invoke_sdk.mjs" "http://127.0.0.1:$PORT" \
  "$KEY" "$SECRET" "oci:$T/img/lambda-shell:1" "oci:$T/img/lambda-shell:2" "oci:$T/img/lambda-node:1" >"$T/sdk.out" 2>"$T/sdk.err" ||
  { cat "$T/sdk.out" "$T/sdk.err" >&2; tail -20 "$T/serve.err" >&2; die "the SDK run failed"; }
cat "$T/sdk.out"
[ "$(grep -c '^ok: ' "$T/sdk.out")" = 5 ] || die "the SDK run did not finish every step"
kill -TERM $SERVE_PID
rc=0
wait $SERVE_PID || rc=$?
[ $rc = 0 ] || die "kindling serve exited $rc on SIGTERM"
grep -q "sdk-event" "$STATE/agent/logs/sdk-sh.log" "$STATE/agent/logs/sdk-sh.log.1" 2>/dev/null ||
  die "the SDK's Event invoke never ran"
pass "@aws-sdk/client-lambda drove every call; the Event invoke ran; SIGTERM stopped kindling serve"
