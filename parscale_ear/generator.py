"""EnergyGenerator: masked random-order continuous autoregression with an energy-score MLP head,
run as P parallel streams with learned prefixes and a learned per-token aggregation.

EAR: Shao, Meng, Zhou (ICML 2025, arXiv 2505.07812). Masking and schedule: MAR, Li et al.
(NeurIPS 2024, arXiv 2406.11838). Parallel streams: ParScale, Chen et al. (arXiv 2505.10475).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .energy_head import EnergyHead, energy_score_loss
from .guidance import guided
from .layers import TransformerBlock, prepend_stream_prefixes
from .solvers import check_solver
from .stage import GeneratorConfig, StageBase


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

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One image's noise, by the names `sample` takes: the order (N,) is drawn first, then head noise xi
        (N, noise_dim)."""
        order = torch.randperm(self.num_tokens, generator=generator)
        return {"xi": torch.rand(self.num_tokens, self.config.noise_dim, generator=generator) - 0.5, "order": order}

    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        xi = torch.rand(batch, self.num_tokens, self.config.noise_dim, generator=generator, device=device, dtype=dtype) - 0.5
        return {"xi": xi, "order": torch.rand(batch, self.num_tokens, generator=generator, device=device).argsort(1)}

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

    def check_sampling(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> None:
        """One-line errors for what this stage cannot sample: more steps than tokens, or a flow solver (a MAR stage
        unmasks in its own steps)."""
        unmask_schedule(self.num_tokens, steps)
        if solver is not None:
            check_solver(solver)
            raise ValueError(f"solver {solver!r}: the mar stages sample with their own unmasking steps and take no "
                             "flow solver")

    def passes(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> int:
        """Backbone passes per image (without CFG's doubling): one a step."""
        self.check_sampling(steps, temperature, solver)
        return steps

    @torch.no_grad()
    def sample(
        self,
        xi: torch.Tensor,
        order: torch.Tensor,
        labels: torch.Tensor | None = None,
        steps: int = 4,
        cfg: float = 1.0,
        temperature: float = 1.0,
        context: torch.Tensor | None = None,
        solver: str | None = None,
    ) -> torch.Tensor:
        """Generate tokens (B, N, D) in `steps` cosine steps over a per-sample random `order` (B, N).

        xi (B, N, noise_dim) is the head's noise for each position, drawn once per image, so a
        sample depends only on its own noise, order and label. CFG mixes hidden states before the
        head, h = cfg_k h_c + (1 - cfg_k) h_u, with cfg_k ramped linearly in generated tokens (MAR).
        """
        self.check_sampling(steps, temperature, solver)
        B, N = order.shape
        self.check_guidance(cfg)
        rank = order.argsort(1)  # rank[b, position] = when that position is generated
        tokens = xi.new_zeros(B, N, self.token_dim)
        labels = self.labels_or_null(labels, B, xi.device)
        generated_before = 0
        hidden = lambda y, tokens, known, context: self.hidden(tokens, known, y, context)  # noqa: E731
        for generated in unmask_schedule(N, steps):
            known = rank < generated_before
            cfg_k = cfg if cfg == 1.0 else 1.0 + (cfg - 1.0) * generated / N  # ramped in generated tokens (MAR)
            h = guided(hidden, labels, self.null_class, cfg_k, tokens, known, context)
            new = (rank >= generated_before) & (rank < generated)  # (B, N)
            tokens = torch.where(new[..., None], self.head(h, xi, temperature).to(tokens.dtype), tokens)
            generated_before = generated
        return tokens
