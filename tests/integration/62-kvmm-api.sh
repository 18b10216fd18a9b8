#!/bin/bash
# kvmm's Firecracker-compatible API, driven by curl over a unix socket (no
# /dev/kvm needed):
#  - kvmm_api_server runs the real API code with hooks that record what a VM
#    would be given: the routes, Firecracker's status codes and
#    {"fault_message"} bodies, unknown fields refused, pre-boot resources
#    refused after InstanceStart, SendCtrlAltDel, keep-alive (curl reuses its
#    connection), Expect: 100-continue (curl sends it for bodies over 1 KiB),
#    a stuck client that cannot hold the API, and a --config-file boot;
#  - the snapshot routes: PATCH /vm Paused/Resumed only once running,
#    PUT /snapshot/create only while paused ("Diff" refused), PUT
#    /snapshot/load only on a fresh API (File and Uffd backends, the
#    deprecated mem_file_path), GET / showing "Paused", unknown fields refused;
#  - the real kvmm binary answers InstanceStart on a host without /dev/kvm
#    with a 400 whose fault_message names /dev/kvm, and stays "Not started"
#    (with /dev/kvm, the placeholder kernel makes it fail instead).
# ctest-labels: no-tsan (the API server is one thread; the vsock device is unit-tested under TSan)
. "$(dirname "$0")/lib.sh"

for tool in curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt: curl, python3)"
done
SERVER=$TOOLS_DIR/kvmm_api_server
KVMM=$TOOLS_DIR/kvmm
[ -x "$SERVER" ] || die "kvmm_api_server not built at $SERVER"
[ -x "$KVMM" ] || die "kvmm not built at $KVMM"

SOCK=$T/api.sock
CALLS=$T/calls.log
: >"$CALLS"

# api METHOD PATH [BODY]: prints "STATUS BODY"; curl's own limits bound it.
api() {
  local out=$T/resp.body code
  if [ $# -ge 3 ]; then
    code=$(curl -sS --max-time 10 --unix-socket "$SOCK" -o "$out" -w '%{http_code}' -X "$1" \
      -H 'Content-Type: application/json' --data-binary "$3" "http://localhost$2")
  else
    code=$(curl -sS --max-time 10 --unix-socket "$SOCK" -o "$out" -w '%{http_code}' -X "$1" "http://localhost$2")
  fi
  printf '%s %s\n' "$code" "$(cat "$out")"
}

# expect STATUS PATTERN METHOD PATH [BODY]
expect() {
  local want=$1 pat=$2 got
  shift 2
  got=$(api "$@")
  [ "${got%% *}" = "$want" ] || die "$1 $2: status ${got%% *}, want $want (body: ${got#* })"
  if [ -n "$pat" ]; then
    grep -q -- "$pat" <<<"${got#* }" || die "$1 $2: body ${got#* } lacks $pat"
  fi
}

# A 400 must carry exactly Firecracker's error shape.
expect_fault() {
  local pat=$1 got
  shift
  got=$(api "$@")
  [ "${got%% *}" = 400 ] || die "$1 $2: status ${got%% *}, want 400 (body: ${got#* })"
  python3 - "${got#* }" "$pat" <<'PY' || die "$1 $2: not a Firecracker error body: ${got#* }"
import json, sys
b = json.loads(sys.argv[1])
assert list(b) == ["fault_message"] and isinstance(b["fault_message"], str), b
assert sys.argv[2] in b["fault_message"], (sys.argv[2], b)
PY
}

wait_sock() {
  local i
  for ((i = 0; i < 100; i++)); do
    [ -S "$1" ] && return 0
    sleep 0.1
  done
  die "no API socket at $1 after 10s"
}

# ---- the API with recording hooks ------------------------------------------------
"$SERVER" "$SOCK" "$CALLS" --fail-start "cannot open /dev/kvm: No such file or directory" 2>"$T/server.err" &
SPID=$!
track_pid $SPID
wait_sock "$SOCK"
[ "$(stat -c %a "$SOCK")" = 600 ] || die "API socket mode $(stat -c %a "$SOCK"), want 600"

got=$(api GET /)
[ "${got%% *}" = 200 ] || die "GET /: $got"
python3 - "${got#* }" <<'PY' || die "GET / body: ${got#* }"
import json, sys
b = json.loads(sys.argv[1])
assert b["state"] == "Not started" and b["id"] and b["vmm_version"] and b["app_name"], b
PY
expect 200 '"mem_size_mib":128' GET /machine-config
expect 204 '' PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false}'
expect 200 '"vcpu_count":2' GET /machine-config
pass "GET /, GET and PUT /machine-config"

expect_fault 'unknown field "mem_size"' PUT /machine-config '{"vcpu_count": 2, "mem_size": 256}'
expect_fault 'vcpu_count' PUT /machine-config '{"vcpu_count": 64, "mem_size_mib": 256}'
expect_fault 'smt' PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256, "smt": true}'
expect_fault 'invalid JSON' PUT /machine-config '{"vcpu_count": 2,'
expect_fault 'Invalid request method and/or path: GET /balloon' GET /balloon
expect_fault 'Invalid request method and/or path: PATCH /machine-config' PATCH /machine-config '{}'
expect_fault 'does not match' PUT /drives/rootfs '{"drive_id": "data", "path_on_host": "/x", "is_root_device": false}'
expect_fault 'guest_cid' PUT /vsock '{"guest_cid": 2, "uds_path": "/tmp/v.sock"}'
expect_fault 'kernel_image_path' PUT /actions '{"action_type": "InstanceStart"}'
expect_fault 'before starting' PUT /actions '{"action_type": "SendCtrlAltDel"}'
expect_fault 'before starting' PATCH /vm '{"state": "Paused"}'
expect_fault 'unknown state "Stopped"' PATCH /vm '{"state": "Stopped"}'
expect_fault 'Empty PATCH request' PATCH /vm ''
expect_fault 'before starting' PUT /snapshot/create "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\"}"
expect_fault 'Diff snapshots are not supported' PUT /snapshot/create "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\"}"
expect_fault 'version' PUT /snapshot/create "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\", \"version\": \"1.0.0\"}"
expect_fault 'snapshot_path' PUT /snapshot/load '{"mem_backend": {"backend_type": "File", "backend_path": "/m"}}'
expect_fault 'exactly one of mem_backend' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\"}"
expect_fault 'exactly one of mem_backend' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"/m\"}}"
expect_fault 'unknown type "Tmpfs"' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_backend\": {\"backend_type\": \"Tmpfs\", \"backend_path\": \"/m\"}}"
expect_fault 'backend_path' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_backend\": {\"backend_type\": \"File\"}}"
expect_fault 'bogus' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"/m\", \"bogus\": 1}}"
expect_fault 'enable_diff_snapshots' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"enable_diff_snapshots\": true}"
expect_fault 'vsock_override' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"vsock_override\": {\"uds_path\": \"/v\", \"guest_cid\": 4}}"
expect_fault 'vsock_override.uds_path must not be empty' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"vsock_override\": {\"uds_path\": \"\"}}"
expect_fault 'drive_overrides: expected an array' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"drive_overrides\": {\"drive_id\": \"root\"}}"
expect_fault 'drive_overrides[0]: Object item not found: path_on_host' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"drive_overrides\": [{\"drive_id\": \"root\"}]}"
expect_fault 'overridden twice' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"/m\", \"drive_overrides\": [{\"drive_id\": \"root\", \"path_on_host\": \"/a\"}, {\"drive_id\": \"root\", \"path_on_host\": \"/b\"}]}"
[ ! -s "$CALLS" ] || die "a hook ran on a refused request: $(cat "$CALLS")"
pass "bad requests get 400 with {\"fault_message\"} naming the field, and change nothing"

echo kernel >"$T/vmlinuz"
echo initrd >"$T/initrd"
echo disk >"$T/root.img"
echo data >"$T/data.img"
expect 204 '' PUT /boot-source "{\"kernel_image_path\": \"$T/vmlinuz\", \"initrd_path\": \"$T/initrd\", \"boot_args\": \"console=ttyS0 quiet\"}"
expect 204 '' PUT /drives/data "{\"drive_id\": \"data\", \"path_on_host\": \"$T/data.img\", \"is_root_device\": false, \"is_read_only\": true}"
expect 204 '' PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.img\", \"is_root_device\": true, \"is_read_only\": true}"
expect_fault 'already the root device' PUT /drives/other "{\"drive_id\": \"other\", \"path_on_host\": \"$T/data.img\", \"is_root_device\": true}"
expect 204 '' PUT /vsock "{\"vsock_id\": \"vsock0\", \"guest_cid\": 3, \"uds_path\": \"$T/v.sock\"}"
pass "PUT /boot-source, /drives/{id} (one root), /vsock"
expect_fault 'not allowed after configuring boot-specific resources' PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.json\", \"mem_file_path\": \"/m\"}"
pass "snapshot/load is refused once a resource is configured"

# Expect: 100-continue.  curl sent it for bodies over 1 KiB up to 7.x and for
# bodies over 1 MiB since; ask for it on a 1.5 KiB body, and let this curl
# send it on its own for a 2 MB one, which the API refuses before the body.
args=$(printf 'x%.0s' $(seq 1 1500))
curl -sS -v --max-time 10 --unix-socket "$SOCK" -X PUT -H 'Content-Type: application/json' -H 'Expect: 100-continue' \
  --data-binary "{\"kernel_image_path\": \"$T/vmlinuz\", \"initrd_path\": \"$T/initrd\", \"boot_args\": \"console=ttyS0 $args\"}" \
  http://localhost/boot-source >"$T/big.out" 2>"$T/big.err" || { cat "$T/big.err" >&2; die "curl with a 1.5 KiB body failed"; }
grep -q '> Expect: 100-continue' "$T/big.err" || die "curl did not send Expect: 100-continue (see $T/big.err)"
grep -q '< HTTP/1.1 100 Continue' "$T/big.err" || { cat "$T/big.err" >&2; die "no 100 Continue from the API"; }
grep -q '< HTTP/1.1 204' "$T/big.err" || { cat "$T/big.err" >&2; die "the 1.5 KiB PUT did not get 204"; }
expect 200 "$args" GET /vm/config
expect 204 '' PUT /boot-source "{\"kernel_image_path\": \"$T/vmlinuz\", \"initrd_path\": \"$T/initrd\", \"boot_args\": \"console=ttyS0 quiet\"}"
head -c 2000000 /dev/zero | tr '\0' x >"$T/huge.body"
curl -sS -v --max-time 10 --unix-socket "$SOCK" -X PUT --data-binary @"$T/huge.body" http://localhost/boot-source \
  >"$T/huge.out" 2>"$T/huge.err" || true
grep -q '> Expect: 100-continue' "$T/huge.err" || die "curl did not send Expect: 100-continue for 2 MB (see $T/huge.err)"
grep -q '< HTTP/1.1 413' "$T/huge.err" || { cat "$T/huge.err" >&2; die "a 2 MB body did not get 413 before it was sent"; }
pass "Expect: 100-continue: 100 then 204 for 1.5 KiB, 413 up front for 2 MB"

# Keep-alive: one curl, three requests, one connection.
curl -sS -v --max-time 10 --unix-socket "$SOCK" http://localhost/ http://localhost/machine-config http://localhost/vm/config \
  >"$T/ka.out" 2>"$T/ka.err" || { cat "$T/ka.err" >&2; die "curl keep-alive run failed"; }
[ "$(grep -c 'Re-using existing connection' "$T/ka.err")" = 2 ] || { cat "$T/ka.err" >&2; die "curl did not reuse its connection"; }
pass "keep-alive: three requests on one connection"

# A stuck client (half a request, then silence) holds the API for at most
# KVMM_API_IO_TIMEOUT_MS (5 s); curl gets its answer after that.
python3 - "$SOCK" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"PUT /machine-config HTTP/1.1\r\nContent-Len")
time.sleep(12)
PY
STUCK=$!
track_pid $STUCK
sleep 0.5
t0=$(date +%s.%N)
expect 200 'Not started' GET /
t1=$(date +%s.%N)
python3 -c "import sys; d=$t1-$t0; sys.exit(0 if d < 8 else 1)" || die "the API was held by a stuck client for $(python3 -c "print($t1-$t0)") s"
kill $STUCK 2>/dev/null || true
pass "a stuck client cannot hold the API beyond its timeout"

# InstanceStart: the first fails in the hook, the second boots.
expect_fault 'Start microVM error: cannot open /dev/kvm' PUT /actions '{"action_type": "InstanceStart"}'
expect 200 '"state":"Not started"' GET /
expect 204 '' PUT /actions '{"action_type": "InstanceStart"}'
expect 200 '"state":"Running"' GET /
want="instance_start vcpus=2 mem_mib=256 kernel=$T/vmlinuz initrd=$T/initrd args=console=ttyS0 quiet drives=rootfs:$T/root.img:root,data:$T/data.img:data vsock=3:$T/v.sock"
[ "$(cat "$CALLS")" = "$want" ] || die "InstanceStart handed over: $(cat "$CALLS"); want: $want"
pass "InstanceStart hands the whole config over, root drive first"

expect_fault 'not supported after starting the microVM' PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
expect_fault 'not supported after starting the microVM' PUT /boot-source "{\"kernel_image_path\": \"$T/vmlinuz\"}"
expect_fault 'not supported after starting the microVM' PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.img\", \"is_root_device\": true}"
expect_fault 'not supported after starting the microVM' PUT /vsock "{\"guest_cid\": 4, \"uds_path\": \"$T/w.sock\"}"
expect_fault 'not supported after starting the microVM' PUT /actions '{"action_type": "InstanceStart"}'
expect_fault 'FlushMetrics' PUT /actions '{"action_type": "FlushMetrics"}'
expect 204 '' PUT /actions '{"action_type": "SendCtrlAltDel"}'
[ "$(tail -n 1 "$CALLS")" = send_ctrl_alt_del ] || die "SendCtrlAltDel did not reach the hook"
expect 200 '"vcpu_count":2' GET /machine-config
pass "after start: pre-boot resources refused, SendCtrlAltDel delivered"

expect_fault 'must be paused first' PUT /snapshot/create "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\"}"
expect 204 '' PATCH /vm '{"state": "Paused"}'
expect 200 '"state":"Paused"' GET /
expect_fault 'not supported after starting the microVM' PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.json\", \"mem_file_path\": \"/m\"}"
expect 204 '' PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\"}"
expect 204 '' PATCH /vm '{"state": "Resumed"}'
expect 200 '"state":"Running"' GET /
want="set_paused Paused
snapshot_create $T/s.vmstate $T/s.mem
set_paused Resumed"
[ "$(tail -n 3 "$CALLS")" = "$want" ] || die "pause/snapshot/resume handed over: $(tail -n 3 "$CALLS"); want: $want"
pass "PATCH /vm Paused/Resumed and PUT /snapshot/create (only while paused); GET / says Paused"

kill -TERM $SPID
wait $SPID || die "kvmm_api_server did not stop cleanly"
[ ! -e "$SOCK" ] || die "the API socket was left behind"

# ---- /snapshot/load on a fresh API -------------------------------------------------
: >"$CALLS"
echo state >"$T/s.vmstate"
"$SERVER" "$SOCK" "$CALLS" 2>"$T/server3.err" &
SPID=$!
track_pid $SPID
wait_sock "$SOCK"
expect_fault "snapshot_path $T/missing.vmstate" PUT /snapshot/load "{\"snapshot_path\": \"$T/missing.vmstate\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/s.mem\"}}"
expect 200 '"state":"Not started"' GET /
expect 204 '' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"$T/uffd.sock\"}, \"resume_vm\": false}"
expect 200 '"state":"Paused"' GET /
expect_fault 'not supported after starting the microVM' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\"}"
expect_fault 'not supported after starting the microVM' PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
expect 204 '' PATCH /vm '{"state": "Resumed"}'
expect 200 '"state":"Running"' GET /
kill -TERM $SPID
wait $SPID || die "kvmm_api_server did not stop cleanly"
"$SERVER" "$SOCK" "$CALLS" 2>"$T/server4.err" &
SPID=$!
track_pid $SPID
wait_sock "$SOCK"
expect 204 '' PUT /snapshot/load "{\"snapshot_path\": \"$T/s.vmstate\", \"mem_file_path\": \"$T/s.mem\", \"resume_vm\": true, \"vsock_override\": {\"uds_path\": \"$T/new.vsock\"}, \"drive_overrides\": [{\"drive_id\": \"root\", \"path_on_host\": \"$T/new.raw\"}]}"
expect 200 '"state":"Running"' GET /
kill -TERM $SPID
wait $SPID || die "kvmm_api_server did not stop cleanly"
want="snapshot_load $T/s.vmstate Uffd $T/uffd.sock resume=0
set_paused Resumed
snapshot_load $T/s.vmstate File $T/s.mem resume=1 vsock=$T/new.vsock drive=root:$T/new.raw"
[ "$(cat "$CALLS")" = "$want" ] || die "snapshot/load handed over: $(cat "$CALLS"); want: $want"
pass "PUT /snapshot/load on a fresh API: Uffd paused then resumed, deprecated mem_file_path resumed with vsock_override and drive_overrides; a failure leaves it Not started"

# ---- a --config-file boot --------------------------------------------------------
cat >"$T/vm.json" <<EOF
{
  "boot-source": {"kernel_image_path": "$T/vmlinuz", "boot_args": "console=ttyS0"},
  "drives": [{"drive_id": "rootfs", "path_on_host": "$T/root.img", "is_root_device": true, "is_read_only": true}],
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
  "network-interfaces": [],
  "logger": null
}
EOF
: >"$CALLS"
"$SERVER" "$SOCK" "$CALLS" --config-file "$T/vm.json" 2>"$T/server2.err" &
SPID=$!
track_pid $SPID
wait_sock "$SOCK"
expect 200 '"state":"Running"' GET /
expect_fault 'not supported after starting the microVM' PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 128}'
expect 200 "\"path_on_host\":\"$T/root.img\"" GET /vm/config
kill -TERM $SPID
wait $SPID || die "kvmm_api_server did not stop cleanly"
echo '{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "rootfs", "is_root_device": true}]}' >"$T/bad.json"
expect_fail "$SERVER" "$SOCK" "$CALLS" --config-file "$T/bad.json"
grep -q 'drives\[0\].path_on_host' "$T/last.err" || die "config file error does not name the field: $(cat "$T/last.err")"
pass "--config-file: boots as Running; errors name the field"

# ---- the real kvmm, without /dev/kvm -------------------------------------------------
KSOCK=$T/kvmm.sock
"$KVMM" --api-sock "$KSOCK" --id api-test >"$T/kvmm.out" 2>"$T/kvmm.err" &
KPID=$!
track_pid $KPID
SOCK=$KSOCK
wait_sock "$SOCK"
expect 200 '"state":"Not started"' GET /
expect 204 '' PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
expect 204 '' PUT /boot-source "{\"kernel_image_path\": \"$T/vmlinuz\", \"boot_args\": \"console=ttyS0\"}"
expect 204 '' PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.img\", \"is_root_device\": true, \"is_read_only\": true}"
if [ -e /dev/kvm ]; then
  # With KVM (the nested harness) the placeholder kernel is what fails.
  expect_fault 'Start microVM error' PUT /actions '{"action_type": "InstanceStart"}'
  what="a placeholder kernel"
else
  expect_fault '/dev/kvm' PUT /actions '{"action_type": "InstanceStart"}'
  what="no /dev/kvm"
fi
expect 200 '"state":"Not started"' GET /
kill -0 $KPID 2>/dev/null || die "kvmm exited after a failed InstanceStart"
pass "real kvmm with $what: InstanceStart is a 400 with the reason, and kvmm stays up"
