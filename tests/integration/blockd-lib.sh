# Helpers the blockd integration tests share (42, 43).  Source it after
# lib.sh:  . "$(dirname "$0")/blockd-lib.sh"
BLOCKD=$KINDLING_BUILD_DIR/blockd
[ -x "$BLOCKD" ] || die "blockd not built at $BLOCKD (build the project first)"

# blockd_start TAG MOUNT ARGS...: `blockd serve --mount MOUNT ARGS...` in the
# background, under umask $BLOCKD_UMASK when that is set; its output goes to
# $T/TAG.out and $T/TAG.err.  Waits (at most 10 s) until it is ready; sets
# BPID.  The mount is unmounted and the process killed at exit.
blockd_start() {
  local tag=$1 mnt=$2 i
  shift 2
  mkdir -p "$mnt"
  track_mount "$mnt"
  (
    [ -z "${BLOCKD_UMASK:-}" ] || umask "$BLOCKD_UMASK"
    exec "$BLOCKD" serve --mount "$mnt" "$@" >"$T/$tag.out" 2>"$T/$tag.err"
  ) &
  BPID=$!
  track_pid $BPID
  for ((i = 0; i < 100; i++)); do
    grep -q ready "$T/$tag.out" 2>/dev/null && return 0
    kill -0 $BPID 2>/dev/null || { cat "$T/$tag.err" >&2; die "blockd serve ($tag) exited"; }
    sleep 0.1
  done
  die "blockd serve ($tag) never became ready"
}

# blockd_stop TAG: SIGTERM to $BPID, and insist on exit status 0.
blockd_stop() {
  kill -TERM $BPID
  local rc=0
  wait $BPID || rc=$?
  [ $rc = 0 ] || { tail -20 "$T/$1.err" >&2; die "blockd ($1) exited $rc on SIGTERM"; }
}

# blockd_import_tree SRC NAME:TAG RAW: import the directory tree SRC as a
# one-layer image NAME:TAG into $STORE, and export its flattened image to RAW
# (the bytes reads are checked against).
blockd_import_tree() {
  local src=$1 name=$2 raw=$3 base=${2//[:\/]/_}
  tar -C "$src" -cf "$T/$base.tar" .
  python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/$base.layout" 1 "$T/$base.tar"
  "$CHUNKIFY" --store "$STORE" import "oci:$T/$base.layout:1" --name "$name" >/dev/null
  "$CHUNKIFY" --store "$STORE" export "$name" "$raw"
}
