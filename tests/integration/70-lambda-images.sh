#!/bin/bash
# The Lambda function images the invoke-service tests use (tests/images/README.md):
#   - make-lambda-images.sh builds both layouts; a second run reuses its cache
#     and gives the same manifests, byte for byte;
#   - chunkify imports them, from oci: and, through tests/images/registry.sh,
#     from a docker-registry on 127.0.0.1;
#   - `kindling run` runs them in the process sandbox: Debian's Node.js 18 loads
#     aws-lambda-ric's native module and its JavaScript, the handler answers
#     its event protocol (echo, warm counter, errors, allocation, code version
#     2), the entrypoint starts the ric; the shell image's sh and curl run, its
#     handler answers the same protocol, its bootstrap starts.
# The Runtime API loop itself needs the invoke service; it is not tested here.
# Missing tools are a failure, not a skip.
. "$(dirname "$0")/lib.sh"
KINDLING=$KINDLING_BUILD_DIR/kindling
IMAGES=$KINDLING_SOURCE_DIR/tests/images
[ -x "$KINDLING" ] || die "kindling not built at $KINDLING (build the project first)"
[ -x "$CHUNKIFY" ] || die "chunkify not built at $CHUNKIFY"
for tool in jq umoci skopeo docker-registry curl cmp; do
  command -v "$tool" >/dev/null || die "$tool is missing (see scripts/apt-packages.txt)"
done
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
. "$IMAGES/registry.sh"

# ---- build, twice ---------------------------------------------------------------------------------------------
# A cold cache builds aws-lambda-ric (minutes); scripts/setup.sh does that ahead of the tests.
start=$(date +%s)
timeout 840 "$IMAGES/make-lambda-images.sh" "$T/img" >"$T/make1.log" 2>&1 ||
  { tail -50 "$T/make1.log" >&2; die "make-lambda-images.sh failed"; }
pass "make-lambda-images.sh built both layouts in $(($(date +%s) - start)) s"
. "$T/img/lambda-images.env"
for l in lambda-node lambda-shell; do cp "$T/img/$l/index.json" "$T/$l.index.json"; done
start=$(date +%s)
timeout 300 "$IMAGES/make-lambda-images.sh" "$T/img" >"$T/make2.log" 2>&1 ||
  { cat "$T/make2.log" >&2; die "the second make-lambda-images.sh failed"; }
for l in lambda-node lambda-shell; do
  grep -q "^make-lambda-images: $l: layout cached" "$T/make2.log" || { cat "$T/make2.log" >&2; die "$l: the second run did not reuse the cached layout"; }
  cmp "$T/$l.index.json" "$T/img/$l/index.json" || die "$l: the second run changed the layout's manifests"
done
grep -q "aws-lambda-ric $LAMBDA_RIC_VERSION for Node.js $LAMBDA_NODE_VERSION: cached" "$T/make2.log" ||
  die "the second run did not reuse the cached aws-lambda-ric"
pass "second run: everything from the cache in $(($(date +%s) - start)) s, same manifests"

# ---- import ---------------------------------------------------------------------------------------------------
imp() { # SOURCE NAME
  timeout 300 "$CHUNKIFY" import "$1" --name "$2" --json >"$T/import.json" 2>"$T/import.err" ||
    { cat "$T/import.err" >&2; die "chunkify import $1 failed"; }
}
imp "oci:$LAMBDA_NODE_LAYOUT:1" lambda-node:1
imp "oci:$LAMBDA_NODE_LAYOUT:2" lambda-node:2
start_registry
push_layout "$LAMBDA_SHELL_LAYOUT" 1 lambda-shell:1
imp "docker://$REGISTRY/lambda-shell:1" lambda-shell:1
pass "imported lambda-node:1 and :2 from oci:, lambda-shell:1 from docker://$REGISTRY"
"$CHUNKIFY" inspect lambda-node:1 --json | jq -e '
  .config.entrypoint == ["/usr/bin/node", "/var/runtime/node_modules/aws-lambda-ric/bin/index.mjs"] and
  .config.cmd == ["index.handler"] and .config.working_dir == "/var/task" and
  (.config.env | index("LAMBDA_TASK_ROOT=/var/task") != null)' >/dev/null ||
  die "lambda-node:1: run configuration: $("$CHUNKIFY" inspect lambda-node:1 --json | jq -c .config)"
"$CHUNKIFY" inspect lambda-shell:1 --json | jq -e '
  .config.entrypoint == ["/var/runtime/bootstrap"] and .config.cmd == ["function.handler"] and
  .config.working_dir == "/var/task"' >/dev/null ||
  die "lambda-shell:1: run configuration: $("$CHUNKIFY" inspect lambda-shell:1 --json | jq -c .config)"
pass "run configurations: the ric and index.handler, the bootstrap and function.handler, /var/task"

# ---- run ------------------------------------------------------------------------------------------------------
export TMPDIR=$T/tmp
mkdir -p "$TMPDIR"
# kr NAME IMAGE [-- CMD...]: kindling run; stdout to $T/NAME.out, stderr to $T/NAME.err; returns its status.
kr() {
  local name=$1 rc=0
  shift
  timeout 120 "$KINDLING" run "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
  return $rc
}
# expect NAME TEXT: $T/NAME.out is exactly TEXT (and a newline).
expect() {
  printf '%s\n' "$2" >"$T/$1.want"
  cmp -s "$T/$1.want" "$T/$1.out" || {
    echo "--- want"; cat "$T/$1.want"; echo "--- got"; cat "$T/$1.out"; echo "--- stderr"; cat "$T/$1.err"
  } >&2 || true
  cmp -s "$T/$1.want" "$T/$1.out" || die "$1: output differs"
}

# The native module reads AWS_LAMBDA_RUNTIME_API when it loads (a static initialiser).
kr native lambda-node:1 -- /usr/bin/node -e '
  process.env.AWS_LAMBDA_RUNTIME_API = "127.0.0.1:9001";
  const m = require("/var/runtime/node_modules/aws-lambda-ric/dist/rapid-client.node");
  console.log(process.version, process.versions.modules, Object.keys(m).sort().join(","));' ||
  die "node could not load rapid-client.node: $(cat "$T/native.err")"
expect native "v$LAMBDA_NODE_VERSION 108 done,error,next"
pass "Debian's node $LAMBDA_NODE_VERSION loads aws-lambda-ric's native module in the sandbox"

kr ricjs lambda-node:1 -- /usr/bin/node -e '
  import("/var/runtime/node_modules/aws-lambda-ric/dist/index.mjs").then((m) => console.log(typeof m.run));' ||
  die "node could not import the ric: $(cat "$T/ricjs.err")"
expect ricjs "function"
pass "the ric's JavaScript imports"

HANDLER_JS='
  const h = require("/var/task/index.js");
  const show = (r) => { delete r.pid; console.log(JSON.stringify(r)); };
  (async () => {
    show(await h.handler({ a: 1 }, {}));
    await h.handler({ fail: "boom", error_type: "MyError" }, {}).catch((e) => console.log(e.name + ": " + e.message));
    show(await h.handler({ b: 2, alloc_mb: 8, sleep_ms: 10 }, {}));
  })();'
kr handler lambda-node:1 -- /usr/bin/node -e "$HANDLER_JS" || die "the Node.js handler failed: $(cat "$T/handler.err")"
expect handler '{"echo":{"a":1},"count":1,"version":"1"}
MyError: boom
{"echo":{"b":2,"alloc_mb":8,"sleep_ms":10},"count":3,"version":"1","allocated_mb":8}'
kr handler2 lambda-node:2 -- /usr/bin/node -e "$HANDLER_JS" || die "the Node.js handler (tag 2) failed"
expect handler2 '{"echo":{"a":1},"count":1,"version":"2"}
MyError: boom
{"echo":{"b":2,"alloc_mb":8,"sleep_ms":10},"count":3,"version":"2","allocated_mb":8}'
pass "index.handler: echo, counter, errors, allocation; tag 2 reports code version 2"

# The entrypoint: the ric starts, names its handler, and (with no Runtime API
# variable, as here) dies; the service always sets AWS_LAMBDA_RUNTIME_API.
rc=0; kr nodeentry lambda-node:1 || rc=$?
[ "$rc" != 0 ] || die "the ric ran without AWS_LAMBDA_RUNTIME_API and exited 0"
[ "$(head -n 1 "$T/nodeentry.out")" = "Executing 'index.handler' in function directory '/var/task'" ] ||
  die "the Node.js entrypoint did not start the ric: $(cat "$T/nodeentry.out" "$T/nodeentry.err")"
pass "the Node.js entrypoint starts the ric on index.handler in /var/task (exit $rc without a Runtime API)"

kr curl lambda-shell:1 -- curl --version || die "curl --version failed in the sandbox: $(cat "$T/curl.err")"
curl --version >"$T/curl.host"
cmp -s "$T/curl.host" "$T/curl.out" || die "curl --version in the image differs from the host's: $(cat "$T/curl.out")"
kr sh lambda-shell:1 -- sh -c 'echo "sh: $0 $1"' sh one || die "sh failed in the sandbox"
expect sh "sh: sh one"
pass "the shell image's sh and curl run ($(head -n 1 "$T/curl.out" | cut -d' ' -f1-2))"

SHELL_HANDLER='exec 3>&1; . /var/task/function.sh
  handler "{\"a\":1}"; echo
  handler "{\"fail\":\"boom here\"}"; echo " rc=$?"
  handler "{\"b\":2,\"alloc_mb\":4,\"sleep_ms\":10,\"stdout\":\"to stdout\"}"; echo'
kr shhandler lambda-shell:1 -- sh -c "$SHELL_HANDLER" || die "the shell handler failed: $(cat "$T/shhandler.err")"
sed -i 's/"pid":[0-9]*,/"pid":P,/' "$T/shhandler.out"
expect shhandler '{"echo":{"a":1},"count":1,"pid":P,"version":"1"}
boom here rc=1
to stdout
{"echo":{"b":2,"alloc_mb":4,"sleep_ms":10,"stdout":"to stdout"},"count":3,"pid":P,"version":"1","allocated_mb":4}'
pass "function.handler: echo, counter, errors, allocation, stdout"

rc=0; kr shentry lambda-shell:1 || rc=$?
[ "$rc" != 0 ] && grep -q "AWS_LAMBDA_RUNTIME_API is not set" "$T/shentry.err" ||
  die "the bootstrap without AWS_LAMBDA_RUNTIME_API: exit $rc, $(cat "$T/shentry.out" "$T/shentry.err")"
pass "the shell entrypoint runs the bootstrap (exit $rc without a Runtime API)"

left=$(find "$TMPDIR" -mindepth 1 -maxdepth 1 | head -3)
[ -z "$left" ] || die "kindling run left temporary files: $left"
