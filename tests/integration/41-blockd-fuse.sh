#!/bin/bash
# blockd end to end over FUSE and NBD, driven by its CLI:
#   - attach/ls through the control socket;
#   - image.raw reads back byte for byte as `chunkify export`;
#   - rootfs/ (blockd's own EROFS reader) equals the kernel's EROFS mount of
#     image.raw (file-backed, over the FUSE file) and of the export: every
#     path, mode, owner, mtime, size, link target, device number, xattr,
#     hard-link group and file content (treecmp.py), plus getfattr dumps,
#     sha256 of every file, ls -lR, find and tar c working;
#   - stats.json has the documented fields and consistent numbers;
#   - nbdinfo/nbdcopy from the NBD export equal the export;
#   - reading one file of a fresh image fetches only a few chunks;
#   - detach; `fusermount3 -u` stops the daemon with status 0.
# Missing tools are a failure, not a skip.
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
BLOCKD=$KINDLING_BUILD_DIR/blockd
[ -x "$BLOCKD" ] || die "blockd not built at $BLOCKD (build the project first)"
for tool in fusermount3 nbdcopy nbdinfo getfattr jq python3 cmp tar umoci sha256sum; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
[ -e /dev/fuse ] || die "/dev/fuse is missing"

# ---- images: fidelity (every tree feature) and a python stdlib layer ---------------------------------------
timeout 120 bash "$KINDLING_SOURCE_DIR/tests/images/make-images.sh" "$T/img" fidelity >"$T/make.log" 2>&1 ||
  { tail -20 "$T/make.log" >&2; die "make-images.sh fidelity failed"; }
mkdir -p "$T/src/usr/lib" "$T/src/app"
cp -a /usr/lib/python3.11/email /usr/lib/python3.11/json /usr/lib/python3.11/asyncio "$T/src/usr/lib/"
head -c 8000000 /dev/urandom >"$T/src/app/blob.bin"
tar -C "$T/src" -cf "$T/layer.tar" .
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/pylayout" 1 "$T/layer.tar"
STORE=$T/store
"$CHUNKIFY" --store "$STORE" import "oci:$T/img/fidelity:1" --name fid:1 >/dev/null
"$CHUNKIFY" --store "$STORE" import "oci:$T/pylayout:1" --name py:1 >/dev/null
"$CHUNKIFY" --store "$STORE" export fid:1 "$T/fid.raw"
"$CHUNKIFY" --store "$STORE" export py:1 "$T/py.raw"

# ---- the daemon ----------------------------------------------------------------------------------------------
MNT=$T/mnt
CTL=$T/blockd.sock
NBD=$T/nbd.sock
mkdir -p "$MNT"
track_mount "$MNT"
"$BLOCKD" serve --store "$STORE" --mount "$MNT" --control "$CTL" --nbd "unix:$NBD" --l1-dir "$T/l1" \
  --state-dir "$T/state" --no-prefetch >"$T/blockd.out" 2>"$T/blockd.err" &
BPID=$!
track_pid $BPID
for ((i = 0; i < 100; i++)); do
  grep -q ready "$T/blockd.out" 2>/dev/null && break
  kill -0 $BPID 2>/dev/null || { cat "$T/blockd.err" >&2; die "blockd serve exited"; }
  sleep 0.1
done
grep -q ready "$T/blockd.out" || die "blockd serve never became ready"
bd() { "$BLOCKD" --control "$CTL" "$@"; }

bd attach fid:1 >/dev/null || die "blockd attach fid:1 failed"
bd attach py:1 >/dev/null || die "blockd attach py:1 failed"
[ "$(bd ls | cut -f1 | sort | tr '\n' ' ')" = "fid:1 py:1 " ] || die "blockd ls: $(bd ls)"
[ "$(ls "$MNT" | sort | tr '\n' ' ')" = "fid:1 py:1 " ] || die "mount root lists $(ls "$MNT")"
expect_fail bd attach nosuch:1
pass "attach through the CLI; ls and the mount root list both images; an unknown image is refused"

# ---- one file of a fresh image fetches only what it needs ------------------------------------------------------
want=$(sha256sum <"$T/src/usr/lib/json/__init__.py")
got=$(sha256sum <"$MNT/py:1/rootfs/usr/lib/json/__init__.py")
[ "$want" = "$got" ] || die "rootfs/usr/lib/json/__init__.py has the wrong content"
S=$(cat "$MNT/py:1/stats.json")
stored=$(jq .chunks_stored <<<"$S")
fetched=$(jq .chunks_fetched <<<"$S")
[ "$stored" -ge 20 ] || die "py image has only $stored chunks"
[ "$fetched" -le 4 ] || die "reading one file fetched $fetched of $stored chunks: $S"
pass "reading one file fetched $fetched of $stored stored chunks"

# ---- image.raw -----------------------------------------------------------------------------------------------
[ "$(stat -c %s "$MNT/fid:1/image.raw")" = "$(stat -c %s "$T/fid.raw")" ] || die "image.raw has the wrong size"
cmp "$MNT/fid:1/image.raw" "$T/fid.raw" || die "fid:1 image.raw differs from chunkify export"
cmp "$MNT/py:1/image.raw" "$T/py.raw" || die "py:1 image.raw differs from chunkify export"
pass "image.raw equals chunkify export (both images)"

# ---- rootfs/ against the kernel's EROFS driver -----------------------------------------------------------------
mount_ro() {
  mkdir -p "$2"
  mount -t erofs -o ro "$1" "$2" 2>"$T/mount.err" || mount -t erofs -o ro,loop "$1" "$2" ||
    { cat "$T/mount.err" >&2; die "cannot mount $1"; }
  track_mount "$2"
}
mount_ro "$T/fid.raw" "$T/k-export"
mount_ro "$MNT/fid:1/image.raw" "$T/k-fuse"
ROOT=$MNT/fid:1/rootfs
timeout 120 python3 "$HERE/treecmp.py" "$T/k-export" "$ROOT" >"$T/cmp1" || { cat "$T/cmp1" >&2; die "rootfs/ differs from the kernel mount of the export"; }
timeout 120 python3 "$HERE/treecmp.py" "$T/k-export" "$T/k-fuse" >"$T/cmp2" || { cat "$T/cmp2" >&2; die "the kernel mount of image.raw differs from the export's"; }
pass "rootfs/, kernel mount of image.raw, kernel mount of the export: $(tail -1 "$T/cmp1")"

walk() { # walk DIR: find + stat + readlink + sha256 + xattrs, as text
  (cd "$1" && find . -printf '%p %y %m %U %G %s %T@ %l\n' | sort &&
    find . -type f -print0 | sort -z | xargs -0 -r sha256sum &&
    getfattr -R -h -d -m - --absolute-names . 2>/dev/null | sed '/^$/d')
}
walk "$T/k-export" >"$T/walk-export"
walk "$ROOT" >"$T/walk-rootfs"
walk "$T/k-fuse" >"$T/walk-kfuse"
diff "$T/walk-export" "$T/walk-rootfs" >&2 || die "find/stat/sha256/getfattr of rootfs/ differ from the export"
diff "$T/walk-export" "$T/walk-kfuse" >&2 || die "find/stat/sha256/getfattr of image.raw's mount differ"
grep -q '^# file' "$T/walk-rootfs" || die "getfattr found no xattrs in rootfs/ (the fidelity image has some)"
ls -lR "$ROOT" >/dev/null || die "ls -lR rootfs/ failed"
n_tar=$(tar -C "$ROOT" -cf - . | tar -tf - | wc -l)
n_find=$(cd "$ROOT" && find . | wc -l)
[ "$n_tar" = "$n_find" ] || die "tar c of rootfs/ archived $n_tar entries, find sees $n_find"
umount "$T/k-fuse"
umount "$T/k-export"
pass "find, stat, readlink, sha256, getfattr, ls -lR and tar c over rootfs/ agree with the kernel"

# ---- stats.json ------------------------------------------------------------------------------------------------
S=$(cat "$MNT/fid:1/stats.json")
jq -e '(.image == "fid:1") and (.digest | test("^[0-9a-f]{64}$")) and
  (.image_size == .chunks_total * 524288) and (.chunks_read <= .chunks_stored) and
  (.chunks_read == .chunks_stored) and (.chunks_fetched == .chunks_stored) and
  (.bytes_fetched == .chunks_fetched * 524288) and (.bytes_read >= .image_size) and (.read_errors == 0) and
  (.hole_bytes_read > 0) and
  ([.served_by_tier[]] | add) > 0 and ([.hit_rate[]] | add) > 0.99 and
  (.fetched_by_tier.l3 == .chunks_fetched) and (.prefetch.enabled == false)' <<<"$S" >/dev/null ||
  { echo "$S" >&2; die "stats.json is malformed or inconsistent"; }
[ "$(bd stats fid:1 | jq .image_size)" = "$(stat -c %s "$T/fid.raw")" ] || die "blockd stats fid:1 disagrees"
bd stats | jq -e '.images["py:1"].chunks_stored > 0 and (.cache | type == "object")' >/dev/null || die "blockd stats"
pass "stats.json and blockd stats: sizes, chunks read/fetched, hit rates, tiers"

# ---- NBD -------------------------------------------------------------------------------------------------------
[ "$(nbdinfo --size "nbd+unix:///fid:1?socket=$NBD")" = "$(stat -c %s "$T/fid.raw")" ] || die "nbdinfo size"
nbdcopy "nbd+unix:///fid:1?socket=$NBD" "$T/fid.nbd" || die "nbdcopy fid:1 failed"
cmp "$T/fid.nbd" "$T/fid.raw" || die "nbdcopy of fid:1 differs from chunkify export"
nbdcopy "nbd+unix:///py:1?socket=$NBD" "$T/py.nbd" || die "nbdcopy py:1 failed"
cmp "$T/py.nbd" "$T/py.raw" || die "nbdcopy of py:1 differs from chunkify export"
pass "nbdinfo/nbdcopy over the NBD export equal chunkify export"

# ---- detach, unmount ----------------------------------------------------------------------------------------
bd detach fid:1 || die "detach failed"
[ "$(bd ls | cut -f1)" = "py:1" ] || die "after detach, ls shows $(bd ls)"
[ ! -e "$MNT/fid:1" ] || die "fid:1 is still in the mount after detach"
expect_fail nbdinfo --size "nbd+unix:///fid:1?socket=$NBD"
[ "$(nbdinfo --size "nbd+unix:///py:1?socket=$NBD")" = "$(stat -c %s "$T/py.raw")" ] || die "py:1 left NBD"
expect_fail bd detach fid:1
pass "detach removes the image from ls, the mount and NBD; the other stays"

fusermount3 -u "$MNT" || die "fusermount3 -u failed"
rc=0
for ((i = 0; i < 100; i++)); do kill -0 $BPID 2>/dev/null || break; sleep 0.1; done
wait $BPID || rc=$?
[ $rc = 0 ] || { tail -20 "$T/blockd.err" >&2; die "blockd exited $rc after fusermount3 -u"; }
[ ! -e "$CTL" ] || die "the control socket was left behind"
pass "fusermount3 -u stops blockd cleanly"
