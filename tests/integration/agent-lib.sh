# Shared by the tests of `kindling agent` (79-agent-remote.sh,
# 80-agent-etcd.sh); source it after lib.sh.  It checks the tools, builds
# and imports the test images (RT: the shell custom runtime, PY: the plain
# Python image), picks the agent's port and gives start_agent and expect.
KINDLING=$KINDLING_BUILD_DIR/kindling
TOOL=$KINDLING_BUILD_DIR/agent_call
[ -x "$KINDLING" ] && [ -x "$TOOL" ] || die "kindling or agent_call not built in $KINDLING_BUILD_DIR"
for tool in jq umoci curl python3 "$@"; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

"$KINDLING_SOURCE_DIR/tests/images/make-hostagent-images.sh" "$T/images" >/dev/null ||
  die "building the test images failed"
RT=$("$CHUNKIFY" --json import "oci:$T/images/shell-runtime:1" --name shell-runtime:1 | jq -r .manifest)
PY=$("$CHUNKIFY" --json import "oci:$T/images/py-stdio:1" --name py-stdio:1 | jq -r .manifest)
[ ${#RT} = 64 ] && [ ${#PY} = 64 ] || die "import failed"

PORT=$(free_port)
URL=http://127.0.0.1:$PORT
MNT=$KINDLING_HOME/agent/mnt
AGENT=

# start_agent [OPTION...]: `kindling agent` on $URL in the background
# ($AGENT), its output in $T/agent.out and .err; waits (bounded) for /healthz.
start_agent() {
  "$KINDLING" agent --listen "127.0.0.1:$PORT" --home "$KINDLING_HOME" --isolation process --memory-budget 1G "$@" \
    >>"$T/agent.out" 2>>"$T/agent.err" &
  AGENT=$!
  track_pid $AGENT
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf "$URL/healthz" >/dev/null 2>&1 && return 0
    kill -0 $AGENT 2>/dev/null || { cat "$T/agent.err" >&2; die "kindling agent exited at start"; }
    sleep 0.2
  done
  die "kindling agent does not answer /healthz on $URL"
}

# expect JSON FILTER WHAT: the JSON satisfies the jq FILTER, else fail.
expect() { echo "$1" | jq -e "$2" >/dev/null || { echo "$1" >&2; tail -20 "$T/agent.err" >&2; die "$3"; }; }
