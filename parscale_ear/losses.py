"""Training losses: the energy score of EAR and the reconstruction losses of LiteVAE.

Energy score: Shao, Meng, Zhou, "Continuous Visual Autoregressive Generation via Score
Maximization" (ICML 2025, arXiv 2505.07812). VAE terms: Sadat et al., LiteVAE (arXiv 2405.14477).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .vae import haar_wavedec

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


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over latent dims, averaged over the batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Charbonnier penalty sqrt(x^2 + eps^2), averaged."""
    return torch.sqrt(x.pow(2) + eps**2).mean()


def gaussian_blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, per channel."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    C = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1).contiguous(), groups=C)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1).contiguous(), groups=C)


def vae_loss(
    recon: torch.Tensor,
    images: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float = 1e-6,
    wavelet_weight: float = 0.1,
    highpass_weight: float = 0.1,
    wavelet_levels: int = 2,
) -> dict[str, torch.Tensor]:
    """LiteVAE's objective without the perceptual and adversarial terms (no offline LPIPS/GAN here).

    L1 + kl_weight * KL + Charbonnier on the wavelet detail sub-bands + L1 on (x - blur(x)).
    """
    l1 = (recon - images).abs().mean()
    kl = kl_divergence(mean, logvar)
    C = images.shape[1]
    wav = sum(
        charbonnier(r[:, C:] - t[:, C:])
        for r, t in zip(haar_wavedec(recon, wavelet_levels), haar_wavedec(images, wavelet_levels))
    )
    highpass = ((recon - gaussian_blur(recon)) - (images - gaussian_blur(images))).abs().mean()
    total = l1 + kl_weight * kl + wavelet_weight * wav + highpass_weight * highpass
    return {"loss": total, "l1": l1, "kl": kl, "wavelet": wav, "highpass": highpass}
