#!/bin/bash
# Lambda SnapStart in the invoke service, under real KVM: inside a TCG guest
# with a working /dev/kvm (tests/nested/run.sh), `kindling serve --isolation
# microvm --no-auth` runs a Runtime API function (a custom runtime in sh with
# curl, built here) whose init draws a random token and computes a sum, and
# whose every answer holds a deterministic result, the token, a fresh random
# value and /run/kindling/restore:
#  - CreateFunction with SnapStart ApplyOn PublishedVersions; $LATEST boots
#    (OptimizationStatus Off, generation none);
#  - PublishVersion answers Pending (StateReasonCode Creating); the version
#    becomes Active with OptimizationStatus On, and its snapshot is in the
#    store (`chunkify ls` lists snapstart-snapfn:1 as a snapshot);
#  - two cold starts of version 1 (the agent's idle timeout ends the first
#    sandbox between them) restore from the snapshot: the same result as
#    $LATEST, the same token (one init, the snapshot's), generation 1,
#    fresh values that differ, AWS_LAMBDA_INITIALIZATION_TYPE snap-start;
#    the function's log has RESTORE_START and RESTORE_REPORT lines, and their
#    REPORT lines Restore Duration where $LATEST's has Init Duration;
#  - provisioned concurrency on version 1 restores its sandbox before any
#    invocation, and it answers the same;
#  - DeleteFunction removes the snapshot's ref, and no snapshot directory
#    or kvmm is left;
#  - the same on a remote agent: `kindling agent --isolation microvm` and
#    `kindling serve --agent URL` (no agent of its own): SnapStart is
#    accepted (the agent's GET /v1/info says it can snapshot), PublishVersion
#    is Pending, the agent takes the snapshot (POST /v1/snapshot) and the
#    version becomes Active with its snapshot in the shared store; a cold
#    start of the version on the agent restores it (the function record the
#    agent gets names the snapshot), with RESTORE_START/RESTORE_REPORT in
#    the agent's log of the function;
#  - the same in a fleet: a one-member etcd (Debian's etcd-server), `kindling
#    placement`, two `kindling agent --etcd` (hm with micro-VMs, hp with
#    process sandboxes, so the snapshot's placement has a host to exclude)
#    and `kindling serve --etcd`: the snapshot is taken on hm, the version
#    becomes Active, and its cold start restores on hm with the booted answer
#    and RESTORE_START/RESTORE_REPORT in hm's log.
# Each restore starts only once no kvmm runs (the previous sandbox's or the
# snapshot's VM has exited), so the RESTORE_REPORT durations printed compare
# restores that have the guest's one CPU to themselves.
# ctest-labels: no-asan (a QEMU guest running kvmm: minutes under emulation); no-tsan (as no-asan)
. "$(dirname "$0")/lib.sh"
P=$T/payload
microvm_payload "$P" umoci curl ldd etcd etcdctl

# ---- the function: a custom runtime in sh ---------------------------------------------------------------------------
cd "$T"
umoci init --layout img >/dev/null
umoci new --image img:1
umoci unpack --image img:1 bundle >/dev/null
R=bundle/rootfs
mkdir -p "$R"/{bin,etc,tmp,lib64,usr/bin,usr/lib/x86_64-linux-gnu,var/runtime}
chmod 1777 "$R/tmp"
[ -e "$R/lib" ] || ln -s usr/lib "$R/lib"
cp /bin/busybox "$R/bin/busybox"
for a in sh cat echo sleep head od tr sed; do
  ln -sf busybox "$R/bin/$a"
done
cp -L "$(command -v curl)" "$R/usr/bin/curl"
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
ldd "$(command -v curl)" | awk '/=> \// { print $3 }' | sort -u | while read -r lib; do
  cp -L "$lib" "$R/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
# The init (token, sum) lives only in the shell's memory; the answer's
# result depends on the init and the event only, the fresh value is drawn
# for each event.
cat >"$R/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
TOKEN=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
SUM=0; i=0
while [ $i -lt 2000 ]; do SUM=$((SUM + i * i)); i=$((i + 1)); done
echo "init: token $TOKEN"
while true; do
  curl -sS -D /tmp/headers -o /tmp/event "$API/invocation/next" || { sleep 1; continue; }
  ID=$(sed -n 's/^Lambda-Runtime-Aws-Request-Id: *//Ip' /tmp/headers | tr -d '\r')
  N=$(sed -n 's/.*"n": *\([0-9]*\).*/\1/p' /tmp/event)
  FRESH=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
  GEN=$(cat /run/kindling/restore 2>/dev/null || echo none)
  curl -sS -X POST "$API/invocation/$ID/response" \
    -d "{\"result\":\"sum=$SUM n=$N\",\"token\":\"$TOKEN\",\"fresh\":\"$FRESH\",\"gen\":\"$GEN\",\"init\":\"$AWS_LAMBDA_INITIALIZATION_TYPE\"}" >/dev/null
done
EOF
chmod 755 "$R/var/runtime/bootstrap"
umoci repack --image img:1 bundle >/dev/null
umoci config --image img:1 --config.entrypoint /var/runtime/bootstrap >/dev/null
"$CHUNKIFY" import "oci:$T/img:1" --name snaprt:1 >/dev/null 2>"$T/import.err" || { cat "$T/import.err" >&2; die "chunkify import failed"; }

# ---- the payload -------------------------------------------------------------------------------------------------
mkdir -p "$P/home" "$P/bin"
cp -a "$KINDLING_HOME/." "$P/home/" # the store, and the tenant key that sealed the manifest
cp -L "$(command -v curl)" "$P/bin/curl" # the API's client (run.sh brings its libraries)
cp -L "$(command -v etcd)" "$(command -v etcdctl)" "$P/bin/" # the fleet phase's etcd

# Runs in the TCG guest, with busybox.  Every check prints "nested-ok: ..." or
# "nested-fail: ..." and the first failure ends it.
cat >"$P/nested.sh" <<'EOF'
#!/bin/sh
cd /payload
export KINDLING_HOME=/payload/home KINDLING_KVMM=/payload/kvmm KINDLING_GUEST_KERNEL=/payload/vmlinuz \
	KINDLING_GUEST_INITRD=/payload/initrd.cpio.gz KINDLING_GUEST_BOOT_TIMEOUT=300 LD_LIBRARY_PATH=/payload/lib
API=http://127.0.0.1:9000/2015-03-31/functions
ok() { echo "nested-ok: $* (at $(cut -d" " -f1 /proc/uptime) s)"; }
fail() {
	echo "nested-fail: $*"
	for f in /tmp/*.json /tmp/serve*.err /tmp/agent*.err /tmp/placement.err; do [ -f "$f" ] && { echo "--- $f"; tail -c 6000 "$f"; echo; }; done
	./kindling logs snapfn 2>&1 | tail -40
	[ -n "$SERVE" ] && kill $SERVE
	[ -n "$AGENT" ] && kill $AGENT
	for p in $AGENT_P $PLACEMENT $ETCD_PID; do kill $p; done
	exit 1
}
# api NAME METHOD PATH [BODY]: the answer in /tmp/NAME.json, the status in $st.
api() {
	if [ -n "$4" ]; then
		st=$(./bin/curl -sS -m 700 -o /tmp/$1.json -w '%{http_code}' -X "$2" -H 'Content-Type: application/json' \
			-d "$4" "$API$3" 2>/tmp/curl.err)
	else
		st=$(./bin/curl -sS -m 700 -o /tmp/$1.json -w '%{http_code}' -X "$2" "$API$3" 2>/tmp/curl.err)
	fi
	[ -s /tmp/curl.err ] && cat /tmp/curl.err >>/tmp/$1.json
	return 0
}
str() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$2" | head -1; }
snapstart() { tr -d ' \n' <"$1" | sed -n 's/.*"SnapStart":{\([^}]*\)}.*/\1/p'; }
# wait_state QUALIFIER STATE [FUNCTION]: poll GetFunctionConfiguration (at most 700 s).
wait_state() {
	end=$(($(date +%s) + 700))
	while [ "$(date +%s)" -lt $end ]; do
		api cfg GET "/${3:-snapfn}/configuration?Qualifier=$1"
		s=$(str State /tmp/cfg.json)
		[ "$s" = "$2" ] && { echo "nested: ${3:-snapfn} version $1 is $2 (at $(cut -d" " -f1 /proc/uptime) s)"; return 0; }
		[ "$s" = Failed ] && fail "version $1 failed: $(cat /tmp/cfg.json)"
		sleep 2
	done
	fail "version $1 is not $2 after 700 s: $(cat /tmp/cfg.json)"
}

# wait_listening LOG WHAT: until the serve started as $SERVE logs that it
# listens on :9000 (at most 120 s).
wait_listening() {
	end=$(($(date +%s) + 120))
	until grep -q "listening on 127.0.0.1:9000" $1; do
		kill -0 $SERVE 2>/dev/null || fail "$2 exited: $(cat $1)"
		[ "$(date +%s)" -lt $end ] || fail "$2 does not listen after 120 s"
		sleep 1
	done
}

# The guest's loopback, for the API on 127.0.0.1 (the harness brings up no network).
ip link set lo up 2>/tmp/lo.err || ifconfig lo 127.0.0.1 up 2>>/tmp/lo.err || fail "cannot bring lo up: $(cat /tmp/lo.err)"
./bin/curl --version >/tmp/curl.out 2>&1 || fail "curl does not run here: $(cat /tmp/curl.out)"
./kindling serve --listen 127.0.0.1:9000 --no-auth --isolation microvm --idle-timeout 5 -v \
	>/tmp/serve.out 2>/tmp/serve.err &
SERVE=$!
wait_listening /tmp/serve.err "kindling serve"
api list GET "/"
[ "$st" = 200 ] || fail "ListFunctions: $st $(cat /tmp/list.json)"
echo "nested: kindling serve answers"

# 1. Create with SnapStart; $LATEST boots.
api create POST "" '{"FunctionName":"snapfn","PackageType":"Image","Code":{"ImageUri":"snaprt:1"},"Timeout":600,"MemorySize":128,"SnapStart":{"ApplyOn":"PublishedVersions"}}'
[ "$st" = 201 ] || fail "CreateFunction: $st $(cat /tmp/create.json)"
[ "$(snapstart /tmp/create.json)" = '"ApplyOn":"PublishedVersions","OptimizationStatus":"Off"' ] ||
	fail "CreateFunction's SnapStart: $(snapstart /tmp/create.json)"
wait_state '$LATEST' Active
echo "nested: \$LATEST is Active; invoking it (a cold boot)"
api latest POST "/snapfn/invocations" '{"n": 7}'
[ "$st" = 200 ] || fail "invoke \$LATEST: $st $(cat /tmp/latest.json)"
RESULT=$(str result /tmp/latest.json)
[ "$RESULT" = "sum=2664667000 n=7" ] && [ "$(str gen /tmp/latest.json)" = none ] &&
	[ "$(str init /tmp/latest.json)" = on-demand ] || fail "\$LATEST answered $(cat /tmp/latest.json)"
ok "\$LATEST of a SnapStart function boots and answers $RESULT (generation none; OptimizationStatus Off)"

# 2. Publish: Pending while the agent snapshots, then Active.
api publish POST "/snapfn/versions" '{}'
[ "$st" = 201 ] && [ "$(str Version /tmp/publish.json)" = 1 ] && [ "$(str State /tmp/publish.json)" = Pending ] &&
	[ "$(str StateReasonCode /tmp/publish.json)" = Creating ] || fail "PublishVersion: $st $(cat /tmp/publish.json)"
echo "nested: version 1 is Pending; waiting for its snapshot"
wait_state 1 Active
[ "$(snapstart /tmp/cfg.json)" = '"ApplyOn":"PublishedVersions","OptimizationStatus":"On"' ] ||
	fail "version 1's SnapStart: $(snapstart /tmp/cfg.json)"
./chunkify ls | grep -Eq '^snapstart-snapfn:1 +snapshot ' || fail "chunkify ls has no snapshot snapstart-snapfn:1: $(./chunkify ls)"
api versions GET "/snapfn/versions"
grep -q '"OptimizationStatus": *"On"' /tmp/versions.json || fail "ListVersionsByFunction: $(cat /tmp/versions.json)"
ok "PublishVersion: Pending (Creating), then Active with OptimizationStatus On; the snapshot snapstart-snapfn:1 is in the store"

# no_vm: wait until no kvmm runs (at most 120 s): the snapshot's VM has
# stopped, so a restore's duration is not shared with another VM on the
# guest's one CPU.
# It says how long it waited ($1 names the restore that follows).
no_vm() {
	start=$(date +%s)
	end=$((start + 120))
	while ps | grep -v grep | grep -q '/payload/kvmm'; do
		[ "$(date +%s)" -lt $end ] || fail "a kvmm still runs 120 s after the last sandbox ended: $(ps)"
		sleep 1
	done
	[ -z "$1" ] || echo "nested: $1: waited $(($(date +%s) - start)) s for the previous VM's kvmm to exit"
}

# 3. Two cold starts of version 1, restored.  Each sandbox ends on the
# agent's idle timeout before the next invocation ($LATEST's first).
# expired N: wait until N sandboxes have ended so (at most 300 s).
expired() {
	end=$(($(date +%s) + 300))
	until [ "$(grep -c 'idle for .*ending it' /tmp/serve.err)" -ge "$1" ]; do
		[ "$(date +%s)" -lt $end ] || fail "sandbox $1 did not end on the idle timeout in 300 s"
		sleep 1
	done
}
expired 1
no_vm "in-process restore 1"
api r1 POST "/snapfn/invocations?Qualifier=1" '{"n": 7}'
[ "$st" = 200 ] || fail "invoke version 1: $st $(cat /tmp/r1.json)"
expired 2
no_vm "in-process restore 2"
api r2 POST "/snapfn/invocations?Qualifier=1" '{"n": 7}'
[ "$st" = 200 ] || fail "invoke version 1 again: $st $(cat /tmp/r2.json)"
for n in 1 2; do
	[ "$(str result /tmp/r$n.json)" = "$RESULT" ] || fail "restored answer $n is not \$LATEST's: $(cat /tmp/r$n.json)"
	[ "$(str gen /tmp/r$n.json)" = 1 ] || fail "restored answer $n: generation: $(cat /tmp/r$n.json)"
	[ "$(str init /tmp/r$n.json)" = snap-start ] || fail "restored answer $n: initialization type: $(cat /tmp/r$n.json)"
done
T1=$(str token /tmp/r1.json); F1=$(str fresh /tmp/r1.json); F2=$(str fresh /tmp/r2.json)
[ -n "$T1" ] && [ "$(str token /tmp/r2.json)" = "$T1" ] || fail "the restored sandboxes do not share the snapshot's init: $(cat /tmp/r1.json /tmp/r2.json)"
[ -n "$F1" ] && [ -n "$F2" ] && [ "$F1" != "$F2" ] || fail "the restored sandboxes drew the same fresh value: $F1 $F2"
./kindling logs snapfn >/tmp/log.out 2>&1 || fail "kindling logs snapfn: $(cat /tmp/log.out)"
[ "$(grep -c '^RESTORE_START ' /tmp/log.out)" = 2 ] && [ "$(grep -c '^RESTORE_REPORT Restore Duration: [0-9.]* ms' /tmp/log.out)" = 2 ] ||
	fail "the log does not show two restores: $(cat /tmp/log.out)"
[ "$(grep -c '^REPORT .*Restore Duration: [0-9.]* ms.Billed Restore Duration: [0-9]* ms' /tmp/log.out)" = 2 ] &&
	[ "$(grep -c '^REPORT .*Init Duration' /tmp/log.out)" = 1 ] || fail "the REPORT lines: $(grep ^REPORT /tmp/log.out)"
echo "nested: in-process agent: $(grep '^RESTORE_REPORT' /tmp/log.out | tr '\n' ' ')"
ok "two cold starts of version 1 restored from the snapshot: $RESULT as \$LATEST, token $T1 from the snapshot's init, generation 1, initialization type snap-start, fresh $F1 and $F2; the log has RESTORE_START, RESTORE_REPORT and REPORT with Restore Duration"

# 4. Provisioned concurrency on version 1: its sandbox restores too, before
# any invocation, and takes the next one.
PC=http://127.0.0.1:9000/2019-09-30/functions/snapfn/provisioned-concurrency?Qualifier=1
st=$(./bin/curl -sS -m 60 -o /tmp/pc.json -w '%{http_code}' -X PUT -d '{"ProvisionedConcurrentExecutions":1}' "$PC")
[ "$st" = 202 ] || fail "PutProvisionedConcurrencyConfig: $st $(cat /tmp/pc.json)"
end=$(($(date +%s) + 300))
until ./bin/curl -sS -m 60 -o /tmp/pc.json "$PC" && [ "$(str Status /tmp/pc.json)" = READY ]; do
	[ "$(date +%s)" -lt $end ] || fail "provisioned concurrency is not READY after 300 s: $(cat /tmp/pc.json)"
	sleep 2
done
./kindling logs snapfn >/tmp/log.out 2>&1
[ "$(grep -c '^RESTORE_START ' /tmp/log.out)" = 3 ] || fail "the provisioned sandbox was not restored: $(tail -20 /tmp/log.out)"
api r3 POST "/snapfn/invocations?Qualifier=1" '{"n": 7}'
[ "$st" = 200 ] && [ "$(str result /tmp/r3.json)" = "$RESULT" ] && [ "$(str gen /tmp/r3.json)" = 1 ] &&
	[ "$(str token /tmp/r3.json)" = "$T1" ] || fail "the provisioned sandbox answered $st $(cat /tmp/r3.json)"
ok "provisioned concurrency on version 1 restores its sandbox from the snapshot before any invocation; it answers $RESULT"

# 5. Delete: the snapshot's ref goes, nothing is left behind.
api delete DELETE "/snapfn"
[ "$st" = 204 ] || fail "DeleteFunction: $st $(cat /tmp/delete.json)"
./chunkify ls | grep -q '^snapstart-snapfn:1 ' && fail "snapstart-snapfn:1 is still in the store: $(./chunkify ls)"
no_vm
[ -z "$(ls /tmp | grep kindling-snapstart)" ] || fail "a snapshot directory was left: $(ls /tmp)"
ok "DeleteFunction removed the snapshot's ref; no kvmm and no snapshot directory is left"
kill $SERVE
wait $SERVE
SERVE=
ok "kindling serve stopped"

# snapstart_on_agent FUNCTION AGENT_LOG AGENT_HOME WHO: through the serve
# on :9000, whose invocations run on an agent elsewhere (AGENT_LOG its
# stderr, AGENT_HOME its --home): create FUNCTION with SnapStart, publish
# version 1 (Pending, then Active with its snapshot taken by that agent and
# in the store), invoke it cold once no VM runs (the answer is $LATEST's, a
# restore: generation 1, snap-start), check RESTORE_START/RESTORE_REPORT in
# the agent's log of FUNCTION, print the restore's duration, delete FUNCTION.
snapstart_on_agent() {
	api create POST "" "{\"FunctionName\":\"$1\",\"PackageType\":\"Image\",\"Code\":{\"ImageUri\":\"snaprt:1\"},\"Timeout\":600,\"MemorySize\":128,\"SnapStart\":{\"ApplyOn\":\"PublishedVersions\"}}"
	[ "$st" = 201 ] || fail "CreateFunction $1 ($4): $st $(cat /tmp/create.json)"
	wait_state '$LATEST' Active $1
	api publish POST "/$1/versions" '{}'
	[ "$st" = 201 ] && [ "$(str State /tmp/publish.json)" = Pending ] || fail "PublishVersion of $1 ($4): $st $(cat /tmp/publish.json)"
	echo "nested: $1 version 1 is Pending; $4 takes its snapshot (at $(cut -d" " -f1 /proc/uptime) s)"
	wait_state 1 Active $1
	[ "$(snapstart /tmp/cfg.json)" = '"ApplyOn":"PublishedVersions","OptimizationStatus":"On"' ] ||
		fail "$1 version 1's SnapStart: $(snapstart /tmp/cfg.json)"
	grep -q "SnapStart snapshot snapstart-$1:1 of version 1 taken" $2 ||
		fail "the log of $4 does not show the snapshot: $(tail -20 $2)"
	./chunkify ls | grep -Eq "^snapstart-$1:1 +snapshot " || fail "no snapshot snapstart-$1:1 in the store: $(./chunkify ls)"
	no_vm "$4's restore"
	api cold POST "/$1/invocations?Qualifier=1" '{"n": 7}'
	[ "$st" = 200 ] && [ "$(str result /tmp/cold.json)" = "$RESULT" ] && [ "$(str gen /tmp/cold.json)" = 1 ] &&
		[ "$(str init /tmp/cold.json)" = snap-start ] || fail "version 1 of $1 on $4 answered $st $(cat /tmp/cold.json)"
	./kindling logs $1 --state-dir $3 >/tmp/alog.out 2>&1 || fail "the log of $1 on $4: $(cat /tmp/alog.out)"
	grep -q '^RESTORE_START ' /tmp/alog.out && grep -q '^RESTORE_REPORT Restore Duration: [0-9.]* ms' /tmp/alog.out ||
		fail "the log of $1 on $4 shows no restore: $(cat /tmp/alog.out)"
	echo "nested: $4: $(grep '^RESTORE_REPORT' /tmp/alog.out | tr '\n' ' ')(at $(cut -d" " -f1 /proc/uptime) s)"
	api delete DELETE "/$1"
	[ "$st" = 204 ] || fail "DeleteFunction $1 ($4): $st $(cat /tmp/delete.json)"
}

# 6. A remote agent: kindling agent --isolation microvm, and kindling serve
# --agent URL in front of it.  Both read the same store ($KINDLING_HOME).
./kindling agent --listen 127.0.0.1:9101 --isolation microvm --idle-timeout 5 -v >/tmp/agent.out 2>/tmp/agent.err &
AGENT=$!
end=$(($(date +%s) + 120))
until ./bin/curl -sS -m 5 -o /tmp/info.json http://127.0.0.1:9101/v1/info 2>/dev/null; do
	kill -0 $AGENT 2>/dev/null || fail "kindling agent exited: $(cat /tmp/agent.err)"
	[ "$(date +%s)" -lt $end ] || fail "kindling agent does not answer after 120 s"
	sleep 1
done
tr -d ' \n' </tmp/info.json | grep -q '"isolation":"microvm","snapshot":true' ||
	fail "the agent's GET /v1/info: $(cat /tmp/info.json)"
./kindling serve --listen 127.0.0.1:9000 --no-auth --agent http://127.0.0.1:9101 --state-dir /tmp/remote-serve -v \
	>/tmp/serve.out 2>/tmp/serve-remote.err &
SERVE=$!
wait_listening /tmp/serve-remote.err "kindling serve --agent"
snapstart_on_agent remotefn /tmp/agent.err /payload/home "the remote agent"
ok "kindling serve --agent with kindling agent --isolation microvm: SnapStart accepted, version 1 Pending then Active with its snapshot taken by the agent, its cold start on the agent restored ($RESULT, generation 1, snap-start) with RESTORE_START/RESTORE_REPORT in the agent's log"
kill $SERVE $AGENT
wait $SERVE $AGENT
SERVE= AGENT=

# 7. A fleet: etcd, kindling placement, two agents registered in etcd (one
# with process sandboxes, one with micro-VMs, each with its own home, L1 and
# mount over the shared store) and kindling serve --etcd in front.  The
# snapshot must be placed on the micro-VM host, and the cold start of the
# version restored there.
ETCD=http://127.0.0.1:2379
./bin/etcd --name m0 --data-dir /tmp/etcd --listen-client-urls $ETCD --advertise-client-urls $ETCD \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster m0=http://127.0.0.1:2380 --initial-cluster-state new --logger zap --log-outputs stderr \
	>/tmp/etcd.out 2>/tmp/etcd.err &
ETCD_PID=$!
# wait_http URL NAME PID: until URL answers 200 (at most 120 s)
wait_http() {
	end=$(($(date +%s) + 120))
	until ./bin/curl -sf -m 5 -o /dev/null "$1" 2>/dev/null; do
		kill -0 $3 2>/dev/null || fail "$2 exited: $(tail -c 3000 /tmp/$2.err)"
		[ "$(date +%s)" -lt $end ] || fail "$2 does not answer $1 after 120 s: $(tail -c 3000 /tmp/$2.err)"
		sleep 1
	done
}
stop_fleet() {
	for p in $SERVE $AGENT_P $AGENT $PLACEMENT $ETCD_PID; do kill $p 2>/dev/null; done
	for p in $SERVE $AGENT_P $AGENT $PLACEMENT $ETCD_PID; do wait $p 2>/dev/null; done
	SERVE= AGENT= AGENT_P= PLACEMENT= ETCD_PID=
}
wait_http $ETCD/health etcd $ETCD_PID
./kindling placement --etcd $ETCD --listen 127.0.0.1:9300 -v >/tmp/placement.out 2>/tmp/placement.err &
PLACEMENT=$!
wait_http http://127.0.0.1:9300/healthz placement $PLACEMENT
for h in hm hp; do
	mkdir -p /tmp/$h
	cp /payload/home/salt /payload/home/tenant.key /tmp/$h/ || fail "no tenant key or salt in /payload/home"
done
./kindling agent --listen 127.0.0.1:9201 --home /tmp/hm --etcd $ETCD --host-id hm --cell cell-0 \
	--store /payload/home/store --isolation microvm --idle-timeout 5 -v >/tmp/agent-hm.out 2>/tmp/agent-hm.err &
AGENT=$!
./kindling agent --listen 127.0.0.1:9202 --home /tmp/hp --etcd $ETCD --host-id hp --cell cell-0 \
	--store /payload/home/store --isolation process --idle-timeout 5 -v >/tmp/agent-hp.out 2>/tmp/agent-hp.err &
AGENT_P=$!
wait_http http://127.0.0.1:9201/healthz agent-hm $AGENT
wait_http http://127.0.0.1:9202/healthz agent-hp $AGENT_P
end=$(($(date +%s) + 120))
until [ "$(./bin/etcdctl --endpoints $ETCD get --prefix --keys-only kindling/hosts/ 2>/tmp/etcdctl.err | grep -c .)" = 2 ]; do
	[ "$(date +%s)" -lt $end ] || fail "the agents are not both registered in etcd after 120 s: $(./bin/etcdctl --endpoints $ETCD get --prefix --keys-only kindling/hosts/ 2>&1)"
	sleep 1
done
./bin/etcdctl --endpoints $ETCD get --print-value-only kindling/hosts/hm | tr -d ' \n' |
	grep -q '"isolation":"microvm","snapshot":true' || fail "hm's registration: $(./bin/etcdctl --endpoints $ETCD get --print-value-only kindling/hosts/hm)"
./kindling serve --listen 127.0.0.1:9000 --no-auth --etcd $ETCD --placement http://127.0.0.1:9300 \
	--state-dir /tmp/fleet-serve --store /payload/home/store -v >/tmp/serve.out 2>/tmp/serve-fleet.err &
SERVE=$!
wait_listening /tmp/serve-fleet.err "kindling serve --etcd"
ok "a fleet in the guest: etcd, kindling placement, agents hm (microvm, snapshot true) and hp (process) registered, kindling serve --etcd"
snapstart_on_agent fleetfn /tmp/agent-hm.err /tmp/hm "fleet agent hm"
ok "kindling serve --etcd with placement and agents hm (microvm) and hp (process) in etcd: SnapStart accepted, the snapshot taken on hm, version 1 Active, its cold start restored on hm ($RESULT, generation 1, snap-start) with RESTORE_START/RESTORE_REPORT in hm's log"
stop_fleet
EOF
chmod 755 "$P/nested.sh"

# ---- run it under nested KVM --------------------------------------------------------------------------------------
export NESTED_LOG=$T/console.log
rc=0
timeout 880 "$KINDLING_SOURCE_DIR/tests/nested/run.sh" --mem 2048 --smp 1 --timeout 840 --modules fuse \
  "$P" nested.sh >"$T/nested.out" 2>&1 || rc=$?
nested_outcome "$T/nested.out" $rc 9
pass "SnapStart in kindling serve under nested KVM: a published version snapshotted at its runtime's first /next, Active with OptimizationStatus On, two cold starts and a provisioned sandbox restored with the booted answer and fresh randomness, RESTORE lines in the log, the snapshot's ref removed with the function; the same through kindling serve --agent on a remote kindling agent --isolation microvm, and in a fleet (etcd, placement, a micro-VM and a process agent, kindling serve --etcd)"
