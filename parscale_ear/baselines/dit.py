"""The DiT peer: diffusers' `DiTTransformer2DModel` (Peebles & Xie, ICCV 2023) trained with rectified
flow (Liu et al. 2022; logit-normal times as in SD3, Esser et al. 2024) on the LiteVAE's latents, and
sampled with Euler or Heun steps and classifier-free guidance.

It stands where the coarse/fine hybrid stands in `ParScaleEAR` (same `loss`, `sample`, `stages`,
`fit_token_scales`), so training, EMA, resume, DDP, per-image seeds, decoding and FID are shared.
Needs the optional `diffusers` package (`pip install 'parscale-ear[baselines]'`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..generator import check_solver
from ..utils import check_int, check_real


@dataclass
class DiTConfig:
    """DiT-S/2 by default (12 layers, 6 heads x 64 = 384 wide, patch 2)."""

    num_layers: int = 12
    heads: int = 6
    head_dim: int = 64
    patch_size: int = 2
    steps: int = 8  # default sampling steps
    solver: str = "euler"  # "euler" (1 pass a step) or "heun" (2 passes a step, 1 on the last)
    logit_normal_mean: float = 0.0  # training t = sigmoid(N(mean, std)) (SD3)
    logit_normal_std: float = 1.0
    time_shift: float = 1.0  # sampling grid shift (> 1: more steps at high noise)

    def __post_init__(self):
        for name in ("num_layers", "heads", "head_dim", "patch_size", "steps"):
            check_int(getattr(self, name), f"DiTConfig.{name}")
        check_solver(self.solver, "DiTConfig: solver")
        check_real(self.logit_normal_std, "DiTConfig.logit_normal_std", minimum=0.0, inclusive=False)
        check_real(self.time_shift, "DiTConfig.time_shift", minimum=0.0, inclusive=False)


PEERS = {  # DiT sizes (Peebles & Xie, Table 1); the latent and patch 2 follow the VAE
    "dit-s": DiTConfig(num_layers=12, heads=6, head_dim=64),
    "dit-b": DiTConfig(num_layers=12, heads=12, head_dim=64),
}


def _diffusers_dit():
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError:
        raise ImportError("the DiT peer needs diffusers: pip install 'parscale-ear[baselines]'") from None
    return DiTTransformer2DModel


class DiTBaseline(nn.Module):
    """Rectified flow x_t = (1 - t) x0 + t eps with a DiT predicting v = eps - x0; one stage named 'dit'."""

    def __init__(self, config: DiTConfig, latent_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.config = config
        C, g, _ = latent_shape
        if g % config.patch_size:
            raise ValueError(f"DiTBaseline: latent grid {g} is not divisible by patch_size {config.patch_size}")
        self.latent_shape, self.num_classes = (C, g, g), num_classes
        # num_embeds_ada_norm = classes; diffusers adds the null class (index num_classes) and drops
        # labels with probability 0.1 in training mode, as DiT does for CFG.
        self.dit = _diffusers_dit()(
            num_attention_heads=config.heads, attention_head_dim=config.head_dim, in_channels=C, out_channels=C,
            num_layers=config.num_layers, sample_size=g, patch_size=config.patch_size,
            num_embeds_ada_norm=max(1, num_classes),
        )
        self.register_buffer("latent_std", torch.ones(()))
        self.num_tokens = (g // config.patch_size) ** 2

    # the interface the pipeline and the training loop use ---------------------------------
    @property
    def stages(self) -> dict[str, nn.Module]:
        return {"dit": self}

    def default_steps(self) -> tuple[int]:
        """One stage: the solver's steps."""
        return (self.config.steps,)

    @torch.no_grad()
    def fit_token_scales(self, latents: torch.Tensor) -> dict[str, float]:
        std = latents.float().std().clamp_min(1e-6)
        self.latent_std.fill_(std)
        return {"dit": std.item()}

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor]:
        """One image's randomness: x_1 (C, g, g)."""
        return (torch.randn(self.latent_shape, generator=generator),)

    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        return (torch.randn(batch, *self.latent_shape, generator=generator, device=device, dtype=dtype),)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """v (B, C, g, g) at x_t (B, C, g, g), t (B,) in [0, 1]; DiT's timestep embedding sees 1000 t."""
        return self.dit(x, timestep=t * 1000.0, class_labels=labels, return_dict=False)[0]

    def _labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if labels is None or self.num_classes == 0:
            return torch.full((batch,), self.num_classes if self.num_classes else 0, dtype=torch.long, device=device)
        return labels

    def loss(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x0 = latents / self.latent_std
        B = x0.shape[0]
        c = self.config
        t = torch.sigmoid(c.logit_normal_mean + c.logit_normal_std * torch.randn(B, device=x0.device))
        eps = torch.randn_like(x0)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        v = self.velocity(x_t, t, self._labels(labels, B, x0.device))
        loss = (v.float() - (eps - x0).float()).pow(2).mean()
        return {"dit": loss, "loss": loss}

    def _guided(self, x, t, labels, cfg):
        B = x.shape[0]
        tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
        if cfg == 1.0:
            return self.velocity(x, tt, labels)
        null = torch.full_like(labels, self.num_classes)
        v_c, v_u = self.velocity(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).chunk(2)
        return v_u + cfg * (v_c - v_u)

    @torch.no_grad()
    def sample(self, noise: dict, labels: torch.Tensor | None = None, steps: tuple[int, int] | None = None,
               cfg: float = 1.0, temperature: float = 1.0, solver: str | None = None) -> torch.Tensor:
        """Latents (B, C, g, g) from x_1 = noise['dit'][0] in `steps[1]` solver steps (`solver`, default
        the config's); temperature scales x_1 (1 = the model's distribution)."""
        heun = self.check_solver(solver) == "heun"
        (x,) = noise["dit"]
        steps = (steps or self.default_steps())[-1]
        if cfg != 1.0 and self.num_classes == 0:
            raise ValueError("cfg != 1 needs a class-conditional model; this one is unconditional")
        labels = self._labels(labels, x.shape[0], x.device)
        from ..energy_flow import time_grid

        times = time_grid(steps, self.config.time_shift)
        x = x * temperature
        for k in range(steps):
            t, t_next = times[k], times[k + 1]
            v = self._guided(x, t, labels, cfg)
            if heun and t_next > 0:
                x_pred = x + (t_next - t) * v
                v = 0.5 * (v + self._guided(x_pred, t_next, labels, cfg))
            x = x + (t_next - t) * v
        return x * self.latent_std

    def passes(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> int:
        """Network evaluations per image for `steps` solver steps (an int, or the per-stage tuple whose last
        entry is the DiT's), without CFG's doubling."""
        steps = steps[-1] if isinstance(steps, (tuple, list)) else steps
        return steps if self.check_solver(solver) == "euler" else 2 * steps - 1

    def check_solver(self, solver: str | None = None) -> str:
        """The solver a call uses: `solver`, else the config's (checked)."""
        return check_solver(self.config.solver if solver is None else solver)
