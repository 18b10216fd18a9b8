#!/bin/bash
# A kindling micro-VM end to end, under real KVM: inside a TCG guest with a
# working /dev/kvm (tests/nested/run.sh), kvmm boots Debian's kernel with the
# guest initramfs (scripts/guest-initramfs.sh) on an EROFS image that
# chunkify imported from an OCI image built with umoci, and
#  - with --config-file: the guest init mounts the image, runs the entrypoint
#    as the image's user "app" (uid and groups from the image's /etc/passwd
#    and /etc/group) in the requested workdir with the requested env; the
#    known file's content, stderr and exit status 7 come back over vsock to
#    the host peer (tests/tools/guest_peer.c), and kvmm exits 0 on poweroff;
#  - through the API socket, as Firecracker's getting-started guide does it
#    with curl: PUT /machine-config, /boot-source (boot_args without "quiet"),
#    /drives/rootfs, /vsock, /actions InstanceStart all answer 204; the
#    console shows the kernel's log; kindling.port=2000 on the command line
#    moves the channel to {uds_path}_2000; `sh -c 'exit 3'` comes back as 3;
#  - a command that is not in the image comes back as 127 with the init's
#    'F' message naming it, and a user that is not in it as 126; a command
#    killed by SIGTERM as 143, and it started with no signal ignored;
#  - `kindling run --isolation microvm` (the micro-VM sandbox backend, over
#    a lazily attached image on FUSE) prints the entrypoint's output and
#    exits with its status;
#  - the Runtime API through vsock: sandbox_run --isolation microvm
#    --runtime-api 9001 serves the socket on_ready hands it
#    ({uds_path}_1025); in the guest, busybox wget and nc reach
#    127.0.0.1:9001 (AWS_LAMBDA_RUNTIME_API), the guest init relays each
#    connection over its own vsock stream, and the host reads the requests
#    and answers them: 300000 bytes to the workload and 250000 from it byte
#    for byte, and a half-closed request answered;
#  - stop_fd: a workload looping forever in the VM is ended through it
#    (stopped, 137), with no kvmm and no run directory left;
#  - the guest side of a restore, acted out by the host peer (kvmm cannot
#    snapshot yet): twice, the peer drops the channel as a vsock transport
#    reset would, takes the init's new connection and sends 'S'; each time
#    the init reseeds the kernel's RNG (a failed reseed would end the run),
#    the workload reads the generation from /run/kindling/restore, the
#    image's /etc/kindling/after-restore runs as the workload's user with
#    KINDLING_RESTORE_GENERATION and its output comes back as stderr, and
#    the command's output and exit status arrive on the new connection.  Two
#    VMs restored from one snapshot diverging in getrandom() needs kvmm's
#    snapshots: that belongs to the snapshot integration test.
# The whole test takes a few minutes here (TCG).
# ctest-labels: no-asan (a QEMU guest running kvmm: minutes under emulation; kvmm's API test 62 runs under ASan); no-tsan (as no-asan; the vsock device is unit-tested under TSan)
. "$(dirname "$0")/lib.sh"
. "$KINDLING_SOURCE_DIR/tests/nested/kernel.sh"

for tool in qemu-system-x86_64 cpio gzip umoci curl objcopy; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt: qemu-system-x86, cpio, umoci, curl, binutils)"
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "a static /bin/busybox is needed (busybox-static)"
B=$KINDLING_BUILD_DIR
for prog in kvmm kindling kindling-guest-init guest_peer sandbox_run; do
  [ -x "$B/$prog" ] || die "$prog is not built in $B"
done

rc=0
kroot=$(kernel_pkg_dir) || rc=$?
[ $rc = 2 ] && skip "apt does not know linux-image-amd64 here"
[ $rc = 0 ] || die "cannot get Debian's kernel package"
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1)

# ---- the image: busybox, a known file, users, an entrypoint -----------------------------------------------------
token="kindling-nested-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cd "$T"
umoci init --layout img >/dev/null
umoci new --image img:v1
umoci unpack --image img:v1 bundle >/dev/null
R=bundle/rootfs
mkdir -p "$R"/{bin,etc,app,home/app}
cp /bin/busybox "$R/bin/busybox"
for a in sh cat id pwd echo ls env sleep true grep wget nc head tail od tr cut sha256sum; do
  ln -sf busybox "$R/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nstaff:x:50:app\n' >"$R/etc/group"
echo "$token" >"$R/etc/hello"
cat >"$R/app/entry.sh" <<'EOF'
#!/bin/sh
cat /etc/hello
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) pwd=$(pwd) greeting=$GREETING home=$HOME args=$*"
echo "to-stderr" >&2
exit 7
EOF
chmod 755 "$R/app/entry.sh"
# For the restore check: the workload waits for each generation; the hook
# says who ran it.
mkdir -p "$R/etc/kindling"
cat >"$R/etc/kindling/after-restore" <<'EOF'
#!/bin/sh
echo "hook uid=$(id -u) gen=$KINDLING_RESTORE_GENERATION pwd=$(pwd)" >&2
EOF
cat >"$R/app/restore.sh" <<'EOF'
#!/bin/sh
echo before
for want in 1 2; do
  i=0
  while [ "$(cat /run/kindling/restore 2>/dev/null)" != "$want" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  echo "gen=$(cat /run/kindling/restore 2>/dev/null)"
done
exit 5
EOF
chmod 755 "$R/etc/kindling/after-restore" "$R/app/restore.sh"
umoci repack --image img:v1 bundle >/dev/null
umoci config --image img:v1 --config.entrypoint /app/entry.sh --config.cmd one --config.env GREETING=image \
  --config.workingdir /data >/dev/null
"$CHUNKIFY" import "oci:$T/img:v1" --name nested:1 >/dev/null 2>"$T/import.err" || { cat "$T/import.err" >&2; die "chunkify import failed"; }

# ---- the payload -------------------------------------------------------------------------------------------------
P=$T/payload
mkdir -p "$P/home"
"$CHUNKIFY" export nested:1 "$P/rootfs.erofs" || die "chunkify export failed"
cp -a "$KINDLING_HOME/." "$P/home/" # the store, and the tenant key that sealed the manifest
cp "$B/kvmm" "$B/kindling" "$B/guest_peer" "$B/sandbox_run" "$(command -v curl)" "$P/"
cp "$vmlinuz" "$P/vmlinuz"
"$KINDLING_SOURCE_DIR/scripts/guest-initramfs.sh" --init "$B/kindling-guest-init" "$P/initrd.cpio.gz" "$kroot" \
  2>"$T/initramfs.log" || { cat "$T/initramfs.log" >&2; die "scripts/guest-initramfs.sh failed"; }
cat >"$P/vm.json" <<'EOF'
{
  "boot-source": { "kernel_image_path": "/payload/vmlinuz", "initrd_path": "/payload/initrd.cpio.gz" },
  "drives": [ { "drive_id": "rootfs", "path_on_host": "/payload/rootfs.erofs", "is_root_device": true, "is_read_only": true } ],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
  "vsock": { "guest_cid": 3, "uds_path": "/tmp/cfg.sock" }
}
EOF

# Runs in the TCG guest, with busybox.  Every check prints "nested-ok: ..." or
# "nested-fail: ..." and the first failure ends it.
cat >"$P/nested.sh" <<'EOF'
#!/bin/sh
token=$1
cd /payload
ok() { echo "nested-ok: $* (at $(cut -d" " -f1 /proc/uptime) s)"; }
fail() { echo "nested-fail: $*"; for f in /tmp/*.out /tmp/*.err /tmp/*.console; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done; exit 1; }
wait_sock() { i=0; while [ ! -S "$1" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; [ -S "$1" ] || fail "no socket $1"; }
# peer NAME SOCKET ARGS...: a guest_peer on SOCKET ({uds_path}_{port}) in the
# background; its pid in $peer.
peer() {
	name=$1 sock=$2; shift 2
	./guest_peer --unix "$sock" --timeout 150 --times "$@" >/tmp/$name.out 2>/tmp/$name.err &
	peer=$!
	wait_sock "$sock"
}

# 1. config file, the image's user, workdir and env, exit 7.
peer cfg /tmp/cfg.sock_1024 --user app --workdir /data --env GREETING=hi --env PATH=/bin -- /app/entry.sh one two
timeout 150 ./kvmm --no-api --config-file /payload/vm.json </dev/null >/tmp/cfg.console 2>&1
krc=$?
wait $peer; prc=$?
[ $krc = 0 ] || fail "kvmm --config-file exited $krc"
[ $prc = 7 ] || fail "exit status over vsock: $prc, want 7"
[ "$(head -1 /tmp/cfg.out)" = "$token" ] || fail "the known file came back as '$(head -1 /tmp/cfg.out)'"
want="uid=1000 gid=1000 groups=1000 50 pwd=/data greeting=hi home=/home/app args=one two"
[ "$(sed -n 2p /tmp/cfg.out)" = "$want" ] || fail "user/workdir/env: '$(sed -n 2p /tmp/cfg.out)', want '$want'"
grep -qx to-stderr /tmp/cfg.err || fail "stderr did not come back"
grep -q "guest-init: info: kindling guest init started" /tmp/cfg.console || fail "no init line on the console"
ok "config file: /etc/hello = $token, exit 7, $want; $(grep connected /tmp/cfg.err)"

# 2. Firecracker's API with curl; the console without "quiet" shows the kernel log.
./kvmm --api-sock /tmp/fc.sock </dev/null >/tmp/api.console 2>&1 &
kvmm=$!
wait_sock /tmp/fc.sock
peer api /tmp/api.sock_2000 -- sh -c 'cat /etc/hello; exit 3'
put() {
	code=$(./curl -s -o /tmp/curl.body -w '%{http_code}' --unix-socket /tmp/fc.sock -X PUT "http://localhost/$1" \
		-H 'Accept: application/json' -H 'Content-Type: application/json' -d "$2")
	[ "$code" = 204 ] || fail "PUT /$1 answered $code: $(cat /tmp/curl.body)"
}
put machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
put boot-source '{"kernel_image_path": "/payload/vmlinuz", "initrd_path": "/payload/initrd.cpio.gz", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off kindling.port=2000"}'
put drives/rootfs '{"drive_id": "rootfs", "path_on_host": "/payload/rootfs.erofs", "is_root_device": true, "is_read_only": true}'
put vsock '{"guest_cid": 3, "uds_path": "/tmp/api.sock"}'
put actions '{"action_type": "InstanceStart"}'
wait $peer; prc=$?
i=0; while kill -0 $kvmm 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
kill -0 $kvmm 2>/dev/null && { kill $kvmm; fail "kvmm (API) still running 30 s after the guest's exit status"; }
wait $kvmm; krc=$?
[ $krc = 0 ] || fail "kvmm (API) exited $krc"
[ $prc = 3 ] || fail "API boot: exit status $prc, want 3"
[ "$(cat /tmp/api.out)" = "$token" ] || fail "API boot: output '$(cat /tmp/api.out)'"
grep -q "Linux version 6" /tmp/api.console || fail "the kernel log is not on the console"
# kindling.port=2000 was used: only the peer on {uds_path}_2000 listens, and
# it got the exit status above.  (The init's own "connected ... port 2000"
# line is not grepped: without "quiet" the kernel's messages can land in the
# middle of it on the shared console.)
[ -S /tmp/api.sock_1024 ] && fail "something listened on the default port's socket"
grep -q "kindling.port=2000" /tmp/api.console || fail "the kernel's command line lacks kindling.port=2000"
grep -q "virtio_blk virtio.*\[vda\]" /tmp/api.console || fail "the console does not show /dev/vda"
grep -q "smpboot: Allowing 2 CPUs\|Brought up 1 node, 2 CPUs" /tmp/api.console || fail "the guest does not have 2 vCPUs"
ok "API: 5 PUTs answered 204, the kernel log is on the console ($(grep -c . /tmp/api.console) lines), kindling.port=2000 used, exit 3"

# 3. Failures the init reports: a missing command (127), a missing user (126).
peer nocmd /tmp/cfg.sock_1024 -- no-such-command
timeout 150 ./kvmm --no-api --config-file /payload/vm.json </dev/null >/tmp/nocmd.console 2>&1
wait $peer; prc=$?
[ $prc = 127 ] || fail "missing command: $prc, want 127"
grep -q "guest_peer: guest: no-such-command: command not found in the image" /tmp/nocmd.err || fail "no 'F' message for the missing command"
peer nouser /tmp/cfg.sock_1024 --user nobody -- /app/entry.sh
timeout 150 ./kvmm --no-api --config-file /payload/vm.json </dev/null >/tmp/nouser.console 2>&1
wait $peer; prc=$?
[ $prc = 126 ] || fail "missing user: $prc, want 126"
grep -q 'guest_peer: guest: user "nobody"' /tmp/nouser.err || fail "no 'F' message for the missing user"
ok "missing command 127 ($(grep 'guest:' /tmp/nocmd.err)), missing user 126"

# 4. A command killed by a signal: 128+15 at the peer; it started with no
#    signal ignored (PID 1 ignores SIGPIPE; the command must not inherit that).
peer sig /tmp/cfg.sock_1024 -- sh -c 'grep SigIgn /proc/self/status; kill -TERM $$'
timeout 150 ./kvmm --no-api --config-file /payload/vm.json </dev/null >/tmp/sig.console 2>&1
wait $peer; prc=$?
[ $prc = 143 ] || fail "killed by SIGTERM: $prc, want 143"
grep -q "SigIgn:[[:space:]]*0000000000000000" /tmp/sig.out || fail "the command inherited ignored signals: $(cat /tmp/sig.out)"
grep -q "code -1 signal 15" /tmp/sig.console || fail "the init did not log the signal"
ok "killed by SIGTERM: 143, no signal ignored"

# 5. kindling run --isolation microvm: a lazily attached image on FUSE.
export KINDLING_HOME=/payload/home KINDLING_KVMM=/payload/kvmm KINDLING_GUEST_KERNEL=/payload/vmlinuz \
	KINDLING_GUEST_INITRD=/payload/initrd.cpio.gz KINDLING_GUEST_BOOT_TIMEOUT=300
./kindling run nested:1 --isolation microvm </dev/null >/tmp/run.out 2>/tmp/run.err &
k=$!
i=0; while kill -0 $k 2>/dev/null && [ $i -lt 1500 ]; do sleep 0.1; i=$((i+1)); done
if kill -0 $k 2>/dev/null; then
	ps >/tmp/run-ps.out
	kill -9 $k
	fail "kindling run --isolation microvm still running after 150 s"
fi
wait $k; rc=$?
[ $rc = 7 ] || fail "kindling run --isolation microvm exited $rc, want 7: $(tail -20 /tmp/run.err)"
[ "$(head -1 /tmp/run.out)" = "$token" ] || fail "kindling run: output '$(head -1 /tmp/run.out)'"
grep -q "greeting=image .*args=one" /tmp/run.out || fail "kindling run: the image's env and cmd: $(sed -n 2p /tmp/run.out)"
ok "kindling run --isolation microvm: exit 7, $(sed -n 2p /tmp/run.out); $(grep 'first output' /tmp/run.err | head -1)"

# 6. The Runtime API through vsock, served by the caller of the micro-VM backend.
head -c 300000 /dev/urandom >/tmp/api-body
body_sum=$(sha256sum /tmp/api-body | cut -d' ' -f1)
timeout 200 ./sandbox_run /payload/rootfs.erofs --isolation microvm --json --env AWS_LAMBDA_RUNTIME_API=10.0.0.1:1 \
	--runtime-api 9001 --runtime-api-body-file /tmp/api-body --runtime-api-log /tmp/rapi.log -- sh -c '
	api=$AWS_LAMBDA_RUNTIME_API
	echo "api=$api"
	wget -qO- "http://$api/2018-06-01/runtime/invocation/next" | sha256sum | cut -d" " -f1
	head -c 125000 /dev/urandom | od -An -tx1 | tr -d " \n" >/tmp/upload
	sha256sum /tmp/upload | cut -d" " -f1
	wget -qO /dev/null --post-file=/tmp/upload "http://$api/2018-06-01/runtime/invocation/id-1/response"
	printf "GET /half-close HTTP/1.0\r\n\r\nsent-before-shutdown" | nc 127.0.0.1 "${api#*:}" | tail -c 300000 |
		sha256sum | cut -d" " -f1' </dev/null >/tmp/rapi.out 2>/tmp/rapi.err
rc=$?
[ $rc = 0 ] || fail "the Runtime API run exited $rc"
[ "$(sed -n 1p /tmp/rapi.out)" = "api=127.0.0.1:9001" ] || fail "AWS_LAMBDA_RUNTIME_API in the guest: $(sed -n 1p /tmp/rapi.out)"
[ "$(sed -n 2p /tmp/rapi.out)" = "$body_sum" ] || fail "GET through vsock: the body differs"
grep -qxF "body-sha256: $(sed -n 3p /tmp/rapi.out) 250000" /tmp/rapi.log || fail "the 250000-byte POST body did not reach the host intact"
[ "$(sed -n 4p /tmp/rapi.out)" = "$body_sum" ] || fail "the half-closed exchange: the body differs"
for want in "request: GET /2018-06-01/runtime/invocation/next HTTP/1.1" \
	"request: POST /2018-06-01/runtime/invocation/id-1/response HTTP/1.1" \
	"request: GET /half-close HTTP/1.0" "body: sent-before-shutdown"; do
	grep -qxF "$want" /tmp/rapi.log || fail "the host did not read '$want'"
done
tail -1 /tmp/rapi.err | grep -q '"api_served":3,' || fail "summary: $(tail -1 /tmp/rapi.err)"
tail -1 /tmp/rapi.err | grep -q '"memory_peak":0,' || fail "a micro-VM has no memory cgroup: $(tail -1 /tmp/rapi.err)"
ok "Runtime API over vsock: wget and nc in the guest reached 127.0.0.1:9001; 300000 bytes down, 250000 up byte for byte; a half-closed request answered"

# 7. stop_fd ends a workload that loops forever in the VM.
./sandbox_run /payload/rootfs.erofs --isolation microvm --json --timeout 300 --stop-on-signal -- \
	sh -c 'echo looping; while :; do :; done' </dev/null >/tmp/stop.out 2>/tmp/stop.err &
s=$!
i=0; while ! grep -q looping /tmp/stop.out && kill -0 $s 2>/dev/null && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
grep -q looping /tmp/stop.out || { kill -9 $s; fail "the looping workload never started"; }
kill -USR1 $s
wait $s; rc=$?
[ $rc = 137 ] || fail "stopped through stop_fd: exit $rc, want 137"
tail -1 /tmp/stop.err | grep -q '"stopped":true' || fail "not reported as stopped: $(tail -1 /tmp/stop.err)"
ps -o pid,comm >/tmp/stop-ps.out
grep -qw kvmm /tmp/stop-ps.out && fail "kvmm still running after the stop"
ls -d /tmp/kindling-vm.* >/dev/null 2>&1 && fail "a run directory was left behind: $(ls -d /tmp/kindling-vm.*)"
ok "stop_fd ended a busy loop in the micro-VM: 137, stopped, no kvmm or run directory left"

# 8. A restore, twice, acted out by the peer.
peer restore /tmp/cfg.sock_1024 --user app --workdir /data --env PATH=/bin --restore 1 --restore 2 -- /app/restore.sh
timeout 150 ./kvmm --no-api --config-file /payload/vm.json </dev/null >/tmp/restore.console 2>&1
krc=$?
wait $peer; prc=$?
[ $krc = 0 ] || fail "restore: kvmm exited $krc"
[ $prc = 5 ] || fail "restore: exit status $prc, want 5"
[ "$(tr '\n' ' ' </tmp/restore.out)" = "before gen=1 gen=2 " ] || fail "restore: output '$(cat /tmp/restore.out)'"
for g in 1 2; do
	grep -qx "hook uid=1000 gen=$g pwd=/data" /tmp/restore.err || fail "restore: the hook's output for generation $g"
	grep -q "restored from a snapshot: generation $g" /tmp/restore.console || fail "restore: the init did not log generation $g"
done
ok "restore twice: reconnected, 'S' taken, RNG reseeded, /run/kindling/restore = 1 then 2, the hook ran as uid 1000, exit 5 on the new connection"
EOF
chmod 755 "$P/nested.sh"

# ---- run it under nested KVM --------------------------------------------------------------------------------------
export NESTED_LOG=$T/console.log
rc=0
timeout 900 "$KINDLING_SOURCE_DIR/tests/nested/run.sh" --mem 1536 --smp 1 --timeout 600 --modules fuse \
  "$P" nested.sh "$token" >"$T/nested.out" 2>&1 || rc=$?
nested_outcome "$T/nested.out" $rc 8
pass "kvmm boots the guest initramfs and an imported image under nested KVM; invocation, output and exit status over vsock; Firecracker API; init failures; kindling run --isolation microvm; the Runtime API over vsock; stop_fd; the guest side of a restore"
