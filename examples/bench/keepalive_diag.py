#!/usr/bin/env python3
"""Where do keep-alive socket errors come from? A diagnostic beside the benchmark (stdlib only, ~5 min).

On nginx < 1.27.4 an old worker that is told to shut down at a reload closes its idle keep-alive client
connections at once; a client that has just sent its next request on one of them gets EOF or a reset (wrk counts
a "read" error). This script shows it with timestamps: under the same keep-alive wrk load as the benchmark, plus
a small timestamped keep-alive client (8 connections), it runs, in turn:

    canary          N cutover canaries (10/50/100 %)      floor      3N plain `nginx -s reload`
    bluegreen       3N cutover blue/green deploys at the defaults (two reloads each: the flip, and after the
                    verify window the one that takes the old release out of the backup list)
    bluegreen-keep  3N cutover blue/green deploys with keep_previous = true (one reload each)

and for each phase prints the nginx reloads, wrk's read errors, and every error the probe client saw with its
distance in ms from the nearest reload (the start of cutover's reload or unlist step, or the `nginx -s reload`).
It also counts the answers nginx sent with "Connection: close" (old workers finishing a request in flight tell
the client, so those connections do not error). Run examples/bench/run.sh first (it builds cutover).

    python3 examples/bench/keepalive_diag.py [--canaries 5]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in examples/bench
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def probe_client(port, conns, out):
    """Keep-alive GET / loop on `conns` connections until SIGTERM; writes every event to `out` as JSON."""
    events, lock, stop = [], threading.Lock(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def loop(i):
        s = None
        while not stop.is_set():
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                buf = b""
                while b"\r\n\r\n" not in buf:
                    c = s.recv(65536)
                    if not c:
                        raise EOFError("EOF before any answer byte")
                    buf += c
                head, body = buf.split(b"\r\n\r\n", 1)
                length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                                  if h.lower().startswith(b"content-length")))
                while len(body) < length:
                    c = s.recv(65536)
                    if not c:
                        raise EOFError("EOF in the body")
                    body += c
                if b"connection: close" in head.lower():
                    with lock:
                        events.append({"t": time.time(), "kind": "answered with Connection: close"})
                    s.close()
                    s = None
            except (OSError, EOFError, StopIteration) as e:
                with lock:
                    events.append({"t": time.time(), "kind": type(e).__name__, "msg": str(e)})
                if s is not None:
                    s.close()
                s = None

    ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(conns)]
    for t in ts:
        t.start()
    while not stop.is_set():
        time.sleep(0.1)
    time.sleep(0.5)
    with open(out, "w") as f:
        json.dump(events, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--canaries", type=int, default=5)
    p.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)  # internal: PORT CONNS OUT
    a = p.parse_args()
    if a.probe:
        return probe_client(int(a.probe[0]), int(a.probe[1]), a.probe[2])

    b = bench.Bench(bench.parser().parse_args(["--max-secs", "600"]))
    n = a.canaries
    results = {}
    try:
        b.write_config(False)
        b.start_nginx()
        b.one_deploy("setup")
        b.collect_logs([])
        for phase in ("canary", "floor", "bluegreen", "bluegreen-keep"):
            b.write_config(keep_previous=phase in ("canary", "bluegreen-keep"))
            w = b.start_wrk("keepalive", 200, "diag-" + phase)
            out = os.path.join(b.dir, "probe-%s.json" % phase)
            pc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--probe", str(b.nginx_port), "8", out])
            b.children[pc.pid] = ("probe", False)
            time.sleep(1)
            sighups = []
            if phase == "floor":
                for _ in range(3 * n):
                    sighups.append(time.time())
                    subprocess.run(b.nginx_cmd("-s", "reload"), capture_output=True)
                    time.sleep(0.8)
            else:
                for _ in range(n if phase == "canary" else 3 * n):
                    rec, r = b.one_deploy("keepalive", strategy="canary" if phase == "canary" else None)
                    t = rec["start_unix"]
                    for name, ms in rec.get("steps", []):
                        if name in ("reload", "unlist"):  # unlist: the reload that takes the old release out
                            sighups.append(t)
                        t += ms / 1000.0
                    time.sleep(0.5)
            time.sleep(1)
            res, _, _ = b.stop_wrk(w)
            pc.send_signal(signal.SIGTERM)
            pc.wait(30)
            b.children.pop(pc.pid, None)
            ev = b.collect_logs([])
            with open(out) as f:
                events = json.load(f)
            errs = [e for e in events if not e["kind"].startswith("answered")]
            closes = [e for e in events if e["kind"].startswith("answered")]

            def near(t):
                return round(min((t - s for s in sighups), key=abs) * 1000) if sighups else None

            results[phase] = {
                "nginx_reloads": ev["nginx_reloads"], "wrk_read_errors": (res or {}).get("errors", {}).get("read"),
                "wrk_requests": (res or {}).get("requests"),
                "probe_errors": [{"kind": e["kind"], "msg": e["msg"], "ms_after_reload": near(e["t"])} for e in errs],
                "probe_connection_close_answers": len(closes),
                "probe_connection_close_ms_after_reload": sorted(near(e["t"]) for e in closes),
                "nginx_error_log_warn_or_above": [k for k in ev["error_log_counts"] if k.startswith("[")],
            }
    finally:
        b.cleanup()
    for phase, r in results.items():
        ms = [e["ms_after_reload"] for e in r["probe_errors"]]
        cl = r["probe_connection_close_ms_after_reload"]
        print("%-9s reloads %3d  wrk read errors %3d (%.2f per reload)  probe errors %2d at %s ms after a reload;"
              "  'Connection: close' answers %d at %s..%s ms; nginx error log: %s" % (
                  phase, r["nginx_reloads"], r["wrk_read_errors"] or 0,
                  (r["wrk_read_errors"] or 0) / max(1, r["nginx_reloads"]), len(ms), sorted(ms),
                  len(cl), cl[0] if cl else "-", cl[-1] if cl else "-",
                  r["nginx_error_log_warn_or_above"] or "nothing at warn or above"))
    out = os.path.join(bench.RESULTS, "keepalive_diag.json")
    os.makedirs(bench.RESULTS, exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": b.machine, "loadavg_before": b.load["before"], "loadavg_after": b.load["after"],
                   "phases": results}, f, indent=1)
    print("written:", out)


if __name__ == "__main__":
    sys.exit(main())
