"""make chaos's device network: a namespace a killed run left behind is swept by the next run."""
import os
import subprocess

import pytest

from benchmarks import chaos_link


def _dead_pid() -> int:
    return next(pid for pid in range(4_190_000, 4_194_000) if not os.path.exists(f"/proc/{pid}"))


@pytest.mark.skipif(chaos_link.available() is not None, reason=str(chaos_link.available()))
def test_a_namespace_left_by_a_killed_run_is_swept_and_a_live_one_kept():
    dead = chaos_link.DeviceNetwork(name=f"ams-chaos-{_dead_pid()}", subnet=250)
    dead.host_if = f"amsc{int(dead.name[10:]) % 100000}h"
    dead.device_if = dead.host_if[:-1] + "d"
    dead.__enter__()        # as a run SIGKILLed before its `close` leaves it
    try:
        with chaos_link.DeviceNetwork(subnet=251) as live:    # entering sweeps the dead run's namespace
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
            assert dead.name not in names and dead.host_if not in links
            assert live.name in names and live.host_if in links
    finally:
        dead.close()
