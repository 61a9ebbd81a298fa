"""LiteVAE: an autoencoder whose encoder starts from a fixed multi-level Haar wavelet transform.

Follows Sadat et al., "LiteVAE: Lightweight and Efficient Variational Autoencoders for Latent
Diffusion Models" (NeurIPS 2024, arXiv 2405.14477): DWT sub-bands -> per-level feature extractor
-> aggregator (mean, log-variance); the decoder is an SD-VAE-style conv decoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ResBlock, group_norm
from .checks import check_images, check_field_types, check_int, check_latents, check_real
from .wavelets import haar_dwt, haar_idwt, haar_wavedec, haar_waverec  # noqa: F401  (public names of this module)


# ----------------------------------------------------------------------------- config
@dataclass
class LiteVAEConfig:
    image_size: int = 32
    in_channels: int = 1
    latent_channels: int = 4
    latent_size: int = 16  # latent grid side; image_size / latent_size must be a power of two
    dwt_levels: int = 2  # Haar levels; each level's features are resized to the latent grid
    extractor_channels: int = 32  # width of each level's feature extractor
    extractor_blocks: int = 1
    aggregator_channels: int = 64
    aggregator_blocks: int = 2
    # decoder widths: one at the latent grid, then one after each 2x upsampling
    decoder_channels: tuple[int, ...] = (128, 64)
    decoder_blocks: int = 1  # ResBlocks per decoder resolution
    # multiplies the encoder mean so latents have unit std; set from data after VAE training
    latent_scale: float = 1.0

    def __post_init__(self):
        check_field_types(self)
        self.decoder_channels = tuple(self.decoder_channels)
        for name in ("image_size", "latent_channels", "latent_size", "extractor_channels", "aggregator_channels"):
            check_int(getattr(self, name), f"LiteVAEConfig.{name}")
        for name in ("extractor_blocks", "aggregator_blocks", "decoder_blocks"):
            check_int(getattr(self, name), f"LiteVAEConfig.{name}", minimum=0)
        for ch in self.decoder_channels:
            check_int(ch, "LiteVAEConfig.decoder_channels[i]")
        check_real(self.latent_scale, "LiteVAEConfig.latent_scale", minimum=0.0, inclusive=False)
        ratio = self.image_size / self.latent_size
        ups = int(round(math.log2(ratio))) if ratio >= 1 else -1
        if ups < 0 or 2**ups != ratio:
            raise ValueError(
                f"LiteVAEConfig: image_size/latent_size must be a power of two, got {self.image_size}/{self.latent_size}"
            )
        if len(self.decoder_channels) != ups + 1:
            raise ValueError(
                f"LiteVAEConfig: decoder_channels needs {ups + 1} entries for a {2**ups}x upsampling, "
                f"got {len(self.decoder_channels)}"
            )
        if not 1 <= self.dwt_levels or self.image_size % 2**self.dwt_levels:
            raise ValueError(f"LiteVAEConfig: dwt_levels={self.dwt_levels} does not divide image_size={self.image_size}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"LiteVAEConfig: in_channels must be 1 or 3, got {self.in_channels}")
        if not self.latent_scale > 0:
            raise ValueError(f"LiteVAEConfig: latent_scale must be positive, got {self.latent_scale}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)


# ----------------------------------------------------------------------------- modules
class FeatureExtractor(nn.Module):
    """A small conv net over one level's 4C sub-bands."""

    def __init__(self, in_channels: int, channels: int, blocks: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(channels, channels) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_in(x))


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool down or bilinearly upsample a feature map to size x size."""
    if x.shape[-1] > size:
        return F.adaptive_avg_pool2d(x, size)
    if x.shape[-1] < size:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class Decoder(nn.Module):
    """SD-VAE-style decoder: conv in, ResBlocks, nearest 2x upsampling + conv, GroupNorm/SiLU, conv out."""

    def __init__(self, cfg: LiteVAEConfig):
        super().__init__()
        chans = cfg.decoder_channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.stages = nn.ModuleList()
        for i, ch in enumerate(chans):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chans[i - 1], ch, 3, padding=1)]
            layers += [ResBlock(ch, ch) for _ in range(cfg.decoder_blocks)]
            self.stages.append(nn.Sequential(*layers))
        self.norm_out = group_norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for stage in self.stages:
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LiteVAE(nn.Module):
    """Haar-DWT encoder + conv decoder; `encode` gives scaled latents, `decode` undoes the scale."""

    def __init__(self, config: LiteVAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or LiteVAEConfig()
        sub_bands = 4 * cfg.in_channels
        self.extractors = nn.ModuleList(
            FeatureExtractor(sub_bands, cfg.extractor_channels, cfg.extractor_blocks) for _ in range(cfg.dwt_levels)
        )
        agg = cfg.aggregator_channels
        self.aggregator = nn.Sequential(
            nn.Conv2d(cfg.dwt_levels * cfg.extractor_channels, agg, 3, padding=1),
            *[ResBlock(agg, agg) for _ in range(cfg.aggregator_blocks)],
            group_norm(agg),
            nn.SiLU(),
            nn.Conv2d(agg, 2 * cfg.latent_channels, 3, padding=1),
        )
        self.decoder = Decoder(cfg)

    def wavelet_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Haar sub-bands of each level, level l scaled by 2^-l (LiteVAE's normalisation)."""
        return [bands * 2.0**-(l + 1) for l, bands in enumerate(haar_wavedec(images, self.config.dwt_levels))]

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior mean and log-variance, each (B, c, h, w)."""
        cfg = self.config
        check_images(images, cfg.in_channels, cfg.image_size)
        feats = [resize_to(ext(bands), cfg.latent_size) for ext, bands in zip(self.extractors, self.wavelet_features(images))]
        mean, logvar = self.aggregator(torch.cat(feats, dim=1)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, h, w); the mean unless `sample`."""
        mean, logvar = self.encode_moments(images)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + eps * torch.exp(0.5 * logvar)
        return mean * self.config.latent_scale

    def decode(self, latents: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, H, W), unclamped; `check=False` skips the
        input check (it synchronises with the device, which CUDA-graph capture forbids)."""
        if check:
            check_latents(latents, self.config.latent_shape)
        return self.decoder(latents / self.config.latent_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))
