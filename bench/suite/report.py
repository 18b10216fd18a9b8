"""The suite's report: results.json -> report.md and PNG plots (gnuplot).

    python3 bench/suite/report.py RESULTS.json [OUT_DIR]

Every table quotes medians (p90 beside the time figures) and each figure's
ratio against the baseline measured in the same run; every target of the
benchmark issue is checked in a "Targets" table.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

MiB = 1 << 20
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]
BIG = 1 << 30  # the import and registry targets are for images of at least 1 GiB
SYSTEM_ORDER = ["kindling-l1warm", "kindling-l1warm-prefetch", "kindling-l2", "kindling-l2-prefetch",
                "kindling-origin", "kindling-origin-prefetch", "kindling-origin-trace", "podman", "eager",
                "floor-sandbox", "floor-chroot"]
SYSTEM_ABOUT = {
    "kindling-origin": "kindling run, L1 and L2 empty: every chunk from the origin",
    "kindling-origin-prefetch": "the same, prefetching the recorded startup trace",
    "kindling-origin-trace": "kindling run, L1 and L2 empty, no prefetch, on the trace layout: the image "
                             "re-imported with the workload's own startup trace (chunkify import --layout-trace)",
    "kindling-l2": "kindling run, L1 empty, L2 (5 memcached, 4+1) holding the image",
    "kindling-l2-prefetch": "the same, prefetching the recorded startup trace",
    "kindling-l1warm": "kindling run, every chunk the start needs already in L1",
    "kindling-l1warm-prefetch": "the same, with prefetch",
    "podman": "podman pull (empty storage) + podman run (runc)",
    "eager": "skopeo copy + umoci unpack + the same process sandbox",
    "floor-sandbox": "kindling's process sandbox on the page-cached unpacked tree",
    "floor-chroot": "unshare -mpf + chroot on the page-cached unpacked tree (the floor)",
}


# The rows of the bytes table: the system, the layout it ran on, its cache tiers.
LAYOUTS = [("kindling-l2", "usual", "L2 warm"), ("kindling-origin", "usual", "origin only"),
           ("kindling-origin-trace", "trace", "origin only")]


class Results:
    def __init__(self, data):
        self.d = data
        self.by_key = {}
        for r in data["records"]:
            self.by_key.setdefault((r["scenario"], r["workload"], r["system"], r["metric"]), []).append(r)

    def get(self, scenario, workload, system, metric):
        rs = self.by_key.get((scenario, workload, system, metric))
        return rs[0] if rs else None

    def all(self, scenario, workload, system, metric):
        return self.by_key.get((scenario, workload, system, metric), [])

    def med(self, scenario, workload, system, metric):
        r = self.get(scenario, workload, system, metric)
        return r["median"] if r and r["samples"] else None

    def records(self, scenario=None, metric=None):
        return [r for r in self.d["records"] if (scenario is None or r["scenario"] == scenario)
                and (metric is None or r["metric"] == metric)]


def warm_pct(r, q):
    xs = sorted(r["samples"])
    return xs[min(len(xs) - 1, int(len(xs) * q / 100))]


def fmt_s(x):
    if x is None:
        return "–"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def snapshot_crypto(R, cold):
    """The snapshot section's paragraph on the crypto an L1-cold restore
    does per chunk, under the nested CPU model and natively (openssl speed,
    both measured in this run), and the best ratio to the cold boot that
    crypto leaves; [] for results from before these were measured."""
    lazy = "kvmm restore (lazy, L1 cold)"
    g = lambda sys, k: R.med("snapshot", "snapfn", sys, k)  # noqa: E731
    if g(lazy, "crypto_floor_s") is None or g("host (native)", "sha256_per_chunk_s") is None:
        return []
    model = (R.get("snapshot", "snapfn", "nested guest", "wall_s") or {}).get("params", {}).get("cpu", "?")
    # natively a chunk's crypto is well under a millisecond
    fine = lambda x: f"{x * 1000:.2f} ms" if x < 0.01 else fmt_s(x)  # noqa: E731
    md = ["", "### The crypto an L1-cold restore does, under the nested CPU model", "",
          "`openssl speed -evp ALG -bytes 524288 -seconds 2` (and `-bytes 4096` for SHA-256) in the nested guest "
          "before its timed runs, and on the host in the same run: the same libcrypto kindling loads, which picks its "
          "code path from CPUID. Per 512 KiB chunk:", "",
          "| where | SHA-256 (chunk name) | AES-256-CTR (decrypt) | SHA-256 per 4 KiB block (L1 writer) |",
          "|---|---|---|---|"]
    for where, label in (("nested guest", f"nested guest ({model})"), ("host (native)", "host, natively")):
        md.append(f"| {label} | {fine(g(where, 'sha256_per_chunk_s'))} | {fine(g(where, 'aes256ctr_per_chunk_s'))} "
                  f"| {fine(g(where, 'l1_block_sha256_per_chunk_s'))} |")
    ratio = lambda k: g("nested guest", k) / g("host (native)", k)  # noqa: E731
    md.append(f"| nested / native | {ratio('sha256_per_chunk_s'):.0f}× | {ratio('aes256ctr_per_chunk_s'):.0f}× "
              f"| {ratio('l1_block_sha256_per_chunk_s'):.0f}× |")
    n, faults = g(lazy, "chunks_through_cache"), g(lazy, "faults")
    crypto, crypto_l1 = g(lazy, "crypto_floor_s"), g(lazy, "crypto_floor_with_l1_pass_s")
    loaded, first = g(lazy, "loaded_s"), R.med("snapshot", "snapfn", lazy, "first_response_s")
    md += ["", f"The L1-cold restore (medians) fetched {n:.0f} chunks through the cache ({faults:.0f} faults, served "
           f"one after another): {n:.0f} × (SHA-256 + AES-256-CTR) = **{fmt_s(crypto)}** of crypto on the guest's one "
           f"CPU that it cannot avoid. With the time to *loaded* ({fmt_s(loaded)}), the best ratio to the cold boot "
           f"({fmt_s(cold)}) that leaves is {fmt_s(cold)} / ({fmt_s(loaded)} + {fmt_s(crypto)}) = "
           f"**{g(lazy, 'best_speedup_after_crypto'):.1f}×**; the restore measured "
           f"{g(lazy, 'speedup_vs_cold_boot'):.1f}×. The L1 writer's SHA-256 per 4 KiB block adds about one more "
           f"SHA-256 pass per chunk on the same CPU ({fine(g('nested guest', 'l1_block_sha256_per_chunk_s'))} "
           f"per chunk here): {fmt_s(crypto_l1)} in all, which leaves at best "
           f"{g(lazy, 'best_speedup_after_crypto_with_l1_pass'):.1f}×; that crypto is "
           f"{100 * crypto_l1 / (first - loaded):.0f}% of the restore's time from *loaded* to its first response "
           f"({fmt_s(first - loaded)}, {1000 * (first - loaded) / faults:.0f} ms per fault)."]
    return md


def fmt_x(x):
    return "–" if x is None else f"{x:.2f}×"


def gnuplot(script, what):
    r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"gnuplot failed on the {what} plot: {r.stderr.strip()[-300:]}")


def cdf_plot(path, title, xlabel, series, logx=True):
    """SERIES: [(label, samples)]; a CDF per series."""
    tmp = tempfile.mkdtemp(prefix="kindling-plot.")
    plots = []
    for i, (label, xs) in enumerate(series):
        xs = sorted(x for x in xs if x is not None)
        if not xs:
            continue
        dat = os.path.join(tmp, f"{i}.dat")
        with open(dat, "w") as f:
            f.write(f"{xs[0]} 0\n")
            for j, x in enumerate(xs):
                f.write(f"{x} {(j + 1) / len(xs)}\n")
        style = f"lw 2 lc rgb '{COLORS[i % len(COLORS)]}' dt {1 + (i // len(COLORS)) + (2 if 'prefetch' in label else 0)}"
        plots.append(f"'{dat}' using 1:2 with steps {style} title '{label}'")
    if not plots:
        return False
    gnuplot(f"""set terminal pngcairo size 1000,600 font ",10" noenhanced
set output '{path}'
set title '{title}'
set xlabel '{xlabel}'
set ylabel 'fraction of runs'
set yrange [0:1.05]
set grid
set key bottom right
{'set logscale x' if logx else ''}
plot {', '.join(plots)}
""", title)
    return True


def bar_plot(path, title, ylabel, groups, columns, logy=False):
    """GROUPS: [(group label, [value per column])]; clustered bars.  False,
    and no plot, when no value is known (gnuplot refuses an empty histogram)."""
    if all(v is None for _, vals in groups for v in vals):
        return False
    tmp = tempfile.mkdtemp(prefix="kindling-plot.")
    dat = os.path.join(tmp, "bars.dat")
    with open(dat, "w") as f:
        f.write("group " + " ".join(f'"{c}"' for c in columns) + "\n")
        for g, vals in groups:
            f.write(f'"{g}" ' + " ".join("NaN" if v is None else str(v) for v in vals) + "\n")
    cols = ", ".join(f"'' using {i + 2} title columnheader" if i else f"'{dat}' using 2:xtic(1) title columnheader"
                     for i in range(len(columns)))
    gnuplot(f"""set terminal pngcairo size 1000,600 font ",10" noenhanced
set output '{path}'
set title '{title}'
set ylabel '{ylabel}'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set grid ytics
set key top left
set xtics rotate by -20
{'set logscale y' if logy else 'set yrange [0:*]'}
plot {cols}
""", title)


def write(results_path, out_dir, say=print):
    with open(results_path) as f:
        data = json.load(f)
    R = Results(data)
    md, targets, plots = [], [], []

    def plot(name, fn, *a, **kw):
        path = os.path.join(out_dir, name)
        try:
            if fn(path, *a, **kw) is not False:
                plots.append(name)
                return f"![{name}]({name})"
        except RuntimeError as e:
            say(f"report: {e}")
        return ""

    image_bytes = {spec["image"]: spec.get("image_bytes") or 0 for spec in data["workloads"].values()}
    m = data["machine"]
    md += ["# kindling cold-start benchmark", "",
           f"- command: `{data['command']}` ({data['mode']} mode)",
           f"- commit: `{data['commit']}`{' (with uncommitted changes)' if data.get('dirty') else ''}",
           f"- date: {data['date']}",
           f"- machine: {m['cpus']} × {m['cpu_model']}, {m['mem_bytes'] / (1 << 30):.0f} GiB, {m['os']}, "
           f"Linux {m['kernel']}; load average at start {', '.join(f'{x:.1f}' for x in m['loadavg_start'])}",
           f"- {data['settings']['reps']} runs per system, alternating; {data['settings']['drop_caches']}; "
           "figures are medians (p90 in brackets); every ratio is against a baseline from this run.", ""]
    failed = {k: v for k, v in data["scenarios"].items() if v["status"] != "ok"}
    if failed:
        md += ["**Failed scenarios:** " + "; ".join(f"{k}: {v['error']}" for k, v in failed.items()), ""]
    md += ["## Workloads", "", "| workload | image | size | what it runs |", "|---|---|---|---|"]
    for w, spec in data["workloads"].items():
        size = f"{spec['image_bytes'] / MiB:.0f} MiB" if spec.get("image_bytes") else "–"
        md.append(f"| {w} | {spec['image']} | {size} | {spec['about']} |")
    md.append("")

    # ---- cold start ----------------------------------------------------------------------
    cold_workloads = [w for w in data["workloads"] if R.get("coldstart", w, "eager", "first_output_s")]
    if cold_workloads:
        md += ["## Cold start", "", "Time from spawning the command to its first output line (p90 in brackets). "
               "podman and eager include their pull (and unpack); kindling's import happened at deploy time "
               "(see *Deploy from a registry*).", ""]
        md += ["| system | " + " | ".join(cold_workloads) + " |", "|---" * (len(cold_workloads) + 1) + "|"]
        for system in SYSTEM_ORDER:
            cells = []
            for w in cold_workloads:
                r = R.get("coldstart", w, system, "first_output_s")
                if not r:
                    cells.append("–")
                    continue
                cell = f"{fmt_s(r['median'])} ({fmt_s(r['p90'])})"
                sp = R.med("coldstart", w, system, "speedup_vs_podman")
                if sp:
                    cell += f", {sp:.1f}× faster than podman"
                cells.append(cell)
            md.append(f"| {system} | " + " | ".join(cells) + " |")
        md += ["", "Time to exit (the command's whole run):", "",
               "| system | " + " | ".join(cold_workloads) + " |", "|---" * (len(cold_workloads) + 1) + "|"]
        for system in SYSTEM_ORDER:
            md.append(f"| {system} | " + " | ".join(
                fmt_s(R.med("coldstart", w, system, "exit_s")) for w in cold_workloads) + " |")
        md += ["", "Systems: " + "; ".join(f"**{k}**: {v}" for k, v in SYSTEM_ABOUT.items()), ""]
        for w in cold_workloads:
            md.append(plot(f"coldstart_{w}.png", cdf_plot, f"cold start, {w}: time to first output",
                           "seconds (log)", [(s, (R.get("coldstart", w, s, "first_output_s") or {}).get("samples", []))
                                             for s in SYSTEM_ORDER]))
        md.append("")
        md += ["### Bytes fetched against bytes read", "",
               "kindling, L1 empty, no prefetch, on the usual layout (L2 warm, and origin only) and on the trace "
               "layout (origin only: the image re-imported with the workload's own startup trace; a workload "
               "that shares its image with others gets its own traced image). *read* is every byte the kernel "
               "asked of the image (blockd's bytes_read: the workload's page-cache misses, memory-mapped "
               "libraries, the kernel's readahead); *metadata* is the EROFS metadata region. The fetch "
               "amplification target is judged on the best layout kindling offers for the workload.", "",
               "| workload | layout | tiers | image | fetched | read | metadata | fetched / read "
               "| fetched / (read + metadata) | first output | chunks L1 / L2 / origin |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        groups = []
        for w in cold_workloads:
            best = None
            for system, layout, tiers in LAYOUTS:
                g = lambda k: R.med("coldstart", w, system, k)  # noqa: E731
                if g("bytes_fetched") is None:
                    continue
                ratio = g("fetched_vs_read_plus_metadata")
                md.append(f"| {w} | {layout} | {tiers} | {g('image_size') / MiB:.0f} MiB | "
                          f"{g('bytes_fetched') / MiB:.1f} MiB | {g('bytes_read') / MiB:.1f} MiB | "
                          f"{g('metadata_bytes') / MiB:.1f} MiB | {fmt_x(g('fetch_amplification'))} | "
                          f"{fmt_x(ratio)} | {fmt_s(g('first_output_s'))} | "
                          f"{g('chunks_l1'):.0f} / {g('chunks_l2'):.0f} / {g('chunks_l3'):.0f} |")
                if system == "kindling-l2":
                    groups.append((w, [g("bytes_read") / MiB, g("metadata_bytes") / MiB, g("bytes_fetched") / MiB]))
                if best is None or ratio < best[0]:
                    best = (ratio, layout, tiers)
            if best:
                ratio, layout, tiers = best
                targets.append((f"fetch amplification, {w}: fetched ≤ 1.5 × (read + metadata), best layout "
                                f"({layout} layout, {tiers})", f"{ratio:.2f}×", ratio <= 1.5))
        md.append("")
        if groups:
            md.append(plot("bytes.png", bar_plot, "bytes fetched against bytes read (kindling, L2 warm)", "MiB",
                           groups, ["read", "metadata", "fetched"]))
            md.append("")

    # ---- warm start ----------------------------------------------------------------------
    for w in data["workloads"]:
        k = R.get("warmstart", w, "kindling-l1warm", "first_output_s")
        f = R.get("warmstart", w, "floor-chroot", "first_output_s")
        if not (k and f):
            continue
        ratio = k["median"] / f["median"]
        md += ["## Warm process-sandbox start", "",
               f"`kindling run` of the {w} workload with L1 and page cache warm, against `unshare -mpf "
               "--mount-proc chroot` on the same page-cached tree, alternating.", "",
               "| | first output | vs the floor |", "|---|---|---|",
               f"| kindling run, warm | {fmt_s(k['median'])} ({fmt_s(k['p90'])}) | {fmt_x(ratio)} |",
               f"| unshare + chroot (floor) | {fmt_s(f['median'])} ({fmt_s(f['p90'])}) | 1× |", ""]
        targets.append((f"warm start, {w}: ≤ 2× unshare + chroot", fmt_x(ratio), ratio <= 2.0))
        phases = [r for r in R.records("warmstart") if r["metric"].startswith("phase_ms:") and r["workload"] == w]
        if phases:
            md += ["Where the warm start goes (`kindling run --timings`, medians):", "", "| phase | ms |", "|---|---|"]
            md += [f"| {r['metric'][9:]} | {r['median']:.1f} |" for r in phases]
            md.append("")
            md.append(plot("warmstart_phases.png", bar_plot, f"warm start of {w}: phases (median ms)", "ms",
                           [(r["metric"][9:], [r["median"]]) for r in phases], ["ms"]))
        md.append(plot("warmstart.png", cdf_plot, f"warm start, {w}: time to first output", "seconds (log)",
                       [("kindling run, L1 warm", k["samples"]), ("unshare + chroot, page-cached", f["samples"])]))
        md.append("")
        break

    # ---- import --------------------------------------------------------------------------
    limit = R.med("crypto", None, "openssl", "limit_all_cores")
    imps = [r for r in R.records("import", "throughput")]
    if imps and limit:
        cores = R.get("crypto", None, "openssl", "limit_all_cores")["params"].get("cores")
        md += ["## Import throughput", "",
               f"chunkify import of each image's OCI layout (plain tar layers) into an empty store, page cache "
               f"dropped, against the crypto limit of {cores} cores: {limit / 1e6:.0f} MB/s "
               f"(2 × SHA-256 + AES-256-CTR per byte, `openssl speed` in this run).", "",
               "| image | layers | throughput | vs the crypto limit |", "|---|---|---|---|"]
        groups = []
        for r in imps:
            md.append(f"| {r['workload']} | {r['params']['layers']} | {r['median'] / 1e6:.0f} MB/s | "
                      f"{100 * r['median'] / limit:.0f}% |")
        for img in sorted({r["workload"] for r in imps}):
            a = R.med("import", img, "kindling-layers", "throughput")
            b = R.med("import", img, "kindling-one_layer", "throughput")
            groups.append((img, [x / 1e6 if x else None for x in (a, b, limit)]))
            sp = R.med("import", img, "kindling", "multi_layer_speedup")
            if sp:
                md.append(f"| {img}: multi-layer speedup (time of one layer / time of "
                          f"{R.get('import', img, 'kindling', 'multi_layer_speedup')['params']['layers']} layers) "
                          f"| | {sp:.2f}× | |")
            if a and image_bytes.get(img, 0) >= BIG:
                targets.append((f"import of {img}: ≥ 50% of the {cores}-core crypto limit",
                                f"{100 * a / limit:.0f}%", a >= 0.5 * limit))
        md.append("")
        md.append(plot("import.png", bar_plot, "import throughput against the crypto limit", "MB/s", groups,
                       ["layers", "one layer", "crypto limit"]))
        md.append("")

    # ---- registry ------------------------------------------------------------------------
    regs = sorted({r["workload"] for r in R.records("registry", "seconds")})
    if regs:
        md += ["## Deploy from a registry", "",
               "The same image from the same docker-registry on loopback (gzip layers, pushed by skopeo), "
               "into an empty store each time.", "",
               "| image | kindling import | podman pull | skopeo copy + umoci unpack | kindling / podman |",
               "|---|---|---|---|---|"]
        groups = []
        for img in regs:
            k, p, e = (R.get("registry", img, s, "seconds") for s in ("kindling", "podman", "eager"))
            ratio = R.med("registry", img, "kindling", "vs_podman")
            md.append(f"| {img} | {fmt_s(k and k['median'])} | {fmt_s(p and p['median'])} | "
                      f"{fmt_s(e and e['median'])} | {fmt_x(ratio)} |")
            groups.append((img, [x["median"] if x else None for x in (k, p, e)]))
            if ratio is not None and image_bytes.get(img, 0) >= BIG:
                targets.append((f"registry import of {img}: ≤ ½ podman pull", fmt_x(ratio), ratio <= 0.5))
        md.append("")
        md.append(plot("registry.png", bar_plot, "deploy from a local registry", "seconds", groups,
                       ["kindling import", "podman pull", "skopeo + umoci"]))
        md.append("")

    # ---- cache ---------------------------------------------------------------------------
    summ = R.records("cache", "read_latency_summary")
    if summ:
        runs = sorted({r["params"].get("run", 0) for r in summ})
        md += ["## Cache tiers", "", "`bench/cache.sh`: one 512 KiB chunk, verified and decrypted, per tier "
               f"(µs; {len(runs)} run(s)).", "", "| read | run | p50 | p99 | p99.9 |", "|---|---|---|---|---|"]
        for r in summ:
            p50, p99, p999 = r["samples"]
            md.append(f"| {r['system']} | {r['params'].get('run', 0) + 1} | {p50:.0f} | {p99:.0f} | {p999:.0f} |")
        md.append("")
        for run in runs:
            floor = next((r["samples"][0] for r in R.all("cache", None, "verify-floor", "latency")
                          if r["params"].get("run") == run), None)
            l2 = next((r for r in summ if r["params"].get("run") == run and r["system"].startswith("L2 4+1")), None)
            raw512 = next((r for r in summ if r["params"].get("run") == run and r["system"] == "512 KiB value"), None)
            verify = next((r for r in summ if r["params"].get("run") == run and r["system"].startswith("SHA-256")),
                          None)
            if l2 and raw512 and verify:
                both = raw512["samples"][0] + verify["samples"][0]
                md.extend([f"Run {run + 1}: L2 4+1 p50 {l2['samples'][0]:.0f} µs is {l2['samples'][0] / both:.2f}× a "
                          f"raw 512 KiB GET plus the verify ({both:.0f} µs): with the five memcached servers on this "
                          "host, every fragment's bytes cross the same cores as the reader's hash.", ""])
            if floor and l2:
                targets.append((f"L2 hit p50 ≤ 1.2 × verify floor (run {run + 1})",
                                f"{l2['samples'][0] / floor:.2f}× ({l2['samples'][0]:.0f} / {floor:.0f} µs)",
                                l2["samples"][0] <= 1.2 * floor))
                targets.append((f"L2 hit p99 ≤ 2 ms (run {run + 1})", f"{l2['samples'][1]:.0f} µs",
                                l2["samples"][1] <= 2000))
            # The same read timed inside the interleaved alternation, against
            # the floor taken there (the reads' own machine state).
            inter = {r["system"]: r["samples"][0] for r in summ if r["params"].get("run") == run}
            through, ifloor = inter.get("cache_read, L2 hit (the whole read)"), inter.get("floor: 128 KiB GET + SHA + AES")
            if through and ifloor:
                targets.append((f"L2 hit p50 ≤ 1.2 × the floor taken in the same alternation (run {run + 1})",
                                f"{through / ifloor:.2f}× ({through:.0f} / {ifloor:.0f} µs)", through <= 1.2 * ifloor))
        for r in R.all("cache", None, "l2-4+1-slow-node", "p99_vs_healthy"):
            targets.append((f"L2 4+1 p99 with one node 20 ms slow ≤ 1.5 × healthy (run {r['params'].get('run', 0) + 1})",
                            fmt_x(r["samples"][0]), r["samples"][0] <= 1.5))
        lat = [r for r in R.records("cache", "read_latency") if r["params"].get("run") == runs[-1]]
        # cache_bench's L2 tail section: each coding healthy and with one node slow
        l2s = [r for r in lat if r["system"].endswith("healthy") or r["system"].endswith("slow-node")]
        if l2s:
            md.append(plot("l2_latency.png", cdf_plot, "L2 hit latency, healthy and with one of five nodes 20 ms slow",
                           "µs (log)", [(r["system"], r["samples"]) for r in l2s]))
        others = [r for r in lat if r not in l2s]
        if others:
            md.append(plot("tiers_latency.png", cdf_plot, "512 KiB chunk read latency per tier", "µs (log)",
                           [(r["system"], r["samples"]) for r in others]))
        md.append("")

    # ---- invoke --------------------------------------------------------------------------
    warm = R.get("invoke", "node-ric", "kindling-serve", "warm_latency")
    echo = R.get("invoke", "node-ric", "http-echo", "warm_latency")
    if warm and echo:
        o50 = R.med("invoke", "node-ric", "kindling-serve", "warm_overhead_p50")
        o99 = R.med("invoke", "node-ric", "kindling-serve", "warm_overhead_p99")
        md += ["## Invoke through `kindling serve`", "",
               f"`bench/invoke.sh`: {len(warm['samples'])} warm invokes of the Node.js aws-lambda-ric echo function "
               "on one keep-alive connection, against the same client and a loopback HTTP echo server.", "",
               "| | p50 | p99 |", "|---|---|---|",
               f"| loopback HTTP echo (baseline) | {1e3 * warm_pct(echo, 50):.3f} ms | {1e3 * warm_pct(echo, 99):.3f} ms |",
               f"| warm invoke | {1e3 * warm_pct(warm, 50):.3f} ms | {1e3 * warm_pct(warm, 99):.3f} ms |",
               f"| overhead above the echo | {o50:.3f} ms | {o99:.3f} ms |", ""]
        targets.append(("warm invoke overhead p50 ≤ 1 ms", f"{o50:.2f} ms", o50 <= 1))
        targets.append(("warm invoke overhead p99 ≤ 5 ms", f"{o99:.2f} ms", o99 <= 5))
        rows = []
        for w in ("python-plain", "node-ric"):
            c = R.med("invoke", w, "kindling-serve", "cold_invoke_s")
            if c is None:
                continue
            kr = R.med("invoke", w, "kindling-run", "cold_run_s")
            eg = R.med("invoke", w, "eager", "cold_run_s")
            rows.append(f"| {w} | {fmt_s(c)} | {fmt_s(kr)} ({fmt_x(c / kr)}) | "
                        f"{fmt_s(eg) + ' (' + fmt_x(c / eg) + ')' if eg else '–'} |")
            targets.append((f"cold invoke of {w} ≤ 1.2 × kindling run", fmt_x(c / kr), c / kr <= 1.2))
        if rows:
            md += ["| cold, first invoke | through kindling serve | kindling run (ratio) | eager pull + run (ratio) |",
                   "|---|---|---|---|"] + rows + [""]
        b = R.get("invoke", "node-ric", "kindling-serve", "burst_answered")
        if b:
            p99 = R.med("invoke", "node-ric", "kindling-serve", "burst_p99_s")
            md += [f"A burst of {b['params']['burst']} invokes on a function with no sandbox: {b['median']:.0f} "
                   f"answered, {b['params']['throttled']} throttled (429), {b['params']['other']} other errors"
                   + (f"; p99 {fmt_s(p99)}." if p99 is not None else "."), ""]
        md.append(plot("invoke_warm.png", cdf_plot, "warm invoke latency against a loopback HTTP echo",
                       "seconds (log)", [("kindling serve, warm invoke", warm["samples"]),
                                         ("loopback HTTP echo", echo["samples"])]))
        md.append("")


    # ---- snapshot ------------------------------------------------------------------------
    cold = R.get("snapshot", "snapfn", "kvmm cold boot", "first_response_s")
    if cold:
        restores = ["kvmm restore (lazy, L1 cold)", "kvmm restore (lazy, trace prefetch)",
                    "kvmm restore (host memory warm: a later restore on this host)",
                    "kvmm restore (File, local memory file)"]
        md += ["## Snapshot restore against a cold boot (nested KVM)", "",
               "One QEMU TCG guest with a working /dev/kvm (kvm-amd on an SVM CPU model) runs everything "
               "(`bench/snapshot-guest.sh`): kvmm boots the function's image (busybox and a script that reads and "
               "hashes 8 MiB of its image and keeps a copy in memory, then answers), is paused and snapshotted once "
               "when the script is ready, and `chunkify snapshot-import` stores the snapshot as chunks in a local "
               "store. Then, alternating: a **cold boot** of the same image to the same answer, and a fresh kvmm "
               "that loads the snapshot with the Uffd backend served by `kindling snapshot-serve` from those chunks "
               "(L1 empty; without prefetch, then prefetching the trace one earlier restore recorded; then from the "
               "host memory tier, `--host-mem-dir`, which that earlier restore filled with the verified, decrypted "
               "chunks it served, prefetching the trace); the restored "
               "guest init reconnects after the vsock transport reset, the host sends 'S', and the script answers. "
               "Time from kvmm's spawn to the answer's first byte at the host end of the channel (p90 in brackets); "
               "*with serve start* adds the time snapshot-serve took to get ready (vmstate read and verified, "
               "every chunk's presence checked) before kvmm was spawned.", "",
               "*loaded*: PUT /snapshot/load answered (the vCPU runs); *reconnected*: the restored guest init "
               "reconnected to the host (for a cold boot: the init's first connection). The File-backend restore of "
               "the same snapshot's local memory file, with no chunks and no snapshot-serve, is a reference for "
               "what kvmm's restore costs by itself here; it has no target.", "",
               "*memory fetched* counts what came through the cache (fetched, verified, decrypted); *host tier* the "
               "chunks filled from the host memory tier instead.", "",
               "| system | first response | with serve start | vs cold boot | loaded | reconnected | memory fetched "
               "| host tier | chunks prefetched | faults |", "|---|---|---|---|---|---|---|---|---|---|",
               f"| kvmm cold boot | {fmt_s(cold['median'])} ({fmt_s(cold['p90'])}) | – | 1× | – | "
               f"{fmt_s(R.med('snapshot', 'snapfn', 'kvmm cold boot', 'connected_s'))} | – | – | – | – |"]
        series = [("kvmm cold boot", cold["samples"])]
        for system in restores:
            r = R.get("snapshot", "snapfn", system, "first_response_s")
            if not r:
                continue
            g = lambda k: R.med("snapshot", "snapfn", system, k)  # noqa: E731
            ratio = g("speedup_vs_cold_boot")
            frac, fetched, mem = g("fraction_fetched"), g("bytes_fetched"), g("memory_size")
            lazy = fetched is not None
            md.append(f"| {system} | {fmt_s(r['median'])} ({fmt_s(r['p90'])}) | "
                      f"{fmt_s(g('first_response_with_serve_start_s'))} | {ratio:.1f}× faster | "
                      f"{fmt_s(g('loaded_s'))} | {fmt_s(g('connected_s'))} | "
                      + (f"{fetched / MiB:.1f} of {mem / MiB:.0f} MiB ({100 * frac:.1f}%) | "
                         f"{g('chunks_host') or 0:.0f} chunks | "
                         f"{g('chunks_prefetched'):.0f} | {g('faults'):.0f} |" if lazy else "– | – | – | – |"))
            series.append((system, r["samples"]))
            if not lazy:
                continue
            targets.append((f"snapshot restore ({system[14:-1]}) ≥ 5× faster than a cold boot to the first "
                            f"response (nested KVM)", f"{ratio:.1f}× ({fmt_s(r['median'])} vs "
                            f"{fmt_s(cold['median'])}); memory fetched {100 * frac:.1f}% of guest RAM",
                            ratio >= 5))
        snap = lambda k: R.med("snapshot", "snapfn", "kvmm snapshot", k)  # noqa: E731
        nested = (R.get("snapshot", "snapfn", "nested guest", "wall_s") or {}).get("params", {})
        if snap("memory_size"):
            md += ["", f"The snapshot: {snap('memory_size') / MiB:.0f} MiB of guest RAM, "
                   f"{snap('memory_nonzero') / MiB:.1f} MiB of it non-zero in the sparse memory file, "
                   f"{snap('chunks_stored'):.0f} chunks stored; boot to ready {fmt_s(snap('boot_to_ready_s'))}, "
                   f"pause + snapshot/create {fmt_s(snap('create_s'))}, snapshot-import {fmt_s(snap('import_s'))}"
                   + (f"; `chunkify verify` of all {R.get('snapshot', 'snapfn', 'kvmm snapshot', 'verify_s')['params']['chunks']}"
                      f" chunks (fetch, check name and key, decrypt: at least a lazy restore's work per chunk) "
                      f"{fmt_s(snap('verify_s'))}"
                      if snap("verify_s") else "") + ". "
                   "Under TCG every guest instruction is emulated, so absolute times are far above real KVM's; "
                   "the ratios are what this run compares. The nested guest: "
                   f"{nested.get('smp', 1)} vCPU(s), CPU model {nested.get('cpu', '?')}."]
        md += snapshot_crypto(R, cold["median"])
        md.append("")
        md.append(plot("snapshot.png", cdf_plot, "time to the first response: restore from a snapshot vs cold boot "
                       "(nested KVM)", "seconds (log)", series))
        md.append("")

    if targets:
        md += ["## Targets", "", "| target | this run | |", "|---|---|---|"]
        md += [f"| {t} | {v} | {'met' if ok else '**not met**'} |" for t, v, ok in targets]
        md.append("")
    md += ["## Plots", ""] + [f"- [{p}]({p})" for p in plots] + [""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(x for x in md if x is not None) + "\n")
    return plots


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    write(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else os.path.dirname(os.path.abspath(sys.argv[1])))
