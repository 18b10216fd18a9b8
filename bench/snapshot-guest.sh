#!/bin/sh
# The snapshot scenario's payload (bench/suite/scenarios.py, snapshot()):
# runs inside a TCG guest with a working /dev/kvm (tests/nested/run.sh), with
# busybox, from /payload, which holds kvmm, kindling, chunkify, guest_peer,
# curl, openssl, the kernel, the guest initramfs, the image exported (rootfs.erofs),
# and KINDLING_HOME (home/: the store with the image imported, and the keys).
#
#   snapshot-guest.sh REPS
#
# 0. openssl speed of SHA-256 and AES-256-CTR under the guest's CPU model.
# 1. The snapshot, once: kvmm boots the image, the guest init runs
#    "/app/fn.sh snap", which initialises (reads and hashes the image's data,
#    copies it into memory) and prints "ready"; PATCH /vm Paused, PUT
#    /snapshot/create, and chunkify snapshot-import stores it as chunks
#    beside the image.  One restore with --record stores the trace.
# 2. REPS times, alternating:
#    cold:     kvmm --config-file boots the same image; "/app/fn.sh cold"
#              initialises and prints its response;
#    lazy:     kindling snapshot-serve --no-prefetch (L1 empty, origin the
#              local store) and a fresh kvmm: PUT /snapshot/load with the
#              Uffd backend, resume_vm; guest_peer sends 'S' when the restored
#              init reconnects; fn.sh sees /run/kindling/restore and prints
#              its response;
#    prefetch: the same, snapshot-serve prefetching the recorded trace;
#    host:     a later restore on the same host: snapshot-serve with the
#              host memory tier (--host-mem-dir /tmp/hostmem, which the
#              first restore, the one that recorded the trace, filled) and
#              prefetching the trace; L1 empty;
#    file:     a reference: the same restore with the File backend on the
#              local memory file (no chunks, no snapshot-serve).
#    Each time is from kvmm's spawn to the response's first byte at
#    guest_peer; serve_ready_s is how long snapshot-serve took to be ready
#    (vmstate read and written, chunks checked) before kvmm was spawned.
# Prints one "SNAPBENCH ..." line per measurement; "SNAPBENCH-FAIL ..." and
# exit 1 on the first failure.
REPS=${1:-3}
cd /payload || exit 1
export KINDLING_HOME=/payload/home
STORE=$KINDLING_HOME/store
VS=/tmp/v.sock
fail() {
	echo "SNAPBENCH-FAIL $*"
	for f in /tmp/*.err /tmp/*.console /tmp/*.out /tmp/*.json; do
		[ -f "$f" ] && tail -15 "$f" | sed "s|^|$f: |"
	done
	exit 1
}
now() { ./guest_peer --now; }
waitfor() { # FILE PATTERN SECONDS
	i=0
	while [ $i -lt $(($3 * 100)) ]; do
		grep -aq -- "$2" "$1" 2>/dev/null && return 0
		usleep 10000; i=$((i + 1))
	done
	return 1
}
api() { # SOCK METHOD PATH BODY
	code=$(./curl -s -o /tmp/curl.body -w '%{http_code}' --unix-socket "$1" -X "$2" -H 'Content-Type: application/json' \
		-d "$4" "http://localhost$3")
	[ "$code" = 204 ] || fail "$2 $3: $code $(cat /tmp/curl.body)"
}
vmjson() { # UDS_PATH
	cat <<EOF
{
  "boot-source": { "kernel_image_path": "/payload/vmlinuz", "initrd_path": "/payload/initrd.cpio.gz" },
  "drives": [ { "drive_id": "rootfs", "path_on_host": "/payload/rootfs.erofs", "is_root_device": true, "is_read_only": true } ],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $MEM_MIB },
  "vsock": { "guest_cid": 3, "uds_path": "$1" }
}
EOF
}
MEM_MIB=${SNAPBENCH_MEM_MIB:-256}
vmjson $VS >/tmp/snap.json
vmjson /tmp/cold.sock >/tmp/cold.json

# ---- the crypto a restore does per chunk, under this guest's CPU model ---------------------------------------------------
# An L1-cold restore's every faulted chunk is named by a SHA-256 over its
# ciphertext and decrypted with AES-256-CTR, through the same libcrypto
# (CPUID picks its code path), and the L1 writer hashes it again per 4 KiB
# block; openssl speed on 512 KiB (and 4 KiB) blocks is what these cost
# here, measured before the timed runs so nothing else competes for the CPU.
speed() { # ALG BYTES: bytes/s
	./openssl speed -evp "$1" -bytes "$2" -seconds 2 2>/tmp/speed.err |
		awk -v a="$1" 'tolower($1) == a && $NF ~ /k$/ {v = $NF} END {sub(/k$/, "", v); if (v > 0) printf "%.0f", v * 1000}'
}
sha=$(speed sha256 524288) aes=$(speed aes-256-ctr 524288) sha4k=$(speed sha256 4096)
[ -n "$sha" ] && [ -n "$aes" ] && [ -n "$sha4k" ] || fail "openssl speed gave no figure: $(tail -3 /tmp/speed.err)"
echo "SNAPBENCH crypto sha256_Bps=$sha aes256ctr_Bps=$aes sha256_4k_Bps=$sha4k"

# ---- the snapshot -----------------------------------------------------------------------------------------------------
t0=$(now)
./guest_peer --unix $VS"_1024" --timeout 300 -- /app/fn.sh snap >/tmp/take.out 2>/tmp/take.err &
peer=$!
i=0; while [ ! -S $VS"_1024" ] && [ $i -lt 500 ]; do usleep 10000; i=$((i + 1)); done
./kvmm --api-sock /tmp/take.api --config-file /tmp/snap.json </dev/null >/tmp/take.console 2>&1 &
kvmm=$!
waitfor /tmp/take.out ready 300 || fail "the snapshot VM did not print ready"
t_ready=$(now)
api /tmp/take.api PATCH /vm '{"state": "Paused"}'
api /tmp/take.api PUT /snapshot/create '{"snapshot_type": "Full", "snapshot_path": "/tmp/snap.vmstate", "mem_file_path": "/tmp/snap.mem"}'
t_snap=$(now)
kill -9 $kvmm; wait $kvmm 2>/dev/null
kill $peer 2>/dev/null; wait $peer 2>/dev/null
rm -f $VS
cp /tmp/snap.vmstate /tmp/snap.vmstate.keep
mem_bytes=$(stat -c %s /tmp/snap.mem)
mem_used=$(($(du -k /tmp/snap.mem | cut -f1) * 1024))
./chunkify --json snapshot-import snapfn-vm:1 --mem /tmp/snap.mem --vmstate /tmp/snap.vmstate --from snapfn:1 \
	>/tmp/import.json 2>/tmp/import.err || fail "chunkify snapshot-import"
t_import=$(now)
# What reading every stored chunk back costs here (fetch, check name and key,
# decrypt: at least what snapshot-serve does per chunk), for the report.
t_v0=$(now)
./chunkify verify snapfn-vm:1 >/tmp/verify.out 2>/tmp/verify.err || fail "chunkify verify"
t_v1=$(now)
echo "SNAPBENCH verify seconds=$(awk "BEGIN{print $t_v1 - $t_v0}") chunks=$(./chunkify --json inspect snapfn-vm:1 --chunks | grep -o '"index"' | wc -l)"
# The memory file stays for the File-backend reference restores.
rm -f /tmp/snap.vmstate
echo "SNAPBENCH snapshot boot_to_ready_s=$(awk "BEGIN{print $t_ready - $t0}") create_s=$(awk "BEGIN{print $t_snap - $t_ready}") import_s=$(awk "BEGIN{print $t_import - $t_snap}") mem_bytes=$mem_bytes mem_nonzero_bytes=$mem_used import=$(tr -d '\n ' </tmp/import.json)"

# ---- one restore --------------------------------------------------------------------------------------------------------
# restore SYSTEM REP [SERVE-FLAGS...]: SYSTEM "file" loads the local memory
# file with the File backend (no snapshot-serve: a reference for what kvmm's
# restore itself costs); the others go through snapshot-serve.
restore() {
	sys=$1 rep=$2
	shift 2
	rm -rf /tmp/l1 /tmp/uffd.sock /tmp/r.api /tmp/r.vmstate $VS
	mkdir /tmp/l1
	if [ "$sys" = file ]; then
		restore_run '{"backend_type": "File", "backend_path": "/tmp/snap.mem"}'
		echo "SNAPBENCH restore system=$sys rep=$rep $stats serve_ready_s=0 serve={}"
		return
	fi
	ts=$(now)
	./kindling snapshot-serve snapfn-vm:1 --store "$STORE" --socket /tmp/uffd.sock --vmstate-out /tmp/r.vmstate \
		--l1-dir /tmp/l1 "$@" >/tmp/serve.json 2>/tmp/serve.err &
	serve=$!
	i=0
	while ! grep -q "waiting for the VMM" /tmp/serve.err 2>/dev/null; do
		kill -0 $serve 2>/dev/null || fail "snapshot-serve ($sys) exited before it was ready"
		i=$((i + 1)); [ $i -lt 6000 ] || fail "snapshot-serve ($sys) not ready in 60 s"
		usleep 2000
	done
	tr=$(now)
	restore_run '{"backend_type": "Uffd", "backend_path": "/tmp/uffd.sock"}'
	# snapshot-serve ends when kvmm closes the handshake socket, after the guest powered off.
	i=0; while kill -0 $serve 2>/dev/null && [ $i -lt 3000 ]; do usleep 10000; i=$((i + 1)); done
	kill -0 $serve 2>/dev/null && { kill $serve; fail "restore ($sys): snapshot-serve still running 30 s after the response"; }
	wait $serve || fail "restore ($sys): snapshot-serve failed"
	echo "SNAPBENCH restore system=$sys rep=$rep $stats serve_ready_s=$(awk "BEGIN{print $tr - $ts}") serve=$(tr -d '\n ' </tmp/serve.json)"
}

# restore_run MEM-BACKEND-JSON: guest_peer spawns kvmm, which
# loads /tmp/r.vmstate or the snapshot's own; sets $stats.
restore_run() {
	vmstate=/tmp/r.vmstate
	[ "$sys" = file ] && vmstate=/tmp/snap.vmstate.keep
	./guest_peer --unix $VS"_1024" --timeout 120 --times --resume 1 --spawn "
		./kvmm --api-sock /tmp/r.api >/tmp/restore.console 2>&1 &
		while [ ! -S /tmp/r.api ]; do usleep 1000; done
		./curl -s -o /tmp/load.body -w '%{http_code}' --unix-socket /tmp/r.api -X PUT -H 'Content-Type: application/json' \
			-d '{\"snapshot_path\": \"$vmstate\", \"mem_backend\": $1, \"resume_vm\": true}' \
			http://localhost/snapshot/load >/tmp/load.code
		./guest_peer --now >/tmp/load.t" >/tmp/restore.out 2>/tmp/restore.err ||
		fail "restore ($sys): guest_peer exited $?: $(cat /tmp/load.code /tmp/load.body 2>/dev/null)"
	grep -q "^response " /tmp/restore.out || fail "restore ($sys): no response: $(cat /tmp/restore.out)"
	grep -q "^response .* restored=1" /tmp/restore.out || fail "restore ($sys): not restored: $(cat /tmp/restore.out)"
	[ "$(cat /tmp/load.code)" = 204 ] || fail "restore ($sys): PUT /snapshot/load answered $(cat /tmp/load.code) $(cat /tmp/load.body)"
	times=$(grep "^guest_peer: spawn" /tmp/restore.err)
	# loaded_s: kvmm's spawn to PUT /snapshot/load answered (resume_vm: the vCPU runs)
	loaded=$(awk -v t="$(cat /tmp/load.t)" -v s="$(echo "$times" | awk '{print $3}')" 'BEGIN{print t - s}')
	# kvmm exits once the restored guest powers off (its command has exited).
	i=0; while pidof kvmm >/dev/null && [ $i -lt 3000 ]; do usleep 10000; i=$((i + 1)); done
	pidof kvmm >/dev/null && fail "restore ($sys): kvmm still running 30 s after the response"
	stats="first_output_s=$(echo "$times" | awk '{print $7}') exit_s=$(echo "$times" | awk '{print $9}') connected_s=$(echo "$times" | awk '{print $5}') loaded_s=$loaded"
}

cold() {
	rep=$1
	rm -f /tmp/cold.sock
	./guest_peer --unix /tmp/cold.sock_1024 --timeout 300 --times \
		--spawn "exec ./kvmm --no-api --config-file /tmp/cold.json >/tmp/cold.console 2>&1" \
		-- /app/fn.sh cold >/tmp/cold.out 2>/tmp/cold.err || fail "cold boot: guest_peer exited $?"
	grep -q "^response .* restored=0" /tmp/cold.out || fail "cold boot: no response: $(cat /tmp/cold.out)"
	times=$(grep "^guest_peer: spawn" /tmp/cold.err)
	echo "SNAPBENCH cold rep=$rep first_output_s=$(echo "$times" | awk '{print $7}') exit_s=$(echo "$times" | awk '{print $9}') connected_s=$(echo "$times" | awk '{print $5}')"
}

# The trace the prefetching restores use: one restore that records it.  It
# is this host's first restore of the snapshot, so it also fills the host
# memory tier the "host" restores read (the lazy and prefetch ones do not
# use it).
rm -rf /tmp/hostmem
restore record 0 --record --host-mem-dir /tmp/hostmem
for rep in $(seq 1 "$REPS"); do
	cold "$rep"
	restore lazy "$rep" --no-prefetch
	restore prefetch "$rep"
	restore host "$rep" --host-mem-dir /tmp/hostmem
	restore file "$rep"
done
echo "SNAPBENCH done"
