#!/bin/bash
# The origin store layer against real servers: the same store_suite run on
#   1. file:// directories (a file URI and a plain path),
#   2. nginx with WebDAV PUT/DELETE and a JSON autoindex (the http:// store),
#   3. s3rver from npm (the s3:// store, SigV4, path-style),
# plus the refusal of plain http to a non-loopback host.  Everything listens
# on 127.0.0.1 only; nothing else is contacted.  Missing nginx or s3rver is a
# failure, not a skip.
# ctest-labels: no-asan (the store suite against nginx and s3rver; the S3 and HTTP parsers are fuzz-replayed); no-tsan (one request stream per store)
. "$(dirname "$0")/lib.sh"

SUITE=$TOOLS_DIR/store_suite
[ -x "$SUITE" ] || die "store_suite not built at $SUITE (build the project first)"
command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx; see scripts/apt-packages.txt)"
command -v node >/dev/null || die "node is not installed (apt-get install nodejs npm)"
S3RVER=$KINDLING_SOURCE_DIR/tests/peers/node_modules/s3rver/bin/s3rver.js
[ -f "$S3RVER" ] || die "s3rver is not installed: run (cd $KINDLING_SOURCE_DIR/tests/peers && npm ci)"

# Run the suite on $2 (extra flags after it), show its output, and insist on
# a clean summary line.
run_suite() {
  local name=$1 uri=$2
  shift 2
  echo "== store_suite on $name: $uri"
  if ! "$SUITE" "$@" "$uri" >"$T/suite.out" 2>"$T/suite.err"; then
    cat "$T/suite.out"
    tail -n 40 "$T/suite.err" >&2
    die "store_suite failed on $name"
  fi
  grep -Eq '^[0-9]+ passed, 0 failed$' "$T/suite.out" || { cat "$T/suite.out"; die "no clean summary for $name"; }
  pass "$name: $(tail -n 1 "$T/suite.out")"
}

# ---- 1. file stores -------------------------------------------------------------
run_suite "file URI" "file://$T/file-store"
assert_no_tmp "$T/file-store"
(cd "$T" && run_suite "plain path" "$T/plain-store")
assert_no_tmp "$T/plain-store"
mkdir -p "$T/rel" && (cd "$T/rel" && run_suite "relative path" "relative-store")
assert_no_tmp "$T/rel/relative-store"

# ---- 2. nginx with WebDAV --------------------------------------------------------
. "$KINDLING_SOURCE_DIR/tests/tools/nginx-dav.sh"
NGX=$T/nginx
NGINX_PORT=$(free_port)
start_nginx_dav "$NGX" "$T/www" "$NGINX_PORT" || die "nginx did not start"
track_pid $NGINX_PID
wait_port "$NGINX_PORT"
run_suite "nginx WebDAV" "http://127.0.0.1:$NGINX_PORT/origin"
assert_no_tmp "$T/www"
[ -z "$(ls -A "$NGX/tmp/body" 2>/dev/null)" ] || die "nginx left request bodies behind in $NGX/tmp/body"

# A dead origin is an error naming the URL, never a silent "absent".
DEAD_PORT=$(free_port)
expect_fail "$SUITE" "http://127.0.0.1:$DEAD_PORT/origin"
grep -q "is the origin at http://127.0.0.1:$DEAD_PORT/origin/ running" "$T/last.err" ||
  { cat "$T/last.err" >&2; die "no operator hint for a dead origin"; }
pass "dead http origin reported with a hint"

# ---- 3. s3rver --------------------------------------------------------------------
S3_PORT=$(free_port)
BUCKET=kindling-test
mkdir -p "$T/s3rver"
node "$S3RVER" -d "$T/s3rver" -a 127.0.0.1 -p "$S3_PORT" --no-vhost-buckets --configure-bucket "$BUCKET" -s \
  >"$T/s3rver.log" 2>&1 &
track_pid $!
wait_port "$S3_PORT"
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
export KINDLING_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
unset AWS_SESSION_TOKEN AWS_ENDPOINT_URL
# s3rver writes objects in place (real S3 does not), so the racing-reader
# check, which tests the server and not our client, is left out here.
run_suite "s3rver" "s3://$BUCKET/origin" --origin-not-atomic
run_suite "s3rver, bucket root" "s3://$BUCKET" --origin-not-atomic

# Missing credentials: a clear error naming the variables.
(unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; expect_fail "$SUITE" "s3://$BUCKET/origin")
grep -q "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" "$T/last.err" ||
  { cat "$T/last.err" >&2; die "missing credentials not explained"; }
pass "missing S3 credentials reported"

# A missing bucket is an error, not "every key is absent".
expect_fail "$SUITE" "s3://no-such-bucket-here/x"
grep -q 'bucket "no-such-bucket-here" does not exist' "$T/last.err" ||
  { cat "$T/last.err" >&2; die "missing bucket not explained"; }
pass "missing S3 bucket reported"

# ---- plain http to a non-loopback host -------------------------------------------
# store_open is lazy, so these make no connection to 10.1.2.3.
expect_fail "$SUITE" "http://10.1.2.3/x"
grep -q "refusing plain http to non-loopback host 10.1.2.3" "$T/last.err" ||
  { cat "$T/last.err" >&2; die "plain http to 10.1.2.3 not refused clearly"; }
KINDLING_S3_ENDPOINT=http://10.1.2.3:9000 expect_fail "$SUITE" "s3://$BUCKET/x"
grep -q "refusing plain http to non-loopback host 10.1.2.3" "$T/last.err" ||
  { cat "$T/last.err" >&2; die "plain http S3 endpoint 10.1.2.3 not refused clearly"; }
pass "plain http to a non-loopback host refused"

echo "all store checks passed"
