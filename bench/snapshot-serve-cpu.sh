#!/usr/bin/env bash
# snapshot-serve's CPU time per restore path, natively (no KVM):
# tests/tools/uffd_vmm plays the VMM and touches every page of a 128 MiB
# snapshot of random bytes (256 stored chunks), checked byte for byte; L1
# empty, no prefetch.  Alternating, REPS times:
#   keycheck  --key-check (name and key checked on every chunk)
#   default   names checked only
#   host      --host-mem-dir, warm (an earlier restore filled the tier)
# Prints one line per restore: snapshot-serve's user + system CPU seconds,
# uffd_vmm's wall time, the chunks per tier, uffd_vmm's mismatches and the
# chunks L1 holds once snapshot-serve has exited (its writer drained).
# PIN=CPU runs snapshot-serve and uffd_vmm on that one CPU (taskset), the
# busy host where L1's writer competes with the faulting guest.
#
#   [PIN=0] bench/snapshot-serve-cpu.sh [BUILD_DIR] [REPS]      (root: userfaultfd of another process)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$top/build}
REPS=${2:-4}
PIN=${PIN:-}
pin=()
[ -n "$PIN" ] && pin=(taskset -c "$PIN")
for t in kindling chunkify uffd_vmm; do [ -x "$B/$t" ] || { echo "build $B/$t first" >&2; exit 1; }; done
command -v jq >/dev/null && [ -x /usr/bin/time ] || { echo "needs jq and /usr/bin/time" >&2; exit 1; }
T=$(mktemp -d "${TMPDIR:-/tmp}/snapshot-serve-cpu.XXXXXX")
trap 'rm -rf "$T"' EXIT
export KINDLING_HOME=$T/home
STORE=$T/store
ck() { "$B/chunkify" --store "$STORE" "$@"; }
mkdir -p "$T/src/app"
head -c 700000 /dev/urandom >"$T/src/app/handler.bin"
tar -C "$T/src" -cf "$T/layer.tar" .
python3 "$top/bench/make_layout.py" "$T/fn" fn "$T/layer.tar" >/dev/null
ck import "oci:$T/fn:fn" --name fn:1 >/dev/null
head -c $((128 * 1024 * 1024)) /dev/urandom >"$T/m.mem"
head -c 50000 /dev/urandom >"$T/m.vmstate"
ck snapshot-import snap:1 --mem "$T/m.mem" --vmstate "$T/m.vmstate" --from fn:1 >/dev/null

restore() { # NAME [SERVE FLAGS...]
	local name=$1 i pid t0 t1
	shift
	rm -rf "$T/l1" "$T/s.sock" "$T/err"
	/usr/bin/time -f "%U %S" -o "$T/time" "${pin[@]}" "$B/kindling" snapshot-serve snap:1 --store "$STORE" \
		--socket "$T/s.sock" --vmstate-out "$T/v" --l1-dir "$T/l1" --no-prefetch "$@" >"$T/out.json" 2>"$T/err" &
	pid=$!
	for ((i = 0; i < 600; i++)); do grep -qs "waiting for the VMM" "$T/err" && break; sleep 0.05; done
	t0=$(date +%s.%N)
	[ -S "$T/s.sock" ] || { cat "$T/err" >&2; exit 1; }
	"${pin[@]}" "$B/uffd_vmm" --socket "$T/s.sock" --mem-file "$T/m.mem" --touch all >"$T/vmm.json"
	t1=$(date +%s.%N)
	wait $pid
	echo "$name cpu_s=$(awk '{print $1 + $2}' "$T/time") vmm_wall_s=$(awk "BEGIN{print $t1 - $t0}")" \
		"chunks=$(jq -c .chunks "$T/out.json") mismatches=$(jq .mismatches "$T/vmm.json")" \
		"l1_chunks=$(find "$T/l1" -maxdepth 1 -type f -regextype egrep -regex '.*/[0-9a-f]{64}' | wc -l)"
}
restore fill --host-mem-dir "$T/hostmem" >/dev/null
for ((rep = 1; rep <= REPS; rep++)); do
	restore keycheck --key-check
	restore default
	restore host --host-mem-dir "$T/hostmem"
done
