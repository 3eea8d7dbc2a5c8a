"""The helpers that start local processes (ams/ops/procs.py): ports that never collide within a run, and
a start failure that says why."""
import sys

import pytest

from ams.ops.procs import _wait, free_port, process


def test_free_port_never_hands_out_the_same_port_twice():
    # bind(0) draws at random from the odd half of the ephemeral range (≈ 14 000 ports): 1000 draws all
    # differ with a probability of e^-35, and a cluster's dozen repeat one once in ≈ 180 starts.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_a_process_that_exits_while_starting_raises_with_the_end_of_its_log(tmp_path):
    log = str(tmp_path / "svc.log")
    code = "import sys; print('bind: address already in use'); sys.exit(1)"
    with process([sys.executable, "-c", code], log) as proc:
        with pytest.raises(RuntimeError, match=r"(?s)svc exited with code 1; the end of its log .*address already in use"):
            _wait(lambda: False, 30, "svc", proc, log)
