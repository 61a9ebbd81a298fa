"""The DiT peers: diffusers' `DiTTransformer2DModel` (Peebles & Xie, ICCV 2023) on the LiteVAE's latents,
trained with one of two objectives and sampled with the matching few-step sampler:

- "flow": rectified flow (Liu et al. 2022; logit-normal times as in SD3, Esser et al. 2024), the network
  predicts v = eps - x0; Euler or Heun steps (`solvers.py`), classifier-free guidance.
- "meanflow": MeanFlow (Geng, Deng, Bai, Kolter, He 2025, arXiv 2505.13447), the network predicts the
  average velocity u(z_t, r, t) over [r, t], trained from the MeanFlow identity u = v - (t - r) du/dt with
  one JVP (`torch.func.jvp`) and the paper's adaptive loss weight; one pass a step, z_r = z_t - (t - r) u.
  Each block's conditioning embeds t as DiT does plus t - r through a second, zero-initialised timestep
  embedder (`_TwoTimeEmbedding`), so at initialisation the network is the flow peer's.

A peer is a generator beside ParScale-EAR's coarse/fine hybrid: a LatentGenerator (latent_generator.py) on the
project's LiteVAE, its model config a `PeerConfig` (model_config.py; presets "dit-xs", "dit-s", "dit-b",
"meanflow-s"), so training, EMA, resume, DDP, per-image seeds, decoding and FID are shared.
Needs the optional `diffusers` package (`pip install 'parscale-ear[baselines]'`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_field_types, check_int, check_real
from ..guidance import check_guidance, guided
from ..latent_generator import LatentGenerator, Noise
from ..meanflow import interval, meanflow_loss
from ..solvers import check_solver, euler_step, heun_step, solver_passes, time_grid

OBJECTIVES = ("flow", "meanflow")


@dataclass
class DiTConfig:
    """DiT-S/2 by default (12 layers, 6 heads x 64 = 384 wide, patch 2)."""

    num_layers: int = 12
    heads: int = 6
    head_dim: int = 64
    patch_size: int = 2
    objective: str = "flow"  # "flow" (rectified flow, v) or "meanflow" (average velocity u(z, r, t))
    steps: int = 8  # default sampling steps
    solver: str = "euler"  # flow: "euler" (1 pass a step) or "heun" (2 passes a step, 1 on the last)
    logit_normal_mean: float = 0.0  # training t = sigmoid(N(mean, std)) (SD3); MeanFlow draws r and t this way
    logit_normal_std: float = 1.0
    time_shift: float = 1.0  # sampling grid shift (> 1: more steps at high noise)
    # the timestep embedding sees time_scale * t: DiT's 1000 (its diffusion steps), or 1 as MeanFlow's SiT, which
    # keeps d/dt of the embedding bounded (the MeanFlow target carries (t - r) du/dt)
    time_scale: float = 1000.0
    # meanflow only (the paper's ImageNet ablation winners): share of training pairs with r != t (the rest
    # are plain flow matching, r = t), and the adaptive weight 1 / (||err||^2 + loss_eps)^loss_power
    meanflow_ratio: float = 0.25
    loss_power: float = 1.0
    loss_eps: float = 1e-3

    def __post_init__(self):
        check_field_types(self)
        for name in ("num_layers", "heads", "head_dim", "patch_size", "steps"):
            check_int(getattr(self, name), f"DiTConfig.{name}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"DiTConfig: objective must be one of {OBJECTIVES}, got {self.objective!r}")
        check_solver(self.solver, "DiTConfig: solver")
        if self.objective == "meanflow" and self.solver != "euler":
            raise ValueError("DiTConfig: a meanflow peer samples with its own one-pass steps; solver must be 'euler'")
        check_real(self.logit_normal_std, "DiTConfig.logit_normal_std", minimum=0.0, inclusive=False)
        check_real(self.time_shift, "DiTConfig.time_shift", minimum=0.0, inclusive=False)
        self.time_scale = check_real(self.time_scale, "DiTConfig.time_scale", minimum=0.0, inclusive=False)
        if not 0 <= self.meanflow_ratio <= 1:
            raise ValueError(f"DiTConfig: meanflow_ratio must be in [0, 1], got {self.meanflow_ratio}")
        check_real(self.loss_power, "DiTConfig.loss_power", minimum=0.0)
        check_real(self.loss_eps, "DiTConfig.loss_eps", minimum=0.0, inclusive=False)


PEERS = {  # DiT sizes (Peebles & Xie, Table 1); the latent and patch 2 follow the VAE
    "dit-s": DiTConfig(num_layers=12, heads=6, head_dim=64),
    # the size of ParScale-EAR's Fashion-MNIST generators (7.6M parameters on 4x16x16 latents): 10 layers, 192 wide
    "dit-xs": DiTConfig(num_layers=10, heads=3, head_dim=64),
    "dit-b": DiTConfig(num_layers=12, heads=12, head_dim=64),
    # MeanFlow's ImageNet recipe: (r, t) from logit-normal(-0.4, 1), 25% of pairs with r != t, p = 1, raw t (as SiT)
    "meanflow-s": DiTConfig(num_layers=12, heads=6, head_dim=64, objective="meanflow", steps=1, logit_normal_mean=-0.4,
                            time_scale=1.0),
}


def _diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError("the DiT peers need diffusers: pip install 'parscale-ear[baselines]'") from None
    from diffusers import DiTTransformer2DModel
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    return DiTTransformer2DModel, TimestepEmbedding, Timesteps


class _TwoTimeEmbedding(nn.Module):
    """A DiT block's conditioning for MeanFlow: diffusers' timestep + label embedding of t (`base`) plus an
    embedding of the interval t - r. `timestep` is (B, 2): t and t - r, both times the config's time_scale."""

    def __init__(self, base: nn.Module, width: int):
        super().__init__()
        _, TimestepEmbedding, Timesteps = _diffusers()
        self.base = base
        self.interval_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.interval_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=width)
        nn.init.zeros_(self.interval_embedder.linear_2.weight)  # starts as the flow peer's conditioning
        nn.init.zeros_(self.interval_embedder.linear_2.bias)

    def forward(self, timestep: torch.Tensor, class_labels: torch.Tensor, hidden_dtype=None) -> torch.Tensor:
        t, interval = timestep.unbind(-1)
        extra = self.interval_embedder(self.interval_proj(interval).to(dtype=hidden_dtype))
        return self.base(t, class_labels, hidden_dtype=hidden_dtype) + extra


class DiTBaseline(LatentGenerator):
    """x_t = (1 - t) x0 + t eps with a DiT predicting v = eps - x0 (flow) or u(x_t, r, t) (meanflow); a
    LatentGenerator of one stage named 'dit', whose noise is x_1 on the latent grid."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig, latent_shape: tuple[int, int, int], num_classes: int):
        super().__init__(config, latent_shape, num_classes)
        C, g, _ = latent_shape
        if g % config.patch_size:
            raise ValueError(f"DiTBaseline: latent grid {g} is not divisible by patch_size {config.patch_size}")
        DiTTransformer2DModel, _, _ = _diffusers()
        # num_embeds_ada_norm = classes; diffusers adds the null class (index num_classes) and drops
        # labels with probability 0.1 in training mode, as DiT does for CFG.
        self.dit = DiTTransformer2DModel(
            num_attention_heads=config.heads, attention_head_dim=config.head_dim, in_channels=C, out_channels=C,
            num_layers=config.num_layers, sample_size=g, patch_size=config.patch_size,
            num_embeds_ada_norm=max(1, num_classes),
        )
        if config.objective == "meanflow":
            width = config.heads * config.head_dim
            for block in self.dit.transformer_blocks:
                block.norm1.emb = _TwoTimeEmbedding(block.norm1.emb, width)
        self.register_buffer("latent_std", torch.ones(()))
        self.num_tokens = (g // config.patch_size) ** 2

    # the LatentGenerator's parts ---------------------------------------------------------------
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

    def draw(self, generator: torch.Generator) -> Noise:
        """One image's noise: x_1 (C, g, g)."""
        return {"dit": {"x1": torch.randn(self.latent_shape, generator=generator)}}

    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> Noise:
        return {"dit": {"x1": torch.randn(batch, *self.latent_shape, generator=generator, device=device, dtype=dtype)}}

    def stage_passes(self, name: str, steps: int, temperature: float, solver: str | None) -> int:
        """Network evaluations per image of `steps` solver steps (Euler: one a step; Heun: two but on the last)."""
        return solver_passes(steps, self.check_solver(solver))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        """The network at x_t (B, C, g, g), t (B,) in [0, 1]: v (flow), or u over [r, t] (meanflow; r (B,),
        default r = t, the instantaneous velocity). The timestep embedding sees time_scale * t (DiT: 1000 t)."""
        scale = self.config.time_scale
        timestep = t * scale
        if self.config.objective == "meanflow":
            timestep = torch.stack([timestep, (t - (t if r is None else r)) * scale], dim=-1)
        return self.dit(x, timestep=timestep, class_labels=labels, return_dict=False)[0]

    def _labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if labels is None or self.num_classes == 0:
            return torch.full((batch,), self.num_classes if self.num_classes else 0, dtype=torch.long, device=device)
        return labels

    def _times(self, batch: int, device) -> torch.Tensor:
        c = self.config
        return torch.sigmoid(c.logit_normal_mean + c.logit_normal_std * torch.randn(batch, device=device))

    def loss(self, latents: torch.Tensor, labels: torch.Tensor | None = None,
             pairs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if pairs is not None:
            raise ValueError("a DiT peer trains on latents, not on a teacher's pairs")
        x0 = latents / self.latent_std
        B = x0.shape[0]
        c = self.config
        labels = self._labels(labels, B, x0.device)
        t = self._times(B, x0.device)
        if c.objective == "meanflow":  # (r, t): two draws, t the larger; r = t (flow matching) but for a share
            t, r = interval(t, self._times(B, x0.device), c.meanflow_ratio)
        eps = torch.randn_like(x0)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        v = eps - x0
        if c.objective == "meanflow":
            loss, mse = self._meanflow_loss(x_t, v, t, r, labels)
            return {"dit": loss, "loss": loss, "mse": mse}
        loss = (self.velocity(x_t, t, labels).float() - v.float()).pow(2).mean()
        return {"dit": loss, "loss": loss}

    def _meanflow_loss(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MeanFlow's loss (meanflow.py) of the network's u over [r, t], and the unweighted error to log."""
        return meanflow_loss(lambda x, tt, rr: self.velocity(x, tt, labels, rr), x_t, v, t, r, self.config.loss_power,
                             self.config.loss_eps)

    def _guided(self, x, t, labels, cfg, r=None):
        B = x.shape[0]
        tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
        extra = () if r is None else (torch.full((B,), r, device=x.device, dtype=x.dtype),)  # meanflow's r
        return guided(lambda y, x, tt, *r: self.velocity(x, tt, y, *r), labels, self.num_classes, cfg, x, tt, *extra)

    def sample_stage(self, name: str, noise: Noise, labels: torch.Tensor | None, steps: int, cfg: float,
                     temperature: float, solver: str | None, earlier: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised latents (B, C, g, g) from x_1 = noise['dit']['x1'] in `steps` steps: Euler or Heun steps of the
        flow (`solver`, default the config's), or MeanFlow's z_r = z_t - (t - r) u(z_t, r, t); temperature scales
        x_1 (1 = the model's distribution)."""
        heun = self.check_solver(solver) == "heun"
        x = noise["dit"]["x1"]
        check_guidance(cfg, self.num_classes)
        labels = self._labels(labels, x.shape[0], x.device)
        meanflow = self.config.objective == "meanflow"
        times = time_grid(steps, self.config.time_shift)
        x = x * temperature
        for k in range(steps):
            t, t_next = times[k], times[k + 1]
            v = self._guided(x, t, labels, cfg, t_next if meanflow else None)
            if heun and t_next > 0:
                x = heun_step(x, v, t, t_next, lambda y, s: self._guided(y, s, labels, cfg))
            else:  # an Euler step of v, or MeanFlow's z_r = z_t - (t - r) u
                x = euler_step(x, v, t, t_next)
        return x

    def latents(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["dit"] * self.latent_std

    def check_solver(self, solver: str | None = None) -> str:
        """The solver a call uses: `solver`, else the config's (checked; a meanflow peer has only its own)."""
        solver = check_solver(self.config.solver if solver is None else solver)
        if self.config.objective == "meanflow" and solver != "euler":
            raise ValueError(f"solver {solver!r}: a meanflow peer samples with its own one-pass steps (solver 'euler')")
        return solver
