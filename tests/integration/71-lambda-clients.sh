#!/bin/bash
# The official Lambda API clients the invoke-service tests drive are installed
# and work offline against an endpoint on 127.0.0.1:
#   - Debian's awscli (v2, /usr/bin/aws; a pip-installed aws earlier on PATH
#     may be v1, so the tests name /usr/bin/aws);
#   - @aws-sdk/client-lambda from tests/peers (npm, pinned by package-lock.json).
# Each sends ListFunctions and Invoke to a recording server, signed with
# AWS Signature V4 by a key from an AWS CLI credentials file; the server
# checks the method, path, body and the shape of the Authorization header, and
# each client must decode the server's answer byte for byte.  The paths are
# recorded exactly: the CLI lists with "/2015-03-31/functions/", the SDK
# with "/2015-03-31/functions", so a Lambda API must route both.
. "$(dirname "$0")/lib.sh"
AWS=/usr/bin/aws
PEERS=$KINDLING_SOURCE_DIR/tests/peers/node_modules
[ -x "$AWS" ] || die "$AWS is missing (Debian package awscli; see scripts/apt-packages.txt)"
"$AWS" --version >"$T/aws.version" 2>&1 || die "$AWS --version failed: $(cat "$T/aws.version")"
grep -q '^aws-cli/2\.' "$T/aws.version" || die "$AWS is not AWS CLI v2: $(cat "$T/aws.version")"
[ -d "$PEERS/@aws-sdk/client-lambda" ] || die "@aws-sdk/client-lambda is missing (scripts/setup.sh runs npm ci in tests/peers)"
SDK_VERSION=$(node -p "require('$PEERS/@aws-sdk/client-lambda/package.json').version")
pass "$(cut -d' ' -f1 "$T/aws.version") and @aws-sdk/client-lambda $SDK_VERSION are installed"

# ---- a recording Lambda endpoint ---------------------------------------------------------------------------
PORT=$(free_port)
cat >"$T/recorder.py" <<'PY'
import json, re, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = open(sys.argv[2], "a")
AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=AKIDKINDLINGTEST/\d{8}/us-east-1/lambda/aws4_request, "
                  r"SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}$")

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, code, body, headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        auth = self.headers.get("Authorization", "")
        ok = bool(AUTH.match(auth)) and bool(self.headers.get("X-Amz-Date"))
        log.write(json.dumps({"method": self.command, "path": self.path, "signed": ok,
                              "agent": self.headers.get("User-Agent", ""), "body": body.decode()}) + "\n")
        log.flush()
        if not ok:
            return self.answer(403, b'{"message":"bad signature"}', [("x-amzn-ErrorType", "InvalidSignatureException")])
        if self.command == "GET" and self.path.rstrip("/") == "/2015-03-31/functions":
            return self.answer(200, json.dumps({"Functions": [{"FunctionName": "peer-check", "PackageType": "Image"}]}).encode(),
                               [("Content-Type", "application/json")])
        if self.command == "POST" and self.path == "/2015-03-31/functions/peer-check/invocations":
            return self.answer(200, b'{"echo":' + body + b',"count":1}', [("X-Amz-Executed-Version", "$LATEST"),
                               ("Content-Type", "application/json")])
        self.answer(404, b'{"message":"no such route"}', [("x-amzn-ErrorType", "ResourceNotFoundException")])
    do_GET = do_POST = do_PUT = do_DELETE = handle_any

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$T/recorder.py" "$PORT" "$T/requests.log" 2>"$T/recorder.err" &
track_pid $!
wait_port "$PORT"

# The key lives in an AWS CLI credentials file, as kindling serve --credentials reads it.
mkdir -p "$T/aws"
printf '[default]\naws_access_key_id = AKIDKINDLINGTEST\naws_secret_access_key = kindling-test-secret\n' >"$T/aws/credentials"
printf '[default]\nregion = us-east-1\n' >"$T/aws/config"
export AWS_SHARED_CREDENTIALS_FILE=$T/aws/credentials AWS_CONFIG_FILE=$T/aws/config AWS_PAGER="" \
  AWS_EC2_METADATA_DISABLED=true
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
ENDPOINT=http://127.0.0.1:$PORT

# requests AGENT: the recorded requests whose User-Agent contains AGENT, as "METHOD PATH signed body".
requests() { jq -r --arg a "$1" 'select(.agent | contains($a)) | "\(.method) \(.path) \(.signed) \(.body)"' "$T/requests.log"; }

# ---- the AWS CLI ---------------------------------------------------------------------------------------------
timeout 60 "$AWS" lambda list-functions --endpoint-url "$ENDPOINT" --output json >"$T/cli.list" 2>"$T/cli.err" ||
  die "aws lambda list-functions failed: $(cat "$T/cli.err")"
jq -e '.Functions[0].FunctionName == "peer-check"' "$T/cli.list" >/dev/null || die "aws lambda list-functions: $(cat "$T/cli.list")"
timeout 60 "$AWS" lambda invoke --endpoint-url "$ENDPOINT" --function-name peer-check \
  --cli-binary-format raw-in-base64-out --payload '{"a":1}' "$T/cli.out" >"$T/cli.meta" 2>"$T/cli.err" ||
  die "aws lambda invoke failed: $(cat "$T/cli.err")"
[ "$(cat "$T/cli.out")" = '{"echo":{"a":1},"count":1}' ] || die "aws lambda invoke wrote $(cat "$T/cli.out")"
jq -e '.StatusCode == 200 and .ExecutedVersion == "$LATEST"' "$T/cli.meta" >/dev/null || die "aws lambda invoke: $(cat "$T/cli.meta")"
[ "$(requests aws-cli/2.)" = 'GET /2015-03-31/functions/ true 
POST /2015-03-31/functions/peer-check/invocations true {"a":1}' ] || die "the AWS CLI's requests: $(cat "$T/requests.log")"
pass "aws lambda list-functions and invoke: SigV4-signed, answers decoded"

# ---- the SDK -------------------------------------------------------------------------------------------------
cat >"$T/sdk.js" <<'JS'
const { LambdaClient, ListFunctionsCommand, InvokeCommand } = require("@aws-sdk/client-lambda");
(async () => {
  const c = new LambdaClient({ endpoint: process.argv[2], region: "us-east-1", maxAttempts: 1 });
  const l = await c.send(new ListFunctionsCommand({}));
  const r = await c.send(new InvokeCommand({ FunctionName: "peer-check", Payload: Buffer.from('{"b":2}') }));
  console.log(l.Functions.map((f) => f.FunctionName).join(","), r.StatusCode, r.ExecutedVersion,
    Buffer.from(r.Payload).toString());
})().catch((e) => { console.error(e); process.exit(1); });
JS
# 3.1178.0 runs on Node.js 20 and warns that later versions need Node.js 22.
NODE_PATH=$PEERS NODE_NO_WARNINGS=1 timeout 60 node "$T/sdk.js" "$ENDPOINT" >"$T/sdk.out" 2>"$T/sdk.err" ||
  die "the SDK failed: $(cat "$T/sdk.err")"
[ "$(cat "$T/sdk.out")" = 'peer-check 200 $LATEST {"echo":{"b":2},"count":1}' ] || die "the SDK got $(cat "$T/sdk.out")"
[ "$(requests aws-sdk-js/)" = 'GET /2015-03-31/functions true 
POST /2015-03-31/functions/peer-check/invocations true {"b":2}' ] || die "the SDK's requests: $(cat "$T/requests.log")"
pass "@aws-sdk/client-lambda ListFunctions and Invoke: SigV4-signed, answers decoded"
