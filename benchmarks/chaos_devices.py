"""`make chaos`'s devices, in a process of their own (inside the devices' network namespace when the run
degrades their links: benchmarks/chaos_link.py). `python -m benchmarks.chaos_devices SPEC.json`.

The spec names the balancer's address, the devices (id, certificate files, video offset), the
student, the load's length and where to write the result. The process opens every device, encodes
their clips, prints `READY <t0>` (CLOCK_MONOTONIC, which the namespace shares with the host), uploads
one clip per T_update from t0 until the load ends, waits for the devices to catch up, closes them and
writes what each saw: versions, model arrival times, incidents (lost, refused, dropped) and errors,
then prints `DONE` and keeps the sessions open until a line arrives on stdin (the caller reads what
Redis stored for them first: a device that says goodbye ends its session).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ams.pki import CertFiles
from benchmarks.fleet import VIDEOS, Device, Playlist


def result(device: Device, run_end: float) -> dict:
    stats = device.link.stats
    return {"device_id": device.device_id, "session_id": device.link.session_id, "version": device.version,
            "lost_versions": device.lost_versions, "refused": stats.refused, "updates": stats.updates,
            "snapshots": stats.snapshots, "uploads_dropped": device.upload_failures,
            "failed_upload_attempts": dict(stats.upload_errors), "stream_errors": dict(stats.stream_errors),
            "model_times": device.model_times, "incidents": device.incidents, "max_gap_s": device.max_gap(run_end)}


def run(spec: dict) -> dict:
    playlist = Playlist(VIDEOS, tuple(spec["input_size"]))
    devices = [Device(spec["address"], d["id"], CertFiles(d["ca"], d["cert"], d["key"]), playlist, d["offset"],
                      checkpoint=spec["checkpoint"], upload_retry_s=spec["upload_retry_s"]) for d in spec["devices"]]
    with ThreadPoolExecutor(len(devices)) as pool:
        list(pool.map(Device.open, devices))
        list(pool.map(lambda d: d.prepare(spec["seconds"]), devices))
    t_update = devices[0].t_update_s
    t0 = time.monotonic() + 1.0
    load_end = t0 + spec["seconds"]
    print(f"READY {t0}", flush=True)
    threads = [threading.Thread(target=d.upload_loop, args=(t0 + i * t_update / len(devices), load_end), daemon=True)
               for i, d in enumerate(devices)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) or (time.monotonic() < load_end + 2 * t_update
                                                  and not all(d.caught_up() for d in devices)):
        time.sleep(1.0)
    run_end = time.monotonic()
    out = {"t0": t0, "run_end": run_end, "devices": [result(d, run_end) for d in devices]}
    with open(spec["result"], "w") as f:
        json.dump(out, f)
    print("DONE", flush=True)
    sys.stdin.readline()
    for device in devices:
        device.close()
    return out


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    run(spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
