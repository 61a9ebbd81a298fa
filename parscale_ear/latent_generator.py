"""LatentGenerator: what every generator of latents does, declared once, so the pipeline (a LiteVAE plus a
generator, pipeline.py), training, distillation and evaluation use each alike. Our coarse/fine hybrid of energy
stages (hybrid.py) and the DiT peers (baselines/dit.py) implement it side by side, as diffusers keeps models,
pipelines and schedulers apart.

A generator is a list of named stages run in order, each with its own steps. It draws each image's noise as named
parts per stage (`Noise`: "x1" is a flow's starting noise, "xi" the energy head's noise, "order" a masked stage's
random order), samples latents from given noise in a few network passes, counts those passes, fits the scale of its
tokens on data and has a training loss. It is built as `cls(config, latent_shape, num_classes)`.

The sampling arguments mean one thing everywhere:
- steps: None (the generator's defaults), an int (that many steps in every stage) or one int per stage.
- cfg: classifier-free guidance (guidance.py); 1 is one unguided pass a step, otherwise two.
- solver: "euler" or "heun" for a flow's mean path (None: each stage's config); a Heun step corrects each step but
  the last with a second pass. A stage that draws from its energy head (temperature > 0) takes DDIM steps with the
  drawn x0 and refuses an explicit "heun", which would change nothing.
- temperature: how far a sample strays from the generator's most likely path, 1 being the trained distribution:
  * flow stages with a mean head (the shipped design): x0 = mean + temperature * the energy head's residual, so 0 is
    the flow's deterministic path from x_1;
  * flow stages without a mean head and masked (MAR) stages: the energy head's adaLN shift is scaled (EAR);
  * the DiT peers: x_1 is scaled (below 1 draws closer to the mode).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from .checks import check_int
from .guidance import check_guidance

# per stage (in the order they run), its named draws for a batch: {"coarse": {"xi": ..., "x1": ...}, ...}
Noise = dict[str, dict[str, torch.Tensor]]


class LatentGenerator(nn.Module, ABC):
    """A generator of latents (B, C, g, g) for the LiteVAE's decoder; see the module doc for what it does and what
    the sampling arguments mean."""

    config_class: ClassVar[type]  # its config dataclass, the one `config` holds

    def __init__(self, config: Any, latent_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.config, self.latent_shape, self.num_classes = config, tuple(latent_shape), num_classes

    # ------------------------------------------------------------------ what each generator defines
    @property
    @abstractmethod
    def stages(self) -> dict[str, nn.Module]:
        """Its stages by name, in the order they run; each holds its sampling settings in `.config`."""

    @abstractmethod
    def default_steps(self) -> tuple[int, ...]:
        """Steps per stage when a call gives none."""

    @abstractmethod
    def draw(self, generator: torch.Generator) -> Noise:
        """One image's noise (no batch dimension), every draw from `generator`, so image i depends on its seed alone."""

    @abstractmethod
    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> Noise:
        """A batch's noise drawn on `device` in one go: the fast path, not tied to per-image seeds."""

    @abstractmethod
    def stage_passes(self, name: str, steps: int, temperature: float, solver: str | None) -> int:
        """Network passes per image of stage `name` (without guidance's doubling); a one-line ValueError where the
        stage cannot sample so (too many steps, a solver it does not take)."""

    @abstractmethod
    def sample_stage(self, name: str, noise: Noise, labels: torch.Tensor | None, steps: int, cfg: float,
                     temperature: float, solver: str | None, earlier: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage `name`'s output (in its own normalised units) from the batch's noise and the earlier stages' outputs."""

    @abstractmethod
    def latents(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latents (B, C, g, g) from every stage's output."""

    @abstractmethod
    def fit_token_scales(self, latents: torch.Tensor) -> dict[str, float]:
        """Set the scale of each stage's tokens from a sample of (scaled) latents (B, C, g, g); returns the values."""

    @abstractmethod
    def loss(self, latents: torch.Tensor | None, labels: torch.Tensor | None = None,
             pairs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Training losses on (scaled) latents, or on a teacher's `pairs` where the generator takes them:
        {"loss": the total, one entry per stage, ...}; draws from the global RNG."""

    # ------------------------------------------------------------------ what every generator shares
    def resolve_steps(self, steps: int | tuple[int, ...] | list[int] | None) -> tuple[int, ...]:
        """Steps per stage from None (the defaults), an int (every stage) or one int per stage."""
        names = list(self.stages)
        if steps is None:
            return tuple(self.default_steps())
        if isinstance(steps, (tuple, list)):
            if len(steps) != len(names):
                one = " (this model has one stage: pass an int)" if len(names) == 1 else ""
                raise ValueError(f"steps: an int, or one per stage {names}{one}; got {tuple(steps)}")
            return tuple(check_int(k, f"steps[{i}] ({name})") for i, (k, name) in enumerate(zip(steps, names)))
        return (check_int(steps, "steps"),) * len(names)

    def passes(self, steps: int | tuple[int, ...] | None = None, temperature: float = 0.0,
               solver: str | None = None) -> int:
        """Network passes per image (without guidance's doubling): each stage's own count."""
        steps = self.resolve_steps(steps)
        return sum(self.stage_passes(name, k, temperature, solver) for name, k in zip(self.stages, steps))

    def check_sampling(self, steps: tuple[int, ...], cfg: float, temperature: float, solver: str | None) -> None:
        """One-line errors, before any work, for a schedule this generator cannot sample."""
        check_guidance(cfg, self.num_classes)
        self.passes(steps, temperature, solver)

    @torch.no_grad()
    def sample_stages(self, noise: Noise, labels: torch.Tensor | None = None, steps=None, cfg: float = 1.0,
                      temperature: float = 1.0, solver: str | None = None) -> dict[str, torch.Tensor]:
        """Each stage's output from per-image noise, the stages run in order, each on the earlier ones' outputs."""
        steps = self.resolve_steps(steps)
        self.check_sampling(steps, cfg, temperature, solver)  # before any stage runs
        outputs: dict[str, torch.Tensor] = {}
        for name, k in zip(self.stages, steps):
            outputs[name] = self.sample_stage(name, noise, labels, k, cfg, temperature, solver, outputs)
        return outputs

    @torch.no_grad()
    def sample(self, noise: Noise, labels: torch.Tensor | None = None, steps=None, cfg: float = 1.0,
               temperature: float = 1.0, solver: str | None = None) -> torch.Tensor:
        """Latents (B, C, g, g) from per-image noise (static shapes: the timed path)."""
        return self.latents(self.sample_stages(noise, labels, steps, cfg, temperature, solver))
