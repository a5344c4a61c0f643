"""The benchmark's main baseline: the published blue/green pattern in baseline/published/ (see SOURCE.md there).

It runs behind its own server block of the bench nginx, as the pattern sets nginx up: the block includes
`service-url.inc` (`set $service_url http://127.0.0.1:PORT;`) and proxies to `$service_url`. Its two app ports
are its own. `deploy()` runs `baseline/published/deploy.sh RELEASE`, which plays the CodeDeploy agent (stop.sh,
start.sh, health.sh, each under the appspec's 60 s timeout), and records what ran on the two ports before and
after.

Also here: what runs on a set of ports (fixture processes found in /proc) and what nginx answers, which the
failure cases use for both tools.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(HERE, "baseline", "published", "deploy.sh")
# The pattern's sleeps: stop.sh 5 s after a kill, health.sh 10 s before the first check and between checks.
STOP_SLEEP, HEALTH_SLEEP = 5.0, 10.0


def fixture_processes(fixture, ports):
    """The fixture app processes listening (or about to) on one of `ports`, from /proc: [{pid, port, release}].
    Only processes whose command line runs `fixture` with `--port P` for one of these ports: ours."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open("/proc/%s/stat" % name) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        if fixture not in argv:
            continue
        port = release = None
        for i, a in enumerate(argv[:-1]):
            if a == "--port":
                port = argv[i + 1]
            elif a == "--release":
                release = argv[i + 1]
        if port and port.isdigit() and int(port) in ports:
            out.append({"pid": int(name), "port": int(port), "release": release})
    return sorted(out, key=lambda p: (p["port"], p["pid"]))


def describe_processes(procs):
    return ", ".join("%s on %d" % (p["release"], p["port"]) for p in procs) or "nothing"


def probe(port, n=5):
    """n GETs through nginx on `port`: {"200 v3": 5} or {"502": 5}."""
    seen = {}
    for _ in range(n):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=3) as r:
                body = r.read().decode(errors="replace")
                try:
                    key = "%d %s" % (r.status, json.loads(body).get("release"))
                except ValueError:
                    key = str(r.status)
        except urllib.error.HTTPError as e:
            key = str(e.code)
        except (OSError, urllib.error.URLError) as e:
            key = "error " + type(e).__name__
        seen[key] = seen.get(key, 0) + 1
        time.sleep(0.05)
    return seen


def describe_probe(seen):
    return ", ".join("%s x%d" % (k, v) for k, v in sorted(seen.items()))


class Published:
    def __init__(self, bench):
        self.b = bench
        self.ports = bench.pub_ports
        self.dir = os.path.join(bench.dir, "published")
        os.makedirs(self.dir)
        self.service_url_inc = os.path.join(bench.prefix, "conf", "service-url.inc")
        self.access_log = os.path.join(bench.prefix, "logs", "published.log")
        self.scale = bench.baseline_sleep_scale  # None: the pattern's real sleeps
        self.deployed = []  # releases whose deploy.sh exited 0, in order

    def write_initial_service_url(self):
        """What the pattern's setup leaves before its first deploy: service-url.inc pointing at the app that ran
        before (the guides' 8080, neither profile's port; nothing runs there here, so nginx answers 502 and the
        first deploy picks real1). Pointing it at real1's port instead breaks the first deploy: once start.sh has
        started the release on real1, health.sh asks nginx again, hears real1, and checks real2's empty port."""
        with open(self.service_url_inc, "w") as f:
            f.write("set $service_url http://127.0.0.1:%d;\n" % self.b.pub_initial_port)

    def sleep_secs(self, secs):
        """What one of the pattern's sleeps lasts in this run."""
        return secs if self.scale is None else secs * self.scale / 10.0

    def env(self, flags=""):
        b = self.b
        env = dict(os.environ)
        env.pop("BASELINE_SLEEP", None)
        env.update({
            "NGINX_URL": "http://127.0.0.1:%d" % b.pub_port,
            "PORT1": str(self.ports[0]),
            "PORT2": str(self.ports[1]),
            "FIXTURE": b.fixture,
            "FIXTURE_FLAGS": flags,
            "APP_LOG_DIR": self.dir,
            "SERVICE_URL_INC": self.service_url_inc,
            "NGINX_BIN": b.nginx_bin,
            "NGINX_PREFIX": b.prefix + "/",
            "NGINX_CONF": "conf/nginx.conf",
        })
        if self.scale is not None:
            env["BASELINE_SLEEP"] = "%g" % self.scale
        return env

    def running(self):
        return fixture_processes(self.b.fixture, self.ports)

    def start(self, release, flags=""):
        """Start deploy.sh RELEASE in the background (its own session); finish() waits for it."""
        before = self.running()
        t = time.monotonic()
        s = time.time()
        out = open(os.path.join(self.dir, "deploy-%s.out" % release), "w+")
        p = subprocess.Popen(["bash", DEPLOY, release], env=self.env(flags), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.b.children[p.pid] = ("published deploy.sh", True)
        return {"proc": p, "out": out, "t": t, "start_unix": s, "release": release, "before": before,
                "flags": flags}

    def finish(self, h, mode, timeout=300):
        p = h["proc"]
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.b.kill_group(p.pid)
            p.wait()
        self.b.children.pop(p.pid, None)
        h["out"].seek(0)
        text = h["out"].read()
        h["out"].close()
        rec = {"kind": "published", "mode": mode, "release": h["release"], "code": p.returncode,
               "wall_ms": round((time.monotonic() - h["t"]) * 1000.0, 1), "start_unix": h["start_unix"],
               "end_unix": time.time(), "flags": h["flags"], "running_before": h["before"],
               "running_after": self.running(), "output": text[-3000:]}
        after = {p["pid"] for p in rec["running_after"]}
        rec["killed"] = ["%s (pid %d)" % (p["release"], p["pid"]) for p in rec["running_before"]
                         if p["pid"] not in after]
        if p.returncode == 0:
            self.deployed.append(h["release"])
        else:
            self.b.log("published deploy.sh %s exited %d: %s" % (h["release"], p.returncode,
                                                                 text.strip().splitlines()[-1:]))
        self.b.baseline_runs.append(rec)
        return rec

    def deploy(self, mode, release=None, flags=""):
        return self.finish(self.start(release or self.b.next_release("p"), flags), mode)

    def service_url_port(self):
        try:
            with open(self.service_url_inc) as f:
                text = f.read()
            return int(text.strip().rstrip(";").rsplit(":", 1)[1])
        except (OSError, ValueError, IndexError):
            return None

    def host(self):
        """What the host looks like: what runs on the two ports, what nginx answers, what service-url.inc says."""
        procs = self.running()
        seen = probe(self.b.pub_port)
        return {"running": procs, "serving": seen, "service_url_port": self.service_url_port(),
                "text": "serving: %s; running: %s; service-url.inc -> %s" % (
                    describe_probe(seen), describe_processes(procs), self.service_url_port())}

    def healthy(self):
        return all(k.startswith("200 ") for k in probe(self.b.pub_port, 3))
