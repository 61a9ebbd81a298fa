"""Time grids and solver bookkeeping shared by every flow-type sampler (our stages and the peers).

Rectified flow x_t = (1 - t) x0 + t eps runs from t = 1 (noise) to t = 0 (data) (Liu et al. 2022).
A step from t to t' either follows one velocity (Euler: one network pass) or averages the velocities
at both ends (Heun: a second pass at t', skipped on the step that lands on t' = 0).
"""
from __future__ import annotations

import torch

SOLVERS = ("euler", "heun")


def check_solver(solver: str, name: str = "solver") -> str:
    """`solver` if it is one of SOLVERS, else a one-line ValueError naming `name`."""
    if solver not in SOLVERS:
        raise ValueError(f"{name} must be 'euler' or 'heun', got {solver!r}")
    return solver


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 times from 1 down to 0; shift > 1 spends more steps at high noise (SD3's shift)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    ts = [1.0 - k / steps for k in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in ts]


def solver_passes(steps: int, solver: str) -> int:
    """Network passes of `steps` solver steps: one a step (Euler), two a step but the last (Heun)."""
    return steps if check_solver(solver) == "euler" else 2 * steps - 1


def ddim_step(x, x0, t, t_next):
    """x_t' from x_t and a predicted (or drawn) x0: along the line through them (DDIM with eta 0 on rectified flow),
    x0 itself at t' = 0. t and t' are floats, or tensors broadcasting against x (a time per token, all > 0)."""
    if not torch.is_tensor(t_next) and t_next <= 0:
        return x0
    eps = (x - (1 - t) * x0) / t
    return (1 - t_next) * x0 + t_next * eps


def euler_step(x, v, t: float, t_next: float):
    """x at t' by one Euler step of dx/dt = v."""
    return x + (t_next - t) * v


def heun_step(x, v, t: float, t_next: float, velocity_at, dt=None):
    """x at t' by Heun's rule: the mean of v at t and `velocity_at(x', t')` at the Euler estimate x' (a second pass;
    not for t' = 0, where a velocity is undefined for the x0-predicting stages). `dt`: the step t' - t, or a tensor of
    steps broadcasting against x (a time per token)."""
    dt = t_next - t if dt is None else dt
    return x + dt * 0.5 * (v + velocity_at(x + dt * v, t_next))
