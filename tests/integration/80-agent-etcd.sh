#!/bin/bash
# `kindling agent --etcd` against a real three-member etcd (Debian's
# etcd-server, tests/tools/etcd.sh): its registration kindling/hosts/HOST
#   - appears with the fields placement/README.md lists, then shows the
#     warm sandbox of a function that ran and the chunks its L1 holds;
#   - goes when the lease does: after SIGKILL within the TTL (bounded wait),
#     after SIGTERM at once (the lease is revoked before the agent exits);
#   - comes back by itself when its lease is revoked from outside, and when
#     every etcd member was killed and restarted, while the agent kept
#     serving invocations during the outage.
# Missing tools are a failure, not a skip.
# ctest-labels: no-tsan (fork-heavy sandboxes and etcd; the client and server run under TSan in the unit tests)
. "$(dirname "$0")/lib.sh"
. "$KINDLING_SOURCE_DIR/tests/tools/etcd.sh"
# The agent first (SIGTERM: it revokes its lease while etcd still answers),
# then etcd, then lib.sh's cleanup with the test's exit status.
trap '_rc=$?; set +e; [ -z "$AGENT" ] || { kill "$AGENT"; wait "$AGENT"; } 2>/dev/null; stop_etcd_cluster >/dev/null 2>&1; (exit $_rc); _cleanup' EXIT
AGENT=
. "$(dirname "$0")/agent-lib.sh" etcd etcdctl

base=$(etcd_pick_baseport 25300 25700 3)
start_etcd_cluster "$T/etcd" "$base"
pass "etcd cluster on $ETCD_ENDPOINTS"

KEY=kindling/hosts/h80
agent() { start_agent --etcd "$ETCD_ENDPOINTS" --host-id h80 --cell cell-8; }
host() { etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout=3s get "$KEY" --print-value-only 2>/dev/null || true; }
# wait_host FILTER SECONDS WHAT: until the registration satisfies the jq FILTER.
wait_host() {
  local i v
  for ((i = 0; i < $2 * 5; i++)); do
    v=$(host)
    [ -n "$v" ] && echo "$v" | jq -e "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "registration: $(host)" >&2
  tail -20 "$T/agent.err" >&2
  die "$3"
}
# The lease id from the fields output: 64 bits, which jq would round.
lease_of() { etcdctl --endpoints "$ETCD_ENDPOINTS" get "$KEY" -w fields 2>/dev/null | sed -n 's/^"Lease" : //p'; }
wait_gone() {
  local i
  for ((i = 0; i < $1 * 5; i++)); do
    [ -z "$(host)" ] && return 0
    sleep 0.2
  done
  local l
  l=$(lease_of)
  echo "still there: $(host)" >&2
  [ -z "$l" ] || etcdctl --endpoints "$ETCD_ENDPOINTS" lease timetolive "$(printf %x "$l")" >&2 || true
  ps -ef | grep -v grep | grep "kindling agent" >&2 || true
  die "$2"
}
FN='{"name":"echo","version":"$LATEST","image":"'$RT'","revision":"r1","memory_mb":128,"timeout_s":10}'

# ---- the registration and its fields -----------------------------------------------------------------------------------
agent
wait_host '.id == "h80"' 30 "the host never registered"
wait_host ".id == \"h80\" and .url == \"$URL\" and .cell == \"cell-8\" and .memory_total_mb == 1024 and
  .memory_used_mb == 0 and .slots_total == 8 and .slots_used == 0 and .warm == [] and
  (.l1 | test(\"^[0-9]+:[0-9]+:[0-9]+:[A-Za-z0-9+/=]+$\")) and (.l1_bytes | type == \"number\") and
  .started > 1700000000 and .updated >= .started and .isolation == \"process\" and .snapshot == false" 10 \
  "the registration's fields"
pass "registered with the documented fields"

out=$("$TOOL" "$URL" invoke "$FN" --id reg-1 --payload '{"n":1}')
echo "$out" | jq -e '.outcome == "ok"' >/dev/null || die "an invocation failed: $out"
wait_host '.warm | length == 1 and .[0].function == "echo" and .[0].version == "$LATEST" and .[0].revision == "r1" and
  .[0].image == "'$RT'" and .[0].idle == 1 and .[0].busy == 0 and .[0].provisioned == 0' 30 "the warm sandbox is not listed"
wait_host '.memory_used_mb == 128 and .slots_used == 1' 10 "the memory and slots in use"
wait_host '(.l1 | split(":")[2] | tonumber) > 0 and .l1_bytes > 0' 60 "the L1 summary never showed the image's chunks"
pass "warm sandboxes and the L1 summary published"

# ---- the lease revoked from outside: the agent registers again -----------------------------------------------------------
lease=$(lease_of)
[ -n "$lease" ] && [ "$lease" != 0 ] || die "the registration has no lease"
etcdctl --endpoints "$ETCD_ENDPOINTS" lease revoke "$(printf %x "$lease")" >/dev/null
wait_host '.id == "h80"' 30 "the host did not register again after its lease was revoked"
lease2=$(lease_of)
[ "$lease2" != "$lease" ] || die "the registration kept a revoked lease"
ttl=$(etcdctl --endpoints "$ETCD_ENDPOINTS" lease timetolive "$(printf %x "$lease2")")
case "$ttl" in *"granted with TTL(5s)"*) ;; *) die "the lease is not of 5 s: $ttl" ;; esac
pass "a lost lease is replaced by itself (TTL 5 s)"

# ---- every etcd member restarted: the agent keeps serving, then registers again ---------------------------------------
for i in 0 1 2; do kill_etcd_member $i; done
out=$("$TOOL" "$URL" invoke "$FN" --id during-outage --warm-only --payload '{"n":2}')
echo "$out" | jq -e '.outcome == "ok" and .cold == false' >/dev/null || die "an invocation failed while etcd was down: $out"
sleep 2
for i in 0 1 2; do restart_etcd_member $i; done
wait_etcd_healthy 60
wait_host '.id == "h80"' 60 "the host did not register again after etcd came back"
grep -q "registration of host h80" "$T/agent.err" || die "the outage was not logged"
pass "etcd down: invocations go on; etcd back: registered again"

# ---- SIGKILL: gone within the TTL; SIGTERM: gone at once -------------------------------------------------------------------
kill -9 $AGENT
wait $AGENT 2>/dev/null || true
umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
wait_gone 30 "the registration outlived a killed agent"
pass "SIGKILL: the registration expired with the lease"

agent
wait_host '.id == "h80"' 30 "the host did not register after a restart"
kill -TERM $AGENT
rc=0
wait $AGENT || rc=$?
[ $rc = 0 ] || die "kindling agent exited $rc on SIGTERM"
[ -z "$(host)" ] || die "the registration is still there after SIGTERM (the lease was not revoked)"
pass "SIGTERM: the registration is gone at once"
