# A whole kindling fleet on loopback, for tests and benchmarks.  Source it
# after tests/integration/lib.sh (for track_pid, die, free_port) or define
# those yourself:
#
#   . tests/tools/fleet.sh
#   start_fleet WORKDIR [AGENTS=4] [FRONTENDS=2]
#
# starts a three-member etcd cluster (tests/tools/etcd.sh), one placement
# service, AGENTS host agents and FRONTENDS frontends (`kindling serve
# --etcd`), every process with its own home, L1 and mount under WORKDIR, all
# sharing one file store (WORKDIR/store, as a shared origin would be) and one
# tenant key and salt (copied from $KINDLING_HOME, which the caller has set).
# It sets:
#   ETCD_ENDPOINTS      the members' client URLs, comma-separated
#   PLACEMENT_URL       http://127.0.0.1:PORT
#   AGENT_URL[i], AGENT_PID[i], AGENT_HOME[i]   i = 0 .. AGENTS-1, host ids h0, h1, ...
#   FE_PORT[i], FE_PID[i]                       i = 0 .. FRONTENDS-1
#   FLEET_STORE         the store's directory
#   FLEET_CREDS         the credentials file every frontend checks (profile "kindling")
# and waits (bounded) until every agent is registered in etcd.
#
# kill_agent I / start_agent I, kill_frontend I / start_frontend I,
# kill_placement / start_placement, and etcd.sh's kill_etcd_member /
# restart_etcd_member inject the faults; stop_fleet ends everything (SIGTERM,
# then SIGKILL after a bounded wait).
#
# KINDLING must name the kindling binary.  FLEET_AGENT_ARGS and
# FLEET_SERVE_ARGS add options to every agent and frontend.

. "$(dirname "${BASH_SOURCE[0]}")/etcd.sh"

_fleet_wait_http() { # URL SECONDS WHAT
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  die "$3 did not answer $1 within $2 s"
}

start_placement() {
  "$KINDLING" placement --etcd "$ETCD_ENDPOINTS" --listen "127.0.0.1:$PLACEMENT_PORT" \
    >>"$FLEET_DIR/placement.out" 2>>"$FLEET_DIR/placement.err" &
  PLACEMENT_PID=$!
  track_pid $PLACEMENT_PID
  _fleet_wait_http "$PLACEMENT_URL/healthz" 60 "kindling placement"
}

kill_placement() {
  kill -9 "$PLACEMENT_PID" 2>/dev/null
  wait "$PLACEMENT_PID" 2>/dev/null || true
}

start_agent() { # I
  local i=$1 home=$FLEET_DIR/agent$1
  mkdir -p "$home"
  cp "$KINDLING_HOME/salt" "$KINDLING_HOME/tenant.key" "$home/" 2>/dev/null || true
  AGENT_HOME[$i]=$home
  "$KINDLING" agent --listen "127.0.0.1:${AGENT_PORT[$i]}" --home "$home" --etcd "$ETCD_ENDPOINTS" \
    --host-id "h$i" --cell cell-0 --store "$FLEET_STORE" --isolation process ${FLEET_AGENT_ARGS:-} \
    >>"$home/agent.out" 2>>"$home/agent.err" &
  AGENT_PID[$i]=$!
  track_pid "${AGENT_PID[$i]}"
  _fleet_wait_http "${AGENT_URL[$i]}/healthz" 60 "kindling agent h$i"
}

kill_agent() { # I
  kill -9 "${AGENT_PID[$1]}" 2>/dev/null
  wait "${AGENT_PID[$1]}" 2>/dev/null || true
  # Its FUSE mount outlives a SIGKILL; the next start mounts afresh.
  local m
  for m in $(awk -v h="${AGENT_HOME[$1]}" '$2 ~ "^"h {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

start_frontend() { # I
  local i=$1
  mkdir -p "$FLEET_DIR/fe$i"
  "$KINDLING" serve --listen "127.0.0.1:${FE_PORT[$i]}" --etcd "$ETCD_ENDPOINTS" --placement "$PLACEMENT_URL" \
    --state-dir "$FLEET_DIR/fe$i" --credentials "$FLEET_CREDS" --store "$FLEET_STORE" ${FLEET_SERVE_ARGS:-} \
    >>"$FLEET_DIR/fe$i/serve.out" 2>>"$FLEET_DIR/fe$i/serve.err" &
  FE_PID[$i]=$!
  track_pid "${FE_PID[$i]}"
  local n
  for ((n = 0; n < 600; n++)); do
    grep -q "Lambda API on http://127.0.0.1:${FE_PORT[$i]}" "$FLEET_DIR/fe$i/serve.out" 2>/dev/null && return 0
    kill -0 "${FE_PID[$i]}" 2>/dev/null || { tail -20 "$FLEET_DIR/fe$i/serve.err" >&2; die "frontend $i exited at start"; }
    sleep 0.1
  done
  die "frontend $i did not start in 60 s"
}

kill_frontend() { # I
  kill -9 "${FE_PID[$1]}" 2>/dev/null
  wait "${FE_PID[$1]}" 2>/dev/null || true
}

# fleet_hosts: the host ids registered in etcd now, sorted, space-separated.
fleet_hosts() {
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout=3s get --prefix --keys-only kindling/hosts/ 2>/dev/null |
    sed -n 's|^kindling/hosts/||p' | sort | tr '\n' ' ' | sed 's/ $//'
}

# wait_hosts "h0 h1 ..." SECONDS: until exactly those hosts are registered.
wait_hosts() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [ "$(fleet_hosts)" = "$1" ] && return 0
    sleep 0.2
  done
  die "the registered hosts are '$(fleet_hosts)', not '$1', after $2 s"
}

start_fleet() { # WORKDIR [AGENTS] [FRONTENDS]
  FLEET_DIR=$1
  FLEET_AGENTS=${2:-4}
  FLEET_FRONTENDS=${3:-2}
  FLEET_STORE=$FLEET_DIR/store
  mkdir -p "$FLEET_DIR" "$FLEET_STORE"
  # The tenant key and salt every process shares: made once here.
  "$KINDLING" --version >/dev/null 2>&1 || true
  [ -f "$KINDLING_HOME/salt" ] && [ -f "$KINDLING_HOME/tenant.key" ] ||
    die "start_fleet: \$KINDLING_HOME ($KINDLING_HOME) has no salt and tenant.key (import an image first)"
  local base
  base=$(etcd_pick_baseport 26100 26900 3)
  start_etcd_cluster "$FLEET_DIR/etcd" "$base" 3
  PLACEMENT_PORT=$(free_port)
  PLACEMENT_URL=http://127.0.0.1:$PLACEMENT_PORT
  start_placement
  local i ids=""
  for ((i = 0; i < FLEET_AGENTS; i++)); do
    AGENT_PORT[$i]=$(free_port)
    AGENT_URL[$i]=http://127.0.0.1:${AGENT_PORT[$i]}
    start_agent $i
    ids="$ids h$i"
  done
  wait_hosts "$(echo $ids | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')" 60
  FLEET_CREDS=$FLEET_DIR/credentials
  local id secret
  id=AKIA$(head -c 12 /dev/urandom | base32 | tr -dc 'A-Z2-7' | head -c 16)
  secret=$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)
  printf '[kindling]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$id" "$secret" >"$FLEET_CREDS"
  chmod 600 "$FLEET_CREDS"
  for ((i = 0; i < FLEET_FRONTENDS; i++)); do
    FE_PORT[$i]=$(free_port)
    start_frontend $i
  done
}

stop_fleet() {
  local p i
  local all=("${FE_PID[@]}" "${PLACEMENT_PID:-}" "${AGENT_PID[@]}")
  for p in "${all[@]}"; do
    [ -z "$p" ] || kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${all[@]}"; do
    [ -n "$p" ] || continue
    for ((i = 0; i < 300; i++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ -z "${ETCD_WORKDIR:-}" ] || stop_etcd_cluster || true
  # An agent that had to be killed leaves its FUSE mount behind.
  local m
  for m in $(awk -v d="${FLEET_DIR:-/nonexistent}/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  return 0
}
