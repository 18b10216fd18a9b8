#!/bin/bash
# Build the OCI image layouts the host agent's integration test imports.
#
#   tests/images/make-hostagent-images.sh DEST
#
# Each image is its own OCI layout with the single tag "1":
#   DEST/shell-runtime  a Lambda custom runtime in sh, as in AWS's
#                       custom-runtime tutorial: busybox-static for the shell
#                       and this machine's curl (with the libraries ldd finds)
#                       for the Runtime API.  Its bootstrap loops on
#                       /runtime/invocation/next and answers each event by
#                       what the event asks for (see the script below); a
#                       counter in the runtime's state shows warm reuse.
#                       INIT_MODE=error|exit|hang in the function's
#                       environment makes its init fail in those ways.
#   DEST/py-stdio       a plain image in the style of scripts/demo.sh (this
#                       machine's python3 and standard library, an app
#                       layer): reads the event on stdin, prints the answer,
#                       or exits 2 with a message on stderr when the event
#                       has "fail".
# Built with umoci from this machine's files, like scripts/demo.sh.
set -euo pipefail
DEST=${1:?usage: make-hostagent-images.sh DEST}
top=$(cd "$(dirname "$0")/../.." && pwd)
for tool in umoci ldd; do
  command -v "$tool" >/dev/null || { echo "make-hostagent-images.sh: $tool is missing" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "make-hostagent-images.sh: /bin/busybox is missing (Debian package busybox-static)" >&2; exit 1; }
[ -x /usr/bin/curl ] || { echo "make-hostagent-images.sh: /usr/bin/curl is missing (Debian package curl)" >&2; exit 1; }
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/make-hostagent-images.XXXXXX")
trap 'rm -rf "$W"' EXIT

# ---- shell-runtime -------------------------------------------------------------------------------------------------
L=$DEST/shell-runtime
rm -rf "$L"
umoci init --layout "$L" >/dev/null
umoci new --image "$L:1"
umoci unpack --image "$L:1" "$W/rt" >/dev/null
R=$W/rt/rootfs
mkdir -p "$R"/{bin,etc,tmp,lib64,usr/bin,usr/lib/x86_64-linux-gnu,var/runtime,var/task}
chmod 1777 "$R/tmp"
[ -e "$R/lib" ] || ln -s usr/lib "$R/lib"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
cp -L /usr/bin/curl "$R/usr/bin/curl"
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
ldd /usr/bin/curl | awk '/=> \// { print $3 }' | sort -u | while read -r lib; do
  cp -L "$lib" "$R/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
cat >"$R/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
# A Lambda custom runtime in sh.  Events are small JSON objects; the first
# key that matches decides:
#   "error"  post an error        "sleep":N  sleep N s, then answer
#   "exit"   exit 7               "oom"      grow past any small memory limit
#   "big"    answer 7 MB          "print"    print a line, then answer
# Otherwise answer with the counter and what the environment says.
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
echo "init: handler $_HANDLER, function $AWS_LAMBDA_FUNCTION_NAME"
case "$INIT_MODE" in
  error)
    curl -sS -X POST "$API/init/error" -H "Lambda-Runtime-Function-Error-Type: Runtime.InitTest" \
      -d '{"errorMessage":"init failed on purpose","errorType":"Runtime.InitTest"}' >/dev/null
    exit 1 ;;
  exit) echo "exiting during init" >&2; exit 3 ;;
  hang) exec sleep 100000 ;;
esac
count=0
header() { sed -n "s/^$1: *//Ip" /tmp/headers | tr -d '\r'; }
respond() {
  curl -sS -X POST "$API/invocation/$ID/response" -d "{\"count\":$count,\"event\":$EVENT,\"handler\":\"$_HANDLER\",\"fn\":\"$AWS_LAMBDA_FUNCTION_NAME\",\"version\":\"$AWS_LAMBDA_FUNCTION_VERSION\",\"memory\":\"$AWS_LAMBDA_FUNCTION_MEMORY_SIZE\",\"region\":\"$AWS_REGION\",\"tz\":\"$TZ\",\"rev\":\"$REV\",\"deadline\":$DEADLINE,\"arn\":\"$ARN\",\"trace\":\"$TRACE\",\"stream\":\"$AWS_LAMBDA_LOG_STREAM_NAME\",\"init_type\":\"$AWS_LAMBDA_INITIALIZATION_TYPE\",\"exec_env\":\"$AWS_EXECUTION_ENV\",\"task_root\":\"$LAMBDA_TASK_ROOT\"}" >/dev/null
}
while true; do
  EVENT=$(curl -sS -D /tmp/headers "$API/invocation/next") || exit 4
  ID=$(header Lambda-Runtime-Aws-Request-Id)
  DEADLINE=$(header Lambda-Runtime-Deadline-Ms)
  ARN=$(header Lambda-Runtime-Invoked-Function-Arn)
  TRACE=$(header Lambda-Runtime-Trace-Id)
  count=$((count + 1))
  case "$EVENT" in
    *'"error"'*)
      curl -sS -X POST "$API/invocation/$ID/error" -H "Lambda-Runtime-Function-Error-Type: Function.TestError" \
        -d '{"errorMessage":"handler failed on purpose","errorType":"TestError"}' >/dev/null ;;
    *'"sleep"'*)
      sleep "$(echo "$EVENT" | sed 's/.*"sleep": *\([0-9]*\).*/\1/')"
      respond ;;
    *'"exit"'*) echo "exiting on purpose" >&2; exit 7 ;;
    *'"oom"'*) x=$(head -c 1000000000 /dev/zero | tr '\0' a); echo "${#x}"; respond ;;
    *'"big"'*)
      head -c 7000000 /dev/zero | tr '\0' a >/tmp/big
      curl -sS -X POST "$API/invocation/$ID/response" --data-binary @/tmp/big >/dev/null ;;
    *'"print"'*) echo "printed by $ID"; respond ;;
    *) respond ;;
  esac
done
EOF
chmod 755 "$R/var/runtime/bootstrap"
umoci repack --refresh-bundle --image "$L:1" "$W/rt" >/dev/null
umoci config --image "$L:1" --config.entrypoint /var/runtime/bootstrap --config.cmd handler.echo \
  --config.workingdir /var/task --config.env PATH=/usr/bin:/bin >/dev/null

# ---- py-stdio ----------------------------------------------------------------------------------------------------------
L=$DEST/py-stdio
rm -rf "$L"
umoci init --layout "$L" >/dev/null
umoci new --image "$L:1"
umoci unpack --image "$L:1" "$W/py" >/dev/null
"$top/scripts/python-rootfs.sh" "$W/py/rootfs"
umoci repack --refresh-bundle --image "$L:1" "$W/py" >/dev/null
mkdir -p "$W/py/rootfs/usr/lib"
cp -a /usr/lib/python3.11 "$W/py/rootfs/usr/lib/"
umoci repack --refresh-bundle --image "$L:1" "$W/py" >/dev/null
mkdir -p "$W/py/rootfs/app"
cat >"$W/py/rootfs/app/handler.py" <<'EOF'
import json, sys
event = json.load(sys.stdin)
print("handling", json.dumps(event), file=sys.stderr)
if event.get("fail"):
    print("something went wrong: " + event["fail"], file=sys.stderr)
    sys.exit(2)
print(json.dumps({"hello": event.get("name", "world"), "from": "stdio"}))
EOF
umoci repack --refresh-bundle --image "$L:1" "$W/py" >/dev/null
umoci config --image "$L:1" --config.entrypoint python3 --config.cmd /app/handler.py \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.workingdir /app >/dev/null
