"""`make chaos`: trainer replicas behind the load balancer, one killed mid-phase -> out/chaos/summary.json.

redis-server (AOF, fsync always), `--teachers` teacher and `--trainers` trainer replicas and HAProxy
run as processes on loopback (ams/ops/cluster.py) with mutual TLS; `--devices` devices of the fleet
benchmark's load generator (benchmarks/fleet.py: live pacing, one H.264 clip per T_update, their
own parameter copies, checksums verified) connect through the balancer. During the load:

1. at `--kill-at` s, the replica holding the most session leases is killed with SIGKILL while one
   of its phases runs (its metrics' ams_trainer_phases_running; waited for up to 2 T_update);
2. at `--restart-at` s it is started again (its devices hash back to it: the survivors hand over);
3. at `--redis-at` s redis-server is killed with SIGKILL and started again on its AOF;
4. at `--roll-at` s (off by default) every trainer replica is upgraded in turn, as a rolling update
   does: SIGTERM (it drains, commits its running phase and checkpoints its sessions), started again,
   and back in the balancer before the next one goes. A fault given a negative time is skipped.

A device uploads each clip until it is accepted (retrying up to `--upload-retry-s`, as ams-edge
does). `max_update_gap_s`: the longest wall time between two model arrivals (update, or a snapshot
that advances the version) of one device, counting the end of the run as an arrival;
`lost_versions`: versions a device held that the trainer did not continue from (a snapshot older
than the held version, or a held version above the one stored in Redis at the end);
`rejected_updates`: updates a device refused (wrong base, checksum). Done when every scheduled fault
happened, lost_versions = 0, rejected_updates = 0 and max_update_gap_s ≤ 3 T_update.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
import torch

from ams import keys
from benchmarks.fleet import CHECKPOINT, TEACHER_ENV, VIDEOS, Device, Playlist
from benchmarks.fleet import TRAINER_ENV as FLEET_TRAINER_ENV
from ams.ops.cluster import Cluster
from ams.ops.demo import scrape
from ams.ops.procs import ROOT
from benchmarks.cli import parse_bench_args

# The fleet benchmark's settings, with K 10 instead of the paper's 20: three trainer and two teacher
# processes share the 2 cores here, and at K 20 four devices' phases outgrow them (a phase takes 12-16 s;
# the gaps then measure capacity, not fail-over). One training worker per replica; short leases.
TRAINER_ENV = {**FLEET_TRAINER_ENV, "AMS_K_ITERS": "10", "AMS_TRAIN_WORKERS": "1", "AMS_LEASE_TTL_S": "6",
               "AMS_CHECKPOINT_EVERY": "5"}


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
    return {"event": "kill", "replica": name, "sessions_held": len(owners.get(name, [])), "mid_phase": mid_phase,
            "owners_before": {k: len(v) for k, v in owners.items()}}


def roll_every_trainer(cluster: Cluster) -> dict:
    """A rolling upgrade: each replica in turn drained by SIGTERM, started again and routed to again."""
    rolled = []
    for i in range(len(cluster.trainer_ports)):
        began = time.monotonic()
        cluster.kill(f"trainer{i}", signal.SIGTERM)
        cluster.start_trainer(i)
        cluster.wait_lb()
        rolled.append(round(time.monotonic() - began, 1))
    return {"event": "roll", "replicas": len(rolled), "seconds_each": rolled}


def run(args) -> dict:
    trainer_env = {**TRAINER_ENV, **dict(kv.split("=", 1) for kv in args.trainer_env)}
    t_update = float(trainer_env["AMS_T_UPDATE_S"])
    config = torch.load(os.path.join(ROOT, "assets", "students", args.checkpoint + ".pt"), weights_only=True)["config"]
    playlist = Playlist(VIDEOS, (config["input_height"], config["input_width"]))
    device_ids = [f"chaos-device-{i}" for i in range(args.devices)]
    out_dir = os.path.dirname(args.out) or "."
    started = time.monotonic()
    events: list[dict] = []
    with Cluster(os.path.join(out_dir, "logs"), args.trainers, args.teachers, trainer_env, TEACHER_ENV,
                 devices=device_ids) as cluster:
        devices = [Device(cluster.address, d, cluster.device_files(d), playlist, (i * 7.3) % playlist.duration,
                               checkpoint=args.checkpoint, upload_retry_s=args.upload_retry_s) for i, d in enumerate(device_ids)]
        with ThreadPoolExecutor(len(devices)) as pool:
            list(pool.map(Device.open, devices))
            list(pool.map(lambda d: d.prepare(args.seconds), devices))
        t0 = time.monotonic() + 1.0
        load_end = t0 + args.seconds
        threads = [threading.Thread(target=d.upload_loop, args=(t0 + i * t_update / len(devices), load_end), daemon=True)
                   for i, d in enumerate(devices)]
        for thread in threads:
            thread.start()
        schedule = sorted((at, what) for at, what in ((args.kill_at, "kill"), (args.restart_at, "restart"),
                                                      (args.redis_at, "redis"), (args.roll_at, "roll")) if at >= 0)
        victim = None
        for at, what in schedule:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            when = round(time.monotonic() - t0, 1)
            if what == "kill":
                event = kill_owner_mid_phase(cluster, t_update)
                victim = event["replica"]
            elif what == "restart" and victim:
                cluster.start_trainer(int(victim.removeprefix("trainer")))
                event = {"event": "restart", "replica": victim}
            elif what == "roll":
                event = roll_every_trainer(cluster)
            elif what == "redis":
                cluster.kill("redis")
                down = time.monotonic()
                cluster.start_redis()
                event = {"event": "redis_restart", "down_s": round(time.monotonic() - down, 2)}
            else:
                continue
            event["t_s"] = when
            events.append(event)
            print(json.dumps(event), flush=True)
        while any(t.is_alive() for t in threads) or (time.monotonic() < load_end + 2 * t_update
                                                      and not all(d.caught_up() for d in devices)):
            time.sleep(1.0)
        run_end = time.monotonic()
        owners_end = {k: len(v) for k, v in cluster.owners().items()}
        store = redis.Redis(port=cluster.redis_port)
        stored = {d.device_id: int(store.hget(keys.session_key(d.link.session_id, "meta"), "version") or -1) for d in devices}
        for device in devices:
            device.close()
    for device in devices:   # a device ahead of what Redis keeps would have lost those versions on a restart
        device.lost_versions += max(0, device.version - stored[device.device_id])
    gaps = [d.max_gap(run_end) for d in devices]
    kills = sum(e["event"] == "kill" for e in events)
    redis_restarts = sum(e["event"] == "redis_restart" for e in events)
    rolls = sum(e["event"] == "roll" for e in events)
    scheduled = {"kill": args.kill_at >= 0, "redis_restart": args.redis_at >= 0, "roll": args.roll_at >= 0}
    summary = {
        "replicas": args.trainers, "teachers": args.teachers, "devices": len(devices), "kills": kills,
        "redis_restarts": redis_restarts, "rolls": rolls, "max_update_gap_s": round(max(gaps), 2),
        "lost_versions": sum(d.lost_versions for d in devices), "rejected_updates": sum(d.link.stats.refused for d in devices),
        "device_errors": {
            "uploads_dropped": sum(d.upload_failures for d in devices),
            "failed_upload_attempts": dict(sum((d.link.stats.upload_errors for d in devices), collections.Counter())),
            "stream_errors": dict(sum((d.link.stats.stream_errors for d in devices), collections.Counter()))},
        "t_update_s": t_update, "lease_ttl_s": float(trainer_env["AMS_LEASE_TTL_S"]),
        "updates_per_device": [d.link.stats.updates for d in devices],
        "snapshots": sum(d.link.stats.snapshots for d in devices),
        "gap_per_device_s": [round(g, 1) for g in gaps], "final_versions": [d.version for d in devices],
        "stored_versions": list(stored.values()), "owners_at_end": owners_end, "events": events,
        "load_seconds": args.seconds, "wall_s": round(time.monotonic() - started, 1),
        "settings": {"trainer_env": trainer_env, "teacher_env": TEACHER_ENV, "checkpoint": args.checkpoint},
    }
    happened = {"kill": kills, "redis_restart": redis_restarts, "roll": rolls}
    summary["passed"] = (all(happened[k] >= 1 for k, on in scheduled.items() if on) and summary["lost_versions"] == 0
                         and summary["rejected_updates"] == 0 and summary["max_update_gap_s"] <= 3 * t_update)
    return summary


def table(summary: dict) -> str:
    """README block `chaos`."""
    errors = summary["device_errors"]
    lines = ["| replicas | teachers | devices | kills (mid-phase) | redis restarts | max update gap (s) | lost versions "
             "| refused updates | uploads dropped | failed upload attempts | stream errors | updates / device | passed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {summary['replicas']} | {summary['teachers']} | {summary['devices']} | {summary['kills']} "
             f"({sum(bool(e.get('mid_phase')) for e in summary['events'])}) | {summary['redis_restarts']} "
             f"| {summary['max_update_gap_s']} (≤ {3 * summary['t_update_s']:.0f}) | {summary['lost_versions']} "
             f"| {summary['rejected_updates']} | {errors['uploads_dropped']} | {errors['failed_upload_attempts'] or 0} "
             f"| {errors['stream_errors'] or 0} | {summary['updates_per_device']} | {summary['passed']} |", "",
             "Events: " + "; ".join(
                 f"{e['t_s']:.0f} s {e['event']}" + (f" {e['replica']}" if "replica" in e else "")
                 + (f" (held {e['sessions_held']} sessions)" if "sessions_held" in e else "")
                 + (f" (down {e['down_s']} s)" if "down_s" in e else "")
                 + (f" ({e['replicas']} replicas, {e['seconds_each']} s each)" if e["event"] == "roll" else "")
                 for e in summary["events"])
             + f"; sessions per replica at the end {summary['owners_at_end']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/chaos/summary.json")
    p.add_argument("--trainers", type=int, default=3)
    p.add_argument("--teachers", type=int, default=2)
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--seconds", type=float, default=240.0, help="seconds of live load")
    p.add_argument("--kill-at", type=float, default=70.0)
    p.add_argument("--restart-at", type=float, default=130.0)
    p.add_argument("--redis-at", type=float, default=180.0)
    p.add_argument("--roll-at", type=float, default=-1.0, help="roll every trainer replica (off: negative)")
    p.add_argument("--upload-retry-s", type=float, default=60.0)
    p.add_argument("--checkpoint", default=CHECKPOINT)
    p.add_argument("--trainer-env", action="append", default=[], metavar="KEY=VALUE")
    args = parse_bench_args(p, argv, "chaos", table)
    if args is None:
        return 0
    torch.set_num_threads(1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    summary = run(args)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: summary[k] for k in ("replicas", "devices", "kills", "redis_restarts", "rolls", "max_update_gap_s",
                                              "lost_versions", "rejected_updates", "device_errors", "passed")}))
    print(f"wrote {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
