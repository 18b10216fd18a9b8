#!/usr/bin/env python3
"""Check a bench/run.sh output directory: results.json against the suite's
schema, every plot a valid PNG, report.md linking exactly the plots there.

    check_bench_results.py OUT_DIR [WORKLOAD...]

With no WORKLOAD (a run of other scenarios only, e.g. bench/run.sh
snapshot) only the schema, the plots and what the scenarios that ran
recorded are checked.  A run with the snapshot scenario must have its
records (cold boot, both lazy restores, ratio, memory fetched, the crypto
per chunk in the nested guest and natively and the bound it leaves), a
snapshot restore target in report.md and snapshot.png.

Exits 1 with one line per problem.
"""
import json
import math
import os
import re
import struct
import sys
import zlib

SNAPSHOT_RESTORES = ["kvmm restore (lazy, L1 cold)", "kvmm restore (lazy, trace prefetch)"]
COLD_SYSTEMS = ["kindling-origin", "kindling-origin-prefetch", "kindling-origin-trace", "kindling-l2", "kindling-l2-prefetch",
                "kindling-l1warm", "kindling-l1warm-prefetch", "podman", "eager", "floor-sandbox", "floor-chroot"]


def png_problem(path):
    """None if PATH is a complete PNG (signature, IHDR first with a non-empty
    size, every chunk's CRC right, IDAT present, IEND last)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "no PNG signature"
    pos, names = 8, []
    while pos < len(data):
        if pos + 12 > len(data):
            return f"truncated chunk header at byte {pos}"
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            return f"chunk {ctype!r} runs past the end of the file"
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            return f"bad CRC in chunk {ctype!r}"
        if not names and ctype == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
            if w == 0 or h == 0:
                return f"empty image ({w}x{h})"
        names.append(ctype)
        pos += 12 + length
    if not names or names[0] != b"IHDR":
        return "IHDR is not the first chunk"
    if b"IDAT" not in names:
        return "no image data (IDAT)"
    if names[-1] != b"IEND":
        return "IEND is not the last chunk"
    return None


def main():
    out, wanted = sys.argv[1], sys.argv[2:]
    problems = []
    with open(os.path.join(out, "results.json")) as f:
        d = json.load(f)
    for key, typ in (("schema", str), ("commit", str), ("date", str), ("machine", dict), ("mode", str),
                     ("command", str), ("settings", dict), ("workloads", dict), ("scenarios", dict),
                     ("records", list)):
        if not isinstance(d.get(key), typ):
            problems.append(f"results.json: {key} missing or not a {typ.__name__}")
    if d.get("schema") != "kindling-bench/1":
        problems.append(f"results.json: schema {d.get('schema')!r}, expected kindling-bench/1")
    if not re.fullmatch(r"[0-9a-f]{40}", d.get("commit", "")):
        problems.append(f"results.json: commit {d.get('commit')!r} is not a git commit id")
    if not re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", d.get("date", "")):
        problems.append(f"results.json: date {d.get('date')!r} is not ISO 8601")
    for key in ("hostname", "cpus", "cpu_model", "mem_bytes", "kernel"):
        if key not in d.get("machine", {}):
            problems.append(f"results.json: machine.{key} missing")
    for name, st in d.get("scenarios", {}).items():
        if st.get("status") != "ok":
            problems.append(f"scenario {name} did not pass: {st.get('error')}")
    have = set()
    for i, r in enumerate(d.get("records", [])):
        where = f"record {i} ({r.get('scenario')}/{r.get('workload')}/{r.get('system')}/{r.get('metric')})"
        for key in ("scenario", "system", "metric", "unit", "commit", "date", "machine"):
            if not isinstance(r.get(key), str) or not r.get(key):
                problems.append(f"{where}: {key} missing")
        s = r.get("samples")
        if not isinstance(s, list) or not s or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in s):
            problems.append(f"{where}: samples must be a non-empty list of finite numbers")
            continue
        if r.get("n") != len(s) or r.get("median") is None or not (min(s) <= r["median"] <= max(s)):
            problems.append(f"{where}: n / median do not match the samples")
        if r.get("commit") != d.get("commit"):
            problems.append(f"{where}: commit differs from the run's")
        have.add((r["scenario"], r.get("workload"), r["system"], r["metric"]))
    need = [("crypto", None, "openssl", "limit_all_cores")] if wanted else []
    for w in wanted:
        img = d["workloads"].get(w, {}).get("image", w)
        need += [("coldstart", w, s, "first_output_s") for s in COLD_SYSTEMS]
        for system in ("kindling-l2", "kindling-origin", "kindling-origin-trace"):
            need += [("coldstart", w, system, m) for m in ("bytes_fetched", "bytes_read", "fetch_amplification")]
        need += [("coldstart", w, "kindling-origin-trace", "layout_files_first")]
        need += [("registry", img, s, "seconds") for s in ("kindling", "podman", "eager")]
        need += [("import", img, "kindling-layers", "throughput"), ("import", img, "kindling", "multi_layer_speedup")]
    if wanted:
        need += [("warmstart", wanted[0], "kindling-l1warm", "vs_floor")]
    if "snapshot" in d.get("scenarios", {}):
        # bench/run.sh snapshot (not in --quick): a cold boot and two lazy restores,
        # with the ratio, the memory fetched and the plot.
        for system in SNAPSHOT_RESTORES:
            need += [("snapshot", "snapfn", system, m) for m in
                     ("first_response_s", "speedup_vs_cold_boot", "bytes_fetched", "fraction_fetched",
                      "chunks_prefetched")]
        need += [("snapshot", "snapfn", "kvmm cold boot", "first_response_s"),
                 ("snapshot", "snapfn", "kvmm snapshot", "memory_size")]
        # the crypto per chunk, in the nested guest and natively, and the
        # bound it puts on the L1-cold restore
        need += [("snapshot", "snapfn", where, m) for where in ("nested guest", "host (native)")
                 for m in ("sha256_per_chunk_s", "aes256ctr_per_chunk_s", "l1_block_sha256_per_chunk_s")]
        need += [("snapshot", "snapfn", "kvmm restore (lazy, L1 cold)", m)
                 for m in ("crypto_floor_s", "best_speedup_after_crypto", "best_speedup_after_crypto_with_l1_pass")]
        for r in d.get("records", []):
            if r.get("scenario") == "snapshot" and r.get("metric") == "fraction_fetched" and \
                    not all(0 <= x <= 1 for x in r.get("samples", [])):
                problems.append(f"snapshot/{r.get('system')}: fraction_fetched outside [0, 1]")
    for n in need:
        if n not in have:
            problems.append(f"results.json: no record {'/'.join(str(x) for x in n)}")
    if wanted and not any(k[0] == "cache" and k[3] == "read_latency" and k[2].startswith("l2") for k in have):
        problems.append("results.json: no raw L2 latency samples from the cache scenario")
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    for p in pngs:
        why = png_problem(os.path.join(out, p))
        if why:
            problems.append(f"{p}: not a valid PNG: {why}")
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    linked = sorted(set(re.findall(r"\]\(([^)]+\.png)\)", report)))
    if linked != pngs:
        problems.append(f"report.md links {linked}, the directory has {pngs}")
    want_png = [f"coldstart_{w}.png" for w in wanted] + ["bytes.png", "import.png", "registry.png", "warmstart.png",
                                                         "l2_latency.png"] if wanted else []
    for w in wanted:
        # the fetch amplification target names the layout its figure is from
        if not re.search(rf"fetch amplification, {re.escape(w)}: .*best layout \((usual|trace) layout", report):
            problems.append(f"report.md has no fetch amplification target for {w} naming its layout")
    if "snapshot" in d.get("scenarios", {}):
        want_png.append("snapshot.png")
        if "snapshot restore" not in report:
            problems.append("report.md has no snapshot restore target")
    for p in want_png:
        if p not in pngs:
            problems.append(f"plot {p} is missing")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
