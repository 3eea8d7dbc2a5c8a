"""`make chaos`'s faults, what each did to the devices, and the failed phases the trainers counted.

A fault is one or two timed steps on the Cluster (ams/ops/cluster.py) or the devices' network
(benchmarks/chaos_link.py). Each gives a record with its start (`t_s`) and the time it was over
(`end_s`, seconds after the load started). `per_fault` charges what the devices saw to the fault
whose window holds it (from its start to the next fault's start) and measures the longest wait for a
model across the fault itself. The bound on that gap is 3 T_update for a process or link fault and
the outage + 2 T_update for Redis held down.
"""
from __future__ import annotations

import signal
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ams.ops.cluster import Cluster
from ams.ops.demo import scrape

FAULTS = ("trainer-kill", "teacher-kill", "lb-restart", "redis-outage", "roll", "link")


def _phases_running(cluster: Cluster, i: int) -> float:
    try:
        return scrape(cluster.metrics_url(i)).get("ams_trainer_phases_running", 0.0)
    except OSError:
        return 0.0


def kill_owner_mid_phase(cluster: Cluster, t_update_s: float) -> dict:
    """SIGKILL the replica holding the most leases, while it trains (waited for up to 2 T_update)."""
    owners = cluster.owners()
    name = max(owners, key=lambda n: len(owners[n])) if owners else "trainer0"
    i = int(name.removeprefix("trainer"))
    deadline, mid_phase = time.monotonic() + 2 * t_update_s, False
    while time.monotonic() < deadline:
        if _phases_running(cluster, i) >= 1:
            mid_phase = True
            break
        time.sleep(0.05)
    cluster.kill(name)
    return {"replica": name, "sessions_held": len(owners.get(name, [])), "mid_phase": mid_phase,
            "owners_before": {k: len(v) for k, v in owners.items()}}


def _label_calls(cluster: Cluster, i: int) -> float:
    """LabelFrames calls teacher replica `i` is handling now."""
    try:
        text = urllib.request.urlopen(cluster.metrics_url(i, "teacher"), timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "ams_teacher_requests_in_flight" and s.labels.get("method") == "LabelFrames")


def kill_teacher_mid_call(cluster: Cluster, t_update_s: float) -> dict:
    """SIGKILL a teacher replica while it labels a trainer's frames (waited for up to 2 T_update)."""
    deadline = time.monotonic() + 2 * t_update_s
    while time.monotonic() < deadline:
        busy = [i for i in range(len(cluster.teacher_ports)) if _label_calls(cluster, i) >= 1]
        if busy:
            cluster.kill(f"teacher{busy[0]}")
            return {"replica": f"teacher{busy[0]}", "mid_call": True}
        time.sleep(0.02)
    cluster.kill("teacher0")
    return {"replica": "teacher0", "mid_call": False}


def roll_every_trainer(cluster: Cluster) -> dict:
    """A rolling upgrade: each replica in turn drained by SIGTERM, started again and routed to again."""
    rolled = []
    for i in range(len(cluster.trainer_ports)):
        began = time.monotonic()
        cluster.kill(f"trainer{i}", signal.SIGTERM)
        cluster.start_trainer(i)
        cluster.wait_lb()
        rolled.append(round(time.monotonic() - began, 1))
    return {"replicas": len(rolled), "seconds_each": rolled}


def restart_balancer(cluster: Cluster) -> dict:
    """SIGKILL HAProxy (every device's stream and every trainer's teacher call through it breaks) and
    start it again on the same ports."""
    began = time.monotonic()
    cluster.kill("haproxy")
    cluster.start_haproxy()
    cluster.wait_lb()
    return {"down_s": round(time.monotonic() - began, 2)}


def hold_redis_down(cluster: Cluster, seconds: float) -> dict:
    """SIGKILL redis-server, keep it down for `seconds`, start it again on its AOF."""
    cluster.kill("redis")
    down = time.monotonic()
    time.sleep(seconds)
    cluster.start_redis()
    return {"down_s": round(time.monotonic() - down, 2)}


class FailureSampler(threading.Thread):
    """Every second, each trainer replica's ams_trainer_phase_failures_total; a counter that went back
    (the replica restarted) counts from zero. `between(a, b)`: failures seen in that monotonic span."""

    def __init__(self, cluster: Cluster, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.cluster, self.every_s = cluster, every_s
        self.last: dict[int, float] = {}
        self.seen: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            for i in range(len(self.cluster.trainer_ports)):
                try:
                    value = scrape(self.cluster.metrics_url(i)).get("ams_trainer_phase_failures_total", 0.0)
                except OSError:
                    continue
                before = self.last.get(i, 0.0)
                grown = value - before if value >= before else value
                self.last[i] = value
                if grown:
                    self.seen.append((time.monotonic(), grown))

    def between(self, start: float, end: float) -> int:
        return int(sum(n for t, n in self.seen if start <= t < end))


def _gaps(model_times: list[float], run_end: float) -> list[tuple[float, float]]:
    """Each wait between two model arrivals, the run's end counting as one."""
    times = sorted(model_times) + [run_end]
    return list(zip(times, times[1:]))


def per_fault(faults: list[dict], devices: list[dict], t0: float, run_end: float, t_update: float,
              failures: FailureSampler) -> list[dict]:
    """One row per fault: lost versions, refused updates, dropped uploads and failed phases in its window,
    and the longest wait for a model that overlapped the fault (a wait overlapping several is charged
    to the first: a roll that starts while devices still wait out a Redis outage did not cause that
    wait), with its bound."""
    spans = [(t0 + f["t_s"], t0 + f["end_s"]) for f in faults]
    charged: list[float] = [0.0] * len(faults)
    for d in devices:
        for a, b in _gaps(d["model_times"], run_end):
            first = next((i for i, (start, end) in enumerate(spans) if a <= end and b >= start), None)
            if first is not None:
                charged[first] = max(charged[first], b - a)
    rows = []
    window_ends = [start for start, _ in spans[1:]] + [run_end + 1.0]
    for fault, (start, _), window_end, gap in zip(faults, spans, window_ends, charged):
        counts = {kind: sum(n for d in devices for t, k, n in d["incidents"] if k == kind and start <= t < window_end)
                  for kind in ("lost", "refused", "dropped")}
        bound = fault.get("down_s", 0.0) + 2 * t_update if fault["fault"] == "redis-outage" else 3 * t_update
        rows.append({"fault": fault["fault"], "t_s": fault["t_s"], "end_s": fault["end_s"],
                     "lost_versions": counts["lost"], "refused_updates": counts["refused"],
                     "uploads_dropped": counts["dropped"], "failed_phases": failures.between(start, window_end),
                     "max_gap_s": round(gap, 2), "gap_bound_s": round(bound, 2),
                     "passed": counts["lost"] == 0 and counts["refused"] == 0 and gap <= bound})
    return rows
