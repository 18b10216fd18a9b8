"""kindling's cold-start benchmark suite: bench/run.sh runs this.

    bench/run.sh [--quick] [--out DIR] [--workloads A,B] [--reps N] [SCENARIO ...]

Scenarios (all, in this order, when none is named): crypto, import, registry,
coldstart, warmstart, cache, invoke, snapshot (not in --quick: its nested
QEMU guest takes minutes).  --quick runs the Python workload with fewer
repetitions (under 5 minutes on a 2-core machine); the full run takes the
Python, Node.js, numpy/scipy and Java workloads (under 30 minutes, most of it
the eager and podman pulls of the 1.6 GiB image).

The output directory gets results.json (one record per measurement, with the
raw samples, the commit, the machine and the date), report.md and the plots
as PNG.  It needs root: the sandboxes mount images, and every cold run drops
the page cache.
"""
import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
import scenarios  # noqa: E402
import workloads  # noqa: E402
from rig import BenchError, Rig, remove_tree  # noqa: E402

SCHEMA = "kindling-bench/1"


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    os_name = ""
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": model, "mem_bytes": mem,
            "kernel": platform.release(), "os": os_name, "loadavg_start": list(os.getloadavg())}


def git_commit(top):
    try:
        c = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        d = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True)
        return c.stdout.strip(), bool(d.stdout.strip())
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", False


class Suite:
    def __init__(self, args, top):
        self.top = top
        self.build = args.build
        self.out = args.out
        self.quick = args.quick
        self.reps = args.reps or (2 if args.quick else 3)
        self.cache_iters = args.cache_iters or (500 if args.quick else 1000)
        self.workloads = args.workloads.split(",") if args.workloads else \
            (workloads.QUICK_WORKLOADS if args.quick else workloads.FULL_WORKLOADS)
        self.cache_dir = args.cache_dir
        self.nested_cpu_flags = args.nested_cpu_flags
        self.nested_smp = args.nested_smp
        self.t0 = time.monotonic()
        self.commit, self.dirty = git_commit(top)
        self.date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.machine = machine()
        self.records = []
        self.status = {}
        work = os.path.join(self.out, "work")
        remove_tree(work)  # a run that was killed may have left podman's mounts there
        self.rig = Rig(work, self.step)
        self.home = self.rig.path("home")
        self.rig.env = self.env()
        self._images, self._pushed, self._imported, self._trees = {}, {}, {}, {}
        self._registry = self._nodes = None
        self.deploy_dir = None
        self.crypto_limit = None
        self.command = " ".join(["bench/run.sh"] + args.argv)

    # ---- recording -------------------------------------------------------------------------
    def step(self, msg):
        print(f"[{time.monotonic() - self.t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    def _new(self, scenario, workload, system, metric, unit, params):
        r = {"scenario": scenario, "workload": workload, "system": system, "metric": metric, "unit": unit,
             "samples": [], "params": params, "commit": self.commit, "date": self.date,
             "machine": self.machine["hostname"]}
        self.records.append(r)
        return r

    def record(self, scenario, workload, system, metric, unit, samples, **params):
        r = self._new(scenario, workload, system, metric, unit, params)
        r["samples"] = [float(x) for x in samples]
        return r

    def add_sample(self, scenario, workload, system, metric, unit, value, **params):
        r = self.find(scenario, workload, system, metric, missing_ok=True) or \
            self._new(scenario, workload, system, metric, unit, {k: v for k, v in params.items() if v is not None})
        r["samples"].append(float(value))

    def find(self, scenario, workload, system, metric, missing_ok=False):
        for r in self.records:
            if (r["scenario"], r["workload"], r["system"], r["metric"]) == (scenario, workload, system, metric):
                return r
        if missing_ok:
            return None
        raise BenchError(f"no measurement {scenario}/{workload}/{system}/{metric}")

    def results(self):
        for r in self.records:
            r["n"] = len(r["samples"])
            r["median"] = statistics.median(r["samples"]) if r["samples"] else None
            r["p90"] = percentile(r["samples"], 0.9)
        return {"schema": SCHEMA, "commit": self.commit, "dirty": self.dirty, "date": self.date,
                "machine": self.machine, "mode": "quick" if self.quick else "full", "command": self.command,
                "settings": {"reps": self.reps, "workloads": self.workloads, "cache_iters": self.cache_iters,
                             "nested_cpu_flags": self.nested_cpu_flags, "nested_smp": self.nested_smp,
                             "drop_caches": "sync; echo 3 > /proc/sys/vm/drop_caches before every cold run"},
                "workloads": {w: dict(workloads.WORKLOADS[w], image_bytes=self._images.get(
                    workloads.WORKLOADS[w]["image"], {}).get("bytes")) for w in self.workloads},
                "scenarios": self.status, "records": self.records}

    def save(self):
        tmp = os.path.join(self.out, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.results(), f, indent=1)
        os.replace(tmp, os.path.join(self.out, "results.json"))

    # ---- the parts scenarios share ---------------------------------------------------------
    def bin(self, name):
        p = os.path.join(self.build, name)
        if not os.access(p, os.X_OK):
            raise BenchError(f"{p} is not built (run scripts/setup.sh {self.build})")
        return p

    def env(self, **kw):
        e = dict(os.environ)
        e["KINDLING_HOME"] = self.home
        e.update(kw)
        return e

    def image(self, name):
        if name not in self._images:
            self._images[name] = workloads.build_image(name, os.path.join(self.cache_dir, "images"), say=self.step)
        return self._images[name]

    def image_config(self, name):
        meta = self.image(name)
        blobs = os.path.join(meta["layout"], "blobs", "sha256")
        with open(os.path.join(meta["layout"], "index.json")) as f:
            idx = json.load(f)
        with open(os.path.join(blobs, idx["manifests"][0]["digest"][7:])) as f:
            man = json.load(f)
        with open(os.path.join(blobs, man["config"]["digest"][7:])) as f:
            return json.load(f)["config"]

    def image_env(self, name):
        return self.image_config(name).get("Env", [])

    def image_workdir(self, name):
        return self.image_config(name).get("WorkingDir") or "/"

    def registry(self):
        if not self._registry:
            self._registry = self.rig.registry(os.path.join(self.cache_dir, "registry"))
        return self._registry

    def pushed(self, name):
        """docker-registry HOST:PORT/REPO:TAG of image NAME, pushed by skopeo
        (gzip layers) unless the registry's storage already holds it."""
        if name not in self._pushed:
            meta = self.image(name)
            ref = f"{self.registry()}/kindling-bench/{name}:{meta['key']}"
            if not self.rig.has_manifest(self.registry(), ref.split("/", 1)[1]):
                self.step(f"pushing {name} to the local registry with skopeo (gzip layers; kept for later runs)")
                self.rig.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{meta['layout']}:bench",
                              f"docker://{ref}"], f"skopeo copy of {name} to the registry")
            self._pushed[name] = ref
        return self._pushed[name]

    def imported(self, name):
        """The image NAME imported from the registry into the suite's home."""
        if name not in self._imported:
            self.step(f"importing {name} from the registry into the suite's store")
            tag = f"bench-{name}:1"
            self.rig.run([self.bin("chunkify"), "import", f"docker://{self.pushed(name)}", "--name", tag],
                         f"chunkify import of {name}", env=self.env())
            self._imported[name] = tag
        return self._imported[name]

    def tree(self, name):
        if name not in self._trees:
            d = self.rig.path("trees", name)
            workloads.unpack_tree(self.image(name), d)
            self._trees[name] = d
        return self._trees[name]

    def l2_nodes(self):
        if not self._nodes:
            self._nodes = self.rig.memcached(5, mem_mb=1024)  # room for the 1.6 GiB image, 4+1 coded
        return self._nodes

    def supports_timings(self):
        r = subprocess.run([self.bin("kindling"), "run", "--help"], capture_output=True, text=True)
        return "--timings" in r.stdout + r.stderr

    # ---- running ---------------------------------------------------------------------------
    def run(self, names):
        failed = []
        for name in names:
            t0 = time.monotonic()
            self.step(f"== {name}")
            try:
                scenarios.SCENARIOS[name](self)
                self.status[name] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1)}
            except BenchError as e:
                self.status[name] = {"status": "failed", "error": str(e), "seconds": round(time.monotonic() - t0, 1)}
                self.step(f"{name} FAILED: {e}")
                failed.append(name)
            except Exception as e:  # a bug in the suite itself: keep the other scenarios' figures
                self.status[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                     "seconds": round(time.monotonic() - t0, 1)}
                traceback.print_exc()
                failed.append(name)
            self.save()
        return failed


def main(argv):
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(scenarios.ORDER)} [all]")
    p.add_argument("--quick", action="store_true", help="the Python workload, fewer repetitions (< 5 min)")
    p.add_argument("--out", help="output directory [bench-results/DATE]")
    p.add_argument("--workloads", help=f"comma-separated, from {', '.join(workloads.WORKLOADS)}")
    p.add_argument("--reps", type=int, help="repetitions per system [quick 2, full 3]")
    p.add_argument("--cache-iters", type=int, help="reads per cache figure [quick 500, full 1000]")
    p.add_argument("--cache-dir", help="where built images and the registry's storage are kept between runs "
                                       "[/var/cache/kindling/bench]")
    p.add_argument("--build", help="kindling's build directory [build]")
    p.add_argument("--nested-cpu-flags", default="",
                   help="CPU features added to the nested QEMU guest's model (qemu64,+svm,+npt) in the snapshot "
                        "scenario, e.g. +aes,+pclmulqdq,+ssse3 [none]")
    p.add_argument("--nested-smp", type=int, default=1,
                   help="vCPUs of the snapshot scenario's nested QEMU guest (the micro-VM has one) [1]")
    args = p.parse_args(argv)
    args.argv = argv
    args.build = os.path.abspath(args.build or os.path.join(top, "build"))
    args.cache_dir = os.path.abspath(args.cache_dir or "/var/cache/kindling/bench")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out = os.path.abspath(args.out or os.path.join(top, "bench-results", stamp))
    # The snapshot scenario boots a nested QEMU guest (TCG): minutes, more
    # than --quick's budget; it runs in the full run or when named.
    names = args.scenarios or [n for n in scenarios.ORDER if not (args.quick and n in scenarios.NOT_QUICK)]
    for w in (args.workloads or "").split(","):
        if w and w not in workloads.WORKLOADS:
            p.error(f"unknown workload {w!r}: choose from {', '.join(workloads.WORKLOADS)}")
    for n in names:
        if n not in scenarios.SCENARIOS:
            p.error(f"unknown scenario {n!r}: choose from {', '.join(scenarios.ORDER)}")
    if os.getuid() != 0:
        print("bench/run.sh: needs root (sandboxes mount images; cold runs drop the page cache)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    suite = Suite(args, top)
    suite.step(f"kindling bench suite ({'quick' if args.quick else 'full'}): workloads {','.join(suite.workloads)}, "
               f"{suite.reps} runs per system; results in {args.out}")
    try:
        failed = suite.run(names)
    finally:
        suite.rig.close()
        suite.save()
    report.write(os.path.join(args.out, "results.json"), args.out, say=suite.step)
    remove_tree(os.path.join(args.out, "work"))
    suite.step(f"done: {args.out}/report.md" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
