"""The suite's scenarios.  Each takes a Suite (its rig, build, settings and
record()) and records measurements; every figure is recorded next to the
baseline it is compared with, measured in the same run, runs of the systems
alternating so that drift on a shared machine falls on all of them alike.

Cold runs drop the page cache first (sync; echo 3 > drop_caches) and start
from an empty cache or store of the system's own: a new L1 directory for
kindling, a new --root for podman, a new directory for skopeo + umoci.  Warm
runs (kindling's L1 warm, the page-cached floor) keep the page cache as the
previous run left it.
"""
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import time

import workloads
from rig import BenchError, drop_caches, read_json_line, remove_tree


# podman run's flags here: runc (crun refuses this kernel's hybrid cgroup
# layout) and explicit ulimits (podman's defaults ask for more than runc may
# set here: "error setting rlimit ... operation not permitted").
PODMAN_RUN = ["--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=4096:4096"]


def speed(alg, block=524288):
    """openssl speed of ALG on BLOCK-byte blocks (default 512 KiB, a chunk), bytes/s."""
    out = subprocess.run(["openssl", "speed", "-evp", alg, "-bytes", str(block), "-seconds", "2"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0].lower() in (alg.lower(), "aes-256-ctr") and f[-1].endswith("k"):
            return float(f[-1][:-1]) * 1000
    raise BenchError(f"openssl speed -evp {alg}: no figure in its output (is openssl installed?)")


def crypto(s):
    """The crypto limit an import is compared with: per byte of image, two
    SHA-256 passes (chunk key, chunk name) and one AES-256-CTR pass."""
    s.step("crypto limit (openssl speed, 512 KiB blocks)")
    sha, aes = speed("sha256"), speed("aes-256-ctr")
    per_core = 1 / (2 / sha + 1 / aes)
    cores = os.cpu_count() or 1
    s.record("crypto", None, "openssl", "sha256_throughput", "B/s", [sha])
    s.record("crypto", None, "openssl", "aes256ctr_throughput", "B/s", [aes])
    s.record("crypto", None, "openssl", "limit_per_core", "B/s", [per_core])
    s.record("crypto", None, "openssl", "limit_all_cores", "B/s", [per_core * cores], cores=cores)
    s.crypto_limit = per_core * cores


def _images(s):
    seen = []
    for w in s.workloads:
        img = workloads.WORKLOADS[w]["image"]
        if img not in seen:
            seen.append(img)
    return seen


def import_throughput(s):
    """chunkify import of each image's OCI layout into an empty store, against
    the crypto limit; and the same files as one layer, for the multi-layer
    speedup."""
    if not getattr(s, "crypto_limit", None):
        crypto(s)
    for name in _images(s):
        meta = s.image(name)
        one = _one_layer(s, name, meta)
        for rep in range(s.reps):
            for label, lay in (("layers", meta), ("one_layer", one)):
                s.step(f"import {name} ({label}, {lay['layers']} layers, {lay['bytes'] >> 20} MiB), run {rep + 1}")
                home = s.rig.fresh_dir("import-home")
                drop_caches()
                t0 = time.monotonic()
                s.rig.run([s.bin("chunkify"), "import", f"oci:{lay['layout']}:{lay['tag']}", "--name", "bench:1",
                           "--json"], f"chunkify import of {name}", env=s.env(KINDLING_HOME=home))
                dt = time.monotonic() - t0
                shutil.rmtree(home)
                s.add_sample("import", name, f"kindling-{label}", "seconds", "s", dt, bytes=lay["bytes"],
                             layers=lay["layers"])
        for label in ("layers", "one_layer"):
            r = s.find("import", name, f"kindling-{label}", "seconds")
            thr = r["params"]["bytes"] / statistics.median(r["samples"])
            s.record("import", name, f"kindling-{label}", "throughput", "B/s", [thr], layers=r["params"]["layers"],
                     vs_crypto_limit=thr / s.crypto_limit)
        a = s.find("import", name, "kindling-one_layer", "seconds")["samples"]
        b = s.find("import", name, "kindling-layers", "seconds")["samples"]
        s.record("import", name, "kindling", "multi_layer_speedup", "x", [statistics.median(a) / statistics.median(b)],
                 layers=meta["layers"])


def _one_layer(s, name, meta):
    """The image's files as a single layer (cached beside the image)."""
    dest = os.path.join(os.path.dirname(meta["layout"]), "one-layer")
    info = os.path.join(dest, "meta.json")
    if os.path.exists(info):
        with open(info) as f:
            return json.load(f)
    s.step(f"building the one-layer variant of {name}")
    tmp = dest + ".tmp"
    remove_tree(tmp)
    workloads.unpack_tree(meta, os.path.join(tmp, "tree"))
    subprocess.run(["tar", "-C", os.path.join(tmp, "tree"), "--sort=name", "-cf", os.path.join(tmp, "l.tar"), "."],
                   check=True)
    shutil.rmtree(os.path.join(tmp, "tree"))
    workloads.make_layout(os.path.join(tmp, "layout"), "bench", [os.path.join(tmp, "l.tar")])
    os.unlink(os.path.join(tmp, "l.tar"))
    one = {"layout": os.path.join(dest, "layout"), "tag": "bench", "layers": 1,
           "bytes": sum(os.path.getsize(os.path.join(tmp, "layout", "blobs", "sha256", b))
                        for b in os.listdir(os.path.join(tmp, "layout", "blobs", "sha256")))}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(one, f)
    os.rename(tmp, dest)
    return one


def registry_import(s):
    """Deploy time from a registry: kindling's import against `podman pull`
    and skopeo copy + umoci unpack, of the same image from the same
    docker-registry (gzip layers, as skopeo pushes them)."""
    for name in _images(s):
        ref = s.pushed(name)
        for rep in range(s.reps):
            for system in ("kindling", "podman", "eager"):
                s.step(f"registry: {system} deploys {name}, run {rep + 1}")
                drop_caches()
                try:
                    t = _deploy(s, system, ref)
                finally:
                    _undeploy(s, system)
                s.add_sample("registry", name, system, "seconds", "s", t, image=ref)
        k = statistics.median(s.find("registry", name, "kindling", "seconds")["samples"])
        for other in ("podman", "eager"):
            o = statistics.median(s.find("registry", name, other, "seconds")["samples"])
            s.record("registry", name, "kindling", f"vs_{other}", "x", [k / o])


def _deploy(s, system, ref):
    """Time SYSTEM's deploy of docker://REF into its own fresh store."""
    s.deploy_dir = s.rig.fresh_dir(f"deploy-{system}")
    t0 = time.monotonic()
    if system == "kindling":
        s.rig.run([s.bin("chunkify"), "import", f"docker://{ref}", "--name", "bench:1"], "chunkify import (registry)",
                  env=s.env(KINDLING_HOME=s.deploy_dir))
    elif system == "podman":
        s.rig.run(["podman", *_podman_root(s.deploy_dir), "pull", "-q", "--tls-verify=false", ref], "podman pull")
    else:
        s.rig.run([os.path.join(s.top, "bench", "eager.sh"), f"docker://{ref}", os.path.join(s.deploy_dir, "e"),
                   "--src-tls-verify=false"], "skopeo copy + umoci unpack")
    return time.monotonic() - t0


def _undeploy(s, system):
    if system == "podman":
        subprocess.run(["podman", *_podman_root(s.deploy_dir), "rmi", "-a", "-f"], capture_output=True)
        remove_tree(_podman_runroot(s.deploy_dir))
    remove_tree(s.deploy_dir)


def _podman_runroot(d):
    # podman refuses a runroot longer than 50 characters, which a work
    # directory under a test's temporary directory easily is; a short name
    # derived from D keeps one runroot per store.
    return "/tmp/kbp-" + hashlib.sha256(d.encode()).hexdigest()[:16]


def _podman_root(d):
    return ["--root", os.path.join(d, "root"), "--runroot", _podman_runroot(d), "--storage-driver", "overlay"]


# The cold start from the origin alone, no prefetch, on the image re-imported
# with the workload's own startup trace (the "trace layout"); the LAZY
# systems run on the usual layout.
TRACED = "kindling-origin-trace"
LAZY = [("kindling-origin", [], False), ("kindling-origin-prefetch", [], True),
        ("kindling-l2", ["l2"], False), ("kindling-l2-prefetch", ["l2"], True),
        ("kindling-l1warm", ["l1warm"], False), ("kindling-l1warm-prefetch", ["l1warm"], True)]


def coldstart(s):
    """Time to first output and to exit of each workload, per system; bytes
    fetched against bytes read for kindling.  podman's and the eager path's
    pull is made once per repetition and image, then each workload of that
    image runs on it after the page cache is dropped; their time is that pull
    plus the run."""
    nodes = s.l2_nodes()
    by_image = {}
    for w in s.workloads:
        by_image.setdefault(workloads.WORKLOADS[w]["image"], []).append(w)
    for img, group in by_image.items():
        name = s.imported(img)
        cfg_env = s.image_env(img)
        tree = s.tree(img)
        s.step(f"coldstart {img}: priming L2 with the image")
        _prime(s, name, nodes)
        l1warm, traces, traced = {}, _Traces(s, name, group), {}
        for w in group:
            s.step(f"coldstart {w}: recording the startup trace, warming an L1, page-caching the tree")
            traces.before_recording()
            _krun(s, w, name, [], prefetch=True, l1=s.rig.fresh_dir("l1"))  # records the startup trace
            traces.recorded(w)
            l1warm[w] = s.rig.fresh_dir("l1warm")
            _krun(s, w, name, ["--l2", nodes], prefetch=False, l1=l1warm[w])
            _floor(s, w, tree, cfg_env)
        for w in group:
            traced[w] = _traced_import(s, img, w, traces.saved[w])
        for rep in range(s.reps):
            for w in group:
                for system, tiers, pf in LAZY:
                    s.step(f"coldstart {w}: {system}, run {rep + 1}")
                    l1 = l1warm[w] if "l1warm" in tiers else s.rig.fresh_dir("l1")
                    if pf:
                        traces.use(w)
                    drop_caches()
                    rep_json, t = _krun(s, w, name, ["--l2", nodes] if "l2" in tiers else [], prefetch=pf, l1=l1)
                    _lazy_samples(s, w, system, rep_json, t)
                    if l1 != l1warm[w]:
                        shutil.rmtree(l1)
                s.step(f"coldstart {w}: {TRACED}, run {rep + 1}")
                l1 = s.rig.fresh_dir("l1")
                drop_caches()
                rep_json, t = _krun(s, w, traced[w], [], prefetch=False, l1=l1)
                _lazy_samples(s, w, TRACED, rep_json, t)
                shutil.rmtree(l1)
            for system in ("podman", "eager"):
                s.step(f"coldstart {img}: {system} pull, then {', '.join(group)}, run {rep + 1}")
                drop_caches()
                try:
                    deploy = _deploy(s, system, s.pushed(img))
                    for w in group:
                        drop_caches()
                        t = _run_deployed(s, system, w, cfg_env)
                        s.add_sample("coldstart", w, system, "first_output_s", "s", deploy + t.first_output_s)
                        s.add_sample("coldstart", w, system, "exit_s", "s", deploy + t.exit_s)
                        s.add_sample("coldstart", w, system, "deploy_s", "s", deploy)
                finally:
                    _undeploy(s, system)
            for w in group:
                s.step(f"coldstart {w}: page-cached floors, run {rep + 1}")
                spec = workloads.WORKLOADS[w]
                t = _floor(s, w, tree, cfg_env)
                s.add_sample("coldstart", w, "floor-chroot", "first_output_s", "s", t.first_output_s)
                s.add_sample("coldstart", w, "floor-chroot", "exit_s", "s", t.exit_s)
                t = s.rig.timed([s.bin("sandbox_run"), tree, "--workdir", s.image_workdir(img)] +
                                sum((["--env", e] for e in cfg_env), []) + ["--", *spec["cmd"]],
                                f"sandbox_run {w} on the page-cached tree", expect=spec["expect"])
                s.add_sample("coldstart", w, "floor-sandbox", "first_output_s", "s", t.first_output_s)
                s.add_sample("coldstart", w, "floor-sandbox", "exit_s", "s", t.exit_s)
        for w in group:
            eager = statistics.median(s.find("coldstart", w, "eager", "first_output_s")["samples"])
            pod = statistics.median(s.find("coldstart", w, "podman", "first_output_s")["samples"])
            for system in [x[0] for x in LAZY] + [TRACED]:
                k = statistics.median(s.find("coldstart", w, system, "first_output_s")["samples"])
                s.record("coldstart", w, system, "speedup_vs_eager", "x", [eager / k])
                s.record("coldstart", w, system, "speedup_vs_podman", "x", [pod / k])
            shutil.rmtree(l1warm[w])


def _prime(s, name, nodes):
    for attempt in range(5):
        try:
            s.rig.run([s.bin("chunkify"), "prime", name, "--l2", nodes], "chunkify prime (L2)")
            return
        except BenchError:
            # On a small host a set can time out under the load of priming a whole image
            # (the L2 client's 200 ms timeout); a retry writes only what is missing.
            if attempt == 4:
                raise
            time.sleep(2)


def _traced_import(s, img, w, trace):
    """Image IMG imported again from the registry with workload W's startup
    trace (chunkify import --layout-trace), as its own image: a workload
    that shares its image with others gets a layout from its own start, so
    each figure of the trace layout is the layout that workload would be
    published with.  Returns the image's name."""
    tag = f"bench-{img}-trace-{w}:1"
    s.step(f"coldstart {w}: re-importing {img} with {w}'s startup trace (chunkify import --layout-trace)")
    out = s.rig.run([s.bin("chunkify"), "import", f"docker://{s.pushed(img)}", "--name", tag, "--json",
                     "--layout-trace", trace], f"chunkify import --layout-trace of {img} ({w})", env=s.env())
    rep = read_json_line(out, f"chunkify import --layout-trace of {img}")
    lt = rep.get("layout_trace") or {}
    s.record("coldstart", w, TRACED, "layout_files_first", "files", [lt.get("files", 0)],
             layers=lt.get("layers"), recorded_on=lt.get("recorded_on"))
    return tag


class _Traces:
    """One startup trace per workload.  blockd keeps one trace per image
    (traces/<manifest digest> in the origin), so where workloads share an
    image the second one would prefetch the first one's start; each
    workload's trace is recorded from none, kept (for its traced re-import)
    and put back before its prefetch runs."""

    def __init__(self, s, name, group):
        out = s.rig.run([s.bin("chunkify"), "--json", "inspect", name], f"chunkify inspect {name}", env=s.env())
        digest = read_json_line(out, f"chunkify inspect {name}")["manifest"]
        self.image_trace = os.path.join(s.home, "store", "traces", digest)
        self.shared = len(group) > 1
        self.saved = {}
        self.s = s

    def before_recording(self):
        if self.shared and os.path.exists(self.image_trace):
            os.unlink(self.image_trace)

    def recorded(self, w):
        if not os.path.exists(self.image_trace):
            raise BenchError(f"no startup trace at {self.image_trace} after the recording run of {w}")
        self.saved[w] = self.s.rig.path(f"trace-{w}.json")
        shutil.copyfile(self.image_trace, self.saved[w])

    def use(self, w):
        if self.shared:
            shutil.copyfile(self.saved[w], self.image_trace)


def _krun(s, w, name, extra, prefetch, l1):
    spec = workloads.WORKLOADS[w]
    argv = [s.bin("kindling"), "run", name, "--json", "--l1-dir", l1, *extra]
    if not prefetch:
        argv.append("--no-prefetch")
    t = s.rig.timed(argv + ["--", *spec["cmd"]], f"kindling run {name} ({w})", expect=spec["expect"])
    return read_json_line(t.err, f"kindling run {name}"), t


def _lazy_samples(s, w, system, rep, t):
    s.add_sample("coldstart", w, system, "first_output_s", "s", t.first_output_s)
    s.add_sample("coldstart", w, system, "exit_s", "s", t.exit_s)
    fetched, read, meta = rep["bytes_fetched"], rep["bytes_read"], rep["metadata_bytes"]
    s.add_sample("coldstart", w, system, "bytes_fetched", "B", fetched)
    s.add_sample("coldstart", w, system, "bytes_read", "B", read)
    s.add_sample("coldstart", w, system, "metadata_bytes", "B", meta)
    s.add_sample("coldstart", w, system, "fetch_amplification", "x", fetched / read if read else 0.0)
    s.add_sample("coldstart", w, system, "fetched_vs_read_plus_metadata", "x",
                 fetched / (read + meta) if read + meta else 0.0)
    for tier in ("l1", "l2", "l3"):
        s.add_sample("coldstart", w, system, f"chunks_{tier}", "chunks", rep["chunks"][tier])
    s.add_sample("coldstart", w, system, "image_size", "B", rep["image_size"])


def _run_deployed(s, system, w, cfg_env):
    spec = workloads.WORKLOADS[w]
    if system == "podman":
        argv = ["podman", *_podman_root(s.deploy_dir), "run", "--rm", *PODMAN_RUN, "--entrypoint", spec["cmd"][0],
                s.pushed(spec["image"]), *spec["cmd"][1:]]
    else:
        argv = [s.bin("sandbox_run"), os.path.join(s.deploy_dir, "e", "bundle", "rootfs"),
                "--workdir", s.image_workdir(spec["image"])] + sum((["--env", e] for e in cfg_env), []) + \
               ["--", *spec["cmd"]]
    return s.rig.timed(argv, f"{system} run of {w}", expect=spec["expect"])


def _floor(s, w, tree, cfg_env):
    """The page-cached floor: unshare + chroot on the unpacked tree."""
    spec = workloads.WORKLOADS[w]
    argv = [shutil.which("unshare") or "/usr/bin/unshare", "-mpf", f"--mount-proc={tree}/proc",
            shutil.which("chroot") or "/usr/sbin/chroot", tree, *spec["cmd"]]
    env = dict(e.split("=", 1) for e in cfg_env if "=" in e)
    return s.rig.timed(argv, f"unshare + chroot {w}", env=env, expect=spec["expect"])


def warmstart(s):
    """kindling run with a warm L1 and page cache against unshare + chroot on
    the same page-cached tree, alternating; with kindling's own breakdown of
    where the start went where `kindling run --timings` is there."""
    w = s.workloads[0]
    spec = workloads.WORKLOADS[w]
    img = spec["image"]
    name = s.imported(img)
    tree = s.tree(img)
    cfg_env = s.image_env(img)
    l1 = s.rig.fresh_dir("l1-warmstart")
    s.step(f"warm start {w}: warming L1 and the page cache")
    _krun(s, w, name, [], prefetch=False, l1=l1)
    _floor(s, w, tree, cfg_env)
    timings = s.supports_timings()
    n = max(5, s.reps * 4)
    for i in range(n):
        if i % 5 == 0:
            s.step(f"warm start {w}: runs {i + 1}-{min(n, i + 5)} of {n}")
        extra = []
        tpath = s.rig.path("timings.json")
        if timings:
            extra = ["--timings", tpath]
        _, t = _krun(s, w, name, extra, prefetch=False, l1=l1)
        s.add_sample("warmstart", w, "kindling-l1warm", "first_output_s", "s", t.first_output_s)
        if timings:
            with open(tpath) as f:
                tj = json.load(f)
            for ph in tj.get("phases", []):
                s.add_sample("warmstart", w, "kindling-l1warm", f"phase_ms:{ph['name']}", "ms", ph["ms"])
        t = _floor(s, w, tree, cfg_env)
        s.add_sample("warmstart", w, "floor-chroot", "first_output_s", "s", t.first_output_s)
    k = statistics.median(s.find("warmstart", w, "kindling-l1warm", "first_output_s")["samples"])
    f = statistics.median(s.find("warmstart", w, "floor-chroot", "first_output_s")["samples"])
    s.record("warmstart", w, "kindling-l1warm", "vs_floor", "x", [k / f])
    shutil.rmtree(l1)


CACHE_LINE = re.compile(r"^\s+(.+?)\s+p50\s+([\d.]+) us\s+p99\s+([\d.]+) us\s+p99\.9\s+([\d.]+) us")


def cache_tiers(s):
    """bench/cache.sh: 512 KiB chunk reads per tier against raw memcached GETs
    and the CPU floor of a verified read; the L2 tail with a slow node.  Its
    raw samples come through KINDLING_BENCH_SAMPLES."""
    runs = 1 if s.quick else 3
    for run in range(runs):
        s.step(f"cache tiers: bench/cache.sh {s.cache_iters}, run {run + 1} of {runs}")
        sdir = s.rig.fresh_dir("cache-samples")
        out = s.rig.run([os.path.join(s.top, "bench", "cache.sh"), str(s.cache_iters)], "bench/cache.sh",
                        env=s.env(KINDLING_BUILD_DIR=s.build, KINDLING_BENCH_SAMPLES=sdir))
        with open(s.rig.path(f"cache-{run}.txt"), "w") as f:
            f.write(out)
        figures = {}
        for line in out.splitlines():
            m = CACHE_LINE.match(line)
            if m:
                figures[m.group(1)] = tuple(float(x) for x in m.group(2, 3, 4))
        if not figures:
            raise BenchError("bench/cache.sh printed no figures")
        for fn in sorted(os.listdir(sdir)):
            with open(os.path.join(sdir, fn)) as f:
                samples = [float(x) for x in f.read().split()]
            s.record("cache", None, fn[:-4], "read_latency", "us", samples, run=run)
        for label, (p50, p99, p999) in figures.items():
            s.record("cache", None, label, "read_latency_summary", "us", [p50, p99, p999], run=run,
                     fields=["p50", "p99", "p99.9"])
        for line in out.splitlines():
            m = re.search(r"floor of a verified L2 read \(raw 128 KiB GET \+ SHA-256 \+ AES: ([\d.]+) us\)", line)
            if m:
                s.record("cache", None, "verify-floor", "latency", "us", [float(m.group(1))], run=run)
            m = re.search(r"p99 slow/healthy: 4\+1 ([\d.]+)x", line)
            if m:
                s.record("cache", None, "l2-4+1-slow-node", "p99_vs_healthy", "x", [float(m.group(1))], run=run)


def invoke(s):
    """bench/invoke.sh: warm invokes through `kindling serve` against a
    loopback HTTP echo server, cold invokes against `kindling run` and the
    eager path, and a burst on a function with no sandbox."""
    warm_n, burst_n = (200, 10) if s.quick else (500, 50)
    s.step(f"invoke: bench/invoke.sh {warm_n} {burst_n} (builds the Lambda test images once)")
    sdir = s.rig.fresh_dir("invoke-samples")
    out = s.rig.run([os.path.join(s.top, "bench", "invoke.sh"), str(warm_n), str(burst_n)], "bench/invoke.sh",
                    env=s.env(KINDLING_BUILD_DIR=s.build, KINDLING_BENCH_SAMPLES=sdir), timeout=2400)
    r = read_json_line(out, "bench/invoke.sh")
    for fn, system in (("warm-echo.txt", "http-echo"), ("warm-invoke.txt", "kindling-serve")):
        with open(os.path.join(sdir, fn)) as f:
            s.record("invoke", "node-ric", system, "warm_latency", "s", [float(x) for x in f.read().split()])
    s.record("invoke", "node-ric", "kindling-serve", "warm_overhead_p50", "ms", [r["warm_overhead_ms"]["p50"]])
    s.record("invoke", "node-ric", "kindling-serve", "warm_overhead_p99", "ms", [r["warm_overhead_ms"]["p99"]])
    for key, workload in (("cold_plain", "python-plain"), ("cold_node", "node-ric")):
        c = r.get(key)
        if not c:
            continue
        s.record("invoke", workload, "kindling-serve", "cold_invoke_s", "s", [c["invoke_s"]])
        s.record("invoke", workload, "kindling-run", "cold_run_s", "s", [c["kindling_run_s"]])
        s.record("invoke", workload, "kindling-serve", "cold_vs_kindling_run", "x", [c["ratio"]])
        if "eager_total_s" in c:
            s.record("invoke", workload, "eager", "cold_run_s", "s", [c["eager_total_s"]])
            s.record("invoke", workload, "kindling-serve", "cold_vs_eager", "x", [c["ratio_to_eager"]])
    b = r["burst"]
    s.record("invoke", "node-ric", "kindling-serve", "burst_answered", "invokes", [b["ok"]], burst=burst_n,
             throttled=b["429"], other=b["other"])
    if b.get("p99_s") is not None:
        s.record("invoke", "node-ric", "kindling-serve", "burst_p99_s", "s", [b["p99_s"]], burst=burst_n)


# ---- snapshot restore against a cold boot, under nested KVM ----------------------------------------------------------
SNAP_SYSTEMS = [("cold", "kvmm cold boot"), ("lazy", "kvmm restore (lazy, L1 cold)"),
                ("prefetch", "kvmm restore (lazy, trace prefetch)"),
                ("host", "kvmm restore (host memory warm: a later restore on this host)"),
                ("file", "kvmm restore (File, local memory file)")]
SNAP_WORKLOAD = "snapfn"
SNAP_FN = """#!/bin/sh
# The snapshot benchmark's function: its initialisation reads and hashes the
# image's 8 MiB of data and keeps a copy in memory (tmpfs); then it answers.
# "snap": print "ready", wait to be restored, then answer.
sum=$(cat /app/data/*.bin | sha256sum | cut -c1-16)
mkdir -p /tmp/ws && cp /app/data/*.bin /tmp/ws/
if [ "$1" = snap ]; then
\techo "ready $sum"
\twhile [ ! -e /run/kindling/restore ]; do usleep 5000; done
fi
echo "response $sum restored=$(cat /run/kindling/restore 2>/dev/null || echo 0)"
"""
SNAP_LINE = re.compile(r"^SNAPBENCH (\w+) (.*)$")


def _snap_image(s, home):
    """The function's image: static busybox, /app/fn.sh, 8 MiB of random
    data; imported with chunkify into HOME's store as snapfn:1."""
    root = s.rig.fresh_dir("snap-root")
    for d in ("bin", "app/data", "etc", "tmp", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for a in ("sh", "cat", "sha256sum", "cut", "mkdir", "cp", "usleep", "echo", "ls"):
        os.symlink("busybox", os.path.join(root, "bin", a))
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    for i in range(4):
        with open(os.path.join(root, "app", "data", f"{i}.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
    fn = os.path.join(root, "app", "fn.sh")
    with open(fn, "w") as f:
        f.write(SNAP_FN)
    os.chmod(fn, 0o755)
    tar = s.rig.path("snap-layer.tar")
    s.rig.run(["tar", "-C", root, "--owner=0", "--group=0", "-cf", tar, "."], "tar of the snapshot image")
    layout = s.rig.path("snap-layout")
    remove_tree(layout)
    s.rig.run(["python3", os.path.join(s.top, "bench", "make_layout.py"), layout, "fn", tar], "make_layout.py")
    env = s.env(KINDLING_HOME=home)
    s.rig.run([s.bin("chunkify"), "import", f"oci:{layout}:fn", "--name", "snapfn:1"], "chunkify import (snapfn)",
              env=env)
    shutil.rmtree(root)
    return env


def _snap_crypto(s, where, sha, aes, sha4k):
    """Records openssl speed's figures measured at WHERE ("host (native)" or
    "nested guest") and what they cost per 512 KiB chunk: the chunk name's
    SHA-256 and the AES-256-CTR decryption every chunk a restore fetches
    through the cache needs, and the L1 writer's second SHA-256 pass, one
    per 4 KiB block."""
    w, chunk = SNAP_WORKLOAD, 524288
    s.record("snapshot", w, where, "sha256_throughput", "B/s", [sha], block=chunk)
    s.record("snapshot", w, where, "aes256ctr_throughput", "B/s", [aes], block=chunk)
    s.record("snapshot", w, where, "sha256_4k_throughput", "B/s", [sha4k], block=4096)
    s.record("snapshot", w, where, "sha256_per_chunk_s", "s", [chunk / sha])
    s.record("snapshot", w, where, "aes256ctr_per_chunk_s", "s", [chunk / aes])
    s.record("snapshot", w, where, "l1_block_sha256_per_chunk_s", "s", [chunk / sha4k],
             what="SHA-256 of each 4 KiB block of a 512 KiB chunk (the L1 writer's block table)")


def snapshot(s):
    """A kvmm snapshot restored lazily from chunks against a cold boot of
    the same image to the same point (the function's first response), all
    inside one QEMU TCG guest with a working /dev/kvm (tests/nested/run.sh;
    the payload is bench/snapshot-guest.sh).  Per repetition, alternating:
    a cold boot, a restore with L1 empty and no prefetch, a restore
    prefetching the recorded trace, a restore from the host memory tier the
    first restore filled (with the trace prefetched), and the File-backend
    reference.  Times are from kvmm's spawn to the
    response's first byte at the host end of the channel."""
    for tool in ("qemu-system-x86_64", "cpio", "gzip", "curl", "objcopy", "openssl"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is missing (scripts/apt-packages.txt)")
    reps = max(3, s.reps)
    P = s.rig.fresh_dir("snap-payload")
    home = os.path.join(P, "home")
    os.makedirs(home)
    s.step("snapshot: building and importing the function's image")
    env = _snap_image(s, home)
    s.rig.run([s.bin("chunkify"), "export", "snapfn:1", os.path.join(P, "rootfs.erofs")], "chunkify export",
              env=env)
    kroot = s.rig.run(["bash", "-c", f". '{s.top}/tests/nested/kernel.sh' && kernel_pkg_dir"],
                      "the kernel package (tests/nested/kernel.sh)",
                      env=s.env(KINDLING_BUILD_DIR=s.build)).strip().splitlines()[-1]
    vmlinuz = sorted(f for f in os.listdir(os.path.join(kroot, "boot")) if f.startswith("vmlinuz-"))[0]
    shutil.copy(os.path.join(kroot, "boot", vmlinuz), os.path.join(P, "vmlinuz"))
    s.rig.run([os.path.join(s.top, "scripts", "guest-initramfs.sh"), "--init", s.bin("kindling-guest-init"),
               os.path.join(P, "initrd.cpio.gz"), kroot], "scripts/guest-initramfs.sh")
    for b in ("kvmm", "kindling", "chunkify", "guest_peer"):
        shutil.copy(s.bin(b), P)
    for tool in ("curl", "openssl"):
        shutil.copy(shutil.which(tool), P)
    shutil.copy(os.path.join(s.top, "bench", "snapshot-guest.sh"), P)
    # The same crypto natively, in this run, against the guest's figures
    # (bench/snapshot-guest.sh measures them under the nested CPU model).
    s.step("snapshot: openssl speed natively (SHA-256, AES-256-CTR)")
    _snap_crypto(s, "host (native)", speed("sha256"), speed("aes-256-ctr"), speed("sha256", 4096))
    log = s.rig.path("snapshot-console.log")
    s.step(f"snapshot: nested QEMU guest (TCG, SVM): one snapshot, then {reps} x (cold boot, lazy restore, "
           "prefetching restore, host-warm restore, File restore)")
    t0 = time.monotonic()
    env = s.env(KINDLING_BUILD_DIR=s.build, NESTED_LOG=log)
    if s.nested_cpu_flags:
        # tests/nested/run.sh's QEMU, with these features added to its CPU model
        env.update(PATH=os.path.join(s.top, "bench", "nested-cpu") + ":" + env["PATH"],
                   KINDLING_BENCH_REAL_QEMU=shutil.which("qemu-system-x86_64"),
                   KINDLING_BENCH_CPU_FLAGS=s.nested_cpu_flags)
    r = subprocess.run([os.path.join(s.top, "tests", "nested", "run.sh"), "--mem", "1536", "--smp", str(s.nested_smp),
                        "--timeout", str(300 + 160 * reps), P, "snapshot-guest.sh", str(reps)],
                       capture_output=True, env=env)
    nested_s = time.monotonic() - t0
    if not os.path.exists(log):
        # tests/nested/run.sh stopped before QEMU started: its reason is on stderr
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise BenchError(f"the nested snapshot run did not start (exit {r.returncode}): {' | '.join(err[-4:])}")
    with open(log, errors="replace") as f:
        lines = [x.strip().replace("\r", "") for x in f]
    fails = [x for x in lines if x.startswith("SNAPBENCH-FAIL")]
    if r.returncode != 0 or fails or "SNAPBENCH done" not in lines:
        tail = " | ".join((fails or lines)[-8:])
        raise BenchError(f"the nested snapshot run failed (exit {r.returncode}): {tail}")
    name = dict(SNAP_SYSTEMS)
    w = SNAP_WORKLOAD
    for line in lines:
        m = SNAP_LINE.match(line)
        if not m or m.group(1) == "done":
            continue
        kind, rest = m.group(1), m.group(2)
        kv = dict(x.split("=", 1) for x in rest.split(" ") if "=" in x)
        if kind == "snapshot":
            imp = json.loads(kv["import"])
            s.record("snapshot", w, "kvmm snapshot", "boot_to_ready_s", "s", [float(kv["boot_to_ready_s"])])
            s.record("snapshot", w, "kvmm snapshot", "create_s", "s", [float(kv["create_s"])])
            s.record("snapshot", w, "kvmm snapshot", "import_s", "s", [float(kv["import_s"])])
            s.record("snapshot", w, "kvmm snapshot", "memory_size", "B", [float(kv["mem_bytes"])])
            s.record("snapshot", w, "kvmm snapshot", "memory_nonzero", "B", [float(kv["mem_nonzero_bytes"])],
                     what="blocks the sparse memory file uses (du)")
            s.record("snapshot", w, "kvmm snapshot", "chunks_stored", "chunks", [float(imp.get("chunks_new", 0))],
                     chunks_zero=imp.get("chunks_zero"), chunks_dedup=imp.get("chunks_dedup"))
        elif kind == "crypto":
            _snap_crypto(s, "nested guest", float(kv["sha256_Bps"]), float(kv["aes256ctr_Bps"]),
                         float(kv["sha256_4k_Bps"]))
        elif kind == "verify":
            s.record("snapshot", w, "kvmm snapshot", "verify_s", "s", [float(kv["seconds"])],
                     chunks=int(kv["chunks"]), what="chunkify verify: every stored chunk read, verified, decrypted")
        elif kind == "cold":
            s.add_sample("snapshot", w, name["cold"], "first_response_s", "s", float(kv["first_output_s"]))
            s.add_sample("snapshot", w, name["cold"], "exit_s", "s", float(kv["exit_s"]))
            s.add_sample("snapshot", w, name["cold"], "connected_s", "s", float(kv["connected_s"]))
        elif kind == "restore" and kv["system"] in name:
            sysname = name[kv["system"]]
            sv = json.loads(kv["serve"])
            first, ready = float(kv["first_output_s"]), float(kv["serve_ready_s"])
            s.add_sample("snapshot", w, sysname, "first_response_s", "s", first)
            s.add_sample("snapshot", w, sysname, "loaded_s", "s", float(kv["loaded_s"]))
            s.add_sample("snapshot", w, sysname, "connected_s", "s", float(kv["connected_s"]))
            s.add_sample("snapshot", w, sysname, "exit_s", "s", float(kv["exit_s"]))
            if kv["system"] == "file":
                continue
            s.add_sample("snapshot", w, sysname, "first_response_with_serve_start_s", "s", first + ready)
            s.add_sample("snapshot", w, sysname, "serve_ready_s", "s", ready)
            s.add_sample("snapshot", w, sysname, "bytes_fetched", "B", sv["bytes_fetched"])
            s.add_sample("snapshot", w, sysname, "fraction_fetched", "fraction", sv["fraction_fetched"])
            s.add_sample("snapshot", w, sysname, "memory_size", "B", sv["memory_size"])
            s.add_sample("snapshot", w, sysname, "faults", "faults", sv["faults"])
            s.add_sample("snapshot", w, sysname, "chunks_prefetched", "chunks", sv["chunks_prefetched"])
            s.add_sample("snapshot", w, sysname, "chunks_faulted", "chunks", sv.get("chunks_faulted", 0))
            for tier in ("host", "l1", "l2", "l3"):
                s.add_sample("snapshot", w, sysname, f"chunks_{tier}", "chunks", sv["chunks"].get(tier, 0))
    cold = s.find("snapshot", w, name["cold"], "first_response_s")
    if len(cold["samples"]) != reps:
        raise BenchError(f"the nested run reported {len(cold['samples'])} cold boots of {reps}")
    cold_med = statistics.median(cold["samples"])
    for key in ("lazy", "prefetch", "host", "file"):
        rr = s.find("snapshot", w, name[key], "first_response_s")
        if len(rr["samples"]) != reps:
            raise BenchError(f"the nested run reported {len(rr['samples'])} restores ({key}) of {reps}")
        s.record("snapshot", w, name[key], "speedup_vs_cold_boot", "x", [cold_med / statistics.median(rr["samples"])])
        if key == "file":
            continue
        with_serve = s.find("snapshot", w, name[key], "first_response_with_serve_start_s")
        s.record("snapshot", w, name[key], "speedup_vs_cold_boot_with_serve_start", "x",
                 [cold_med / statistics.median(with_serve["samples"])])
    # The crypto an L1-cold restore cannot avoid on the guest's one CPU: every
    # chunk it fetched through the cache (its faults: no prefetch, no host
    # tier) named and decrypted at the speed openssl measured in the guest;
    # and the best ratio to the cold boot that leaves.
    lazy = name["lazy"]
    g = {k: s.find("snapshot", w, "nested guest", k, missing_ok=True)
         for k in ("sha256_per_chunk_s", "aes256ctr_per_chunk_s", "l1_block_sha256_per_chunk_s")}
    if all(g.values()):
        fetched = [sum(x) for x in zip(*(s.find("snapshot", w, lazy, f"chunks_{t}")["samples"]
                                           for t in ("l1", "l2", "l3")))]
        per_chunk = g["sha256_per_chunk_s"]["samples"][0] + g["aes256ctr_per_chunk_s"]["samples"][0]
        l1_pass = g["l1_block_sha256_per_chunk_s"]["samples"][0]
        crypto = [n * per_chunk for n in fetched]
        loaded = statistics.median(s.find("snapshot", w, lazy, "loaded_s")["samples"])
        s.record("snapshot", w, lazy, "chunks_through_cache", "chunks", fetched)
        s.record("snapshot", w, lazy, "crypto_floor_s", "s", crypto,
                 what="chunks fetched through the cache x (SHA-256 + AES-256-CTR per 512 KiB chunk, nested guest)")
        s.record("snapshot", w, lazy, "crypto_floor_with_l1_pass_s", "s", [n * (per_chunk + l1_pass) for n in fetched],
                 what="the same plus the L1 writer's SHA-256 per 4 KiB block")
        s.record("snapshot", w, lazy, "best_speedup_after_crypto", "x",
                 [cold_med / (loaded + statistics.median(crypto))],
                 what="cold boot / (loaded + crypto floor), medians")
        s.record("snapshot", w, lazy, "best_speedup_after_crypto_with_l1_pass", "x",
                 [cold_med / (loaded + statistics.median(fetched) * (per_chunk + l1_pass))],
                 what="cold boot / (loaded + crypto floor with the L1 pass), medians")
    s.record("snapshot", w, "nested guest", "wall_s", "s", [nested_s], smp=s.nested_smp, mem_mib=1536, vm_mem_mib=256,
             cpu="qemu64,+svm,+npt" + ("," + s.nested_cpu_flags if s.nested_cpu_flags else ""))


SCENARIOS = {
    "crypto": crypto,
    "import": import_throughput,
    "registry": registry_import,
    "coldstart": coldstart,
    "warmstart": warmstart,
    "cache": cache_tiers,
    "invoke": invoke,
    "snapshot": snapshot,
}
ORDER = ["crypto", "import", "registry", "coldstart", "warmstart", "cache", "invoke", "snapshot"]
NOT_QUICK = ["snapshot"]
