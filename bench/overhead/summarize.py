#!/usr/bin/env python3
"""bench/overhead/summarize.py: reads the tandem-bench runs bench/overhead/run left in --work
(<server>/c<C>/rep<R>/{summary.json,requests.csv}, <server>.rep<R>.{probe.json,server.log}),
checks that every request succeeded with exactly one output token reported in usage, takes
the median over repetitions of each figure, prints a Markdown table with the ratio
tandemd / llama-server, and writes everything to --out as JSON. Exit 1 when a check failed.
Standard library only."""

import argparse
import csv
import json
import os
import re
import statistics
import sys


def parse_args():
    p = argparse.ArgumentParser()
    for flag in ("work", "out", "servers", "concurrency", "requests", "warmup", "reps", "threads",
                 "cores", "model", "input-len", "same-prompt", "cpu", "nproc", "commit",
                 "llama-version", "load-before", "load-after", "stamp", "command", "server-cmds"):
        p.add_argument("--" + flag, required=True)
    return p.parse_args()


# Lines of a server log worth a human's look (tandemd logs with spdlog levels; llama-server
# prints its own). Counted and the first few kept.
SUSPECT = re.compile(r"\b(error|err|critical|fatal|abort|panic|exception|segfault|warn|warning)\b",
                     re.IGNORECASE)


def scan_log(path):
    hits = []
    if not os.path.exists(path):
        return hits
    with open(path, errors="replace") as f:
        for line in f:
            if SUSPECT.search(line):
                hits.append(line.rstrip()[:300])
    return hits


def read_metrics(path):
    """Prometheus text -> {name: value}, label sets of one name summed."""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path, errors="replace"):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        name = parts[0].split("{")[0]
        try:
            out[name] = out.get(name, 0.0) + float(parts[1])
        except ValueError:
            pass
    return out


def server_side(d, n_requests):
    """Per-request server-side figures from /metrics deltas over the measured requests."""
    b = read_metrics(os.path.join(d, "metrics_before.txt"))
    a = read_metrics(os.path.join(d, "metrics_after.txt"))
    if not a:
        return None
    delta = {k: a[k] - b.get(k, 0.0) for k in a}
    out = {}

    def mean_ms(hist):
        c = delta.get(hist + "_count", 0)
        return delta.get(hist + "_sum", 0) / c * 1e3 if c else None

    if "tandem:e2e_request_latency_seconds_count" in delta:
        n = delta["tandem:e2e_request_latency_seconds_count"]
        out = {"requests": n,
               "e2e_mean_ms": mean_ms("tandem:e2e_request_latency_seconds"),
               "queue_mean_ms": mean_ms("tandem:request_queue_time_seconds"),
               "ttft_mean_ms": mean_ms("tandem:time_to_first_token_seconds"),
               "engine_steps": delta.get("tandem:engine_steps"),
               "engine_steps_per_request": delta.get("tandem:engine_steps", 0) / n if n else None}
    elif "llamacpp:prompt_seconds_total" in delta:
        # Slot timers: each request's prompt + generation time (they overlap when batched).
        busy = delta["llamacpp:prompt_seconds_total"] + delta.get("llamacpp:tokens_predicted_seconds_total", 0)
        out = {"requests": n_requests,
               "slot_time_mean_ms": busy / n_requests * 1e3 if n_requests else None,
               "decode_calls": delta.get("llamacpp:n_decode_total"),
               "decode_calls_per_request": delta.get("llamacpp:n_decode_total", 0) / n_requests
               if n_requests else None,
               "prompt_tokens_evaluated": delta.get("llamacpp:prompt_tokens_total")}
    return out or None


def read_rep(d, warmup):
    """One tandem-bench run: its figures and the per-request token check."""
    rep = {"dir": d}
    if os.path.exists(os.path.join(d, "failed")):
        rep["tandem_bench_exit"] = open(os.path.join(d, "failed")).read().strip()
    if os.path.exists(os.path.join(d, "died")):
        rep["server_died"] = True
    for k in ("load_before", "load_after"):
        if os.path.exists(os.path.join(d, k)):
            rep["load_avg_1min_" + k.split("_")[1]] = float(open(os.path.join(d, k)).read())
    bp = os.path.join(d, "busy_cores_before_server_start")
    if os.path.exists(bp):
        rep["other_work_busy_cores_before_server_start"] = float(open(bp).read())
    sp = os.path.join(d, "summary.json")
    if not os.path.exists(sp):
        rep["error"] = "no summary.json (tandem-bench failed: " + \
            open(os.path.join(d, "stderr.txt")).read()[-500:] + ")"
        return rep
    s = json.load(open(sp))
    rep.update({
        "req_per_s": s["request_throughput"],
        "duration_s": s["duration_s"],
        "sent": s["requests"]["sent"],
        "completed": s["requests"]["completed"],
        "failed": s["requests"]["failed"],
        "errors": s["requests"]["errors"],
        "input_tokens": s["input_tokens"],
        "output_tokens": s["output_tokens"],
        "e2e_ms": {k: s["e2e_ms"][k] for k in ("mean", "median", "p90", "p99", "min", "max")},
        "ttft_ms": {k: s["ttft_ms"][k] for k in ("mean", "median", "p90", "p99")},
    })
    if "server_cross_check" in s:
        rep["server_cross_check"] = s["server_cross_check"]
    srv = server_side(d, s["requests"]["sent"])
    if srv:
        rep["server_metrics"] = srv
    rows = list(csv.DictReader(open(os.path.join(d, "requests.csv"))))
    not_ok = [r for r in rows if r["status"] != "ok"]
    not_one = [r for r in rows if r["status"] == "ok" and r["output_tokens"] != "1"]
    no_usage = [r for r in rows if r["status"] == "ok" and r["usage_reported"] != "1"]
    rep["check"] = {
        "rows": len(rows),
        "not_ok": len(not_ok),
        "output_tokens_not_1": len(not_one),
        "usage_not_reported": len(no_usage),
        "first_errors": sorted({r["error"] for r in not_ok})[:5],
        "output_token_counts_seen": sorted({r["output_tokens"] for r in rows if r["status"] == "ok"}),
    }
    prompt = [int(r["prompt_tokens"]) for r in rows if r["status"] == "ok"]
    if prompt:
        rep["prompt_tokens"] = {"min": min(prompt), "max": max(prompt),
                                "mean": sum(prompt) / len(prompt)}
    return rep


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def main():
    a = parse_args()
    servers = [s for s in a.servers.split(",") if s]
    concs = [int(c) for c in a.concurrency.split(",")]
    nreq = [int(n) for n in a.requests.split(",")]
    nwarm = [int(n) for n in a.warmup.split(",")]
    reps = int(a.reps)
    cmds = a.server_cmds.strip().split("\n")
    problems = []
    result = {
        "benchmark": "request overhead: max_tokens=1 requests, closed loop",
        "stamp_utc": a.stamp,
        "command": a.command.strip(),
        "commit": a.commit,
        "machine": {"cpu": a.cpu, "cores": int(a.nproc), "load_avg_before_1_5_15": a.load_before,
                    "load_avg_after_1_5_15": a.load_after},
        "llama_cpp": a.llama_version,
        "config": {"model": a.model, "threads": int(a.threads), "pinned_cores": a.cores,
                   "input_len_tokens": int(a.input_len), "same_prompt": a.same_prompt == "1",
                   "max_tokens": 1, "temperature": 0, "ignore_eos": True, "stream": True,
                   "client": "tandem-bench --max-concurrency C --request-rate inf (one connection "
                             "per request, SSE streaming, usage requested)",
                   "points": [{"concurrency": c, "requests": n, "warmup": w}
                              for c, n, w in zip(concs, nreq, nwarm)],
                   "reps": reps},
        "servers": {},
    }
    for si, name in enumerate(servers):
        srv = {"command": cmds[si] if si < len(cmds) else "", "probes": [], "points": {}}
        logs = sorted(f for f in os.listdir(a.work) if f.startswith(name + ".rep") and ".server.log" in f)
        hits = []
        for f in logs:
            hits += [f"{f}: {h}" for h in scan_log(os.path.join(a.work, f))]
        srv["log_suspect_lines"] = {"count": len(hits), "first": hits[:20]}
        for r in range(1, reps + 1):
            pp = os.path.join(a.work, f"{name}.rep{r}.probe.json")
            if os.path.exists(pp):
                txt = open(pp).read().strip()
                try:
                    probe = json.loads(txt)
                except json.JSONDecodeError:
                    probe = {"error": txt}
                srv["probes"].append(probe)
                if probe.get("completion_tokens") != 1:
                    problems.append(f"{name} rep {r}: non-streaming probe: {txt}")
        for c, w in zip(concs, nwarm):
            reps_data = []
            for r in range(1, reps + 1):
                d = os.path.join(a.work, name, f"c{c}", f"rep{r}")
                if not os.path.isdir(d):
                    problems.append(f"{name} c={c} rep {r}: not run")
                    continue
                rep = read_rep(d, w)
                reps_data.append(rep)
                where = f"{name} c={c} rep {r}"
                if "error" in rep:
                    problems.append(f"{where}: {rep['error']}")
                    continue
                chk = rep["check"]
                if chk["not_ok"]:
                    problems.append(f"{where}: {chk['not_ok']} requests failed: {chk['first_errors']}")
                if chk["output_tokens_not_1"]:
                    problems.append(f"{where}: {chk['output_tokens_not_1']} responses with output tokens "
                                    f"other than 1 (seen {chk['output_token_counts_seen']})")
                if chk["usage_not_reported"]:
                    problems.append(f"{where}: {chk['usage_not_reported']} responses without usage")
                if rep.get("server_died"):
                    problems.append(f"{where}: the server died")
            good = [x for x in reps_data if "req_per_s" in x]
            srv["points"][str(c)] = {
                "concurrency": c,
                "reps": reps_data,
                "median": {
                    "req_per_s": med([x["req_per_s"] for x in good]),
                    "e2e_median_ms": med([x["e2e_ms"]["median"] for x in good]),
                    "e2e_p90_ms": med([x["e2e_ms"]["p90"] for x in good]),
                    "e2e_p99_ms": med([x["e2e_ms"]["p99"] for x in good]),
                    "ttft_median_ms": med([x["ttft_ms"]["median"] for x in good]),
                    "e2e_mean_ms": med([x["e2e_ms"]["mean"] for x in good]),
                    "server_e2e_mean_ms": med([x.get("server_metrics", {}).get("e2e_mean_ms")
                                               for x in good]),
                    "server_slot_time_mean_ms": med([x.get("server_metrics", {}).get("slot_time_mean_ms")
                                                     for x in good]),
                },
                "req_per_s_each_rep": [x["req_per_s"] for x in good],
            }
        result["servers"][name] = srv

    # Ratios tandemd / llama-server (> 1 on req/s and < 1 on latency favour tandemd).
    ratios = {}
    if "tandemd" in result["servers"] and "llama-server" in result["servers"]:
        t, l = result["servers"]["tandemd"]["points"], result["servers"]["llama-server"]["points"]
        for c in concs:
            tm, lm = t[str(c)]["median"], l[str(c)]["median"]
            ratios[str(c)] = {k: (tm[k] / lm[k] if tm[k] and lm[k] else None) for k in tm}
    result["ratios_tandemd_over_llama_server"] = ratios
    result["checks"] = {"ok": not problems, "problems": problems}

    # The table.
    has_ratio = bool(ratios)
    head = "| concurrency | figure | " + " | ".join(servers)
    head += " | tandemd / llama-server |" if has_ratio else " |"
    lines = [head, "| ---: | --- |" + " ---: |" * (len(servers) + has_ratio)]
    figures = [("req_per_s", "requests/s", 1), ("e2e_median_ms", "latency median (ms)", 2),
               ("e2e_p90_ms", "latency p90 (ms)", 2), ("e2e_p99_ms", "latency p99 (ms)", 2)]
    for c in concs:
        for key, label, dg in figures:
            row = f"| {c} | {label} | "
            cells = []
            for s in servers:
                pt = result["servers"][s]["points"][str(c)]
                cell = fmt(pt["median"][key], dg)
                if key == "req_per_s" and len(pt["req_per_s_each_rep"]) > 1:
                    cell += " (" + ", ".join(fmt(x, 0) for x in pt["req_per_s_each_rep"]) + ")"
                cells.append(cell)
            row += " | ".join(cells)
            if has_ratio:
                row += f" | {fmt(ratios[str(c)][key], 2)}"
            lines.append(row + " |")
    table = "\n".join(lines)
    result["table_markdown"] = table
    print(table)
    notes = []
    for s in servers:
        for c in concs[:1]:  # only unbatched requests split cleanly into server time and the rest
            m = result["servers"][s]["points"][str(c)]["median"]
            inner = m["server_e2e_mean_ms"] if m["server_e2e_mean_ms"] is not None else m["server_slot_time_mean_ms"]
            if inner is not None and m["e2e_mean_ms"] is not None:
                what = "server E2E" if m["server_e2e_mean_ms"] is not None else "slot time (prompt + predict)"
                notes.append(f"{s} c={c}: client mean latency {m['e2e_mean_ms']:.2f} ms, {what} mean "
                             f"{inner:.2f} ms (from /metrics)")
    result["server_side_notes"] = notes
    print(f"\n(median of {reps} repetitions; in brackets: requests/s of each repetition; "
          f"latency = client send to last byte, max_tokens=1, {a.input_len}-token prompts; "
          f"ratio > 1 on requests/s and < 1 on latency favour tandemd)")
    for n in notes:
        print(n)
    for s in servers:
        lg = result["servers"][s]["log_suspect_lines"]
        if lg["count"]:
            print(f"{s}: {lg['count']} log lines mention error/warning; first: {lg['first'][:3]}")
    if problems:
        print("\nPROBLEMS:")
        for p in problems:
            print("  " + p)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
