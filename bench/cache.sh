#!/usr/bin/env bash
# Chunk read latency per cache tier, against baselines from the same run:
#   - 512 KiB chunk read, verified and decrypted, p50/p99/p99.9: memory, L1,
#     L2 (4+1 over 5 memcached), L3 file and L3 http (nginx with WebDAV);
#     without the salt (no key check, as hosts normally run) as the headline,
#     and the L2 hit with the salt, and with L1 on (the chunk then goes into
#     L1 in the background) beside it;
#   - the floor: raw memcached GET of 128 KiB and 512 KiB values (libmemcached);
#   - 4 KiB reads from L1 and memory;
#   - the L2 tail with one of 5 nodes behind a 20 ms delay proxy: 4+1, 4+0
#     and whole-copy replication (emulated with libmemcached, see
#     tests/tools/cache_bench.c).
#
#   - the L2 hit's verify passes, interleaved read by read: the two-pass
#     read (l2_get, then chunk_open), l2_get_open (decrypt on arrival), the
#     whole read through the cache (cache_read over an L2-only chain) and
#     the floor (raw 128 KiB GET + SHA-256 + AES-256-CTR of 512 KiB), so
#     the four share one machine state instead of minutes apart.
#
#   bench/cache.sh [ITERS] [--l2-passes-only]   (default 2000 reads per figure;
#                                                the flag runs only the last item)
#
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
iters=${1:-2000}
shift || true
if [ -n "${KINDLING_BUILD_DIR:-}" ]; then
  build=$KINDLING_BUILD_DIR
else
  "$top/scripts/setup.sh" "$top/build" >/dev/null
  build=$top/build
fi
bench=$build/cache_bench
[ -x "$bench" ] || { echo "cache_bench not built in $build" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/kindling-cache-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listening on 127.0.0.1:$1" >&2; exit 1
}

mcuser=(); [ "$(id -u)" = 0 ] && mcuser=(-u root)
ports=()
for i in 0 1 2 3 4; do
  p=$(free_port)
  memcached "${mcuser[@]}" -l 127.0.0.1 -p "$p" -U 0 -m 256 -I 2m -t 2 &
  pids+=($!); ports+=("$p")
done
for p in "${ports[@]}"; do wait_port "$p"; done
proxy=$(free_port)
python3 "$top/tests/tools/delay_proxy.py" "$proxy" "${ports[0]}" 0.020 &
pids+=($!)
wait_port "$proxy"

. "$top/tests/tools/nginx-dav.sh"
nport=$(free_port)
start_nginx_dav "$work/nginx" "$work/www" "$nport"
pids+=("$NGINX_PID")
wait_port "$nport"

nodes=$(IFS=,; echo "${ports[*]/#/127.0.0.1:}")
rest=("${ports[@]:1}")
slow="127.0.0.1:$proxy,$(IFS=,; echo "${rest[*]/#/127.0.0.1:}")"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$bench" --file-origin "file://$work/origin" --http-origin "http://127.0.0.1:$nport/origin" \
  --nodes "$nodes" --slow-nodes "$slow" --l1-dir "$work/l1" --iters "$iters" "$@"
