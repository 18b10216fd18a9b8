#!/bin/bash
# kvmm's snapshots on a real KVM, inside a TCG guest with a working /dev/kvm
# (tests/nested/run.sh), driven through Firecracker's API with curl:
#  - kvmm A boots a busybox guest whose init draws a random token into a shell
#    variable (guest memory only) and runs a shell on the serial console; the
#    guest reads /dev/vda; a console line four times the UART's FIFO,
#    written at once, arrives whole; PATCH /vm Paused, GET / says "Paused", PUT
#    /snapshot/create writes the vmstate file (KVMMSNAP header) and a memory
#    file of the RAM size that is sparse; PATCH /vm Resumed: guest A runs
#    on; kvmm A is killed;
#  - kvmm B loads the snapshot with the File backend and resume_vm: the guest
#    continues: its shell prints the token only the snapshotted guest had,
#    runs new commands, is snapshotted again, reads all of /dev/vda through
#    virtio-blk (hash equal to the host's) and powers off (kvmm exits 0);
#  - a snapshot to a missing directory is a 400 that leaves no file behind;
#  - the VM has a vsock device: a restore listens on its uds_path again and
#    posts the transport reset to the guest's driver;
#  - kvmm D first refuses, each with a 400 naming the file and the fault and
#    still "Not started": a truncated vmstate, a flipped byte (checksum),
#    another format version, a vsock uds_path that exists, a Uffd socket
#    nobody listens on, a memory file of the wrong size, a drive_overrides
#    entry for a drive the snapshot lacks, an overriding drive of another
#    size; then loads B's snapshot with the Uffd backend through
#    uffd_file_handler, paused (resume_vm false), its drive's file moved and
#    its vsock path taken, with vsock_override and drive_overrides giving the
#    new ones: a command typed while
#    paused runs after PATCH /vm Resumed; the token and /dev/vda as above;
#    the handler served fewer pages than the guest's RAM;
#  - kvmm E refuses /snapshot/load after PUT /machine-config.
# ctest-labels: no-asan (a QEMU guest running kvmm: minutes under emulation); no-tsan (as no-asan)
. "$(dirname "$0")/lib.sh"
. "$KINDLING_SOURCE_DIR/tests/nested/kernel.sh"

for tool in qemu-system-x86_64 cpio gzip sha256sum objcopy curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt: qemu-system-x86, cpio, binutils, curl)"
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "a static /bin/busybox is needed (busybox-static)"
KVMM=$KINDLING_BUILD_DIR/kvmm
HANDLER=$KINDLING_BUILD_DIR/uffd_file_handler
[ -x "$KVMM" ] || die "kvmm not built at $KVMM"
[ -x "$HANDLER" ] || die "uffd_file_handler not built at $HANDLER"

rc=0
kroot=$(kernel_pkg_dir) || rc=$?
[ $rc = 2 ] && skip "apt does not know linux-image-amd64 here"
[ $rc = 0 ] || die "cannot get Debian's kernel package"
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1)

# ---- the inner guest: busybox, virtio-blk, a token in memory, a console shell ----
I=$T/inner P=$T/payload
mkdir -p "$P"
kernel_inner_root "$kroot" "$I" virtio_mmio virtio_blk vmw_vsock_virtio_transport || die "cannot set up the guest's root and modules"
cat >"$I/init" <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "$m" || echo "GUEST: insmod $m failed"; done </modules.order
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
# Only in this guest's memory: a restored guest can know it, nobody else.
TOKEN=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
export TOKEN
echo "GUEST: token $TOKEN"
echo "GUEST: shell ready"
exec sh
EOF
chmod 755 "$I/init"
(cd "$I" && find . -print0 | cpio --null -o -H newc --quiet | gzip) >"$P/initrd.gz" || die "cpio failed"
head -c 2097152 /dev/urandom >"$P/data.img"
sha256sum <"$P/data.img" | awk '{print $1}' >"$P/vda.sum"
cp "$vmlinuz" "$P/vmlinuz"
cp "$KVMM" "$HANDLER" "$(command -v curl)" "$P/"

# Runs inside the outer guest; prints "OK <what>" per check, "FAIL <what>"
# on the first failure (then stops).  Each console command waits for the
# previous one's output; one is longer than the UART's 64-byte FIFO, which
# kvmm must hold back, not drop, until the guest reads.
cat >"$P/run.sh" <<'EOF'
#!/bin/sh
K="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd"
VDA=$(cat vda.sum)
S=/tmp/snap.vmstate M=/tmp/snap.mem S2=/tmp/snap2.vmstate M2=/tmp/snap2.mem
# fail WHAT: the logs, and where each kvmm thread waits (a hung API call
# shows there), then stop.
fail() {
	echo "FAIL $*"
	for f in /tmp/out-* /tmp/err-* /tmp/uffd.out; do [ -f "$f" ] && sed "s|^|$f: |" "$f" | tail -40; done
	for p in $(pidof kvmm); do
		for t in /proc/$p/task/*; do echo "kvmm $p thread ${t##*/} $(cat $t/comm) state $(cut -d' ' -f3 $t/stat) in $(cat $t/wchan)"; done
	done
	exit 1
}
ok() { echo "OK $*"; }
# api NAME METHOD PATH [BODY]: sets CODE and BODY (000 if kvmm gave no answer
# within two minutes).
api() {
	if [ $# -ge 4 ]; then
		CODE=$(./curl -m 120 -s -o /tmp/body -w '%{http_code}' --unix-socket /tmp/$1.sock -X "$2" -H 'Content-Type: application/json' -d "$4" "http://localhost$3")
	else
		CODE=$(./curl -m 120 -s -o /tmp/body -w '%{http_code}' --unix-socket /tmp/$1.sock -X "$2" "http://localhost$3")
	fi
	BODY=$(cat /tmp/body)
}
must() { # STATUS NAME METHOD PATH [BODY]
	want=$1; shift
	api "$@"
	[ "$CODE" = "$want" ] || fail "$2 $3 on kvmm $1: $CODE $BODY (want $want)"
}
refused() { # PATTERN1 PATTERN2 NAME BODY: a /snapshot/load refusal naming both
	api "$3" PUT /snapshot/load "$4"
	[ "$CODE" = 400 ] || fail "load ($1) answered $CODE $BODY"
	echo "$BODY" | grep -q '"fault_message"' || fail "load ($1): not a fault_message: $BODY"
	echo "$BODY" | grep -q -- "$1" || fail "load: $BODY lacks $1"
	echo "$BODY" | grep -q -- "$2" || fail "load: $BODY lacks $2"
	echo "REFUSED $BODY"
	must 200 "$3" GET /
	echo "$BODY" | grep -q '"state":"Not started"' || fail "after a refused load kvmm $3 is not Not started: $BODY"
}
waitfor() { # FILE PATTERN SECONDS
	i=0
	while [ $i -lt $(($3 * 10)) ]; do
		grep -aq -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1; i=$((i + 1))
	done
	return 1
}
# start NAME: kvmm with its API at /tmp/NAME.sock and its console input on
# a FIFO (the caller opens its write end).
start() {
	rm -f /tmp/$1.sock
	mkfifo /tmp/in-$1
	./kvmm --api-sock /tmp/$1.sock --id $1 --level Info </tmp/in-$1 >/tmp/out-$1.txt 2>/tmp/err-$1.txt &
	eval "PID_$1=\$!"
}
# continues NAME FD: the guest restored in kvmm NAME (console input on FD)
# prints the token only the snapshotted guest had, reads all of /dev/vda,
# and powers off, and that kvmm exits 0.
continues() {
	echo 'echo AFTER-$TOKEN' >&$2
	waitfor /tmp/out-$1.txt "AFTER-$TOK" 60 || fail "restored guest $1 did not print the token"
	echo 'sha256sum </dev/vda' >&$2
	waitfor /tmp/out-$1.txt "$VDA" 60 || fail "restored guest $1 read /dev/vda wrong or not at all"
	echo 'poweroff -f' >&$2
	eval "wait \$PID_$1"
	rc=$?
	[ $rc = 0 ] || fail "kvmm $1 exited $rc after the restored guest powered off"
}
waitsock() { i=0; while [ ! -S /tmp/$1.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done; }

# ---- A: boot, pause, snapshot ------------------------------------------------
start a
exec 3>/tmp/in-a
waitsock a
must 204 a PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
must 204 a PUT /boot-source "{\"kernel_image_path\": \"vmlinuz\", \"initrd_path\": \"initrd.gz\", \"boot_args\": \"$K\"}"
must 204 a PUT /drives/data '{"drive_id": "data", "path_on_host": "data.img", "is_root_device": false, "is_read_only": true}'
must 204 a PUT /vsock '{"guest_cid": 3, "uds_path": "/tmp/v.sock"}'
must 204 a PUT /actions '{"action_type": "InstanceStart"}'
waitfor /tmp/out-a.txt "shell ready" 120 || fail "guest A did not reach its shell"
TOK=$(grep -a "GUEST: token" /tmp/out-a.txt | sed 's/.*token //' | tr -d '\r')
[ -n "$TOK" ] || fail "no token from guest A"
echo 'echo BEFORE-$TOKEN $(head -c 65536 /dev/vda | wc -c)' >&3
waitfor /tmp/out-a.txt "BEFORE-$TOK 65536" 60 || fail "guest A's shell did not answer"
ok "guest A runs, token $TOK, read /dev/vda"
LONG=$(printf '%0240d' 0 | tr 0 k)
echo "echo LONG-$LONG-\$TOKEN" >&3
waitfor /tmp/out-a.txt "LONG-$LONG-$TOK" 60 || fail "a console line of four FIFOs' length lost bytes on the way in"
ok "a console line of $((${#LONG} + 17)) bytes, written at once, reached the guest whole"
must 204 a PATCH /vm '{"state": "Paused"}'
must 200 a GET /
echo "$BODY" | grep -q '"state":"Paused"' || fail "GET / while paused: $BODY"
# A failed snapshot leaves nothing under either name, and the VM paused.
api a PUT /snapshot/create "{\"snapshot_path\": \"$S\", \"mem_file_path\": \"/nonexistent/snap.mem\"}"
[ "$CODE" = 400 ] && echo "$BODY" | grep -q "/nonexistent/snap.mem" || fail "snapshot to a missing directory: $CODE $BODY"
[ ! -e $S ] || fail "a failed snapshot left $S behind"
ls /tmp | grep -q 'tmp-' && fail "a failed snapshot left temporary files: $(ls /tmp)"
echo "REFUSED $BODY"
must 204 a PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$S\", \"mem_file_path\": \"$M\"}"
[ "$(head -c 8 $S)" = KVMMSNAP ] || fail "the vmstate file lacks its magic"
[ "$(stat -c %s $M)" = 268435456 ] || fail "the memory file is $(stat -c %s $M) bytes, not 256 MiB"
used=$(du -k $M | cut -f1)
[ "$used" -lt 262144 ] || fail "the memory file is not sparse: $used KiB used"
ls /tmp | grep -q 'tmp-' && fail "temporary files left: $(ls /tmp)"
ok "paused; snapshot written: $(stat -c %s $S)-byte vmstate, 256 MiB memory file using $used KiB"
must 204 a PATCH /vm '{"state": "Resumed"}'
echo 'echo STILL-$TOKEN' >&3
waitfor /tmp/out-a.txt "STILL-$TOK" 60 || fail "guest A did not run on after its snapshot"
ok "the snapshotted guest resumes and runs on"
kill -9 $PID_a
wait $PID_a 2>/dev/null
exec 3>&-
# The vsock socket of the killed kvmm stays; a restore refuses to reuse it
# (kvmm D below shows it), so it goes.
rm -f /tmp/v.sock

# ---- B: restore from the file, resume at once ----------------------------------
start b
exec 4>/tmp/in-b
waitsock b
must 204 b PUT /snapshot/load "{\"snapshot_path\": \"$S\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}, \"resume_vm\": true}"
must 200 b GET /
echo "$BODY" | grep -q '"state":"Running"' || fail "GET / after a resumed load: $BODY"
must 200 b GET /vm/config
echo "$BODY" | grep -q '"mem_size_mib":256' || fail "GET /vm/config after load: $BODY"
grep -aq "transport was reset" /tmp/err-b.txt || fail "kvmm B did not post the vsock transport reset"
[ -S /tmp/v.sock ] || fail "restored kvmm B does not listen on the vsock uds_path again"
# A restored VM snapshots again (its RAM a private mapping of the first
# memory file); kvmm D restores that second snapshot.
echo 'echo B-RUNS-$TOKEN' >&4
waitfor /tmp/out-b.txt "B-RUNS-$TOK" 60 || fail "restored guest B did not answer"
must 204 b PATCH /vm '{"state": "Paused"}'
must 204 b PUT /snapshot/create "{\"snapshot_path\": \"$S2\", \"mem_file_path\": \"$M2\"}"
must 204 b PATCH /vm '{"state": "Resumed"}'
[ "$(head -c 8 $S2)" = KVMMSNAP ] && [ "$(stat -c %s $M2)" = 268435456 ] || fail "the second snapshot's files are wrong"
continues b 4
exec 4>&-
ok "File restore: the guest continues with its token, snapshots again, reads all of /dev/vda, powers off; kvmm B exits 0; vsock listens again and posted the transport reset"

# ---- D: refusals, then restore through the Uffd handler, paused ----------------
start d
exec 5>/tmp/in-d
waitsock d
head -c 3000 $S >/tmp/trunc.vmstate
refused /tmp/trunc.vmstate truncated d "{\"snapshot_path\": \"/tmp/trunc.vmstate\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}}"
cp $S /tmp/flip.vmstate
printf 'ZZ' | dd of=/tmp/flip.vmstate bs=1 seek=300 conv=notrunc 2>/dev/null
refused /tmp/flip.vmstate checksum d "{\"snapshot_path\": \"/tmp/flip.vmstate\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}}"
cp $S /tmp/v9.vmstate
printf '\011\000\000\000' | dd of=/tmp/v9.vmstate bs=1 seek=8 conv=notrunc 2>/dev/null
refused /tmp/v9.vmstate "version 9" d "{\"snapshot_path\": \"/tmp/v9.vmstate\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}}"
: >/tmp/v.sock
refused /tmp/v.sock "exists" d "{\"snapshot_path\": \"$S\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}}"
rm -f /tmp/v.sock
refused /tmp/nobody.sock "page-fault handler" d "{\"snapshot_path\": \"$S\", \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"/tmp/nobody.sock\"}}"
truncate -s 128M /tmp/small.mem
refused /tmp/small.mem "wrong memory file" d "{\"snapshot_path\": \"$S\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"/tmp/small.mem\"}}"
refused 'drive_overrides\[0\]' 'its drives: data'  d "{\"snapshot_path\": \"$S\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}, \"drive_overrides\": [{\"drive_id\": \"nodrive\", \"path_on_host\": \"data.img\"}]}"
head -c 4096 data.img >/tmp/short.img
refused "bytes now" "when the snapshot was taken" d "{\"snapshot_path\": \"$S\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$M\"}, \"drive_overrides\": [{\"drive_id\": \"data\", \"path_on_host\": \"/tmp/short.img\"}]}"
[ ! -e /tmp/v.sock ] || fail "a refused load left the vsock socket behind"
ok "refused before any vCPU ran, each naming the file and the fault; kvmm D stays Not started"
./uffd_file_handler /tmp/uffd.sock $M2 >/tmp/uffd.out 2>&1 &
HPID=$!
i=0; while [ ! -S /tmp/uffd.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
# The saved paths are gone or taken: the drive's file has moved and a file
# sits on the saved vsock path.  The overrides give the restore new ones.
mv data.img /tmp/data-moved.img
: >/tmp/v.sock
must 204 d PUT /snapshot/load "{\"snapshot_path\": \"$S2\", \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"/tmp/uffd.sock\"}, \"resume_vm\": false, \"vsock_override\": {\"uds_path\": \"/tmp/v2.sock\"}, \"drive_overrides\": [{\"drive_id\": \"data\", \"path_on_host\": \"/tmp/data-moved.img\"}]}"
[ -S /tmp/v2.sock ] || fail "kvmm D does not listen on the overriding vsock uds_path"
must 200 d GET /vm/config
echo "$BODY" | grep -q '/tmp/data-moved.img' && echo "$BODY" | grep -q '/tmp/v2.sock' || fail "GET /vm/config after a load with overrides: $BODY"
ok "vsock_override and drive_overrides: the restore opens the moved drive and listens on the new socket"
must 200 d GET /
echo "$BODY" | grep -q '"state":"Paused"' || fail "GET / after a paused load: $BODY"
echo 'echo QUEUED-$TOKEN' >&5
must 204 d PATCH /vm '{"state": "Resumed"}'
must 200 d GET /
echo "$BODY" | grep -q '"state":"Running"' || fail "GET / after resume: $BODY"
waitfor /tmp/out-d.txt "QUEUED-$TOK" 60 || fail "guest D did not run the command typed while it was paused"
continues d 5
exec 5>&-
ok "Uffd restore, paused then resumed: the typed command runs; token, /dev/vda and poweroff as above"
wait $HPID || fail "uffd_file_handler failed"
cat /tmp/uffd.out
served=$(sed -n 's/.*served \([0-9]*\) pages.*/\1/p' /tmp/uffd.out)
[ -n "$served" ] || fail "the handler did not report its pages"
[ "$served" -gt 0 ] && [ "$served" -lt 65536 ] || fail "the handler served $served pages of 65536"
ok "the handler served $served of 65536 pages and saw kvmm's exit"

# ---- E: load after configuration -------------------------------------------------
start e
exec 6>/tmp/in-e
waitsock e
must 204 e PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
api e PUT /snapshot/load "{\"snapshot_path\": \"$S\", \"mem_file_path\": \"$M\"}"
[ "$CODE" = 400 ] && echo "$BODY" | grep -q "after configuring" || fail "load after configuration: $CODE $BODY"
must 200 e GET /
ok "load after PUT /machine-config is refused"
kill $PID_e
exec 6>&-
echo "ALL-DONE"
EOF
chmod 755 "$P/run.sh"

NESTED_LOG=$T/nested.log bash "$KINDLING_SOURCE_DIR/tests/nested/run.sh" --mem 1536 --smp 2 --timeout 800 "$P" run.sh \
  >"$T/run.out" 2>&1 || { grep -a "FAIL\|REFUSED\|OK " "$T/nested.log" >&2; tail -60 "$T/run.out" >&2; die "the nested run failed"; }
L=$T/nested.log
grep -a "^REFUSED " "$L" || true
grep -aq "^ALL-DONE" "$L" || { tail -60 "$L" >&2; die "the nested script did not finish"; }
while read -r line; do pass "${line#OK }"; done < <(grep -a "^OK " "$L" | tr -d '\r')
