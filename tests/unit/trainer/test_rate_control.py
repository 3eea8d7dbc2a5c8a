"""ASR (Eq. 1 with the φ-score) and ATR (App. D)."""
import numpy as np
import pytest

from services.trainer.rate_control import ASRController, ATRController, phi_score


def test_phi_is_small_for_a_stationary_scene_and_large_for_a_change():
    label = np.zeros((8, 8), dtype=np.uint8)
    label[2:6, 2:6] = 1
    confident = np.stack([label == 0, label == 1]).astype(np.float32) * 0.98 + 0.01
    assert phi_score(confident, label) == pytest.approx(-np.log(0.99), rel=1e-4)
    moved = np.roll(confident, 3, axis=2)
    assert phi_score(moved, label) > 10 * phi_score(confident, label)


def test_asr_follows_equation_1_every_delta_t():
    asr = ASRController(rate_fps=0.5, eta=2.0, phi_target=0.1, r_min=0.1, r_max=1.0, delta_t_s=10.0)
    assert not asr.observe(0.0, 0.3)
    assert not asr.observe(5.0, 0.2)
    assert asr.observe(10.0, 0.1)              # φ̄ = 0.2 -> r = 0.5 + 2 (0.2 - 0.1) = 0.7
    assert asr.rate_fps == pytest.approx(0.7)
    for t in (12.0, 16.0):
        asr.observe(t, 0.0)
    assert asr.observe(20.0, 0.0)              # φ̄ = 0 -> 0.7 - 0.2 = 0.5
    assert asr.rate_fps == pytest.approx(0.5)


def test_asr_clips_to_bounds():
    asr = ASRController(rate_fps=0.5, eta=100.0, phi_target=0.1, r_min=0.1, r_max=1.0, delta_t_s=1.0)
    asr.observe(0.0, 5.0)
    asr.observe(1.0, 5.0)
    assert asr.rate_fps == 1.0
    asr.observe(2.0, 0.0)
    asr.observe(3.0, 0.0)
    assert asr.rate_fps == 0.1


def test_atr_slowdown_hysteresis():
    atr = ATRController(tau_min_s=10.0, delta_s=2.0, gamma0=0.25, gamma1=0.35)
    assert atr.decide(0.5) == 10.0
    assert atr.decide(0.2) == 12.0 and atr.slowdown      # r < γ0: enter slowdown, grow by Δ
    assert atr.decide(0.3) == 14.0                       # between γ0 and γ1: stay in slowdown
    assert atr.decide(0.4) == 10.0 and not atr.slowdown  # r > γ1: leave, reset to τ_min
