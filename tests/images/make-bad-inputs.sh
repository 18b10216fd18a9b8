#!/bin/bash
# Build one OCI image layout per bad-input case of issue 2, for
# tests/integration/12-bad-input.sh.
#
#   tests/images/make-bad-inputs.sh DEST
#
# Every case is DEST/CASE, an OCI layout with the tag "1", built from scratch
# here: three layers (the middle one usually carries the fault), a config and
# a manifest.  All digests, sizes and diff_ids are made consistent with the
# bytes actually written, so each case has exactly one fault -- the one its
# name says.  (A truncated gzip layer's diff_id cannot match anything; its
# blob digest and size do match the truncated blob.)  Tar headers are written
# byte by byte, so names like "/abs/file" are kept exactly as given.
#
# DEST/control is the same image without a fault; it must import.
#
# DEST/cases.tsv lists the cases, one a line, tab-separated:
#   CASE  LAYER  DIGEST  NEEDLES
# LAYER is the 1-based index of the faulty layer and DIGEST its digest
# ("-" for both when the fault is in the manifest or config JSON).  NEEDLES
# are what the error message must contain besides the layer: groups separated
# by ";" that must all appear, each a set of alternatives separated by "|".
set -euo pipefail

DEST=${1:?usage: make-bad-inputs.sh DEST}
mkdir -p "$DEST"
command -v python3 >/dev/null || { echo "make-bad-inputs.sh: python3 is missing" >&2; exit 1; }

python3 - "$DEST" <<'PY'
import gzip, hashlib, io, json, os, random, shutil, sys

DEST = sys.argv[1]
MT = "application/vnd.oci.image.layer.v1.tar"
MTIME = 1600000000


def octal(n, width):
    s = "%o" % n
    assert len(s) < width, (n, width)
    return s.zfill(width - 1).encode() + b"\0"


def header(name, size=0, typ=b"0", linkname="", mode=0o644, uid=0, gid=0, mtime=MTIME, raw_size=None):
    """One ustar header block, name and linkname kept byte for byte."""
    nb = name.encode()
    prefix = b""
    if len(nb) > 100:
        cut = nb.rfind(b"/", 0, 156)
        prefix, nb = nb[:cut], nb[cut + 1:]
    assert len(nb) <= 100 and len(prefix) <= 155
    h = bytearray(512)
    h[0:len(nb)] = nb
    h[100:108] = octal(mode, 8)
    h[108:116] = octal(uid, 8)
    h[116:124] = octal(gid, 8)
    h[124:136] = raw_size if raw_size is not None else octal(size, 12)
    h[136:148] = octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typ
    lb = linkname.encode()
    h[157:157 + len(lb)] = lb
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[265:269] = b"root"
    h[297:301] = b"root"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def pax(name, records):
    body = b""
    for k, v in records.items():
        rec = b" %s=%s\n" % (k.encode(), v.encode())
        n = len(rec)
        while len(b"%d" % n) + len(rec) != n:
            n = len(b"%d" % n) + len(rec)
        body += b"%d" % n + rec
    return header("PaxHeaders/" + name[-80:], len(body), b"x") + pad(body)


def f(name, data=b"", mode=0o644):
    return header(name, len(data), b"0", mode=mode) + pad(data)


def d(name, mode=0o755):
    return header(name.rstrip("/") + "/", 0, b"5", mode=mode)


def sl(name, target):
    return header(name, 0, b"2", linkname=target, mode=0o777)


def hl(name, target):
    return header(name, 0, b"1", linkname=target)


END = b"\0" * 1024


def tar(*entries, end=True):
    return b"".join(entries) + (END if end else b"")


def gz(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


rnd = random.Random(42)
LAYER1 = tar(d("etc"), f("etc/hostname", b"bad-input-test\n"), d("bin"), f("bin/tool", rnd.randbytes(3000), 0o755),
             sl("bin/alias", "tool"))
LAYER2_OK = tar(d("usr"), d("usr/lib"), f("usr/lib/libx.so", rnd.randbytes(5000)))
LAYER3 = tar(d("usr"), d("usr/share"), f("usr/share/readme", b"readme\n"))


class Image:
    def __init__(self):
        # layers: list of (uncompressed tar bytes, compression)
        self.layers = [[LAYER1, "gzip"], [LAYER2_OK, "gzip"], [LAYER3, "gzip"]]
        self.config = {
            "created": "2021-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin", "FOO=bar"], "Cmd": ["/bin/tool"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        }
        # hooks that may break things after the consistent image is laid out
        self.blob_hooks = []      # f(index, blob) -> blob written (digest fixed)
        self.raw_blob_hooks = []  # f(index, blob) -> blob written (digest kept)
        self.manifest_hooks = []
        self.config_hooks = []
        self.config_raw_hook = None

    def write(self, path):
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))

        def put(data, digest=None):
            digest = digest or sha(data)
            with open(os.path.join(path, "blobs", "sha256", digest[7:]), "wb") as fh:
                fh.write(data)
            return digest

        descs = []
        diff_ids = []
        for i, (raw, comp) in enumerate(self.layers):
            diff_ids.append(sha(raw))
            blob = gz(raw) if comp == "gzip" else raw
            for h in self.blob_hooks:
                blob = h(i, blob)
            digest = sha(blob)
            written = blob
            for h in self.raw_blob_hooks:
                written = h(i, written)
            put(written, digest)
            descs.append({"mediaType": MT + ("+gzip" if comp == "gzip" else ""), "digest": digest, "size": len(blob)})
        cfg = json.loads(json.dumps(self.config))
        cfg["rootfs"]["diff_ids"] = diff_ids
        cfg["history"] = [{"created": "2021-01-01T00:00:00Z", "created_by": "layer %d" % (i + 1)}
                          for i in range(len(self.layers))]
        for h in self.config_hooks:
            h(cfg)
        cfg_bytes = json.dumps(cfg, separators=(",", ":")).encode()
        cfg_digest = sha(cfg_bytes)
        if self.config_raw_hook:
            cfg_bytes = self.config_raw_hook(cfg_bytes)
        put(cfg_bytes, cfg_digest)
        man = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest,
                       "size": len(cfg_bytes)},
            "layers": descs,
        }
        for h in self.manifest_hooks:
            h(man)
        man_bytes = json.dumps(man, separators=(",", ":")).encode()
        man_digest = put(man_bytes)
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_digest,
            "size": len(man_bytes), "annotations": {"org.opencontainers.image.ref.name": "1"}}]}
        with open(os.path.join(path, "index.json"), "w") as fh:
            json.dump(index, fh, separators=(",", ":"))
        with open(os.path.join(path, "oci-layout"), "w") as fh:
            fh.write('{"imageLayoutVersion":"1.0.0"}')
        return descs


cases = []


def case(name, img, layer=None, needles=""):
    descs = img.write(os.path.join(DEST, name))
    if name == "control":
        return
    if layer is None:
        cases.append((name, "-", "-", needles))
    else:
        cases.append((name, str(layer), descs[layer - 1]["digest"], needles))


def with_layer2(raw, comp="gzip"):
    img = Image()
    img.layers[1] = [raw, comp]
    return img


case("control", Image())

# --- entry-level faults (layer 2) ---------------------------------------------
case("dotdot", with_layer2(tar(d("etc"), f("etc/ok", b"ok\n"), f("etc/../../x", b"escape\n"))), 2, "etc/../../x")
case("absolute", with_layer2(tar(d("abs"), f("/abs/file", b"absolute\n"))), 2, "/abs/file")
case("symlink-abs-write", with_layer2(tar(sl("link", "/etc"), f("link/passwd", b"root::0:0::/:/bin/sh\n"))),
     2, "link/passwd")
case("symlink-dotdot-write", with_layer2(tar(d("a"), sl("a/up", "../.."), f("a/up/escaped", b"x\n"))),
     2, "a/up/escaped")
img = Image()
img.layers[1] = [tar(sl("lnk", "/etc")), "gzip"]             # valid by itself
img.layers[2] = [tar(f("lnk/shadow", b"x\n")), "gzip"]        # writes through it
case("symlink-cross-layer", img, 3, "lnk/shadow")
case("hardlink-missing", with_layer2(tar(f("present", b"p\n"), hl("broken-hardlink", "no/such/target"))),
     2, "broken-hardlink|no/such/target")
case("hardlink-escape", with_layer2(tar(hl("evil-hardlink", "../../etc/passwd"))), 2, "evil-hardlink|../../etc/passwd")

bad = bytearray(tar(d("bin"), f("bin/first", b"1\n"), f("bin/second", b"2\n"), f("bin/third", b"3\n")))
off = 512 + 1024                                   # header of bin/second
assert bad[off:off + 10] == b"bin/second"
bad[off + 148:off + 156] = b"0012345\0"            # wrong checksum, nothing else changed
case("bad-checksum", with_layer2(bytes(bad)), 2, "bin/second|checksum")

# a truncated gzip stream: cut in the middle of the compressed data ...
big = tar(d("data"), f("data/blob.bin", rnd.randbytes(256 * 1024)), f("data/after", b"after\n"))
img = with_layer2(big)
img.blob_hooks.append(lambda i, b: b[:len(b) // 2] if i == 1 else b)
case("truncated-gzip", img, 2, "")
# ... and one with every byte of deflate data but without the gzip trailer
img = with_layer2(big)
img.blob_hooks.append(lambda i, b: b[:-8] if i == 1 else b)
case("gzip-no-trailer", img, 2, "")

# an uncompressed layer whose bytes differ (one byte of file data) from its digest
img = with_layer2(tar(d("data"), f("data/file", b"A" * 4000)), "none")
def flip(i, b):
    if i != 1:
        return b
    b = bytearray(b)
    b[512 + 512 + 100] ^= 0x01
    return bytes(b)
img.raw_blob_hooks.append(flip)
case("digest-mismatch", img, 2, "")
# the config blob's bytes differ from its digest (same length)
img = Image()
img.config_raw_hook = lambda b: b.replace(b"FOO=bar", b"FOO=baz")
case("config-digest-mismatch", img, None, "config")

# --- JSON faults --------------------------------------------------------------
img = Image()
img.manifest_hooks.append(lambda m: m.__setitem__("layers", "x"))
case("manifest-layers-type", img, None, "layers")
img = Image()
img.manifest_hooks.append(lambda m: m["config"].pop("digest"))
case("manifest-no-config-digest", img, None, "config;digest")
img = Image()
img.config_hooks.append(lambda c: c["config"].__setitem__("Env", "x"))
case("config-env-type", img, None, "Env")

# --- absurd sizes -------------------------------------------------------------
# a JSON fault: the message names the field (layers[1].size) or the layer
img = Image()
img.manifest_hooks.append(lambda m: m["layers"][1].__setitem__("size", 10**18))
descs = img.write(os.path.join(DEST, "manifest-layer-size-huge"))
cases.append(("manifest-layer-size-huge", "-", "-", "size;layers[1]|%s" % descs[1]["digest"][7:15]))
# a tar header that declares 8 GiB - 1 for an entry followed by 1000 bytes
raw = tar(d("data"), header("data/huge", raw_size=b"77777777777\0") + rnd.randbytes(1000), end=False)
case("tar-size-beyond-data", with_layer2(raw), 2, "data/huge")
# a PAX size record of 10^18 bytes
raw = tar(d("data"), pax("data/absurd", {"size": str(10**18)}) + header("data/absurd", 0) + b"x" * 512)
case("tar-pax-size-absurd", with_layer2(raw), 2, "data/absurd")

with open(os.path.join(DEST, "cases.tsv"), "w") as fh:
    for c in cases:
        fh.write("\t".join(c) + "\n")
PY
