#!/usr/bin/env python3
"""Summary and verdict of bench/soak.sh. Standard library only.

    soak_summary.py RESULTS_DIR

Reads from RESULTS_DIR: traffic.json (soak_traffic.py), wrk-keepalive.txt and wrk-close.txt
(wrk with soak_status.lua), rss.csv, flaps.log ("EPOCH stop|start" lines), weldr.stderr,
weldr.exit (weldr-cli's exit status) and params (KEY=VALUE lines). Prints the summary and
exits 1 if weldr crashed or did not exit 0, if a sanitizer reported anything, if a response
body was corrupted, or if RSS was not stable; 0 otherwise.
"""

import csv
import json
import os
import re
import sys

EXPECTED_DURING_FLAPS = {"502", "503", "504"}  # and connections cut mid-response ("cut:...")
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: \w+Sanitizer")


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return default


def parse_wrk(text):
    m = re.search(r"(\d+) requests in", text)
    total = int(m.group(1)) if m else 0
    statuses = {code: int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", text, re.M)}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sock = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    return total, statuses, sock


def main():
    d = sys.argv[1]
    params = dict(line.split("=", 1) for line in read(os.path.join(d, "params")).split() if "=" in line)
    grace = float(params.get("FLAP_GRACE", 5))
    tolerance = float(params.get("RSS_TOLERANCE", 10))
    failures = []
    out = []

    # Flap windows: from each stop to its start plus a grace period for the health checker.
    flaps = []
    stop_at = None
    for line in read(os.path.join(d, "flaps.log")).splitlines():
        t, what = line.split()[:2]
        if what == "stop":
            stop_at = float(t)
        elif what == "start" and stop_at is not None:
            flaps.append((stop_at, float(t) + grace))
            stop_at = None
    if stop_at is not None:
        flaps.append((stop_at, float("inf")))

    def in_flap(t):
        return any(a <= t <= b for a, b in flaps)

    log = read(os.path.join(d, "weldr.stderr"))
    out.append(f"soak: {params.get('SOAK_SECONDS', '?')} s against weldr-cli built with "
               f"-DWELDR_SANITIZE=address,undefined (Debug), {params.get('ORIGINS', '?')} origins")
    out.append(f"flapping origin: stopped {len(flaps)} times (every {params.get('FLAP_PERIOD', '?')} s, "
               f"down {params.get('FLAP_DOWN', '?')} s); weldr logged "
               f"{log.count(' down after ')} down, {log.count(' up after ')} up, "
               f"{len(re.findall(r' ejected for ', log))} ejections, {log.count(' back after ')} back")
    out.append("")

    # Requests.
    traffic = json.loads(read(os.path.join(d, "traffic.json"), "{}") or "{}")
    rows = []
    total_requests = 0
    expected_errors = 0
    unexpected = []  # (kind, outcome, n)
    for name, label in (("wrk-keepalive.txt", "GET / keep-alive (wrk)"), ("wrk-close.txt", "GET / Connection: close (wrk)")):
        text = read(os.path.join(d, name))
        total, statuses, sock = parse_wrk(text)
        total_requests += total
        bad = {c: n for c, n in statuses.items() if not c.startswith("2")}
        for c, n in bad.items():
            if c in EXPECTED_DURING_FLAPS:
                expected_errors += n
            else:
                unexpected.append((label, c, n))
        sock_total = sum(sock.values())
        if sock_total:
            unexpected.append((label, "socket errors " + ", ".join(f"{k} {v}" for k, v in sock.items() if v), sock_total))
        rows.append((label, total, ", ".join(f"{c}: {n}" for c, n in sorted(statuses.items())) +
                     (f"; socket errors {sock_total}" if sock_total else "")))
    for kind, outcomes in sorted(traffic.get("counts", {}).items()):
        n = sum(outcomes.values())
        total_requests += n
        rows.append((kind, n, ", ".join(f"{o}: {c}" for o, c in sorted(outcomes.items()))))
    width = max((len(r[0]) for r in rows), default=10)
    out.append("requests:")
    for label, n, detail in rows:
        out.append(f"  {label:<{width}}  {n:>9,}  {detail}")
    out.append(f"  {'total':<{width}}  {total_requests:>9,}")
    out.append("")

    # The Python requests' failures, with times: expected inside a flap window, not outside.
    corrupt = 0
    for e in traffic.get("events", []):
        outcome = e["outcome"]
        if outcome == "corrupt":
            corrupt += 1
        api = e["kind"].startswith("API ")
        flappy = (outcome in EXPECTED_DURING_FLAPS or outcome.startswith("cut:")) and not api
        if flappy and in_flap(e["t"]):
            expected_errors += 1
        else:
            unexpected.append((e["kind"], outcome + ("" if api or not flappy else " (outside a flap)"), 1))
    merged = {}
    for kind, outcome, n in unexpected:
        merged[(kind, outcome)] = merged.get((kind, outcome), 0) + n
    out.append(f"errors: {expected_errors} expected during flaps (502/503/504, or a connection cut while the "
               f"flapping origin was down or coming back; wrk's 502/503/504 are not timed and all count here)")
    if merged:
        out.append(f"        {sum(merged.values())} other errors (only corrupted bodies fail the soak; look at the rest):")
        for (kind, outcome), n in sorted(merged.items()):
            out.append(f"          {kind}: {outcome} x{n}")
        examples = [e for e in traffic.get("events", []) if e["detail"] and not in_flap(e["t"])][:5]
        for e in examples:
            out.append(f"          e.g. {e['kind']} {e['outcome']}: {e['detail']}")
    else:
        out.append("        0 other errors")
    if corrupt:
        failures.append(f"{corrupt} corrupted response bodies")
    if traffic.get("weldr_died_at") is not None:
        failures.append(f"weldr-cli was gone at {traffic['weldr_died_at']} s")
    out.append("")

    # RSS.
    samples = []
    with open(os.path.join(d, "rss.csv")) as f:
        for row in csv.DictReader(f):
            samples.append((float(row["elapsed_s"]), int(row["rss_kib"]), int(row["hwm_kib"]), int(row["fds"])))
    if samples:
        rss = [s[1] for s in samples]
        fds = [s[3] for s in samples]
        end = samples[-1][0]
        out.append(f"RSS ({len(samples)} samples every {params.get('SAMPLE_SECONDS', '?')} s): first "
                   f"{rss[0] / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB; "
                   f"peak (VmHWM) {samples[-1][2] / 1024:.1f} MiB")
        out.append(f"descriptors: first {fds[0]}, last {fds[-1]}, max {max(fds)}")
        minute2 = [s[1] for s in samples if 60 <= s[0] < 120]
        last_minute = [s[1] for s in samples if s[0] > end - 60]
        if end >= 180 and minute2 and last_minute:
            a = sum(minute2) / len(minute2)
            b = sum(last_minute) / len(last_minute)
            change = (b - a) / a * 100
            stable = change <= tolerance
            out.append(f"RSS stability: minute-2 average {a / 1024:.1f} MiB, last-minute average {b / 1024:.1f} MiB "
                       f"({change:+.1f} %, limit +{tolerance:g} %): {'stable' if stable else 'UNSTABLE'}")
            if not stable:
                failures.append(f"RSS grew {change:.1f} % from minute 2 to the last minute")
        else:
            out.append("RSS stability: not judged (needs SOAK_SECONDS of 180 or more)")
    else:
        out.append("RSS: no samples")
        failures.append("no RSS samples")
    out.append("")

    # Exit and sanitizers.
    status = read(os.path.join(d, "weldr.exit")).strip() or "?"
    out.append(f"weldr-cli exit status after SIGTERM: {status}")
    if status != "0":
        failures.append(f"weldr-cli exited with {status}, not 0")
    reports = [line for line in log.splitlines() if SANITIZER.search(line)]
    if reports:
        out.append(f"sanitizer reports: {len(reports)} lines, first: {reports[0]}")
        failures.append("sanitizer report in weldr.stderr")
    else:
        out.append("sanitizer reports: none")
    out.append("")
    out.append("result: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    print("\n".join(out))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
