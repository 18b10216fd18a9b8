#!/usr/bin/env python3
"""Invoke latency of `kindling serve`, against baselines from the same run.

  bench/invoke.py PORT IMAGE_URI [WARM_N] [BURST_N] [--kindling PATH --scratch DIR
                  [--node NAME] [--plain NAME [--eager SCRIPT --eager-src REF
                  --sandbox-run PATH --plain-config FILE]]]

Drives a `kindling serve --no-auth` already listening on 127.0.0.1:PORT (see
bench/invoke.sh, which sets everything up) with one keep-alive HTTP client:

  - cold: the first invoke of a new function of IMAGE_URI (the Node.js
    aws-lambda-ric image), to its answer; with --node (the same image as a
    NAME:TAG in the store), against `kindling run` of it with a fresh L1
    running the same handler with node, without the Runtime API;
  - warm: WARM_N sequential invokes of that echo function, p50/p99 and
    invokes/s, against the same client talking to a plain loopback HTTP echo
    server (Python's http.server);
  - burst: BURST_N concurrent invokes of a cold function: how many answered,
    how many got 429, the p99, and how many answers came from a new sandbox;
  - with --plain (a NAME:TAG in the store): its first invoke in stdio mode,
    against `kindling run` of it with a fresh L1 and, with --eager, against
    the eager path: SCRIPT (bench/eager.sh) pulling --eager-src and unpacking
    it, then the same handler run by --sandbox-run on the unpacked tree with
    the image's configuration (--plain-config, `chunkify inspect --json`).

Every `kindling run` and eager run comes after the service's invoke it is
compared with, so the baseline, not the service, has the warmer page cache.
Prints one JSON object.
"""
import argparse
import http.client
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser(description="Invoke latency of kindling serve against baselines")
ap.add_argument("port", type=int)
ap.add_argument("image")
ap.add_argument("warm_n", type=int, nargs="?", default=500)
ap.add_argument("burst_n", type=int, nargs="?", default=50)
ap.add_argument("--kindling", help="the kindling binary, for the `kindling run` baselines")
ap.add_argument("--scratch", help="a directory for fresh L1 directories and the eager path's files")
ap.add_argument("--node", help="IMAGE_URI's image as a NAME:TAG in the store")
ap.add_argument("--plain", help="the plain (stdio) Python image as a NAME:TAG in the store")
ap.add_argument("--eager", help="bench/eager.sh")
ap.add_argument("--eager-src", help="the plain image as a skopeo source (a plain-http local registry)")
ap.add_argument("--sandbox-run", help="the sandbox_run tool")
ap.add_argument("--plain-config", help="`chunkify inspect --json` of the plain image")
ARGS = ap.parse_args()
if (ARGS.node or ARGS.plain) and not (ARGS.kindling and ARGS.scratch):
    ap.error("--node and --plain need --kindling and --scratch")
if ARGS.eager and not (ARGS.plain and ARGS.eager_src and ARGS.sandbox_run and ARGS.plain_config):
    ap.error("--eager needs --plain, --eager-src, --sandbox-run and --plain-config")
PORT, IMAGE, WARM_N, BURST_N = ARGS.port, ARGS.image, ARGS.warm_n, ARGS.burst_n
API = "/2015-03-31/functions"
EVENT = {"hello": "bench"}
PAYLOAD = json.dumps(EVENT).encode()
# `kindling run` and the eager path give the workload no stdin, so the plain
# image's handler runs with the event handed to it in place of stdin, and the
# Node.js image's handler is called directly, as its runtime would call it.
PLAIN_HANDLER = ["python3", "-c", "import io, sys; sys.stdin = io.StringIO(%r); "
                 "exec(compile(open('/app/handler.py').read(), '/app/handler.py', 'exec'))" % PAYLOAD.decode()]
NODE_HANDLER = ["node", "-e", "require('/var/task/index.js').handler(%s, {}).then("
                "r => console.log(JSON.stringify(r)))" % PAYLOAD.decode()]


def request(conn, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read(), r


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def create(conn, name, image=None, env=None):
    spec = {"FunctionName": name, "PackageType": "Image", "Code": {"ImageUri": image or IMAGE},
            "Role": "arn:aws:iam::000000000000:role/b", "Timeout": 30, "MemorySize": 256}
    if env:
        spec["Environment"] = {"Variables": env}
    st, body, _ = request(conn, "POST", API, spec)
    if st != 201:
        sys.exit("create %s: %d %s" % (name, st, body[:300]))
    for _ in range(1200):
        st, body, _ = request(conn, "GET", "%s/%s/configuration" % (API, name))
        state = json.loads(body).get("State")
        if state == "Active":
            return
        if state == "Failed":
            sys.exit("function %s failed: %s" % (name, body[:300]))
        time.sleep(0.1)
    sys.exit("function %s never became Active" % name)


def invoke(conn, name, event):
    t0 = time.perf_counter()
    st, body, _ = request(conn, "POST", "%s/%s/invocations" % (API, name), json.dumps(event).encode())
    return st, body, time.perf_counter() - t0


def timed_run(what, argv, timeout=600):
    """Run |argv| to its end; its wall time in seconds, or exit naming |what|."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit("%s: exit %d: %s" % (what, r.returncode, r.stderr[-500:]))
    return dt


def kindling_run(image, l1_name, handler):
    """`kindling run` of |image| with a new, empty L1 directory: seconds."""
    return timed_run("kindling run %s" % image,
                     [ARGS.kindling, "run", image, "--l1-dir", os.path.join(ARGS.scratch, l1_name),
                      "--isolation", "process", "--"] + handler)


def echo_server():
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            # Headers and body go out as two writes: without this, Nagle and
            # delayed ACKs add 40 ms to every answer and flatter kindling.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            b = self.rfile.read(n)
            self.send_response(200)
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    s = S(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def timed_loop(conn, path, n, payload):
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        st, body, _ = request(conn, "POST", path, payload)
        lat.append(time.perf_counter() - t)
        if st != 200:
            sys.exit("%s answered %d: %s" % (path, st, body[:300]))
    return lat, n / (time.perf_counter() - t0)


def main():
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=300)
    event, payload = EVENT, PAYLOAD
    out = {"warm_n": WARM_N, "burst_n": BURST_N}

    create(conn, "bench-echo")
    st, body, cold = invoke(conn, "bench-echo", event)
    if st != 200:
        sys.exit("cold invoke: %d %s" % (st, body[:300]))
    out["cold_first_invoke_s"] = round(cold, 4)
    if ARGS.node:
        run_s = kindling_run(ARGS.node, "l1-node", NODE_HANDLER)
        out["cold_node"] = {"invoke_s": round(cold, 3), "kindling_run_s": round(run_s, 3),
                            "ratio": round(cold / run_s, 2)}

    echo = echo_server()
    econn = http.client.HTTPConnection("127.0.0.1", echo.server_address[1], timeout=60)
    timed_loop(econn, "/", 50, payload)  # warm both up the same way
    timed_loop(conn, "%s/bench-echo/invocations" % API, 50, payload)
    e_lat, e_rate = timed_loop(econn, "/", WARM_N, payload)
    k_lat, k_rate = timed_loop(conn, "%s/bench-echo/invocations" % API, WARM_N, payload)
    out["echo"] = {"p50_ms": round(pct(e_lat, 50) * 1e3, 3), "p99_ms": round(pct(e_lat, 99) * 1e3, 3),
                   "per_s": round(e_rate, 1)}
    out["warm"] = {"p50_ms": round(pct(k_lat, 50) * 1e3, 3), "p99_ms": round(pct(k_lat, 99) * 1e3, 3),
                   "per_s": round(k_rate, 1)}
    out["warm_overhead_ms"] = {"p50": round((pct(k_lat, 50) - pct(e_lat, 50)) * 1e3, 3),
                               "p99": round((pct(k_lat, 99) - pct(e_lat, 99)) * 1e3, 3)}
    echo.shutdown()
    samples_dir = os.environ.get("KINDLING_BENCH_SAMPLES")
    if samples_dir:  # the raw latencies, for bench/run.sh's CDFs (seconds, one per line)
        for fn, lat in (("warm-echo.txt", e_lat), ("warm-invoke.txt", k_lat)):
            with open(os.path.join(samples_dir, fn), "w") as f:
                f.write("\n".join(repr(x) for x in lat) + "\n")

    # A burst on a function that has no sandbox yet.
    create(conn, "bench-burst")
    results = []
    lock = threading.Lock()

    def one():
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=300)
        st, body, dt = invoke(c, "bench-burst", event)
        cold = False
        if st == 200:
            try:
                cold = json.loads(body).get("count") == 1  # the first invoke its runtime served
            except ValueError:
                pass
        with lock:
            results.append((st, dt, cold))
        c.close()

    threads = [threading.Thread(target=one) for _ in range(BURST_N)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    out["burst"] = {"ok": len(ok), "429": sum(1 for r in results if r[0] == 429),
                    "other": sum(1 for r in results if r[0] not in (200, 429)),
                    "sandboxes_started": sum(1 for r in ok if r[2]),
                    "p50_s": round(pct([r[1] for r in ok], 50), 3) if ok else None,
                    "p99_s": round(pct([r[1] for r in ok], 99), 3) if ok else None,
                    "wall_s": round(wall, 3)}
    # The plain image cold through the service, then its baselines.
    if ARGS.plain:
        create(conn, "bench-plain", ARGS.plain, {"KINDLING_INVOKE_MODE": "stdio"})
        st, body, dt = invoke(conn, "bench-plain", event)
        if st != 200:
            sys.exit("plain cold invoke: %d %s" % (st, body[:300]))
        run_s = kindling_run(ARGS.plain, "l1-plain", PLAIN_HANDLER)
        out["cold_plain"] = {"invoke_s": round(dt, 3), "kindling_run_s": round(run_s, 3),
                             "ratio": round(dt / run_s, 2)}
        if ARGS.eager:
            dest = os.path.join(ARGS.scratch, "eager")
            pull_s = timed_run("bench/eager.sh", [ARGS.eager, ARGS.eager_src, dest, "--src-tls-verify=false"])
            run_s = timed_run("sandbox_run on the unpacked tree",
                              [ARGS.sandbox_run, os.path.join(dest, "bundle", "rootfs"), "--config",
                               ARGS.plain_config, "--isolation", "process", "--"] + PLAIN_HANDLER)
            subprocess.run(["rm", "-rf", dest], check=True)
            out["cold_plain"].update({"eager_pull_unpack_s": round(pull_s, 3), "eager_run_s": round(run_s, 3),
                                      "eager_total_s": round(pull_s + run_s, 3),
                                      "ratio_to_eager": round(dt / (pull_s + run_s), 2)})
        request(conn, "DELETE", "%s/bench-plain" % API)
    for name in ("bench-echo", "bench-burst"):
        request(conn, "DELETE", "%s/%s" % (API, name))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
