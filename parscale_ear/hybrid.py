"""The coarse/fine hybrid: a coarse stage for global structure on the pooled grid and a fine stage
for the local residual on the full grid, each an EnergyGenerator.

Coarse tokens + continuous residual after HART (Tang et al., arXiv 2410.10812), here both continuous.
Modes (each a separately trained model, see docs/DESIGN.md):
  full      coarse = avg_pool(z, pool) on the g/pool grid; fine = z - upsample(coarse) on the g grid,
            generated conditioned on the (upsampled) coarse tokens.
  no_coarse one stage on the g grid generating z itself; steps = coarse_steps + fine_steps.
  no_fine   one stage on the g/pool grid whose tokens are pool x pool patches of z (all of z).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .generator import EnergyGenerator, GeneratorConfig
from .utils import check_int

MODES = ("full", "no_coarse", "no_fine")


@dataclass
class HybridConfig:
    mode: str = "full"
    pool: int = 4  # coarse grid = latent grid / pool (16x16 -> 4x4)
    fine_patch: int = 1  # fine tokens are fine_patch x fine_patch latent patches (2: 64 tokens of 4C dims)
    coarse: GeneratorConfig = field(default_factory=GeneratorConfig)
    fine: GeneratorConfig = field(default_factory=GeneratorConfig)
    coarse_steps: int = 4  # default cosine steps of the coarse stage
    fine_steps: int = 1  # default steps of the fine stage (1 = one parallel pass)

    def __post_init__(self):
        if isinstance(self.coarse, dict):
            self.coarse = GeneratorConfig(**self.coarse)
        if isinstance(self.fine, dict):
            self.fine = GeneratorConfig(**self.fine)
        check_int(self.pool, "HybridConfig.pool")
        check_int(self.fine_patch, "HybridConfig.fine_patch")
        if self.mode not in MODES:
            raise ValueError(f"HybridConfig: mode must be one of {MODES}, got {self.mode!r}")
        if self.coarse_steps < 1 or self.fine_steps < 1:
            raise ValueError(f"HybridConfig: steps must be >= 1, got {self.coarse_steps}, {self.fine_steps}")


# ----------------------------------------------------------------------------- token layout
def to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), row-major positions."""
    return grid.flatten(2).transpose(1, 2)


def from_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side*side, C) -> (B, C, side, side)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


def patchify(latents: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, C, g, g) -> (B, (g/pool)^2, C*pool*pool): one token per pool x pool patch."""
    B, C, g, _ = latents.shape
    x = latents.view(B, C, g // pool, pool, g // pool, pool).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (g // pool) ** 2, C * pool * pool)


def unpatchify(tokens: torch.Tensor, channels: int, pool: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    B, n, _ = tokens.shape
    s = int(round(n**0.5))
    x = tokens.view(B, s, s, channels, pool, pool).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, s * pool, s * pool).contiguous()


def split_coarse_fine(latents: torch.Tensor, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """latents (B, C, g, g) -> coarse (B, C, g/pool, g/pool) mean and fine residual (B, C, g, g)."""
    coarse = F.avg_pool2d(latents, pool)
    return coarse, latents - F.interpolate(coarse, scale_factor=pool, mode="nearest")


def merge_coarse_fine(coarse: torch.Tensor, fine: torch.Tensor, pool: int) -> torch.Tensor:
    """Inverse of `split_coarse_fine`."""
    return F.interpolate(coarse, scale_factor=pool, mode="nearest") + fine


def make_stage(config: GeneratorConfig, num_tokens: int, token_dim: int, num_classes: int, context_dim: int = 0) -> nn.Module:
    """The generation stage of `config.kind`: 'mar' (EnergyGenerator) or 'flow' (EnergyFlowGenerator)."""
    if config.kind == "flow":
        from .energy_flow import EnergyFlowGenerator

        return EnergyFlowGenerator(config, num_tokens, token_dim, num_classes, context_dim)
    return EnergyGenerator(config, num_tokens, token_dim, num_classes, context_dim)


# ----------------------------------------------------------------------------- module
class CoarseFineHybrid(nn.Module):
    """Holds the generation stages of one mode and maps latents <-> their normalised tokens."""

    def __init__(self, config: HybridConfig, latent_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.config = cfg = config
        C, g, g2 = latent_shape
        p = cfg.fine_patch
        if g != g2 or g % cfg.pool or g % p:
            raise ValueError(f"CoarseFineHybrid: latent grid {g}x{g2} is not square or not divisible by pool {cfg.pool} "
                             f"and fine_patch {p}")
        self.latent_shape, self.num_classes = (C, g, g), num_classes
        self.coarse_side = g // cfg.pool
        nc, nf, fine_dim = self.coarse_side**2, (g // p) ** 2, C * p * p
        self.coarse = self.fine = None
        if cfg.mode == "full":
            self.coarse = make_stage(cfg.coarse, nc, C, num_classes)
            self.fine = make_stage(cfg.fine, nf, fine_dim, num_classes, context_dim=fine_dim)
        elif cfg.mode == "no_fine":
            self.coarse = make_stage(cfg.coarse, nc, C * cfg.pool**2, num_classes)
        else:  # no_coarse
            self.fine = make_stage(cfg.fine, nf, fine_dim, num_classes)
        # per-stage token std (set from data by `fit_token_scales`) so tokens enter at unit scale
        self.register_buffer("coarse_std", torch.ones(()))
        self.register_buffer("fine_std", torch.ones(()))

    @property
    def stages(self) -> dict[str, EnergyGenerator]:
        return {name: g for name, g in (("coarse", self.coarse), ("fine", self.fine)) if g is not None}

    def default_steps(self) -> tuple[int, int]:
        """(coarse, fine) steps; no_coarse runs coarse_steps + fine_steps on its single stage."""
        c = self.config
        return (c.coarse_steps, c.fine_steps) if c.mode != "no_coarse" else (0, c.coarse_steps + c.fine_steps)

    def tokens(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unnormalised tokens of each stage: {'coarse': (B, Nc, Dc), 'fine': (B, Nf, C)}."""
        mode, pool = self.config.mode, self.config.pool
        if mode == "full":
            coarse, fine = split_coarse_fine(latents, pool)
            return {"coarse": to_tokens(coarse), "fine": self._fine_tokens(fine)}
        if mode == "no_fine":
            return {"coarse": patchify(latents, pool)}
        return {"fine": self._fine_tokens(latents)}

    def _fine_tokens(self, grid: torch.Tensor) -> torch.Tensor:
        p = self.config.fine_patch
        return patchify(grid, p) if p > 1 else to_tokens(grid)

    def _fine_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        C, g, _ = self.latent_shape
        p = self.config.fine_patch
        return unpatchify(tokens, C, p) if p > 1 else from_tokens(tokens, g)

    @torch.no_grad()
    def fit_token_scales(self, latents: torch.Tensor) -> dict[str, float]:
        """Set each stage's token std from a sample of (scaled) latents; returns the values."""
        out = {}
        for name, tok in self.tokens(latents).items():
            std = tok.float().std().clamp_min(1e-6)
            getattr(self, f"{name}_std").fill_(std)
            out[name] = std.item()
        return out

    def context(self, coarse_tokens: torch.Tensor) -> torch.Tensor:
        """Normalised coarse tokens (B, Nc, C) -> per-fine-position context (B, Nf, C)."""
        grid = from_tokens(coarse_tokens, self.coarse_side)
        return self._fine_tokens(F.interpolate(grid, scale_factor=self.config.pool, mode="nearest"))

    def loss(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Energy loss of each stage on (scaled) latents (B, C, g, g); teacher-forced coarse context."""
        toks = self.tokens(latents)
        out = {}
        if self.coarse is not None:
            coarse = toks["coarse"] / self.coarse_std
            out["coarse"] = self.coarse.loss(coarse, labels)
        if self.fine is not None:
            context = self.context(coarse) if self.config.mode == "full" else None
            out["fine"] = self.fine.loss(toks["fine"] / self.fine_std, labels, context)
        out["loss"] = sum(out.values())
        return out

    @torch.no_grad()
    def sample(
        self,
        noise: dict[str, tuple[torch.Tensor, torch.Tensor]],
        labels: torch.Tensor | None = None,
        steps: tuple[int, int] | None = None,
        cfg: float = 1.0,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Latents (B, C, g, g) from per-image noise {'coarse'|'fine': (head noise, order)}."""
        coarse_steps, fine_steps = steps or self.default_steps()
        C, g, _ = self.latent_shape
        pool = self.config.pool
        coarse = None
        if self.coarse is not None:
            coarse = self.coarse.sample(*noise["coarse"], labels, coarse_steps, cfg, temperature)  # (B, Nc, Dc)
        if self.config.mode == "no_fine":
            return unpatchify(coarse * self.coarse_std, C, pool)
        context = self.context(coarse) if coarse is not None else None
        fine = self.fine.sample(*noise["fine"], labels, fine_steps, cfg, temperature, context)  # (B, Nf, Df)
        fine = self._fine_grid(fine * self.fine_std)
        if coarse is None:
            return fine
        return merge_coarse_fine(from_tokens(coarse * self.coarse_std, self.coarse_side), fine, pool)
