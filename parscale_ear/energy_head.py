"""EAR's energy head in one place: the MLP that turns a hidden state and noise into a token in one pass (its
sampler: a draw is one forward call, its spread scaled by the temperature) and the energy score that trains it
(the LiteVAE's objective is in vae_objective.py).

EAR: Shao, Meng, Zhou, "Continuous Visual Autoregressive Generation via Score Maximization" (ICML 2025,
arXiv 2505.07812).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import modulate

# Keeps the gradient of ||.||^alpha finite at 0 (alpha = 1 has a kink there).
NORM_EPS = 1e-8


def _norm_pow(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return (x.pow(2).sum(-1) + NORM_EPS).pow(alpha / 2)


def energy_score_loss(
    x1: torch.Tensor,
    x2: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    tau: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Twice the energy score: ||x1-y||^a + ||x2-y||^a - tau ||x1-x2||^a, averaged over weighted tokens.

    x1, x2: two independent samples (..., D) for the same condition; target y (..., D);
    weight (...,) selects the tokens that count (EAR: the masked ones). alpha in (0, 2), tau <= 1.
    """
    if x1.shape != target.shape or x2.shape != target.shape:
        raise ValueError(f"energy_score_loss: shapes differ: {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(target.shape)}")
    return energy_score_samples(torch.stack([x1, x2]), target, alpha, tau, weight)


def energy_score_samples(
    samples: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    tau: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Energy score of m >= 2 samples (m, ..., D) against target (..., D), all pairs in the repulsion:
    (2/m) sum_i ||x_i - y||^a - tau/(m(m-1)) sum_{i != j} ||x_i - x_j||^a. Equals
    `energy_score_loss` for m = 2 (CALM uses m = 8 with all pairs)."""
    m = samples.shape[0]
    if m < 2:
        raise ValueError(f"energy_score_samples: need at least 2 samples, got {m}")
    if not 0 < alpha < 2 or not 0 <= tau <= 1:
        raise ValueError(f"energy_score_samples: alpha in (0, 2) and tau in [0, 1], got {alpha}, {tau}")
    if samples.shape[1:] != target.shape:
        raise ValueError(f"energy_score_samples: shapes differ: {tuple(samples.shape)}, {tuple(target.shape)}")
    attract = _norm_pow(samples - target, alpha).sum(0) * (2.0 / m)
    i, j = torch.triu_indices(m, m, offset=1, device=samples.device)
    repel = _norm_pow(samples[i] - samples[j], alpha).sum(0) * (2.0 / (m * (m - 1)))
    per_token = attract - tau * repel
    if weight is None:
        return per_token.mean()
    weight = weight.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


class EnergyHead(nn.Module):
    """EAR's MLP generator: hidden state -> residual stream; noise -> adaLN shift/scale/gate."""

    def __init__(self, cond_dim: int, token_dim: int, width: int, depth: int, noise_dim: int):
        super().__init__()
        self.noise_dim = noise_dim
        self.cond_in = nn.Linear(cond_dim, width)
        self.noise_in = nn.Linear(noise_dim, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width)) for _ in range(depth)
        )
        self.ada = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False)
        self.ada_out = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, token_dim)
        for layer in [*self.ada, self.ada_out, self.out]:  # zero-init: adaLN-Zero of DiT / EAR
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, noise: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """h (..., cond_dim), noise (..., noise_dim) -> one sample (..., token_dim) per noise draw."""
        x = self.cond_in(h)
        c = F.silu(self.noise_in(noise))
        for norm, mlp, ada in zip(self.norms, self.mlps, self.ada):
            shift, scale, gate = ada(c).chunk(3, dim=-1)
            x = x + gate * mlp(modulate(norm(x), temperature * shift, scale))
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(x), temperature * shift, scale))
