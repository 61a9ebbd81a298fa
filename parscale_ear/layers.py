"""Building blocks shared by the VAE, the generator and its head.

Only pieces that really are identical across modules live here: a GroupNorm residual conv block
(SD-VAE style), a pre-norm transformer block (ViT/DiT style) and the adaLN `modulate` of DiT.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide `channels`."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm + SiLU and a (projected) skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention + MLP over (B, L, D) sequences, no masking."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D/H)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of DiT: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    """DiT's adaLN-Zero transformer block: a conditioning vector sets shift/scale/gate of both halves."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = TransformerBlock(width, heads, mlp_ratio)  # reuses its qkv/proj/mlp weights
        self.attn.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), c (B, D)."""
        b = self.attn
        s1, g1, a1, s2, g2, a2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
        B, L, D = x.shape
        qkv = b.qkv(modulate(b.norm1(x), s1, g1)).view(B, L, 3, b.heads, D // b.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        x = x + a1 * b.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))
        return x + a2 * b.mlp(modulate(b.norm2(x), s2, g2))


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0,
                       scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of times t (B,) in [0, 1], scaled by `scale` (1000: DiT's steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_positions_2d(side: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (side * side, width) of a side x side token grid, row-major, as DiT's: half the
    channels encode the row, half the column, each as sines and cosines of geometric frequencies."""
    if width % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {width}")
    quarter = width // 4
    freqs = 1.0 / 10_000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(side, dtype=torch.float64)[:, None] * freqs[None]  # (side, quarter)
    one = torch.cat([pos.sin(), pos.cos()], dim=1)  # (side, width / 2)
    rows = one[:, None].expand(side, side, -1)
    cols = one[None].expand(side, side, -1)
    return torch.cat([rows, cols], dim=-1).reshape(side * side, width).float()


class StreamAggregator(nn.Module):
    """ParScale's learned aggregation of P streams: per token, softmax weights from the concatenated
    hidden states (Linear(P*d, d) -> SiLU -> Linear(d, P)), smoothed w <- w (1 - eps) + eps / P."""

    def __init__(self, width: int, streams: int, smoothing: float):
        super().__init__()
        self.streams, self.smoothing = streams, smoothing
        self.net = nn.Sequential(nn.Linear(streams * width, width), nn.SiLU(), nn.Linear(width, streams))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B * P, N, d) -> aggregated (B, N, d) and weights (B, N, P)."""
        P = self.streams
        BP, N, d = h.shape
        h = h.view(BP // P, P, N, d)
        logits = self.net(h.permute(0, 2, 1, 3).reshape(BP // P, N, P * d))  # (B, N, P)
        weights = logits.softmax(-1) * (1 - self.smoothing) + self.smoothing / P
        return torch.einsum("bnp,bpnd->bnd", weights, h), weights


def stream_parts(streams: int, prefix_len: int, width: int, smoothing: float) -> tuple[nn.Parameter, StreamAggregator]:
    """ParScale's per-stream learned prefixes (P, Lp, d) and their aggregation, created in this order."""
    return nn.Parameter(torch.randn(streams, prefix_len, width) * 0.02), StreamAggregator(width, streams, smoothing)


def prepend_stream_prefixes(seq: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """(B, L, d) and prefixes (P, Lp, d) -> the P streams as one batch (B * P, Lp + L, d), row b P + p."""
    B = seq.shape[0]
    P = prefix.shape[0]
    expanded = prefix[None].expand(B, -1, -1, -1).to(seq.dtype)
    return torch.cat([expanded, seq[:, None].expand(-1, P, -1, -1)], dim=2).flatten(0, 1)

