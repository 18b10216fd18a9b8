#!/bin/bash
# alt.sh ROUNDS OUT BIN... : alternate cold imports, print wall/user/sys per run
rounds=$1; out=$2; shift 2
export KINDLING_HOME=/tmp/imp50/home
for r in $(seq $rounds); do
  for bin in "$@"; do
    rm -rf /dev/shm/imp50-alt
    /usr/bin/time -f "$bin round=$r wall=%e user=%U sys=%S" -o /tmp/imp50/time.tmp $bin --store /dev/shm/imp50-alt import oci:/tmp/imp50/layout:bench --name bench:d --json >/dev/null 2>&1
    cat /tmp/imp50/time.tmp >> $out
  done
done
rm -rf /dev/shm/imp50-alt
