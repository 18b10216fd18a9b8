#!/usr/bin/env python3
"""Invoke latency of `kindling serve`, against baselines from the same run.

  bench/invoke.py PORT IMAGE_URI [WARM_N] [BURST_N] [PLAIN_IMAGE L1_DIR KINDLING]

Drives a `kindling serve --no-auth` already listening on 127.0.0.1:PORT (see
bench/invoke.sh, which sets everything up) with one keep-alive HTTP client:

  - warm: WARM_N sequential invokes of an echo function (the Node.js
    aws-lambda-ric image), p50/p99 and invokes/s, against the same client
    talking to a plain loopback HTTP echo server (Python's http.server);
  - cold: the first invoke of a new function, to its answer;
  - burst: BURST_N concurrent invokes of a cold function: how many answered,
    how many got 429, the p99, and how many answers came from a new sandbox;
  - with PLAIN_IMAGE (a NAME:TAG in the store): its first invoke in stdio
    mode, against `kindling run` of it with a fresh L1 directory L1_DIR.

Prints one JSON object.
"""
import http.client
import http.server
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time

PORT = int(sys.argv[1])
IMAGE = sys.argv[2]
WARM_N = int(sys.argv[3]) if len(sys.argv) > 3 else 500
BURST_N = int(sys.argv[4]) if len(sys.argv) > 4 else 50
API = "/2015-03-31/functions"


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
    event = {"hello": "bench"}
    payload = json.dumps(event).encode()
    out = {"warm_n": WARM_N, "burst_n": BURST_N}

    create(conn, "bench-echo")
    st, body, cold = invoke(conn, "bench-echo", event)
    if st != 200:
        sys.exit("cold invoke: %d %s" % (st, body[:300]))
    out["cold_first_invoke_s"] = round(cold, 4)

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
    # The plain image cold through the service, against `kindling run` of the
    # same image with an empty L1 of its own (run second, so it, not the
    # service, has the warmer page cache).
    if len(sys.argv) > 5:
        plain, l1_dir = sys.argv[5], sys.argv[6]
        create(conn, "bench-plain", plain, {"KINDLING_INVOKE_MODE": "stdio"})
        st, body, dt = invoke(conn, "bench-plain", event)
        if st != 200:
            sys.exit("plain cold invoke: %d %s" % (st, body[:300]))
        t0 = time.perf_counter()
        # `kindling run` gives the workload no stdin, so the same handler runs
        # with the event handed to it in place of stdin.
        handler = ("import io, sys; sys.stdin = io.StringIO(%r); "
                   "exec(compile(open('/app/handler.py').read(), '/app/handler.py', 'exec'))" % payload.decode())
        r = subprocess.run([sys.argv[7], "run", plain, "--l1-dir", l1_dir, "--isolation", "process", "--",
                            "python3", "-c", handler], capture_output=True, timeout=300)
        run_s = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit("kindling run %s: %d %s" % (plain, r.returncode, r.stderr[-500:]))
        out["cold_plain"] = {"invoke_s": round(dt, 3), "kindling_run_s": round(run_s, 3),
                             "ratio": round(dt / run_s, 2)}
        request(conn, "DELETE", "%s/bench-plain" % API)
    for name in ("bench-echo", "bench-burst"):
        request(conn, "DELETE", "%s/%s" % (API, name))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
