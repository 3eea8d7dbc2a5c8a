"""Compute-aware phases (issue 23): K from the measured cost of a phase (services/trainer/phase_budget.py)."""
from __future__ import annotations

import pytest

from services.trainer.phase_budget import PhaseBudget

KEY = ("deeplabv3_mnv2", 144, 256, 4, "cpu")


def test_off_or_unmeasured_is_the_configured_k():
    assert PhaseBudget(share=0.0, k_fixed=20).iterations(KEY) == 20
    budget = PhaseBudget(share=0.5, k_fixed=20)
    assert budget.iterations(KEY) == 20          # nothing measured yet
    budget.observe(KEY, 20, 3.0, 3.5)
    assert budget.iterations(("other", 1, 1, 4, "cpu")) == 20   # another student's cost is its own


@pytest.mark.parametrize("per_iteration_s,workers,held,interval_s,expected", [
    (0.15, 1, 1, 10.0, 30),     # a CPU core, one session, T_update: (0.5 × 10 − 0.5) / 0.15
    (0.15, 2, 1, 10.0, 30),     # one session trains on one worker at a time, however many there are
    (0.15, 2, 4, 10.0, 13),     # four sessions share two workers: (0.5 × 2 × 10 / 4 − 0.5) / 0.15
    (0.15, 2, 40, 10.0, 2),     # 40 sessions on that box: k_min (the budget is below the fixed part)
    (0.005, 1, 1, 10.0, 200),   # a GPU: (5 − 0.5) / 0.005 = 900, capped at k_max
])
def test_k_fills_the_share_of_the_sessions_part_of_the_workers(per_iteration_s, workers, held, interval_s, expected):
    budget = PhaseBudget(share=0.5, interval_s=interval_s, workers=workers, k_fixed=20, k_min=2, k_max=200,
                         held=lambda: held)
    budget.observe(KEY, 20, 20 * per_iteration_s, 20 * per_iteration_s + 0.5)
    assert budget.iterations(KEY) == expected


def test_costs_follow_the_box_as_it_loads():
    budget = PhaseBudget(share=0.5, k_fixed=20, k_min=1, k_max=1000)
    budget.observe(KEY, 20, 2.0, 2.0)                  # 0.1 s an iteration: K 50 for 10 s
    assert budget.iterations(KEY) == 50
    for _ in range(20):
        budget.observe(KEY, 10, 2.0, 2.0)              # the box got busier: 0.2 s an iteration
    assert budget.iterations(KEY) == 25
    budget.observe(KEY, 0, 0.0, 1.0)                   # nothing measurable: ignored
    assert budget.iterations(KEY) == 25
    assert budget.costs[KEY].per_iteration_s == pytest.approx(0.2, abs=1e-3)
