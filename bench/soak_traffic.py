#!/usr/bin/env python3
"""The Python half of bench/soak.sh's traffic, and its RSS sampler. Standard library only.

    soak_traffic.py --port P --admin-port A --extra-url URL --pid PID --seconds S
                    --rss-csv FILE --out FILE.json [--sample-seconds 10] [--extra-period 15]

For S seconds, against weldr-cli on 127.0.0.1 only, in parallel:
  - downloads: GET /large?size=N over a keep-alive connection, N from 1 KiB to 4 MiB, every body
    checked byte for byte against the origin's pattern;
  - uploads: POST /echo with random bodies of 0 to 2 MiB, half with Content-Length and half
    chunked, the echo checked byte for byte;
  - management API: GET /stats and GET /servers every second, GET /metrics every third, and
    every EXTRA_PERIOD seconds the extra origin registered (POST /servers) or deregistered
    (DELETE /servers/{ip}/{port}) in turn;
  - every SAMPLE_SECONDS, one CSV line with weldr's VmRSS, VmHWM, open descriptors, threads and
    its /stats counters.
Writes counts by kind and outcome, and every failed or non-2xx request with its time, to --out.
"""

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time

HOST = "127.0.0.1"
stop = threading.Event()
lock = threading.Lock()
counts = {}  # kind -> outcome -> n
events = []  # failures and non-2xx: {"t", "kind", "outcome", "detail"}
MAX_EVENTS = 5000

PATTERN = (b"abcdefghijklmnopqrstuvwxyz" * ((4 << 20) // 26 + 2))
RANDOM_BLOCK = os.urandom(2 << 20)


def record(kind, outcome, detail=""):
    with lock:
        per = counts.setdefault(kind, {})
        per[outcome] = per.get(outcome, 0) + 1
        if not outcome[:1] == "2" and len(events) < MAX_EVENTS:
            events.append({"t": time.time(), "kind": kind, "outcome": outcome, "detail": detail[:200]})


class Client:
    """One keep-alive connection, opened again after any failure."""

    def __init__(self, port, timeout=60):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        """(status, body bytes), or raises after closing the connection."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            data = response.read()
            if response.will_close:
                self.close()
            return response.status, data
        except Exception:
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def failure_name(error):
    return "cut:" + type(error).__name__


def downloads(port):
    client = Client(port)
    sizes = [1024, 65536, 1 << 20, 4 << 20]
    while not stop.is_set():
        size = random.choice(sizes)
        try:
            status, body = client.request("GET", f"/large?size={size}")
        except Exception as e:
            record("GET /large", failure_name(e), repr(e))
            time.sleep(0.05)
            continue
        if status == 200 and body != PATTERN[:size]:
            record("GET /large", "corrupt", f"size {size}: got {len(body)} bytes, not the pattern")
        else:
            record("GET /large", str(status), body[:100].decode("latin-1") if status != 200 else "")


def uploads(port):
    client = Client(port)
    sizes = [0, 100, 16384, 65543, 1 << 20, 2 << 20]
    n = 0
    while not stop.is_set():
        n += 1
        size = random.choice(sizes)
        offset = random.randrange(0, len(RANDOM_BLOCK) - size + 1)
        payload = RANDOM_BLOCK[offset:offset + size]
        headers = {"Content-Type": "application/octet-stream"}
        chunked = n % 2 == 0
        if chunked:
            pieces = [payload[i:i + 50000] for i in range(0, len(payload), 50000)] or [b""]
            body = iter(pieces)
            kind = "POST /echo chunked"
        else:
            body = payload
            kind = "POST /echo"
        try:
            if chunked:
                if client.conn is None:
                    client.conn = http.client.HTTPConnection(HOST, client.port, timeout=client.timeout)
                client.conn.request("POST", "/echo", body=body, headers=headers, encode_chunked=True)
                response = client.conn.getresponse()
                data = response.read()
                status = response.status
                if response.will_close:
                    client.close()
            else:
                status, data = client.request("POST", "/echo", body=body, headers=headers)
        except Exception as e:
            client.close()
            record(kind, failure_name(e), repr(e))
            time.sleep(0.05)
            continue
        if status == 200 and data != payload:
            record(kind, "corrupt", f"size {size}: echo of {len(data)} bytes differs")
        else:
            record(kind, str(status), data[:100].decode("latin-1") if status != 200 else "")


def admin(admin_port, extra_url, extra_period):
    client = Client(admin_port, timeout=10)
    ip_port = extra_url.split("//", 1)[-1]
    ip, _, port = ip_port.rpartition(":")
    registered = False
    next_flip = time.time() + extra_period / 2
    i = 0
    while not stop.wait(1.0):
        i += 1
        calls = [("GET", "/stats", None, 200), ("GET", "/servers", None, 200)]
        if i % 3 == 0:
            calls.append(("GET", "/metrics", None, 200))
        if time.time() >= next_flip:
            next_flip += extra_period
            if registered:
                calls.append(("DELETE", f"/servers/{ip}/{port}", None, 204))
            else:
                calls.append(("POST", "/servers", json.dumps({"url": extra_url}), 201))
            registered = not registered
        for method, path, body, expect in calls:
            kind = f"API {method} {path.split('/')[1] if method != 'DELETE' else 'servers/{ip}/{port}'}"
            headers = {"Content-Type": "application/json"} if body else {}
            try:
                status, data = client.request(method, path, body=body, headers=headers)
            except Exception as e:
                record(kind, failure_name(e), repr(e))
                continue
            ok = status == expect
            if ok and path in ("/stats", "/servers"):
                try:
                    json.loads(data)
                except ValueError:
                    ok = False
                    record(kind, "bad-json", data[:100].decode("latin-1"))
                    continue
            if ok:
                record(kind, str(status))
            else:
                record(kind, f"unexpected {status}", f"expected {expect}: {data[:100].decode('latin-1')}")


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else ""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return int(fields["VmRSS"]), int(fields["VmHWM"]), fds, int(fields["Threads"])


def stats(admin_port):
    try:
        conn = http.client.HTTPConnection(HOST, admin_port, timeout=5)
        conn.request("GET", "/stats")
        s = json.loads(conn.getresponse().read())
        conn.close()
        return s["client"]["success"], s["client"]["failed"], s["server"]["success"], s["server"]["failed"]
    except Exception:
        return "", "", "", ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--extra-url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rss-csv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sample-seconds", type=float, default=10)
    ap.add_argument("--extra-period", type=float, default=15)
    args = ap.parse_args()

    workers = [
        threading.Thread(target=downloads, args=(args.port,)),
        threading.Thread(target=uploads, args=(args.port,)),
        threading.Thread(target=admin, args=(args.admin_port, args.extra_url, args.extra_period)),
    ]
    start = time.time()
    for w in workers:
        w.start()

    died = None
    with open(args.rss_csv, "w") as csv:
        csv.write("elapsed_s,rss_kib,hwm_kib,fds,threads,client_success,client_failed,server_success,server_failed\n")
        next_sample = start
        while True:
            now = time.time()
            if now >= next_sample:
                try:
                    rss, hwm, fds, nthreads = proc_status(args.pid)
                except (FileNotFoundError, ProcessLookupError, KeyError):
                    died = round(now - start, 1)
                    print(f"soak: weldr-cli (pid {args.pid}) is gone at {died} s", flush=True)
                    break
                row = [round(now - start, 1), rss, hwm, fds, nthreads, *stats(args.admin_port)]
                csv.write(",".join(str(x) for x in row) + "\n")
                csv.flush()
                if int(now - start) % 60 < args.sample_seconds:
                    with lock:
                        done = sum(sum(v.values()) for v in counts.values())
                    print(f"soak: {now - start:5.0f} s  RSS {rss / 1024:.1f} MiB  fds {fds}  "
                          f"python requests {done}  weldr client success/failed {row[5]}/{row[6]}", flush=True)
                next_sample += args.sample_seconds
            if now - start >= args.seconds:
                break
            time.sleep(min(0.5, max(0.0, next_sample - time.time())))
    stop.set()
    for w in workers:
        w.join(timeout=120)
    with lock:
        result = {"seconds": time.time() - start, "start": start, "weldr_died_at": died,
                  "counts": counts, "events": events, "events_truncated": len(events) >= MAX_EVENTS}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
