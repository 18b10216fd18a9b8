#!/usr/bin/env bash
# Micro-VM snapshots stored as convergent chunks and served lazily:
#   - chunkify snapshot-import of two synthetic memory files (mostly zero,
#     random regions, most of them shared): the second stores only what
#     differs; ls/inspect/verify/export round trip; gc keeps what snapshots
#     name; refusals (no source image, a snapshot where an image belongs);
#   - kindling snapshot-serve to tests/tools/uffd_vmm (the VMM side of
#     Firecracker's Uffd handshake, as kvmm speaks it): pages byte for byte,
#     through five real memcached (L2) and the origin; a partial touch
#     fetches less than the memory; the first serve records a trace, the
#     second prefetches it; removed (ballooned) pages read as zeros;
#   - a truncated vmstate chunk or a missing memory chunk is refused before
#     a VMM is accepted; a corrupt memory chunk stops serving, naming it.
# Needs root (userfaultfd for another process) and memcached.
. "$(dirname "$0")/lib.sh"

KINDLING=$KINDLING_BUILD_DIR/kindling
VMM=$TOOLS_DIR/uffd_vmm
[ -x "$KINDLING" ] && [ -x "$VMM" ] || die "kindling and uffd_vmm must be built"
[ "$(id -u)" = 0 ] || die "serving another process's userfaultfd needs root"
command -v memcached >/dev/null || die "memcached is not installed (see scripts/apt-packages.txt)"
command -v jq >/dev/null || die "jq is not installed"

STORE=$T/store
ck() { "$CHUNKIFY" --store "$STORE" "$@"; }
nchunks() { find "$STORE/chunks" -type f ! -name '.tmp-*' | wc -l; }

# ---- the image the VM ran, and two snapshots of it --------------------------------
mkdir -p "$T/src/app"
head -c 700000 /dev/urandom > "$T/src/app/handler.bin"
tar -C "$T/src" -cf "$T/layer.tar" .
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/fn" fn "$T/layer.tar" >/dev/null
ck import "oci:$T/fn:fn" --name fn:1 >/dev/null

# 24 MiB + 64 KiB of memory (the last chunk is short), zero but for random
# regions; B shares A's bytes except one region that differs.
python3 - "$T" <<'PY'
import os, random, sys
t = sys.argv[1]
rnd = random.Random(66)
size = 24 * 1024 * 1024 + 64 * 1024
a = bytearray(size)
for off in (0, 700 * 1024, 3 * 1024 * 1024 + 4096, 9 * 1024 * 1024, 15 * 1024 * 1024 + 8192,
            20 * 1024 * 1024, size - 30000):
    n = min(300000, size - off)
    a[off:off + n] = bytes(rnd.getrandbits(8) for _ in range(n))
b = bytearray(a)
b[9 * 1024 * 1024:9 * 1024 * 1024 + 5000] = bytes(rnd.getrandbits(8) for _ in range(5000))
open(f"{t}/a.mem", "wb").write(a)
open(f"{t}/b.mem", "wb").write(b)
open(f"{t}/a.vmstate", "wb").write(os.urandom(70000))
open(f"{t}/b.vmstate", "wb").write(os.urandom(9000))
PY
MEM_SIZE=$(stat -c %s "$T/a.mem")

out_a=$(ck --json snapshot-import snap-a:1 --mem "$T/a.mem" --vmstate "$T/a.vmstate" --from fn:1)
out_b=$(ck --json snapshot-import snap-b:1 --mem "$T/b.mem" --vmstate "$T/b.vmstate" --from fn:1)
new_a=$(jq .chunks_new <<<"$out_a"); new_b=$(jq .chunks_new <<<"$out_b"); dedup_b=$(jq .chunks_dedup <<<"$out_b")
[ "$(jq .chunks_zero <<<"$out_a")" -gt 20 ] || die "zero chunks were stored: $out_a"
# B differs in one memory chunk and its vmstate.
[ "$new_b" -eq 2 ] && [ "$dedup_b" -eq $((new_a - 2)) ] || die "snapshots of one function share too little: $out_a / $out_b"
pass "two snapshots share every chunk but the one that differs and the vmstate ($new_a stored, then $new_b)"

# ---- ls / inspect / verify / export ------------------------------------------------
ck ls --json | jq -e '[.[] | select(.image == "snap-a:1" and .kind == "snapshot")] | length == 1' >/dev/null ||
  die "ls does not list snap-a:1 as a snapshot: $(ck ls --json)"
ck ls --json | jq -e '[.[] | select(.image == "fn:1" and .kind == "image")] | length == 1' >/dev/null || die "ls lost fn:1"
ck ls | grep -Eq '^snap-a:1 +snapshot ' || die "ls has no kind column: $(ck ls)"
fn_digest=$(ck ls --json | jq -r '.[] | select(.image == "fn:1") | .manifest')
ins=$(ck inspect snap-a:1 --chunks --json)
jq -e --arg d "$fn_digest" --argjson m "$MEM_SIZE" \
  '.kind == "snapshot" and .snapshot.image == $d and .snapshot.memory_size == $m and .snapshot.vmstate_size == 70000' \
  <<<"$ins" >/dev/null || die "inspect: $ins"
ck verify snap-a:1 >/dev/null || die "verify snap-a:1"
ck export snap-a:1 "$T/a.out" --vmstate "$T/a.vmstate.out" >/dev/null
cmp "$T/a.mem" "$T/a.out" || die "exported memory differs"
cmp "$T/a.vmstate" "$T/a.vmstate.out" || die "exported vmstate differs"
assert_no_tmp "$T"
pass "ls, inspect, verify and export round trip (memory and vmstate byte-identical)"

# ---- refusals at import and where an image belongs ---------------------------------
expect_fail ck snapshot-import snap-x:1 --mem "$T/a.mem" --vmstate "$T/a.vmstate" --from nosuch:1
grep -q "nosuch:1" "$T/last.err" || die "missing source image not named: $(cat "$T/last.err")"
ck ls | grep -q '^snap-x:1' && die "a failed snapshot import left a ref"
head -c 5000 "$T/a.mem" > "$T/short.mem"
expect_fail ck snapshot-import snap-x:1 --mem "$T/short.mem" --vmstate "$T/a.vmstate" --from fn:1
grep -q "multiple of 4096" "$T/last.err" || die "unaligned memory file: $(cat "$T/last.err")"
expect_fail ck snapshot-import snap-x:1 --mem "$T/a.mem" --vmstate "$T/a.vmstate" --from snap-a:1
grep -q "not the image the VM ran" "$T/last.err" || die "snapshot as source: $(cat "$T/last.err")"
expect_fail "$KINDLING" snapshot-serve fn:1 --store "$STORE" --socket "$T/x.sock" --vmstate-out "$T/x.vmstate"
grep -q "not a micro-VM snapshot" "$T/last.err" || die "snapshot-serve of an image: $(cat "$T/last.err")"
if [ -e /dev/fuse ]; then
  expect_fail timeout 120 "$KINDLING" run snap-a:1 --store "$STORE" --l1-dir "$T/l1-run" --isolation process
  grep -q "snapshot-serve" "$T/last.err" || die "kindling run of a snapshot: $(cat "$T/last.err")"
fi
# kindling run's host memory tier options belong to a restore, and turning
# the tier off goes alone (refused while parsing: no sandbox is started).
expect_fail "$KINDLING" run fn:1 --store "$STORE" --no-host-mem
grep -q -- "--no-host-mem goes with --snapshot" "$T/last.err" || die "--no-host-mem alone: $(cat "$T/last.err")"
expect_fail "$KINDLING" run fn:1 --store "$STORE" --isolation microvm --snapshot s1 --no-host-mem --host-mem-dir "$T/hm"
grep -q -- "--host-mem-dir configures the host memory tier and --no-host-mem turns it off" "$T/last.err" ||
  die "--no-host-mem with --host-mem-dir: $(cat "$T/last.err")"
pass "refused: an unknown or non-image --from, an unaligned memory file, serving an image, running a snapshot, kindling run's host memory tier options without a restore or against --no-host-mem"

# ---- serving: five memcached (L2 4+1) and the origin -------------------------------
for i in 0 1 2 3 4; do start_memcached $i; done
NODES=$(printf '127.0.0.1:%s,' "${PORT[@]}"); NODES=${NODES%,}

# serve NAME SNAP VMSTATE-OUT [serve options...]: start snapshot-serve in the
# background (stdout $T/NAME.json, stderr $T/NAME.err) and wait until it
# accepts a VMM (or exits).  Sets SERVE_PID.
serve() {
  local name=$1 snap=$2 vs=$3
  shift 3
  rm -f "$T/$name.sock"
  "$KINDLING" snapshot-serve "$snap" --store "$STORE" --socket "$T/$name.sock" --vmstate-out "$vs" -v "$@" \
    >"$T/$name.json" 2>"$T/$name.err" &
  SERVE_PID=$!
  track_pid $SERVE_PID
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q "waiting for the VMM" "$T/$name.err" 2>/dev/null && return 0
    kill -0 $SERVE_PID 2>/dev/null || return 0
    sleep 0.05
  done
  die "snapshot-serve $name did not get ready: $(cat "$T/$name.err")"
}

# Touch a few non-zero places, and a zero chunk across the two regions' split
# (uffd_vmm splits at half the memory plus 12 KiB: 0xc0b000).
TOUCH="0,0xaf000+8192,0x300000+20000,0x900000,0x1400000+4096,0xc0a000+8192"
serve s1 snap-b:1 "$T/s1.vmstate" --l2 "$NODES" --l1-dir "$T/l1-1"
cmp "$T/b.vmstate" "$T/s1.vmstate" || die "the vmstate written out differs"
"$VMM" --socket "$T/s1.sock" --mem-file "$T/b.mem" --touch "$TOUCH" > "$T/vmm1.json" || die "vmm 1: $(cat "$T/vmm1.json")"
wait $SERVE_PID || die "snapshot-serve 1 failed: $(cat "$T/s1.err")"
r1=$(cat "$T/s1.json")
jq -e '.trace == "recorded" and .chunks.l3 > 0 and .chunks_prefetched == 0' <<<"$r1" >/dev/null || die "serve 1: $r1"
jq -e --argjson m "$MEM_SIZE" '.bytes_fetched < $m and .fraction_fetched < 0.5 and .memory_size == $m' <<<"$r1" >/dev/null ||
  die "a partial touch fetched too much: $r1"
[ -f "$STORE/traces/$(ck ls --json | jq -r '.[] | select(.image == "snap-b:1") | .manifest')" ] || die "no trace stored"
pass "serve 1: partial touch byte-identical, $(jq .bytes_fetched <<<"$r1") of $MEM_SIZE bytes fetched, trace recorded"

# Serve 2, a fresh L1: the trace is prefetched (from L2, which serve 1
# filled) before the VMM touches anything (it waits for the go file).
serve s2 snap-b:1 "$T/s2.vmstate" --l2 "$NODES" --l1-dir "$T/l1-2"
"$VMM" --socket "$T/s2.sock" --mem-file "$T/b.mem" --touch "$TOUCH" --go-file "$T/go2" > "$T/vmm2.json" &
vmm=$!
track_pid $vmm
for ((i = 0; i < 600; i++)); do grep -q "trace prefetched" "$T/s2.err" && break; sleep 0.05; done
grep -q "trace prefetched" "$T/s2.err" || die "serve 2 never finished its prefetch: $(cat "$T/s2.err")"
touch "$T/go2"
wait $vmm || die "vmm 2: $(cat "$T/vmm2.json")"
wait $SERVE_PID || die "snapshot-serve 2 failed: $(cat "$T/s2.err")"
r2=$(cat "$T/s2.json")
jq -e '.trace == "prefetched" and .chunks_prefetched > 0 and .chunks.l2 > 0 and .chunks.l3 == 0' <<<"$r2" >/dev/null ||
  die "serve 2: $r2"
[ "$(jq .faults <<<"$r2")" -lt "$(jq .faults <<<"$r1")" ] || die "prefetch did not save faults: $r1 / $r2"
pass "serve 2: $(jq .chunks_prefetched <<<"$r2") chunks prefetched from L2, faults $(jq .faults <<<"$r1") -> $(jq .faults <<<"$r2")"

# --record: a new trace replaces the stored one, nothing is prefetched.
serve s2r snap-b:1 "$T/s2r.vmstate" --l1-dir "$T/l1-2r" --record
"$VMM" --socket "$T/s2r.sock" --mem-file "$T/b.mem" --touch 0x300000 > "$T/vmm2r.json" || die "vmm 2r"
wait $SERVE_PID || die "snapshot-serve --record failed: $(cat "$T/s2r.err")"
jq -e '.trace == "recorded" and .trace_recorded == 1 and .chunks_prefetched == 0' "$T/s2r.json" >/dev/null ||
  die "serve --record: $(cat "$T/s2r.json")"
serve s2p snap-b:1 "$T/s2p.vmstate" --l1-dir "$T/l1-2p"
"$VMM" --socket "$T/s2p.sock" --mem-file "$T/b.mem" --touch 0x300000 > "$T/vmm2p.json" || die "vmm 2p"
wait $SERVE_PID || die "snapshot-serve after --record failed: $(cat "$T/s2p.err")"
jq -e '.trace == "prefetched" and .trace_planned == 1' "$T/s2p.json" >/dev/null || die "after --record: $(cat "$T/s2p.json")"
pass "--record replaces the stored trace without prefetching"

# ---- the host memory tier ------------------------------------------------------------
# h1, the host's first restore: fetched through the cache and kept in the
# tier.  h2, a later restore: the same chunks come from the tier, nothing is
# fetched, the memory reads back byte for byte.
HM="$T/hostmem"
serve h1 snap-b:1 "$T/h1.vmstate" --l1-dir "$T/l1-h1" --no-prefetch --host-mem-dir "$HM"
"$VMM" --socket "$T/h1.sock" --mem-file "$T/b.mem" --touch "$TOUCH" > "$T/vmmh1.json" || die "vmm h1: $(cat "$T/vmmh1.json")"
wait $SERVE_PID || die "snapshot-serve h1 failed: $(cat "$T/h1.err")"
rh1=$(cat "$T/h1.json")
jq -e '.chunks.host == 0 and .chunks.l3 > 0 and (.host_mem | endswith(".mem"))' <<<"$rh1" >/dev/null || die "serve h1: $rh1"
hm_file=$(jq -r .host_mem <<<"$rh1")
[ "$(stat -c %a "$HM")" = 700 ] && [ "$(stat -c %a "$hm_file")" = 600 ] || die "the host memory tier is readable by others"
serve h2 snap-b:1 "$T/h2.vmstate" --l1-dir "$T/l1-h2" --no-prefetch --host-mem-dir "$HM"
"$VMM" --socket "$T/h2.sock" --mem-file "$T/b.mem" --touch "$TOUCH" > "$T/vmmh2.json" || die "vmm h2: $(cat "$T/vmmh2.json")"
wait $SERVE_PID || die "snapshot-serve h2 failed: $(cat "$T/h2.err")"
rh2=$(cat "$T/h2.json")
jq -e --argjson n "$(jq .chunks.l3 <<<"$rh1")" '.chunks.host == $n and .bytes_fetched == 0 and .host_mem_damaged == 0'   <<<"$rh2" >/dev/null || die "serve h2 did not fill from the host tier: $rh2"
pass "host memory tier: a later restore filled $(jq .chunks.host <<<"$rh2") chunks from it, fetched nothing, byte-identical"

# A damaged byte in the tier's copy of chunk 6 (0x300000, in TOUCH): found by
# its CRC, fetched again through the cache, the guest still gets the
# snapshot's bytes, and the tier's copy is whole again for the next restore.
nchunks_mem=$(( (MEM_SIZE + 524287) / 524288 ))
data_off=$(( (4096 + nchunks_mem * 16 + 4095) / 4096 * 4096 ))
python3 - "$hm_file" $((data_off + 0x300000 + 100)) <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x55]))
PY
serve h3 snap-b:1 "$T/h3.vmstate" --l1-dir "$T/l1-h3" --no-prefetch --host-mem-dir "$HM"
"$VMM" --socket "$T/h3.sock" --mem-file "$T/b.mem" --touch "$TOUCH" > "$T/vmmh3.json" || die "vmm h3 read damaged bytes: $(cat "$T/vmmh3.json")"
wait $SERVE_PID || die "snapshot-serve h3 failed: $(cat "$T/h3.err")"
jq -e '.host_mem_damaged == 1 and .chunks.l3 == 1' "$T/h3.json" >/dev/null || die "serve h3: $(cat "$T/h3.json")"
grep -q "memory chunk 6 in .* is damaged" "$T/h3.err" || die "the damaged chunk was not named: $(cat "$T/h3.err")"
serve h4 snap-b:1 "$T/h4.vmstate" --l1-dir "$T/l1-h4" --no-prefetch --host-mem-dir "$HM"
"$VMM" --socket "$T/h4.sock" --mem-file "$T/b.mem" --touch "$TOUCH" > "$T/vmmh4.json" || die "vmm h4: $(cat "$T/vmmh4.json")"
wait $SERVE_PID || die "snapshot-serve h4 failed: $(cat "$T/h4.err")"
jq -e '.host_mem_damaged == 0 and .bytes_fetched == 0' "$T/h4.json" >/dev/null || die "serve h4: $(cat "$T/h4.json")"
pass "a damaged chunk in the host tier is detected, fetched again and repaired"

# Two restores of one snapshot at once, both on the tier (an empty one):
# each VMM reads every page byte for byte.
serve c1 snap-a:1 "$T/c1.vmstate" --l1-dir "$T/l1-c1" --no-prefetch --host-mem-dir "$T/hostmem2"
pid_c1=$SERVE_PID
serve c2 snap-a:1 "$T/c2.vmstate" --l1-dir "$T/l1-c2" --no-prefetch --host-mem-dir "$T/hostmem2"
pid_c2=$SERVE_PID
"$VMM" --socket "$T/c1.sock" --mem-file "$T/a.mem" --touch all > "$T/vmmc1.json" &
v1=$!
track_pid $v1
"$VMM" --socket "$T/c2.sock" --mem-file "$T/a.mem" --touch all > "$T/vmmc2.json" || die "vmm c2: $(cat "$T/vmmc2.json")"
wait $v1 || die "vmm c1: $(cat "$T/vmmc1.json")"
wait $pid_c1 && wait $pid_c2 || die "a concurrent serve failed: $(cat "$T/c1.err" "$T/c2.err")"
serve c3 snap-a:1 "$T/c3.vmstate" --l1-dir "$T/l1-c3" --no-prefetch --host-mem-dir "$T/hostmem2"
"$VMM" --socket "$T/c3.sock" --mem-file "$T/a.mem" --touch all > "$T/vmmc3.json" || die "vmm c3: $(cat "$T/vmmc3.json")"
wait $SERVE_PID || die "snapshot-serve c3 failed: $(cat "$T/c3.err")"
jq -e '.bytes_fetched == 0 and .chunks.host > 0' "$T/c3.json" >/dev/null || die "serve c3: $(cat "$T/c3.json")"
pass "two concurrent restores share the host tier; every page byte-identical, and the next restore fetches nothing"

# --host-mem alone: the default directory, under $XDG_RUNTIME_DIR.
mkdir -m 0700 "$T/xdg"
XDG_RUNTIME_DIR=$T/xdg serve x1 snap-a:1 "$T/x1.vmstate" --l1-dir "$T/l1-x1" --no-prefetch --host-mem
"$VMM" --socket "$T/x1.sock" --mem-file "$T/a.mem" --touch 0x300000 > "$T/vmmx1.json" || die "vmm x1: $(cat "$T/vmmx1.json")"
wait $SERVE_PID || die "snapshot-serve x1 failed: $(cat "$T/x1.err")"
jq -e --arg d "$T/xdg/kindling/snapshot-mem/" '.host_mem | startswith($d)' "$T/x1.json" >/dev/null ||
  die "--host-mem did not use \$XDG_RUNTIME_DIR/kindling/snapshot-mem: $(cat "$T/x1.json")"
pass "--host-mem keeps the memory under \$XDG_RUNTIME_DIR/kindling/snapshot-mem"

# Serve 3: every page, the older page_size_kib handshake, and a ballooned
# range that must read back as zeros; --no-prefetch; with the key check.
serve s3 snap-a:1 "$T/s3.vmstate" --l1-dir "$T/l1-3" --no-prefetch --key-check
"$VMM" --socket "$T/s3.sock" --mem-file "$T/a.mem" --touch all --page-size-kib --remove 0x1000+65536 \
  > "$T/vmm3.json" || die "vmm 3: $(cat "$T/vmm3.json")"
wait $SERVE_PID || die "snapshot-serve 3 failed: $(cat "$T/s3.err")"
r3=$(cat "$T/s3.json")
jq -e '.trace == "off" and .pages_removed == 16 and .chunks_zero > 0' <<<"$r3" >/dev/null || die "serve 3: $r3"
jq -e --argjson m "$MEM_SIZE" '.pages_checked == ($m / 4096 + 16) and .mismatches == 0' "$T/vmm3.json" >/dev/null ||
  die "vmm 3: $(cat "$T/vmm3.json")"
pass "serve 3: every page byte-identical, removed pages read as zeros, zero chunks never fetched"

# ---- refusals before a VMM is accepted, and a corrupt chunk while serving ---------
vs_index=$(jq '.snapshot.vmstate_offset / 524288' <<<"$ins")
vs_chunk=$(jq -r --argjson i "$vs_index" '.chunks[] | select(.index == $i) | .name' <<<"$ins")
cp "$STORE/chunks/$vs_chunk" "$T/vs_chunk.bak"
head -c 1000 "$T/vs_chunk.bak" > "$STORE/chunks/$vs_chunk"
expect_fail "$KINDLING" snapshot-serve snap-a:1 --store "$STORE" --socket "$T/r.sock" --vmstate-out "$T/r.vmstate" \
  --l1-dir "$T/l1-r"
grep -q "$vs_chunk" "$T/last.err" || die "a truncated vmstate chunk was not named: $(cat "$T/last.err")"
[ ! -e "$T/r.sock" ] && [ ! -e "$T/r.vmstate" ] || die "a refused snapshot still listened or wrote a vmstate"
cp "$T/vs_chunk.bak" "$STORE/chunks/$vs_chunk"
pass "a truncated vmstate chunk is refused before any VMM is accepted"

mem_chunk=$(jq -r '.chunks[] | select(.index == 6) | .name' <<<"$ins") # 3 MiB: in TOUCH
[ -n "$mem_chunk" ] || die "chunk 6 of snap-a:1 is not stored"
mv "$STORE/chunks/$mem_chunk" "$T/mem_chunk.bak"
expect_fail "$KINDLING" snapshot-serve snap-a:1 --store "$STORE" --socket "$T/r.sock" --vmstate-out "$T/r.vmstate" \
  --l1-dir "$T/l1-r"
grep -q "$mem_chunk.*missing" "$T/last.err" || die "a missing memory chunk was not named: $(cat "$T/last.err")"
pass "a missing memory chunk is refused before any VMM is accepted"

# Corrupt (not missing): found only when the guest faults on it.
python3 - "$T/mem_chunk.bak" "$STORE/chunks/$mem_chunk" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read()); b[1000] ^= 0xff
open(sys.argv[2], "wb").write(b)
PY
serve s4 snap-a:1 "$T/s4.vmstate" --l1-dir "$T/l1-4"
# The VMM's faulting thread stays blocked once serving stops: bound it.
timeout 30 "$VMM" --socket "$T/s4.sock" --mem-file "$T/a.mem" --touch 0x300000 > "$T/vmm4.json" 2>&1 &
vmm=$!
track_pid $vmm
rc=0; wait $SERVE_PID || rc=$?
[ $rc -ne 0 ] || die "snapshot-serve went on after a corrupt chunk: $(cat "$T/s4.json")"
grep -q "snapshot snap-a:1: memory chunk 6 ($mem_chunk) failed verification" "$T/s4.err" ||
  die "the corrupt chunk was not named: $(cat "$T/s4.err")"
kill $vmm 2>/dev/null || true
mv "$T/mem_chunk.bak" "$STORE/chunks/$mem_chunk"
pass "a corrupt memory chunk stops serving with an error naming the chunk and the snapshot"

# ---- gc keeps what snapshots name ------------------------------------------------------
all=$(nchunks)
[ "$(ck gc --json | jq .chunks_deleted)" -eq 0 ] || die "gc deleted chunks that snapshots name"
[ "$(nchunks)" -eq "$all" ] || die "chunk count changed"
ck rm fn:1 | grep -q "manifest stays" || die "removing a snapshot's source image dropped its manifest"
[ "$(ck gc --json | jq .chunks_deleted)" -eq 0 ] || die "gc deleted the source image's chunks"
ck rm snap-a:1 >/dev/null
deleted=$(ck gc --json | jq .chunks_deleted)
[ "$deleted" -eq 2 ] || die "gc after removing snap-a:1 deleted $deleted chunks, expected 2 (its own memory chunk and vmstate)"
ck verify snap-b:1 >/dev/null || die "snap-b:1 broken after gc"
pass "gc keeps every chunk a snapshot names, and the source image's; frees only a removed snapshot's own"
