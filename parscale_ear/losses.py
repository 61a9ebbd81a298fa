"""The energy score of EAR, the generators' training loss (the LiteVAE's objective is in vae_objective.py).

Energy score: Shao, Meng, Zhou, "Continuous Visual Autoregressive Generation via Score
Maximization" (ICML 2025, arXiv 2505.07812).
"""
from __future__ import annotations

import torch

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
