"""Compute-aware phases (issue 23): K sized from what a phase costs on this trainer.

The paper fixes K (20 Adam iterations a phase). On a GPU a phase of 20 takes a fraction of a second
of a 10 s T_update, so the accelerator idles; on a loaded CPU box the same 20 take seconds, every
session's updates queue behind each other and the box serves fewer devices. With `share` > 0 the
trainer instead measures, per student (architecture, input size, batch, device), the seconds of a
phase's fixed part (reading frames, scoring the newest, choosing I_n, encoding and storing the
update) and of one iteration, and gives each phase

    K = (share × T_update × min(workers, sessions) / sessions − fixed) / per_iteration,

clamped to [k_min, k_max]: one phase of every held session, the workers taking them in turn (a
session trains on one worker at a time), fits in `share` of T_update (the configured one, the bound
on a clip's upload-to-update lag; not ATR's longer one). When fast start asks for a phase per clip
a clip may wait for its session's phase in progress and then for its own, so a share of at most
one half keeps every clip's update within T_update however many sessions share the box. Before the
first measurement of a student, and with share = 0, K is the configured k_iters. Pure logic, no
torch: the session measures, this decides.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable

EMA = 0.3            # weight of the newest phase in the running costs


@dataclass
class Cost:
    fixed_s: float          # a phase's seconds besides its iterations
    per_iteration_s: float


@dataclass
class PhaseBudget:
    share: float = 0.0      # 0 = off: K is k_fixed
    interval_s: float = 10.0   # T_update
    workers: int = 1
    k_fixed: int = 20
    k_min: int = 2
    k_max: int = 200
    held: Callable[[], int] = lambda: 1     # sessions this trainer holds now
    costs: dict[tuple, Cost] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def enabled(self) -> bool:
        return self.share > 0

    def iterations(self, key: tuple) -> int:
        """K for the next phase of a session on student `key`."""
        with self._lock:
            cost = self.costs.get(key)
        if not self.enabled or cost is None:
            return self.k_fixed
        held = max(1, self.held())
        budget = self.share * self.interval_s * min(self.workers, held) / held - cost.fixed_s
        k = math.floor(budget / max(cost.per_iteration_s, 1e-6))
        return max(self.k_min, min(self.k_max, k))

    def observe(self, key: tuple, iterations: int, train_s: float, phase_s: float) -> None:
        """A phase of `iterations` took `train_s` in its iterations and `phase_s` in all."""
        if iterations < 1 or train_s <= 0 or phase_s < train_s:
            return
        new = Cost(phase_s - train_s, train_s / iterations)
        with self._lock:
            old = self.costs.get(key)
            self.costs[key] = new if old is None else Cost(
                (1 - EMA) * old.fixed_s + EMA * new.fixed_s, (1 - EMA) * old.per_iteration_s + EMA * new.per_iteration_s)
