"""MeanFlow's objective, shared by every model that learns an average velocity (Geng, Deng, Bai, Kolter, He 2025,
arXiv 2505.13447): u(z_t, r, t) = (1 / (t - r)) * the integral of the velocity v from r to t, learned from the MeanFlow
identity u = v - (t - r) du/dt, where du/dt = v . d_z u + d_t u is one JVP of the network along (v, 1, 0) and the
target is held fixed (stop-gradient). A step of its sampler is z_r = z_t - (t - r) u(z_t, r, t), an Euler step of u (solvers.euler_step):
one pass, and with r = 0 a whole sample in one pass.
"""
from __future__ import annotations

from typing import Callable

import torch


def interval(t: torch.Tensor, s: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) from two time draws (B,): t the larger, r the smaller for a share `ratio` of the batch and r = t (plain
    flow matching) for the rest, the paper's recipe (25% with r != t was its best)."""
    t, r = torch.maximum(t, s), torch.minimum(t, s)
    return t, torch.where(torch.rand_like(t) < ratio, r, t)


def meanflow_loss(u: Callable, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                  power: float = 1.0, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """MeanFlow's loss ||u(x_t, t, r) - sg(v - (t - r) du/dt)||^2 for `u(x, t, r)`, x_t and v = eps - x0 of any shape
    (B, ...), t and r (B,): each example weighted by sg(1 / (||err||^2 + eps)^power) (the paper's adaptive weight,
    power 1 its best). Returns the weighted loss and, to log, the unweighted error per element.

    The network and its JVP run in float32 even inside a bf16 autocast region, as in the paper's code: the target
    feeds du/dt back into the network's own training. (The MeanFlow peer's first GPU run, its JVP in bf16, diverged:
    the error rose from 6 to 10^6 within 2,300 steps while the weighted loss stayed at 1; docs/QUALITY.md row 119.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x_t, v, t, r = x_t.float(), v.float(), t.float(), r.float()
    # the fused attention kernels have no forward-mode derivative
    with torch.autocast(x_t.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
        out, dudt = torch.func.jvp(u, (x_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    gap = (t - r).view(-1, *([1] * (v.ndim - 1)))
    target = (v - gap * dudt).detach()
    err = (out.float() - target.float()).pow(2).flatten(1).sum(1)  # (B,)
    weight = (err.detach() + eps).pow(-power)
    return (weight * err).mean(), err.detach().mean() / out[0].numel()

