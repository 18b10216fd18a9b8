#!/usr/bin/env python3
"""Soak driver for tests/integration/44-blockd-soak.sh.

Runs blockd over several images while readers check every byte they read
against the exported images and a fault thread, at random, kills and restarts
memcached L2 nodes, corrupts L1 entries, makes the origin slow or unavailable
(through a small proxy in front of nginx, the real origin) and kills and
restarts blockd.  At the end every fault is cleared and every image is read
once more, whole, and compared.

Prints one JSON report line and exits 0 only if no byte was wrong, no read
hung, reads succeeded, and the final pass matched.

Usage: soak.py CONFIG.json   (written by 44-blockd-soak.sh)
"""
import errno
import http.client
import http.server
import json
import os
import random
import signal
import socketserver
import subprocess
import sys
import threading
import time

HANG_SECONDS = 60  # a read still running after this long is a hang


class Origin:
    """A fault-injecting proxy in front of nginx: normal, slow or down."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.mode = "normal"
        self.lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self, method):
                mode = origin.mode
                if mode == "down":
                    body = b"origin unavailable (soak fault)\n"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if mode == "slow":
                    time.sleep(random.uniform(0.2, 1.0))
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                c = http.client.HTTPConnection("127.0.0.1", origin.upstream_port, timeout=30)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                c.request(method, self.path, body=data, headers=hdrs)
                r = c.getresponse()
                payload = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(payload)
                c.close()

            def do_GET(self):
                self.relay("GET")

            def do_HEAD(self):
                self.relay("HEAD")

            def do_PUT(self):
                self.relay("PUT")

            def do_DELETE(self):
                self.relay("DELETE")

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Soak:
    def __init__(self, cfg):
        self.cfg = cfg
        self.images = cfg["images"]  # [{"name", "raw"}]
        self.refs = {}
        for im in self.images:
            with open(im["raw"], "rb") as f:
                self.refs[im["name"]] = f.read()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.stats = {"reads": 0, "bytes": 0, "errors": {}, "faults": {}, "wrong_bytes": 0, "wrong_reads": [],
                      "hangs": 0}
        self.in_flight = {}  # thread id -> start time of its current read
        self.mc = {}  # port -> Popen
        self.blockd = None
        self.origin = Origin(cfg["nginx_port"])
        self.blockd_log = open(cfg["blockd_log"], "ab")

    # ---- processes ------------------------------------------------------------------------------------------------
    def start_memcached(self, port):
        self.mc[port] = subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
                                         + (["-u", "root"] if os.getuid() == 0 else []),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_blockd(self):
        args = [self.cfg["blockd"], "serve", "--store", "http://127.0.0.1:%d/origin" % self.origin.port,
                "--mount", self.cfg["mount"], "--control", self.cfg["control"], "--state-dir", self.cfg["state"],
                "--l1-dir", self.cfg["l1"], "--mem-size", "0",
                "--l2", ",".join("127.0.0.1:%d" % p for p in self.cfg["memcached_ports"])]
        self.blockd = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.blockd_log)
        deadline = time.time() + 60
        line = b""
        while time.time() < deadline:
            line = self.blockd.stdout.readline()
            if b"ready" in line or not line:
                break
        if b"ready" not in line:
            raise RuntimeError("blockd did not become ready (see %s)" % self.cfg["blockd_log"])
        # keep draining its stdout so it never blocks on a full pipe
        threading.Thread(target=lambda p=self.blockd: [None for _ in p.stdout], daemon=True).start()

    def attach_all(self):
        for im in self.images:
            r = subprocess.run([self.cfg["blockd"], "--control", self.cfg["control"], "attach", im["name"]],
                               capture_output=True, timeout=120)
            if r.returncode != 0 and b"already" not in r.stderr:
                raise RuntimeError("attach %s: %s" % (im["name"], r.stderr.decode(errors="replace")))

    def stop_all(self):
        if self.blockd and self.blockd.poll() is None:
            self.blockd.terminate()
            try:
                self.blockd.wait(60)
            except subprocess.TimeoutExpired:
                self.blockd.kill()
                self.blockd.wait()
        for p in self.mc.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.origin.server.shutdown()

    # ---- readers --------------------------------------------------------------------------------------------------
    def count(self, key, what):
        with self.lock:
            d = self.stats[key]
            d[what] = d.get(what, 0) + 1

    def reader(self, seed):
        rnd = random.Random(seed)
        fds = {}
        me = threading.get_ident()
        while not self.stop.is_set():
            im = rnd.choice(self.images)
            ref = self.refs[im["name"]]
            length = rnd.choice([4096, 65536, 131072, rnd.randint(1, 262144)])
            off = rnd.randrange(0, max(1, len(ref) - length))
            if rnd.random() < 0.5:
                off &= ~4095
            path = os.path.join(self.cfg["mount"], im["name"], "image.raw")
            with self.lock:
                self.in_flight[me] = time.time()
            try:
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, os.O_RDONLY)
                # Drop the kernel's cached pages now and then, so reads reach
                # blockd and its tiers rather than the page cache.
                if rnd.random() < 0.3:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                got = os.pread(fd, length, off)
                want = ref[off:off + length]
                with self.lock:
                    self.stats["reads"] += 1
                    self.stats["bytes"] += len(got)
                # A short read is allowed (the kernel returns the bytes it had
                # before a request failed, as during a fault); the bytes it
                # does return must be exact.
                if len(got) < len(want):
                    self.count("errors", "short_read")
                if len(got) > len(want) or got != want[:len(got)]:
                    bad = sum(1 for a, b in zip(got, want) if a != b) + max(0, len(got) - len(want))
                    with self.lock:
                        self.stats["wrong_bytes"] += bad
                        if len(self.stats["wrong_reads"]) < 10:
                            self.stats["wrong_reads"].append({"image": im["name"], "offset": off, "length": length,
                                                              "got": len(got), "wrong": bad})
            except OSError as e:
                self.count("errors", errno.errorcode.get(e.errno, str(e.errno)))
                fd = fds.pop(path, None)
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                time.sleep(0.2)
            finally:
                with self.lock:
                    self.in_flight.pop(me, None)
        for fd in fds.values():
            os.close(fd)

    def watchdog(self):
        while not self.stop.wait(1):
            now = time.time()
            with self.lock:
                for tid, t0 in list(self.in_flight.items()):
                    if now - t0 > HANG_SECONDS:
                        self.stats["hangs"] += 1
                        self.in_flight[tid] = now  # count each hang once per window

    # ---- faults ---------------------------------------------------------------------------------------------------
    def corrupt_l1(self, rnd):
        files = []
        for root, _, names in os.walk(self.cfg["l1"]):
            for n in names:
                p = os.path.join(root, n)
                try:
                    if os.path.getsize(p) > 4096 and not n.startswith(".") and "lock" not in n:
                        files.append(p)
                except OSError:
                    pass
        if not files:
            return False
        p = rnd.choice(files)
        try:
            with open(p, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                pos = rnd.randrange(0, size)
                f.seek(pos)
                b = f.read(1)
                f.seek(pos)
                f.write(bytes([(b[0] if b else 0) ^ 0xFF]))
        except OSError:
            return False
        return True

    def faults(self, seed):
        rnd = random.Random(seed)
        ports = self.cfg["memcached_ports"]
        while not self.stop.wait(rnd.uniform(1.5, 4.0)):
            kind = rnd.choice(["l2_kill", "l1_corrupt", "l1_corrupt", "origin_slow", "origin_down", "blockd_restart"])
            if kind == "l2_kill":
                port = rnd.choice(ports)
                p = self.mc[port]
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    self.count("faults", kind)
                    if self.stop.wait(rnd.uniform(1, 4)):
                        self.start_memcached(port)
                        break
                    self.start_memcached(port)
            elif kind == "l1_corrupt":
                if self.corrupt_l1(rnd):
                    self.count("faults", kind)
            elif kind in ("origin_slow", "origin_down"):
                self.origin.mode = kind[7:]
                self.count("faults", kind)
                self.stop.wait(rnd.uniform(1, 4))
                self.origin.mode = "normal"
            else:
                self.blockd.kill()
                self.blockd.wait()
                self.count("faults", kind)
                self.start_blockd()  # detaches the stale mount, re-attaches from --state-dir

    # ---- the run --------------------------------------------------------------------------------------------------
    def final_pass(self):
        bad = []
        for im in self.images:
            path = os.path.join(self.cfg["mount"], im["name"], "image.raw")
            with open(path, "rb") as f:
                data = f.read()
            if data != self.refs[im["name"]]:
                bad.append(im["name"])
        return bad

    def run(self, seconds, n_readers, seed):
        for port in self.cfg["memcached_ports"]:
            self.start_memcached(port)
        time.sleep(0.5)
        self.start_blockd()
        self.attach_all()
        threads = [threading.Thread(target=self.reader, args=(seed * 100 + i,)) for i in range(n_readers)]
        threads.append(threading.Thread(target=self.faults, args=(seed,)))
        wd = threading.Thread(target=self.watchdog, daemon=True)
        for t in threads:
            t.start()
        wd.start()
        self.stop.wait(seconds)
        self.stop.set()
        for t in threads:
            t.join(HANG_SECONDS + 30)
            if t.is_alive():
                with self.lock:
                    self.stats["hangs"] += 1
        self.origin.mode = "normal"
        for port, p in list(self.mc.items()):
            if p.poll() is not None:
                self.start_memcached(port)
        if self.blockd.poll() is not None:
            self.start_blockd()
        self.stats["final_mismatch"] = self.final_pass()
        self.stats["seconds"] = seconds
        self.stats["seed"] = seed
        return self.stats


def main():
    cfg = json.load(open(sys.argv[1]))
    seconds = float(cfg.get("seconds", 60))
    seed = int(cfg.get("seed", random.randrange(1 << 30)))
    soak = Soak(cfg)
    signal.signal(signal.SIGTERM, lambda *_: soak.stop.set())
    try:
        stats = soak.run(seconds, int(cfg.get("readers", 4)), seed)
    finally:
        soak.stop.set()
        soak.stop_all()
    print(json.dumps(stats, sort_keys=True))
    ok = (stats["wrong_bytes"] == 0 and stats["hangs"] == 0 and stats["reads"] > 0 and
          not stats["final_mismatch"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
