#!/usr/bin/env python3
"""Long requests in flight at a flip: the client of the benchmark's third mode (stdlib only).

Starts, all at once, a few long GETs (`/slow?ms=N`: the app holds the answer N ms) and a few slow uploads
(`POST /upload` with a body sent in chunks over a few seconds, so the request is still arriving when nginx
flips), waits for all of them, and prints one JSON document on stdout:

    {"completed": N, "failed": N, "requests": [{"kind", "status", "error", "start", "end", ...}, ...]}

completed = a 2xx answer; failed = a connection error, a timeout or a non-2xx answer.
Every connection goes to 127.0.0.1 only.

    longreq.py --port 8080 [--slow 3] [--slow-ms 3000] [--uploads 2] [--upload-secs 2.5] [--upload-kb 64]
"""

import argparse
import json
import socket
import sys
import threading
import time


def read_answer(sock):
    """Read a whole HTTP answer (the request said Connection: close); return its status code."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    if not buf:
        raise ConnectionError("connection closed without an answer")
    line = buf.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError("no status line: %r" % line[:80])
    return int(parts[1]), buf


def slow_get(port, ms, timeout):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET /slow?ms=%d HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % ms).encode())
        return read_answer(s)


def slow_upload(port, size, secs, chunks, timeout):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % size).encode())
        piece = size // chunks
        sent = 0
        for i in range(chunks):
            n = piece if i < chunks - 1 else size - sent
            s.sendall(b"x" * n)
            sent += n
            if i < chunks - 1:
                time.sleep(secs / (chunks - 1))
        status, buf = read_answer(s)
        if 200 <= status < 300:
            body = buf.split(b"\r\n\r\n", 1)[-1]
            try:
                got = json.loads(body.decode())["received"]
            except (ValueError, KeyError):
                got = None
            if got != size:
                raise ConnectionError("app received %r of %d bytes" % (got, size))
        return status, buf


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="nginx's port on 127.0.0.1")
    p.add_argument("--slow", type=int, default=3, help="number of long GETs")
    p.add_argument("--slow-ms", type=int, default=3000)
    p.add_argument("--uploads", type=int, default=2, help="number of slow uploads")
    p.add_argument("--upload-secs", type=float, default=2.5, help="time over which each body is sent")
    p.add_argument("--upload-kb", type=int, default=64)
    p.add_argument("--chunks", type=int, default=11)
    p.add_argument("--timeout", type=float, default=30.0, help="per socket operation")
    a = p.parse_args()

    results = []
    lock = threading.Lock()

    def run(kind, fn, *args):
        r = {"kind": kind, "start": time.time()}
        try:
            status, _ = fn(*args)
            r["status"] = status
            r["ok"] = 200 <= status < 300
            if not r["ok"]:
                r["error"] = "HTTP %d" % status
        except (OSError, ConnectionError) as e:  # socket.timeout is an OSError
            r["status"] = None
            r["ok"] = False
            r["error"] = "%s: %s" % (type(e).__name__, e)
        r["end"] = time.time()
        with lock:
            results.append(r)

    threads = [threading.Thread(target=run, args=("slow_get", slow_get, a.port, a.slow_ms, a.timeout))
               for _ in range(a.slow)]
    threads += [threading.Thread(target=run, args=("slow_upload", slow_upload, a.port, a.upload_kb * 1024,
                                                   a.upload_secs, a.chunks, a.timeout))
                for _ in range(a.uploads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sum(1 for r in results if r["ok"])
    json.dump({"completed": ok, "failed": len(results) - ok, "requests": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
