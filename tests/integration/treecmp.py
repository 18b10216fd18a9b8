#!/usr/bin/env python3
"""Compare two directory trees file by file.

    treecmp.py [--ignore-root-mtime] EXPECTED ACTUAL

EXPECTED is normally `umoci unpack`'s BUNDLE/rootfs and ACTUAL the read-only
mount of chunkify's export.  Compared, for every path (the root included):
  - the set of paths;
  - file type, the full mode (permission bits plus setuid, setgid, sticky);
  - uid and gid;
  - mtime in seconds and nanoseconds (umoci 0.4.7 restores the mtime of files,
    directories and symlinks, nanoseconds included, when the layer carries
    them: see make-images.sh, layer 6 of "fidelity");
  - for regular files: size and content (compared byte for byte);
  - for symlinks: the target;
  - for device nodes: major and minor;
  - xattrs (every namespace the kernel lists: user.*, security.*, ...);
  - hard-link groups: the set of paths sharing an inode must be the same.
Directory sizes and link counts are filesystem-specific and not compared.

--ignore-root-mtime: the root directory's mtime is not compared.  Use it only
for images whose layers carry no entry for the root ("." or "./"): umoci then
leaves the rootfs mtime at whatever it created it with (the epoch), which is
not something the image defines.

Prints every difference (the first 200, then a count) and exits 1 if there is
any, 0 if the trees are the same, 2 on usage errors.
"""
import os
import stat
import sys

MAX_SHOWN = 200


def walk(root):
    """Map relative path ("." for the root) to its lstat result."""
    out = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            out[rel] = os.lstat(full)
    return out


def xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return {"<listxattr error>": str(e).encode()}
    res = {}
    for n in names:
        try:
            res[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            res[n] = ("<getxattr error %s>" % e).encode()
    return res


def same_content(a, b):
    bs = 4 << 20
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x = fa.read(bs)
            y = fb.read(bs)
            if x != y:
                # find the first differing byte for the report
                n = min(len(x), len(y))
                i = next((k for k in range(n) if x[k] != y[k]), n)
                return off + i
            if not x:
                return None
            off += len(x)


def kind(mode):
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


def groups(tree):
    """Map each non-directory path to the frozenset of paths with its inode."""
    by_ino = {}
    for p, st in tree.items():
        if not stat.S_ISDIR(st.st_mode):
            by_ino.setdefault((st.st_dev, st.st_ino), set()).add(p)
    res = {}
    for paths in by_ino.values():
        fs = frozenset(paths)
        for p in paths:
            res[p] = fs
    return res


def main(argv):
    ignore_root_mtime = False
    args = []
    for a in argv[1:]:
        if a == "--ignore-root-mtime":
            ignore_root_mtime = True
        elif a.startswith("-"):
            print(__doc__, file=sys.stderr)
            return 2
        else:
            args.append(a)
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    exp_root, act_root = args
    exp, act = walk(exp_root), walk(act_root)
    diffs = []

    def diff(path, what, e, a):
        diffs.append("%s: %s: expected %s, got %s" % (path, what, e, a))

    for p in sorted(set(exp) - set(act)):
        diffs.append("%s: missing (expected a %s)" % (p, kind(exp[p].st_mode)))
    for p in sorted(set(act) - set(exp)):
        diffs.append("%s: unexpected %s" % (p, kind(act[p].st_mode)))

    eg, ag = groups(exp), groups(act)
    both = set(exp) & set(act)
    for p in sorted(both):
        e, a = exp[p], act[p]
        ep, ap = os.path.join(exp_root, p), os.path.join(act_root, p)
        ek, ak = kind(e.st_mode), kind(a.st_mode)
        if ek != ak:
            diff(p, "type", ek, ak)
            continue
        if stat.S_IMODE(e.st_mode) != stat.S_IMODE(a.st_mode):
            diff(p, "mode", oct(stat.S_IMODE(e.st_mode)), oct(stat.S_IMODE(a.st_mode)))
        if e.st_uid != a.st_uid:
            diff(p, "uid", e.st_uid, a.st_uid)
        if e.st_gid != a.st_gid:
            diff(p, "gid", e.st_gid, a.st_gid)
        if not (p == "." and ignore_root_mtime) and e.st_mtime_ns != a.st_mtime_ns:
            diff(p, "mtime", "%d.%09d" % divmod(e.st_mtime_ns, 10**9), "%d.%09d" % divmod(a.st_mtime_ns, 10**9))
        if ek == "file":
            if e.st_size != a.st_size:
                diff(p, "size", e.st_size, a.st_size)
            else:
                off = same_content(ep, ap)
                if off is not None:
                    diff(p, "content", "same bytes", "a difference at offset %d" % off)
        elif ek == "symlink":
            et, at = os.readlink(ep), os.readlink(ap)
            if et != at:
                diff(p, "symlink target", repr(et), repr(at))
        elif ek in ("char", "block"):
            ed = (os.major(e.st_rdev), os.minor(e.st_rdev))
            ad = (os.major(a.st_rdev), os.minor(a.st_rdev))
            if ed != ad:
                diff(p, "device", "%d:%d" % ed, "%d:%d" % ad)
        ex, ax = xattrs(ep), xattrs(ap)
        if ex != ax:
            for n in sorted(set(ex) | set(ax)):
                if ex.get(n) != ax.get(n):
                    diff(p, "xattr " + n, repr(ex.get(n)), repr(ax.get(n)))
        if ek != "dir" and p in eg and p in ag:
            # compare groups restricted to paths present on both sides, so a
            # missing path is reported once, above, and not again here
            e_grp, a_grp = eg[p] & both, ag[p] & both
            if e_grp != a_grp:
                diff(p, "hard-link group", sorted(e_grp), sorted(a_grp))

    for d in diffs[:MAX_SHOWN]:
        print(d)
    if len(diffs) > MAX_SHOWN:
        print("... and %d more differences" % (len(diffs) - MAX_SHOWN))
    if diffs:
        print("treecmp: %d differences between %s and %s" % (len(diffs), exp_root, act_root))
        return 1
    print("treecmp: %d paths identical" % len(exp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
