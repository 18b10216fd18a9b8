#!/bin/bash
# A bounded soak of the read path: blockd serves three images from an HTTP
# origin (nginx, behind a proxy that can make it slow or unavailable), with
# five memcached L2 nodes and an L1, to four concurrent readers, while faults
# land at random every few seconds: an L2 node killed and restarted, an L1
# entry corrupted, the origin slow, the origin down, blockd killed and
# restarted.  Every byte read is compared with the exported image.
#   - wrong bytes: 0; hung reads (over 60 s): 0; reads that succeeded: > 0;
#   - after the faults stop, every image reads back whole and exact.
# Errors during faults (EIO while the origin is down and a chunk is in no
# cache, short reads that stop where a request failed, ENOTCONN/ECONNABORTED
# while blockd restarts) are allowed and counted.
# KINDLING_SOAK_SECONDS sets the length (default 60; the long soak is 600).
# ctest-labels: no-asan (a timed soak of release binaries; blockd's paths run under ASan in 40-43); no-tsan (as no-asan; TSan covers blockd in 40-43)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/blockd-lib.sh"
for tool in nginx memcached fusermount3 python3 jq; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
[ -e /dev/fuse ] || die "/dev/fuse is missing"
SECONDS_SOAK=${KINDLING_SOAK_SECONDS:-60}

# ---- three images into a store nginx serves --------------------------------------------------------------------------
WWW=$T/www
STORE=$WWW/origin
mkdir -p "$STORE"
for i in 1 2 3; do
  mkdir -p "$T/src$i/usr/lib" "$T/src$i/app"
  cp -a /usr/lib/python3.11/json "$T/src$i/usr/lib/"
  head -c $((3000000 + i * 1000000)) /dev/urandom >"$T/src$i/app/blob.bin"
  blockd_import_tree "$T/src$i" "soak$i:1" "$T/soak$i.raw"
done
pass "three images imported and exported"

. "$KINDLING_SOURCE_DIR/tests/tools/nginx-dav.sh"
NGINX_PORT=$(free_port)
start_nginx_dav "$T/nginx" "$WWW" "$NGINX_PORT" || die "nginx did not start"
track_pid $NGINX_PID
wait_port "$NGINX_PORT"

ports=()
for i in 1 2 3 4 5; do ports+=("$(free_port)"); done
MNT=$T/mnt
mkdir -p "$MNT" "$T/state" "$T/l1"
track_mount "$MNT"
jq -n --arg blockd "$BLOCKD" --arg mount "$MNT" --arg control "$T/blockd.sock" --arg state "$T/state" \
  --arg l1 "$T/l1" --arg log "$T/blockd.err" --argjson nginx "$NGINX_PORT" --argjson seconds "$SECONDS_SOAK" \
  --argjson ports "[$(IFS=,; echo "${ports[*]}")]" \
  --argjson images "[{\"name\":\"soak1:1\",\"raw\":\"$T/soak1.raw\"},{\"name\":\"soak2:1\",\"raw\":\"$T/soak2.raw\"},{\"name\":\"soak3:1\",\"raw\":\"$T/soak3.raw\"}]" \
  '{blockd:$blockd, mount:$mount, control:$control, state:$state, l1:$l1, blockd_log:$log, nginx_port:$nginx,
    seconds:$seconds, memcached_ports:$ports, images:$images, readers:4}' >"$T/soak.json"

python3 "$KINDLING_SOURCE_DIR/tests/integration/soak.py" "$T/soak.json" >"$T/soak.out" 2>"$T/soak.err" &
SOAK=$!
track_pid $SOAK
rc=0; wait $SOAK || rc=$?
R=$(tail -1 "$T/soak.out")
echo "soak report: $R"
if [ $rc != 0 ]; then
  tail -20 "$T/soak.err" >&2
  tail -30 "$T/blockd.err" >&2
  die "soak failed (exit $rc): $R"
fi
jq -e '.wrong_bytes == 0 and .hangs == 0 and .reads > 0 and (.final_mismatch | length) == 0' <<<"$R" >/dev/null ||
  die "soak report fails its invariants: $R"
nf=$(jq '[.faults[]] | add // 0' <<<"$R")
[ "$nf" -gt 0 ] || die "no fault was injected in ${SECONDS_SOAK}s: $R"
pass "soak ${SECONDS_SOAK}s: $(jq .reads <<<"$R") reads, $nf faults ($(jq -c .faults <<<"$R")), errors $(jq -c .errors <<<"$R"), 0 wrong bytes, 0 hangs"
