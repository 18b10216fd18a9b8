"""The bench suite's test rig: a work directory, the servers a scenario needs
(memcached, docker-registry) on 127.0.0.1, timed runs of a command to its
first output and its exit, and cache dropping.  Everything a Rig starts is
stopped by close(), by PID."""
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time


class BenchError(Exception):
    """A step of the suite failed; the message names the step and what to do."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")


def drop_caches():
    """The same cold start for every system: write back dirty pages, then
    drop the page cache, dentries and inodes (echo 3 > drop_caches)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Timed:
    """One timed run: first_output_s (first byte on stdout), exit_s, rc, and
    what it printed."""

    def __init__(self, first_output_s, exit_s, rc, out, err):
        self.first_output_s, self.exit_s, self.rc, self.out, self.err = first_output_s, exit_s, rc, out, err


class Rig:
    def __init__(self, work_dir, say, env=None):
        self.work = work_dir
        self.say = say
        self.env = dict(env or os.environ)
        self.procs = []
        os.makedirs(work_dir, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def fresh_dir(self, prefix):
        return tempfile.mkdtemp(prefix=prefix + ".", dir=self.work)

    # ---- processes -------------------------------------------------------------------------
    def start(self, argv, name, log=None, env=None):
        logf = open(log or self.path(f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env or self.env,
                             start_new_session=True)
        logf.close()
        self.procs.append((p, name))
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self):
        for p, _ in reversed(self.procs):
            self.stop(p)
        self.procs = []

    def run(self, argv, what, env=None, timeout=1800, input=None):
        """Run ARGV to completion; its stdout, or BenchError naming WHAT with
        the tail of its stderr."""
        try:
            r = subprocess.run(argv, capture_output=True, env=env or self.env, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: no answer within {timeout} s ({' '.join(argv[:3])} ...)")
        if r.returncode != 0:
            tail = r.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"{what} failed (exit {r.returncode}): " + " | ".join(tail))
        return r.stdout.decode(errors="replace")

    def timed(self, argv, what, env=None, timeout=600, expect=None):
        """Run ARGV, timing its first byte on stdout and its exit from the
        spawn; EXPECT must appear in its output."""
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or self.env)
        out, err, first = bytearray(), bytearray(), None
        fds = {p.stdout.fileno(): out, p.stderr.fileno(): err}
        deadline = t0 + timeout
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                p.kill()
                p.wait()
                raise BenchError(f"{what}: still running after {timeout} s")
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    del fds[fd]
                    continue
                if fd == p.stdout.fileno() and first is None:
                    first = time.monotonic() - t0
                fds[fd].extend(chunk)
        rc = p.wait()
        exit_s = time.monotonic() - t0
        out_s, err_s = out.decode(errors="replace"), err.decode(errors="replace")
        if rc != 0 or (expect and expect not in out_s):
            tail = " | ".join(err_s.strip().splitlines()[-6:])
            raise BenchError(f"{what} failed (exit {rc}; printed {out_s.strip()[:200]!r}): {tail}")
        return Timed(first if first is not None else exit_s, exit_s, rc, out_s, err_s)

    # ---- servers ---------------------------------------------------------------------------
    def memcached(self, n=5, mem_mb=512):
        """N memcached on loopback (the L2 fleet); their HOST:PORT list."""
        nodes = []
        user = ["-u", "root"] if os.getuid() == 0 else []
        for i in range(n):
            port = free_port()
            self.start(["memcached", *user, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(mem_mb),
                        "-I", "2m", "-t", "2"], f"memcached-{i}")
            nodes.append(port)
        for port in nodes:
            wait_port(port, "memcached")
        return ",".join(f"127.0.0.1:{p}" for p in nodes)

    def registry(self, storage):
        """Debian's docker-registry on loopback, storing under STORAGE; its
        HOST:PORT."""
        port = free_port()
        os.makedirs(storage, exist_ok=True)
        cfg = self.path("registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
        self.start(["docker-registry", "serve", cfg], "registry")
        wait_port(port, "docker-registry")
        return f"127.0.0.1:{port}"

    def has_manifest(self, registry, repo_tag):
        repo, tag = repo_tag.rsplit(":", 1)
        r = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-I", "-H",
                            "Accept: application/vnd.oci.image.manifest.v1+json",
                            f"http://{registry}/v2/{repo}/manifests/{tag}"], capture_output=True)
        return r.returncode == 0


def umount_under(root):
    """Unmount whatever is still mounted below ROOT (podman's overlay mounts),
    deepest first."""
    root = os.path.realpath(root)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for mp in sorted((m for m in points if m == root or m.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def remove_tree(path):
    if os.path.exists(path):
        umount_under(path)
        shutil.rmtree(path, ignore_errors=True)


def read_json_line(text, what):
    """The last line of TEXT that is a JSON object (kindling run --json puts
    its report last on stderr)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise BenchError(f"{what}: no JSON report in its output ({text.strip()[-200:]!r})")

