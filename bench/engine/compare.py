#!/usr/bin/env python3
"""Joins one bench/engine/run's measurements into a comparison table and a JSON record.

Inputs (in --dir): tandem.json (tandem-bench-engine --json), llama_pp.json and
llama_tg.json (llama-bench -o json), bb-<threads>-<rep>.jsonl (llama-batched-bench
--output-format jsonl, one file per repetition), and for long context tandem_long.json
(tandem-bench-engine with one long prompt and a long decode context), llama_pp_long.json
(llama-bench -p N -n 0) and llama_tg_long.json (llama-bench -p 0 -n S -d N). Every llama.cpp figure is a median over
repetitions, like tandem's: llama-bench's samples_ts, and batched-bench's speed_tg/speed_pp
across its repeated runs. Missing llama.cpp files (run --no-llama) leave those cells empty.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess


def load_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text) if text else None


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def llama_bench_median(rows, threads, n_prompt, n_gen, n_depth=0):
    for r in rows or []:
        if (r["n_threads"] == threads and r["n_prompt"] == n_prompt and r["n_gen"] == n_gen
                and r.get("n_depth", 0) == n_depth):
            return statistics.median(r["samples_ts"])
    return None


def batched_bench_rows(directory, threads):
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, f"bb-{threads}-*.jsonl"))):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def batched_median(rows, batch, key):
    vals = [r[key] for r in rows if r["pl"] == batch]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-version", default="none")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    tandem = load_json(os.path.join(a.dir, "tandem.json"))
    lb_pp = load_json(os.path.join(a.dir, "llama_pp.json"))
    lb_tg = load_json(os.path.join(a.dir, "llama_tg.json"))
    long_tandem = load_json(os.path.join(a.dir, "tandem_long.json"))
    lb_pp_long = load_json(os.path.join(a.dir, "llama_pp_long.json"))
    lb_tg_long = load_json(os.path.join(a.dir, "llama_tg_long.json"))
    threads = [int(t) for t in a.threads.split(",")]
    ctx, steps = tandem["decode_context"], tandem["decode_steps"]

    comparison = []
    batched = {}
    for t in threads:
        res = next(r for r in tandem["results"] if r["threads"] == t)
        bb = batched_bench_rows(a.dir, t)
        batched[str(t)] = bb
        roof = res.get("roofline_decode_b1_tok_s")

        def add(figure, ours, theirs, note=""):
            comparison.append({
                "threads": t, "figure": figure, "tandem_tok_s": ours, "llama_cpp_tok_s": theirs,
                "ratio": ours / theirs if ours and theirs else None, "llama_cpp_source": note})

        for p in res["prefill"]:
            n = p["tokens"]
            add(f"prefill {n}", p["tok_s"], llama_bench_median(lb_pp, t, n, 0),
                f"llama-bench -p {n} -n 0")
        for d in res["decode"]:
            b = d["batch"]
            add(f"decode b{b} (ctx {ctx}, {steps} steps)", d["tok_s"],
                batched_median(bb, b, "speed_tg"),
                f"llama-batched-bench -npp {ctx} -ntg {steps} -npl {b}: S_TG")
            if b == 1:
                add("decode b1 vs tg128 (ctx 0..128)", d["tok_s"],
                    llama_bench_median(lb_tg, t, 0, 128), "llama-bench -p 0 -n 128")
        if roof:
            b1 = next((d["tok_s"] for d in res["decode"] if d["batch"] == 1), None)
            llama_b1 = batched_median(bb, 1, "speed_tg")
            comparison.append({
                "threads": t, "figure": "decode b1 roofline", "roofline_tok_s": roof,
                "membw_gbps": res["membw_gbps"],
                "tandem_share": b1 / roof if b1 else None,
                "llama_cpp_share": llama_b1 / roof if llama_b1 else None})
        if long_tandem:
            lres = next(r for r in long_tandem["results"] if r["threads"] == t)
            lctx, lsteps = long_tandem["decode_context"], long_tandem["decode_steps"]
            for p in lres["prefill"]:
                n = p["tokens"]
                add(f"prefill {n} (one Forward)", p["tok_s"],
                    llama_bench_median(lb_pp_long, t, n, 0), f"llama-bench -p {n} -n 0")
            b1 = next((d["tok_s"] for d in lres["decode"] if d["batch"] == 1), None)
            llama_b1 = llama_bench_median(lb_tg_long, t, 0, lsteps, lctx)
            add(f"decode b1 (ctx {lctx}, {lsteps} steps)", b1, llama_b1,
                f"llama-bench -p 0 -n {lsteps} -d {lctx}")
            bound = lres.get("bound_decode_b1_tok_s")
            if bound:
                comparison.append({
                    "threads": t, "figure": f"decode b1 bound (ctx {lctx})",
                    "bound_tok_s": bound, "membw_gbps": lres["membw_gbps"],
                    "bytes_per_step": long_tandem["weight_bytes"]["per_token"]
                    + long_tandem["kv_bytes_decode_b1"],
                    "tandem_share": b1 / bound if b1 else None,
                    "llama_cpp_share": llama_b1 / bound if llama_b1 else None})

    build = None
    for rows in (lb_pp, lb_tg, lb_pp_long, lb_tg_long):
        if rows:
            build = {"build_commit": rows[0].get("build_commit"),
                     "build_number": rows[0].get("build_number"),
                     "cpu_info": rows[0].get("cpu_info")}
            break
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                    "loadavg_after": open("/proc/loadavg").read().split()[:3]},
        "model": a.model,
        "threads": threads,
        "llama_cpp": {"source": a.llama_version, **(build or {})},
        "comparison": comparison,
        "tandem": tandem,
        "tandem_long": long_tandem,
        "llama_bench": {"prefill": lb_pp, "decode": lb_tg, "prefill_long": lb_pp_long,
                        "decode_long": lb_tg_long},
        "llama_batched_bench": batched,
    }
    with open(a.out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")

    def fmt(v, spec="{:.1f}"):
        return spec.format(v) if v is not None else "-"

    def pct(share):
        return f"{100 * share:.0f}%" if share is not None else "-"

    wb = tandem["weight_bytes"]
    print(f"model {a.model}; {record['machine']['cpu']}; llama.cpp {a.llama_version}"
          f" ({(build or {}).get('build_commit', '-')}); medians of {tandem['reps']} reps")
    print(f"weights streamed per decode token: {wb['per_token'] / 1e6:.1f} MB")
    print(f"{'threads':>7}  {'figure':<34} {'tandem tok/s':>12} {'llama.cpp tok/s':>15} "
          f"{'tandem/llama':>12}")
    for c in comparison:
        if "roofline_tok_s" in c:
            print(f"{c['threads']:>7}  {'decode b1 roofline':<34} {fmt(c['roofline_tok_s']):>12}"
                  f" {'':>15} {'':>12}   ({c['membw_gbps']:.2f} GB/s; tandem at "
                  f"{pct(c['tandem_share'])}, llama.cpp at {pct(c['llama_cpp_share'])})")
        elif "bound_tok_s" in c:
            print(f"{c['threads']:>7}  {c['figure']:<34} {fmt(c['bound_tok_s']):>12}"
                  f" {'':>15} {'':>12}   ({c['bytes_per_step'] / 1e6:.1f} MB at "
                  f"{c['membw_gbps']:.2f} GB/s; tandem at {pct(c['tandem_share'])}, "
                  f"llama.cpp at {pct(c['llama_cpp_share'])})")
        else:
            print(f"{c['threads']:>7}  {c['figure']:<34} {fmt(c['tandem_tok_s']):>12} "
                  f"{fmt(c['llama_cpp_tok_s']):>15} {fmt(c['ratio'], '{:.2f}'):>12}")


if __name__ == "__main__":
    main()
