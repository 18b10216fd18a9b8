# An etcd cluster on 127.0.0.1 for tests and benchmarks (Debian's etcd-server,
# etcd 3.4).  Source this file, then:
#
#   base=$(etcd_pick_baseport 24100 24900 3)   # a base whose 6 ports are free
#   start_etcd_cluster WORKDIR BASEPORT [N=3]   # sets ETCD_ENDPOINTS, ETCD_PIDS
#   kill_etcd_member I                          # SIGKILL member I (0-based)
#   restart_etcd_member I                       # same data dir: it rejoins
#   wait_etcd_healthy [SECONDS=60]              # every member healthy
#   etcd_leader_index                           # prints the leader's I
#   stop_etcd_cluster                           # ends every member
#
# Member I listens for clients on BASEPORT+2I and for peers on BASEPORT+2I+1;
# its data directory is WORKDIR/etcd-I, its log WORKDIR/etcd-I.log.  The
# cluster's state is kept in WORKDIR (etcd.env, etcd-I.pid, etcd-I.args), so
# a program the test runs can kill and restart members through another shell
# that sourced this file, given ETCD_WORKDIR (exported by
# start_etcd_cluster).  stop_etcd_cluster ends every member any such shell
# started; call it from the test's exit trap.  Members inherit the test's
# environment (KINDLING_TEST_RUN), so scripts/test.sh notices one left running.
#
# Elections: a 100 ms heartbeat and a 1 s election timeout keep a leader
# change quick, and stay stable on a loaded two-core machine.  fsync stays
# on (etcd 3.4 has no switch for it, and tests should see real disk waits).

_etcd_die() {
  echo "etcd.sh: $*" >&2
  return 1
}

# etcd_pick_baseport LO HI [N=3]: the first even base in [LO, HI) whose 2N
# ports nothing on 127.0.0.1 listens on.  Keep the range below the kernel's
# ephemeral ports (32768 and up) so outgoing connections do not take them.
etcd_pick_baseport() {
  local lo=$1 hi=$2 n=${3:-3} base p busy
  for ((base = lo; base + 2 * n <= hi; base += 2 * n)); do
    busy=0
    for ((p = base; p < base + 2 * n; p++)); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        busy=1
        break
      fi
    done
    if [ "$busy" = 0 ]; then
      echo "$base"
      return 0
    fi
  done
  _etcd_die "no free range of $((2 * n)) ports in [$lo, $hi) on 127.0.0.1"
}

# Load the cluster's state from $ETCD_WORKDIR (set by start_etcd_cluster, or
# by the caller in another shell).
_etcd_load() {
  [ -n "${ETCD_WORKDIR:-}" ] && [ -f "$ETCD_WORKDIR/etcd.env" ] ||
    _etcd_die "no cluster: ETCD_WORKDIR (${ETCD_WORKDIR:-unset}) has no etcd.env; call start_etcd_cluster first" || return 1
  # shellcheck disable=SC1091
  . "$ETCD_WORKDIR/etcd.env"
}

_etcd_url() { echo "http://127.0.0.1:$((_ETCD_BASE + 2 * $1))"; }

_etcd_alive() { # _etcd_alive I: member I's recorded process is running
  local pid
  pid=$(cat "$ETCD_WORKDIR/etcd-$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    # not a zombie, and not a recycled PID: still etcd
    grep -q '^etcd' "/proc/$pid/comm" 2>/dev/null &&
    ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

_etcd_launch() { # _etcd_launch I: start member I from its recorded arguments
  local i=$1 args
  mapfile -t args <"$ETCD_WORKDIR/etcd-$i.args"
  # etcd reads ETCD_* variables as flags; keep ours from reaching it.
  env -u ETCD_ENDPOINTS -u ETCD_PIDS -u ETCD_WORKDIR etcd "${args[@]}" >>"$ETCD_WORKDIR/etcd-$i.log" 2>&1 &
  local pid=$! k
  echo "$pid" >"$ETCD_WORKDIR/etcd-$i.pid"
  # $! is the forked shell, which becomes env and then etcd; until it has,
  # _etcd_alive would take it for a dead member (a loaded machine once made
  # restart_etcd_member give up on a member that came up a moment later).
  for ((k = 0; k < 600; k++)); do
    grep -q '^etcd' "/proc/$pid/comm" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  # In a fleet etcd has machines of its own.  Here it shares two cores with
  # every agent, frontend, sandbox and load client, and starved of CPU its
  # leader misses heartbeats and the cluster holds elections, which clients
  # see as etcd gone.  A higher priority stands in for those machines.
  renice -n -10 -p "$pid" >/dev/null 2>&1 || true
}

_etcd_export() {
  local i urls=() pids=()
  for ((i = 0; i < _ETCD_N; i++)); do
    urls+=("$(_etcd_url "$i")")
    pids+=("$(cat "$ETCD_WORKDIR/etcd-$i.pid" 2>/dev/null || echo 0)")
  done
  ETCD_ENDPOINTS=$(IFS=,; echo "${urls[*]}")
  ETCD_PIDS=${pids[*]}
  export ETCD_ENDPOINTS ETCD_PIDS ETCD_WORKDIR
}

# wait_etcd_healthy [SECONDS=60]: wait until every member answers
# `etcdctl endpoint health`; fail (showing the logs' ends) after SECONDS.
wait_etcd_healthy() {
  local limit=${1:-60} i deadline
  _etcd_load || return 1
  _etcd_export
  deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    for ((i = 0; i < _ETCD_N; i++)); do
      _etcd_alive "$i" || {
        tail -n 20 "$ETCD_WORKDIR/etcd-$i.log" >&2
        _etcd_die "etcd member $i exited (log: $ETCD_WORKDIR/etcd-$i.log)"
        return 1
      }
    done
    if ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" --dial-timeout=2s --command-timeout=3s \
      endpoint health >"$ETCD_WORKDIR/health.out" 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  cat "$ETCD_WORKDIR/health.out" >&2
  for ((i = 0; i < _ETCD_N; i++)); do tail -n 5 "$ETCD_WORKDIR/etcd-$i.log" >&2; done
  _etcd_die "the etcd cluster in $ETCD_WORKDIR was not healthy after ${limit}s"
}

# start_etcd_cluster WORKDIR BASEPORT [N=3]: N members, a new cluster; waits
# (at most 60 s) until all are healthy.  Exports ETCD_ENDPOINTS
# ("http://127.0.0.1:P0,..."), ETCD_PIDS (space-separated) and ETCD_WORKDIR.
start_etcd_cluster() {
  local work=$1 base=$2 n=${3:-3} i p peers=() token
  command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
    _etcd_die "etcd or etcdctl is not installed (apt-get install etcd-server etcd-client; see scripts/apt-packages.txt)" || return 1
  [[ "$base" =~ ^[0-9]+$ ]] && ((base >= 1024 && base + 2 * n <= 65536)) ||
    _etcd_die "bad base port '$base' for $n members" || return 1
  [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 9)) || _etcd_die "bad member count '$n' (1 to 9)" || return 1
  for ((p = base; p < base + 2 * n; p++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      _etcd_die "port $p on 127.0.0.1 is already in use; pick another base (etcd_pick_baseport)"
      return 1
    fi
  done
  mkdir -p "$work" || return 1
  ETCD_WORKDIR=$(cd "$work" && pwd)
  token="kindling-$base-$$-$RANDOM"
  for ((i = 0; i < n; i++)); do peers+=("m$i=http://127.0.0.1:$((base + 2 * i + 1))"); done
  printf '_ETCD_BASE=%s\n_ETCD_N=%s\n' "$base" "$n" >"$ETCD_WORKDIR/etcd.env"
  _etcd_load || return 1
  for ((i = 0; i < n; i++)); do
    printf '%s\n' \
      --name "m$i" \
      --data-dir "$ETCD_WORKDIR/etcd-$i" \
      --listen-client-urls "$(_etcd_url "$i")" \
      --advertise-client-urls "$(_etcd_url "$i")" \
      --listen-peer-urls "http://127.0.0.1:$((base + 2 * i + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((base + 2 * i + 1))" \
      --initial-cluster "$(IFS=,; echo "${peers[*]}")" \
      --initial-cluster-token "$token" \
      --initial-cluster-state new \
      --heartbeat-interval 100 \
      --election-timeout 1000 \
      --logger zap \
      --log-outputs stderr \
      >"$ETCD_WORKDIR/etcd-$i.args"
    _etcd_launch "$i"
  done
  wait_etcd_healthy 60
}

# kill_etcd_member I: SIGKILL member I (a crash) and wait until it is gone.
kill_etcd_member() {
  local i=$1 pid k
  _etcd_load || return 1
  ((i >= 0 && i < _ETCD_N)) || _etcd_die "no member $i (the cluster has $_ETCD_N)" || return 1
  pid=$(cat "$ETCD_WORKDIR/etcd-$i.pid")
  if _etcd_alive "$i"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true # reaps it if this shell started it
  for ((k = 0; k < 200; k++)); do
    _etcd_alive "$i" || break
    sleep 0.05
  done
  ! _etcd_alive "$i" || _etcd_die "etcd member $i (pid $pid) did not exit after SIGKILL"
  # Its client port is free again once the process is gone.
  _etcd_export
}

# restart_etcd_member I: start member I again on its data directory (it
# rejoins the cluster with its identity); waits (at most 30 s) until its
# client port accepts connections.  A member alone cannot be healthy without
# a quorum: call wait_etcd_healthy once enough members are back.
restart_etcd_member() {
  local i=$1 k port
  _etcd_load || return 1
  ((i >= 0 && i < _ETCD_N)) || _etcd_die "no member $i (the cluster has $_ETCD_N)" || return 1
  ! _etcd_alive "$i" || _etcd_die "etcd member $i is still running; kill_etcd_member it first" || return 1
  _etcd_launch "$i"
  _etcd_export
  port=$((_ETCD_BASE + 2 * i))
  for ((k = 0; k < 300; k++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    _etcd_alive "$i" || break
    sleep 0.1
  done
  tail -n 20 "$ETCD_WORKDIR/etcd-$i.log" >&2
  _etcd_die "etcd member $i did not come back on 127.0.0.1:$port (log: $ETCD_WORKDIR/etcd-$i.log)"
}

# etcd_leader_index: print the index of the member that is the leader now
# (fails if none is).
etcd_leader_index() {
  local i out
  _etcd_load || return 1
  for ((i = 0; i < _ETCD_N; i++)); do
    _etcd_alive "$i" || continue
    out=$(ETCDCTL_API=3 etcdctl --endpoints="$(_etcd_url "$i")" --dial-timeout=2s --command-timeout=3s \
      endpoint status -w fields 2>/dev/null) || continue
    # "MemberID" : N and "Leader" : N: the leader is the member whose ID it names.
    if [ "$(sed -n 's/^"MemberID" : //p' <<<"$out")" = "$(sed -n 's/^"Leader" : //p' <<<"$out")" ]; then
      echo "$i"
      return 0
    fi
  done
  _etcd_die "no etcd member is the leader now"
}

# stop_etcd_cluster: end every member (SIGTERM, then SIGKILL after 10 s) and
# wait until all are gone.  Safe to call twice, or with no cluster.
stop_etcd_cluster() {
  local i k pid
  [ -n "${ETCD_WORKDIR:-}" ] && [ -f "$ETCD_WORKDIR/etcd.env" ] || return 0
  _etcd_load || return 0
  for ((i = 0; i < _ETCD_N; i++)); do
    _etcd_alive "$i" && kill -TERM "$(cat "$ETCD_WORKDIR/etcd-$i.pid")" 2>/dev/null
  done
  for ((k = 0; k < 100; k++)); do
    local up=0
    for ((i = 0; i < _ETCD_N; i++)); do _etcd_alive "$i" && up=1; done
    [ "$up" = 0 ] && break
    sleep 0.1
  done
  for ((i = 0; i < _ETCD_N; i++)); do
    pid=$(cat "$ETCD_WORKDIR/etcd-$i.pid" 2>/dev/null) || continue
    _etcd_alive "$i" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
  for ((k = 0; k < 100; k++)); do
    local up=0
    for ((i = 0; i < _ETCD_N; i++)); do _etcd_alive "$i" && up=1; done
    [ "$up" = 0 ] && break
    sleep 0.05
  done
  return 0
}
