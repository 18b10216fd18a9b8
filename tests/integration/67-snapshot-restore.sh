#!/bin/bash
# SnapStart for `kindling run`, under real KVM: inside a TCG guest with a
# working /dev/kvm (tests/nested/run.sh), with a copy of the store (as 61
# does), `kindling run --isolation microvm --snapshot snap1` on an image
# whose entrypoint initialises (draws a random token and computes a sum),
# prints "ready", waits, then prints the token, the sum, a fresh random value
# and /run/kindling/restore:
#  - run 1 boots, snapshots at the ready line, stores snap1 (`chunkify ls`
#    lists it as a snapshot), and carries on (token, sum, no generation);
#  - runs 2 and 3 restore with the host memory tier on (the default, in its
#    default directory): no ready line (that was initialisation), the same
#    token and sum as run 1, generation 1, fresh values that differ between
#    them; run 2, the first restore on this host, fetches its memory through
#    the cache (less than the guest's RAM, none from the tier: served_by
#    "cache") and records the memory trace; run 3 is served from the tier
#    (chunks.host > 0, fewer bytes fetched than run 2) and prefetches the
#    trace (--snapshot-info, and the log's "memory served by" line);
#  - a snapshot of another command is refused, naming what differs;
#  - a vmstate of another format version (re-imported with chunkify) is
#    refused with kvmm's message, and no kvmm or run directory is left;
#  - corrupt memory chunks (with an empty L1 and --no-host-mem, so every
#    chunk is fetched) stop the restored VM with an error, and no kvmm or run
#    directory is left.
# No memcached L2 here: the guest's store and L1 are the tiers (66 covers
# the memory server over L2).
# ctest-labels: no-asan (a QEMU guest running kvmm: minutes under emulation); no-tsan (as no-asan)
. "$(dirname "$0")/lib.sh"
P=$T/payload
microvm_payload "$P" umoci

# ---- the image: an entrypoint that initialises, then reports --------------------------------------------------------
cd "$T"
umoci init --layout img >/dev/null
umoci new --image img:v1
umoci unpack --image img:v1 bundle >/dev/null
R=bundle/rootfs
mkdir -p "$R"/{bin,etc,app}
cp /bin/busybox "$R/bin/busybox"
for a in sh cat echo sleep usleep head od tr; do
  ln -sf busybox "$R/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
# Everything before "ready" is initialisation; the token and the sum live
# only in the shell's memory.  The fresh value is read after the pause.
cat >"$R/app/snap.sh" <<'EOF'
#!/bin/sh
TOKEN=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
SUM=0; i=0
while [ $i -lt 3000 ]; do SUM=$((SUM + i * i)); i=$((i + 1)); done
echo ready
# A restored run goes on once the init has taken the host's 'S' and written
# /run/kindling/restore; the run that takes the snapshot is never restored
# and goes on after 60 s.  (A fixed sleep raced the restore: a loaded host
# once had the restored VM wake from a 5 s sleep before the init reconnected.)
i=0
while [ ! -e /run/kindling/restore ] && [ $i -lt 600 ]; do usleep 100000; i=$((i + 1)); done
FRESH=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "token=$TOKEN sum=$SUM fresh=$FRESH gen=$(cat /run/kindling/restore 2>/dev/null || echo none)"
EOF
chmod 755 "$R/app/snap.sh"
umoci repack --image img:v1 bundle >/dev/null
umoci config --image img:v1 --config.entrypoint /app/snap.sh >/dev/null
"$CHUNKIFY" import "oci:$T/img:v1" --name snapimg:1 >/dev/null 2>"$T/import.err" || { cat "$T/import.err" >&2; die "chunkify import failed"; }

# ---- the payload -------------------------------------------------------------------------------------------------
mkdir -p "$P/home"
cp -a "$KINDLING_HOME/." "$P/home/" # the store, and the tenant key that sealed the manifest

# Runs in the TCG guest, with busybox.  Every check prints "nested-ok: ..." or
# "nested-fail: ..." and the first failure ends it.
cat >"$P/nested.sh" <<'EOF'
#!/bin/sh
cd /payload
export KINDLING_HOME=/payload/home KINDLING_KVMM=/payload/kvmm KINDLING_GUEST_KERNEL=/payload/vmlinuz \
	KINDLING_GUEST_INITRD=/payload/initrd.cpio.gz KINDLING_GUEST_BOOT_TIMEOUT=300 LD_LIBRARY_PATH=/payload/lib
ok() { echo "nested-ok: $* (at $(cut -d" " -f1 /proc/uptime) s)"; }
fail() { echo "nested-fail: $*"; for f in /tmp/*.out /tmp/*.err /tmp/*.json; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done; exit 1; }
# krun NAME ARGS...: kindling run in the background, bounded; rc in $rc.
krun() {
	name=$1; shift
	./kindling run snapimg:1 --isolation microvm --memory 256M "$@" </dev/null >/tmp/$name.out 2>/tmp/$name.err &
	k=$!
	i=0; while kill -0 $k 2>/dev/null && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
	if kill -0 $k 2>/dev/null; then
		ps >/tmp/$name-ps.out
		kill -9 $k
		fail "$name: kindling run still running after 300 s"
	fi
	wait $k; rc=$?
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" "$2"; }
num() { grep -o "\"$1\": [0-9.e+-]*" "$2" | head -1 | sed 's/.*: //'; }
nothing_left() {
	[ -z "$(ls /tmp | grep kindling-vm)" ] || fail "$1: a run directory was left: $(ls /tmp)"
	[ -z "$(ls /tmp | grep kindling-snap)" ] || fail "$1: a snapshot directory was left: $(ls /tmp)"
	ps | grep -v grep | grep -q '/payload/kvmm' && fail "$1: a kvmm still runs: $(ps)"
	return 0
}

# 1. Boot and snapshot at the ready line.
krun run1 --snapshot snap1 --snapshot-info /tmp/i1.json
[ $rc = 0 ] || fail "run 1 exited $rc: $(tail -20 /tmp/run1.err)"
[ "$(head -1 /tmp/run1.out)" = ready ] || fail "run 1: no ready line first: $(cat /tmp/run1.out)"
grep -q "snapshot snap1 taken" /tmp/run1.err || fail "run 1 took no snapshot: $(cat /tmp/run1.err)"
grep -q '"action": "created"' /tmp/i1.json || fail "run 1: --snapshot-info: $(cat /tmp/i1.json)"
./chunkify ls | grep -Eq '^snap1(:latest)? +snapshot ' || fail "chunkify ls does not list snap1 as a snapshot: $(./chunkify ls)"
T1=$(field token /tmp/run1.out); S1=$(field sum /tmp/run1.out); F1=$(field fresh /tmp/run1.out)
[ -n "$T1" ] && [ "$S1" = 8995500500 ] && [ "$(field gen /tmp/run1.out)" = none ] || fail "run 1: $(cat /tmp/run1.out)"
nothing_left "run 1"
ok "run 1 booted, snapshotted at its ready line and stored snap1 (a snapshot in chunkify ls); token $T1 sum $S1"

# 2 and 3. Restore twice, with the host memory tier on by default.
for n in 2 3; do
	krun run$n --snapshot snap1 --snapshot-info /tmp/i$n.json
	[ $rc = 0 ] || fail "run $n exited $rc: $(tail -20 /tmp/run$n.err)"
	grep -q ready /tmp/run$n.out && fail "run $n printed the ready line again: $(cat /tmp/run$n.out)"
	[ "$(field token /tmp/run$n.out)" = "$T1" ] && [ "$(field sum /tmp/run$n.out)" = "$S1" ] ||
		fail "run $n: not the snapshot's token and sum: $(cat /tmp/run$n.out)"
	[ "$(field gen /tmp/run$n.out)" = 1 ] || fail "run $n: generation: $(cat /tmp/run$n.out)"
	grep -q '"action": "restored"' /tmp/i$n.json || fail "run $n: --snapshot-info: $(cat /tmp/i$n.json)"
	grep -q '"host_mem": "/dev/shm/kindling-0/snapshot-mem/' /tmp/i$n.json ||
		fail "run $n: the host memory tier is not on in its default directory: $(cat /tmp/i$n.json)"
	grep -q "memory served by" /tmp/run$n.err || fail "run $n: no 'memory served by' log line: $(cat /tmp/run$n.err)"
	nothing_left "run $n"
done
f2=$(num bytes_fetched /tmp/i2.json); m=$(num memory_size /tmp/i2.json); f3=$(num bytes_fetched /tmp/i3.json)
[ -n "$f2" ] && [ -n "$m" ] && [ "$f2" -gt 0 ] && [ "$f2" -lt "$m" ] || fail "run 2 fetched $f2 of $m bytes"
grep -q '"host": 0,' /tmp/i2.json && grep -q '"served_by": "cache"' /tmp/i2.json ||
	fail "run 2, the first restore on this host, was not served through the cache alone: $(cat /tmp/i2.json)"
h3=$(num host /tmp/i3.json)
[ -n "$h3" ] && [ "$h3" -gt 0 ] && [ -n "$f3" ] && [ "$f3" -lt "$f2" ] && grep -q '"served_by": "host' /tmp/i3.json ||
	fail "run 3 was not served from the host memory tier (host chunks $h3, fetched $f3 after $f2): $(cat /tmp/i3.json)"
F2=$(field fresh /tmp/run2.out); F3=$(field fresh /tmp/run3.out)
[ -n "$F2" ] && [ -n "$F3" ] && [ "$F2" != "$F3" ] && [ "$F2" != "$F1" ] || fail "fresh values: $F1 $F2 $F3"
grep -q '"trace": "recorded"' /tmp/i2.json || fail "run 2 recorded no trace: $(cat /tmp/i2.json)"
grep -q '"trace": "prefetched"' /tmp/i3.json && [ "$(num chunks_prefetched /tmp/i3.json)" -gt 0 ] ||
	fail "run 3 did not prefetch the trace: $(cat /tmp/i3.json)"
ok "runs 2 and 3 restored: token and sum of run 1, generation 1, fresh $F2 and $F3; run 2 fetched $f2 of $m bytes through the cache; run 3 took $h3 chunks from the host memory tier, fetched $f3 bytes and prefetched $(num chunks_prefetched /tmp/i3.json) chunks"

# 4. Another command is refused.
krun other --snapshot snap1 -- /bin/echo hi
[ $rc = 125 ] && grep -q "the command differs" /tmp/other.err || fail "another command: rc $rc, $(cat /tmp/other.err)"
nothing_left "another command"
ok "a snapshot of another command is refused: $(grep 'differs' /tmp/other.err | head -1)"

# 5. A vmstate of another format version.
./chunkify export snap1 /tmp/m.mem --vmstate /tmp/v.vmstate >/dev/null || fail "chunkify export snap1"
printf '\011\000\000\000' | dd of=/tmp/v.vmstate bs=1 seek=8 conv=notrunc 2>/dev/null
./chunkify snapshot-import snapv9 --mem /tmp/m.mem --vmstate /tmp/v.vmstate --from snapimg:1 >/dev/null 2>/tmp/imp9.err ||
	fail "snapshot-import snapv9: $(cat /tmp/imp9.err)"
rm -f /tmp/m.mem /tmp/v.vmstate
krun v9 --snapshot snapv9
[ $rc = 125 ] && grep -q "version 9" /tmp/v9.err || fail "another format version: rc $rc, $(cat /tmp/v9.err)"
[ -s /tmp/v9.out ] && fail "another format version: the workload ran: $(cat /tmp/v9.out)"
nothing_left "another format version"
ok "a vmstate of another format version is refused: $(grep 'version 9' /tmp/v9.err | head -1)"

# 6. Corrupt memory chunks, with an L1 that has none of them and the host
# memory tier off (it holds the good bytes of runs 2 and 3).
./chunkify inspect snap1 --chunks --json >/tmp/ins.json || fail "chunkify inspect snap1"
mc=$(grep -o '"memory_chunks":[0-9]*' /tmp/ins.json | sed 's/.*://')
n=0
for c in $(grep -o '"index":[0-9]*,"name":"[0-9a-f]*"' /tmp/ins.json | sed 's/"index":\([0-9]*\),"name":"\(.*\)"/\1:\2/'); do
	[ "${c%%:*}" -lt "$mc" ] || continue
	printf 'ZZZZZZZZZZZZZZZZ' | dd of=/payload/home/store/chunks/${c#*:} bs=1 seek=1000 conv=notrunc 2>/dev/null
	n=$((n + 1))
done
[ $n -gt 0 ] || fail "no memory chunk to corrupt: $(cat /tmp/ins.json)"
krun bad --snapshot snap1 --l1-dir /tmp/l1-empty --no-host-mem
[ $rc = 125 ] && grep -q "failed verification" /tmp/bad.err && grep -q "memory could not be served" /tmp/bad.err ||
	fail "corrupt memory chunks: rc $rc, $(cat /tmp/bad.err)"
nothing_left "corrupt memory chunks"
ok "corrupt memory chunks ($n) stop the restored VM: $(grep 'failed verification' /tmp/bad.err | head -1 | cut -c1-160)"
EOF
chmod 755 "$P/nested.sh"

# ---- run it under nested KVM --------------------------------------------------------------------------------------
export NESTED_LOG=$T/console.log
rc=0
timeout 1200 "$KINDLING_SOURCE_DIR/tests/nested/run.sh" --mem 1536 --smp 1 --timeout 900 --modules fuse \
  "$P" nested.sh >"$T/nested.out" 2>&1 || rc=$?
nested_outcome "$T/nested.out" $rc 5
pass "kindling run --snapshot under nested KVM: boot and snapshot at the ready line, two lazy restores (same init, fresh randomness, generation 1): the first fetched through the cache (less than the RAM) and recorded its trace, the second served from the host memory tier and prefetched, refusals of another command, another vmstate version and corrupt memory chunks"
