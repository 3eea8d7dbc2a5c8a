"""Adaptive sampling rate (ASR, AMS §3.2 Eq. 1) and adaptive training rate (ATR, AMS App. D)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def phi_score(probs_k: np.ndarray, label_prev: np.ndarray, eps: float = 1e-6) -> float:
    """φ_k: the task loss (pixel-mean cross-entropy) of the teacher's output on frame k, (C, H, W)
    probabilities, against the teacher's label on frame k-1, (H, W) class ids."""
    c = probs_k.shape[0]
    onehot_prob = np.take_along_axis(probs_k, np.clip(label_prev, 0, c - 1)[None].astype(np.int64), axis=0)[0]
    return float(-np.log(np.clip(onehot_prob.astype(np.float32), eps, 1.0)).mean())   # (float16 in: the teacher's)


@dataclass
class ASRController:
    """r_{t+1} = clip(r_t + η_r (φ̄_t − φ_target), r_min, r_max), decided every δt seconds of video time."""

    rate_fps: float = 1.0
    eta: float = 2.0
    phi_target: float = 0.1
    r_min: float = 0.1
    r_max: float = 1.0
    delta_t_s: float = 10.0
    last_phi_mean: float = float("nan")
    _sum: float = 0.0
    _count: int = 0
    _last_decision_t: float | None = None

    def observe(self, timestamp_s: float, phi: float) -> bool:
        """Record φ for a frame captured at `timestamp_s`; True when the rate was re-decided."""
        if self._last_decision_t is None:
            self._last_decision_t = timestamp_s
        self._sum += phi
        self._count += 1
        if timestamp_s - self._last_decision_t < self.delta_t_s:
            return False
        phi_mean = self.last_phi_mean = self._sum / self._count
        self.rate_fps = float(np.clip(self.rate_fps + self.eta * (phi_mean - self.phi_target), self.r_min, self.r_max))
        self._sum, self._count, self._last_decision_t = 0.0, 0, timestamp_s
        return True


@dataclass
class ATRController:
    """Slowdown mode when r < γ0, left when r > γ1; in it T_update grows by Δ per decision, else τ_min."""

    tau_min_s: float = 10.0
    delta_s: float = 2.0
    gamma0: float = 0.25
    gamma1: float = 0.35
    tau_max_s: float = 60.0
    update_interval_s: float = 10.0
    slowdown: bool = False

    def __post_init__(self) -> None:
        self.update_interval_s = self.tau_min_s

    def decide(self, rate_fps: float) -> float:
        """Eq. 2 for the newest sampling-rate decision; returns the new T_update."""
        if not self.slowdown and rate_fps < self.gamma0:
            self.slowdown = True
        elif self.slowdown and rate_fps > self.gamma1:
            self.slowdown = False
        if self.slowdown:
            self.update_interval_s = min(self.update_interval_s + self.delta_s, self.tau_max_s)
        else:
            self.update_interval_s = self.tau_min_s
        return self.update_interval_s
