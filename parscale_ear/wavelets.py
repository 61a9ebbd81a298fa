"""The orthonormal 2-D Haar wavelet transform, one level and multi-level, with exact inverses.

Used by LiteVAE's encoder (its fixed first stage) and by its training objective (the wavelet
detail term); nothing else lives here.
"""
from __future__ import annotations

import torch


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """One orthonormal 2-D Haar level: (B, C, H, W) -> (B, 4C, H/2, W/2) as [LL, LH, HL, HH]."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"haar_dwt: expected even height and width, got {tuple(x.shape[-2:])}")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    lh = (a - b + c - d) / 2  # horizontal detail (differences along width)
    hl = (a + b - c - d) / 2  # vertical detail (differences along height)
    hh = (a - b - c + d) / 2  # diagonal detail
    return torch.cat([ll, lh, hl, hh], dim=1)


def haar_idwt(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of `haar_dwt`: (B, 4C, h, w) -> (B, C, 2h, 2w)."""
    if y.shape[1] % 4:
        raise ValueError(f"haar_idwt: expected a channel count divisible by 4, got {y.shape[1]}")
    ll, lh, hl, hh = y.chunk(4, dim=1)
    B, C, h, w = ll.shape
    x = y.new_empty(B, C, 2 * h, 2 * w)
    x[..., 0::2, 0::2] = (ll + lh + hl + hh) / 2
    x[..., 0::2, 1::2] = (ll - lh + hl - hh) / 2
    x[..., 1::2, 0::2] = (ll + lh - hl - hh) / 2
    x[..., 1::2, 1::2] = (ll - lh - hl + hh) / 2
    return x


def haar_wavedec(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Multi-level Haar decomposition: level l (1-based) is `haar_dwt` of level l-1's LL band."""
    out, ll = [], x
    for _ in range(levels):
        bands = haar_dwt(ll)
        out.append(bands)
        ll = bands[:, : x.shape[1]]
    return out


def haar_waverec(levels: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `haar_wavedec`: rebuild the image from every level's detail bands."""
    C = levels[0].shape[1] // 4
    ll = levels[-1][:, :C]
    for bands in reversed(levels):
        ll = haar_idwt(torch.cat([ll, bands[:, C:]], dim=1))
    return ll
