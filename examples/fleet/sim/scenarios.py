#!/usr/bin/env python3
"""The fleet scenarios (stdlib only); run through examples/fleet/run.sh, which builds the hosts and passes --env.

Each scenario keeps a load client running through the front nginx (the load balancer's stand-in) in two modes at
once, `Connection: close` and keep-alive, counting every answer by status, release and the host that sent it,
and runs examples/fleet/deploy.yml with ansible-playbook against the simulated hosts:

  1  first deploy of v1 on every host (no traffic yet: nothing was serving)
  2  v2 across the fleet: serial 1, 50 %, 100 %, gate `cutover status --check` per host
  3  v3 fails its health check on web2: the rollout stops, web1 is rolled back, web3 never touched
  3b v4 deploys on web2, then turns unhealthy: the gate fails, web2 and web1 are rolled back, web3 never touched
  4  v5 as a canary on web1 (cutover --strategy canary with access-log analysis), blue/green on the rest
  5  v6 with each host deregistered from the front during its deploy, then v7 without, side by side (the full
     run repeats the pair three times)

It checks what each scenario must show, prints one table, and writes the result as JSON (--json PATH) and,
with --results DIR, DIR/latest.json and DIR/latest.md. Exit 0 when every check held, 1 otherwise.
"""

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

STOPPING = threading.Event()


def log(msg):
    sys.stderr.write("[fleet %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# --- Load client ------------------------------------------------------------------------------------------------


class Tally:
    """Every answer and every failed attempt of one client mode."""

    def __init__(self, mode):
        self.mode = mode
        self.lock = threading.Lock()
        self.answers = []  # (t, status, release, upstream)
        self.errors = {"connect": 0, "read": 0, "timeout": 0}
        self.error_samples = []

    def answer(self, status, release, upstream):
        with self.lock:
            self.answers.append((time.time(), status, release, upstream))

    def error(self, kind, exc):
        with self.lock:
            self.errors[kind] += 1
            if len(self.error_samples) < 5:
                self.error_samples.append("%s: %r" % (kind, exc))

    @staticmethod
    def retry_sample(status, upstream, hosts_by_ip):
        hops = [hosts_by_ip.get(u.strip().split(":")[0], u.strip()) for u in upstream.split(",")]
        return "%s, answered %d by %s" % (" then ".join(hops), status, hops[-1])

    def summary(self, hosts_by_ip):
        non2xx = [a for a in self.answers if not 200 <= a[1] < 300]
        releases, per_host, retried = {}, {}, []
        for _, status, release, upstream in self.answers:
            if 200 <= status < 300:
                releases[release] = releases.get(release, 0) + 1
                last = upstream.split(",")[-1].strip().split(":")[0]
                name = hosts_by_ip.get(last, last or "?")
                per_host.setdefault(name, {})
                per_host[name][release] = per_host[name].get(release, 0) + 1
            if "," in upstream:
                retried.append(self.retry_sample(status, upstream, hosts_by_ip))
        return {
            "mode": self.mode,
            "requests": len(self.answers) + sum(self.errors.values()),
            "answers": len(self.answers),
            "non_2xx": len(non2xx),
            "non_2xx_samples": ["%d from %s" % (a[1], a[3]) for a in non2xx[:5]],
            "errors": dict(self.errors),
            "error_samples": list(self.error_samples),
            "releases": releases,
            "per_host": per_host,
            "retried_on_another_host": len(retried),
            "retried_samples": retried[:5],
        }


def parse_answer(head, body):
    status = int(head.split(b" ", 2)[1])
    upstream, release = "", ""
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"x-fleet-upstream":
            upstream = v.strip().decode()
        elif k == b"x-release":
            release = v.strip().decode()
    return status, release, upstream


class Load:
    """`threads` clients per mode, together `rate` requests/s per mode, until stopped or a bound is reached."""

    def __init__(self, port, rate, threads, max_requests, max_seconds):
        self.port, self.rate, self.threads = port, rate, threads
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.stop_event = threading.Event()
        self.tallies = {"close": Tally("close"), "keepalive": Tally("keepalive")}
        self.workers = []

    def start(self):
        self.t0 = time.time()
        for mode, tally in self.tallies.items():
            for i in range(self.threads):
                t = threading.Thread(target=self.run, args=(mode, tally, i), daemon=True)
                t.start()
                self.workers.append(t)

    def bounded(self, tally):
        return (
            self.stop_event.is_set()
            or STOPPING.is_set()
            or time.time() - self.t0 > self.max_seconds
            or len(tally.answers) + sum(tally.errors.values()) >= self.max_requests
        )

    def run(self, mode, tally, i):
        gap = self.threads / float(self.rate)
        nxt = time.time() + gap * i / self.threads
        conn = None
        n = 0
        while not self.bounded(tally):
            now = time.time()
            if nxt > now:
                time.sleep(nxt - now)
            nxt = max(nxt + gap, time.time() - gap)
            n += 1
            path = "/fleet/%s/%d/%d" % (mode, i, n)
            if mode == "close":
                self.one_close(tally, path)
            else:
                conn = self.one_keepalive(tally, conn, path)
        if conn is not None:
            conn.close()

    def one_close(self, tally, path):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except socket.timeout as e:
            return tally.error("timeout", e)
        except OSError as e:
            return tally.error("connect", e)
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n" % path).encode())
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if not sep:
                return tally.error("read", "connection closed after %d bytes" % len(buf))
            tally.answer(*parse_answer(head, body))
        except socket.timeout as e:
            tally.error("timeout", e)
        except (OSError, ValueError, IndexError) as e:
            tally.error("read", e)
        finally:
            s.close()

    def one_keepalive(self, tally, conn, path):
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.connect()
        except socket.timeout as e:
            tally.error("timeout", e)
            return None
        except OSError as e:
            tally.error("connect", e)
            return None
        try:
            conn.request("GET", path, headers={"Host": "fleet"})
            r = conn.getresponse()
            r.read()
            tally.answer(r.status, r.getheader("X-Release", ""), r.getheader("X-Fleet-Upstream", ""))
            if r.will_close:
                conn.close()
                return None
            return conn
        except socket.timeout as e:
            tally.error("timeout", e)
        except (OSError, http.client.HTTPException) as e:
            tally.error("read", e)
        conn.close()
        return None

    def stop(self):
        self.stop_event.set()
        for t in self.workers:
            t.join(timeout=15)


# --- The fleet -------------------------------------------------------------------------------------------------


class Fleet:
    def __init__(self, env):
        self.env = env
        self.hosts = env["hosts"]
        self.by_ip = {h["ip"]: h["name"] for h in self.hosts}
        self.tmp = env["tmp"]
        self.proc = None
        cfg = os.path.join(self.tmp, "ansible", "ansible.cfg")
        with open(cfg, "w") as f:
            f.write("# empty: only the environment below configures this run's Ansible\n")
        self.ansible_env = dict(
            os.environ,
            ANSIBLE_CONFIG=cfg,
            ANSIBLE_HOME=os.path.join(self.tmp, "ansible"),
            ANSIBLE_LOCAL_TEMP=os.path.join(self.tmp, "ansible", "tmp"),
            ANSIBLE_REMOTE_TEMP=os.path.join(self.tmp, "ansible", "remote-tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(self.tmp, "ansible", "cp"),
            ANSIBLE_PIPELINING="True",
            ANSIBLE_CALLBACK_PLUGINS=env["callback_plugins"],
            ANSIBLE_CALLBACKS_ENABLED="fleet_record",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
        )

    def host(self, name):
        return next(h for h in self.hosts if h["name"] == name)

    def cutover(self, name, *args):
        """cutover inside the host's namespace, as the operator on that host would run it."""
        h = self.host(name)
        p = subprocess.run(
            ["ip", "netns", "exec", h["ns"], self.env["cutover"], "-c", h["config"]] + list(args),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p.returncode, p.stdout, p.stderr

    def live(self, name):
        rc, out, err = self.cutover(name, "status", "--json")
        if rc != 0:
            return "status exited %d: %s" % (rc, err.strip()[-200:])
        v = json.loads(out)
        return (v.get("live") or {}).get("release")

    def history(self, name):
        rc, out, _ = self.cutover(name, "history", "--json", "-n", "50")
        return json.loads(out) if rc == 0 else None

    def playbook(self, tag, extra, timeout):
        """Run deploy.yml; returns (rc, wall seconds, records from the fleet_record callback)."""
        record = os.path.join(self.tmp, "logs", "%s.records.jsonl" % tag)
        out = os.path.join(self.tmp, "logs", "%s.ansible.log" % tag)
        cmd = [self.env["ansible_playbook"], "-i", self.env["inventory"], self.env["playbook"]]
        for k, v in extra.items():
            cmd += ["-e", "%s=%s" % (k, v)]
        envv = dict(self.ansible_env, FLEET_RECORD=record)
        t0 = time.time()
        with open(out, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=envv, cwd=self.tmp)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=10)
                rc = "timeout after %d s" % timeout
            finally:
                self.proc = None
        wall = time.time() - t0
        records = []
        if os.path.exists(record):
            with open(record) as f:
                records = [json.loads(line) for line in f if line.strip()]
        return rc, wall, records, out

    def front_sample(self, n):
        """n requests through the front, each on its own connection: the releases that answered."""
        seen = {}
        for _ in range(n):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.env["front_port"], timeout=5)
                c.request("GET", "/sample", headers={"Connection": "close"})
                r = c.getresponse()
                r.read()
                key = r.getheader("X-Release", "") if r.status == 200 else "status %d" % r.status
                c.close()
            except (OSError, http.client.HTTPException) as e:
                key = "error %s" % type(e).__name__
            seen[key] = seen.get(key, 0) + 1
        return seen


# --- Reading the playbook's records -----------------------------------------------------------------------------


def task_results(records, prefix, host=None):
    return [
        r for r in records if r.get("event") == "result" and r["task"].startswith(prefix)
        and (host is None or r["host"] == host)
    ]


def host_timings(records, hosts):
    """Per host: wall time from its first deploy-side task to its gate/registration, and cutover's own times."""
    out = {}
    for h in hosts:
        mine = [
            r for r in records
            if r.get("event") == "result" and r["host"] == h and r.get("status") != "skipped"
            and r.get("start") and r["task"].startswith(("Take the host out", "cutover deploy", "Gate", "Put the host back"))
        ]
        if not mine:
            continue
        entry = {"wall_s": round(max(r["end"] for r in mine) - min(r["start"] for r in mine), 2)}
        for r in mine:
            if r["task"].startswith("cutover deploy"):
                entry["deploy_task_s"] = round(r["end"] - r["start"], 2)
                entry["deploy_rc"] = r.get("rc")
                try:
                    j = json.loads(r.get("stdout") or "")
                    entry["cutover_total_ms"] = j.get("total_ms")
                    entry["strategy"] = j.get("strategy")
                except ValueError:
                    pass
                entry["stderr_tail"] = (r.get("stderr") or "").strip().splitlines()[-3:]
            if r["task"].startswith("Take the host out"):
                entry["deregister_s"] = round(r["end"] - r["start"], 2)
            if r["task"].startswith("Put the host back"):
                entry["register_s"] = round(r["end"] - r["start"], 2)
        out[h] = entry
    return out


# --- Scenarios --------------------------------------------------------------------------------------------------


class Scenario:
    def __init__(self, sid, title):
        self.sid, self.title = sid, title
        self.checks = []
        self.load = {}
        self.hosts = {}
        self.playbook = {}
        self.notes = []

    def check(self, name, ok, detail=""):
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        log("  %s %s%s" % ("ok  " if ok else "FAIL", name, (": %s" % detail) if detail else ""))

    @property
    def ok(self):
        return all(c["ok"] for c in self.checks)

    def as_json(self):
        return {
            "id": self.sid,
            "title": self.title,
            "ok": self.ok,
            "checks": self.checks,
            "load": self.load,
            "hosts": self.hosts,
            "playbook": self.playbook,
            "notes": self.notes,
        }


class Runner:
    def __init__(self, env, small):
        self.fleet = Fleet(env)
        self.small = small
        self.names = [h["name"] for h in env["hosts"]]
        # Traffic runs at a fixed rate for the whole rollout, then stops; the cap only bounds a runaway. small: 20
        # requests/s (a few hundred per scenario on a quiet machine; a loaded machine rolls out slower and sends
        # more, never so few that the last host's new release goes unserved); full: 100 requests/s.
        self.rate, self.threads, self.cap = (20, 2, 4000) if small else (100, 4, 30000)
        self.settle = 0.5 if small else 1.0  # seconds of traffic before and after each rollout
        self.scenarios = []

    def deploy(self, sc, tag, extra, with_load=True, timeout=240):
        load = None
        if with_load:
            load = Load(self.fleet.env["front_port"], self.rate, self.threads, self.cap, timeout + 30)
            load.start()
            time.sleep(self.settle)  # traffic flows before the rollout starts
        log("%s: ansible-playbook deploy.yml %s" % (sc.sid, " ".join("-e %s=%s" % kv for kv in extra.items())))
        front_log = os.path.join(self.fleet.env["front_dir"], "logs", "error.log")
        offset = os.path.getsize(front_log) if os.path.exists(front_log) else 0
        rc, wall, records, out = self.fleet.playbook(tag, extra, timeout)
        if load:
            time.sleep(self.settle)  # and after it ends
            load.stop()
            for mode, tally in load.tallies.items():
                sc.load.setdefault(tag, {})[mode] = tally.summary(self.fleet.by_ip)
        # what the front (the load balancer) logged meanwhile: a retry on another host says why here
        with open(front_log, errors="replace") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f if ln.strip()]
        sc.playbook.setdefault(tag, {})["front_error_log"] = {"lines": len(lines), "samples": lines[:5]}
        timings = host_timings(records, self.names)
        sc.playbook.setdefault(tag, {}).update({"rc": rc, "wall_s": round(wall, 2), "extra_vars": extra, "log": out})
        sc.hosts[tag] = timings
        log("%s: playbook exited %s in %.1f s" % (sc.sid, rc, wall))
        return rc, records

    def zero_loss(self, sc, tag, keepalive_errors_expected=False):
        for mode in ("close", "keepalive"):
            s = sc.load[tag][mode]
            sc.check(
                "%s: %s: 0 non-2xx in %d requests" % (tag, mode, s["requests"]),
                s["non_2xx"] == 0,
                "; ".join(s["non_2xx_samples"]),
            )
            errs = sum(s["errors"].values())
            if mode == "close" or not keepalive_errors_expected:
                sc.check("%s: %s: 0 connection errors" % (tag, mode), errs == 0, "; ".join(s["error_samples"]))
            elif errs:
                sc.notes.append(
                    "%s keep-alive: %d read errors: the front's reloads close idle client connections "
                    "(nginx before 1.27.4); %s" % (tag, errs, "; ".join(s["error_samples"][:2]))
                )
            sc.check("%s: %s: traffic flowed (>= 50 answers)" % (tag, mode), s["answers"] >= 50, str(s["answers"]))

    def all_live(self, sc, release):
        live = {n: self.fleet.live(n) for n in self.names}
        sc.check("every host ends on %s (cutover status)" % release, all(v == release for v in live.values()), str(live))
        sample = self.fleet.front_sample(30)
        sc.check("the front answers %s only (30 requests)" % release, sample == {release: 30}, str(sample))
        return live

    def served_by_every_host(self, sc, tag, release):
        per_host = sc.load[tag]["close"]["per_host"]
        got = {n: per_host.get(n, {}).get(release, 0) for n in self.names}
        sc.check("%s: every host served %s under load" % (tag, release), all(got.values()), str(got))

    # 1
    def bootstrap(self):
        sc = Scenario("1", "first deploy of v1 on every host (no traffic yet)")
        rc, _ = self.deploy(sc, "v1", {"release": "v1"}, with_load=False, timeout=120)
        sc.check("playbook exit 0", rc == 0, str(rc))
        self.all_live(sc, "v1")
        return sc

    # 2
    def fleet_deploy(self, sid, release, title, extra=None, dereg=False):
        sc = Scenario(sid, title)
        extra = dict({"release": release}, **(extra or {}))
        rc, records = self.deploy(sc, release, extra)
        sc.check("playbook exit 0", rc == 0, str(rc))
        self.zero_loss(sc, release, keepalive_errors_expected=dereg)
        batches = [r["host"] for r in task_results(records, "cutover deploy")]
        sc.check("one host per batch, in order", batches == self.names, str(batches))
        gates = [r["host"] for r in task_results(records, "Gate") if r["status"] == "ok"]
        sc.check("every host passed the gate (status --check)", gates == self.names, str(gates))
        self.served_by_every_host(sc, release, release)
        self.all_live(sc, release)
        return sc, records

    # 3
    def failing_host(self, sid, old, release, breaks_after_switch=False):
        """web2 fails: at its health check (cutover exit 3, web2 untouched), or after its deploy at the gate
        (the release turns unhealthy once it has the traffic: status --check exits 7, web2 rolled back too)."""
        flags = os.path.join(self.fleet.host("web2")["dir"], "flags")
        if breaks_after_switch:
            title = "%s breaks on web2 after its deploy: the gate fails" % release
            with open(os.path.join(flags, release), "w") as f:
                f.write("--fail-health-when %s\n" % os.path.join(flags, release + ".unhealthy"))
            open(os.path.join(flags, release + ".break-after-switch"), "w").close()
        else:
            title = "%s fails its health check on web2" % release
            with open(os.path.join(flags, release), "w") as f:
                f.write("--fail-health\n")
        sc = Scenario(sid, title)
        rc, records = self.deploy(sc, release, {"release": release})
        sc.check("playbook fails (exit 2)", rc == 2, str(rc))
        self.zero_loss(sc, release)
        dep = {r["host"]: r for r in task_results(records, "cutover deploy")}
        sc.check("web1 deployed %s" % release, dep.get("web1", {}).get("rc") == 0, str(dep.get("web1", {}).get("rc")))
        web2_err = " / ".join((dep.get("web2", {}).get("stderr") or "").strip().splitlines()[-2:])
        gate2 = task_results(records, "Gate", "web2")
        self_rb = [r for r in task_results(records, "Roll back this host", "web2") if r["status"] == "ok"]
        if breaks_after_switch:
            # cutover may catch it itself after the switch (a deploy that verifies the new release exits 3);
            # otherwise the gate must, and the rescue rolls web2 back
            caught = dep.get("web2", {}).get("rc")
            if caught == 0:
                sc.check("web2's gate failed (status --check exit 7)",
                         bool(gate2) and gate2[0].get("rc") == 7, json.dumps([g.get("rc") for g in gate2]))
                sc.check("the rescue rolled web2 itself back", len(self_rb) == 1, str(len(self_rb)))
            else:
                sc.check("web2's deploy caught it after the switch (exit 3)", caught == 3, web2_err)
        else:
            sc.check("web2's deploy exited 3 (unhealthy, traffic untouched)",
                     dep.get("web2", {}).get("rc") == 3, web2_err)
            sc.check("web2 needed no rollback", not self_rb, str(len(self_rb)))
        sc.check("web3 was never deployed", "web3" not in dep, str(sorted(dep)))
        rolled = []
        for r in task_results(records, "Roll back the hosts"):
            for item in r.get("items", []):
                if item.get("rc") == 0:
                    rolled.append(item.get("item"))
        sc.check("the rescue rolled back web1 (the host done before)", rolled == ["web1"], str(rolled))
        hist = self.fleet.history("web1") or []
        last = hist[-1] if hist else {}
        sc.check(
            "web1's history ends with a rollback to %s" % old,
            last.get("kind") == "rollback" and last.get("release") == old and last.get("outcome") == "ok",
            json.dumps({k: last.get(k) for k in ("kind", "release", "from", "outcome")}),
        )
        got = sc.load[release]["close"]["releases"]
        sc.check("%s served requests before the rollback" % release, got.get(release, 0) > 0, str(got))
        self.all_live(sc, old)
        sc.hosts[release]["web3"] = {"wall_s": None, "note": "not touched"}
        for name in (release, release + ".unhealthy", release + ".break-after-switch"):
            if os.path.exists(os.path.join(flags, name)):
                os.unlink(os.path.join(flags, name))
        return sc

    # 4
    def canary(self, release):
        sc, records = self.fleet_deploy("4", release, "%s: canary on web1, then blue/green" % release,
                                        extra={"canary_first": "true"})
        strategies = {r["host"]: (json.loads(r.get("stdout") or "{}")).get("strategy")
                      for r in task_results(records, "cutover deploy")}
        sc.check(
            "web1 deployed as a canary, web2 and web3 blue/green",
            strategies == {"web1": "canary", "web2": "blue-green", "web3": "blue-green"},
            str(strategies),
        )
        web1 = task_results(records, "cutover deploy", "web1")
        try:
            steps = json.loads(web1[0].get("stdout") or "{}").get("steps", []) if web1 else []
        except ValueError:
            steps = []
        holds = [s.get("detail", "") for s in steps if s.get("name") == "hold"]
        sc.notes.append("web1's canary analysis: " + " | ".join(holds))
        sc.check("web1's canary held and analysed its 20 % and 50 % steps", len(holds) == 2, " | ".join(holds))
        # the canary's requests, counted by the load client: web1 answered both releases during its steps
        per = sc.load[release]["close"]["per_host"].get("web1", {})
        sc.check("web1 served both releases during the canary", len(per) >= 2, str(per))
        return sc

    def run(self):
        plan = [
            lambda: self.bootstrap(),
            lambda: self.fleet_deploy("2", "v2", "v2 across the fleet, serial 1 / 50% / 100%")[0],
            lambda: self.failing_host("3", "v2", "v3"),
            lambda: self.failing_host("3b", "v2", "v4", breaks_after_switch=True),
            lambda: self.canary("v5"),
        ]
        # 5: the same rollout with and without deregistration, alternating; the full run repeats the pair so the
        # wall-time difference is not one noisy sample per host
        for n in range(1 if self.small else 3):
            suffix = "" if self.small else ".%d" % (n + 1)
            dereg, plain = "v%d" % (6 + 2 * n), "v%d" % (7 + 2 * n)
            plan.append(lambda s=suffix, r=dereg: self.fleet_deploy(
                "5a" + s, r, "%s with each host deregistered from the front during its deploy" % r,
                extra={"lb_deregister": "true"}, dereg=True)[0])
            plan.append(lambda s=suffix, r=plain: self.fleet_deploy(
                "5b" + s, r, "%s without deregistration (the same rollout)" % r)[0])
        self.expected = len(plan)
        for step in plan:
            if STOPPING.is_set():
                break
            sc = step()
            self.scenarios.append(sc)
            log("scenario %s: %s" % (sc.sid, "held" if sc.ok else "FAILED"))
            if not self.scenarios[0].ok:
                break  # nothing else means anything without a first deploy
        return self.scenarios

    def deregistration_cost(self):
        """Median per-host wall time with and without deregistration, over every 5a/5b host."""
        walls = {"5a": [], "5b": []}
        for sc in self.scenarios:
            kind = sc.sid[:2]
            if kind in walls:
                for hosts in sc.hosts.values():
                    walls[kind] += [h["wall_s"] for h in hosts.values() if h.get("wall_s") is not None]
        if not walls["5a"] or not walls["5b"]:
            return None
        a, b = statistics.median(walls["5a"]), statistics.median(walls["5b"])
        return {"with_s": a, "without_s": b, "cost_s": round(a - b, 2), "hosts_with": len(walls["5a"]),
                "hosts_without": len(walls["5b"])}


# --- Report -----------------------------------------------------------------------------------------------------


def fmt_walls(hosts):
    parts = []
    for n in sorted(hosts):
        w = hosts[n].get("wall_s")
        parts.append("%s %s" % (n, "-" if w is None else "%.1f" % w))
    return ", ".join(parts)


def table(scenarios):
    rows = [
        "| # | scenario | client | requests | non-2xx | conn. errors (connect/read/timeout) | per-host wall s | fleet wall s | held |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in scenarios:
        for tag in sc.playbook:
            modes = sc.load.get(tag) or {"-": None}
            first = True
            for mode, s in modes.items():
                if s is None:
                    req = non = err = ""
                    client = "none"
                else:
                    req, non = str(s["requests"]), str(s["non_2xx"])
                    err = "%d/%d/%d" % (s["errors"]["connect"], s["errors"]["read"], s["errors"]["timeout"])
                    client = "Connection: close" if mode == "close" else "keep-alive"
                rows.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    sc.sid if first else "",
                    sc.title if first else "",
                    client, req, non, err,
                    fmt_walls(sc.hosts.get(tag, {})) if first else "",
                    "%.1f" % sc.playbook[tag]["wall_s"] if first else "",
                    ("yes" if sc.ok else "**NO**") if first else "",
                ))
                first = False
    return "\n".join(rows)


def versions(env):
    def out(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    return {
        "nginx": out(["nginx", "-v"]),
        "ansible": out([env["ansible_playbook"], "--version"]),
        "openssh": out(["ssh", "-V"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cutover": out([env["cutover"], "--version"]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", required=True, help="fleet.json written by run.sh")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--results", help="also write latest.json and latest.md in this dir")
    args = ap.parse_args()
    with open(args.env) as f:
        env = json.load(f)

    runner = Runner(env, env["small"])

    def on_term(signum, _frame):
        STOPPING.set()
        p = runner.fleet.proc
        if p is not None and p.poll() is None:
            p.terminate()  # our ansible-playbook, by pid
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    t0 = time.time()
    load_before = os.getloadavg()
    scenarios = runner.run()
    load_after = os.getloadavg()
    expected = runner.expected
    ok = len(scenarios) == expected and all(sc.ok for sc in scenarios)
    cost = runner.deregistration_cost()
    result = {
        "ok": ok,
        "small": env["small"],
        "run": {"id": env["id"], "bridge": env["bridge"], "net": env["net"], "tmp": env["tmp"],
                "namespaces": [h["ns"] for h in env["hosts"]]},
        "date": time.strftime("%Y-%m-%d"),
        "duration_s": round(time.time() - t0, 1),
        "load": {"rate_per_mode": runner.rate, "threads_per_mode": runner.threads, "cap_per_mode": runner.cap},
        "versions": versions(env),
        # the machine's 1-minute load average before and after: the wall times mean little without it
        "loadavg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "scenarios": [sc.as_json() for sc in scenarios],
        "deregistration": cost,
    }
    tbl = table(scenarios)
    notes = [n for sc in scenarios for n in sc.notes]
    if cost:
        notes.append(
            "deregistration cost: median per-host wall %.2f s with it, %.2f s without (%+.2f s per host; %d and %d "
            "host deploys)" % (cost["with_s"], cost["without_s"], cost["cost_s"], cost["hosts_with"],
                               cost["hosts_without"]))
    retried = [(sc.sid, m, x) for sc in scenarios for t in sc.load.values() for m, s in t.items()
               for x in s["retried_samples"]]
    notes.append("requests the front retried on another host: %d in all scenarios%s" % (
        sum(s["retried_on_another_host"] for sc in scenarios for t in sc.load.values() for s in t.values()),
        "".join("; %s %s: %s" % r for r in retried[:6])))
    front = [(sc.sid, ln) for sc in scenarios for p in sc.playbook.values()
             for ln in p.get("front_error_log", {}).get("samples", [])]
    if front:
        notes.append("the front's error log: " + " | ".join("%s: %s" % f for f in front[:4]))
    print()
    print(tbl)
    print()
    for n in notes:
        print("- " + n)
    failed = [(sc.sid, c) for sc in scenarios for c in sc.checks if not c["ok"]]
    for sid, c in failed:
        print("FAILED %s: %s %s" % (sid, c["name"], c["detail"]))
    if len(scenarios) != expected:
        print("FAILED: %d of %d scenarios ran" % (len(scenarios), expected))
    print("fleet: %s in %.0f s" % ("every scenario held" if ok else "FAILED", result["duration_s"]))
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        with open(os.path.join(args.results, "latest.json"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.results, "latest.md"), "w") as f:
            v = result["versions"]
            f.write("# Fleet run, %s\n\n%s; %s; %s; %s CPUs; kernel %s; load average %.1f before, %.1f after\n\n%s\n\n" % (
                result["date"], v["cutover"], v["nginx"], v["ansible"], v["cpus"], v["kernel"],
                load_before[0], load_after[0], tbl))
            for n in notes:
                f.write("- %s\n" % n)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
