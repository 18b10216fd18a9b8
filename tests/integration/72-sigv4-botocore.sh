#!/bin/bash
# kindling's SigV4 verifier (common/sigv4.c) against AWS's own signer:
#   1. botocore, as bundled in Debian's awscli, signs Lambda and S3 requests
#      (names with ':', '$' and unicode, query strings, bodies, a session
#      token, the Date header) that sigv4_echo_server must accept, and
#      tampered, stale, future, wrongly keyed copies it must refuse with
#      Lambda's error types (sigv4_botocore.py);
#   2. the aws CLI itself invokes, lists and gets functions against it, and
#      gets InvalidSignatureException / UnrecognizedClientException for a
#      wrong secret / an unknown key.
# Everything listens on 127.0.0.1.  A missing awscli is a failure, not a skip.
. "$(dirname "$0")/lib.sh"

SERVER=$TOOLS_DIR/sigv4_echo_server
[ -x "$SERVER" ] || die "sigv4_echo_server not built at $SERVER (build the project first)"
# Debian's packages by their paths: a python3 or aws earlier on PATH (pyenv,
# pip's AWS CLI v1) is not what this test is about.
PY=/usr/bin/python3
AWS=/usr/bin/aws
[ -x "$AWS" ] || die "Debian's aws CLI is not installed (apt-get install awscli; see scripts/apt-packages.txt)"
$PY -c 'import awscli, botocore.auth' 2>/dev/null || die "Debian's awscli (and the botocore in it) is not importable by $PY"

# The service's keys, and the CLI's own files with a good and two bad profiles.
umask 077
cat >"$T/service-credentials" <<'EOF'
# keys the test service accepts
[default]
aws_access_key_id = AKIAKINDLINGTEST0001
aws_secret_access_key = kindling/test+secret0123456789abcdefABCDEF
EOF
cat >"$T/cli-credentials" <<'EOF'
[default]
aws_access_key_id = AKIAKINDLINGTEST0001
aws_secret_access_key = kindling/test+secret0123456789abcdefABCDEF
[wrong]
aws_access_key_id = AKIAKINDLINGTEST0001
aws_secret_access_key = not-the-secret
[unknown]
aws_access_key_id = AKIAUNKNOWN000000000
aws_secret_access_key = kindling/test+secret0123456789abcdefABCDEF
EOF
printf '[default]\nregion = us-east-1\n[profile wrong]\nregion = us-east-1\n[profile unknown]\nregion = us-east-1\n' \
  >"$T/cli-config"

# start_server NAME ARGS...: run sigv4_echo_server, set PORT_<NAME>.
start_server() {
  local name=$1 i addr
  shift
  "$SERVER" --credentials "$T/service-credentials" "$@" >"$T/$name.out" 2>"$T/$name.err" &
  track_pid $!
  for ((i = 0; i < 200; i++)); do
    # The background job creates $name.out itself, maybe after this first look.
    addr=$(sed -n 's/^listening //p' "$T/$name.out" 2>/dev/null || true)
    [ -n "$addr" ] && break
    kill -0 "$!" 2>/dev/null || { cat "$T/$name.err" >&2; die "sigv4_echo_server ($name) exited"; }
    sleep 0.1
  done
  [ -n "$addr" ] || die "sigv4_echo_server ($name) did not report its address"
  printf -v "PORT_$name" '%s' "${addr##*:}"
}
start_server lambda --service lambda --region us-east-1
start_server s3 --service s3

# ---- 1. botocore ----------------------------------------------------------------
$PY "$KINDLING_SOURCE_DIR/tests/integration/sigv4_botocore.py" "$PORT_lambda" "$PORT_s3" ||
  { tail -n 20 "$T/lambda.err" "$T/s3.err" >&2; die "botocore cross-check failed"; }

# ---- 2. the aws CLI -------------------------------------------------------------
export AWS_SHARED_CREDENTIALS_FILE=$T/cli-credentials AWS_CONFIG_FILE=$T/cli-config AWS_PAGER="" \
  AWS_EC2_METADATA_DISABLED=true HOME=$T/home
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_PROFILE AWS_REGION \
  AWS_DEFAULT_REGION AWS_ENDPOINT_URL
EP=(--endpoint-url "http://127.0.0.1:$PORT_lambda")

"$AWS" lambda invoke "${EP[@]}" --function-name 'arn:aws:lambda:us-east-1:123456789012:function:my-fn:1' \
  --cli-binary-format raw-in-base64-out --payload '{"hello": "caf\u00e9"}' "$T/invoke.json" >"$T/cli.out" 2>"$T/cli.err" ||
  { cat "$T/cli.err" >&2; die "aws lambda invoke was refused"; }
[ "$(jq -r .accepted "$T/invoke.json")" = true ] || die "invoke not accepted: $(cat "$T/invoke.json")"
[ "$(jq -r .raw_path "$T/invoke.json")" = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Amy-fn%3A1/invocations" ] ||
  die "invoke: unexpected raw path $(jq -r .raw_path "$T/invoke.json")"
[ "$(jq -r .path "$T/invoke.json")" = "/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:my-fn:1/invocations" ] ||
  die "invoke: unexpected decoded path"
[ "$(jq -r .body_sha256 "$T/invoke.json")" = "$(printf '%s' '{"hello": "caf\u00e9"}' | sha256sum | cut -d' ' -f1)" ] ||
  die "invoke: the server saw another payload"
pass "aws lambda invoke with a qualified ARN (':' encoded twice in the signature)"

"$AWS" lambda invoke "${EP[@]}" --function-name 'caf€-fn:$LATEST' --invocation-type Event \
  --cli-binary-format raw-in-base64-out --payload '{}' "$T/event.json" >/dev/null 2>"$T/cli.err" ||
  { cat "$T/cli.err" >&2; die "aws lambda invoke of a unicode name was refused"; }
[ "$(jq -r .path "$T/event.json")" = '/2015-03-31/functions/caf€-fn:$LATEST/invocations' ] ||
  die "unicode invoke: unexpected path $(jq -r .path "$T/event.json")"
pass "aws lambda invoke of a unicode name with \$LATEST"

"$AWS" lambda list-functions "${EP[@]}" --max-items 3 --function-version ALL >/dev/null 2>"$T/cli.err" ||
  { cat "$T/cli.err" >&2; die "aws lambda list-functions was refused"; }
"$AWS" lambda get-function "${EP[@]}" --function-name my-fn --qualifier 7 >/dev/null 2>"$T/cli.err" ||
  { cat "$T/cli.err" >&2; die "aws lambda get-function was refused"; }
pass "aws lambda list-functions (query string) and get-function"

expect_fail "$AWS" --profile wrong lambda list-functions "${EP[@]}"
grep -q 'InvalidSignatureException' "$T/last.err" || { cat "$T/last.err" >&2; die "wrong secret: no InvalidSignatureException"; }
grep -q 'Check your AWS Secret Access Key' "$T/last.err" || die "wrong secret: not AWS's message"
expect_fail "$AWS" --profile unknown lambda invoke "${EP[@]}" --function-name f "$T/x.json"
grep -q 'UnrecognizedClientException' "$T/last.err" || { cat "$T/last.err" >&2; die "unknown key: no UnrecognizedClientException"; }
pass "aws CLI: a wrong secret and an unknown key get 403 with Lambda's error types"

# The server warns about a credentials file others can read, and still serves.
chmod 644 "$T/service-credentials"
start_server open --service lambda
grep -q 'chmod 600' "$T/open.err" || die "no warning about a world-readable credentials file: $(cat "$T/open.err")"
"$AWS" lambda get-function --endpoint-url "http://127.0.0.1:$PORT_open" --function-name f >/dev/null 2>"$T/cli.err" ||
  { cat "$T/cli.err" >&2; die "the server with an open credentials file refused a good request"; }
pass "a world-readable credentials file is warned about, not refused"
