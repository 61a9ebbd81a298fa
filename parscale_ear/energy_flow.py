"""EnergyFlowGenerator: a few-step generation stage trained with the energy score. From a noisy
stage x_t = (1 - t) x0 + t eps, one pass draws a whole sample of x0: per-token noise xi enters the
backbone (so all tokens are drawn jointly) and EAR's MLP head (noise -> token through adaLN); the
backbone runs as P ParScale streams with learned prefixes and a learned aggregation.

Energy score: EAR (Shao, Meng, Zhou, arXiv 2505.07812). A generative denoiser trained with a scoring
rule and sampled with large DDIM-like steps: distributional diffusion (De Bortoli et al., arXiv
2502.02483). Interpolation x_t: rectified flow (Liu et al. 2022). Streams: ParScale (arXiv 2505.10475).
With one step it is a one-pass generator: x0 = G(eps, t=1, xi).
Regression-anchored variant (`mean_weight > 0`): the backbone runs once per example without noise; a
mean head (the rectified-flow velocity v, with x0 = x_t - t v) learns by MSE, and EAR's head,
optionally behind `residual_blocks` attention blocks that see the noise of every token, draws the
residual around it, trained by the energy score.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from .energy_distance import energy_distance, pooled_features
from .energy_head import EnergyHead, energy_score_samples
from .flow_config import FlowConfig
from .guidance import guided, mix
from .layers import AdaLNBlock, modulate, prepend_stream_prefixes, sincos_positions_2d, timestep_embedding
from .meanflow import interval, meanflow_loss
from .solvers import ddim_step, euler_step, heun_step, time_grid
from .stage import StageBase

TIME_DIM = 256  # sinusoidal features of t
__all__ = ["EnergyFlowGenerator", "FlowConfig"]


def _scale_grad(x: torch.Tensor, weight: float) -> torch.Tensor:
    """x in the forward pass; its gradient times `weight` in the backward pass (0: stopped)."""
    return x.detach() if weight == 0 else x.detach() + weight * (x - x.detach())


class EnergyFlowGenerator(StageBase):
    """A stage of N tokens (B, N, D): transformer with adaLN(t, class) over x_t + noise + context tokens."""

    def __init__(self, config: FlowConfig, num_tokens: int, token_dim: int, num_classes: int = 0, context_dim: int = 0,
                 lead_tokens: int = 0):
        super().__init__(config, num_tokens, token_dim, num_classes, context_dim)
        cfg, d = config, config.width
        if not 0 <= lead_tokens < num_tokens:
            raise ValueError(f"EnergyFlowGenerator: lead_tokens must be in [0, {num_tokens}), got {lead_tokens}")
        if cfg.coarse_lead != 1 and not lead_tokens:
            raise ValueError("FlowConfig: coarse_lead applies to a joint coarse/fine stage (hybrid mode 'joint')")
        self.lead_tokens = lead_tokens  # a joint stage's coarse tokens, first in the sequence (time t ** coarse_lead)
        self.token_in = nn.Linear(token_dim, d)
        # the noise enters the backbone (all tokens drawn jointly in one pass), or only the head
        self.noise_in = nn.Linear(cfg.noise_dim, d) if cfg.backbone_noise else None
        self.context_in = nn.Linear(context_dim, d) if context_dim else None
        if cfg.pos_embed == "sincos":  # fixed, from the token grid's geometry: not a weight
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"FlowConfig: pos_embed 'sincos' needs a square token grid, got {num_tokens} tokens")
            self.register_buffer("pos_embed", sincos_positions_2d(side, d), persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.randn(num_tokens, d) * 0.02)
        self.make_labels(d)
        self.time_embed = nn.Sequential(nn.Linear(TIME_DIM, d), nn.SiLU(), nn.Linear(d, d))
        self.block_time = self.block_class = None  # block_condition: each block's own time MLP and class table
        if cfg.block_condition:
            self.block_time = nn.ModuleList(nn.Sequential(nn.Linear(TIME_DIM, d), nn.SiLU(), nn.Linear(d, d))
                                            for _ in range(cfg.depth))
            self.block_class = nn.ModuleList(nn.Embedding(num_classes + 1, d) for _ in range(cfg.depth))
            for table in self.block_class:
                nn.init.normal_(table.weight, std=0.02)
        self.interval_embed = None  # MeanFlow: an embedding of t - r, zero at the start (the stage is then a flow)
        if cfg.objective == "meanflow":
            self.interval_embed = nn.Sequential(nn.Linear(TIME_DIM, d), nn.SiLU(), nn.Linear(d, d))
            nn.init.zeros_(self.interval_embed[2].weight)
            nn.init.zeros_(self.interval_embed[2].bias)
        self.make_streams(d)
        self.blocks = nn.ModuleList(AdaLNBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        self.head = EnergyHead(d, token_dim, cfg.head_width, cfg.head_depth, cfg.noise_dim) if cfg.energy_head else None
        self.mean_out = None
        if cfg.has_mean_head:  # DiT-style zero-initialised output layer for the conditional velocity v
            self.mean_out = nn.Linear(d, token_dim)
            nn.init.zeros_(self.mean_out.weight)
            nn.init.zeros_(self.mean_out.bias)
        # residual path of a mean-head stage: noise -> a few AdaLN blocks (tokens attend to each other's
        # draws, so neighbours are drawn jointly) -> the EAR head
        self.residual_noise_in = nn.Linear(cfg.noise_dim, d) if cfg.residual_blocks else None
        self.residual_blocks = nn.ModuleList(AdaLNBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.residual_blocks))

    # ------------------------------------------------------------------ randomness
    @property
    def draws_xi(self) -> bool:
        """Whether the stage uses per-step noise xi: an energy head or noise in the backbone (a plain stage does not)."""
        return self.head is not None or self.noise_in is not None

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One image's noise, by the names `sample` takes: per-step noise xi (S, N, noise_dim) in [-0.5, 0.5] where the
        stage uses it, then x1 (N, D)."""
        c = self.config
        xi = {"xi": torch.rand(c.max_steps, self.num_tokens, c.noise_dim, generator=generator) - 0.5} if self.draws_xi else {}
        return {**xi, "x1": torch.randn(self.num_tokens, self.token_dim, generator=generator)}

    def draw_batch(self, batch: int, device, dtype, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        c = self.config
        shape = (batch, c.max_steps, self.num_tokens, c.noise_dim)
        xi = {"xi": torch.rand(shape, generator=generator, device=device, dtype=dtype) - 0.5} if self.draws_xi else {}
        return {**xi, "x1": torch.randn(batch, self.num_tokens, self.token_dim, generator=generator, device=device,
                                        dtype=dtype)}

    # ------------------------------------------------------------------ network
    def hidden(self, x_t: torch.Tensor, t: torch.Tensor, xi: torch.Tensor | None, labels: torch.Tensor,
               context: torch.Tensor | None = None, r: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregated hidden states (m B, N, d) from x_t (B, N, D), t (B,), labels (B,) and m draws of
        noise xi (m B, N, noise_dim), draw j of example b at row j B + b: every block runs once per draw.
        Without backbone noise, xi is None and the result is (B, N, d). r (B,): a MeanFlow stage's interval start."""
        B, N, _ = x_t.shape
        m = 1 if xi is None else xi.shape[0] // B
        P = self.config.streams
        x = self.token_in(x_t) + self.pos_embed
        if self.context_in is not None:
            x = x + self.context_in(context)
        c = self.condition(t, labels, x.dtype, r)  # (B, d)
        per_block = self.block_conditions(t, labels, x.dtype, r)  # each block's (B, d), or None: c in every block
        if P > 1:  # P streams in one batched pass: (B * P, Lp + N, d), row b P + p
            x = prepend_stream_prefixes(x, self.stream_prefix)
            c, per_block = (y if y is None else y.repeat_interleave(P, dim=0) for y in (c, per_block))
        if self.noise_in is not None:
            x = x.repeat(m, 1, 1)  # (m B P, L, d), row (j B + b) P + p
            c, per_block = (y if y is None else torch.cat([y] * m) for y in (c, per_block))
            noise = self.noise_in(xi.to(x.dtype)).repeat_interleave(P, dim=0)
            x = torch.cat([x[:, :-N], x[:, -N:] + noise], dim=1)
        for k, block in enumerate(self.blocks):
            x = block(x, c if per_block is None else per_block[:, k])
        shift, scale = self.ada_out(torch.nn.functional.silu(c))[:, None].chunk(2, dim=-1)
        h = modulate(self.norm(x), shift, scale)[:, -N:]  # (m B P, N, d)
        if P > 1:
            h, _ = self.aggregate(h)
        return h

    def condition(self, t: torch.Tensor, labels: torch.Tensor, dtype, r: torch.Tensor | None = None) -> torch.Tensor:
        """adaLN conditioning (B, d) from time t (B,) and labels (B,); a MeanFlow stage adds its interval t - r (r
        None: r = t, the instantaneous velocity)."""
        return self.time_embed(self._embed_time(t, dtype)) + self.class_embed(labels) + self._interval(t, r, dtype)

    def _interval(self, t: torch.Tensor, r: torch.Tensor | None, dtype):
        """A MeanFlow stage's embedding of the interval t - r (r None: r = t); 0 for the other objectives."""
        if self.interval_embed is None:
            return 0
        return self.interval_embed(self._embed_time(t - (t if r is None else r), dtype))

    def _embed_time(self, t: torch.Tensor, dtype) -> torch.Tensor:
        return timestep_embedding(t, scale=self.config.time_scale).to(dtype)

    def block_conditions(self, t: torch.Tensor, labels: torch.Tensor, dtype,
                         r: torch.Tensor | None = None) -> torch.Tensor | None:
        """With block_condition, each block's adaLN conditioning (B, depth, d): its own embedding of t and of the
        labels (plus the shared interval embedding of a MeanFlow stage); else None (every block takes `condition`)."""
        if self.block_time is None:
            return None
        temb, extra = self._embed_time(t, dtype), self._interval(t, r, dtype)
        return torch.stack([time(temb) + table(labels) + extra for time, table in zip(self.block_time, self.block_class)],
                           dim=1)

    def token_times(self, t: torch.Tensor) -> torch.Tensor:
        """Each token's time (B, N, 1) at stage time t (B,): t, except a joint stage's coarse tokens, at t ** coarse_lead
        (ahead of the fine ones, and 1 and 0 at the ends as they are)."""
        tt = t[:, None, None]
        if not self.lead_tokens or self.config.coarse_lead == 1:
            return tt
        n = self.lead_tokens
        return torch.cat([tt.pow(self.config.coarse_lead).expand(-1, n, 1), tt.expand(-1, self.num_tokens - n, 1)], dim=1)

    def mean_x0(self, h: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The mean head's x0 (B, N, D) from hidden states h (B, N, d) at x_t (B, N, D), t (B,): the head predicts
        v = eps - x0, and x_t = (1 - t) x0 + t eps gives x0 = x_t - t v (each token at its own time)."""
        out = self.mean_out(h)
        return x_t - self.token_times(t).to(out.dtype) * out

    def residual(self, h: torch.Tensor, c: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The energy head's draws (m B, N, D) around the mean: h (m B, N, d), c (m B, d), xi (m B, N, noise_dim)."""
        xi = xi.to(h.dtype)
        if self.residual_noise_in is not None:
            h = h + self.residual_noise_in(xi)
            for block in self.residual_blocks:
                h = block(h, c)
        return self.head(h, xi)

    def _times(self, batch: int, device) -> torch.Tensor:
        """Training times: t = 1 (the one-step case) with probability one_step_prob, else from
        `time_dist` (U(0, 1) or logit-normal)."""
        if self.config.time_dist == "logit_normal":
            t = torch.sigmoid(self.config.time_mean + torch.randn(batch, device=device))
        else:
            t = torch.rand(batch, device=device)
        return torch.where(torch.rand(batch, device=device) < self.config.one_step_prob, torch.ones_like(t), t)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """Energy score of m samples of x0 given x_t, per token plus over the whole stage; global RNG.

        tokens (B, N, D) are the targets x0; `noise` (B, N, D), when given, is the x_1 paired with each target
        (a teacher's coupling: x_t lies on the line from that noise to the teacher's sample), else fresh noise
        (the data's coupling)."""
        B, N, D = tokens.shape
        c = self.config
        device = tokens.device
        labels = self.train_labels(labels, B, device)
        if c.objective == "distance":  # one pass from pure noise, against the data of each class
            ones, x1 = torch.ones(B, device=device), torch.randn_like(tokens)
            drawn = self.mean_x0(self.hidden(x1, ones, None, labels, context), x1, ones).float()
            return c.mean_weight * energy_distance(pooled_features(drawn), pooled_features(tokens.float()), labels)
        t, r = self._times(B, device), None
        if c.objective == "meanflow":  # the interval [r, t] of MeanFlow's average velocity (r = t for most draws)
            t, r = interval(t, self._times(B, device), c.meanflow_ratio)
        eps = torch.randn_like(tokens) if noise is None else noise.to(tokens.dtype)
        tt = self.token_times(t)
        x_t = (1 - tt) * tokens + tt * eps
        if r is not None:
            u = lambda x, tt, rr: self.mean_out(self.hidden(x, tt, None, labels, context, rr))  # noqa: E731
            return c.mean_weight * meanflow_loss(u, x_t, eps - tokens, t, r, c.loss_power)[0]
        if self.head is None:  # a plain flow stage: the rectified-flow loss on v = eps - x0 alone
            h = self.hidden(x_t, t, None, labels, context)
            return c.mean_weight * torch.nn.functional.mse_loss(self.mean_out(h).float(), (eps - tokens).float())
        m = c.samples
        xi = torch.rand(m * B, N, c.noise_dim, device=device) - 0.5
        target = tokens.float()
        mse = None
        if self.noise_in is not None:
            h = self.hidden(x_t, t, xi, labels, context)  # (m B, N, d)
            samples = self.head(h, xi.to(h.dtype)).float().view(m, B, N, D)
        else:  # one backbone pass; the residual path draws the m samples
            h = self.hidden(x_t, t, None, labels, context)  # (B, N, d)
            cond = self.condition(t, labels, h.dtype)
            # the share of the score's gradient that reaches the backbone (checked: < 1 needs a mean head and the
            # flow objective; the energy objective keeps all of it)
            w = c.residual_grad
            h_r, cond_r = (h, cond) if w == 1 else (_scale_grad(h, w), _scale_grad(cond, w))
            samples = self.residual(h_r.repeat(m, 1, 1), cond_r.repeat(m, 1), xi).float().view(m, B, N, D)
        if self.mean_out is not None:  # samples = mean + residual
            # the rectified-flow loss on v = eps - x0
            mse = torch.nn.functional.mse_loss(self.mean_out(h).float(), (eps - tokens).float())
            mean = self.mean_x0(h, x_t, t).float()
            # flow: the mean learns by regression alone; energy: the score of the whole draw trains it too
            samples = (mean if c.objective == "energy" else mean.detach())[None] + samples
        loss = energy_score_samples(samples, target, c.alpha, c.tau)
        if c.global_weight > 0:  # the whole stage as one vector: trains the joint, not only marginals
            scale = 1.0 / math.sqrt(N)
            loss = loss + c.global_weight * energy_score_samples(samples.flatten(2) * scale, target.flatten(1) * scale, c.alpha, c.tau)
        if mse is not None and c.mean_weight > 0:
            loss = loss + c.mean_weight * mse
        return loss

    # ------------------------------------------------------------------ sampling
    def check_sampling(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> str:
        """The solver `steps` steps at `temperature` take, or a one-line error (FlowConfig.sampling_solver)."""
        return self.config.sampling_solver(steps, temperature, solver)

    def passes(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> int:
        """Backbone passes per image for `steps` steps (without CFG's doubling): one a step, plus Heun's correction
        on every step but the last (temperature 0)."""
        return 2 * steps - 1 if self.check_sampling(steps, temperature, solver) == "heun" else steps

    @torch.no_grad()
    def sample(
        self,
        xi: torch.Tensor | None,
        x1: torch.Tensor,
        labels: torch.Tensor | None = None,
        steps: int = 1,
        cfg: float = 1.0,
        temperature: float = 1.0,
        context: torch.Tensor | None = None,
        solver: str | None = None,
    ) -> torch.Tensor:
        """Tokens (B, N, D) in `steps` steps from x1 (B, N, D); xi (B, S, N, noise_dim) gives step k its noise (None for
        a plain stage, which draws none).

        Each step draws x0 ~ G(x_t, t, xi_k) and moves to t' along the line through x_t and that sample (DDIM with a
        sampled x0); CFG mixes hidden states before the head (EAR). Temperature scales the head's adaLN shift (EAR),
        or, with a mean head, the residual: x0 = mean + temperature * residual (0: the mean alone, the flow's path).
        With solver "heun" (at temperature 0), each mean-path step but the last is corrected by a second pass at its
        end (the trapezoid of the velocities at t and t').
        """
        B = x1.shape[0]
        heun = self.check_sampling(steps, temperature, solver) == "heun"
        self.check_guidance(cfg)
        labels = self.labels_or_null(labels, B, x1.device)
        times = time_grid(steps, self.config.time_shift)
        x = x1
        for k in range(steps):
            t, t_next = times[k], times[k + 1]
            tt = torch.full((B,), t, device=x.device)
            xi_k = None if xi is None else xi[:, k]
            xb = xi_k if self.noise_in is not None else None
            if self.interval_embed is not None:  # MeanFlow: an Euler step of the average velocity over [t_next, t]
                rr = torch.full((B,), t_next, device=x.device)
                x = euler_step(x, self.mean_out(self._guided_hidden(x, tt, None, labels, context, cfg, rr)), t, t_next)
                continue
            h = self._guided_hidden(x, tt, xb, labels, context, cfg)
            draw = temperature > 0
            if heun and t_next > 0:  # the mean path, corrected
                x = self._heun_step(x, h, t, t_next, xb, labels, context, cfg)
                continue
            x0 = self._x0(h, x, tt, xi_k, labels, cfg, temperature, draw).to(x.dtype)
            if self.lead_tokens and t_next > 0:  # each token along its own line, at its own times
                x = ddim_step(x, x0, self.token_times(tt), self.token_times(torch.full_like(tt, t_next)))
            else:
                x = ddim_step(x, x0, t, t_next)
        return x

    def _guided_hidden(self, x, tt, xb, labels, context, cfg: float, r=None) -> torch.Tensor:
        """Hidden states at x_t; with cfg != 1 mixed from the labelled and the null-class pass (EAR)."""
        extra = () if r is None else (r,)  # a MeanFlow stage's interval start
        return guided(lambda y, x, tt, xb, ctx, *r: self.hidden(x, tt, xb, y, ctx, *r), labels, self.null_class, cfg,
                      x, tt, xb, context, *extra)

    def _x0(self, h, x, tt, xi, labels, cfg: float, temperature: float, draw: bool) -> torch.Tensor:
        """A step's x0: the mean (x0 or v head) plus, when it draws, temperature x the energy head's residual;
        without a mean head, the energy head's draw itself."""
        if self.mean_out is None:
            return self.head(h, xi.to(h.dtype), temperature)
        cond = None
        if self.residual_noise_in is not None and draw:
            cond = self.condition(tt, labels, h.dtype)
            if cfg != 1.0:  # mixed like the hidden states
                cond = mix(cond, self.condition(tt, torch.full_like(labels, self.null_class), h.dtype), cfg)
        x0 = self.mean_x0(h, x, tt)
        return x0 + temperature * self.residual(h, cond, xi) if draw else x0

    def _heun_step(self, x, h, t: float, t_next: float, xb, labels, context, cfg: float) -> torch.Tensor:
        """x at t_next by Heun's rule on the mean path: the mean of the velocities at t and at the Euler estimate."""
        def velocity_at(y, s: float, h=None):  # eps - x0 of x_s = (1 - s) x0 + s eps along the predicted line
            ss = torch.full((y.shape[0],), s, device=y.device)
            h = self._guided_hidden(y, ss, xb, labels, context, cfg) if h is None else h
            return (y - self.mean_x0(h, y, ss).to(y.dtype)) / self.token_times(ss).to(y.dtype)

        dt = None  # a joint stage: each token's step is its own time step (t ** coarse_lead for the coarse tokens)
        if self.lead_tokens:
            ends = [self.token_times(torch.full((x.shape[0],), s, device=x.device)) for s in (t, t_next)]
            dt = (ends[1] - ends[0]).to(x.dtype)
        return heun_step(x, velocity_at(x, t, h), t, t_next, velocity_at, dt)
