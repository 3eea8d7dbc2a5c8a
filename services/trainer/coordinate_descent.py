"""Gradient-guided coordinate descent with Adam — AMS Algorithm 2 (Khani et al., ICCV 2021, §3.1.2).

All state lives on the flattened parameter vector (torch `parameters_to_vector` order).
Moments m, v and the update u are computed for EVERY parameter; only those in I_n move.
I_n is the γ fraction with the largest |u_{n-1}| (the last Adam update of the previous phase);
in the first phase it is drawn uniformly at random. The other selections of the paper's Table 3
(random every phase, first layers, last layers, first & last) exist for the evaluation's ablation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class AdamCDState:
    """Optimizer state carried across training phases (never reset between phases)."""

    m: torch.Tensor                     # (P,) first moment
    v: torch.Tensor                     # (P,) second moment
    u: torch.Tensor | None = None       # (P,) last full Adam update u_{n-1}; None before the first phase
    step: int = 0                       # Adam's global step count i

    @classmethod
    def zeros(cls, num_params: int, device: torch.device | str = "cpu") -> "AdamCDState":
        return cls(torch.zeros(num_params, device=device), torch.zeros(num_params, device=device))

    def clone(self) -> "AdamCDState":
        """A copy a training phase can move without touching this state (phases are transactions)."""
        return AdamCDState(self.m.clone(), self.v.clone(), None if self.u is None else self.u.clone(), self.step)

    def to(self, device: torch.device | str) -> "AdamCDState":
        return AdamCDState(self.m.to(device), self.v.to(device), None if self.u is None else self.u.to(device), self.step)


@dataclass(frozen=True)
class AdamCDConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    gamma: float = 0.05                 # fraction of parameters updated per phase
    iterations: int = 20                # K
    selection: str = "gradient"         # one of SELECTIONS
    block: int = 1                      # > 1: gradient/random choose whole aligned blocks of this many coordinates


SELECTIONS = ("gradient", "random", "first", "last", "first_last")


def select_indices(state: AdamCDState, num_params: int, gamma: float, rng: np.random.Generator,
                   selection: str = "gradient", block: int = 1) -> np.ndarray:
    """Line 1: I_n = top-γ by |u_{n-1}|, or uniformly random in the first phase. Sorted int64.
    Ablations (Table 3): "random" draws uniformly every phase; "first" / "last" take the first / last
    γ·P coordinates in parameter order (the input / output layers); "first_last" half from each end.
    `block` > 1 (structured selection, for a cheaper index set): "gradient" and "random" choose whole
    aligned blocks of `block` consecutive coordinates (runs within a tensor's rows), ranked by the
    block's mean |u_{n-1}|, about γ·P coordinates in all."""
    if block > 1 and selection in ("gradient", "random"):
        return _select_blocks(state, num_params, gamma, rng, selection, block)
    k = max(1, int(round(gamma * num_params)))
    if selection == "first":
        return np.arange(k, dtype=np.int64)
    if selection == "last":
        return np.arange(num_params - k, num_params, dtype=np.int64)
    if selection == "first_last":
        head = k // 2
        return np.concatenate([np.arange(head), np.arange(num_params - (k - head), num_params)]).astype(np.int64)
    if selection not in ("gradient", "random"):
        raise ValueError(f"unknown coordinate selection {selection!r} (one of {', '.join(SELECTIONS)})")
    if state.u is None or selection == "random" or k == num_params:
        chosen = np.arange(num_params) if k == num_params else rng.choice(num_params, size=k, replace=False)
    else:
        chosen = torch.topk(state.u.abs(), k, sorted=False).indices.cpu().numpy()
    return np.sort(chosen.astype(np.int64))


def _select_blocks(state: AdamCDState, num_params: int, gamma: float, rng: np.random.Generator, selection: str,
                   block: int) -> np.ndarray:
    blocks = -(-num_params // block)
    kb = min(blocks, max(1, int(round(gamma * num_params / block))))
    if state.u is None or selection == "random" or kb == blocks:
        chosen = np.arange(blocks) if kb == blocks else rng.choice(blocks, size=kb, replace=False)
    else:
        score = torch.zeros(blocks * block, device=state.u.device)
        score[:num_params] = state.u.abs()
        chosen = torch.topk(score.view(blocks, block).mean(1), kb, sorted=False).indices.cpu().numpy()
    indices = (np.sort(chosen.astype(np.int64))[:, None] * block + np.arange(block)).ravel()
    return indices[indices < num_params]


def adam_cd_step(w: torch.Tensor, g: torch.Tensor, chosen: torch.Tensor, state: AdamCDState, cfg: AdamCDConfig) -> None:
    """Lines 9–13 for one iteration, in place on w (P,), given the full gradient g (P,) and I_n as an
    index tensor. w − u ⊙ b_n is computed only at I_n: multiplying by a 0/1 mask would turn a 0.0
    weight into -0.0 (0.0 − (−x·0)), a different bit pattern the edge's checksum would refuse."""
    state.m.mul_(cfg.beta1).add_(g, alpha=1 - cfg.beta1)
    state.v.mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
    state.step += 1
    u = adam_direction(state, cfg)
    w.index_add_(0, chosen, u.index_select(0, chosen), alpha=-1)
    state.u = u


def adam_direction(state: AdamCDState, cfg: AdamCDConfig) -> torch.Tensor:
    """Line 12: u = α·sqrt(1-β2^i)/(1-β1^i) · m/(sqrt(v)+ε) for every parameter. A pure function of
    (m, v, i), so a stored state need not carry u: recomputing it gives the same bits."""
    i = state.step
    scale = cfg.lr * (1 - cfg.beta2 ** i) ** 0.5 / (1 - cfg.beta1 ** i)
    return scale * state.m / (state.v.sqrt() + cfg.eps)


def train_rows(w: torch.Tensor, loss_fn: Callable[[torch.Tensor, int], torch.Tensor], states: list[AdamCDState],
               chosen: list[torch.Tensor], cfg: AdamCDConfig, iterations: int) -> list[list[float]]:
    """K iterations of Algorithm 2 for S sessions at once: row s of `w` (S, P), a leaf that requires
    grad, is session s's flat parameter vector, `states[s]` its Adam state and `chosen[s]` its I_n.
    `loss_fn(w, k)` returns the (S,) losses of iteration k's mini-batches; since no session's loss
    depends on another's row, one backward of their sum gives each row its own full gradient.
    Returns each session's per-iteration losses."""
    losses: list[list[float]] = [[] for _ in states]
    rows = w.detach()           # the same storage: updates in place, outside autograd
    for k in range(iterations):
        w.grad = None
        loss = loss_fn(w, k)
        loss.sum().backward()
        grad = w.grad
        assert grad is not None
        for s, value in enumerate(loss.detach().tolist()):
            losses[s].append(value)
        with torch.no_grad():
            for s, state in enumerate(states):
                adam_cd_step(rows[s], grad[s], chosen[s], state, cfg)
    w.grad = None
    return losses


def train_phase(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor], state: AdamCDState,
                cfg: AdamCDConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """One training phase of Algorithm 2: K masked Adam iterations. Returns (I_n, per-iteration losses).

    `loss_fn(model)` draws a fresh mini-batch S_k and returns the loss L(S_k; w).
    """
    params = [p for p in model.parameters()]
    num_params = sum(p.numel() for p in params)
    indices = select_indices(state, num_params, cfg.gamma, rng, cfg.selection, cfg.block)
    chosen = torch.from_numpy(indices).to(state.m.device)
    losses = []
    for _ in range(cfg.iterations):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            w = torch.nn.utils.parameters_to_vector(params)
            adam_cd_step(w, g, chosen, state, cfg)
            torch.nn.utils.vector_to_parameters(w, params)
    return indices, losses
