"""Failure cases, cutover and the published pattern side by side, and what cutover's after-the-switch safety buys.

Each case runs once per tool under its own wrk run (Connection: close) through that tool's server block: wrk
starts, the operation runs, wrk keeps going for OBSERVE seconds after the operation returned (so a release that
dies after its deploy "succeeded" is counted for as long as nobody acts), then what the host looks like is
recorded: what nginx answers, what runs on the tool's ports, and cutover's `status` or the pattern's
`service-url.inc`. After that, outside the measurement, the tool is brought back to a good live release by a
normal deploy of its own.

The cases:
  unhealthy   the new release answers 503 on /health (fixture --fail-health)
  rejected    nginx rejects its config: a broken file elsewhere in it (conf/extra/broken.conf), dropped there
              before the deploy, as someone's unrelated edit would be
  concurrent  two pipelines deploy at once (the second starts CONCURRENT_GAP s after the first)
  crash       the new release dies ~2 s after the switch (fixture --crash-after: 2 s after it starts for
              cutover, whose health checks pass in well under a second; the pattern's health.sh sleep + 2 s for
              the pattern)
  rollback    back to the release before the live one: `cutover rollback`; the pattern has no rollback, so its
              way back is deploying the previous revision again through the same hooks

What the safety buys (cutover only, the `crash` release each time):
  crash-verify0            deploy.verify = "0s", keep_previous = false: nothing watches the release after the
                           switch, and the old release is unlisted and stopped before it dies
  crash-verify0-backup     deploy.verify = "0s", keep_previous = true: the old release stays as nginx `backup`
"""

import glob
import json
import os
import re
import time

from published import describe_probe, describe_processes, fixture_processes, probe

OBSERVE = 10.0
CONCURRENT_GAP = 1.0
CRASH_AFTER_SWITCH = 2.0
# A deploy of the pattern: stop.sh's 5 s after the kill, health.sh's 10 s before its first check.
STOP_SLEEP_AND_HEALTH = 15.0

CASES = [
    ("unhealthy", "an unhealthy release (/health answers 503)"),
    ("rejected", "nginx rejects the config (a broken file elsewhere in it)"),
    ("concurrent", "two pipelines at once (%g s apart)" % CONCURRENT_GAP),
    ("crash", "the new release dies ~2 s after the switch"),
    ("rollback", "a rollback to the previous release"),
]
SAFETY = [
    ("crash", "deploy.verify 5s (default), old release as backup until stopped", {}),
    ("crash-verify0", "deploy.verify 0s, keep_previous false (no watch, old release stopped)",
     {"verify": "0s", "keep_previous": False}),
    ("crash-verify0-backup", "deploy.verify 0s, keep_previous true (old release stays as backup)",
     {"verify": "0s", "keep_previous": True}),
]


def app_listen(log_globs, release):
    """(port, unix_ms) from the fixture's 'listening' line in the log of `release`, else (None, None)."""
    for pattern in log_globs:
        for path in sorted(glob.glob(pattern.replace("{release}", release))):
            try:
                with open(path) as f:
                    m = re.findall(r"release %s listening on \S+:(\d+) \(pid \d+\) at unix_ms=(\d+)"
                                   % re.escape(release), f.read())
            except OSError:
                continue
            if m:
                return int(m[-1][0]), int(m[-1][1])
    return None, None


class Cases:
    def __init__(self, bench, published):
        self.b = bench
        self.pub = published
        self.rows = []
        self.broken = os.path.join(bench.prefix, "conf", "extra", "broken.conf")
        self.pub_served = []  # the release nginx served after each of the pattern's restoring deploys

    # ------------------------------------------------------------ the measurement around one operation

    def measure(self, tool, case, what, action, expect_secs):
        b = self.b
        if tool == "cutover":
            port, access_log = b.nginx_port, b.access_log
        else:
            port, access_log = b.pub_port, self.pub.access_log
        b.collect_logs([], access_log=access_log)
        w = b.start_wrk("close", expect_secs + OBSERVE + 30, "case-%s-%s" % (case, tool), port=port)
        t0 = time.time()
        out = action()
        returned = time.time()
        time.sleep(OBSERVE)
        res, early, cmd = b.stop_wrk(w)
        ev = b.collect_logs([(case, t0, returned)], b.wrk_stop_unix, access_log=access_log, timeline=True)
        host = self.host(tool)
        if os.path.exists(self.broken):
            os.unlink(self.broken)
        releases = out.get("releases", [])
        logs = ([os.path.join(b.dir, "logs", "{release}-*.log")] if tool == "cutover"
                else [os.path.join(self.pub.dir, "app-{release}.log")])
        moved = []
        for rel in releases:
            p, listen_ms = app_listen(logs, rel)
            span = ev.get("upstream_spans", {}).get("127.0.0.1:%d" % p) if p else None
            moved.append({"release": rel, "port": p, "listening_unix_ms": listen_ms,
                          "answered": span[2] if span else 0,
                          "first_answer_s": round(span[0] - t0, 2) if span else None,
                          "last_answer_s": round(span[1] - t0, 2) if span else None})
        row = {"case": case, "what": what, "tool": tool, "codes": out["codes"], "wall_s": round(returned - t0, 1),
               "observe_s": OBSERVE, "wrk": res, "wrk_cmd": cmd, "wrk_ended_early": early, "evidence": ev,
               "host_after": host, "new_releases": moved, "notes": out.get("notes", []),
               "ops": out.get("ops", [])}
        if ev.get("last_bad") is not None:
            row["last_non_2xx_before_wrk_stop_s"] = round(b.wrk_stop_unix - ev["last_bad"], 2)
        self.rows.append(row)
        w_ = res or {}
        b.log("case %-20s %-9s exit %s requests=%s non2xx=%s; after: %s" % (
            case, tool, out["codes"], w_.get("requests", "-"), w_.get("non_2xx", "-"), host["text"]))
        return row

    def host(self, tool):
        if tool != "cutover":
            return self.pub.host()
        b = self.b
        procs = fixture_processes(b.fixture, b.pool)
        seen = probe(b.nginx_port)
        st = b.cutover("status", "--json", timeout=60)
        chk = b.cutover("status", "--check", timeout=60)
        live = prev = None
        try:
            d = json.loads(st["stdout"])
            live = (d.get("live") or {}).get("release")
            prev = (d.get("previous") or {}).get("release")
        except (ValueError, AttributeError):
            pass
        return {"running": procs, "serving": seen, "status_live": live, "status_previous": prev,
                "status_check_code": chk["code"],
                "text": "serving: %s; running: %s; status: live %s, previous %s, --check exit %d" % (
                    describe_probe(seen), describe_processes(procs), live, prev, chk["code"])}

    # ------------------------------------------------------------ cutover's side

    def cutover_deploy(self, flags=""):
        b = self.b
        rel = b.next_release("c")
        b.set_flags(rel, flags)
        rec, _ = b.one_deploy("case", release=rel)
        return rec

    def cutover_action(self, case):
        b = self.b
        if case == "unhealthy":
            r = self.cutover_deploy("--fail-health")
            return {"codes": [r["code"]], "releases": [r["release"]], "ops": [r]}
        if case == "rejected":
            self.break_nginx()
            r = self.cutover_deploy()
            return {"codes": [r["code"]], "releases": [r["release"]], "ops": [r]}
        if case == "concurrent":
            first, second = b.next_release("c"), b.next_release("c")
            p = b.cutover_popen("deploy", "--release", first, "--json")
            time.sleep(CONCURRENT_GAP)
            r2 = b.cutover("deploy", "--release", second, "--json", timeout=180)
            out, err = p.communicate(timeout=180)
            b.children.pop(p.pid, None)
            return {"codes": [p.returncode, r2["code"]], "releases": [first, second],
                    "notes": ["second: " + (r2["stderr"].strip().splitlines() or [""])[-1][:300]],
                    "ops": [{"release": first, "code": p.returncode, "stderr": err[-1500:]},
                            {"release": second, "code": r2["code"], "stderr": r2["stderr"][-1500:]}]}
        if case.startswith("crash"):
            r = self.cutover_deploy("--crash-after %g" % CRASH_AFTER_SWITCH)
            return {"codes": [r["code"]], "releases": [r["release"]], "ops": [r]}
        if case == "rollback":
            r = b.cutover("rollback", "--json", timeout=180)
            rel = None
            if r["json"]:
                rel = r["json"].get("release")
            return {"codes": [r["code"]], "releases": [rel] if rel else [],
                    "ops": [{"kind": "rollback", "code": r["code"], "wall_ms": r["wall_ms"],
                             "stderr": r["stderr"][-1500:]}]}
        raise ValueError(case)

    def cutover_restore(self, row=None):
        """Back to a good live release (and a previous one for the rollback case), outside the measurement. What
        this next deploy did is noted on the case's row."""
        b = self.b
        b.write_config(keep_previous=False)
        rec, r = b.one_deploy("restore")
        rec["kind"] = "restore"
        if rec["code"] != 0:
            b.notes.append("cases: cutover's restoring deploy exited %d: %s" % (rec["code"], r["stderr"][-400:]))
        if row is not None:
            row["next_deploy"] = "the next deploy (%s, no load) exited %d; then: serving %s" % (
                rec["release"], rec["code"], describe_probe(probe(b.nginx_port, 3)))

    # ------------------------------------------------------------ the pattern's side

    def published_action(self, case):
        pub = self.pub
        b = self.b
        if case == "unhealthy":
            r = pub.deploy("case", flags="--fail-health")
            return {"codes": [r["code"]], "releases": [r["release"]], "ops": [r]}
        if case == "rejected":
            self.break_nginx()
            r = pub.deploy("case")
            return {"codes": [r["code"]], "releases": [r["release"]], "ops": [r]}
        if case == "concurrent":
            h1 = pub.start(b.next_release("p"))
            time.sleep(CONCURRENT_GAP)
            h2 = pub.start(b.next_release("p"))
            r1, r2 = pub.finish(h1, "case"), pub.finish(h2, "case")
            return {"codes": [r1["code"], r2["code"]], "releases": [r1["release"], r2["release"]],
                    "ops": [r1, r2]}
        if case == "crash":
            after = pub.sleep_secs(10) + CRASH_AFTER_SWITCH
            r = pub.deploy("case", flags="--crash-after %g" % after)
            return {"codes": [r["code"]], "releases": [r["release"]], "ops": [r],
                    "notes": ["--crash-after %g (health.sh's %g s sleep + %g s)" % (
                        after, pub.sleep_secs(10), CRASH_AFTER_SWITCH)]}
        if case == "rollback":
            previous = self.pub_served[-2] if len(self.pub_served) >= 2 else None
            if not previous or previous == self.pub_served[-1]:
                return {"codes": [None], "notes": ["no previous release to go back to (served: %s)"
                                                   % self.pub_served]}
            before = pub.host()
            r = pub.deploy("case", release=previous)
            return {"codes": [r["code"]], "releases": [previous], "ops": [r],
                    "notes": ["before: " + before["text"], "killed by stop.sh: %s" % (", ".join(r["killed"])
                                                                                      or "nothing")]}
        raise ValueError(case)

    def published_restore(self, row=None):
        r = self.pub.deploy("restore")
        r["kind"] = "restore"
        if r["code"] != 0:
            self.b.notes.append("cases: the pattern's restoring deploy exited %d: %s" % (r["code"],
                                                                                        r["output"][-400:]))
        time.sleep(1.5)  # the pattern does not wait for nginx's old workers: let them go before asking
        seen = probe(self.b.pub_port, 3)
        served = [k.split()[1] for k in seen if k.startswith("200 ")]
        self.pub_served.append(served[0] if len(served) == 1 else None)
        if row is not None:
            row["next_deploy"] = "the next deploy (%s, no load) exited %d; then: serving %s; running: %s" % (
                r["release"], r["code"], describe_probe(seen), describe_processes(self.pub.running()))

    # ------------------------------------------------------------ shared

    def break_nginx(self):
        with open(self.broken, "w") as f:
            f.write("# dropped here by the benchmark: an unrelated broken edit\nthis_is_not_a_directive on;\n")

    def run(self, skip_published=False):
        b = self.b
        pub_deploy_secs = self.pub.sleep_secs(STOP_SLEEP_AND_HEALTH) + 5
        pub_unhealthy_secs = min(60.0, self.pub.sleep_secs(100)) + self.pub.sleep_secs(5) + 5
        for case, what in CASES:
            if b.time_left() < 120:
                b.notes.append("time budget: failure cases stopped before %s" % case)
                return
            if case == "rollback":
                # one more good deploy each, so that "previous" is a normal release, not the last case's
                self.cutover_restore()
                if not skip_published:
                    self.published_restore()
            row = self.measure("cutover", case, what, lambda: self.cutover_action(case), 20)
            self.cutover_restore(row)
            if skip_published:
                continue
            expect = pub_unhealthy_secs if case == "unhealthy" else pub_deploy_secs
            row = self.measure("published", case, what, lambda: self.published_action(case), expect)
            self.published_restore(row)
        for case, what, cfg in SAFETY[1:]:
            if b.time_left() < 60:
                b.notes.append("time budget: safety cases stopped before %s" % case)
                return
            b.write_config(**{"keep_previous": cfg.get("keep_previous", False), "verify": cfg.get("verify", "5s")})
            row = self.measure("cutover", case, what, lambda: self.cutover_action("crash"), 20)
            self.cutover_restore(row)

