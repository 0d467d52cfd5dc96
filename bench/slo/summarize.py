"""bench/slo/summarize.py: the table, plots and latency-model errors of one bench/slo/run.

Usage: summarize.py OUT WORKLOADS CONFIGS FACTORS SECONDS THREADS CPU COMMIT STAMP LOAD_BEFORE
LOAD_AFTER [SCALES]. Prints summary.md; writes for gnuplot (+ .dat files) OUT/goodput-<workload>.gp
and OUT/attainment-<workload>.gp for the rate sweep (FACTORS; empty when it did not run), and
OUT/scale-<workload>.gp for the SLO-scale sweep (SCALES, e.g. 0.5,1,2; absent or empty when it
did not run).
"""
import json
import os
import re
import sys

NAMES = {"fcfs": "tandemd fcfs (before SLOs)", "off": "tandemd admission off",
         "reject": "tandemd reject (default)", "queue": "tandemd queue",
         "disagg": "tandemd reject, disaggregated", "disagg-off": "tandemd off, disaggregated",
         "cluster": "tandemd reject, cluster (router + 2 workers)", "llama": "llama-server"}
# Configs whose prefill and decode run apart: TTFT is then the prefill side's SLO, TPOT the decode's.
SPLIT = {"disagg": ("prefill instance", "decode instance"),
         "disagg-off": ("prefill instance", "decode instance"),
         "cluster": ("prefill worker", "decode worker")}


def pct(x):
    return f"{100 * x:.0f}"


def read_value(out, name):
    path = os.path.join(out, name)
    return open(path).read().strip() if os.path.exists(path) else None


def split_note(configs):
    """Which side each SLO belongs to, naming the configs that split prefill from decode."""
    split = [c for c in configs if c in SPLIT]
    inner = "; ".join(f"in `{c}`: the {SPLIT[c][0]}'s and the {SPLIT[c][1]}'s" for c in split)
    return ("TTFT is the prefill phase's SLO and TPOT the decode phase's" +
            (f" ({inner})" if inner else "") + ".")


def histogram_quantile(text, name, q):
    """q-quantile of a Prometheus histogram in exposition text, interpolated in its bucket."""
    buckets = []
    for m in re.finditer(r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % re.escape(name), text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        buckets.append((le, float(m.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    want = q * total
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= want:
            if le == float("inf"):
                return prev_le
            frac = (want - prev_n) / (n - prev_n) if n > prev_n else 0
            return prev_le + frac * (le - prev_le)
        prev_le, prev_n = le, n
    return None


def main():
    (out, workloads, configs, factors, seconds, threads, cpu, commit, stamp, lb, la) = sys.argv[1:12]
    scales = sys.argv[12].split(",") if len(sys.argv) > 12 and sys.argv[12] else []
    workloads = workloads.split(",")
    configs = configs.split(",")
    factors = [float(f) for f in factors.split(",")] if factors else []
    lines = [f"### bench/slo/run {stamp} UTC", ""]
    lines.append(f"Machine: {cpu}, {os.cpu_count()} cores; commit {commit}; each server on "
                 f"{threads} threads pinned to the same cores, tandem-bench beside it on those "
                 f"cores; load average {lb} before, {la} after. Poisson arrivals, attainment "
                 "target 90%; good req/s = requests meeting both "
                 "SLOs per second (a 429 counts as a miss).")
    lines.append("")
    for wl in workloads:
        sat_file = os.path.join(out, f"{wl}-saturation.value")
        sat = float(open(sat_file).read()) if os.path.exists(sat_file) else None
        slo = None
        rows = []
        gp_lines = []
        att_lines = []
        for cfg in configs if factors else []:
            path = os.path.join(out, f"{wl}-{cfg}", "sweep.json")
            if not os.path.exists(path):
                rows.append((cfg, None, None, None))
                continue
            j = json.load(open(path))
            slo = slo or j.get("config", {}).get("slo")
            pts = sorted(j["points"], key=lambda p: p["request_rate"])
            dat = os.path.join(out, f"{wl}-{cfg}.dat")
            with open(dat, "w") as f:
                f.write("# offered_rate goodput attainment_all attainment_ttft attainment_tpot "
                        "request_rate\n")
                for p in pts:
                    a = p["attainment"]
                    f.write(f'{p["offered_rate"]} {p["goodput"]} {a["all"]} {a.get("ttft", "NaN")} '
                            f'{a.get("tpot", "NaN")} {p["request_rate"]}\n')
            gp_lines.append(f"'{dat}' using 1:2 with linespoints lw 2 title '{NAMES.get(cfg, cfg)}'")
            att_lines.append(f"'{dat}' using 1:($3*100) with linespoints lw 2 "
                             f"title '{NAMES.get(cfg, cfg)}'")
            metrics = os.path.join(out, f"{wl}-{cfg}.metrics")
            errs = None
            if cfg != "llama" and os.path.exists(metrics):
                text = open(metrics).read()
                errs = (histogram_quantile(text, "tandem:step_time_prediction_relative_error", 0.5),
                        histogram_quantile(text, "tandem:ttft_prediction_relative_error", 0.5))
            rows.append((cfg, pts, j, errs))
        if not slo:
            base = read_value(out, f"{wl}-slo.value")
            if base:
                slo = f"ttft:{float(base.split(':')[0]):g},tpot:{float(base.split(':')[1]):g}"
        lines.append(f"#### Workload `{wl}`" + (f" (SLO {slo})" if slo else ""))
        lines.append("")
        secs_file = os.path.join(out, f"{wl}-seconds.value")
        secs = open(secs_file).read().strip() if os.path.exists(secs_file) else seconds
        if sat and factors:
            lines.append(f"Saturation: {sat:.3g} req/s (tandemd fcfs, every request sent at once). "
                         f"Offered rates: {', '.join(f'{f:g}x' for f in factors)}, {secs} s of "
                         "arrivals each.")
            lines.append("")
        elif sat:
            lines.append(f"Saturation: {sat:.3g} req/s (tandemd fcfs, every request sent at once).")
            lines.append("")
        if factors:
            rate_tables(lines, out, wl, factors, rows, configs)
            write_rate_plots(out, wl, slo, sat, gp_lines, att_lines)
        if scales:
            scale_section(lines, out, wl, configs, scales, secs, sat)
    print("\n".join(lines))


def rate_tables(lines, out, wl, factors, rows, configs):
    head = "| server | " + " | ".join(f"{f:g}x" for f in factors) + \
           " | peak good req/s | at 2x / 3x of peak | step-time error (median) | TTFT prediction error (median) |"
    lines.append(head)
    lines.append("| --- |" + " ---: |" * (len(factors) + 4))
    for cfg, pts, j, errs in rows:
        if pts is None:
            lines.append(f"| {NAMES.get(cfg, cfg)} | " + " | ".join("-" for _ in factors) +
                         " | not run | | | |")
            continue
        cells = [f'{p["goodput"]:.2f} ({100 * p["attainment"]["all"]:.0f}%)' for p in pts]
        peak = max(p["goodput"] for p in pts)
        hold = []
        for f in (2.0, 3.0):
            match = [p for p, ff in zip(pts, factors) if abs(ff - f) < 1e-9]
            hold.append(f'{100 * match[0]["goodput"] / peak:.0f}%' if match and peak > 0 else "-")
        e = "-" if not errs or errs[0] is None else f"{100 * errs[0]:.1f}%"
        t = "-" if not errs or errs[1] is None else f"{100 * errs[1]:.1f}%"
        lines.append(f"| {NAMES.get(cfg, cfg)} | " + " | ".join(cells) +
                     f" | {peak:.2f} | {hold[0]} / {hold[1]} | {e} | {t} |")
    lines.append("")
    lines.append(f"Cells: good req/s (SLO attainment). Plot: `{out}/goodput-{wl}.png`; "
                 f"per config `{out}/{wl}-<config>/` (tandem-bench sweep) and "
                 f"`{wl}-<config>.metrics` (the server's /metrics at the end).")
    lines.append("")
    # DistServe's form: attainment per rate, and goodput as the highest rate still at the target.
    lines.append("SLO attainment per offered rate, % of requests sent: both SLOs / TTFT only "
                 "(prefill) / TPOT only (decode). " + split_note(configs) + " Max rate at target: the highest offered "
                 "rate (nominal) at which attainment of both SLOs reached it (DistServe's goodput).")
    lines.append("")
    lines.append("| server | " + " | ".join(f"{f:g}x" for f in factors) + " | max rate at target |")
    lines.append("| --- |" + " ---: |" * (len(factors) + 1))
    for cfg, pts, j, _ in rows:
        if pts is None:
            lines.append(f"| {NAMES.get(cfg, cfg)} | " + " | ".join("-" for _ in factors) +
                         " | not run |")
            continue
        target = j.get("config", {}).get("attainment_target", 0.9)
        cells = [f'{pct(p["attainment"]["all"])} / {pct(p["attainment"].get("ttft", 0))} / '
                 f'{pct(p["attainment"].get("tpot", 0))}' for p in pts]
        met = [p["request_rate"] for p in pts if p["attainment"]["all"] >= target]
        if not met:
            best = f'< {pts[0]["request_rate"]:g} req/s'
        elif max(met) == pts[-1]["request_rate"]:
            best = f">= {max(met):g} req/s (not bounded)"
        else:
            best = f"{max(met):g} req/s"
        lines.append(f"| {NAMES.get(cfg, cfg)} | " + " | ".join(cells) + f" | {best} |")
    lines.append("")
    lines.append(f"Plot: `{out}/attainment-{wl}.png` (both SLOs, per config, against offered "
                 "req/s).")
    lines.append("")


def write_rate_plots(out, wl, slo, sat, gp_lines, att_lines):
    if not gp_lines:
        return
    arrow = [f"set arrow from {sat},graph 0 to {sat},graph 1 nohead dt 2 lc rgb 'gray'"] if sat else []
    gp = ["set terminal png size 1000,620 noenhanced",
          f"set output '{out}/goodput-{wl}.png'",
          f"set title 'Goodput vs offered load, workload {wl}" + (f", SLO {slo}'" if slo else "'"),
          "set xlabel 'offered rate (req/s)'", "set ylabel 'good req/s (both SLOs met)'",
          "set grid", "set key top left", "set yrange [0:*]"]
    gp += arrow
    gp.append("plot " + ", ".join(gp_lines))
    open(os.path.join(out, f"goodput-{wl}.gp"), "w").write("\n".join(gp) + "\n")
    gp = ["set terminal png size 1000,620 noenhanced",
          f"set output '{out}/attainment-{wl}.png'",
          f"set title 'SLO attainment vs offered load, workload {wl}" +
          (f", SLO {slo}'" if slo else "'"),
          "set xlabel 'offered rate (req/s)'", "set ylabel 'SLO attainment, both SLOs (%)'",
          "set grid", "set key bottom left", "set yrange [0:105]"]
    gp += arrow
    gp.append("plot " + ", ".join(att_lines) +
              ", 90 with lines dt 2 lw 2 lc rgb 'black' title '90% target'")
    open(os.path.join(out, f"attainment-{wl}.gp"), "w").write("\n".join(gp) + "\n")


def scale_section(lines, out, wl, configs, scales, secs, sat):
    rate = read_value(out, f"{wl}-scale-rate.value")
    factor = read_value(out, f"{wl}-scale-factor.value")
    base = read_value(out, f"{wl}-slo.value")
    ttft, tpot = (float(x) for x in base.split(":")) if base else (None, None)
    how = f"{factor}x the saturation of {sat:.3g} req/s" if factor and sat else "--rate"
    lines.append(f"SLO scale: every config at one offered rate, {rate} req/s ({how}), {secs} s of "
                 "arrivals, with the workload's SLO times each scale: a fresh server per scale "
                 "(its --ttft-slo-ms/--tpot-slo-ms scaled too, so admission follows) and "
                 "tandem-bench's --slo scaled alike.")
    lines.append("")
    lines.append("| server | " + " | ".join(f"{float(s):g}x SLO" for s in scales) +
                 " | tightest scale at target |")
    lines.append("| --- |" + " ---: |" * (len(scales) + 1))
    if ttft is not None:
        lines.append("| *TTFT / TPOT (ms)* | " +
                     " | ".join(f"*{ttft * float(s):g} / {tpot * float(s):g}*" for s in scales) +
                     " | |")
    plot = []
    for cfg in configs:
        cells, pts = [], []
        for s in scales:
            path = os.path.join(out, f"{wl}-{cfg}-slo-x{s}", "summary.json")
            if not os.path.exists(path):
                cells.append("-")
                continue
            j = json.load(open(path))
            a = j.get("attainment", {})
            target = j.get("config", {}).get("attainment_target", 0.9)
            pts.append((float(s), a.get("all", 0), a.get("ttft", 0), a.get("tpot", 0),
                        j.get("goodput", 0), j.get("offered_rate", 0), target))
            cells.append(f'{pct(a.get("all", 0))}% ({pct(a.get("ttft", 0))} / '
                         f'{pct(a.get("tpot", 0))}), {j.get("goodput", 0):.2f}')
        if not pts:
            lines.append(f"| {NAMES.get(cfg, cfg)} | " + " | ".join(cells) + " | not run |")
            continue
        met = [p[0] for p in pts if p[1] >= p[6]]
        tight = f"{min(met):g}x" if met else f"none up to {max(p[0] for p in pts):g}x"
        lines.append(f"| {NAMES.get(cfg, cfg)} | " + " | ".join(cells) + f" | {tight} |")
        dat = os.path.join(out, f"{wl}-{cfg}-scale.dat")
        with open(dat, "w") as f:
            f.write("# scale attainment_all attainment_ttft attainment_tpot goodput offered_rate\n")
            for p in sorted(pts):
                f.write(" ".join(str(x) for x in p[:6]) + "\n")
        plot.append(f"'{dat}' using 1:($2*100) with linespoints lw 2 title '{NAMES.get(cfg, cfg)}'")
    lines.append("")
    lines.append("Cells: attainment of both SLOs (TTFT only, prefill / TPOT only, decode), % of "
                 "requests sent; then good req/s. " + split_note(configs) + " Tightest scale at "
                 "target: the smallest "
                 "scale at which attainment of both SLOs reached the 90% target (DistServe's "
                 f"SLO scale). Plot: `{out}/scale-{wl}.png`; per run `{out}/{wl}-<config>-slo-x"
                 "<scale>/` (tandem-bench's summary.json, requests.csv) and `.server.log`, "
                 "`.metrics`.")
    lines.append("")
    if plot:
        slo1 = f", SLO at 1x ttft:{ttft:g},tpot:{tpot:g}" if ttft is not None else ""
        gp = ["set terminal png size 1000,620 noenhanced",
              f"set output '{out}/scale-{wl}.png'",
              f"set title 'SLO attainment vs SLO scale, workload {wl}, {rate} req/s{slo1}'",
              "set xlabel 'SLO scale (x the workload SLO; smaller is tighter)'",
              "set ylabel 'SLO attainment, both SLOs (%)'",
              "set grid", "set key bottom right", "set yrange [0:105]",
              "set arrow from 1,graph 0 to 1,graph 1 nohead dt 2 lc rgb 'gray'",
              "plot " + ", ".join(plot) +
              ", 90 with lines dt 2 lw 2 lc rgb 'black' title '90% target'"]
        open(os.path.join(out, f"scale-{wl}.gp"), "w").write("\n".join(gp) + "\n")


if __name__ == "__main__":
    main()
