#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT and holds them, for bench/compare.sh.

    idle_conns.py PORT [N] [PING_SECONDS]

Each connection is opened and sends one `GET /` (one connection at a time, so that the proxy
never needs more than one connection to its origin for them), then stays idle. Once all N are
open it prints `ready N` and flushes. Every PING_SECONDS (default 30, 0: never) each connection
sends one more `GET /`, spread evenly over the interval, so that a proxy that closes idle
connections after a minute keeps them; that is about N / PING_SECONDS requests per second in
all, which is what "mostly idle" means here. On SIGTERM or SIGINT it prints
`open K closed C pings P` (connections still open, connections the server closed) and exits 0.
Only 127.0.0.1 is ever contacted.
"""

import signal
import socket
import sys
import time

HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: weldr-bench-idle\r\n\r\n"

stop = False


def on_signal(_signum, _frame):
    global stop
    stop = True


def read_response(sock):
    """Reads one response with a Content-Length body. False if the connection closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def main():
    port = int(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    ping = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    conns = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.sendall(REQUEST)
        if not read_response(sock):
            print(f"error: connection {len(conns)} closed before its first response", flush=True)
            return 1
        conns.append(sock)
    print(f"ready {len(conns)}", flush=True)

    closed = 0
    pings = 0
    i = 0
    step = ping / count if ping > 0 else 0.5
    while not stop:
        time.sleep(step)
        if ping <= 0 or stop or not conns:
            continue
        i %= len(conns)
        sock = conns[i]
        try:
            sock.sendall(REQUEST)
            ok = read_response(sock)
        except OSError:
            ok = False
        if ok:
            pings += 1
            i += 1
        else:
            sock.close()
            conns.pop(i)
            closed += 1

    # Connections the server closed while nobody pinged them read as EOF now.
    still_open = 0
    for sock in conns:
        try:
            sock.setblocking(False)
            eof = sock.recv(1) == b""
        except BlockingIOError:
            eof = False
        except OSError:
            eof = True
        if eof:
            closed += 1
        else:
            still_open += 1
        sock.close()
    print(f"open {still_open} closed {closed} pings {pings}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
