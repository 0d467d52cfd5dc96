"""bench/slo/summarize.py: the table, plots and latency-model errors of one bench/slo/run.

Usage: summarize.py OUT WORKLOADS CONFIGS FACTORS SECONDS THREADS CPU COMMIT STAMP LOAD_BEFORE
LOAD_AFTER. Prints summary.md; writes OUT/goodput-<workload>.gp (+ .dat files) for gnuplot.
"""
import json
import os
import re
import sys

NAMES = {"fcfs": "tandemd fcfs (before SLOs)", "off": "tandemd admission off",
         "reject": "tandemd reject (default)", "queue": "tandemd queue",
         "disagg": "tandemd reject, disaggregated", "disagg-off": "tandemd off, disaggregated",
         "llama": "llama-server"}


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
    workloads = workloads.split(",")
    configs = configs.split(",")
    factors = [float(f) for f in factors.split(",")]
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
        for cfg in configs:
            path = os.path.join(out, f"{wl}-{cfg}", "sweep.json")
            if not os.path.exists(path):
                rows.append((cfg, None, None, None))
                continue
            j = json.load(open(path))
            slo = slo or j.get("config", {}).get("slo")
            pts = sorted(j["points"], key=lambda p: p["request_rate"])
            dat = os.path.join(out, f"{wl}-{cfg}.dat")
            with open(dat, "w") as f:
                for p in pts:
                    f.write(f'{p["offered_rate"]} {p["goodput"]} {p["attainment"]["all"]}\n')
            gp_lines.append(f"'{dat}' using 1:2 with linespoints lw 2 title '{NAMES.get(cfg, cfg)}'")
            metrics = os.path.join(out, f"{wl}-{cfg}.metrics")
            errs = None
            if cfg != "llama" and os.path.exists(metrics):
                text = open(metrics).read()
                errs = (histogram_quantile(text, "tandem:step_time_prediction_relative_error", 0.5),
                        histogram_quantile(text, "tandem:ttft_prediction_relative_error", 0.5))
            rows.append((cfg, pts, j, errs))
        lines.append(f"#### Workload `{wl}`" + (f" (SLO {slo})" if slo else ""))
        lines.append("")
        secs_file = os.path.join(out, f"{wl}-seconds.value")
        secs = open(secs_file).read().strip() if os.path.exists(secs_file) else seconds
        if sat:
            lines.append(f"Saturation: {sat:.3g} req/s (tandemd fcfs, every request sent at once). "
                         f"Offered rates: {', '.join(f'{f:g}x' for f in factors)}, {secs} s of "
                         "arrivals each.")
            lines.append("")
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
        gp = ["set terminal png size 1000,620 noenhanced",
              f"set output '{out}/goodput-{wl}.png'",
              f"set title 'Goodput vs offered load, workload {wl}" + (f", SLO {slo}'" if slo else "'"),
              "set xlabel 'offered rate (req/s)'", "set ylabel 'good req/s (both SLOs met)'",
              "set grid", "set key top left", "set yrange [0:*]"]
        if gp_lines:
            if sat:
                gp.append(f"set arrow from {sat},graph 0 to {sat},graph 1 nohead dt 2 lc rgb 'gray'")
            gp.append("plot " + ", ".join(gp_lines))
            open(os.path.join(out, f"goodput-{wl}.gp"), "w").write("\n".join(gp) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
