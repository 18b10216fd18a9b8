#!/usr/bin/env bash
# The main job on the embedded defaults: build a demo image from local files,
# import it into the default file store, import a second version that shares
# its base layers and show what deduplicated, then run it with `kindling run`:
# cold (an empty L1 cache: chunks come from the store as Python touches them)
# and again warm (from L1), printing the time to first output of each; last,
# serve it as a Lambda function with `kindling serve` and invoke it with the
# AWS CLI, cold and then warm.
# Running needs root (the process sandbox mounts the image and makes namespaces).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh" "$top/build"
chunkify=$top/build/chunkify
kindling=$top/build/kindling
export KINDLING_HOME=${KINDLING_HOME:-$HOME/.kindling}

work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "== building a demo OCI image from this machine's files (umoci)"
umoci init --layout demo >/dev/null
umoci new --image demo:v1
umoci unpack --image demo:v1 bundle >/dev/null
# Layer 1: the python3 interpreter, its loader and shared libraries.  Layer 2:
# the Python standard library.  Layer 3: time zone data.  Layer 4: the app.
"$top/scripts/python-rootfs.sh" bundle/rootfs
umoci repack --refresh-bundle --image demo:v1 bundle
mkdir -p bundle/rootfs/usr/lib
cp -a /usr/lib/python3.11 bundle/rootfs/usr/lib/
umoci repack --refresh-bundle --image demo:v1 bundle
mkdir -p bundle/rootfs/usr/share
cp -a /usr/share/zoneinfo bundle/rootfs/usr/share/
umoci repack --refresh-bundle --image demo:v1 bundle
mkdir -p bundle/rootfs/app
printf 'import json, zoneinfo\nprint(json.dumps({"hello": "from kindling"}))\n' > bundle/rootfs/app/handler.py
umoci repack --refresh-bundle --image demo:v1 bundle
umoci config --image demo:v1 --config.entrypoint python3 --config.cmd /app/handler.py \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.workingdir /app

# Version 2: the same base layers plus a changed app layer.
umoci tag --image demo:v1 v2
printf 'import json, zoneinfo\nprint(json.dumps({"hello": "from kindling", "version": 2}))\n' > bundle/rootfs/app/handler.py
echo "extra" > bundle/rootfs/app/extra.txt
umoci repack --refresh-bundle --image demo:v2 bundle
umoci config --image demo:v2 --config.entrypoint python3 --config.cmd /app/handler.py \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.workingdir /app

echo
echo "== chunkify import oci:demo:v1  (store: $KINDLING_HOME/store)"
"$chunkify" import "oci:$work/demo:v1" --name demo:v1
echo
echo "== chunkify import oci:demo:v2  (shares the base layers with v1)"
"$chunkify" import "oci:$work/demo:v2" --name demo:v2
echo
echo "== chunkify ls"
"$chunkify" ls
echo
echo "== chunkify verify demo:v2"
"$chunkify" verify demo:v2
"$chunkify" export demo:v2 "$work/demo-v2.erofs"
if command -v fsck.erofs >/dev/null; then
  fsck.erofs "$work/demo-v2.erofs" >/dev/null && echo "fsck.erofs: the exported image is a valid EROFS filesystem"
fi

echo
if [ "$(id -u)" != 0 ]; then
  echo "== kindling run needs root (the process sandbox mounts the image); skipping the runs"
  exit 0
fi
# A fresh L1 directory makes the first run cold; the second run finds its chunks there.
echo "== kindling run demo:v2  (cold: empty L1, chunks fetched from the store as they are read)"
"$kindling" run demo:v2 --l1-dir "$work/l1"
echo
echo "== kindling run demo:v2  (warm: the same L1)"
"$kindling" run demo:v2 --l1-dir "$work/l1"

# The service: the same image as a Lambda function, invoked with the AWS CLI.
# demo:v2 is a plain program (not a Lambda runtime), so the function picks
# stdio mode: the event goes to its stdin and its stdout is the answer.
echo
port=${KINDLING_DEMO_PORT:-9000}
echo "== kindling serve on 127.0.0.1:$port, then aws lambda create-function + invoke"
"$kindling" serve --listen "127.0.0.1:$port" --state-dir "$work/serve" >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
  grep -q "Lambda API on http://127.0.0.1:$port" "$work/serve.out" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.err" >&2; echo "demo: kindling serve did not start" >&2; exit 1; }
  sleep 0.1
done
lam() {
  AWS_SHARED_CREDENTIALS_FILE="$KINDLING_HOME/credentials" AWS_PROFILE=kindling \
    /usr/bin/aws --endpoint-url "http://127.0.0.1:$port" --region us-east-1 --cli-binary-format raw-in-base64-out \
    --output json lambda "$@"
}
lam create-function --function-name demo --package-type Image --code ImageUri=demo:v2 \
  --role arn:aws:iam::000000000000:role/demo --environment 'Variables={KINDLING_INVOKE_MODE=stdio}' \
  --query '{FunctionName: FunctionName, State: State}'
lam wait function-active-v2 --function-name demo
echo "aws lambda invoke --function-name demo (cold, then warm):"
lam invoke --function-name demo --payload '{"from": "the demo"}' "$work/out1.json" --query StatusCode >/dev/null
cat "$work/out1.json"
lam invoke --function-name demo --payload '{"from": "the demo"}' "$work/out2.json" --query StatusCode >/dev/null
cat "$work/out2.json"
kill "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
