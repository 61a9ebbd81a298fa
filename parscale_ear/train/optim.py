"""Optimiser set-up and schedules after EAR (arXiv 2505.07812): AdamW (0.9, 0.95) groups with weight decay 0.02
except on biases, norms, embeddings and the energy head (whose learning rate is 0.25x); linear warm-up then cosine
decay; the EMA of the weights; the step count that fits a time budget."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

def param_groups(module: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: decayed weights, undecayed (biases/norms/embeddings), energy head (0.25x, no decay)."""
    decay, no_decay, head = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if ".head." in f".{name}":
            head.append(p)
        elif p.ndim >= 2 and "embed" not in name and "prefix" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_ratio": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_ratio": 1.0},
        {"params": head, "weight_decay": 0.0, "lr_ratio": cfg.head_lr_ratio},
    ]
    return [g for g in groups if g["params"]]


def warmup_steps(cfg: TrainConfig) -> int:
    """The warm-up actually used: --warmup-steps, capped at half the run, so a short run reaches --lr."""
    return min(cfg.warmup_steps, cfg.steps // 2)


FIT_FROM = 10  # fit_steps_to_budget: the rate is measured from this many steps into the run (compile done) to warm-up's end


def fitted_steps(done: int, rate: float, elapsed_s: float, cfg: TrainConfig) -> int:
    """fit_steps_to_budget's total: the steps done plus 98% of what `rate` (steps/s) fits in the budget's
    remaining time, at least twice the warm-up (so the warm-up already run stays what it was)."""
    left_s = max(0.0, 60 * cfg.max_minutes - elapsed_s)
    return max(done + int(rate * left_s * 0.98), 2 * warmup_steps(cfg))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over `warmup_steps(cfg)`, then cosine decay to cfg.lr * min_lr_ratio."""
    warm = warmup_steps(cfg)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter (one fused foreach call: a Python
    loop of small kernels was a visible share of a small model's GPU step); buffers are copied."""
    e_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for e, p in zip(e_params, model.parameters())]
    if e_params:
        torch._foreach_lerp_(e_params, params, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
