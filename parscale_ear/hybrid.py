"""The coarse/fine hybrid: a coarse stage for global structure on the pooled grid and a fine stage
for the local residual on the full grid, each a generation stage of a kind of stage_kinds.py (the flow stage
EnergyFlowGenerator or the masked autoregressive EnergyGenerator).

Coarse tokens + continuous residual after HART (Tang et al., arXiv 2410.10812), here both continuous.
A mode names an ordered list of stages (`STAGE_LISTS`), each with its token mapping and context
source (each mode is a separately trained model, see docs/DESIGN.md):
  full      coarse = avg_pool(z, pool) on the g/pool grid; fine = z - upsample(coarse) on the g grid,
            generated conditioned on the (upsampled) coarse tokens.
  no_coarse one stage on the g grid generating z itself; steps = coarse_steps + fine_steps.
  no_fine   one stage on the g/pool grid whose tokens are pool x pool patches of z (all of z).
  joint     one flow stage, one network pass a step, over both: (g/p^2)^2 coarse tokens (the p x p block means of z,
            as p x p patches of their grid) then (g/p)^2 fine tokens (z less its block means, as p x p patches), p =
            fine_patch; z = the upsampled means + the residual. The coarse tokens may run ahead in time
            (FlowConfig.coarse_lead), so the coarse structure settles first inside every pass.
Steps are one value per stage of the list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_field_types, check_int
from .flow_config import FlowConfig
from .latent_generator import LatentGenerator, Noise
from .stage import GeneratorConfig
from .stage_kinds import make_stage, stage_config, stored_stage


# ----------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One generation stage: the module slot (and GeneratorConfig) it uses, how latents map to its
    tokens, and which earlier stage's output conditions it."""

    name: str  # "coarse" or "fine": the module attribute and the HybridConfig field of its generator
    tokens: str  # "pooled" (pool x pool means on the g/pool grid), "residual" (z - upsampled means, as
    #              fine_patch patches), "latent" (z as fine_patch patches), "patches" (pool x pool patches of z),
    #              "joint" (coarse block means, then the residual: see the module's docstring)
    context: str | None = None  # the stage whose output is this one's per-token context


# Each mode is an ordered list of stages; the hybrid runs them in this order.
STAGE_LISTS: dict[str, tuple[Stage, ...]] = {
    "full": (Stage("coarse", "pooled"), Stage("fine", "residual", context="coarse")),
    "no_coarse": (Stage("fine", "latent"),),
    "no_fine": (Stage("coarse", "patches"),),
    "joint": (Stage("fine", "joint"),),
}
MODES = tuple(STAGE_LISTS)  # a mode is the name of a stage list


@dataclass
class HybridConfig:
    """The stages of ParScale-EAR and their token geometry; the defaults are the shipped design's (flow stages, 2x2
    fine patches, 2 + 2 steps), each stage's own fields at its kind's defaults."""

    mode: str = "full"
    pool: int = 4  # coarse grid = latent grid / pool (16x16 -> 4x4)
    fine_patch: int = 2  # fine tokens are fine_patch x fine_patch latent patches (2: 64 tokens of 4C dims)
    coarse: GeneratorConfig = field(default_factory=FlowConfig)
    fine: GeneratorConfig = field(default_factory=FlowConfig)
    coarse_steps: int = 2  # default steps of the coarse stage
    fine_steps: int = 2  # default steps of the fine stage

    def __post_init__(self):
        self.coarse = stage_config(self.coarse, "HybridConfig.coarse")
        self.fine = stage_config(self.fine, "HybridConfig.fine")
        check_field_types(self)
        check_int(self.pool, "HybridConfig.pool")
        check_int(self.fine_patch, "HybridConfig.fine_patch")
        if self.mode not in MODES:
            raise ValueError(f"HybridConfig: mode must be one of {MODES}, got {self.mode!r}")
        one_stage = self.mode in ("no_coarse", "joint")  # one stage runs coarse_steps + fine_steps: one may be 0
        if (min(self.coarse_steps, self.fine_steps) < (0 if one_stage else 1)
                or self.coarse_steps + self.fine_steps < 1):
            raise ValueError(f"HybridConfig: steps must be >= 1 (in mode {self.mode!r}), got {self.coarse_steps}, "
                             f"{self.fine_steps}")


# what a stored hybrid that omits a field meant: the defaults before 0.4 (the MAR design); `to_dict` writes every
# field, so only configs written by hand or before a field existed omit one
STORED_DEFAULTS = {"fine_patch": 1, "coarse_steps": 4, "fine_steps": 1}


def stored_hybrid(fields: dict, name: str) -> dict:
    """A stored hybrid's fields as this version reads them: an omitted field at its earlier default, each stage's
    fields by `stage_kinds.stored_stage`."""
    fields = {**STORED_DEFAULTS, **fields}
    for stage in ("coarse", "fine"):
        value = fields.get(stage, {})
        fields[stage] = stored_stage(value, f"{name}.{stage}") if isinstance(value, dict) else value
    return fields


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


# ----------------------------------------------------------------------------- module
class CoarseFineHybrid(LatentGenerator):
    """The generation stages of one mode, run in order (`stage_list`), and the map between latents
    and each stage's normalised tokens (the LatentGenerator of ParScale-EAR)."""

    config_class = HybridConfig

    def __init__(self, config: HybridConfig, latent_shape: tuple[int, int, int], num_classes: int):
        super().__init__(config, latent_shape, num_classes)
        cfg = config
        C, g, g2 = latent_shape
        p = cfg.fine_patch
        if g != g2 or g % cfg.pool or g % p:
            raise ValueError(f"CoarseFineHybrid: latent grid {g}x{g2} is not square or not divisible by pool {cfg.pool} "
                             f"and fine_patch {p}")
        self.coarse_side = g // cfg.pool
        self.stage_list = STAGE_LISTS[cfg.mode]
        if cfg.mode == "joint" and (p < 2 or g % (p * p)):
            raise ValueError(f"CoarseFineHybrid: mode 'joint' needs fine_patch >= 2 and a latent grid divisible by "
                             f"fine_patch^2, got grid {g} and fine_patch {p}")
        self.joint_coarse = (g // (p * p)) ** 2 if cfg.mode == "joint" else 0  # a joint stage's leading coarse tokens
        self.coarse = self.fine = None
        for stage in self.stage_list:
            tokens, dim = self._geometry(stage.tokens)
            context_dim = dim if stage.context else 0  # the context arrives on this stage's token grid
            setattr(self, stage.name, make_stage(getattr(cfg, stage.name), tokens, dim, num_classes, context_dim,
                                                 lead_tokens=self.joint_coarse if stage.tokens == "joint" else 0))
        # per-stage token std (set from data by `fit_token_scales`) so tokens enter at unit scale
        self.register_buffer("coarse_std", torch.ones(()))
        self.register_buffer("fine_std", torch.ones(()))

    def _geometry(self, tokens: str) -> tuple[int, int]:
        """(number of tokens, token size) of a token mapping."""
        C, g, _ = self.latent_shape
        pool, p = self.config.pool, self.config.fine_patch
        return {"pooled": ((g // pool) ** 2, C), "patches": ((g // pool) ** 2, C * pool * pool),
                "residual": ((g // p) ** 2, C * p * p), "latent": ((g // p) ** 2, C * p * p),
                "joint": ((g // (p * p)) ** 2 + (g // p) ** 2, C * p * p)}[tokens]

    @property
    def stages(self) -> dict[str, nn.Module]:
        """The stage modules by name, in the order they run."""
        return {s.name: getattr(self, s.name) for s in self.stage_list}

    def default_steps(self) -> tuple[int, ...]:
        """Steps per stage, matched to `stage_list`; a one-stage model without the coarse split
        ("latent" tokens) runs coarse_steps + fine_steps."""
        c = self.config
        per_stage = {"pooled": c.coarse_steps, "patches": c.coarse_steps, "residual": c.fine_steps,
                     "latent": c.coarse_steps + c.fine_steps, "joint": c.coarse_steps + c.fine_steps}
        return tuple(per_stage[s.tokens] for s in self.stage_list)

    # ------------------------------------------------------------------ token maps
    def tokens(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unnormalised tokens of each stage, by name."""
        pool = self.config.pool
        maps = {"pooled": lambda z: to_tokens(F.avg_pool2d(z, pool)),
                "residual": lambda z: self._fine_tokens(split_coarse_fine(z, pool)[1]),
                "latent": self._fine_tokens,
                "patches": lambda z: patchify(z, pool),
                "joint": lambda z: torch.cat(self._joint_parts(z), dim=1)}
        return {s.name: maps[s.tokens](latents) for s in self.stage_list}

    def _joint_parts(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A joint stage's coarse tokens (the p x p block means as p x p patches of their grid) and fine tokens (the
        residual as p x p patches), p = fine_patch."""
        p = self.config.fine_patch
        means, residual = split_coarse_fine(latents, p)
        return patchify(means, p), patchify(residual, p)

    def _latents_part(self, stage: Stage, tokens: torch.Tensor) -> torch.Tensor:
        """A stage's (unnormalised) tokens as its additive part of the latent grid."""
        C = self.latent_shape[0]
        if stage.tokens == "pooled":
            return F.interpolate(from_tokens(tokens, self.coarse_side), scale_factor=self.config.pool, mode="nearest")
        if stage.tokens == "patches":
            return unpatchify(tokens, C, self.config.pool)
        if stage.tokens == "joint":  # the means from the coarse tokens alone: the residual's own means are dropped
            p, n = self.config.fine_patch, self.joint_coarse
            residual = split_coarse_fine(unpatchify(tokens[:, n:], C, p), p)[1]
            return merge_coarse_fine(unpatchify(tokens[:, :n], C, p), residual, p)
        return self._fine_grid(tokens)

    def latent_noise(self, x1: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit Gaussian noise z (B, C, g, g) on the latent grid assembled from each stage's unit Gaussian x_1
        {name: (B, N, D)}: the coarse x_1 sets the pool x pool block means (divided by pool, their std under unit
        noise) and the fine x_1 only the detail inside the blocks (its own block means removed), so independent
        stage draws give z ~ N(0, I), and a latent-grid teacher's coupling z -> x0 splits into one per stage."""
        pool, z = self.config.pool, 0
        if self.joint_coarse:
            raise ValueError("a joint coarse/fine model's noise covers the coarse tokens and the residual apart: it "
                             "is not one draw on the latent grid, so it cannot be matched to a latent-grid teacher")
        for stage in self.stage_list:
            tokens = x1[stage.name]
            if stage.tokens == "pooled":
                part = F.interpolate(from_tokens(tokens, self.coarse_side), scale_factor=pool, mode="nearest") / pool
            elif stage.tokens == "residual":
                part = split_coarse_fine(self._fine_grid(tokens), pool)[1]
            else:  # one stage draws the whole grid
                part = self._latents_part(stage, tokens)
            z = z + part
        return z

    def _fine_tokens(self, grid: torch.Tensor) -> torch.Tensor:
        p = self.config.fine_patch
        return patchify(grid, p) if p > 1 else to_tokens(grid)

    def _fine_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        C, g, _ = self.latent_shape
        p = self.config.fine_patch
        return unpatchify(tokens, C, p) if p > 1 else from_tokens(tokens, g)

    def _std(self, stage: Stage) -> torch.Tensor:
        """The stage's token std: one value, or for a joint stage one per token (N, 1): coarse_std for its coarse
        tokens, fine_std for the residual's."""
        if stage.tokens == "joint":
            n, total = self.joint_coarse, self._geometry("joint")[0]
            return torch.cat([self.coarse_std.expand(n), self.fine_std.expand(total - n)])[:, None]
        return getattr(self, f"{stage.name}_std")

    @torch.no_grad()
    def fit_token_scales(self, latents: torch.Tensor) -> dict[str, float]:
        """Set each stage's token std from a sample of (scaled) latents; returns the values (a joint stage: its
        coarse and its fine tokens' std apart)."""
        if self.joint_coarse:
            parts = dict(zip(("coarse", "fine"), self._joint_parts(latents)))
        else:
            parts = self.tokens(latents)
        out = {}
        for name, tok in parts.items():
            std = tok.float().std().clamp_min(1e-6)
            getattr(self, f"{name}_std").fill_(std)
            out[name] = std.item()
        return out

    def context(self, coarse_tokens: torch.Tensor) -> torch.Tensor:
        """Normalised coarse tokens (B, Nc, C) -> per-fine-position context (B, Nf, C * p * p)."""
        grid = from_tokens(coarse_tokens, self.coarse_side)
        return self._fine_tokens(F.interpolate(grid, scale_factor=self.config.pool, mode="nearest"))

    # ------------------------------------------------------------------ training and sampling
    def loss(self, latents: torch.Tensor | None, labels: torch.Tensor | None = None,
             pairs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Energy loss of each stage on (scaled) latents (B, C, g, g) with fresh noise and teacher-forced
        context; or on a teacher's `pairs` ({NAME_x1, NAME_x0} per stage: its noise and its normalised output
        tokens, from `teacher_pairs`), the context then the teacher's own earlier stage."""
        if pairs is not None:
            normalised = {s.name: pairs[f"{s.name}_x0"] for s in self.stage_list}
        else:
            toks = self.tokens(latents)
            normalised = {s.name: toks[s.name] / self._std(s) for s in self.stage_list}
        out = {}
        for stage in self.stage_list:
            context = self.context(normalised[stage.context]) if stage.context else None
            paired = {} if pairs is None else {"noise": pairs[f"{stage.name}_x1"]}  # a teacher's x_1 (flow stages)
            out[stage.name] = getattr(self, stage.name).loss(normalised[stage.name], labels, context, **paired)
        out["loss"] = sum(out.values())
        return out

    # ------------------------------------------------------------------ sampling (LatentGenerator)
    def draw(self, generator: torch.Generator) -> Noise:
        """One image's noise, stage after stage (coarse before fine), each stage's by the names its `sample` takes."""
        return {name: stage.draw(generator) for name, stage in self.stages.items()}

    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> Noise:
        return {name: stage.draw_batch(batch, device, dtype, generator) for name, stage in self.stages.items()}

    def stage_passes(self, name: str, steps: int, temperature: float, solver: str | None) -> int:
        """The stage's own count: one pass a step, a Heun flow stage's corrections added."""
        return self.stages[name].passes(steps, temperature, solver)

    def sample_stage(self, name: str, noise: Noise, labels: torch.Tensor | None, steps: int, cfg: float,
                     temperature: float, solver: str | None, earlier: dict[str, torch.Tensor]) -> torch.Tensor:
        """A stage's normalised output tokens (B, N, D), conditioned on its context stage's output."""
        stage = next(s for s in self.stage_list if s.name == name)
        context = self.context(earlier[stage.context]) if stage.context else None
        return self.stages[name].sample(**{"xi": None, **noise[name]}, labels=labels, steps=steps, cfg=cfg,
                                        temperature=temperature, context=context, solver=solver)

    def latents(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latents (B, C, g, g): the sum of each stage's part, from its normalised output tokens."""
        return sum(self._latents_part(stage, outputs[stage.name] * self._std(stage)) for stage in self.stage_list)
