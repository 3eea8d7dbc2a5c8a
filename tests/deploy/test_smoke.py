"""make smoke without a Docker engine: it says so and exits 0, having built and run nothing."""
import subprocess
import sys

from ams.ops.procs import ROOT


def test_smoke_without_an_engine_says_so_and_exits_zero(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "ams.ops.smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no Docker engine reachable" in result.stdout and "nothing was built or run" in result.stdout
    assert "building" not in result.stdout
