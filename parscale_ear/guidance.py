"""Classifier-free guidance (Ho & Salimans 2022), said once for every sampler: the labelled and the null-class pass
run as one batch and are mixed as cfg * cond + (1 - cfg) * uncond, on the hidden states before EAR's head in our
stages (EAR, MAR) and on the velocities in the DiT peers (DiT); cfg 1 is one unguided pass."""
from __future__ import annotations

from typing import Callable

import torch


def check_guidance(cfg: float, num_classes: int) -> None:
    """A one-line ValueError for guidance (cfg != 1) on an unconditional model."""
    if cfg != 1.0 and num_classes == 0:
        raise ValueError("cfg != 1 needs a class-conditional model; this one is unconditional")


def mix(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """cfg * cond + (1 - cfg) * uncond: cfg 1 is the labelled pass, cfg > 1 pushes away from the unconditional."""
    return cfg * cond + (1.0 - cfg) * uncond


def guided(forward: Callable[..., torch.Tensor], labels: torch.Tensor, null_class: int, cfg: float,
           *inputs: torch.Tensor | None) -> torch.Tensor:
    """`forward(labels, *inputs)` once at cfg 1; otherwise one pass over the labelled and the null-class rows (each
    input, a tensor or None, stacked twice), mixed by `mix`."""
    if cfg == 1.0:
        return forward(labels, *inputs)
    twice = [None if x is None else torch.cat([x, x]) for x in inputs]
    cond, uncond = forward(torch.cat([labels, torch.full_like(labels, null_class)]), *twice).chunk(2)
    return mix(cond, uncond, cfg)
