"""LiteVAE's training objective: L1, KL, Charbonnier on the wavelet detail sub-bands and L1 on the
high-pass residual (the paper's perceptual and adversarial terms need weights that are not offline).

Sadat et al., LiteVAE (NeurIPS 2024, arXiv 2405.14477).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .wavelets import haar_wavedec


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
