"""What every generation stage shares, whatever its kind: the config fields (`GeneratorConfig`: backbone, P streams,
EAR's head, guidance) and the module parts (`StageBase`: label embedding with its null class, the P streams'
prefixes and aggregation, class dropout, the guidance check). The kinds build on it: the masked autoregressive stage
(generator.py) and the flow stage (energy_flow.py); stage_kinds.py names them.

Parallel streams: ParScale, Chen et al. (arXiv 2505.10475). Null class for guidance: Ho & Salimans (2022).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_field_types, check_int
from .guidance import check_guidance
from .layers import stream_parts


@dataclass
class GeneratorConfig:
    """What every generation stage has (backbone, P streams, EAR's head, guidance); its geometry (tokens, token size,
    context) comes from the hybrid. A stage's config is that of its kind, which adds the rest: `FlowConfig`
    (energy_flow.py) or `MARConfig` (generator.py); a dict of fields becomes the config its `kind` names
    (`stage_kinds.stage_config`)."""

    # "flow": few-step energy-score stage (EnergyFlowGenerator, energy_flow.py), the shipped design's;
    # "mar": masked random-order AR with the energy head (EnergyGenerator, generator.py), the first presets'
    kind: str = "flow"
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    streams: int = 1  # ParScale P; P = 1 is the plain model (no prefix, no aggregation)
    prefix_len: int = 4  # learned prefix tokens per stream (used when streams > 1)
    agg_smoothing: float = 0.01  # w <- w (1 - eps) + eps / P, ParScale's code default
    head_width: int = 256
    head_depth: int = 3  # residual adaLN blocks in the energy head
    noise_dim: int = 64  # eps ~ U[-0.5, 0.5]^noise_dim per token, EAR's choice
    class_dropout: float = 0.1  # label dropped to the null class for CFG
    alpha: float = 1.0  # energy-score exponent; 1 is best in EAR, 2 collapses
    tau: float = 1.0  # repulsion weight; > 1 makes the loss unbounded

    def __post_init__(self):
        if type(self) is GeneratorConfig:
            raise TypeError("GeneratorConfig holds what every stage shares; build MARConfig or FlowConfig (or pass a "
                            "dict of fields with its kind)")
        check_field_types(self)
        if not 0 <= self.class_dropout <= 1:
            raise ValueError(f"{type(self).__name__}: class_dropout must be in [0, 1], got {self.class_dropout}")
        for name in ("width", "depth", "heads", "head_width", "head_depth", "noise_dim", "prefix_len"):
            check_int(getattr(self, name), f"{type(self).__name__}.{name}")
        if self.streams < 1:
            raise ValueError(f"{type(self).__name__}: streams must be >= 1, got {self.streams}")
        if self.width % self.heads:
            raise ValueError(f"{type(self).__name__}: width {self.width} not divisible by heads {self.heads}")
        if not 0 < self.alpha < 2:
            raise ValueError(f"{type(self).__name__}: alpha must be in (0, 2), got {self.alpha}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"{type(self).__name__}: tau must be in [0, 1], got {self.tau}")


class StageBase(nn.Module, ABC):
    """What every generation stage shares beside its config: its geometry, the label embedding whose last row is the
    null class (classifier-free guidance), the P streams' learned prefixes and aggregation (ParScale), class dropout
    in training and the guidance check in sampling. A stage creates these parts in its own order (`make_labels`,
    `make_streams`): the order fixes its initial weights under a seed. Each kind defines the five methods below, all
    the coarse/fine hybrid calls."""

    def __init__(self, config: GeneratorConfig, num_tokens: int, token_dim: int, num_classes: int, context_dim: int):
        super().__init__()
        self.config = config
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.num_classes, self.context_dim = num_classes, context_dim

    # ------------------------------------------------------------------ what each kind defines
    @abstractmethod
    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One image's noise (no batch dimension) by the names `sample` takes, every draw from `generator`."""

    @abstractmethod
    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A batch's noise drawn on `device` in one go, as `draw`'s."""

    @abstractmethod
    def passes(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> int:
        """Backbone passes per image at `steps` (without guidance's doubling); a one-line ValueError where the stage
        cannot sample so."""

    @abstractmethod
    def sample(self, *noise: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 1, cfg: float = 1.0,
               temperature: float = 1.0, context: torch.Tensor | None = None, solver: str | None = None) -> torch.Tensor:
        """The stage's normalised tokens (B, N, D) from its noise (`draw`'s parts, batched) in `steps` steps."""

    @abstractmethod
    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
             **pairs: torch.Tensor) -> torch.Tensor:
        """Its training loss on normalised tokens (B, N, D) (a flow stage also takes a teacher's x_1, `noise`)."""

    # ------------------------------------------------------------------ what every kind shares
    def make_labels(self, width: int) -> None:
        self.class_embed = nn.Embedding(self.num_classes + 1, width)  # index num_classes = null / unconditional
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def make_streams(self, width: int) -> None:
        c = self.config
        if c.streams > 1:
            self.stream_prefix, self.aggregate = stream_parts(c.streams, c.prefix_len, width, c.agg_smoothing)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def labels_or_null(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        return labels

    def train_labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Training labels: the null class where none are given, else each dropped to it with `class_dropout`."""
        if labels is None:
            return self.labels_or_null(None, batch, device)
        if self.config.class_dropout > 0:
            drop = torch.rand(batch, device=device) < self.config.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return labels

    def check_guidance(self, cfg: float) -> None:
        check_guidance(cfg, self.num_classes)
