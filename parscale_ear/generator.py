"""EnergyGenerator: masked random-order continuous autoregression with an energy-score MLP head,
run as P parallel streams with learned prefixes and a learned per-token aggregation.

EAR: Shao, Meng, Zhou (ICML 2025, arXiv 2505.07812). Masking and schedule: MAR, Li et al.
(NeurIPS 2024, arXiv 2406.11838). Parallel streams: ParScale, Chen et al. (arXiv 2505.10475).
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .energy_head import EnergyHead, energy_score_loss
from .guidance import check_guidance, guided
from .layers import TransformerBlock, prepend_stream_prefixes, stream_parts
from .solvers import SOLVERS, check_solver  # noqa: F401  (SOLVERS re-exported)
from .checks import check_field_types, check_int, check_real


@dataclass
class GeneratorConfig:
    """What every generation stage has (backbone, P streams, EAR's head, guidance); its geometry (tokens, token size,
    context) comes from the hybrid. A stage's config is that of its kind, which adds the rest: `MARConfig` (below) or
    `FlowConfig` (energy_flow.py); a dict of fields becomes the config its `kind` names (`nested_config`)."""

    # "mar": masked random-order AR with the energy head (EnergyGenerator, below);
    # "flow": few-step energy-score stage (EnergyFlowGenerator, energy_flow.py)
    kind: str = "mar"
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

    # fields of earlier versions whose experiments were dropped (docs/QUALITY.md keeps their measurements) and the
    # value that meant "off": a stored config holding one at that value is the same model without it
    RETIRED = {"noise_blocks": 0, "head_steps": 0, "time_shift": 1.0, "mean_param": "v"}

    @staticmethod
    def kinds() -> dict[str, type]:
        """The config class of each stage kind."""
        from .energy_flow import FlowConfig

        return {"mar": MARConfig, "flow": FlowConfig}

    @classmethod
    def resolve(cls, fields: dict, name: str = "GeneratorConfig") -> type:
        """The config class a dict of stage fields describes (by its `kind`, default 'mar')."""
        kinds = cls.kinds()
        kind = fields.get("kind", cls.__dataclass_fields__["kind"].default)
        if kind not in kinds:
            raise ValueError(f"{name}: kind must be one of {tuple(kinds)}, got {kind!r}")
        return kinds[kind]

    @classmethod
    def upgrade(cls, fields: dict, name: str) -> dict:
        """`fields` without what a stored config of an earlier version may hold beyond its kind's fields: the retired
        options at their "off" value (mean_param: 'v', or anything in a stage without a mean head, where it did
        nothing) and the other kind's fields at their defaults (0.2 stored every field in every stage); any other
        value is a one-line ValueError naming the field."""
        fields = dict(fields)
        for key, off in cls.RETIRED.items():
            if key not in fields:
                continue
            value = fields.pop(key)
            weight = fields.get("mean_weight", 0.0)
            mean_head = fields.get("kind", "mar") == "flow" and (
                (isinstance(weight, (int, float)) and weight > 0) or fields.get("objective", "flow") == "energy")
            if value != off and not (key == "mean_param" and not mean_head):
                raise ValueError(f"{name}.{key} = {value!r}: this option was removed in parscale-ear 0.3 (its runs are "
                                 f"in docs/QUALITY.md); only {off!r}, its off value, still loads")
        mine = cls.resolve(fields, name) if isinstance(fields.get("kind", "mar"), str) else cls
        for kind, other in cls.kinds().items():
            if other is mine:
                continue
            for f in dataclasses.fields(other):
                if f.name in fields and f.name not in mine.__dataclass_fields__:
                    if fields[f.name] != f.default:
                        raise ValueError(f"{name}.{f.name}: a field of {kind!r} stages, not of a "
                                         f"{fields.get('kind', 'mar')!r} stage")
                    del fields[f.name]
        return fields

    def as_kind(self, kind: str) -> "GeneratorConfig":
        """This stage's shared fields in a config of `kind` (its own fields at their defaults)."""
        target = self.resolve({"kind": kind})
        if type(self) is target:
            return self
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(GeneratorConfig) if f.name != "kind"}
        return target(**shared, kind=kind)

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


@dataclass
class MARConfig(GeneratorConfig):
    """A masked random-order autoregressive stage (MAR) with EAR's energy head."""

    kind: str = "mar"
    # training mask ratio ~ truncated normal on [mask_ratio_min, 1] (MAR)
    mask_ratio_min: float = 0.7
    mask_ratio_mean: float = 1.0
    mask_ratio_std: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "mar":
            raise ValueError(f"MARConfig: kind must be 'mar', got {self.kind!r}")
        if not 0 < self.mask_ratio_min <= 1:
            raise ValueError(f"MARConfig: mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")


def unmask_schedule(num_tokens: int, steps: int) -> list[int]:
    """Tokens generated after each of `steps` cosine steps (MAR); strictly increasing, ends at N."""
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps must be in [1, {num_tokens}] for {num_tokens} tokens, got {steps}")
    generated, masked_before = [], num_tokens
    for k in range(steps):
        masked = int(math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps)))
        masked = 0 if k == steps - 1 else max(1, min(masked_before - 1, masked))
        masked = max(masked, steps - 1 - k)  # leave at least one token for each later step
        generated.append(num_tokens - masked)
        masked_before = masked
    return generated


class StageBase(nn.Module):
    """What every generation stage shares beside its config: its geometry, the label embedding whose last row is the
    null class (classifier-free guidance), the P streams' learned prefixes and aggregation (ParScale), class dropout
    in training and the guidance check in sampling. A stage creates these parts in its own order (`make_labels`,
    `make_streams`): the order fixes its initial weights under a seed."""

    def __init__(self, config: GeneratorConfig, num_tokens: int, token_dim: int, num_classes: int, context_dim: int):
        super().__init__()
        self.config = config
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.num_classes, self.context_dim = num_classes, context_dim

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


class EnergyGenerator(StageBase):
    """A bidirectional transformer over N tokens (masked ones replaced by a learned token) + energy head."""

    def __init__(self, config: MARConfig, num_tokens: int, token_dim: int, num_classes: int = 0, context_dim: int = 0):
        super().__init__(config, num_tokens, token_dim, num_classes, context_dim)
        cfg, d = config, config.width
        self.token_in = nn.Linear(token_dim, d)
        self.context_in = nn.Linear(context_dim, d) if context_dim else None
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(num_tokens, d) * 0.02)
        self.make_labels(d)
        self.make_streams(d)
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.head = EnergyHead(d, token_dim, cfg.head_width, cfg.head_depth, cfg.noise_dim)

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's randomness: the order (N,) is drawn first, then head noise (N, noise_dim)."""
        order = torch.randperm(self.num_tokens, generator=generator)
        return torch.rand(self.num_tokens, self.config.noise_dim, generator=generator) - 0.5, order

    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.rand(batch, self.num_tokens, self.config.noise_dim, generator=generator, device=device, dtype=dtype) - 0.5
        return noise, torch.rand(batch, self.num_tokens, generator=generator, device=device).argsort(1)

    def hidden(
        self,
        tokens: torch.Tensor,
        known: torch.Tensor,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        return_weights: bool = False,
    ):
        """Aggregated hidden states (B, N, d) for every position; `known` (B, N) marks visible tokens."""
        B, N, _ = tokens.shape
        d, P = self.config.width, self.config.streams
        x = torch.where(known[..., None], self.token_in(tokens), self.mask_token.to(tokens.dtype)) + self.pos_embed
        if self.context_in is not None:
            x = x + self.context_in(context)
        cls = self.class_embed(self.labels_or_null(labels, B, tokens.device))[:, None]  # (B, 1, d)
        seq = torch.cat([cls, x], dim=1)  # (B, 1 + N, d)
        if P > 1:  # P streams in one batched pass: (B * P, Lp + 1 + N, d)
            seq = prepend_stream_prefixes(seq, self.stream_prefix)
        for block in self.blocks:
            seq = block(seq)
        h = self.norm(seq)[:, -N:]  # (B * P, N, d)
        weights = None
        if P > 1:
            h, weights = self.aggregate(h)  # (B, N, d), (B, N, P)
        return (h, weights) if return_weights else h

    def _mask_ratios(self, batch: int, device: torch.device) -> torch.Tensor:
        """Truncated normal on [mask_ratio_min, 1] by inverse CDF."""
        c = self.config
        normal = torch.distributions.Normal(0.0, 1.0)
        lo = normal.cdf(torch.tensor((c.mask_ratio_min - c.mask_ratio_mean) / c.mask_ratio_std))
        hi = normal.cdf(torch.tensor((1.0 - c.mask_ratio_mean) / c.mask_ratio_std))
        u = lo + (hi - lo) * torch.rand(batch, device=device)
        return (c.mask_ratio_mean + c.mask_ratio_std * torch.special.ndtri(u)).clamp(c.mask_ratio_min, 1.0)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
        """Energy-score loss on a random-order mask of the tokens (B, N, D); uses the global RNG."""
        B, N, _ = tokens.shape
        device = tokens.device
        num_masked = torch.ceil(self._mask_ratios(B, device) * N).clamp(1, N)  # (B,)
        rank = torch.rand(B, N, device=device).argsort(1).argsort(1)  # random order per sample
        masked = rank < num_masked[:, None]  # (B, N): tokens to predict
        labels = self.train_labels(labels, B, device)
        h = self.hidden(tokens, ~masked, labels, context)  # (B, N, d)
        noise = torch.rand(2, B, N, self.config.noise_dim, device=device, dtype=h.dtype) - 0.5
        x1, x2 = self.head(h[None].expand(2, -1, -1, -1), noise)  # two independent samples
        return energy_score_loss(x1.float(), x2.float(), tokens.float(), self.config.alpha, self.config.tau, weight=masked)

    def solver(self, solver: str | None = None) -> str:
        """A MAR stage has no flow solver: None (its own unmasking steps) only."""
        if solver is not None:
            check_solver(solver)
            raise ValueError(f"solver {solver!r}: the mar stages sample with their own unmasking steps and take no "
                             "flow solver")
        return "euler"

    def passes(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> int:
        """Backbone passes per image (without CFG's doubling): one a step."""
        self.solver(solver)
        return steps

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        orders: torch.Tensor,
        labels: torch.Tensor | None = None,
        steps: int = 4,
        cfg: float = 1.0,
        temperature: float = 1.0,
        context: torch.Tensor | None = None,
        solver: str | None = None,
    ) -> torch.Tensor:
        """Generate tokens (B, N, D) in `steps` cosine steps over per-sample random `orders` (B, N).

        noise (B, N, noise_dim) is the head's noise for each position, drawn once per image, so a
        sample depends only on its own noise, order and label. CFG mixes hidden states before the
        head, h = cfg_k h_c + (1 - cfg_k) h_u, with cfg_k ramped linearly in generated tokens (MAR).
        """
        self.solver(solver)
        B, N = orders.shape
        self.check_guidance(cfg)
        rank = orders.argsort(1)  # rank[b, position] = when that position is generated
        tokens = noise.new_zeros(B, N, self.token_dim)
        labels = self.labels_or_null(labels, B, noise.device)
        generated_before = 0
        hidden = lambda y, tokens, known, context: self.hidden(tokens, known, y, context)  # noqa: E731
        for generated in unmask_schedule(N, steps):
            known = rank < generated_before
            cfg_k = cfg if cfg == 1.0 else 1.0 + (cfg - 1.0) * generated / N  # ramped in generated tokens (MAR)
            h = guided(hidden, labels, self.null_class, cfg_k, tokens, known, context)
            new = (rank >= generated_before) & (rank < generated)  # (B, N)
            tokens = torch.where(new[..., None], self.head(h, noise, temperature).to(tokens.dtype), tokens)
            generated_before = generated
        return tokens
