"""`make chaos`: every process of the system killed or cut off in turn under live load -> out/chaos/summary.json.

redis-server (AOF, fsync always), `--teachers` teacher and `--trainers` trainer replicas and HAProxy
run as processes on loopback (ams/ops/cluster.py) with mutual TLS. `--devices` devices of the fleet
benchmark's load generator (benchmarks/fleet.py: live pacing, one H.264 clip per T_update, their
own parameter copies, checksums verified) run in a process of their own (benchmarks/chaos_devices.py)
and connect through the balancer. A device uploads each clip until it is accepted (retrying up to
`--upload-retry-s`, as ams-edge does). The faults (`--faults`, all by default; benchmarks/chaos_faults.py):

- trainer-kill: at `--kill-at` s the replica holding the most session leases is SIGKILLed while one of
  its phases runs; at `--restart-at` s it is started again (its devices hash back to it);
- teacher-kill: at `--teacher-kill-at` s a teacher replica is SIGKILLed while it labels a trainer's
  frames (its ams_teacher_requests_in_flight; waited for up to 2 T_update), at `--teacher-restart-at` s
  started again;
- lb-restart: at `--lb-at` s HAProxy is SIGKILLed and started again (every stream through it breaks);
- redis-outage: at `--redis-at` s redis-server is SIGKILLed, held down `--redis-down-s` s (longer than
  a lease), and started again on its AOF;
- roll: at `--roll-at` s every trainer replica is upgraded in turn, as a rolling update does: SIGTERM
  (it drains, commits its running phase and checkpoints its sessions), started again, and back in the
  balancer before the next one goes;
- link: from `--link-at` s for `--link-for` s the devices' links lose `--link-loss` % of packets each
  way, with `--link-delay-ms` ± `--link-jitter-ms` of delay and `--link-rate-kbit` of bandwidth. The
  devices run in a network namespace the run creates (benchmarks/chaos_link.py), so only their links
  are shaped: tc netem where the kernel has it, else nftables loss and a tbf rate (the summary says).

`max_update_gap_s`: the longest wall time between two model arrivals (update, or a snapshot that
advances the version) of one device, counting the end of the run as an arrival; `lost_versions`:
versions a device held that the trainer did not continue from (a snapshot older than the held
version, or a held version above the one stored in Redis at the end); `rejected_updates`: updates a
device refused (wrong base, checksum); `failed_phases`: the trainers' ams_trainer_phase_failures_total.
`per_fault` gives them for each fault's window. Done when every scheduled fault happened, nothing was
lost or refused, and each fault's gap is within 3 T_update (the Redis outage: outage + 2 T_update).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import redis
import torch

from ams import keys
from ams.ops.cluster import Cluster
from ams.ops.procs import ROOT
from benchmarks import chaos_faults as faults_
from benchmarks.chaos_link import DeviceNetwork, available
from benchmarks.cli import parse_bench_args
from benchmarks.fleet import CHECKPOINT, TEACHER_ENV
from benchmarks.fleet import TRAINER_ENV as FLEET_TRAINER_ENV

# The fleet benchmark's settings, with K 10 instead of the paper's 20: three trainer and two teacher
# processes share the 2 cores here, and at K 20 four devices' phases outgrow them (a phase takes 12-16 s;
# the gaps then measure capacity, not fail-over). One training worker per replica; short leases.
TRAINER_ENV = {**FLEET_TRAINER_ENV, "AMS_K_ITERS": "10", "AMS_TRAIN_WORKERS": "1", "AMS_LEASE_TTL_S": "6",
               "AMS_CHECKPOINT_EVERY": "5"}


def _steps(args) -> list[tuple[float, str]]:
    """(seconds after the load starts, step) for the faults asked for."""
    steps = {"trainer-kill": [(args.kill_at, "trainer-kill"), (args.restart_at, "trainer-restart")],
             "teacher-kill": [(args.teacher_kill_at, "teacher-kill"), (args.teacher_restart_at, "teacher-restart")],
             "lb-restart": [(args.lb_at, "lb-restart")], "redis-outage": [(args.redis_at, "redis-outage")],
             "roll": [(args.roll_at, "roll")], "link": [(args.link_at, "link"), (args.link_at + args.link_for, "link-end")]}
    return sorted(step for fault in args.faults for step in steps[fault])


def _start_devices(cluster: Cluster, device_ids: list[str], net, args, out_dir: str):
    """The devices' process (in their namespace when there is one); returns it, its t0, its result
    file and an event set when it has written the result (its sessions still open)."""
    config = torch.load(os.path.join(ROOT, "assets", "students", args.checkpoint + ".pt"), weights_only=True)["config"]
    result = os.path.abspath(os.path.join(out_dir, "devices-result.json"))
    files = [cluster.device_files(d) for d in device_ids]
    spec = {"address": cluster.device_address, "checkpoint": args.checkpoint, "seconds": args.seconds,
            "input_size": [config["input_height"], config["input_width"]], "upload_retry_s": args.upload_retry_s,
            "result": result, "devices": [{"id": d, "ca": f.ca, "cert": f.cert, "key": f.key, "offset": i * 7.3}
                                          for i, (d, f) in enumerate(zip(device_ids, files))]}
    path = os.path.join(out_dir, "devices-spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    cmd = [sys.executable, "-m", "benchmarks.chaos_devices", os.path.abspath(path)]
    proc = subprocess.Popen(net.wrap(cmd) if net else cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    done = threading.Event()

    def echo() -> None:
        for line in proc.stdout:
            if line.strip() == "DONE":
                done.set()
            print(line, end="", flush=True)
        proc.wait()         # ended without DONE: let the run report the exit code, not a missing result file
        done.set()
    for line in proc.stdout:
        if line.startswith("READY "):
            threading.Thread(target=echo, daemon=True).start()
            return proc, float(line.split()[1]), result, done
        print(line, end="", flush=True)
    raise RuntimeError(f"the devices' process ended before the load (exit {proc.wait()})")


def _step(cluster: Cluster, net, step: str, args, t_update: float, state: dict) -> tuple[str, dict | None]:
    """Run one step; returns (fault, details) where a fault begins, (fault, None) where one ends."""
    kills = {"trainer-kill": faults_.kill_owner_mid_phase, "teacher-kill": faults_.kill_teacher_mid_call}
    if step in kills:
        details = kills[step](cluster, t_update)
        state[step] = details["replica"]
        return step, details
    if step in ("trainer-restart", "teacher-restart"):     # the replica that fault killed, started again
        service = step.split("-")[0]
        fault = f"{service}-kill"
        start = cluster.start_trainer if service == "trainer" else cluster.start_teacher
        start(int(state[fault].removeprefix(service)))
        cluster.wait_lb()
        return fault, None
    if step == "lb-restart":
        return "lb-restart", faults_.restart_balancer(cluster)
    if step == "redis-outage":
        return "redis-outage", faults_.hold_redis_down(cluster, args.redis_down_s)
    if step == "roll":
        return "roll", faults_.roll_every_trainer(cluster)
    if step == "link":
        return "link", net.degrade(args.link_delay_ms, args.link_jitter_ms, args.link_loss, args.link_rate_kbit)
    net.restore()
    return "link", None


def run(args) -> dict:
    trainer_env = {**TRAINER_ENV, **dict(kv.split("=", 1) for kv in args.trainer_env)}
    t_update = float(trainer_env["AMS_T_UPDATE_S"])
    if "link" in args.faults and (why := available()):
        raise SystemExit(f"the link fault {why}; leave it out with --faults")
    device_ids = [f"chaos-device-{i}" for i in range(args.devices)]
    out_dir = os.path.dirname(args.out) or "."
    started = time.monotonic()
    records: dict[str, dict] = {}
    net_cm = DeviceNetwork() if "link" in args.faults else contextlib.nullcontext()
    with net_cm as net, Cluster(os.path.join(out_dir, "logs"), args.trainers, args.teachers, trainer_env, TEACHER_ENV,
                                devices=device_ids, device_host=net.host_ip if net else "") as cluster:
        proc, t0, result_path, done = _start_devices(cluster, device_ids, net, args, out_dir)
        sampler = faults_.FailureSampler(cluster)
        sampler.start()
        state: dict = {}
        try:
            for at, step in _steps(args):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                began = round(time.monotonic() - t0, 1)
                fault, details = _step(cluster, net, step, args, t_update, state)
                if details is not None:
                    records[fault] = {"fault": fault, "t_s": began, **details}
                records[fault]["end_s"] = round(time.monotonic() - t0, 1)
                print(json.dumps({"step": step, "t_s": began, **(details or {})}), flush=True)
            done.wait()
            sampler.stopping.set()
            if proc.poll() is not None:
                raise RuntimeError(f"the devices' process failed (exit {proc.returncode})")
            with open(result_path) as f:
                seen = json.load(f)
            owners_end = {k: len(v) for k, v in cluster.owners().items()}
            store = redis.Redis(port=cluster.redis_port)
            stored = {d["device_id"]: int(store.hget(keys.session_key(d["session_id"], "meta"), "version") or -1)
                      for d in seen["devices"]}
            proc.communicate("close\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    return summarise(args, trainer_env, seen, stored, sorted(records.values(), key=lambda r: r["t_s"]), sampler,
                     owners_end, time.monotonic() - started, net.applied if net else None)


def summarise(args, trainer_env: dict, seen: dict, stored: dict, faults: list[dict], sampler, owners_end: dict,
              wall_s: float, link: dict | None) -> dict:
    t_update = float(trainer_env["AMS_T_UPDATE_S"])
    devices = seen["devices"]
    for d in devices:   # a device ahead of what Redis keeps would have lost those versions on a restart
        ahead = max(0, d["version"] - stored[d["device_id"]])
        d["lost_versions"] += ahead
        if ahead:
            d["incidents"].append((seen["run_end"], "lost", ahead))
    rows = faults_.per_fault(faults, devices, seen["t0"], seen["run_end"], t_update, sampler)
    summary = {
        "replicas": args.trainers, "teachers": args.teachers, "devices": len(devices), "faults": faults,
        "per_fault": rows, "max_update_gap_s": round(max(d["max_gap_s"] for d in devices), 2),
        "lost_versions": sum(d["lost_versions"] for d in devices), "rejected_updates": sum(d["refused"] for d in devices),
        "failed_phases": sampler.between(0.0, float("inf")),
        "device_errors": {
            "uploads_dropped": sum(d["uploads_dropped"] for d in devices),
            "failed_upload_attempts": dict(sum((collections.Counter(d["failed_upload_attempts"]) for d in devices),
                                               collections.Counter())),
            "stream_errors": dict(sum((collections.Counter(d["stream_errors"]) for d in devices), collections.Counter()))},
        "t_update_s": t_update, "lease_ttl_s": float(trainer_env["AMS_LEASE_TTL_S"]), "link": link,
        "updates_per_device": [d["updates"] for d in devices], "snapshots": sum(d["snapshots"] for d in devices),
        "gap_per_device_s": [round(d["max_gap_s"], 1) for d in devices],
        "final_versions": [d["version"] for d in devices], "stored_versions": list(stored.values()),
        # Redis is read just after the devices report: a phase committed in between is on its way, not lost
        "versions_in_flight": [stored[d["device_id"]] - d["version"] for d in devices],
        "owners_at_end": owners_end, "load_seconds": args.seconds, "wall_s": round(wall_s, 1),
        "settings": {"trainer_env": trainer_env, "teacher_env": TEACHER_ENV, "checkpoint": args.checkpoint},
    }
    summary["passed"] = (sorted(f["fault"] for f in faults) == sorted(args.faults) and all(r["passed"] for r in rows)
                         and summary["lost_versions"] == 0 and summary["rejected_updates"] == 0)
    return summary


def _fault_text(f: dict) -> str:
    text = f"{f['t_s']:.0f}–{f['end_s']:.0f} s {f['fault']}"
    if f["fault"] == "trainer-kill":
        return text + f" {f['replica']} (held {f['sessions_held']} sessions{', mid-phase' if f['mid_phase'] else ''})"
    if f["fault"] == "teacher-kill":
        return text + f" {f['replica']}{' (mid-call)' if f['mid_call'] else ''}"
    if f["fault"] == "roll":
        return text + f" ({f['replicas']} replicas, {f['seconds_each']} s each)"
    if f["fault"] == "link":
        delay = (f"{f['delay_ms']:.0f} ± {f['jitter_ms']:.0f} ms" if f["shaper"] == "netem"
                 else "no fixed delay: this kernel has no netem")
        return text + f" ({f['shaper']}: loss {f['loss_pct']} % each way, {f['rate_kbit']} kbit/s, {delay})"
    return text + (f" (down {f['down_s']} s)" if "down_s" in f else "")


def table(summary: dict) -> str:
    """The docs block `chaos`: one row per fault, then the run's totals."""
    errors = summary["device_errors"]
    lines = ["| fault | at (s) | lost versions | refused updates | uploads dropped | failed phases | max gap (s) "
             "| bound (s) | passed |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['fault']} | {r['t_s']:.0f}–{r['end_s']:.0f} | {r['lost_versions']} | {r['refused_updates']} "
              f"| {r['uploads_dropped']} | {r['failed_phases']} | {r['max_gap_s']} | {r['gap_bound_s']} | {r['passed']} |"
              for r in summary["per_fault"]]
    lines += [f"| **whole run** | 0–{summary['load_seconds']:.0f} | {summary['lost_versions']} "
              f"| {summary['rejected_updates']} | {errors['uploads_dropped']} | {summary['failed_phases']} "
              f"| {summary['max_update_gap_s']} | | **{summary['passed']}** |", "",
              f"{summary['replicas']} trainer and {summary['teachers']} teacher replicas, {summary['devices']} devices, "
              f"T_update {summary['t_update_s']:.0f} s, leases {summary['lease_ttl_s']:.0f} s; updates per device "
              f"{summary['updates_per_device']}; failed upload attempts (retried) {errors['failed_upload_attempts'] or 0}; "
              f"stream errors (reconnected) {errors['stream_errors'] or 0}; sessions per replica at the end "
              f"{summary['owners_at_end']}.", "", "Faults: " + "; ".join(_fault_text(f) for f in summary["faults"]) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/chaos/summary.json")
    p.add_argument("--trainers", type=int, default=3)
    p.add_argument("--teachers", type=int, default=2)
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--seconds", type=float, default=400.0, help="seconds of live load")
    p.add_argument("--faults", type=lambda s: [f for f in s.split(",") if f], default=list(faults_.FAULTS),
                   help=f"comma-separated, of {','.join(faults_.FAULTS)} (default: all)")
    p.add_argument("--kill-at", type=float, default=40.0)
    p.add_argument("--restart-at", type=float, default=80.0)
    p.add_argument("--teacher-kill-at", type=float, default=110.0)
    p.add_argument("--teacher-restart-at", type=float, default=140.0)
    p.add_argument("--lb-at", type=float, default=165.0)
    p.add_argument("--redis-at", type=float, default=190.0)
    p.add_argument("--redis-down-s", type=float, default=30.0)
    p.add_argument("--roll-at", type=float, default=260.0)
    p.add_argument("--link-at", type=float, default=310.0)
    p.add_argument("--link-for", type=float, default=60.0)
    p.add_argument("--link-loss", type=float, default=2.0, help="per cent of packets dropped, each way")
    p.add_argument("--link-delay-ms", type=float, default=100.0)
    p.add_argument("--link-jitter-ms", type=float, default=20.0)
    p.add_argument("--link-rate-kbit", type=int, default=4000)
    p.add_argument("--upload-retry-s", type=float, default=60.0)
    p.add_argument("--checkpoint", default=CHECKPOINT)
    p.add_argument("--trainer-env", action="append", default=[], metavar="KEY=VALUE")
    args = parse_bench_args(p, argv, "chaos", table)
    if args is None:
        return 0
    unknown = set(args.faults) - set(faults_.FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(faults_.FAULTS)}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    summary = run(args)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(table(summary))
    print(f"wrote {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
