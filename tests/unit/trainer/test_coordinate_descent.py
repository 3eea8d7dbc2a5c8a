"""Algorithm 2 (gradient-guided Adam coordinate descent) against a hand-computed reference."""
import math

import numpy as np
import pytest
import torch

from services.trainer.coordinate_descent import AdamCDConfig, AdamCDState, select_indices, train_phase

X = [[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-1.5, 0.5, 1.0], [2.0, 1.0, 0.0]]
Y = [1.0, -2.0, 0.5, 3.0]
BATCHES = [[0, 1], [2, 3], [1, 2], [0, 3], [3, 1], [2, 0]]   # S_k, fixed so the reference can replay them


def grad_reference(w: list[float], batch: list[int]) -> list[float]:
    """∇ of mean((w0 x0 + w1 x1 + w2 x2 + b - y)^2) for params [w0, w1, w2, b] (Linear(3, 1) order)."""
    g = [0.0] * 4
    for i in batch:
        r = sum(w[j] * X[i][j] for j in range(3)) + w[3] - Y[i]
        for j in range(3):
            g[j] += 2 * r * X[i][j] / len(batch)
        g[3] += 2 * r / len(batch)
    return g


def reference_phase(w, m, v, step, mask, batches, lr, b1, b2, eps):
    """Lines 6-16 of Algorithm 2, written out on plain floats."""
    u = None
    for batch in batches:
        g = grad_reference(w, batch)
        m = [b1 * m[j] + (1 - b1) * g[j] for j in range(4)]
        v = [b2 * v[j] + (1 - b2) * g[j] ** 2 for j in range(4)]
        step += 1
        u = [lr * math.sqrt(1 - b2 ** step) / (1 - b1 ** step) * m[j] / (math.sqrt(v[j]) + eps) for j in range(4)]
        w = [w[j] - u[j] * mask[j] for j in range(4)]
    return w, m, v, step, u


def make_loss(batches):
    it = iter(batches)
    x, y = torch.tensor(X), torch.tensor(Y)

    def loss_fn(model):
        idx = torch.tensor(next(it))
        return ((model(x[idx])[:, 0] - y[idx]) ** 2).mean()
    return loss_fn


def test_two_phases_match_hand_computed_reference():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    w_ref = [float(p) for p in torch.nn.utils.parameters_to_vector(model.parameters()).detach()]
    cfg = AdamCDConfig(lr=0.05, gamma=0.5, iterations=3)
    state = AdamCDState.zeros(4)
    rng = np.random.default_rng(0)

    # phase 1: I_1 uniformly at random (2 of 4)
    idx1, _ = train_phase(model, make_loss(BATCHES[:3]), state, cfg, rng)
    assert len(idx1) == 2 and len(set(idx1.tolist())) == 2
    mask1 = [1.0 if j in idx1 else 0.0 for j in range(4)]
    w_ref, m_ref, v_ref, step_ref, u_ref = reference_phase(w_ref, [0.0] * 4, [0.0] * 4, 0, mask1, BATCHES[:3],
                                                           cfg.lr, cfg.beta1, cfg.beta2, cfg.eps)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.m.numpy(), m_ref, rtol=1e-5, atol=1e-7)   # moments move for ALL params
    np.testing.assert_allclose(state.v.numpy(), v_ref, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(state.u.numpy(), u_ref, rtol=1e-5, atol=1e-8)
    assert state.step == step_ref == 3
    assert all(abs(state.m[j]) > 0 for j in range(4))

    # phase 2: I_2 = the 2 largest |u_1|; m, v and the step count continue (no reset)
    expected_idx2 = sorted(sorted(range(4), key=lambda j: -abs(u_ref[j]))[:2])
    idx2, _ = train_phase(model, make_loss(BATCHES[3:]), state, cfg, rng)
    assert idx2.tolist() == expected_idx2
    mask2 = [1.0 if j in expected_idx2 else 0.0 for j in range(4)]
    w_ref2, m_ref2, v_ref2, step_ref2, u_ref2 = reference_phase(w_ref, m_ref, v_ref, step_ref, mask2, BATCHES[3:],
                                                                cfg.lr, cfg.beta1, cfg.beta2, cfg.eps)
    w2 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    np.testing.assert_allclose(w2.numpy(), w_ref2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.u.numpy(), u_ref2, rtol=1e-5, atol=1e-8)
    assert state.step == step_ref2 == 6
    # coordinates outside I_2 did not move in phase 2
    for j in range(4):
        if j not in expected_idx2:
            assert w2[j].item() == w[j].item()


def test_first_phase_indices_are_uniform_random_of_size_gamma():
    state = AdamCDState.zeros(1000)
    rng = np.random.default_rng(1)
    picks = np.concatenate([select_indices(state, 1000, 0.05, rng) for _ in range(200)])
    assert all(len(select_indices(state, 1000, 0.05, rng)) == 50 for _ in range(3))
    counts = np.bincount(picks, minlength=1000)
    assert counts.min() > 0 and counts.max() < 30   # ≈ 10 expected per coordinate


def test_later_phase_picks_largest_update_magnitudes():
    state = AdamCDState.zeros(10)
    state.u = torch.tensor([0.1, -5.0, 0.2, 3.0, -0.01, 0.0, 4.0, -0.3, 0.05, 0.0])
    assert select_indices(state, 10, 0.3, np.random.default_rng(0)).tolist() == [1, 3, 6]


def test_ablation_selections_pick_the_layers_they_name():
    """Table 3's strategies: first / last γ·P coordinates in parameter order, half of each, or uniform
    every phase (unlike gradient-guided, random ignores u); an unknown name is refused."""
    state = AdamCDState.zeros(100)
    state.u = torch.arange(100, dtype=torch.float32)   # gradient-guided would take 90..99
    rng = np.random.default_rng(0)
    assert select_indices(state, 100, 0.1, rng, "first").tolist() == list(range(10))
    assert select_indices(state, 100, 0.1, rng, "last").tolist() == list(range(90, 100))
    assert select_indices(state, 100, 0.1, rng, "first_last").tolist() == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert select_indices(state, 100, 0.1, rng, "gradient").tolist() == list(range(90, 100))
    random_picks = [select_indices(state, 100, 0.1, rng, "random") for _ in range(20)]
    assert all(len(p) == 10 and len(set(p.tolist())) == 10 for p in random_picks)
    assert np.mean([np.sum(p >= 90) for p in random_picks]) < 3        # ≈ 1 of the top-|u| ten, not all ten
    assert select_indices(state, 100, 1.0, rng, "gradient").tolist() == list(range(100))
    with pytest.raises(ValueError, match="unknown coordinate selection"):
        select_indices(state, 100, 0.1, rng, "middle")


def test_structured_selection_takes_whole_aligned_blocks_ranked_by_mean_update():
    u = torch.zeros(103)
    u[16:32] = 1.0                      # block 1: large everywhere
    u[40] = 5.0                         # block 2: one large coordinate, small mean (5/16 < 1)
    u[96:103] = 0.9                     # the last, partial block (7 coordinates)
    state = AdamCDState(torch.zeros(103), torch.zeros(103), u, 1)
    rng = np.random.default_rng(0)
    assert select_indices(state, 103, 16 / 103, rng, "gradient", block=16).tolist() == list(range(16, 32))
    two = select_indices(state, 103, 32 / 103, rng, "gradient", block=16).tolist()
    assert two == list(range(16, 32)) + list(range(96, 103))   # the partial block's mean 0.9·7/16 beats 5/16
    first = select_indices(AdamCDState(torch.zeros(1600), torch.zeros(1600)), 1600, 0.05, rng, "gradient", block=16)
    blocks = np.unique(first // 16)                            # the first phase: random whole blocks
    assert first.size == 80 and blocks.size == 5 and np.array_equal(first, (blocks[:, None] * 16 + np.arange(16)).ravel())
