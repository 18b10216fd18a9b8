#!/usr/bin/env python3
"""A bounded load on a kindling fleet, through its frontends, signed as the
AWS CLI signs (the botocore inside Debian's awscli).

  fleet_load.py --endpoints URL,URL --credentials FILE [--profile kindling]
                --functions NAME,NAME,... [--clients 200] [--seconds 60]
                [--zipf 1.1] [--event-fraction 0.1] [--seed 1]
                [--accepted FILE] [--out FILE]

Each client thread loops until the time is up: it picks a function by Zipf
popularity (rank r has weight 1/r^s), and sends either a synchronous invoke
or, with probability --event-fraction, an Event invoke, to one frontend (its
own, round robin by thread).  A frontend that refuses the connection is
skipped for the next (as a load balancer would: nothing was accepted); a
request that was sent and then lost its connection counts as an error.

The functions must answer as tests/images/lambda/shell/function.sh does:
{"count": N, ...}, where N = 1 is the first invocation of a new sandbox, so
the cold-start fraction is counted from the answers.

--accepted FILE gets the request id of every Event invoke answered 202, one
per line (for the caller to check that each was delivered).  The summary
(JSON) goes to --out and stdout: invokes, invokes_per_s, cold_fraction,
p50_ms, p99_ms, throttled (429), errors by kind, events_accepted.
"""
import argparse
import configparser
import http.client
import json
import random
import threading
import time
import urllib.parse

import awscli  # noqa: F401  (makes the bundled botocore importable)
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

p = argparse.ArgumentParser()
p.add_argument("--endpoints", required=True)
p.add_argument("--credentials", required=True)
p.add_argument("--profile", default="kindling")
p.add_argument("--functions", required=True)
p.add_argument("--clients", type=int, default=200)
p.add_argument("--seconds", type=float, default=60)
p.add_argument("--zipf", type=float, default=1.1)
p.add_argument("--event-fraction", type=float, default=0.1)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--accepted")
p.add_argument("--out")
a = p.parse_args()

cp = configparser.ConfigParser()
cp.read(a.credentials)
creds = Credentials(cp[a.profile]["aws_access_key_id"], cp[a.profile]["aws_secret_access_key"])
endpoints = [urllib.parse.urlsplit(u) for u in a.endpoints.split(",")]
functions = a.functions.split(",")
weights = [1.0 / (r + 1) ** a.zipf for r in range(len(functions))]

lock = threading.Lock()
latencies = []
stats = {"invokes": 0, "cold": 0, "throttled": 0, "events_accepted": 0, "failovers": 0}
errors = {}
accepted = []
deadline = time.monotonic() + a.seconds


def count_error(kind):
    with lock:
        errors[kind] = errors.get(kind, 0) + 1


def signed(method, ep, path, body, headers):
    url = "http://%s%s" % (ep.netloc, path)
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(creds, "lambda", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def client(idx):
    rnd = random.Random(a.seed * 1000 + idx)
    which = idx % len(endpoints)
    conn = None
    while time.monotonic() < deadline:
        fn = rnd.choices(functions, weights)[0]
        event = rnd.random() < a.event_fraction
        body = json.dumps({"client": idx}).encode()
        headers = {"Content-Type": "application/json",
                   "X-Amz-Invocation-Type": "Event" if event else "RequestResponse"}
        path = "/2015-03-31/functions/%s/invocations" % fn
        for attempt in range(len(endpoints)):
            ep = endpoints[which]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(ep.hostname, ep.port, timeout=120)
                    conn.connect()
            except OSError:
                # Nothing listens there: nothing was sent, try the next one.
                conn = None
                which = (which + 1) % len(endpoints)
                with lock:
                    stats["failovers"] += 1
                continue
            break
        if conn is None:
            count_error("no frontend answers")
            time.sleep(0.2)
            continue
        t0 = time.monotonic()
        try:
            conn.request("POST", path, body=body, headers=signed("POST", ep, path, body, headers))
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conn = None
            count_error("connection lost in flight (%s)" % type(e).__name__)
            which = (which + 1) % len(endpoints)
            continue
        ms = (time.monotonic() - t0) * 1000
        if r.status == 429:
            with lock:
                stats["throttled"] += 1
            time.sleep(0.05)
            continue
        if event:
            if r.status == 202:
                with lock:
                    stats["events_accepted"] += 1
                    accepted.append(r.getheader("x-amzn-RequestId") or "")
            else:
                count_error("Event %d %s" % (r.status, r.getheader("x-amzn-ErrorType") or ""))
            continue
        if r.status != 200 or r.getheader("X-Amz-Function-Error"):
            count_error("%d %s%s" % (r.status, r.getheader("x-amzn-ErrorType") or "",
                                     (" " + data[:120].decode(errors="replace")) if r.status != 200 else
                                     " function error"))
            continue
        try:
            n = json.loads(data).get("count")
        except ValueError:
            count_error("200 with a body that is not JSON")
            continue
        with lock:
            stats["invokes"] += 1
            latencies.append(ms)
            if n == 1:
                stats["cold"] += 1


t_start = time.monotonic()
threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join(a.seconds + 300)
elapsed = time.monotonic() - t_start

latencies.sort()


def pct(q):
    return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None


out = {
    "clients": a.clients,
    "seconds": round(elapsed, 1),
    "functions": len(functions),
    "invokes": stats["invokes"],
    "invokes_per_s": round(stats["invokes"] / elapsed, 1),
    "cold_fraction": round(stats["cold"] / stats["invokes"], 4) if stats["invokes"] else None,
    "p50_ms": pct(0.50),
    "p99_ms": pct(0.99),
    "throttled": stats["throttled"],
    "failovers": stats["failovers"],
    "events_accepted": stats["events_accepted"],
    "errors": errors,
    "error_count": sum(errors.values()),
}
if a.accepted:
    with open(a.accepted, "w") as f:
        f.write("".join(x + "\n" for x in accepted))
text = json.dumps(out, indent=1, sort_keys=True)
if a.out:
    with open(a.out, "w") as f:
        f.write(text + "\n")
print(text)
