#!/bin/bash
# Build the OCI image layouts the chunkify integration tests import.
#
#   tests/images/make-images.sh DEST [NAME...]
#
# Each image is its own OCI layout DEST/NAME with the single tag "1", so the
# chunkify source is oci:DEST/NAME:1.  NAME is one of
#   fidelity       every flattening case of issue 2 (see build_fidelity)
#   fidelity-zstd  the same layers, every layer recompressed with zstd
#                  (umoci 0.4.7 cannot unpack zstd: compare it with fidelity)
#   big            files over 4 GiB: a GNU-sparse one and a dense one
#   dedup-a        3 layers of varied files, about 96 MiB
#   dedup-b        dedup-a's layers plus one layer adding usr/lib/m/newfile.so
# With no NAME, everything but big is built.
#
# Images are built with umoci (init/new/unpack/repack/insert/insert --whiteout/
# insert --opaque/config); layers umoci cannot make (sub-second mtimes, GNU
# and PAX sparse entries, GNU long names, an uncompressed layer) are written
# by GNU tar and added to the layout by hand (add-layer below).  Every mtime
# is fixed and random content comes from seeded generators, so the trees are
# reproducible.
#
# Note on umoci 0.4.7 (Debian): `umoci insert` never closes its tar writer,
# so its layers end right after the last entry's data, with no padding and no
# end-of-archive blocks (opencontainers/umoci#436, fixed upstream by #534).
# GNU tar calls such a layer truncated; Go tools and bsdtar accept it.  The
# issue requires importing `umoci insert --whiteout` layers, and images built
# this way are common, so these layers are kept as umoci writes them: chunkify
# must import them.  `umoci repack` layers are well-formed.
set -euo pipefail

DEST=${1:?usage: make-images.sh DEST [NAME...]}
shift
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(fidelity fidelity-zstd dedup-a dedup-b)
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

for tool in umoci python3 tar gzip zstd jq setcap setfattr mknod truncate; do
  command -v "$tool" >/dev/null || { echo "make-images.sh: $tool is missing" >&2; exit 1; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/make-images.XXXXXX")
trap 'rm -rf "$W"' EXIT

# Fixed timestamps (UTC) used everywhere.
T0=@1600000000          # base layer
T1=@1610000000          # later layers
CREATED=2021-01-01T00:00:00Z

HELPER=$W/helper.py
cat >"$HELPER" <<'PY'
import hashlib, json, os, random, shutil, subprocess, sys

def blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)

def put_blob(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob_path(layout, d)
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
    return d

def jdump(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()

def load(layout, tag):
    idx = json.load(open(os.path.join(layout, "index.json")))
    for i, desc in enumerate(idx["manifests"]):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            man = json.load(open(blob_path(layout, desc["digest"])))
            cfg = json.load(open(blob_path(layout, man["config"]["digest"])))
            return idx, i, man, cfg
    sys.exit("no tag %s in %s" % (tag, layout))

def save(layout, idx, i, man, cfg):
    c = jdump(cfg)
    man["config"]["digest"] = put_blob(layout, c)
    man["config"]["size"] = len(c)
    m = jdump(man)
    idx["manifests"][i]["digest"] = put_blob(layout, m)
    idx["manifests"][i]["size"] = len(m)
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(jdump(idx))

MT = "application/vnd.oci.image.layer.v1.tar"

def compress(raw_path, comp):
    if comp == "none":
        return open(raw_path, "rb").read(), MT
    if comp == "gzip":
        gz = ["pigz", "-n", "-6", "-c"] if shutil.which("pigz") else ["gzip", "-n", "-6", "-c"]
        return subprocess.run(gz + [raw_path], check=True, stdout=subprocess.PIPE).stdout, MT + "+gzip"
    if comp == "zstd":
        return subprocess.run(["zstd", "-q", "-3", "-c", raw_path], check=True, stdout=subprocess.PIPE).stdout, MT + "+zstd"
    sys.exit("bad compression " + comp)

def stream_layer(layout, comp):
    """Compress stdin into a blob of layout with gzip (pigz -1 if present),
    hashing the tar on the way; for multi-GiB layers."""
    assert comp == "gzip"
    tmp = os.path.join(layout, "blobs", "sha256", ".tmp-stream")
    gz = ["pigz", "-n", "-1", "-c"] if shutil.which("pigz") else ["gzip", "-n", "-1", "-c"]
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        p = subprocess.Popen(gz, stdin=subprocess.PIPE, stdout=out)
        for b in iter(lambda: sys.stdin.buffer.read(4 << 20), b""):
            h.update(b)
            p.stdin.write(b)
        p.stdin.close()
        if p.wait() != 0:
            sys.exit("compression failed")
    d = sha256_file(tmp)
    os.rename(tmp, blob_path(layout, d))
    return "sha256:" + h.hexdigest(), d, os.path.getsize(blob_path(layout, d)), MT + "+gzip"

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return "sha256:" + h.hexdigest()

def add_layer(layout, tag, raw_path, comp, created_by):
    """Append the tar at raw_path ("-": stdin) as a new top layer of layout:tag."""
    idx, i, man, cfg = load(layout, tag)
    if raw_path == "-":
        diff_id, d, size, mt = stream_layer(layout, comp)
    else:
        diff_id = sha256_file(raw_path)
        data, mt = compress(raw_path, comp)
        d = put_blob(layout, data)
        size = len(data)
    man["layers"].append({"mediaType": mt, "digest": d, "size": size})
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(diff_id)
    cfg.setdefault("history", []).append({"created": "2021-01-01T00:00:00Z", "created_by": created_by})
    save(layout, idx, i, man, cfg)

def recompress(layout, tag, comp, work):
    """Re-encode every layer of layout:tag with comp; diff_ids do not change."""
    idx, i, man, cfg = load(layout, tag)
    for n, l in enumerate(man["layers"]):
        raw = os.path.join(work, "layer%d.tar" % n)
        src = blob_path(layout, l["digest"])
        with open(raw, "wb") as out:
            if l["mediaType"].endswith("+gzip"):
                subprocess.run(["gzip", "-dc", src], check=True, stdout=out)
            elif l["mediaType"].endswith("+zstd"):
                subprocess.run(["zstd", "-dqc", src], check=True, stdout=out)
            else:
                out.write(open(src, "rb").read())
        assert sha256_file(raw) == cfg["rootfs"]["diff_ids"][n]
        data, mt = compress(raw, comp)
        man["layers"][n] = {"mediaType": mt, "digest": put_blob(layout, data), "size": len(data)}
        os.unlink(raw)
    save(layout, idx, i, man, cfg)

def tree(root, seed, total, maxsize, dirs):
    """Varied files (random, text, zero-padded binaries, tiny) under root/dirs,
    about total bytes, none over maxsize, all from a seeded generator."""
    rnd = random.Random(seed)
    words = [("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))) for _ in range(500)]
    made = 0
    n = 0
    while made < total:
        d = os.path.join(root, rnd.choice(dirs))
        os.makedirs(d, exist_ok=True)
        kind = rnd.random()
        if kind < 0.35:
            size = rnd.randint(0, 8192)
        elif kind < 0.85:
            size = rnd.randint(8192, 1 << 20)
        else:
            size = rnd.randint(1 << 20, 4 << 20)
        size = min(size, maxsize)
        style = rnd.random()
        if style < 0.6:
            data = rnd.randbytes(size)
        elif style < 0.85:
            out = []
            ln = 0
            while ln < size:
                w = rnd.choice(words) + (" " if rnd.random() < 0.9 else "\n")
                out.append(w)
                ln += len(w)
            data = "".join(out).encode()[:size]
        else:  # binary-like: random pieces between zero runs
            b = bytearray(size)
            pos = 0
            while pos < size:
                run = rnd.randint(64, 8192)
                if rnd.random() < 0.5:
                    b[pos:pos + run] = rnd.randbytes(min(run, size - pos))
                pos += run
            data = bytes(b)
        name = "%s%03d.%s" % (rnd.choice(words), n, rnd.choice(["so", "txt", "bin", "py", "dat", ""]))
        with open(os.path.join(d, name.rstrip(".")), "wb") as f:
            f.write(data)
        made += size
        n += 1

def randfile(path, seed, size):
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(size))

cmd = sys.argv[1]
if cmd == "add-layer":
    add_layer(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6])
elif cmd == "recompress":
    recompress(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
elif cmd == "tree":
    tree(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
elif cmd == "randfile":
    randfile(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    sys.exit("unknown helper command " + cmd)
PY
helper() { python3 "$HELPER" "$@"; }

# Pin every mtime under $1 (not following symlinks) to $2.
pin_times() { find "$1" -exec touch -h -d "$2" {} +; }

# umoci wrappers with fixed history times.
HIST=(--history.created "$CREATED" --history.author kindling-tests)
new_image() { # LAYOUT
  rm -rf "$1"
  umoci init --layout "$1"
  umoci new --image "$1:1"
  umoci config --image "$1:1" --created "$CREATED" --no-history \
    --os linux --architecture amd64
}
unpack() { umoci unpack --image "$1:1" "$2" >/dev/null; }
repack() { umoci repack "${HIST[@]}" --history.created_by "$3" --image "$1:1" "$2" >/dev/null; rm -rf "$2"; }
insert() { umoci insert "${HIST[@]}" --history.created_by "insert $*" --image "$1:1" "${@:2}"; }
finish() { umoci gc --layout "$1"; }

# GNU tar of the paths $3... under directory $2 into $1, deterministic order,
# PAX (posix) format with nanosecond mtimes and xattrs unless TARFMT says gnu.
gnutar() {
  local out=$1 dir=$2; shift 2
  tar --format="${TARFMT:-posix}" --sort=name --numeric-owner --xattrs --xattrs-include='*' \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    ${TARSPARSE:+--sparse} -cf "$out" -C "$dir" "$@"
}

build_fidelity() {
  local L=$DEST/fidelity B=$W/bundle R
  new_image "$L"

  # ---- layer 1 (umoci repack): the base tree -------------------------------
  unpack "$L" "$B"; R=$B/rootfs
  mkdir -p "$R"/{files,links,sym,dev,modes,own,xattr,long,sparse,repl,d2f/sub,wh/deldir,opq/sub,meta}
  : >"$R/files/empty"
  printf x >"$R/files/one"
  helper randfile "$R/files/b4095" 1 4095
  helper randfile "$R/files/b4096" 2 4096
  helper randfile "$R/files/b4097" 3 4097
  helper randfile "$R/files/m1" 4 $((1048576 + 17))
  helper randfile "$R/files/m3" 5 $((3 * 1048576 + 5))
  seq 1 40000 >"$R/files/text"
  echo spaces >"$R/files/name with spaces"
  echo unicode >"$R/files/ünïcødé-файл"
  mkdir -p "$R/nest/a/b/c/d/e/f/g/h"
  echo deep >"$R/nest/a/b/c/d/e/f/g/h/deep.txt"
  # hard links: a 3-member group and a 2-member group, same layer
  helper randfile "$R/links/orig" 6 10000
  ln "$R/links/orig" "$R/links/hl1"
  ln "$R/links/orig" "$R/links/hl2"
  echo small >"$R/links/small"
  ln "$R/links/small" "$R/nest/a/small-hl"
  # symlinks
  ln -s ../files/one "$R/sym/rel"
  ln -s /files/one "$R/sym/abs"
  ln -s /nonexistent/target "$R/sym/dangling"
  ln -s "$(printf 'd%.0s' {1..200})/$(printf 'e%.0s' {1..200})/$(printf 'f%.0s' {1..150})" "$R/sym/long"
  ln -s ../nest "$R/sym/dir"
  # device nodes and a fifo
  mknod "$R/dev/char" c 1 3
  mknod "$R/dev/block" b 8 1
  mknod "$R/dev/bignum" c 259 65537
  mkfifo "$R/dev/fifo"
  # modes
  echo s >"$R/modes/suid"; chmod 4755 "$R/modes/suid"
  echo g >"$R/modes/sgid"; chmod 2755 "$R/modes/sgid"
  echo a >"$R/modes/all"; chmod 7777 "$R/modes/all"
  echo n >"$R/modes/none"; chmod 0000 "$R/modes/none"
  echo r >"$R/modes/ro"; chmod 0444 "$R/modes/ro"
  mkdir "$R/modes/sticky" "$R/modes/private" "$R/modes/sgid-dir"
  chmod 1777 "$R/modes/sticky"; chmod 0700 "$R/modes/private"; chmod 2775 "$R/modes/sgid-dir"
  # owners, including ids above 65535 and above the ustar octal range
  echo u >"$R/own/u1000"; chown 1000:1000 "$R/own/u1000"
  echo u >"$R/own/u100000"; chown 100000:100001 "$R/own/u100000"
  echo u >"$R/own/huge"; chown 3000000:4000000 "$R/own/huge"
  mkdir "$R/own/dir"; chown 70000:70001 "$R/own/dir"
  ln -s u1000 "$R/own/link"; chown -h 1234:5678 "$R/own/link"
  # xattrs: user.* (text, binary, long) and security.capability
  helper randfile "$R/xattr/cap" 7 5000
  chmod 0755 "$R/xattr/cap"
  setcap 'cap_net_bind_service,cap_net_raw+ep' "$R/xattr/cap"
  echo x >"$R/xattr/f"
  setfattr -n user.a -v 1 "$R/xattr/f"
  setfattr -n user.bin -v 0x00ff10e2808a00 "$R/xattr/f"
  setfattr -n user.long -v "$(printf 'v%.0s' {1..1000})" "$R/xattr/f"
  mkdir "$R/xattr/dir"; setfattr -n user.dirattr -v yes "$R/xattr/dir"
  # PAX long names: components of 100-255 bytes, whole path > 255 bytes
  local a100 b120 n255
  a100=$(printf 'a%.0s' {1..100}); b120=$(printf 'b%.0s' {1..120}); n255=$(printf 'n%.0s' {1..255})
  mkdir -p "$R/long/$a100/$b120"
  echo long >"$R/long/$a100/$b120/$(printf 'c%.0s' {1..90}).txt"
  echo n255 >"$R/long/$n255"
  # a sparse file (umoci stores it dense)
  truncate -s 8M "$R/sparse/plain"
  printf START | dd of="$R/sparse/plain" conv=notrunc status=none
  printf MIDDLE | dd of="$R/sparse/plain" bs=1 seek=3145728 conv=notrunc status=none
  printf END | dd of="$R/sparse/plain" bs=1 seek=$((8 * 1048576 - 3)) conv=notrunc status=none
  # things the upper layers change
  echo v1 >"$R/repl/file"
  echo v1 >"$R/repl/linked"; ln "$R/repl/linked" "$R/repl/linked-hl"
  echo c1 >"$R/d2f/child1"; echo c2 >"$R/d2f/sub/child2"
  echo was-a-file >"$R/f2d"
  echo del >"$R/wh/deleteme"; echo keep >"$R/wh/keepme"
  echo x >"$R/wh/deldir/x"; echo y >"$R/wh/deldir/y"
  echo o1 >"$R/opq/old1"; echo o2 >"$R/opq/sub/old2"
  echo in >"$R/meta/inside"
  pin_times "$R" "$T0"
  repack "$L" "$B" "base tree"

  # ---- layer 2 (umoci repack): replacements and a metadata-only change ------
  unpack "$L" "$B"; R=$B/rootfs
  echo v2-replaced >"$R/repl/file"
  echo v2 >"$R/repl/linked-new"; ln "$R/repl/linked-new" "$R/repl/linked-new-hl"
  rm -rf "$R/d2f"; echo dir-became-file >"$R/d2f"                    # dir -> file
  rm -f "$R/f2d"; mkdir "$R/f2d"; echo child >"$R/f2d/child"         # file -> dir
  chmod 0700 "$R/meta"                                               # metadata only
  rm -rf "$R/wh/deldir"                                              # repack whiteout
  touch -h -d "$T1" "$R/repl/file" "$R/repl/linked-new" "$R/d2f" "$R/f2d" "$R/f2d/child" "$R/meta" "$R/repl" "$R/wh" "$R"
  repack "$L" "$B" "replace, retype, chmod"

  # ---- layer 3 (umoci insert --whiteout) -----------------------------------
  insert "$L" --whiteout /wh/deleteme

  # ---- layer 4 (umoci insert --opaque): opq now holds only new1 ------------
  mkdir -p "$W/opq"; echo n1 >"$W/opq/new1"; pin_times "$W/opq" "$T1"
  insert "$L" --opaque "$W/opq" /opq

  # ---- layer 5 (umoci insert of one file over an existing one) -------------
  echo v3-inserted >"$W/v3"; touch -d "$T1" "$W/v3"
  insert "$L" "$W/v3" /repl/file

  # ---- layer 6 (GNU tar, PAX format, uncompressed): sub-second mtimes,
  #      PAX sparse 1.0, xattrs, a hand-written opaque directory -------------
  local S=$W/stage6
  rm -rf "$S"; mkdir -p "$S/nsec/dir" "$S/sparse" "$S/meta"
  echo ns >"$S/nsec/file"
  ln -s file "$S/nsec/link"
  ln "$S/nsec/file" "$S/nsec/file-hl"
  setfattr -n user.pax -v value "$S/nsec/file"
  truncate -s 6M "$S/sparse/pax"
  printf HEAD | dd of="$S/sparse/pax" conv=notrunc status=none
  printf MID | dd of="$S/sparse/pax" bs=1 seek=2097152 conv=notrunc status=none
  printf TAIL | dd of="$S/sparse/pax" bs=1 seek=$((6 * 1048576 - 4)) conv=notrunc status=none
  # an opaque directory written by hand (.wh..wh..opq) over wh/: keepme goes
  mkdir -p "$S/wh"; echo after-opaque >"$S/wh/fresh"; : >"$S/wh/.wh..wh..opq"
  touch -h -d '2021-02-03 04:05:06.123456789' "$S/nsec/file"
  touch -h -d '2021-02-03 04:05:06.987654321' "$S/nsec/link"
  touch -h -d '2021-02-03 04:05:07.000000001' "$S/nsec/dir"
  touch -h -d '2021-02-03 04:05:08.5' "$S/nsec" "$S/sparse/pax" "$S/sparse" "$S/wh/fresh" "$S/wh"
  touch -h -d '2021-02-03 04:05:09.25' "$S/wh/.wh..wh..opq"
  TARSPARSE=1 gnutar "$W/layer6.tar" "$S" nsec sparse wh
  helper add-layer "$L" 1 "$W/layer6.tar" none "gnu tar posix"

  # ---- layer 7 (GNU tar, old GNU format, gzip): "./" names incl. the root,
  #      GNU long names, old GNU sparse -------------------------------------
  S=$W/stage7
  rm -rf "$S"; mkdir -p "$S/sparse" "$S/gnulong/$a100"
  chmod 0755 "$S"
  truncate -s 5M "$S/sparse/gnu"
  printf G1 | dd of="$S/sparse/gnu" conv=notrunc status=none
  printf G2 | dd of="$S/sparse/gnu" bs=1 seek=$((5 * 1048576 - 2)) conv=notrunc status=none
  echo gnu-long >"$S/gnulong/$a100/$b120"
  pin_times "$S" "$T1"
  TARFMT=gnu TARSPARSE=1 gnutar "$W/layer7.tar" "$S" .
  helper add-layer "$L" 1 "$W/layer7.tar" gzip "gnu tar gnu format"

  umoci config --image "$L:1" --no-history --config.entrypoint /bin/app --config.cmd --serve \
    --config.cmd 8080 --config.env FOO=bar --config.env 'EMPTY=' --config.workingdir /srv \
    --config.user 1000:1000
  finish "$L"
}

build_fidelity_zstd() {
  [ -d "$DEST/fidelity" ] || build_fidelity
  rm -rf "$DEST/fidelity-zstd"
  cp -a "$DEST/fidelity" "$DEST/fidelity-zstd"
  helper recompress "$DEST/fidelity-zstd" 1 zstd "$W"
  finish "$DEST/fidelity-zstd"
}

build_big() {
  local L=$DEST/big S=$W/stagebig
  new_image "$L"
  rm -rf "$S"; mkdir -p "$S/big"
  # layer 1: GNU sparse (PAX 1.0) entry of a 4 GiB + 1 MiB + 3 file
  local size=$((4 * 1073741824 + 1048576 + 3))
  truncate -s $size "$S/big/sparse"
  printf 'sparse-start' | dd of="$S/big/sparse" conv=notrunc status=none
  helper randfile "$W/r64k" 8 65536
  dd if="$W/r64k" of="$S/big/sparse" bs=65536 seek=$((3 * 16384 + 7)) conv=notrunc status=none
  printf 'sparse-end' | dd of="$S/big/sparse" bs=1 seek=$((size - 10)) conv=notrunc status=none
  pin_times "$S" "$T0"
  TARSPARSE=1 gnutar "$W/big1.tar" "$S" big
  helper add-layer "$L" 1 "$W/big1.tar" none "big sparse"
  rm -f "$W/big1.tar" "$S/big/sparse"
  # layer 2: a dense (non-sparse tar) entry of 4 GiB + 4097, gzip
  size=$((4 * 1073741824 + 4097))
  truncate -s $size "$S/big/dense"
  dd if="$W/r64k" of="$S/big/dense" conv=notrunc status=none
  dd if="$W/r64k" of="$S/big/dense" bs=1 seek=$((size - 65536)) conv=notrunc status=none
  pin_times "$S" "$T1"
  gnutar - "$S" big/dense | helper add-layer "$L" 1 - gzip "big dense"
  rm -f "$S/big/dense"
  finish "$L"
}

build_dedup_a() {
  local L=$DEST/dedup-a B=$W/bundle i dirs
  new_image "$L"
  # About 32 MiB per layer: with ~190 non-zero chunks, the superblock chunk,
  # the metadata chunk(s) and a layer tail chunk are well under 3% of them.
  # Most of the data sorts after usr/lib/m/ (where dedup-b adds its file), as
  # in a real image where usr/lib/x86_64-linux-gnu and usr/share dominate;
  # etc/, usr/bin/ and usr/lib/{a,c,m}/ before it hold about 1 MiB.  Stock
  # tools that lay files out in name order keep only the chunks before the
  # insertion point, so their shared fraction is about that share.
  for i in 1 2 3; do
    unpack "$L" "$B"
    case $i in
      1) dirs=(usr/lib/python3/dist-packages usr/lib/n usr/sbin)
         helper tree "$B/rootfs" 11 $((600 * 1024)) 16384 etc etc/app usr/bin usr/lib/a usr/lib/c usr/lib/m ;;
      2) dirs=(usr/share/doc usr/share/man usr/share/zoneinfo usr/share/locale) ;;
      3) dirs=(usr/lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu/gconv var/lib/dpkg) ;;
    esac
    helper tree "$B/rootfs" $((100 + i)) $((32 * 1048576)) $((4 << 20)) "${dirs[@]}"
    pin_times "$B/rootfs" "$T0"
    repack "$L" "$B" "dedup layer $i"
  done
  umoci config --image "$L:1" --no-history --config.cmd /usr/bin/true
  finish "$L"
}

build_dedup_b() {
  [ -d "$DEST/dedup-a" ] || build_dedup_a
  local L=$DEST/dedup-b
  rm -rf "$L"; cp -a "$DEST/dedup-a" "$L"
  helper randfile "$W/newfile.so" 9 $((300 * 1024 + 123))
  touch -d "$T1" "$W/newfile.so"
  insert "$L" "$W/newfile.so" /usr/lib/m/newfile.so
  finish "$L"
}

for n in "${NAMES[@]}"; do
  case $n in
    fidelity) build_fidelity ;;
    fidelity-zstd) build_fidelity_zstd ;;
    big) build_big ;;
    dedup-a) build_dedup_a ;;
    dedup-b) build_dedup_b ;;
    *) echo "make-images.sh: unknown image $n" >&2; exit 2 ;;
  esac
done
