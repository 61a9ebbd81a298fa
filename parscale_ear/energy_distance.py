"""One pass trained by the energy distance to the data, in a feature space of multi-scale pooled latents.

A generated sample is attracted to the real samples of its class and repelled by the other generated samples of its
class: the gradient structure of the energy distance E||g - y|| - 1/2 E||g - g'|| (Szekely & Rizzo), and of drifting
models (Deng et al. 2026), which train a one-pass generator this way in a feature space. Here the features are the
latent tokens themselves and their means over 2 x 2, 4 x 4, ... blocks of the token grid up to the whole grid (coarse
and fine structure, each scale weighted alike); the distance is summed over scales, each a proper scoring rule."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIST_EPS = 1e-8  # inside the square root: a finite gradient where two samples coincide


def pooled_features(tokens: torch.Tensor) -> list[torch.Tensor]:
    """Tokens (B, N, D) on a square grid -> one (B, F) feature per scale: the tokens, then their means over 2 x 2,
    4 x 4, ... blocks down to one block, each divided by sqrt(F) so that every scale weighs alike."""
    B, N, D = tokens.shape
    side = math.isqrt(N)
    if side * side != N:
        raise ValueError(f"pooled_features: the tokens must lie on a square grid, got {N} tokens")
    grid = tokens.transpose(1, 2).reshape(B, D, side, side)
    features, k = [], 1
    while k <= side:
        f = (F.avg_pool2d(grid, k) if k > 1 else grid).flatten(1)
        features.append(f / math.sqrt(f.shape[1]))
        k *= 2
    return features


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n, m) between rows, smoothed at zero (sqrt(d^2 + eps))."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return (sq.clamp_min(0) + DIST_EPS).sqrt()


def energy_distance(generated: list[torch.Tensor], real: list[torch.Tensor], groups: torch.Tensor) -> torch.Tensor:
    """The energy distance between generated and real features (lists of (B, F) per scale, summed over scales) within
    each group of `groups` (B,) (a class, or the null class), averaged over the groups weighted by their size: per
    group E||g - y|| - 1/2 E||g - g'|| over g != g'. A group with one generated sample has no repulsion term. All
    pairs of the batch at once, masked to their group: no data-dependent shapes."""
    same = (groups[:, None] == groups[None]).to(generated[0].dtype)  # (B, B)
    size = same.sum(1)  # each sample's group size
    others = same - torch.eye(len(groups), dtype=same.dtype, device=same.device)
    attract_w = same / size[:, None]
    repel_w = 0.5 * others / (size - 1).clamp_min(1)[:, None]
    total = generated[0].new_zeros(())
    for g, y in zip(generated, real):
        total = total + ((_distances(g, y) * attract_w).sum() - (_distances(g, g) * repel_w).sum()) / len(groups)
    return total
