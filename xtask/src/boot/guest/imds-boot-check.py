#!/usr/bin/python3
"""The boot test's side inside the VM, run once the boot is over.

Prints `imds-boot: KEY JSON` lines on the serial console; the host (xtask/src/boot) parses
them, asserts and reports. The kernel command line's `imds_boot.mode` says what to do:
`timing` only measures the boot, `full` also checks the early callers' events and restarts
the daemon under a steady stream of requests.
"""

import http.client
import json
import os
import subprocess
import threading
import time
from datetime import datetime, timezone

EVENTS = "/var/log/imds-probe/events.jsonl"
CLOUD_INIT_LOG = "/var/log/cloud-init.log"
IMDS = "169.254.169.254"
EARLY_CALLER = "early-imds-caller.service"
CLOUD_INIT_UNITS = ("cloud-init-local.service", "cloud-init.service",
                    "cloud-config.service", "cloud-final.service")
# How long the daemon may take to be READY again after a restart, an upgrade or a crash
# (Restart=on-failure waits RestartSec=2 first); TCG emulation on a busy host is slow: the
# time it took is reported, this only bounds the wait.
BACK_WITHIN_S = 300
# The steady stream during restarts: one request per new connection, this often.
STREAM_INTERVAL_S = 0.02


def say(key, value):
    print(f"imds-boot: {key} {json.dumps(value, sort_keys=True)}", flush=True)


def show(unit, prop):
    out = subprocess.run(["systemctl", "show", "-P", prop, unit],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else None


def realtime_to_monotonic_us():
    """Offset to turn an event's wall-clock time into CLOCK_MONOTONIC (kernel start = 0)."""
    return int((time.clock_gettime(time.CLOCK_REALTIME)
                - time.clock_gettime(time.CLOCK_MONOTONIC)) * 1e6)


def events():
    try:
        with open(EVENTS, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def event_us(event, offset):
    ts = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1e6) - offset


def requests_of(all_events):
    return [e for e in all_events if e.get("event") == "imds_request"]


def timings(offset):
    requests = requests_of(events())
    first = min((event_us(e, offset) for e in requests), default=None)
    say("timing", {
        "ready_us": show("imds-probe.service", "ActiveEnterTimestampMonotonic") or None,
        "first_request_us": first,
        "multi_user_us": show("multi-user.target", "ActiveEnterTimestampMonotonic"),
        "probe_enabled": os.path.exists("/etc/systemd/system/sysinit.target.wants/imds-probe.service")
        and "systemd.mask=imds-probe.service" not in open("/proc/cmdline").read(),
    })


def early_caller(offset):
    ready = show("imds-probe.service", "ActiveEnterTimestampMonotonic")
    started = show(EARLY_CALLER, "ExecMainStartTimestampMonotonic")
    mine = [e for e in requests_of(events()) if e.get("systemd_unit") == EARLY_CALLER]
    say("early_caller", {
        "ready_us": ready,
        "caller_started_us": started,
        "events": [{"class": e["class"], "path": e["path"], "exe": e["process"]["exe"],
                    "request_us": event_us(e, offset)} for e in mine],
    })


def cloud_init():
    """Every request cloud-init says it opened (url_helper logs each attempt before it),
    against the events attributed to cloud-init's units."""
    attempts = []
    try:
        with open(CLOUD_INIT_LOG, encoding="utf-8") as f:
            for line in f:
                marker = f"open 'http://{IMDS}"
                if marker in line:
                    url = line.split(marker, 1)[1].split("'", 1)[0]
                    attempts.append(url or "/")
    except FileNotFoundError:
        pass
    mine = [e for e in requests_of(events()) if e.get("systemd_unit") in CLOUD_INIT_UNITS]
    status = subprocess.run(["cloud-init", "status", "--long"], capture_output=True,
                            text=True, check=False).stdout
    say("cloud_init", {
        "attempts": sorted(attempts),
        "events": sorted(e["path"] or "" for e in mine),
        "classes": sorted({e["class"] for e in mine}),
        "units": sorted({e["systemd_unit"] for e in mine}),
        "exes": sorted({e["process"]["exe"] or "" for e in mine}),
        "status": [line.strip() for line in status.splitlines() if line.strip()][:6],
    })


def exposure():
    out = subprocess.run(["systemd-analyze", "security", "--no-pager", "imds-probe.service"],
                         capture_output=True, text=True, check=False).stdout
    say("exposure", [line for line in out.splitlines() if "Overall exposure" in line
                     or line.startswith("✗")])


class Stream:
    """IMDSv1 requests, each on a new connection, numbered in their path's query."""

    def __init__(self):
        self.sent = []  # (seq, monotonic seconds, status or error)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        seq = 0
        while not self.stop.is_set():
            seq += 1
            at = time.monotonic()
            try:
                conn = http.client.HTTPConnection(IMDS, 80, timeout=5)
                conn.request("GET", f"/latest/meta-data/instance-id?seq={seq}")
                status = conn.getresponse().status
                conn.close()
            except OSError as err:
                status = str(err)
            self.sent.append((seq, at, status))
            time.sleep(STREAM_INTERVAL_S)


def wait_ready_again(before_us, deadline_s):
    """Monotonic seconds at which imds-probe was READY again, or None."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        now = show("imds-probe.service", "ActiveEnterTimestampMonotonic") or 0
        state = subprocess.run(["systemctl", "is-active", "imds-probe.service"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if state == "active" and now > before_us:
            return now / 1e6
        time.sleep(0.1)
    return None


def restarts():
    actions = [
        ("restart", ["systemctl", "restart", "imds-probe.service"]),
        ("upgrade", ["dpkg", "-i", "/root/imds-probe.deb"]),
        ("crash", ["systemctl", "kill", "--signal=SIGKILL", "imds-probe.service"]),
    ]
    stream = Stream()
    stream.thread.start()
    time.sleep(2)
    results = []
    for name, command in actions:
        before = show("imds-probe.service", "ActiveEnterTimestampMonotonic") or 0
        started = time.monotonic()
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        ready = wait_ready_again(before, BACK_WITHIN_S)
        results.append({"action": name, "started": started, "ready": ready,
                        "exit": run.returncode, "output": (run.stdout + run.stderr)[-600:]})
        time.sleep(2)
    stream.stop.set()
    stream.thread.join()
    # Events are written as they come; give the last ones a moment.
    deadline = time.monotonic() + 10
    while True:
        seen = {e["path"].split("seq=", 1)[1] for e in requests_of(events())
                if e.get("path") and "seq=" in e["path"]}
        if all(str(seq) in seen for seq, _, _ in stream.sent) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = [(seq, at) for seq, at, _ in stream.sent if str(seq) not in seen]
    failed = [(seq, status) for seq, _, status in stream.sent if status != 200]
    for result in results:
        end = result["ready"] or float("inf")
        result["missing"] = [seq for seq, at in missing if result["started"] <= at <= end]
        result["sent_meanwhile"] = sum(1 for _, at, _ in stream.sent
                                       if result["started"] <= at <= end)
        result["took_ms"] = None if result["ready"] is None else round(
            (result["ready"] - result["started"]) * 1000)
        del result["started"], result["ready"]
    say("restarts", {
        "sent": len(stream.sent),
        "missing": [seq for seq, _ in missing],
        "failed": failed[:20],
        "actions": results,
    })
    if any(r["took_ms"] is None for r in results):
        journal = subprocess.run(["journalctl", "-b", "-u", "imds-probe.service", "--no-pager",
                                  "-n", "60"], capture_output=True, text=True, check=False).stdout
        say("journal", journal.splitlines())


def main():
    mode = "timing"
    for arg in open("/proc/cmdline", encoding="utf-8").read().split():
        if arg.startswith("imds_boot.mode="):
            mode = arg.split("=", 1)[1]
    offset = realtime_to_monotonic_us()
    timings(offset)
    if mode == "full":
        early_caller(offset)
        cloud_init()
        exposure()
        restarts()
    say("done", mode)


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # the host must hear about it, whatever it is
        say("error", repr(err))
        raise
