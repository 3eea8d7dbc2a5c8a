"""Fixed-point solvers for multiscale DEQ states (lists of tensors).

`unroll` is plain fixed-point iteration (UR/SUR-StreamDEQ). `broyden` is Broyden's root finding on
g(z) = f(z) − z (IL-StreamDEQ), delegated to torchdeq's implementation (a port of the DEQ authors'
solver). Both take an initial state and an iteration count and return (state, residual history),
the residual being ‖f(z) − z‖ / ‖f(z)‖ per iteration (batch mean).
"""
from __future__ import annotations

from typing import Callable

import torch
from torchdeq.solver.broyden import broyden_solver

State = list[torch.Tensor]


def pack(z: State) -> tuple[torch.Tensor, list[torch.Size]]:
    """List of (B, ...) tensors -> one (B, D) tensor and the shapes to undo it."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1), [t.shape for t in z]


def unpack(flat: torch.Tensor, shapes: list[torch.Size]) -> State:
    out, offset = [], 0
    for shape in shapes:
        n = int(torch.Size(shape[1:]).numel())
        out.append(flat[:, offset:offset + n].reshape(shape))
        offset += n
    return out


def _relative_residual(new: State, old: State) -> float:
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(new, old))
    den = sum(float(a.pow(2).sum()) for a in new)
    return (num / max(den, 1e-12)) ** 0.5


def unroll(f: Callable[[State], State], z0: State, iters: int, track: bool = True,
           tol: float = 0.0) -> tuple[State, list[float]]:
    """z ← f(z), `iters` times (gradients flow through every step when enabled); with `tol` > 0 it
    stops as soon as the relative residual falls below `tol` (len(residuals) = iterations run)."""
    z, residuals = z0, []
    for _ in range(iters):
        z_next = f(z)
        if track or tol > 0:
            with torch.no_grad():
                residuals.append(_relative_residual(z_next, z))
        z = z_next
        if tol > 0 and residuals[-1] < tol:
            break
    return z, residuals


def broyden(f: Callable[[State], State], z0: State, iters: int, tol: float = 0.0) -> tuple[State, list[float]]:
    """`iters` Broyden steps on g(z) = f(z) − z from z0 (no gradient); returns the last iterate. With
    `tol` > 0 the residual history ends at the first step below it (the solver stops there too)."""
    flat0, shapes = pack(z0)

    def func(flat: torch.Tensor) -> torch.Tensor:
        return pack(f(unpack(flat, shapes)))[0]

    with torch.no_grad():
        z, _, info = broyden_solver(func, flat0, max_iter=iters, tol=tol, stop_mode="rel",
                                     return_final=tol <= 0)   # with a tol: stop there, keep the best
    trace = info["rel_trace"]                     # (B, iters + 1): entry 0 is the solver's placeholder
    residuals = trace.mean(0).tolist() if trace.dim() == 2 else [float(t) for t in trace]
    residuals = residuals[1:iters + 1]
    if tol > 0:
        below = [i for i, r in enumerate(residuals) if r < tol]
        residuals = residuals[:below[0] + 1] if below else residuals
    return unpack(z, shapes), residuals
