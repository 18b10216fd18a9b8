"""The suite's workloads: real programs in images built from this machine's
installed Debian packages, each an OCI layout of plain tar layers.

An image is a list of layers; a layer is the files of a set of packages and
their dependency closure (minus what lower layers already hold), taken from
dpkg's own file lists, so each image is what `apt-get install` would have put
in a Debian container, merged-/usr and all.  The top layer is the function's
code.  Layouts are built once into a cache directory keyed by the package
versions and this file's content, since the large image takes a minute to tar
and hash, and reused by later runs.
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from make_layout import make_layout  # noqa: E402  (bench/make_layout.py)

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_INFO = "/var/lib/dpkg/info"
MERGED_USR = ("bin", "sbin", "lib", "lib64")
MIN_BIG_BYTES = 1 << 30

FUNCTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "functions")
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"

# name -> the image it runs in, the command, and what its output must contain
WORKLOADS = {
    "tiny": {"image": "tiny", "cmd": ["/bin/busybox", "echo", "kindling-tiny-ok"], "expect": "kindling-tiny-ok",
             "about": "busybox echo (the suite's own test)"},
    "python": {"image": "python", "cmd": ["/usr/bin/python3", "/app/handler.py"], "expect": '"total": "3.30"',
               "about": "Python handler importing json, email, asyncio, decimal (Debian python3)"},
    "node": {"image": "node", "cmd": ["/usr/bin/node", "/app/handler.js"], "expect": '"digest"',
             "about": "Node.js handler using crypto, zlib, http (Debian nodejs)"},
    "scipy": {"image": "big", "cmd": ["/usr/bin/python3", "/app/scipy_handler.py"], "expect": '"det"',
              "about": "numpy + scipy import and a solve, in the >= 1 GiB many-package image"},
    "java": {"image": "big", "cmd": [JAVA_HOME + "/bin/java", "-Xshare:auto", "/app/Hello.java"],
             "expect": '"total": "3.30"',
             "about": "java running a source file (loads the compiler), in the >= 1 GiB image: a start that reads a lot"},
}
QUICK_WORKLOADS = ["python"]
FULL_WORKLOADS = ["python", "node", "scipy", "java"]

# image -> layers (each a list of packages) and the app files
IMAGES = {
    "tiny": {"layers": [], "app": {}, "busybox": True},
    "python": {"layers": [["libc6", "bash", "coreutils"], ["python3"]], "app": {"app/handler.py": "handler.py"}},
    "node": {"layers": [["libc6", "bash", "coreutils"], ["nodejs"]], "app": {"app/handler.js": "handler.js"}},
    "big": {"layers": [["libc6", "bash", "coreutils"], ["python3-scipy", "python3-numpy"],
                       ["openjdk-17-jdk-headless"], ["nodejs", "awscli"], ["clang-14", "gcc-12"]],
            "app": {"app/scipy_handler.py": "scipy_handler.py", "app/Hello.java": "Hello.java"}, "min_bytes": MIN_BIG_BYTES},
}


class WorkloadError(Exception):
    pass


def _parse_status():
    """dpkg's status file as {package: {field: value}} for installed packages;
    "provides" maps a virtual name to the installed packages providing it."""
    pkgs, provides = {}, {}
    with open(DPKG_STATUS, encoding="utf-8") as f:
        for para in f.read().split("\n\n"):
            fields, last = {}, None
            for line in para.splitlines():
                if line[:1] in (" ", "\t") and last:
                    fields[last] += "\n" + line
                elif ":" in line:
                    last, _, v = line.partition(":")
                    fields[last] = v.strip()
            if fields.get("Status", "").endswith(" installed") and "Package" in fields:
                name = fields["Package"]
                pkgs[name] = fields
                for p in fields.get("Provides", "").split(","):
                    p = p.strip().split(" ")[0]
                    if p:
                        provides.setdefault(p, []).append(name)
    return pkgs, provides


def _closure(roots, pkgs, provides):
    """Every installed package ROOTS need (Depends and Pre-Depends, the first
    installed alternative of each), as a sorted list."""
    seen, todo = set(), list(roots)
    for r in roots:
        if r not in pkgs:
            raise WorkloadError(f"package {r} is not installed: apt-get install {r} (scripts/apt-packages.txt)")
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        deps = ",".join(pkgs[name].get(k, "") for k in ("Pre-Depends", "Depends"))
        for dep in deps.split(","):
            for alt in dep.split("|"):
                alt = alt.strip().split(" ")[0].split(":")[0]
                if not alt:
                    continue
                if alt in pkgs:
                    todo.append(alt)
                    break
                if alt in provides:
                    todo.append(provides[alt][0])
                    break
    return sorted(seen)


def _package_files(name):
    for fn in (f"{name}:amd64.list", f"{name}.list", f"{name}:all.list"):
        path = os.path.join(DPKG_INFO, fn)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return [line.rstrip("\n") for line in f if line.strip() and line.strip() != "/."]
    raise WorkloadError(f"dpkg has no file list for installed package {name} ({DPKG_INFO})")


def _canonical(path):
    """PATH as it is stored in a merged-/usr image: /lib/x -> usr/lib/x."""
    rel = path.lstrip("/")
    top = rel.split("/", 1)[0]
    if top in MERGED_USR and os.path.islink("/" + top) and "/" in rel:
        rel = "usr/" + rel
    return rel


def _alternatives():
    """Debian's update-alternatives links, which no package lists: {the chosen
    target (canonical): [(name, the generic link's path)]}, e.g. libblas.so.3."""
    generic = {}
    adir = "/var/lib/dpkg/alternatives"
    for master in sorted(os.listdir(adir)) if os.path.isdir(adir) else []:
        with open(os.path.join(adir, master), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        if len(lines) < 2:
            continue
        generic[master] = lines[1]
        i = 2
        while i + 1 < len(lines) and lines[i]:
            generic[lines[i]] = lines[i + 1]
            i += 2
    out = {}
    for name in sorted(os.listdir("/etc/alternatives")):
        if name in generic:
            target = os.path.realpath(os.path.join("/etc/alternatives", name))
            out.setdefault(_canonical(target), []).append((name, generic[name]))
    return out


def _bytecode(paths):
    """The compiled bytecode Debian's python3 packages write at install time
    (py3compile in postinst, so no package lists it) for the modules in
    PATHS: __pycache__/NAME.cpython-*.pyc, as an installed container has it."""
    by_dir = {}
    for p in paths:
        if p.endswith(".py"):
            by_dir.setdefault(os.path.dirname(p), set()).add(os.path.basename(p)[:-3])
    out = set()
    for d, stems in by_dir.items():
        cache = os.path.join(d, "__pycache__")
        try:
            names = os.listdir("/" + cache)
        except OSError:
            continue
        hits = [n for n in names if n.endswith(".pyc") and n.split(".", 1)[0] in stems]
        if hits:
            out.add(cache)
            out.update(os.path.join(cache, n) for n in hits)
    return out


def _tar_paths(dest, paths):
    """Write a plain tar of the host PATHS (relative to /), in sorted order,
    without following symlinks and without recursing into directories."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(paths):
            try:
                tar.add("/" + rel, arcname=rel, recursive=False)
            except (FileNotFoundError, PermissionError):
                continue


def _tar_tree(dest, files, links=(), busybox=False):
    """A tar of in-memory files ({path: text}) and symlinks ((path, target))."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path in list(files) + [p for p, _ in links]:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        for path, text in sorted(files.items()):
            data = text.encode() if isinstance(text, str) else text
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode = len(data), 0o755 if path.startswith("bin/") else 0o644
            tar.addfile(ti, io.BytesIO(data))
        for path, target in links:
            ti = tarfile.TarInfo(path)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tar.addfile(ti)
        if busybox:
            tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")


def _base_files():
    """What a Debian container has beyond its packages' files: the merged-/usr
    links, users, and the mount points the sandboxes expect."""
    files = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
             "etc/group": "root:x:0:\nnogroup:x:65534:\n", "etc/hostname": "kindling\n",
             "tmp/.keep": "", "proc/.keep": "", "dev/.keep": "", "sys/.keep": "", "root/.keep": ""}
    links = [(top, "usr/" + top) for top in MERGED_USR]
    return files, links


def _app_files(spec):
    """The image's function code, {path in the image: content}, from bench/functions."""
    out = {}
    for dest, src in spec["app"].items():
        with open(os.path.join(FUNCTIONS, src), "rb") as f:
            out[dest] = f.read()
    return out


def image_key(name, pkgs=None):
    """The cache key of image NAME: this file, and every package version in it."""
    spec = IMAGES[name]
    h = hashlib.sha256(open(__file__, "rb").read())
    h.update(name.encode())
    for dest, content in sorted(_app_files(spec).items()):
        h.update(dest.encode() + b"\0" + content)
    if spec["layers"]:
        pkgs = pkgs or _parse_status()
        for layer in spec["layers"]:
            for p in _closure(layer, *pkgs):
                h.update(f"{p}={pkgs[0][p].get('Version', '')};".encode())
    if spec.get("busybox"):
        h.update(open(shutil.which("busybox") or "/bin/busybox", "rb").read())
    return h.hexdigest()[:16]


def build_image(name, cache_dir, say=print):
    """The OCI layout of image NAME (tag "bench"), from the cache or built into
    it; returns {"layout", "tag", "key", "bytes", "layers"}."""
    status = _parse_status()
    key = image_key(name, status)
    dest = os.path.join(cache_dir, f"{name}-{key}")
    meta_path = os.path.join(dest, "kindling-bench.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return json.load(f)
    spec = IMAGES[name]
    say(f"building image {name} from Debian packages (cached in {dest})")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    try:
        layers, have = [], set()
        base_files, base_links = _base_files()
        if spec.get("busybox"):
            path = os.path.join(tmp, "layer0.tar")
            _tar_tree(path, base_files, [], busybox=True)
            layers.append(path)
        alternatives = _alternatives()
        for i, roots in enumerate(spec["layers"]):
            pkg_names = [p for p in _closure(roots, *status) if p not in have]
            have.update(pkg_names)
            paths = set()
            for p in pkg_names:
                paths.update(_canonical(f) for f in _package_files(p))
            paths |= _bytecode(paths)
            # Debian's update-alternatives links (libblas.so.3, java...) for files in this layer
            alt_links = []
            for p in sorted(paths):
                for alt_name, generic in alternatives.get(p, []):
                    alt_links += [(f"etc/alternatives/{alt_name}", "/" + p),
                                  (_canonical(generic), f"/etc/alternatives/{alt_name}")]
            path = os.path.join(tmp, f"layer{len(layers)}.tar")
            _tar_paths(path, paths)
            if alt_links or i == 0:
                extra = os.path.join(tmp, f"layer{len(layers)}-extra.tar")
                _tar_tree(extra, base_files if i == 0 else {}, (base_links if i == 0 else []) + alt_links)
                # base links first so /lib etc. exist before anything goes under usr/
                layers.append(extra)
            layers.append(path)
        app = os.path.join(tmp, f"layer{len(layers)}.tar")
        _tar_tree(app, _app_files(spec))
        layers.append(app)
        total = sum(os.path.getsize(p) for p in layers)
        if total < spec.get("min_bytes", 0):
            raise WorkloadError(f"image {name} is {total >> 20} MiB, less than the {spec['min_bytes'] >> 20} MiB it "
                                f"must have: are its packages ({spec['layers']}) installed? (scripts/apt-packages.txt)")
        layout = os.path.join(tmp, "layout")
        make_layout(layout, "bench", layers,
                    {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1",
                             "JAVA_HOME=" + JAVA_HOME, "HOME=/tmp"],
                     "WorkingDir": "/app" if spec["app"] else "/", "Entrypoint": ["/bin/sh"]})
        for p in layers:
            os.unlink(p)
        meta = {"name": name, "layout": os.path.join(dest, "layout"), "tag": "bench", "key": key,
                "bytes": total, "layers": len(layers)}
        with open(os.path.join(tmp, "kindling-bench.json"), "w") as f:
            json.dump(meta, f)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def unpack_tree(meta, dest):
    """Unpack image META's layers into DEST, in order (no whiteouts: the
    suite's images have none), for the page-cached floor."""
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(meta["layout"], "index.json")) as f:
        idx = json.load(f)
    blobs = os.path.join(meta["layout"], "blobs", "sha256")
    with open(os.path.join(blobs, idx["manifests"][0]["digest"][7:])) as f:
        man = json.load(f)
    for layer in man["layers"]:
        subprocess.run(["tar", "-C", dest, "-xf", os.path.join(blobs, layer["digest"][7:])], check=True)
