"""Reconstruction metrics: per-image PSNR and SSIM (Wang et al. 2004) of images in [-1, 1]."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    for name, images in (("originals", originals), ("reconstructions", reconstructions)):
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"expected {name} as a float tensor, given {type(images).__name__}"
                            f"{'' if not isinstance(images, torch.Tensor) else ' ' + str(images.dtype)}")
        if images.ndim != 4:
            raise ValueError(f"expected {name} of shape (N, C, H, W), given {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"expected finite {name}, given NaN or inf")
        low, high = float(images.min()), float(images.max())
        if low < -1 or high > 1:
            raise ValueError(f"expected {name} in [-1, 1], given [{low:.4g}, {high:.4g}]; clamp first")
    if originals.shape != reconstructions.shape:
        raise ValueError(f"expected equal shapes, given {tuple(originals.shape)} and "
                         f"{tuple(reconstructions.shape)}")


def _ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (N,) of [0, 1] images (Wang et al. 2004): gaussian window, valid region."""
    channels = x.shape[1]
    if min(x.shape[2:]) < window:
        raise ValueError(f"expected images of at least {window}x{window} for SSIM, given {tuple(x.shape[2:])}")
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window)  # depthwise

    def blur(t):
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = 0.01 ** 2, 0.03 ** 2  # (K1 L)^2, (K2 L)^2 with L = 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))  # mean over channels and positions


def recon_metrics(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of float images (N, C, H, W) in [-1, 1], scored in [0, 1]."""
    _check_pair(originals, reconstructions)
    x = (originals.double() + 1) / 2
    y = (reconstructions.double() + 1) / 2
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(1 / mse)  # inf for identical images
    return {"psnr": float(psnr.mean()), "ssim": float(_ssim(x, y).mean())}
