#!/bin/bash
# `kindling run`: an image imported by chunkify, attached lazily by an
# in-process blockd, run in the process sandbox from MOUNT/<image>/image.raw.
#   - the entrypoint's output arrives and its exit code propagates;
#   - the report (text, and --json) has timings, bytes fetched < image size on
#     a cold run, and the tier split; a warm run is served by L1 with no L3
#     fetch;
#   - `-- CMD ARGS` overrides the entrypoint; a missing command is 127, an
#     unknown image 125;
#   - --isolation microvm is refused clearly here, auto prints its notice;
#   - with five memcached and --l2, a run after `chunkify prime` on a fresh L1
#     fetches from L2 and nothing from L3;
#   - SIGTERM mid-run ends the workload and kindling with 143;
#   - limits by default (1 GiB, 1024 processes) and --memory/--pids: a memory
#     hog is OOM-killed (137) and a fork bomb held at --pids, each reported in
#     one clear line; afterwards the host forks and none of their processes
#     remain; the workload runs in a user namespace (root inside is host id
#     1000000000), --userns changes the mapping;
#   - --timings FILE writes phases that explain the start (behaviour only, no
#     time limits); a bad path fails before anything runs;
#   - --blockd SOCK runs the image from a running `blockd serve`, and refuses
#     cache options, a missing daemon and an unknown image clearly;
#   - no FUSE mount, temporary mount point or loop device is left behind.
# Missing tools are a failure, not a skip.
# ctest-labels: no-asan (kindling run end to end: blockd is covered by 40-42 and the sandbox by 50 under ASan); no-tsan (as 50; blockd threads are covered by 40-42)
. "$(dirname "$0")/lib.sh"
need_kindling_run jq memcached python3 tar

# ---- the image: static busybox, an entrypoint, and 8 MB the entrypoint never reads -------------------------------
R=$T/rootfs
mkdir -p "$R"/{bin,etc,app,data}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
head -c 8000000 /dev/urandom >"$R/data/unread.bin"
cat >"$R/app/entry.sh" <<'EOF'
#!/bin/sh
echo "hello from kindling: $GREETING $*"
exit 7
EOF
chmod 755 "$R/app/entry.sh"
# Memory hog: touches N MiB, then says so.
cat >"$T/hog.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
	size_t mib = (size_t)atol(argv[1]);
	for (size_t i = 0; i < mib; i++) {
		char *p = malloc(1 << 20);
		if (!p) { printf("malloc failed at %zu MiB\n", i); return 3; }
		memset(p, 1, 1 << 20);
	}
	printf("touched %zu MiB\n", mib);
	return 0;
}
EOF
gcc -static -O1 -o "$R/bin/hog" "$T/hog.c" || die "gcc -static of the memory hog failed (libc6-dev?)"
tar -C "$R" -cf "$T/layer.tar" .
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout" 1 "$T/layer.tar"
# make_layout.py writes /bin/sh as the entrypoint; give this image its own.
python3 - "$T/layout" <<'PY'
import hashlib, json, os, sys
lay = sys.argv[1]
blobs = os.path.join(lay, "blobs", "sha256")
idx = json.load(open(os.path.join(lay, "index.json")))
man = json.load(open(os.path.join(blobs, idx["manifests"][0]["digest"][7:])))
cfg = json.load(open(os.path.join(blobs, man["config"]["digest"][7:])))
cfg["config"] = {"Entrypoint": ["/app/entry.sh"], "Cmd": ["one", "two"], "Env": ["PATH=/bin", "GREETING=hi"],
                 "WorkingDir": "/data"}
def put(obj):
    b = json.dumps(obj, sort_keys=True).encode()
    d = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, d), "wb").write(b)
    return d, len(b)
d, n = put(cfg)
man["config"]["digest"], man["config"]["size"] = "sha256:" + d, n
d, n = put(man)
idx["manifests"][0]["digest"], idx["manifests"][0]["size"] = "sha256:" + d, n
json.dump(idx, open(os.path.join(lay, "index.json"), "w"))
PY
"$CHUNKIFY" import "oci:$T/layout:1" --name run:1 >/dev/null 2>"$T/import.err" ||
  { cat "$T/import.err" >&2; die "chunkify import failed"; }
pass "image built and imported"

export TMPDIR=$T/tmp # kindling's private mount points go here; checked empty at the end
mkdir -p "$TMPDIR"
fuse_mounts() { grep -c "$T/tmp/kindling-run" /proc/self/mountinfo || true; }


# ---- cold run: the entrypoint, the exit code, the JSON report ----------------------------------------------------
rc=0; kr cold run:1 --json --isolation process || rc=$?
[ "$rc" = 7 ] || { cat "$T/cold.out" "$T/cold.err" >&2; die "exit code: got $rc, want 7"; }
[ "$(cat "$T/cold.out")" = "hello from kindling: hi one two" ] || die "output: $(cat "$T/cold.out" "$T/cold.err")"
J=$(tail -1 "$T/cold.err")
echo "$J" | jq -e '.status == 7 and .exit_code == 7 and .backend == "process" and (.mount == "file" or .mount == "loop")
  and .first_output_s > 0 and .exit_s >= .first_output_s and .attach_s > 0 and .attach_s < .first_output_s
  and .bytes_fetched > 0 and .bytes_fetched < .image_size and .image_size > 8000000
  and .chunks.l3 > 0 and .chunks.l2 == 0 and .bytes_fetched == (.chunks.l2 + .chunks.l3) * 524288
  and .bytes.l3 == .chunks.l3 * 524288 and .bytes_read > 0 and .metadata_bytes > 0
  and .prefetch.enabled == true and .out_bytes > 0' >/dev/null || die "cold report wrong: $J"
pass "cold run: exit 7, output streamed; first output $(jq .first_output_s <<<"$J") s, exit $(jq .exit_s <<<"$J") s; fetched $(jq .bytes_fetched <<<"$J") of $(jq .image_size <<<"$J") bytes, all from L3"

# ---- warm run: L1 serves, nothing from L3 -------------------------------------------------------------------------
rc=0; kr warm run:1 --json --no-prefetch || rc=$?
[ "$rc" = 7 ] || die "warm run exit code $rc"
J=$(tail -1 "$T/warm.err")
echo "$J" | jq -e '.chunks.l3 == 0 and .chunks.l2 == 0 and .bytes_fetched == 0 and .chunks.l1 > 0
  and .served_by_tier.l1 > 0 and .served_by_tier.l3 == 0 and .prefetch.enabled == false' >/dev/null ||
  die "warm report wrong: $J"
pass "warm run: $(jq .chunks.l1 <<<"$J") chunks from L1, 0 from L3; first output $(jq .first_output_s <<<"$J") s"

# A run with prefetch after the cold run recorded a trace: the trace is used.
rc=0; kr pf run:1 --json || rc=$?
J=$(tail -1 "$T/pf.err")
[ "$rc" = 7 ] && echo "$J" | jq -e '.prefetch.trace_chunks > 0 and .chunks.l3 == 0' >/dev/null ||
  die "prefetch run: rc $rc, $J"
pass "the cold run's startup trace was stored and prefetched ($(jq .prefetch.trace_chunks <<<"$J") chunks, accuracy $(jq .prefetch.accuracy <<<"$J"))"

# ---- the text report ------------------------------------------------------------------------------------------
kr text run:1 -- true || die "-- true failed: $(cat "$T/text.err")"
grep -Eq "first output (none|[0-9.]+ s), exit [0-9.]+ s" "$T/text.err" && grep -q "^kindling: fetched .* of a .* image" "$T/text.err" &&
  grep -q "^kindling: chunks: L1 [0-9]* (.*), L2 [0-9]* (.*), L3 [0-9]* (.*)" "$T/text.err" ||
  die "text report incomplete: $(cat "$T/text.err")"
pass "the text report has timings, bytes fetched and the tier split"

# ---- overrides and failures ------------------------------------------------------------------------------------
for code in 0 42; do
  rc=0; kr ov run:1 -- sh -c "echo override \$0 \$1; exit $code" a b || rc=$?
  [ "$rc" = "$code" ] || die "-- sh -c 'exit $code' came back as $rc"
  [ "$(cat "$T/ov.out")" = "override a b" ] || die "override output: $(cat "$T/ov.out" "$T/ov.err")"
done
rc=0; kr ov run:1 -- sh -c 'pwd; echo $GREETING; kill -TERM $$' || rc=$?
[ "$rc" = 143 ] || die "a SIGTERM death came back as $rc, want 143"
[ "$(cat "$T/ov.out")" = "$(printf '/data\nhi')" ] || die "workdir/env with an override: $(cat "$T/ov.out")"
rc=0; kr nocmd run:1 -- no-such-command || rc=$?
[ "$rc" = 127 ] && grep -q "not found in the image" "$T/nocmd.err" || die "missing command: rc $rc, $(cat "$T/nocmd.err")"
# The report says the command did not run, not a meaningless "first output -1".
grep -q "the command did not run" "$T/nocmd.err" && ! grep -q "first output -1" "$T/nocmd.err" ||
  die "missing command: the report reads as if it ran: $(cat "$T/nocmd.err")"
! grep -q "^chunkify:" "$T/nocmd.err" || die "kindling run's messages carry chunkify's name: $(cat "$T/nocmd.err")"
rc=0; kr noimg nosuch:1 || rc=$?
# One failure, one message: the image is named once, with no bare errno line after it.
# (The auto notice may itself name a missing guest kernel: microvm_auto_fallback.)
[ "$rc" = 125 ] && grep -q 'no image "nosuch:1"' "$T/noimg.err" && [ "$(grep -c nosuch "$T/noimg.err")" = 1 ] &&
  ! grep -vF "$(microvm_auto_fallback)" "$T/noimg.err" | grep -q "No such file" ||
  die "unknown image: rc $rc, $(cat "$T/noimg.err")"
rc=0; kr usage || rc=$?
[ "$rc" = 2 ] || die "kindling run without an image gave $rc, want 2"
pass "-- CMD ARGS override (exit 0/42, signal 143, image workdir and env kept), missing command 127, unknown image 125"

rc=0; kr vm run:1 --isolation microvm || rc=$?
# Refused before anything is attached, naming why (microvm_refusal).
[ "$rc" = 125 ] && grep -qF "$(microvm_refusal)" "$T/vm.err" ||
  die "--isolation microvm was not refused clearly: rc $rc, $(cat "$T/vm.err")"
grep -q "hello" "$T/vm.out" && die "--isolation microvm ran the workload anyway"
rc=0; kr auto run:1 --isolation auto || rc=$?
[ "$rc" = 7 ] && [ "$(grep -c 'notice: isolation auto: using the process sandbox' "$T/auto.err")" = 1 ] &&
  grep -q hello "$T/auto.out" || die "--isolation auto: rc $rc, $(cat "$T/auto.err")"
pass "--isolation microvm refused ($(head -1 "$T/vm.err")); auto prints one notice and runs"

# ---- L2: five memcached, primed; a fresh L1 fetches only from L2 ------------------------------------------------
MCUSER=(); [ "$(id -u)" = 0 ] && MCUSER=(-u root)
NODES=""
for i in 1 2 3 4 5; do
  p=$(free_port)
  memcached "${MCUSER[@]}" -l 127.0.0.1 -p "$p" -U 0 -m 64 -I 2m &
  track_pid $!
  wait_port "$p"
  NODES="$NODES${NODES:+,}127.0.0.1:$p"
done
"$CHUNKIFY" prime run:1 --l2 "$NODES" >"$T/prime.out" || die "chunkify prime failed"
rc=0; kr l2 run:1 --json --l2 "$NODES" --l1-dir "$T/l1-fresh" || rc=$?
J=$(tail -1 "$T/l2.err")
[ "$rc" = 7 ] && echo "$J" | jq -e '.chunks.l2 > 0 and .chunks.l3 == 0 and .bytes_fetched > 0 and .chunks.l1 == 0' \
  >/dev/null || die "L2 run: rc $rc, $J"
pass "after chunkify prime, a fresh-L1 run fetched $(jq .chunks.l2 <<<"$J") chunks from L2 and none from L3"

# ---- SIGTERM mid-run: the workload ends, kindling cleans up and exits 143 ----------------------------------------
"$KINDLING" run run:1 -- sh -c 'echo started; sleep 30' >"$T/sig.out" 2>"$T/sig.err" &
KPID=$!
track_pid $KPID
for ((i = 0; i < 100; i++)); do grep -q started "$T/sig.out" 2>/dev/null && break; sleep 0.1; done
grep -q started "$T/sig.out" || die "the workload never started: $(cat "$T/sig.err")"
t0=$(date +%s.%N)
kill -TERM $KPID
rc=0; wait $KPID || rc=$?
took=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
[ "$rc" = 143 ] || die "SIGTERM: kindling exited $rc, want 143: $(cat "$T/sig.err")"
python3 -c "import sys; sys.exit(0 if $took < 5 else 1)" || die "SIGTERM took ${took}s"
pass "SIGTERM mid-run: forwarded to the workload, kindling exited 143 in ${took}s with cleanup"

# ---- limits: a memory hog and a fork bomb, reported; the host unharmed ------------------------------------------
rc=0; kr hog run:1 --json --memory 64M -- hog 512 || rc=$?
J=$(tail -1 "$T/hog.err")
[ "$rc" = 137 ] && echo "$J" | jq -e '.oom_killed and .memory_limit == 67108864' >/dev/null &&
  [ "$(grep -c "ran out of memory: it used more than its limit of 64.0 MiB" "$T/hog.err")" = 1 ] &&
  ! grep -q "touched 512" "$T/hog.out" || die "memory hog under --memory 64M: rc $rc, $(cat "$T/hog.out" "$T/hog.err")"
kr hog2 run:1 --json -- hog 64 || die "a 64 MiB hog failed under the default limit: $(cat "$T/hog2.out" "$T/hog2.err")"
J=$(tail -1 "$T/hog2.err")
echo "$J" | jq -e '.memory_limit == 1073741824 and .pids_limit == 1024 and (.oom_killed | not) and .cgroup != "none"' \
  >/dev/null || die "default limits: $J"
pass "memory: a 512 MiB hog under --memory 64M was OOM-killed (137) with one clear line; default limits 1 GiB / 1024 processes (cgroup $(jq -r .cgroup <<<"$J"))"

# A fork bomb under --pids 64: every fork past the limit fails.  Its processes
# carry a marker to look for afterwards.
MARK=bomb-$$-$RANDOM
rc=0; kr bomb run:1 --json --pids 64 --timeout 5 -- sh -c "m=$MARK; b() { while :; do b & done; }; b" || rc=$?
J=$(tail -1 "$T/bomb.err")
# It ends either when the bomb's first shell gives up on a failed fork (the
# sandbox's init then takes every other process with it) or at --timeout.
[ "$rc" != 0 ] && echo "$J" | jq -e '.pids_limited' >/dev/null &&
  grep -q "reached its limit of 64 processes" "$T/bomb.err" ||
  die "fork bomb under --pids 64: rc $rc, $(tail -5 "$T/bomb.err")"
sh -c 'exit 0' || die "the host cannot fork after the fork bomb"
left=$(ps -eo pid,args | grep -F "$MARK" | grep -v grep || true)
[ -z "$left" ] || die "fork bomb processes outlived the run: $left"
pass "fork bomb: held at 64 processes (pids_limited, reported), ended with status $rc; the host forks, none of its processes remain"

rc=0; kr ns run:1 -- sh -c 'id -u; cat /proc/self/uid_map; ls -ln /app/entry.sh' || rc=$?
[ "$rc" = 0 ] && [ "$(sed -n 1p "$T/ns.out")" = 0 ] && sed -n 2p "$T/ns.out" | grep -Eq '^ *0 +1000000000 +65536$' &&
  sed -n 3p "$T/ns.out" | grep -Eq ' 0 +0 ' || die "user namespace: rc $rc, $(cat "$T/ns.out" "$T/ns.err")"
rc=0; kr ns2 run:1 --userns 200000:1000 -- cat /proc/self/uid_map || rc=$?
grep -Eq '^ *0 +200000 +1000$' "$T/ns2.out" || die "--userns 200000:1000: $(cat "$T/ns2.out" "$T/ns2.err")"
pass "user namespace: root inside is host uid 1000000000, image files still owned by 0 inside; --userns 200000:1000 applies"

# ---- --timings: where the start went --------------------------------------------------------------------------------
# Behaviour only: the phases' names and sums, never how long any took.
"$KINDLING" run --help >"$T/help.out" 2>&1 && grep -q -- "--timings FILE" "$T/help.out" &&
  grep -q -- "--blockd SOCK" "$T/help.out" || die "kindling run --help does not mention --timings and --blockd"
# timings_ok FILE: the JSON is whole and its phases explain the start.
timings_ok() {
  jq -e '(.phases | length) > 0 and all(.phases[]; (.name | type) == "string" and .ms >= 0)
    and ([.phases[].name] | length) == ([.phases[].name] | unique | length)
    and ([.phases[].ms] | add) <= .total_ms + 1 and (([.phases[].ms] | add) - .exec_ms | fabs) < 0.01
    and .first_output_ms > 0 and .first_output_ms <= .total_ms + 1 and .start_precision_ms >= 0
    and .phases[0].name == "pre-main" and .phases[-1].name == "seccomp-load"' "$1" >/dev/null
}
rc=0; kr tim run:1 --timings "$T/timings.json" || rc=$?
[ "$rc" = 7 ] && [ "$(cat "$T/tim.out")" = "hello from kindling: hi one two" ] ||
  die "--timings run: rc $rc, $(cat "$T/tim.out" "$T/tim.err")"
timings_ok "$T/timings.json" || die "--timings JSON wrong: $(cat "$T/timings.json")"
for ph in attach fuse-mount userns namespaces cgroup mount-image credentials; do
  jq -e --arg p "$ph" 'any(.phases[]; .name == $p)' "$T/timings.json" >/dev/null || die "--timings: no $ph phase: $(cat "$T/timings.json")"
done
jq -e '.blockd == "private" and .status == 7 and .backend == "process"' "$T/timings.json" >/dev/null ||
  die "--timings fields: $(cat "$T/timings.json")"
rc=0; kr badt run:1 --timings "$T/no/such/dir/t.json" || rc=$?
[ "$rc" != 0 ] && grep -q -- "--timings $T/no/such/dir/t.json: cannot open it" "$T/badt.err" && [ ! -s "$T/badt.out" ] ||
  die "a bad --timings path: rc $rc, $(cat "$T/badt.out" "$T/badt.err")"
pass "--timings: $(jq '.phases | length' "$T/timings.json") phases from pre-main to seccomp-load, names unique, sum <= total; a bad path fails first, naming it"

# ---- --blockd: run from a running blockd serve ------------------------------------------------------------------------
. "$(dirname "$0")/blockd-lib.sh"
blockd_start bserve "$T/bmnt" --store "$KINDLING_HOME/store" --l1-dir "$T/bl1" --control "$T/blockd.sock"
for i in 1 2; do
  rc=0; kr shared$i run:1 --blockd "$T/blockd.sock" --json --timings "$T/timings-shared.json" || rc=$?
  [ "$rc" = 7 ] && [ "$(cat "$T/shared$i.out")" = "hello from kindling: hi one two" ] ||
    die "--blockd run $i: rc $rc, $(cat "$T/shared$i.out" "$T/shared$i.err")"
done
J=$(tail -1 "$T/shared2.err")
echo "$J" | jq -e '.status == 7 and .backend == "process" and .image_size > 8000000 and .chunks_stored > 0
  and .chunks.l3 > 0 and .bytes_read > 0' >/dev/null || die "--blockd report: $J"
timings_ok "$T/timings-shared.json" && jq -e '.blockd == "shared" and any(.phases[]; .name == "blockd-attach")
  and all(.phases[]; .name != "fuse-mount")' "$T/timings-shared.json" >/dev/null ||
  die "--blockd --timings: $(cat "$T/timings-shared.json")"
rc=0; kr shared3 run:1 --blockd "$T/blockd.sock" -- sh -c 'echo override $0; exit 3' x || rc=$?
[ "$rc" = 3 ] && [ "$(cat "$T/shared3.out")" = "override x" ] || die "--blockd with a command: rc $rc, $(cat "$T/shared3.out" "$T/shared3.err")"
# The image stays attached to the serving blockd, which keeps its mount.
"$BLOCKD" --control "$T/blockd.sock" ls | grep -q "^run:1" || die "run:1 is not attached to the serving blockd"
[ -f "$T/bmnt/run:1/image.raw" ] || die "the serving blockd's mount lost run:1"
for opt in "--l1-dir $T/x" "--l2 127.0.0.1:1" "--store $T/x" "--l1-size 1G" "--no-prefetch" "--readahead 2"; do
  rc=0; kr bopt run:1 --blockd "$T/blockd.sock" $opt || rc=$?
  o=${opt%% *}
  [ "$rc" = 2 ] && grep -q -- "$o configures the cache, and with --blockd the blockd serving $T/blockd.sock owns the cache" "$T/bopt.err" &&
    [ ! -s "$T/bopt.out" ] || die "--blockd with $opt: rc $rc, $(cat "$T/bopt.out" "$T/bopt.err")"
done
rc=0; kr bnone run:1 --blockd "$T/no-such.sock" || rc=$?
[ "$rc" = 125 ] && grep -q "$T/no-such.sock" "$T/bnone.err" && [ ! -s "$T/bnone.out" ] ||
  die "--blockd with no daemon: rc $rc, $(cat "$T/bnone.err")"
rc=0; kr bimg nosuch:1 --blockd "$T/blockd.sock" || rc=$?
[ "$rc" = 125 ] && grep -q "cannot attach nosuch:1" "$T/bimg.err" || die "--blockd, unknown image: rc $rc, $(cat "$T/bimg.err")"
blockd_stop bserve
pass "--blockd: runs from the serving blockd's mount (output, exit codes, report, timings), the image stays attached; cache options, a missing daemon and an unknown image refused clearly"

# ---- the host's blockd: used on its own when one listens at $KINDLING_HOME/blockd.sock -------------------------------
HOSTSOCK=$KINDLING_HOME/blockd.sock
rc=0; kr hnone run:1 --json || rc=$?
[ "$rc" = 7 ] && tail -1 "$T/hnone.err" | jq -e '.blockd == "private" and (has("blockd_control") | not)' >/dev/null &&
  ! grep -q "not using the host's blockd" "$T/hnone.err" || die "no host blockd: rc $rc, $(cat "$T/hnone.err")"
blockd_start hserve "$T/hmnt" --store "$KINDLING_HOME/store" --l1-dir "$T/hl1" --state "$T/hstate"
[ -S "$HOSTSOCK" ] || die "blockd serve did not listen at $HOSTSOCK by default"
rc=0; kr hauto run:1 --json --timings "$T/timings-host.json" || rc=$?
[ "$rc" = 7 ] && [ "$(cat "$T/hauto.out")" = "hello from kindling: hi one two" ] &&
  tail -1 "$T/hauto.err" | jq -e --arg s "$HOSTSOCK" '.blockd == "shared" and .blockd_control == $s' >/dev/null &&
  jq -e '.blockd == "shared" and any(.phases[]; .name == "blockd-attach")' "$T/timings-host.json" >/dev/null ||
  die "the host's blockd was not used: rc $rc, $(cat "$T/hauto.out" "$T/hauto.err")"
"$BLOCKD" --control "$HOSTSOCK" ls | grep -q "^run:1" || die "run:1 is not attached to the host's blockd"
rc=0; kr hsum run:1 || rc=$?
[ "$rc" = 7 ] && grep -q "served by the running blockd at $HOSTSOCK" "$T/hsum.err" || die "summary: $(cat "$T/hsum.err")"
# What only a private blockd honours keeps the run private.
for opt in "--private-blockd" "--l1-dir $T/hx" "--no-prefetch"; do
  rc=0; kr hpriv run:1 --json $opt || rc=$?
  [ "$rc" = 7 ] && tail -1 "$T/hpriv.err" | jq -e '.blockd == "private"' >/dev/null ||
    die "$opt with a host blockd running: rc $rc, $(cat "$T/hpriv.err")"
done
rc=0; kr hboth run:1 --blockd "$HOSTSOCK" --private-blockd || rc=$?
[ "$rc" = 2 ] && grep -q -- "--private-blockd starts one for this run: give one of them" "$T/hboth.err" ||
  die "--blockd with --private-blockd: rc $rc, $(cat "$T/hboth.err")"
# private_refused TAG WHAT: a run that must refuse the host's blockd, saying WHAT, and run privately.
private_refused() {
  local rc=0
  kr "$1" run:1 --json || rc=$?
  [ "$rc" = 7 ] && [ "$(cat "$T/$1.out")" = "hello from kindling: hi one two" ] &&
    grep -q "not using the host's blockd: .*$2.*; running with a private blockd" "$T/$1.err" &&
    tail -1 "$T/$1.err" | jq -e '.blockd == "private"' >/dev/null || die "$1: rc $rc, $(cat "$T/$1.out" "$T/$1.err")"
}
mode=$(stat -c %a "$HOSTSOCK")
chmod 0666 "$HOSTSOCK"
private_refused hmode "$HOSTSOCK is owned by uid 0 with mode 0666"
chmod "$mode" "$HOSTSOCK"
chown 65534 "$HOSTSOCK"
private_refused howner "$HOSTSOCK is owned by uid 65534"
chown 0 "$HOSTSOCK"
chmod 0777 "$KINDLING_HOME"
private_refused hdir "its directory is owned by uid 0 with mode 0777"
chmod 0755 "$KINDLING_HOME"
blockd_stop hserve
# A host blockd that is found and trusted but cannot attach the image (its store,
# empty, lacks it): the run prints the daemon's attach error and the fallback
# notice, then runs the image from a private blockd on $KINDLING_HOME/store.
mkdir -p "$T/emptystore"
blockd_start hempty "$T/hemnt" --store "$T/emptystore" --l1-dir "$T/heml1" --state "$T/hemstate"
[ -S "$HOSTSOCK" ] || die "the empty-store blockd serve did not listen at $HOSTSOCK"
rc=0; kr hnoimg run:1 --json || rc=$?
[ "$rc" = 7 ] && [ "$(cat "$T/hnoimg.out")" = "hello from kindling: hi one two" ] &&
  grep -q "the blockd at $HOSTSOCK cannot attach run:1" "$T/hnoimg.err" &&
  grep -q "the host's blockd at $HOSTSOCK cannot run run:1 (see above); running it with a private blockd" "$T/hnoimg.err" &&
  tail -1 "$T/hnoimg.err" | jq -e '.blockd == "private" and (has("blockd_control") | not)' >/dev/null ||
  die "a host blockd that cannot attach the image: rc $rc, $(cat "$T/hnoimg.out" "$T/hnoimg.err")"
! "$BLOCKD" --control "$HOSTSOCK" ls | grep -q "^run:1" || die "run:1 is attached to the empty-store blockd"
blockd_stop hempty
# A listener of another user, its socket file handed to root: the peer check refuses it.
# (uid 65534 must get through $T to bind there.)
mkdir -p "$T/nobody" && chown 65534 "$T/nobody" && chmod 0711 "$T"
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4); print("ready", flush=True); time.sleep(60)' \
  "$T/nobody/s.sock" >"$T/nobody.out" &
NPID=$!; track_pid $NPID
for ((i = 0; i < 100; i++)); do grep -q ready "$T/nobody.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$T/nobody.out" || die "a listener as uid 65534 did not start"
mv "$T/nobody/s.sock" "$HOSTSOCK" && chown 0 "$HOSTSOCK" && chmod 0700 "$T"
private_refused hpeer "the blockd listening on $HOSTSOCK runs as uid 65534"
kill $NPID; wait $NPID 2>/dev/null || true
# A socket nobody listens on any more (a blockd killed without cleanup).
rm -f "$HOSTSOCK"
python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$HOSTSOCK"
private_refused hstale "nothing listens on $HOSTSOCK"
rm -f "$HOSTSOCK"
pass "the host's blockd: used when it listens at \$KINDLING_HOME/blockd.sock (report and summary say so); --private-blockd and cache options stay private; a socket or directory with a bad owner or mode, another user's listener and a stale socket are refused with the reason, and the run goes on privately; so does a daemon that cannot attach the image, after its attach error"

# ---- nothing left behind -------------------------------------------------------------------------------------------
[ "$(fuse_mounts)" = 0 ] || die "FUSE mounts left: $(grep kindling-run /proc/self/mountinfo)"
[ -z "$(ls -A "$TMPDIR")" ] || die "temporary mount points left in TMPDIR: $(ls -A "$TMPDIR")"
[ -d "$KINDLING_HOME/l1" ] || die "the default L1 directory \$KINDLING_HOME/l1 was not used"
pass "no FUSE mount or mount point left; default L1 at \$KINDLING_HOME/l1"
