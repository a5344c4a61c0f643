"""The benchmark's report: latest.md's tables from what bench.py measured, and the summary figures for latest.json.

Nothing here measures; every figure comes from the phases, operations and cases the run recorded.
"""

import json
import statistics

MODES = [("close", "Connection: close"), ("keepalive", "keep-alive")]
NAMES = {"close": "Connection: close", "keepalive": "keep-alive", "long": "long requests"}
TOOLS = {
    "cutover": "cutover",
    "nginx": "nginx reload only (floor), cutover's server block",
    "published": "**published pattern** (switch.sh + health.sh)",
    "published-floor": "nginx reload only (floor), the pattern's server block",
    "fleet-floor": "nginx reload only (floor), the 4-instance app's server block",
    "kill-at-once": "kill-at-once.sh (2nd baseline, not published)",
}
ERRS = ("connect", "read", "write", "timeout")
DEFAULT = {"keep_previous": False, "verify": "5s"}


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {"n": len(xs), "median": round(statistics.median(xs), 1), "max": max(xs), "min": min(xs)}


def fmt(x):
    if x is None:
        return "-"
    return ("%.0f" % x) if abs(x) >= 10 else ("%.1f" % x)


def secs(ms_stats):
    if not ms_stats["n"]:
        return "-"
    return "%.1f / %.1f" % (ms_stats["median"] / 1000.0, ms_stats["max"] / 1000.0)


def errors(w):
    return sum((w or {}).get("errors", {}).get(k, 0) for k in ERRS)


def sock(w):
    if not w:
        return "-"
    e = w["errors"]
    return "/".join(str(e[k]) for k in ERRS)


def summary(b):
    """The timing figures (ms): median / max / n, per client mode and overall."""
    ops = [d for d in b.deploys if d["mode"] in ("close", "keepalive") and d["code"] == 0]
    dep = [d for d in ops if d["kind"] == "deploy"]
    default = [d for d in dep if d.get("config") == DEFAULT]
    rb = [d for d in ops if d["kind"] == "rollback"]
    pub = [r for r in b.baseline_runs if r["kind"] == "published" and r["mode"] in ("close", "keepalive")
           and r["code"] == 0]
    kao = [r for r in b.baseline_runs if r["kind"] == "kill-at-once" and r["mode"] in ("close", "keepalive")
           and r["code"] == 0]

    def block(key, rows):
        return {"all": stats([d.get(key) for d in rows]),
                **{m: stats([d.get(key) for d in rows if d["mode"] == m]) for m, _ in MODES}}

    return {
        "a_switch_ms": block("switch_ms", dep),
        "b_in_cutover_ms": block("in_cutover_ms", dep),
        "c_rollback_wall_ms": block("wall_ms", rb),
        "c_rollback_switch_ms": block("switch_ms", rb),
        "d_listening_to_noticed_ms": block("notice_ms", dep),
        "e_status_wall_ms": block("wall_ms", [dict(s, code=0) for s in b.status_ms]),
        "cutover_deploy_wall_ms": block("wall_ms", default),
        "cutover_deploy_wall_ms_verify0": block("wall_ms", [d for d in dep if d.get("config") ==
                                                            {"keep_previous": False, "verify": "0s"}]),
        "cutover_deploy_wall_ms_keep_previous": block("wall_ms", [d for d in dep if d.get("config") ==
                                                                  {"keep_previous": True, "verify": "5s"}]),
        "canary_wall_ms": block("wall_ms", [d for d in ops if d["kind"] == "canary"]),
        "published_deploy_wall_ms": block("wall_ms", pub),
        "kill_at_once_wall_ms": block("wall_ms", kao),
        "long_mode_switch_ms": {"all": stats([d.get("switch_ms") for d in b.deploys
                                              if d["mode"] == "long" and d["code"] == 0])},
        "rolling_wall_ms": block("wall_ms", [d for d in ops if d["kind"] == "rolling"]),
        "all_at_once_downtime_ms": block("downtime_ms", [d for d in ops if d["kind"] == "all-at-once"]),
    }


def published_bookkeeping(b):
    """After each deploy of the pattern: did the release before it still run (on the idle port)? Did the deploy
    kill the release two back (stop.sh)?"""
    runs = [r for r in b.baseline_runs if r["kind"] in ("setup", "published") and r["mode"] in
            ("setup", "close", "keepalive")]
    ok = [r for r in runs if r["code"] == 0]
    kept = killed = checked_kept = checked_killed = 0
    for i, r in enumerate(ok):
        after = {p["release"] for p in r["running_after"]}
        if i >= 1:
            checked_kept += 1
            kept += ok[i - 1]["release"] in after
        if i >= 2:
            checked_killed += 1
            killed += any(k.startswith(ok[i - 2]["release"] + " ") for k in r["killed"])
    return {"kept": kept, "checked_kept": checked_kept, "killed": killed, "checked_killed": checked_killed}


def render(b, elapsed):
    m, a = b.machine, b.a
    t = summary(b)
    pub = b.published
    L = []
    L.append("# cutover benchmark: zero downtime under load, against the published blue/green pattern")
    L.append("")
    L.append("- machine: %s cores, %s, kernel %s; nginx %s; %s; python %s; %s" % (
        m["nproc"], m["cpu"], m["kernel"], m["nginx"], m["wrk"].split(" Copyright")[0], m["python"],
        m["cutover"]))
    L.append("- run: %s, %.0f s%s; load: wrk -t %d -c %d --timeout %s through a private nginx "
             "(worker_processes 2) on 127.0.0.1 to fixtures/app.py" % (
                 b.started_at, elapsed, (" (+ %.0f s cargo build)" % a.build_secs) if a.build_secs else "",
                 a.threads, a.connections, a.wrk_timeout))
    L.append("- " + load_line(b))
    if pub.scale is not None:
        L.append("- **BASELINE_SLEEP=%g: the published pattern's sleeps were shortened** (10 s -> %g s, 5 s -> %g s): "
                 "its seconds per deploy below are NOT the real ones" % (pub.scale, pub.sleep_secs(10),
                                                                          pub.sleep_secs(5)))
    L.append("- nginx %s %s 1.27.4: %s" % (
        m["nginx"], ">=" if b.keepalive_min_timeout else "<",
        "keepalive_min_timeout 1s set, the keep-alive floor should be 0" if b.keepalive_min_timeout else
        "no keepalive_min_timeout, so an idle keep-alive connection can be reset at any reload; the "
        "'nginx reload only' rows measure that floor"))
    L.append("- cutover: blue/green at the defaults (deploy.verify 5s; keep_previous false: the old release stays "
             "nginx's backup through the verify window, is unlisted by a second reload, then stopped), and with "
             "keep_previous true (one reload); rollbacks with keep_previous true (a flip); health checks at the "
             "defaults (interval 250ms, 2 successes)")
    L.append("- published pattern: examples/bench/baseline/published/ (source and changes: SOURCE.md there): "
             "stop.sh (kill what runs on the idle port, sleep 5), start.sh, health.sh (sleep 10, then up to 10 "
             "checks 10 s apart, then switch.sh: rewrite service-url.inc, nginx -s reload), run in that order by "
             "deploy.sh with the appspec's 60 s timeout per hook; sleeps %s" % (
                 "real" if pub.scale is None else "shortened by BASELINE_SLEEP=%g" % pub.scale))
    L.append("- kill-at-once.sh: examples/bench/baseline/kill-at-once.sh, written for this benchmark (not a published "
             "script): start on the other port, sleep %gs, poll /health, rewrite the upstream, nginx -s reload, "
             "kill the old app at once" % a.kill_at_once_sleep)
    L.append("- long mode: before each deploy, %d x GET /slow?ms=3000 and %d x POST /upload (64 KiB sent over "
             "2.5 s), no wrk; failed = connection error or non-2xx; 'in flight' = started before the flip and "
             "ended after it" % (a.long_slow, a.long_uploads))
    L.append("- canary phase: %s" % b.canary_state)
    if not a.skip_fleet:
        L.append("- fleet phases: a second app of 4 instances behind its own server block and wrk run; rolling "
                 "batch 1 with surge (5 pool ports) and without (in place), deploy.verify %s per batch; all at "
                 "once with maintenance.retry_after 5s (not zero-downtime: 503s expected while nothing runs)"
                 % a.fleet_verify)
    L.append("")
    L.extend(main_table(b))
    L.append("")
    L.extend(cases_table(b))
    L.append("")
    L.extend(safety_tables(b, t))
    L.append("")
    L.extend(published_section(b, t))
    L.append("")
    L.extend(timings_table(b, t))
    L.append("")
    L.extend(bullets(b))
    if b.notes:
        L.append("")
        L.append("Notes:")
        L.extend("- " + n.replace("\n", " ")[:600] for n in b.notes)
    return "\n".join(L) + "\n", t


def load_line(b):
    ld = b.load
    s = [x[1] for x in ld["samples"]]
    q = getattr(b, "quiet", None)
    waited = ""
    if q:
        waited = "; waited %d s for a 1-min load of at most %g first%s" % (
            q["waited_s"], q["max_load"], "" if q["quiet"] else " (it never got there: ran anyway)")
    return ("load average (1/5/15 min) before the run: %s; during it (1-min, every 15 s, this run's own wrk, "
            "nginx and apps included): median %s, max %s; after: %s%s" % (
                " ".join("%.2f" % x for x in ld["before"]) if ld["before"] else "?",
                "%.2f" % statistics.median(s) if s else "-", "%.2f" % max(s) if s else "-",
                " ".join("%.2f" % x for x in ld["after"]) if ld.get("after") else "?", waited))


def main_table(b):
    L = ["## Every deploy succeeding, under load", "",
         "| tool | client mode | what | ops ok | nginx reloads | requests | non-2xx | socket errors "
         "connect/read/write/timeout | s per op, median / max | long completed/failed (in flight at flip) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for p in b.phases:
        w = p.get("wrk")
        if w:
            req, non = str(w["requests"]), str(w["non_2xx"])
        elif p["mode"] == "long":
            req, non = "-", "-"
        else:
            req, non = "?", "?"
        lng = ("%d/%d (%d of %d)" % (p["long_completed"], p["long_failed"], p["long_in_flight_at_flip"],
                                     p["long_total"])) if "long_completed" in p else "-"
        L.append("| %s | %s | %s | %d/%d | %d | %s | %s | %s | %s | %s |" % (
            TOOLS[p["tool"]], NAMES[p["mode"]], p["what"], p["ok_ops"], p["ops"], p["evidence"]["nginx_reloads"],
            req, non, sock(w) if w or p["mode"] != "long" else "-", secs(stats(p.get("wall_ms") or [])), lng))
    return L


def codes(c):
    return ", ".join("-" if x is None else str(x) for x in c)


def answered(row):
    out = []
    for r in row["new_releases"]:
        if r["answered"]:
            out.append("%s: %d answers, %.1f-%.1f s" % (r["release"], r["answered"], r["first_answer_s"],
                                                        r["last_answer_s"]))
        else:
            out.append("%s: none" % r["release"])
    return "; ".join(out) or "-"


def case_row(row, label):
    w = row["wrk"] or {}
    return "| %s | %s | %s | %.1f | %s | %s | %s | %s | %s |" % (
        label, TOOLS[row["tool"]], codes(row["codes"]), row["wall_s"], w.get("requests", "?"),
        w.get("non_2xx", "?"), sock(w) if w else "?", answered(row), row["host_after"]["text"])


def cases_table(b):
    rows = b.cases.rows
    if not rows:
        return ["## Failure cases side by side", "", "Not run (--skip-cases)."]
    from cases import OBSERVE
    L = ["## Failure cases side by side", "",
         "Each under its own wrk run (Connection: close) through the tool's server block, from the operation's "
         "start to %g s after it returned. 'answered' counts the new release's answers through nginx (times from "
         "the operation's start); 'after' is what the host looks like at the end of that window." % OBSERVE, "",
         "| case | tool | exit code(s) | s until it returned | requests | non-2xx | socket errors c/r/w/t | the new "
         "release answered | after |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["case"].startswith("crash-"):
            continue
        L.append(case_row(r, r["what"]))
    L.append("")
    for r in rows:
        if r["case"].startswith("crash-"):
            continue
        for n in r["notes"] + ([r["next_deploy"]] if r.get("next_deploy") else []):
            L.append("- %s, %s: %s" % (r["case"], r["tool"], n))
    return L


def safety_tables(b, t):
    L = ["## What cutover's after-the-switch safety costs and buys", ""]
    L.append("Cost, on the happy path (every deploy succeeding, same load as above):")
    L.append("")
    L.append("| setting | client mode | deploys | s per deploy, median / max | nginx reloads | non-2xx | "
             "socket errors c/r/w/t | read errors per deploy | floor: read errors per plain reload |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    floors = {p["mode"]: p for p in b.phases if p["tool"] == "nginx"}
    for p in b.phases:
        if p["tool"] != "cutover" or not p.get("setting"):
            continue
        s = p["setting"]
        label = "verify %s, keep_previous %s%s" % (s["verify"], str(s["keep_previous"]).lower(),
                                                   " (defaults)" if s == DEFAULT else "")
        w = p.get("wrk") or {}
        f = floors.get(p["mode"])
        fr = f["evidence"]["nginx_reloads"] if f else 0
        fper = "%.2f" % ((f["wrk"]["errors"]["read"] / fr) if f and f.get("wrk") and fr else 0)
        per = "%.2f" % (w["errors"]["read"] / p["ops"]) if w and p["ops"] else "-"
        L.append("| %s | %s | %d | %s | %d | %s | %s | %s | %s |" % (
            label, NAMES[p["mode"]], p["ops"], secs(stats(p.get("wall_ms") or [])),
            p["evidence"]["nginx_reloads"], w.get("non_2xx", "?"), sock(w) if w else "?", per, fper))
    L.append("")
    L.append("What it buys: a release that dies ~2 s after it started (~1.5 s after its health checks passed), "
             "under Connection: close load, counted until %s s after the deploy returned:" % _observe())
    L.append("")
    L.append("| setting | exit code | s until it returned | requests | non-2xx | socket errors c/r/w/t | the new "
             "release answered | after |")
    L.append("|---|---|---|---|---|---|---|---|")
    from cases import SAFETY
    labels = {c: what for c, what, _ in SAFETY}
    for r in b.cases.rows:
        if r["tool"] == "cutover" and r["case"] in labels:
            w = r["wrk"] or {}
            L.append("| %s | %s | %.1f | %s | %s | %s | %s | %s |" % (
                labels[r["case"]], codes(r["codes"]), r["wall_s"], w.get("requests", "?"), w.get("non_2xx", "?"),
                sock(w) if w else "?", answered(r), r["host_after"]["text"]))
    return L


def _observe():
    from cases import OBSERVE
    return "%g" % OBSERVE


def published_section(b, t):
    pub = b.published
    bk = published_bookkeeping(b)
    w = t["published_deploy_wall_ms"]["all"]
    L = ["## The published pattern, deploy by deploy", ""]
    L.append("- seconds per deploy (median / max over %d): %s, %s; cutover's: %s (deploy.verify 5s), %s "
             "(verify 0s)" % (
                 w["n"], secs(w), "with its real sleeps (stop.sh 5 s after killing, health.sh 10 s before its first "
                 "check)" if pub.scale is None else "**sleeps shortened by BASELINE_SLEEP=%g, not the real figure**"
                 % pub.scale, secs(t["cutover_deploy_wall_ms"]["all"]),
                 secs(t["cutover_deploy_wall_ms_verify0"]["all"])))
    L.append("- after each deploy the release before it was still running on the idle port, outside nginx: "
             "%d of %d deploys; the next deploy's stop.sh killed it: %d of %d. The pattern has no command that "
             "flips back to it; its way back is a deploy of the old revision, whose stop.sh kills that running "
             "copy first (the rollback case above)." % (bk["kept"], bk["checked_kept"], bk["killed"],
                                                         bk["checked_killed"]))
    floor = {p["mode"]: p for p in b.phases if p["tool"] == "published-floor"}
    for p in b.phases:
        if p["tool"] == "published" and p.get("wrk") and p["mode"] in floor and floor[p["mode"]].get("wrk"):
            f = floor[p["mode"]]
            L.append("- %s: %d deploys (%d reloads): %d non-2xx, %d socket errors; %d plain reloads on the same "
                     "server block: %d non-2xx, %d socket errors" % (
                         NAMES[p["mode"]], p["ops"], p["evidence"]["nginx_reloads"], p["wrk"]["non_2xx"],
                         errors(p["wrk"]), f["evidence"]["nginx_reloads"], f["wrk"]["non_2xx"], errors(f["wrk"])))
    return L


def timings_table(b, t):
    a = b.a
    L = ["## cutover's timings", "",
         "In ms, median / max (n). (a), (b), (d): the successful blue/green deploys under load; (d) runs from the "
         "app logging 'listening' (not from its first 200 on /health) to cutover having seen its 2 passing health "
         "checks:", "",
         "| metric | Connection: close | keep-alive | all |", "|---|---|---|---|"]

    def cell(s):
        return "-" if not s["n"] else "%s / %s (%d)" % (fmt(s["median"]), fmt(s["max"]), s["n"])

    rows = [
        ("(a) switch_ms: new release healthy -> traffic on it, old nginx workers gone", "a_switch_ms"),
        ("(b) of which inside cutover (switch_ms - validate - reload - drain)", "b_in_cutover_ms"),
        ("(c) rollback switch_ms: the flip back to the kept previous release", "c_rollback_switch_ms"),
        ("(c') rollback wall time (the flip, then deploy.verify 5s)", "c_rollback_wall_ms"),
        ("(d) app 'listening' log line -> cutover noticed healthy (healthy_unix_ms - unix_ms)",
         "d_listening_to_noticed_ms"),
        ("(e) cutover status wall time", "e_status_wall_ms"),
        ("cutover deploy wall time, defaults (verify 5s, keep_previous false)", "cutover_deploy_wall_ms"),
        ("cutover deploy wall time, verify 0s", "cutover_deploy_wall_ms_verify0"),
        ("cutover deploy wall time, keep_previous true", "cutover_deploy_wall_ms_keep_previous"),
        ("cutover canary wall time (steps 10/50/100, 1 s holds)", "canary_wall_ms"),
        ("published pattern deploy wall time%s" % ("" if b.published.scale is None else
                                                   " (sleeps shortened: not the real figure)"),
         "published_deploy_wall_ms"),
        ("kill-at-once.sh wall time (its %gs sleep)" % a.kill_at_once_sleep, "kill_at_once_wall_ms"),
        ("rolling deploy wall time (4 instances, batch 1, surge and not; deploy.verify %s per batch)"
         % a.fleet_verify, "rolling_wall_ms"),
        ("all-at-once downtime_ms: nothing served (4 instances; cutover's measure)", "all_at_once_downtime_ms"),
    ]
    for label, k in rows:
        v = t[k]
        L.append("| %s | %s | %s | %s |" % (label, cell(v["close"]), cell(v["keepalive"]), cell(v["all"])))
    L.append("| switch_ms in long mode (drain waits for the 3 s requests) | | | %s |"
             % cell(t["long_mode_switch_ms"]["all"]))
    return L


def bullets(b):
    L = []
    floor = {p["mode"]: p for p in b.phases if p["tool"] == "nginx"}
    for mode, name in MODES:
        ph = [p for p in b.phases if p["tool"] == "cutover" and p["mode"] == mode and p.get("wrk")]
        if ph:
            e = sum(errors(p["wrk"]) for p in ph)
            r = sum(p["evidence"]["nginx_reloads"] for p in ph)
            f = floor.get(mode)
            fr = f["evidence"]["nginx_reloads"] if f else 0
            fe = errors(f["wrk"]) if f and f.get("wrk") else 0
            L.append("- %s, all cutover phases: %d socket errors over %d nginx reloads (%.2f per reload); "
                     "floor: %.2f per reload" % (name, e, r, e / r if r else 0, fe / fr if fr else 0))
    for p in b.phases:
        if p.get("strategy") == "all-at-once":
            by = {}
            for k, v in p["evidence"]["non_2xx_by"].items():
                if "wrk being stopped" not in k:
                    by[k.split()[0]] = by.get(k.split()[0], 0) + v
            ws = (p.get("wrk") or {}).get("by_status", {})
            L.append("- all at once (%s) is not zero-downtime: wrk saw non-2xx by status %s; nginx's access "
                     "log: %s (503 = the maintenance answer with Retry-After; a 502 would be a loss); "
                     "downtime_ms per deploy %s" % (
                         NAMES[p["mode"]], json.dumps(ws, sort_keys=True) if ws else "{}",
                         ", ".join("%s x%d" % kv for kv in sorted(by.items())) or "none", p.get("downtime_ms")))
    if not b.keepalive_min_timeout:
        L.append("- why keep-alive clients see read errors at all: at every reload, ~100 ms after the SIGHUP, "
                 "nginx < 1.27.4 tells its old workers to quit and they close their idle keep-alive connections "
                 "at once; a client whose next request is already on the way gets EOF/reset. Requests in flight "
                 "are answered with 'Connection: close' instead. These requests never reach nginx's access log "
                 "or the app. `python3 examples/bench/keepalive_diag.py` times each one against the reloads.")
    lost = []
    for p in b.phases:
        if p["tool"] != "cutover" or p.get("strategy") == "all-at-once":
            continue
        w = p.get("wrk") or {}
        e = w.get("errors", {})
        if w.get("non_2xx", 0) or p.get("long_failed") or (p["mode"] == "close" and errors(w)):
            by = [(k, v) for k, v in p["evidence"]["non_2xx_by"].items() if "wrk being stopped" not in k]
            lost.append("- cutover %s, %s: %d non-2xx, socket errors %s, long failed %s; nginx reloads %d; "
                        "non-2xx in nginx's access log: %s; nginx error log: %s" % (
                            NAMES[p["mode"]], p["what"], w.get("non_2xx", 0),
                            "/".join(str(e.get(k, "-")) for k in ERRS), p.get("long_failed", "-"),
                            p["evidence"]["nginx_reloads"], "; ".join("%s x%d" % kv for kv in by[:5]) or "none",
                            "; ".join("%s x%d" % (k, v) for k, v in p["evidence"]["error_log_counts"].items()
                                      if k.startswith("[")) or "nothing at warn or above"))
    if lost:
        L.append("")
        L.append("Requests cutover did not answer with 2xx on the happy path (details in latest.json, "
                 "phases[].evidence):")
        L.extend(lost)
    return L
