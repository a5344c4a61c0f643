#!/usr/bin/env python3
"""cutover benchmark driver (stdlib only); run it through examples/bench/run.sh.

Everything runs on 127.0.0.1 in a temp dir: a private nginx (worker_processes 2, ports picked free), the fixture
app (fixtures/app.py) started by cutover exactly as the tests start it, and wrk driving load through nginx for
the whole of each phase. nginx has three server blocks: cutover's app, cutover's 4-instance "fleet", and the
published blue/green pattern's (service-url.inc + proxy_pass $service_url, baseline/published/). Phases, in order:

  for each client mode (wrk -H "Connection: close", then keep-alive):
    cutover    N blue/green deploys at the defaults (deploy.verify 5s, keep_previous false: after the verify
               window the old release is unlisted from nginx's backup list, a second reload, then stopped)
    cutover    N blue/green deploys with keep_previous true (one reload per deploy; the old release stays)
    floor      N plain `nginx -s reload` + 300 ms, no deploy (what nginx itself costs a keep-alive client)
    cutover    K rollbacks (keep_previous true, so a rollback is a flip), then S x `cutover status`
    cutover    C canaries stepped to 100 % (`--strategy canary`; skipped with --skip-canary)
    cutover    F rolling deploys of a 4-instance app ("fleet", its own server block and wrk run), with surge and
               without (batch 1), then F all-at-once deploys (not zero-downtime: nginx answers 503 + Retry-After
               while nothing runs; the 503s and cutover's downtime_ms are reported), then N plain reloads through
               its server block (its floor); skipped with --skip-fleet
    published  B deploys of the published pattern (baseline/published/deploy.sh: stop.sh, start.sh, health.sh
               with its real sleeps unless BASELINE_SLEEP is set), through its own server block
    floor      B plain reloads through the pattern's server block
  cutover     N deploys with deploy.verify 0s (Connection: close): what the verify window adds to a deploy
  cases       failure cases side by side, cutover vs the published pattern, and what cutover's after-the-switch
              safety buys (cases.py; skipped with --skip-cases)
  cutover     L deploys with long requests and slow uploads in flight at each flip (examples/bench/longreq.py)
  kill-at-once  the second baseline, baseline/kill-at-once.sh (written for this benchmark: it kills the old app
              right after the reload), takes over cutover's server block, then N deploys per client mode and L
              deploys with long requests in flight

It prints the tables and writes them to examples/bench/results/latest.md and latest.json, with the load average
before, during and after the run. Every process it starts is stopped by pid (apps by process group) when it ends,
also on Ctrl-C.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import report
from cases import Cases
from published import Published, fixture_processes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURE = os.path.join(ROOT, "fixtures", "app.py")
LUA = os.path.join(HERE, "count.lua")
LONGREQ = os.path.join(HERE, "longreq.py")
KILL_AT_ONCE = os.path.join(HERE, "baseline", "kill-at-once.sh")
RESULTS = os.path.join(HERE, "results")
MODES = [("close", "Connection: close"), ("keepalive", "keep-alive")]


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def signal_pid(pid, sig, group=False):
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_app(pid):
    """True when pid is still a fixture app process (guards against a reused pid before signalling it)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"app.py" in f.read()
    except OSError:
        return False


def stop_pid(pid, group=False, grace=5.0):
    """SIGTERM (the process group when group=True), SIGKILL after grace seconds."""
    if not pid or not pid_alive(pid) or not is_app(pid):
        return
    signal_pid(pid, signal.SIGTERM, group)
    end = time.monotonic() + grace
    while time.monotonic() < end and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        signal_pid(pid, signal.SIGKILL, group)


def free_ports(n, used):
    """Ports from 61000 up: above Linux's ephemeral range (32768-60999), so the thousands of client
    connections of a Connection: close run never sit on them, and away from the tests' 20000-32700."""
    out = []
    p = 61000 + (os.getpid() % 200) * 20
    while len(out) < n:
        p += 1
        if p > 65000:
            p = 61001
        if p in used or p in out:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
            out.append(p)
        except OSError:
            pass
        finally:
            s.close()
    return out


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def wait_quiet(max_load, max_minutes):
    """Wait (30 s steps, at most max_minutes) until the 1-minute load average is at or below max_load.
    Returns what was seen: {"waited_s", "quiet", "loadavg"}."""
    t = time.monotonic()
    while True:
        la = loadavg()
        if la is None or la[0] <= max_load:
            return {"waited_s": round(time.monotonic() - t), "quiet": True, "loadavg": la, "max_load": max_load}
        if time.monotonic() - t >= max_minutes * 60:
            log("load average %s still above %g after %g min: running anyway" % (la, max_load, max_minutes))
            return {"waited_s": round(time.monotonic() - t), "quiet": False, "loadavg": la, "max_load": max_load}
        log("load average %s above %g: waiting (%d s so far, at most %g min)" % (
            la, max_load, time.monotonic() - t, max_minutes))
        time.sleep(30)


def median(xs):
    return statistics.median(xs) if xs else None


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {"n": len(xs), "median": round(median(xs), 1), "max": max(xs), "min": min(xs)}


def version_tuple(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


class Bench:
    def __init__(self, a):
        self.a = a
        self.t0 = time.monotonic()
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S %z")
        self.deadline = self.t0 + a.max_secs
        self.cutover_bin = os.path.abspath(a.cutover)
        self.nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        self.dir = tempfile.mkdtemp(prefix="cutover-bench-")
        # nginx's workers run as nobody and keep upload bodies in <prefix>/client_body_temp: they must be able to
        # reach the prefix. The state dir cutover creates inside stays 0700.
        os.chmod(self.dir, 0o755)
        self.prefix = os.path.join(self.dir, "nginx")
        for sub in ("nginx/conf/extra", "nginx/logs", "state", "baseline", "wrk", "longreq", "flags"):
            os.makedirs(os.path.join(self.dir, sub))
        self.fixture = FIXTURE
        self.upstream = os.path.join(self.prefix, "conf", "bench.upstream.conf")
        self.nginx_conf = os.path.join(self.prefix, "conf", "nginx.conf")
        self.access_log = os.path.join(self.prefix, "logs", "bench.cutover.log")
        self.error_log = os.path.join(self.prefix, "logs", "error.log")
        self.config = os.path.join(self.dir, "cutover.toml")
        ports = free_ports(17, set())
        self.nginx_port, self.pool, self.base_ports = ports[0], ports[1:4], ports[4:6]
        # The fleet: a second app of 4 instances behind its own server block, for rolling and all at once.
        self.fleet_port, self.fleet_pool = ports[6], ports[7:13]
        # The published pattern: its own server block and its two app ports (real1, real2).
        self.pub_port, self.pub_ports = ports[13], ports[14:16]
        # where service-url.inc points before the pattern's first deploy: the app that ran before it was set up
        # (the guides' 8080); nothing runs there
        self.pub_initial_port = ports[16]
        scale = os.environ.get("BASELINE_SLEEP", "").strip()
        self.baseline_sleep_scale = float(scale) if scale else None
        self.fleet_config = os.path.join(self.dir, "fleet.toml")
        self.fleet_upstream = os.path.join(self.prefix, "conf", "fleet.upstream.conf")
        self.fleet_log = os.path.join(self.prefix, "logs", "fleet.cutover.log")
        self.children = {}  # pid -> (description, is group leader)
        self.release_n = 0
        self.phases = []
        self.deploys = []  # every cutover deploy/rollback/canary record
        self.baseline_runs = []
        self.status_ms = []
        self.notes = []
        self.canary_state = "not run"
        self.canary_ok = self.canary_runs = 0
        self.canary_failures = []
        self.error_log_offset = 0
        self.machine = self.machine_info()
        self.load = {"before": loadavg(), "samples": [], "after": None}
        self.sampling = threading.Event()
        threading.Thread(target=self.sample_load, daemon=True).start()
        self.published = Published(self)
        self.cases = Cases(self, self.published)

    log = staticmethod(log)

    def sample_load(self):
        """The 1/5/15-minute load average every 15 s while the run lasts (this run's own wrk, nginx and apps
        count in it too)."""
        while not self.sampling.wait(15):
            la = loadavg()
            if la:
                self.load["samples"].append([round(time.monotonic() - self.t0), *la])

    # ---------------------------------------------------------------- setup

    def machine_info(self):
        cpu = "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        nv = subprocess.run([self.nginx_bin, "-v"], capture_output=True, text=True)
        nginx_version = (nv.stderr + nv.stdout).strip().split("/")[-1]
        wv = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        cv = subprocess.run([self.cutover_bin, "--version"], capture_output=True, text=True)
        return {
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "kernel": platform.release(),
            "nginx": nginx_version,
            "wrk": (wv.stdout + wv.stderr).splitlines()[0].strip() if (wv.stdout + wv.stderr) else "?",
            "python": platform.python_version(),
            "cutover": cv.stdout.strip(),
        }

    def write_config(self, keep_previous, verify="5s"):
        """cutover's config for the main app. A release may be told to misbehave (the failure cases) by a file
        flags/RELEASE holding fixture flags, which the start command appends."""
        pool = ", ".join(str(p) for p in self.pool)
        flags = os.path.join(self.dir, "flags")
        text = f"""# written by examples/bench/bench.py
[app]
name = "bench"
start = "exec python3 {FIXTURE} --port {{{{port}}}} --release {{{{release}}}} $(cat {flags}/{{{{release}}}} 2>/dev/null)"
stop_timeout = "10s"

[ports]
pool = [{pool}]
bind = "127.0.0.1"

[health]
deadline = "30s"

[nginx]
upstream_file = "{self.upstream}"
prefix = "{self.prefix}"
conf = "conf/nginx.conf"

[deploy]
drain_timeout = "30s"
keep_previous = {"true" if keep_previous else "false"}
verify = "{verify}"
state_dir = "{os.path.join(self.dir, "state")}"

[runtime]
kind = "spawn"
log_dir = "{os.path.join(self.dir, "logs")}"

[canary]
steps = [10, 50, 100]
interval = "1s"
min_requests = 20
max_error_rate = 0.05
access_log = "{self.access_log}"
"""
        with open(self.config, "w") as f:
            f.write(text)
        self.config_now = {"keep_previous": keep_previous, "verify": verify}

    def set_flags(self, release, flags):
        path = os.path.join(self.dir, "flags", release)
        if flags:
            with open(path, "w") as f:
                f.write(flags + "\n")
        elif os.path.exists(path):
            os.unlink(path)

    def write_fleet_config(self, strategy, surge):
        pool = ", ".join(str(p) for p in self.fleet_pool)
        text = f"""# written by examples/bench/bench.py: the 4-instance app of the rolling and all-at-once phases
[app]
name = "fleet"
start = "exec python3 {FIXTURE} --port {{{{port}}}} --release {{{{release}}}}"
stop_timeout = "10s"

[ports]
pool = [{pool}]
bind = "127.0.0.1"

[health]
deadline = "30s"

[nginx]
upstream_file = "{self.fleet_upstream}"
prefix = "{self.prefix}"
conf = "conf/nginx.conf"

[deploy]
strategy = "{strategy}"
instances = 4
drain_timeout = "30s"
verify = "{self.a.fleet_verify}"
state_dir = "{os.path.join(self.dir, "state")}"

[rolling]
batch = 1
surge = {"true" if surge else "false"}

[maintenance]
retry_after = "5s"
"""
        with open(self.fleet_config, "w") as f:
            f.write(text)

    def start_nginx(self):
        v = version_tuple(self.machine["nginx"])
        self.keepalive_min_timeout = v >= (1, 27, 4)
        extra = "        keepalive_min_timeout 1s;\n" if self.keepalive_min_timeout else ""
        if self.keepalive_min_timeout:
            log("nginx %s >= 1.27.4: keepalive_min_timeout 1s set in the server block (floor should be 0)"
                % self.machine["nginx"])
        else:
            log("nginx %s < 1.27.4: no keepalive_min_timeout; idle keep-alive clients can see a reset at a "
                "reload (the floor rows measure it)" % self.machine["nginx"])
        conf = f"""# written by examples/bench/bench.py
worker_processes 2;
pid logs/nginx.pid;
error_log logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    include {self.upstream};
    include {self.fleet_upstream};
    include {self.prefix}/conf/extra/*.conf;   # the failure cases drop a broken file here
    server {{
        listen 127.0.0.1:{self.nginx_port};
        access_log {self.access_log} cutover_bench;
{extra}        location / {{ proxy_pass http://bench; }}
    }}
    server {{
        listen 127.0.0.1:{self.fleet_port};
        access_log {self.fleet_log} cutover_fleet;
{extra}        location / {{ proxy_pass http://fleet; }}
    }}
    server {{
        # the published blue/green pattern (baseline/published/SOURCE.md)
        listen 127.0.0.1:{self.pub_port};
        access_log {self.published.access_log} cutover_bench;
{extra}        include {self.published.service_url_inc};
        location / {{ proxy_pass $service_url; }}
    }}
}}
"""
        self.published.write_initial_service_url()
        with open(self.nginx_conf, "w") as f:
            f.write(conf)
        r = self.cutover("render")
        if r["code"] != 0:
            raise SystemExit("cutover render failed:\n" + r["stderr"])
        with open(self.upstream, "w") as f:
            f.write(r["stdout"])
        if "log_format cutover_bench" not in r["stdout"]:
            raise SystemExit("the upstream file cutover renders has no `log_format cutover_bench`; this bench "
                             "needs a cutover that defines it (the site's access_log uses it)")
        self.write_fleet_config("rolling", True)
        r = self.cutover("render", config=self.fleet_config)
        if r["code"] != 0:
            raise SystemExit("cutover render (fleet) failed:\n" + r["stderr"])
        with open(self.fleet_upstream, "w") as f:
            f.write(r["stdout"])
        st = subprocess.run(self.nginx_cmd(), capture_output=True, text=True)
        if st.returncode != 0:
            raise SystemExit("could not start the bench nginx:\n" + st.stderr)
        end = time.monotonic() + 5
        self.nginx_pid = None
        while time.monotonic() < end and not self.nginx_pid:
            try:
                with open(os.path.join(self.prefix, "logs", "nginx.pid")) as f:
                    self.nginx_pid = int(f.read().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        if not self.nginx_pid:
            raise SystemExit("nginx did not write its pid file")
        log("nginx %d on 127.0.0.1:%d, prefix %s" % (self.nginx_pid, self.nginx_port, self.prefix))

    def nginx_cmd(self, *extra):
        return [self.nginx_bin, "-p", self.prefix + "/", "-c", "conf/nginx.conf", *extra]

    # ---------------------------------------------------------------- helpers

    def time_left(self):
        return self.deadline - time.monotonic()

    def next_release(self, prefix="v"):
        self.release_n += 1
        return "%s%d" % (prefix, self.release_n)

    def cutover(self, *args, timeout=120, config=None):
        env = dict(os.environ)
        env.pop("CUTOVER_CONFIG", None)
        t = time.monotonic()
        start_unix = time.time()
        try:
            p = subprocess.run([self.cutover_bin, "-c", config or self.config, *args], capture_output=True, text=True,
                               timeout=timeout, env=env)
            code, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            code, out, err = -1, e.stdout or "", "timed out after %ds" % timeout
            out = out.decode() if isinstance(out, bytes) else out
        wall = (time.monotonic() - t) * 1000.0
        doc = None
        if "--json" in args:
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
        return {"code": code, "stdout": out, "stderr": err, "wall_ms": round(wall, 1), "json": doc,
                "start_unix": start_unix, "end_unix": time.time()}

    def cutover_popen(self, *args, config=None):
        """cutover in the background (stdout/stderr piped); the caller waits with communicate()."""
        env = dict(os.environ)
        env.pop("CUTOVER_CONFIG", None)
        p = subprocess.Popen([self.cutover_bin, "-c", config or self.config, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        self.children[p.pid] = ("cutover " + " ".join(args), False)
        return p

    def kill_group(self, pid):
        signal_pid(pid, signal.SIGKILL, group=True)

    def state_pids(self, app="bench"):
        try:
            with open(os.path.join(self.dir, "state", app, "state.json")) as f:
                s = json.load(f)
        except (OSError, ValueError):
            return []
        pids = []
        rolling = s.get("rolling") or {}
        for d in (s.get("live"), s.get("previous"), (s.get("canary") or {}).get("deployment"),
                  rolling.get("deployment"), {"instances": rolling.get("down") or []}):
            for i in (d or {}).get("instances", []):
                if i.get("pid"):
                    pids.append(i["pid"])
        for key in ("started", "to_stop"):
            for i in (s.get("in_progress") or {}).get(key, []) or []:
                if isinstance(i, dict) and i.get("pid"):
                    pids.append(i["pid"])
        for i in s.get("backup") or []:
            if i.get("pid"):
                pids.append(i["pid"])
        return pids

    def baseline_pids(self):
        pids = []
        d = os.path.join(self.dir, "baseline")
        for name in os.listdir(d):
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(d, name)) as f:
                        pids.append(int(f.read().strip()))
                except (OSError, ValueError):
                    pass
        return pids

    # ---------------------------------------------------------------- wrk

    def start_wrk(self, mode, secs, label, port=None):
        secs = max(10, int(min(secs, self.time_left() + 30)))
        out = os.path.join(self.dir, "wrk", label + ".out")
        cmd = ["wrk", "-t", str(self.a.threads), "-c", str(self.a.connections), "-d", "%ds" % secs,
               "--timeout", self.a.wrk_timeout, "-s", LUA]
        if mode == "close":
            cmd += ["-H", "Connection: close"]
        cmd.append("http://127.0.0.1:%d/" % (port or self.nginx_port))
        f = open(out, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        self.children[p.pid] = ("wrk " + label, False)
        time.sleep(self.a.warmup)
        return {"proc": p, "out": out, "cmd": cmd, "secs": secs}

    def stop_wrk(self, w):
        time.sleep(self.a.cooldown)
        p = w["proc"]
        self.wrk_stop_unix = time.time()
        ended_early = p.poll() is not None
        if not ended_early:
            p.send_signal(signal.SIGINT)  # wrk prints its summary (and our done()) on SIGINT
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.children.pop(p.pid, None)
        with open(w["out"]) as f:
            text = f.read()
        m = re.search(r"^BENCH_RESULT (.*)$", text, re.M)
        res = json.loads(m.group(1)) if m else None
        if res is None:
            self.notes.append("wrk output without BENCH_RESULT (%s):\n%s" % (w["out"], text[-2000:]))
        if ended_early:
            self.notes.append("wrk ran out of its -d %ds before the phase ended (%s)" % (w["secs"], w["out"]))
        return res, ended_early, " ".join(w["cmd"])

    # ---------------------------------------------------------------- evidence

    def collect_logs(self, windows, wrk_stop=None, access_log=None, timeline=False):
        """Non-2xx lines of the JSON access log since the last call (then truncated), and the new error-log
        lines at warn level and above. windows: [(label, start_unix, end_unix)] to attribute each line;
        wrk_stop: when wrk was told to stop (a 499 after it is wrk closing its connections, not a loss).
        timeline: also, per upstream address, [first, last, count] of the answers it gave, and the times of
        the first and last non-2xx."""
        bad, by = [], {}
        spans, first_bad, last_bad = {}, None, None
        windows = sorted(windows, key=lambda w: w[1])
        access_log = access_log or self.access_log
        try:
            with open(access_log) as f:
                for line in f:
                    if '"status":"200"' in line:
                        if timeline:
                            m = re.search(r'"msec":"([\d.]+)".*?"upstream":"([^"]*)"', line)
                            if m:
                                # "A, B" when nginx retried: the answer came from the last one
                                t, up = float(m.group(1)), m.group(2).split(", ")[-1]
                                sp = spans.setdefault(up, [t, t, 0])
                                sp[0], sp[1], sp[2] = min(sp[0], t), max(sp[1], t), sp[2] + 1
                        continue
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    t = float(d.get("msec", 0))
                    if not (wrk_stop and t >= wrk_stop - 0.01 and d.get("status") == "499"):
                        first_bad = t if first_bad is None else min(first_bad, t)
                        last_bad = t if last_bad is None else max(last_bad, t)
                    where, op = "before the first operation", None
                    for label, s, e in windows:
                        if s <= t <= e:
                            where, op = "during a " + label.split()[0], label
                            break
                        if t > e:
                            where, op = "after a %s, before the next" % label.split()[0], label
                    if wrk_stop and t >= wrk_stop - 0.01 and d.get("status") == "499":
                        where = "wrk being stopped (client closed its connections; not a lost request)"
                    key = "%s upstream=%s upstream_status=%s %s" % (d.get("status"), d.get("upstream"),
                                                                          d.get("upstream_status"), where)
                    by[key] = by.get(key, 0) + 1
                    if len(bad) < 20:
                        d["when"] = where
                        d["operation"] = op
                        bad.append(d)
            open(access_log, "w").close()  # nginx appends (O_APPEND): truncating is safe
        except OSError:
            pass
        errors, counts, reloads = [], {}, 0
        try:
            with open(self.error_log) as f:
                f.seek(self.error_log_offset)
                text = f.read()
                self.error_log_offset = f.tell()
        except OSError:
            text = ""
        for line in text.splitlines():
            m = re.match(r"(\S+ \S+) \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)", line)
            if not m:
                continue
            level = m.group(2)
            counts[level] = counts.get(level, 0) + 1
            if m.group(3) == "reconfiguring":  # the master's own line, once per reload
                reloads += 1
            if level in ("warn", "error", "crit", "alert", "emerg"):
                msg = re.sub(r", client: .*?(, upstream: \"[^\"]*\")?, host: .*$", r"\1", m.group(3))
                msg = re.sub(r"/\d{6,}\b", "/N", msg)  # numbered temp files
                key = "[%s] %s" % (level, msg)
                errors.append(line)
                counts[key] = counts.get(key, 0) + 1
        out = {"nginx_reloads": reloads, "non_2xx_by": by, "non_2xx_sample": bad,
               "error_log_counts": counts, "error_log_lines": errors[:30]}
        if timeline:
            out.update(upstream_spans=spans, first_bad=first_bad, last_bad=last_bad)
        return out

    # ---------------------------------------------------------------- phases

    def record_phase(self, **kw):
        self.phases.append(kw)
        w = kw.get("wrk") or {}
        e = w.get("errors", {})
        log("phase %-9s %-10s %-24s requests=%s non2xx=%s errors c/r/w/t=%s/%s/%s/%s %s" % (
            kw["tool"], kw["mode"], kw["what"], w.get("requests", "-"), w.get("non_2xx", "-"),
            e.get("connect", "-"), e.get("read", "-"), e.get("write", "-"), e.get("timeout", "-"),
            ("long ok/failed=%s/%s" % (kw["long_completed"], kw["long_failed"])) if "long_completed" in kw else ""))

    def one_deploy(self, mode, strategy=None, release=None):
        rel = release or self.next_release()
        args = ["deploy", "--release", rel, "--json"]
        if strategy:
            args += ["--strategy", strategy]
        r = self.cutover(*args, timeout=180)
        rec = {"kind": "canary" if strategy == "canary" else "deploy", "mode": mode, "release": rel,
               "code": r["code"], "wall_ms": r["wall_ms"], "start_unix": r["start_unix"], "end_unix": r["end_unix"],
               "config": dict(self.config_now)}
        d = r["json"]
        rec["stderr"] = r["stderr"][-3000:]
        if r["code"] != 0 or not d:
            log("cutover deploy %s exited %d: %s" % (rel, r["code"], r["stderr"].strip().splitlines()[-1:]))
        if d:
            steps = {}
            for st in d.get("steps", []):
                steps[st["name"]] = steps.get(st["name"], 0) + st["ms"]
            rec["steps"] = [[st["name"], st["ms"]] for st in d.get("steps", [])]
            rec["switch_ms"] = d.get("switch_ms")
            rec["total_ms"] = d.get("total_ms")
            rec["drained"] = d.get("drained")
            if d.get("switch_ms") is not None:
                rec["in_cutover_ms"] = d["switch_ms"] - sum(steps.get(k, 0) for k in ("validate", "reload", "drain"))
            rec["healthy_unix_ms"] = d.get("healthy_unix_ms")
            try:
                inst = d["live"]["instances"][0]
                with open(inst["log"]) as f:
                    ms = [int(x) for x in re.findall(r"listening on \S+ \(pid \d+\) at unix_ms=(\d+)", f.read())]
                if ms and d.get("healthy_unix_ms"):
                    rec["listening_unix_ms"] = ms[-1]
                    rec["notice_ms"] = d["healthy_unix_ms"] - ms[-1]
            except (KeyError, IndexError, TypeError, OSError):
                pass
            if d.get("healthy_unix_ms"):
                rec["flip_unix"] = (d["healthy_unix_ms"] + sum(steps.get(k, 0) for k in ("write", "validate",
                                                                                           "reload"))) / 1000.0
        self.deploys.append(rec)
        return rec, r

    def deploy_phase(self, mode, tool, secs_each, reserve, verb, what, deploy_one, n=None, port=None,
                     access_log=None, setting=None):
        """N deploys by `deploy_one(mode)` under one wrk run, recorded as one phase of `tool`."""
        n = n or self.a.deploys
        w = self.start_wrk(mode, n * secs_each + 20, "%s-deploy-%s" % (tool, mode), port=port)
        recs = []
        for i in range(n):
            if self.time_left() < reserve:
                self.notes.append("time budget: %s %s deploys stopped after %d" % (tool, mode, i))
                break
            recs.append(deploy_one(mode))
            time.sleep(self.a.gap)
        res, early, cmd = self.stop_wrk(w)
        ev = self.collect_logs([("%s %s" % (verb, r["release"]), r["start_unix"], r["end_unix"]) for r in recs],
                               self.wrk_stop_unix, access_log=access_log)
        self.record_phase(tool=tool, mode=mode, what="%d %s" % (len(recs), what), ops=len(recs),
                          ok_ops=sum(1 for r in recs if r["code"] == 0), wrk=res, wrk_cmd=cmd,
                          wrk_ended_early=early, evidence=ev, setting=setting,
                          wall_ms=[r["wall_ms"] for r in recs if r["code"] == 0],
                          releases=[r["release"] for r in recs])

    def cutover_deploys(self, mode, keep_previous=False, verify="5s", n=None):
        """N blue/green deploys under load with this keep_previous and verify; the config goes back to the
        defaults afterwards."""
        self.write_config(keep_previous=keep_previous, verify=verify)
        what = "blue/green deploys" + ("" if (keep_previous, verify) == (False, "5s") else
                                       ", keep_previous %s, verify %s" % (str(keep_previous).lower(), verify))
        self.deploy_phase(mode, "cutover", 15, 60, "deploy", what, lambda m: self.one_deploy(m)[0], n=n,
                          setting={"keep_previous": keep_previous, "verify": verify})
        self.write_config(keep_previous=False)

    def floor(self, mode, tool="nginx", port=None, access_log=None, n=None):
        """N plain reloads under load through one server block: what nginx itself costs a client."""
        n = n or self.a.deploys
        w = self.start_wrk(mode, n * 2 + 20, "%s-floor-%s" % (tool, mode), port=port)
        windows = []
        for i in range(n):
            s = time.time()
            subprocess.run(self.nginx_cmd("-s", "reload"), capture_output=True)
            time.sleep(0.3)
            windows.append(("reload %d" % (i + 1), s, time.time()))
            time.sleep(self.a.gap)
        res, early, cmd = self.stop_wrk(w)
        ev = self.collect_logs(windows, self.wrk_stop_unix, access_log=access_log)
        self.record_phase(tool=tool, mode=mode, what="%d plain reloads (floor)" % n, ops=n, ok_ops=n, wrk=res,
                          wrk_cmd=cmd, wrk_ended_early=early, evidence=ev)

    def rollbacks(self, mode):
        self.write_config(keep_previous=True)
        # Not measured: one deploy without load so that the previous release is left running for the flips.
        rec, _ = self.one_deploy(mode + "-prep")
        rec["kind"] = "prep"
        self.collect_logs([])
        w = self.start_wrk(mode, self.a.rollbacks * 10 + self.a.status_runs * 3 + 20, "cutover-rollback-" + mode)
        windows, recs = [], []
        for i in range(self.a.rollbacks):
            r = self.cutover("rollback", "--json", timeout=120)
            rec = {"kind": "rollback", "mode": mode, "code": r["code"], "wall_ms": r["wall_ms"],
                   "start_unix": r["start_unix"], "end_unix": r["end_unix"]}
            if r["json"]:
                rec["steps"] = [[st["name"], st["ms"]] for st in r["json"].get("steps", [])]
                rec["release"] = r["json"].get("release")
                rec["switch_ms"] = r["json"].get("switch_ms")
            if r["code"] != 0:
                rec["stderr"] = r["stderr"][-3000:]
                log("cutover rollback exited %d: %s" % (r["code"], r["stderr"].strip().splitlines()[-1:]))
            self.deploys.append(rec)
            recs.append(rec)
            windows.append(("rollback %d" % (i + 1), r["start_unix"], r["end_unix"]))
            time.sleep(self.a.gap)
        for _ in range(self.a.status_runs):
            r = self.cutover("status", "--json", timeout=60)
            if r["code"] == 0:
                self.status_ms.append({"mode": mode, "wall_ms": r["wall_ms"]})
            else:
                self.notes.append("cutover status exited %d: %s" % (r["code"], r["stderr"][-500:]))
        res, early, cmd = self.stop_wrk(w)
        ev = self.collect_logs(windows, self.wrk_stop_unix)
        self.record_phase(tool="cutover", mode=mode,
                          what="%d rollbacks (+%d status)" % (len(recs), self.a.status_runs), ops=len(recs),
                          ok_ops=sum(1 for r in recs if r["code"] == 0), wrk=res, wrk_cmd=cmd,
                          wrk_ended_early=early, evidence=ev)
        self.write_config(keep_previous=False)

    def canaries(self, mode):
        if self.a.skip_canary:
            self.canary_state = "skipped (--skip-canary)"
            return
        if self.canary_state.startswith("not available"):
            return
        self.write_config(keep_previous=True)
        w = self.start_wrk(mode, self.a.canaries * 30 + 20, "cutover-canary-" + mode)
        recs = []
        for i in range(self.a.canaries):
            if self.time_left() < 60:
                self.notes.append("time budget: canaries (%s) stopped after %d" % (mode, i))
                break
            rec, r = self.one_deploy(mode, strategy="canary")
            recs.append(rec)
            if r["code"] != 0:
                last = (r["stderr"].strip().splitlines() or [""])[-1]
                self.canary_failures.append("%s %s exit %d: %s" % (mode, rec["release"], r["code"], last))
                if r["code"] == 2 or "not available" in r["stderr"]:
                    self.canary_state = "not available: cutover deploy --strategy canary exited %d: %s" % (
                        r["code"], last)
                    break
            time.sleep(self.a.gap)
        res, early, cmd = self.stop_wrk(w)
        ev = self.collect_logs([("canary " + r["release"], r["start_unix"], r["end_unix"]) for r in recs],
                               self.wrk_stop_unix)
        ok = sum(1 for r in recs if r["code"] == 0)
        self.canary_ok += ok
        self.canary_runs += len(recs)
        if not self.canary_state.startswith("not available"):
            self.canary_state = "%d of %d canaries (steps 10/50/100, interval 1s) exited 0%s" % (
                self.canary_ok, self.canary_runs,
                ("; failures: " + " | ".join(self.canary_failures)) if self.canary_failures else "")
        self.record_phase(tool="cutover", mode=mode, what="%d canaries 10/50/100 %%" % len(recs), ops=len(recs),
                          ok_ops=ok, wrk=res, wrk_cmd=cmd, wrk_ended_early=early, evidence=ev)
        self.write_config(keep_previous=False)

    def fleet_deploy(self, mode, strategy):
        rel = self.next_release("f")
        r = self.cutover("deploy", "--release", rel, "--strategy", strategy, "--json", timeout=300,
                         config=self.fleet_config)
        rec = {"kind": strategy, "mode": mode, "release": rel, "code": r["code"], "wall_ms": r["wall_ms"],
               "start_unix": r["start_unix"], "end_unix": r["end_unix"], "stderr": r["stderr"][-3000:]}
        d = r["json"]
        if r["code"] != 0 or not d:
            log("cutover deploy (fleet, %s) %s exited %d: %s" % (strategy, rel, r["code"],
                                                                  r["stderr"].strip().splitlines()[-1:]))
        if d:
            rec["steps"] = [[st["name"], st["ms"]] for st in d.get("steps", [])]
            rec["total_ms"] = d.get("total_ms")
            rec["downtime_ms"] = d.get("downtime_ms")
        self.deploys.append(rec)
        return rec

    def fleet_phase(self, mode, strategy, surge, what):
        """F deploys of the 4-instance fleet app under their own wrk run."""
        if self.a.skip_fleet:
            return
        self.write_fleet_config(strategy, surge)
        n = self.a.fleet_deploys
        w = self.start_wrk(mode, n * 40 + 20, "fleet-%s-%s-%s" % (strategy, "surge" if surge else "nosurge", mode),
                           port=self.fleet_port)
        recs = []
        for i in range(n):
            if self.time_left() < 90:
                self.notes.append("time budget: fleet %s (%s) stopped after %d" % (what, mode, i))
                break
            recs.append(self.fleet_deploy(mode, strategy))
            time.sleep(self.a.gap)
        res, early, cmd = self.stop_wrk(w)
        ev = self.collect_logs([("%s %s" % (strategy, r["release"]), r["start_unix"], r["end_unix"]) for r in recs],
                               self.wrk_stop_unix, access_log=self.fleet_log)
        self.record_phase(tool="cutover", mode=mode, what="%d %s" % (len(recs), what), ops=len(recs),
                          ok_ops=sum(1 for r in recs if r["code"] == 0), wrk=res, wrk_cmd=cmd,
                          wrk_ended_early=early, evidence=ev, strategy=strategy,
                          wall_ms=[r["wall_ms"] for r in recs if r["code"] == 0],
                          downtime_ms=[r.get("downtime_ms") for r in recs if r.get("downtime_ms") is not None])

    def fleet(self, mode):
        if self.a.skip_fleet:
            return
        if not getattr(self, "fleet_live", False):
            self.write_fleet_config("rolling", True)
            r = self.cutover("deploy", "--release", self.next_release("f"), "--json", timeout=120,
                             config=self.fleet_config)
            if r["code"] != 0:
                self.notes.append("fleet: the first deploy failed: " + r["stderr"][-500:])
                return
            self.fleet_live = True
            self.collect_logs([], access_log=self.fleet_log)
        self.fleet_phase(mode, "rolling", True, "rolling deploys, 4 instances, surge, batch 1")
        self.fleet_phase(mode, "rolling", False, "rolling deploys, 4 instances, no surge, batch 1")
        self.fleet_phase(mode, "all-at-once", False, "all-at-once deploys, 4 instances")
        # Its own floor: plain reloads under the same wrk run through the 4-instance app's server block, so its
        # rolling rows' read errors per reload have a floor to be compared with.
        self.floor(mode, tool="fleet-floor", port=self.fleet_port, access_log=self.fleet_log)

    def long_client(self):
        a = self.a
        cmd = [sys.executable, LONGREQ, "--port", str(self.nginx_port), "--slow", str(a.long_slow),
               "--slow-ms", "3000", "--uploads", str(a.long_uploads), "--upload-secs", "2.5"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.children[p.pid] = ("longreq", False)
        return p

    def long_result(self, p, flip_unix):
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        self.children.pop(p.pid, None)
        try:
            d = json.loads(out)
        except ValueError:
            d = {"completed": 0, "failed": a_count(self.a), "requests": [], "error": err[-1000:]}
        inflight = sum(1 for r in d.get("requests", []) if flip_unix and r["start"] < flip_unix < r["end"])
        d["in_flight_at_flip"] = inflight
        return d

    def long_phase(self, tool):
        n = self.a.long_deploys
        recs, windows = [], []
        completed = failed = inflight = total = 0
        for i in range(n):
            if self.time_left() < 45:
                self.notes.append("time budget: %s long-request deploys stopped after %d" % (tool, i))
                break
            p = self.long_client()
            time.sleep(0.3)
            if tool == "cutover":
                rec, _ = self.one_deploy("long")
                flip = rec.get("flip_unix")
                label = "deploy " + rec["release"]
            else:
                rec = self.kill_at_once_switch("long")
                flip = rec["end_unix"]
                label = "switch " + rec["release"]
            d = self.long_result(p, flip)
            rec["long"] = {k: d[k] for k in ("completed", "failed", "in_flight_at_flip")}
            rec["long"]["failures"] = [r for r in d.get("requests", []) if not r.get("ok")]
            completed += d["completed"]
            failed += d["failed"]
            inflight += d["in_flight_at_flip"]
            total += len(d.get("requests", []))
            recs.append(rec)
            windows.append((label, rec["start_unix"], time.time()))
            time.sleep(self.a.gap)
        ev = self.collect_logs(windows)
        self.record_phase(tool=tool, mode="long", what="%d deploys, %d long req each" % (
            len(recs), self.a.long_slow + self.a.long_uploads), ops=len(recs),
            ok_ops=sum(1 for r in recs if r["code"] == 0), wrk=None, long_completed=completed,
            long_failed=failed, long_in_flight_at_flip=inflight, long_total=total, evidence=ev)

    # ---------------------------------------------------------------- the published pattern (main baseline)

    def published_deploys(self, mode):
        pub = self.published
        self.deploy_phase(mode, "published", pub.sleep_secs(15) + 10, 45, "deploy", "deploys of the published "
                          "pattern", lambda m: pub.deploy(m), n=self.a.baseline_deploys, port=self.pub_port,
                          access_log=pub.access_log)

    def published_setup(self):
        """Its first deploy, without load (nothing to stop; nginx answers 502 until it is done)."""
        r = self.published.deploy("setup")
        r["kind"] = "setup"
        if r["code"] != 0:
            raise SystemExit("the published pattern's first deploy failed:\n" + r["output"])
        self.collect_logs([], access_log=self.published.access_log)

    # ---------------------------------------------------------------- the kill-at-once script (second baseline)

    def kill_at_once_env(self):
        env = dict(os.environ)
        env.update({
            "BASE_DIR": os.path.join(self.dir, "baseline"),
            "PORTS": "%d %d" % tuple(self.base_ports),
            "FIXTURE": FIXTURE,
            "UPSTREAM_FILE": self.upstream,
            "NGINX_BIN": self.nginx_bin,
            "NGINX_PREFIX": self.prefix + "/",
            "NGINX_CONF": "conf/nginx.conf",
            "SLEEP_SECS": str(self.a.kill_at_once_sleep),
        })
        return env

    def kill_at_once_switch(self, mode):
        rel = self.next_release("k")
        t = time.monotonic()
        s = time.time()
        p = subprocess.Popen(["bash", KILL_AT_ONCE, rel], env=self.kill_at_once_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.children[p.pid] = ("kill-at-once.sh", True)
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            signal_pid(p.pid, signal.SIGKILL, group=True)
            out, _ = p.communicate()
        self.children.pop(p.pid, None)
        rec = {"kind": "kill-at-once", "mode": mode, "release": rel, "code": p.returncode,
               "wall_ms": round((time.monotonic() - t) * 1000.0, 1), "start_unix": s, "end_unix": time.time()}
        if p.returncode != 0:
            rec["output"] = out[-2000:]
            log("kill-at-once.sh %s exited %d: %s" % (rel, p.returncode, out.strip()[-300:]))
        self.baseline_runs.append(rec)
        return rec

    def kill_at_once_takeover(self):
        """kill-at-once.sh takes cutover's server block over (no load), then cutover's apps are stopped."""
        rec = self.kill_at_once_switch("takeover")
        rec["kind"] = "takeover"
        if rec["code"] != 0:
            raise SystemExit("kill-at-once.sh could not take over: %s" % rec.get("output"))
        time.sleep(1.0)  # no load now; let nginx's old workers go before stopping cutover's release
        for pid in self.state_pids():
            stop_pid(pid, group=True)
        self.collect_logs([])

    def kill_at_once_deploys(self, mode):
        self.deploy_phase(mode, "kill-at-once", self.a.kill_at_once_sleep + 10, 45, "switch",
                          "kill-at-once.sh deploys", self.kill_at_once_switch)

    # ---------------------------------------------------------------- run

    def run(self):
        a = self.a
        log("temp dir %s; nginx port %d; cutover pool %s; published pattern on %d, ports %s; kill-at-once ports %s"
            % (self.dir, self.nginx_port, self.pool, self.pub_port, self.pub_ports, self.base_ports))
        if self.baseline_sleep_scale is not None:
            log("BASELINE_SLEEP=%g: the published pattern's sleeps are shortened to %g/10 of their length "
                "(10 s -> %g s): its deploy times are NOT the real ones" % (
                    self.baseline_sleep_scale, self.baseline_sleep_scale, self.published.sleep_secs(10)))
        self.write_config(keep_previous=False)
        self.start_nginx()
        rec, r = self.one_deploy("setup")
        rec["kind"] = "setup"
        if rec["code"] != 0:
            raise SystemExit("the first deploy failed:\n" + r["stderr"])
        self.published_setup()
        # Sanity: the long-request client works through nginx when nothing is deployed meanwhile.
        p = self.long_client()
        d = self.long_result(p, None)
        self.sanity = {"completed": d["completed"], "failed": d["failed"],
                       "failures": [x for x in d.get("requests", []) if not x.get("ok")]}
        if d["failed"]:
            self.notes.append("sanity: long requests failed WITHOUT any deploy: %s" % self.sanity["failures"])
        self.collect_logs([])
        for mode, _ in MODES:
            self.cutover_deploys(mode)
            self.cutover_deploys(mode, keep_previous=True)
            self.floor(mode)
            self.rollbacks(mode)
            self.canaries(mode)
            self.fleet(mode)
            self.published_deploys(mode)
            self.floor(mode, tool="published-floor", port=self.pub_port, access_log=self.published.access_log,
                       n=a.baseline_deploys)
        self.cutover_deploys("close", verify="0s")
        if not a.skip_cases:
            self.cases.run()
        self.long_phase("cutover")
        self.kill_at_once_takeover()
        for mode, _ in MODES:
            self.kill_at_once_deploys(mode)
        self.long_phase("kill-at-once")

    def cleanup(self):
        self.sampling.set()
        self.load["after"] = loadavg()
        for pid, (desc, group) in list(self.children.items()):
            signal_pid(pid, signal.SIGKILL, group)
        ours = set(self.pool) | set(self.fleet_pool) | set(self.base_ports) | set(self.pub_ports)
        # cutover and kill-at-once.sh start each app in a session of its own (stop its process group); the
        # published pattern's `nohup ... &` does not (stop the process)
        for pid in dict.fromkeys(self.state_pids() + self.state_pids("fleet") + self.baseline_pids()):
            stop_pid(pid, group=True, grace=3)
        for p in fixture_processes(FIXTURE, ours):
            stop_pid(p["pid"], grace=3)
        pid = getattr(self, "nginx_pid", None)
        if pid and pid_alive(pid):
            signal_pid(pid, signal.SIGQUIT)
            end = time.monotonic() + 5
            while time.monotonic() < end and pid_alive(pid):
                time.sleep(0.05)
            if pid_alive(pid):
                signal_pid(pid, signal.SIGTERM)
                time.sleep(1)
        if os.environ.get("KEEP") == "1":
            log("KEEP=1: kept %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def a_count(a):
    return a.long_slow + a.long_uploads


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cutover", default=os.path.join(ROOT, "target", "release", "cutover"))
    p.add_argument("--skip-canary", action="store_true", help="skip the canary phase")
    p.add_argument("--deploys", type=int, default=10,
                   help="cutover blue/green deploys per client mode and setting (and floor reloads)")
    p.add_argument("--baseline-deploys", type=int, default=10,
                   help="deploys of the published pattern per client mode (and reloads of its floor)")
    p.add_argument("--skip-cases", action="store_true", help="skip the failure cases")
    p.add_argument("--rollbacks", type=int, default=5)
    p.add_argument("--canaries", type=int, default=5)
    p.add_argument("--status-runs", type=int, default=10, help="cutover status runs per client mode")
    p.add_argument("--long-deploys", type=int, default=5)
    p.add_argument("--fleet-deploys", type=int, default=5,
                   help="rolling (surge, no surge) and all-at-once deploys of the 4-instance app, per client mode")
    p.add_argument("--fleet-verify", default="1s", help="deploy.verify of the 4-instance app (per rolling batch)")
    p.add_argument("--skip-fleet", action="store_true", help="skip the rolling and all-at-once phases")
    p.add_argument("--long-slow", type=int, default=3, help="GET /slow?ms=3000 per long-mode deploy")
    p.add_argument("--long-uploads", type=int, default=2, help="slow uploads per long-mode deploy")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--connections", type=int, default=16, help="wrk -c")
    p.add_argument("--wrk-timeout", default="5s", help="wrk --timeout")
    p.add_argument("--gap", type=float, default=0.5, help="seconds between two deploys")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the first deploy of a phase")
    p.add_argument("--cooldown", type=float, default=1.0, help="seconds of load after the last one")
    p.add_argument("--kill-at-once-sleep", type=float, default=2,
                   help="kill-at-once.sh's fixed sleep before polling")
    p.add_argument("--max-secs", type=float, default=3600, help="time budget; phases stop early past it")
    p.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                   help="first wait (30 s steps) until the 1-minute load average is at most LOAD")
    p.add_argument("--wait-max", type=float, default=40, metavar="MINUTES",
                   help="with --wait-load: wait at most this long, then run anyway (and say so)")
    p.add_argument("--build-secs", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=RESULTS, help="directory for latest.md and latest.json")
    return p


def main():
    a = parser().parse_args()
    if not os.path.exists(a.cutover):
        raise SystemExit("no cutover binary at %s (cargo build --release --locked)" % a.cutover)

    quiet = wait_quiet(a.wait_load, a.wait_max) if a.wait_load is not None else None
    b = Bench(a)
    b.quiet = quiet

    def on_signal(sig, _frame):
        raise KeyboardInterrupt("signal %d" % sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    failed = None
    try:
        b.run()
    except (KeyboardInterrupt, SystemExit, Exception) as e:  # still report what was measured
        failed = "%s: %s" % (type(e).__name__, e)
        log("stopped: " + failed)
        b.notes.append("run stopped early: " + failed)
    finally:
        b.cleanup()
    elapsed = time.monotonic() - b.t0
    md, timings = report.render(b, elapsed)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write(md)
    doc = {
        "machine": b.machine, "started_at": b.started_at, "elapsed_s": round(elapsed, 1),
        "build_s": a.build_secs, "settings": {k: v for k, v in vars(a).items() if k not in ("out",)},
        "nginx_keepalive_min_timeout": getattr(b, "keepalive_min_timeout", None),
        "canary": b.canary_state, "sanity_long_requests": getattr(b, "sanity", None),
        "timings_ms": timings, "phases": b.phases, "cutover_operations": b.deploys,
        "baseline_operations": b.baseline_runs, "status_runs": b.status_ms, "notes": b.notes,
        "stopped_early": failed, "loadavg": b.load, "wait_quiet": quiet,
        "published_pattern": {"sleep_scale": b.baseline_sleep_scale, "ports": b.pub_ports,
                              "source": "examples/bench/baseline/published/SOURCE.md"},
        "cases": b.cases.rows,
    }
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    sys.stdout.write("\n" + md)
    sys.stdout.write("\nwritten: %s, %s (%.0f s)\n" % (os.path.join(a.out, "latest.md"),
                                                      os.path.join(a.out, "latest.json"), elapsed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
