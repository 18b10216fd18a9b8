# The handler of kindling's shell Lambda test image (_HANDLER=function.handler),
# sourced by bootstrap.  It speaks the same event protocol as the Node.js
# image's index.js (tests/images/README.md), with sh and busybox:
#   every answer   {"echo": EVENT, "count": N, "pid": PID, "version": "1"}
#                  N counts this runtime's invocations (a global variable:
#                  warm invocations see it grow), PID is the bootstrap's pid
#   "stdout":"T"   T on the runtime's stdout      "stderr":"T"  T on stderr
#   "alloc_mb":N   N MiB held in an awk string while the answer is made
#   "sleep_ms":N   waits N ms                     "exit":CODE   the runtime exits
#   "fail":"M"     returns 1 with M: bootstrap posts it to /error (HandlerError)
#   "env":true     adds "env" with the standard Lambda variables
#   "context":true adds "context": request id, deadline, function ARN
# Fields are found with sed, so string values must not contain quotes.

COUNT=0
VERSION=$(cat "${LAMBDA_TASK_ROOT:-/var/task}/version.txt")

# jstr TEXT: TEXT as a JSON string (quotes and backslashes escaped, control
# characters as spaces).
jstr() {
  printf '"%s"' "$(printf '%s' "$1" | tr '\n\r\t' '   ' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# field EVENT NAME: set FIELD to the value of "NAME": "..." or "NAME":
# number|true in EVENT, or to "" when EVENT has no "NAME" (which costs no
# process, so a plain echo runs no program at all).
field() {
  FIELD=
  case $1 in *"\"$2\""*) ;; *) return 0 ;; esac
  FIELD=$(printf '%s' "$1" | tr '\n' ' ' |
    sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\(\"[^\"]*\"\|[0-9][0-9]*\|true\).*/\1/p" | sed 's/^"\(.*\)"$/\1/')
}

handler() {
  COUNT=$((COUNT + 1))
  event=${1:-null}
  extra=
  field "$event" stdout; [ -z "$FIELD" ] || echo "$FIELD" >&3
  field "$event" stderr; [ -z "$FIELD" ] || echo "$FIELD" >&2
  field "$event" alloc_mb
  if [ -n "$FIELD" ]; then
    FIELD=$(awk -v mb="$FIELD" 'BEGIN { s = "x"; while (length(s) < mb * 1048576) s = s s
      s = substr(s, 1, mb * 1048576); print length(s) / 1048576 }')
    extra="$extra,\"allocated_mb\":$FIELD"
  fi
  field "$event" sleep_ms
  [ -z "$FIELD" ] || sleep "$(awk -v ms="$FIELD" 'BEGIN { printf "%.3f", ms / 1000 }')"
  field "$event" exit
  [ -z "$FIELD" ] || exit "$FIELD"
  field "$event" fail
  if [ -n "$FIELD" ]; then
    printf '%s' "$FIELD"
    return 1
  fi
  field "$event" env
  if [ "$FIELD" = true ]; then
    extra="$extra,\"env\":{"
    sep=
    for name in AWS_LAMBDA_FUNCTION_NAME AWS_LAMBDA_FUNCTION_VERSION AWS_LAMBDA_FUNCTION_MEMORY_SIZE \
      AWS_LAMBDA_LOG_GROUP_NAME AWS_LAMBDA_LOG_STREAM_NAME AWS_LAMBDA_RUNTIME_API AWS_REGION \
      AWS_DEFAULT_REGION AWS_ACCESS_KEY_ID AWS_SESSION_TOKEN _HANDLER LAMBDA_TASK_ROOT \
      LAMBDA_RUNTIME_DIR TZ LANG PATH TEST_VAR; do
      isset='' val=''
      eval "isset=\${$name+x} val=\${$name-}"
      [ -n "$isset" ] || continue
      extra="$extra$sep\"$name\":$(jstr "$val")"
      sep=,
    done
    extra="$extra}"
  fi
  field "$event" context
  if [ "$FIELD" = true ]; then
    extra="$extra,\"context\":{\"awsRequestId\":$(jstr "$REQUEST_ID"),\"deadlineMs\":$(jstr "$DEADLINE_MS"),\"invokedFunctionArn\":$(jstr "$FUNCTION_ARN")}"
  fi
  printf '{"echo":%s,"count":%d,"pid":%d,"version":"%s"%s}' "$event" "$COUNT" "$$" "$VERSION" "$extra"
}
