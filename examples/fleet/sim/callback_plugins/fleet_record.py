# Ansible callback for the fleet simulation (examples/fleet/run.sh): records every task result per host, with
# wall-clock start and end times, to the JSON-lines file named by $FLEET_RECORD. The scenario driver reads it to
# get per-host wall times, cutover's --json output and which hosts a rescue rolled back, so the playbook itself
# needs no reporting tasks. A normal run of deploy.yml does not use it.

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: fleet_record
    type: aggregate
    short_description: write each task result with its timing to $FLEET_RECORD (JSON lines)
    description: used by examples/fleet/run.sh; does nothing when FLEET_RECORD is not set
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.path = os.environ.get("FLEET_RECORD")
        self.started = {}

    def write(self, event):
        if not self.path:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    def v2_playbook_on_play_start(self, play):
        self.write({"event": "play", "name": play.get_name(), "t": time.time()})

    def v2_runner_on_start(self, host, task):
        self.started[(host.get_name(), task._uuid)] = time.time()

    def record(self, result, status):
        host = result._host.get_name()
        task = result._task
        r = result._result
        items = []
        for item in r.get("results") or []:
            if isinstance(item, dict):
                items.append(self.outcome(item, item.get("item")))
        event = {
            "event": "result",
            "status": status,
            "host": host,
            "task": task.get_name(),
            "start": self.started.get((host, task._uuid)),
            "end": time.time(),
            "delegated_to": (r.get("_ansible_delegated_vars") or {}).get("ansible_host"),
        }
        event.update(self.outcome(r, None))
        if items:
            event["items"] = items
        self.write(event)

    @staticmethod
    def outcome(r, item):
        out = {k: r.get(k) for k in ("rc", "stdout", "stderr", "msg", "skipped", "failed") if k in r}
        if item is not None:
            out["item"] = item
        return out

    def v2_runner_on_ok(self, result):
        self.record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self.record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self.record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self.record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        summary = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self.write({"event": "stats", "t": time.time(), "hosts": summary})
