#!/usr/bin/env python3
"""Builds the tables of bench/compare.sh from its results directory.

    compare_table.py RESULTS_DIR

Reads RESULTS_DIR/runs.tsv (one line per wrk run, written by compare.sh) and the raw wrk
outputs it names, and prints the tables: per scenario and target the medians over rounds of
req/s, MiB/s, p50 and p99 latency, the CPU time the target's process spent per request (user
plus system; for direct, the origin's), and peak RSS, the errors summed over rounds, then the
ratios weldr/haproxy, weldr/nginx, weldr/direct and weldr/weldr-base, of the medians and round
by round. Standard library only.

CPU time per request is the steadier figure on a small machine: req/s moves with whatever else
runs, while the work a proxy does for a request does not.
"""

import csv
import os
import re
import statistics
import sys

LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # to milliseconds
BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}  # wrk: base 1024

SCENARIOS = {
    "small": "GET / (11 B), 64 keep-alive connections",
    "close": "GET / (11 B) with Connection: close, 64 connections (a new connection per request)",
    "large": "GET /large (1 MiB), 16 keep-alive connections",
    "idle": "GET / over 8 connections while 1,000 idle keep-alive connections are open",
}


def parse_wrk(text):
    """The figures of one wrk --latency output; None where wrk did not print them."""
    out = {"rps": None, "bps": None, "p50": None, "p99": None, "requests": None,
           "socket_errors": 0, "non2xx": 0}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"^Transfer/sec:\s+([\d.]+)\s*([KMGT]?B)", text, re.M)
    if m:
        out["bps"] = float(m.group(1)) * BYTE_UNITS[m.group(2)]
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+" + pct + r"%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        if m:
            out[key] = float(m.group(1)) * LATENCY_UNITS[m.group(2)]
    m = re.search(r"^\s+(\d+) requests in", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
        out["socket_detail"] = "c{} r{} w{} t{}".format(*m.groups())
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_num(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def fmt_ms(v):
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1000:.0f} us"
    if v < 100:
        return f"{v:.2f} ms"
    return f"{v:.0f} ms"


def fmt_us(v):
    return "-" if v is None else f"{v:.1f} us"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def paired(a_rounds, b_rounds):
    """Ratios of a to b within each round (the two ran minutes apart, under the same drift): the
    median and range of the req/s ratio, in how many rounds a served more, and the same for p99.
    A tie shows as about half the rounds either way, whatever the medians of each target say."""
    if not a_rounds or not b_rounds:
        return None
    b_by_round = {r["round"]: r for r in b_rounds}
    rps, p99 = [], []
    for a in a_rounds:
        b = b_by_round.get(a["round"])
        if b is None:
            continue
        if a["rps"] and b["rps"]:
            rps.append(a["rps"] / b["rps"])
        if a["p99"] and b["p99"]:
            p99.append(a["p99"] / b["p99"])
    if not rps:
        return None
    return [str(len(rps)), f"{statistics.median(rps):.2f} ({min(rps):.2f}-{max(rps):.2f})",
            f"{sum(1 for x in rps if x > 1)} of {len(rps)}",
            f"{statistics.median(p99):.2f}" if p99 else "-",
            f"{sum(1 for x in p99 if x <= 1)} of {len(p99)}" if p99 else "-"]


def table(headers, rows):
    """Markdown table whose columns are padded, so it reads as plain text too."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def main():
    results = sys.argv[1]
    with open(os.path.join(results, "runs.tsv"), newline="") as f:
        runs = list(csv.DictReader(f, delimiter="\t"))

    scenarios, targets = [], []
    data = {}  # (scenario, target) -> list of per-round dicts
    for run in runs:
        s, t = run["scenario"], run["target"]
        if s not in scenarios:
            scenarios.append(s)
        if t not in targets:
            targets.append(t)
        with open(os.path.join(results, run["raw"])) as f:
            figures = parse_wrk(f.read())
        for key in ("peak_kib", "rss_before_kib", "rss_after_kib", "idle_open", "idle_closed", "cpu_ticks", "tick_hz"):
            figures[key] = int(run[key]) if run.get(key, "") not in ("", None) else None
        figures["cpu_us"] = None
        if figures["cpu_ticks"] is not None and figures["tick_hz"] and figures["requests"]:
            figures["cpu_us"] = figures["cpu_ticks"] * 1e6 / figures["tick_hz"] / figures["requests"]
        figures["round"] = int(run["round"])
        data.setdefault((s, t), []).append(figures)

    out = []
    for s in scenarios:
        out.append(f"### {s}: {SCENARIOS.get(s, s)}\n")
        headers = ["target", "req/s", "MiB/s", "p50", "p99", "CPU/req", "peak RSS", "errors"]
        if s == "idle":
            headers += ["RSS/idle conn (round 1)", "idle open at end"]
        rows = []
        med = {}
        for t in targets:
            rounds = data.get((s, t))
            if not rounds:
                continue
            m = {k: median([r[k] for r in rounds]) for k in ("rps", "bps", "p50", "p99", "cpu_us", "peak_kib")}
            med[t] = m
            sock = sum(r["socket_errors"] for r in rounds)
            non2xx = sum(r["non2xx"] for r in rounds)
            missing = sum(1 for r in rounds if r["rps"] is None)
            errors = []
            if sock:
                errors.append(f"{sock} socket")
            if non2xx:
                errors.append(f"{non2xx} non-2xx")
            if missing:
                errors.append(f"{missing} failed runs")
            row = [t, fmt_num(m["rps"]), fmt_num(m["bps"] / 1024**2 if m["bps"] else None, 1),
                   fmt_ms(m["p50"]), fmt_ms(m["p99"]), fmt_us(m["cpu_us"]),
                   fmt_num(m["peak_kib"] / 1024 if m["peak_kib"] else None, 1) + " MiB",
                   ", ".join(errors) or "0"]
            if s == "idle":
                # Only the first round measures a process that has not yet had (and freed) that
                # many connections; later rounds reuse the memory and read close to zero.
                first = min(rounds, key=lambda r: r["round"])
                per_conn = None
                if first["rss_after_kib"] is not None and first["rss_before_kib"] is not None and first["idle_open"]:
                    per_conn = (first["rss_after_kib"] - first["rss_before_kib"]) / first["idle_open"]
                row.append(fmt_num(per_conn, 1) + " KiB" if per_conn is not None else "-")
                row.append("/".join(str(r["idle_open"]) for r in rounds if r["idle_open"] is not None) or "-")
            rows.append(row)
        out.append(table(headers, rows))
        out.append("")

        pairs = [(w, base) for base in ("haproxy", "nginx", "direct") for w in ("weldr", "weldr-2t")]
        pairs += [("weldr-2t", "weldr"), ("weldr", "weldr-base")]
        ratio_rows = []
        for w, base in pairs:
            if w in med and base in med:
                a, b = med[w], med[base]
                ratio_rows.append([f"{w}/{base}", fmt_ratio(a["rps"], b["rps"]), fmt_ratio(a["bps"], b["bps"]),
                                   fmt_ratio(a["p99"], b["p99"]), fmt_ratio(a["cpu_us"], b["cpu_us"])])
        if ratio_rows:
            out.append(table(["ratio (medians)", "req/s", "MiB/s", "p99", "CPU/req"], ratio_rows))
            out.append("")

        paired_rows = []
        for w, base in pairs:
            row = paired(data.get((s, w)), data.get((s, base)))
            if row:
                paired_rows.append([f"{w}/{base}"] + row)
        if paired_rows:
            out.append(table(["round by round", "rounds", "req/s ratio: median (min-max)", "more req/s in",
                              "p99 ratio: median", "p99 no worse in"], paired_rows))
            out.append("")

    # Per-round figures, to see the spread behind the medians.
    out.append("### Per round\n")
    rows = []
    for s in scenarios:
        for t in targets:
            for r in data.get((s, t), []):
                rows.append([s, t, r["round"], fmt_num(r["rps"]), fmt_ms(r["p99"]), fmt_us(r["cpu_us"]),
                             fmt_num(r["peak_kib"]), r.get("socket_detail", "0"), r["non2xx"]])
    out.append(table(["scenario", "target", "round", "req/s", "p99", "CPU/req", "peak RSS KiB",
                      "socket errors", "non-2xx"], rows))
    print("\n".join(out))


if __name__ == "__main__":
    main()
