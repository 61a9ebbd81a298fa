"""When a run has diverged: a loss or gradient norm that is not finite, or that explodes while staying finite. Each
step's values are compared on the device (no synchronisation a step); the run reads the verdict where it logs or
saves, so nothing diverged reaches metrics.jsonl or a checkpoint, and the last good checkpoint stays."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ..loading import CHECKPOINT
from .distributed import Dist

# A run stops as diverged when a loss or the gradient norm is not finite, or explodes: the gradient norm (before
# clipping) above MAX_GRAD_NORM, or the loss above LOSS_EXPLOSION times the median loss of the run's first EARLY_STEPS
# steps (a median of at least 1). Healthy runs clip gradient norms of order 0.1-100 at grad_clip 3 and their losses
# fall from the first steps on, so neither limit is near them; a learning rate 1e4x too high reaches losses of 1e9
# and gradient norms of 1e16 within three steps.
MAX_GRAD_NORM = 1e6
LOSS_EXPLOSION = 1e4
EARLY_STEPS = 10
NOT_FINITE, EXPLODED = 1, 2


class TrainingDiverged(ValueError):
    """A loss or gradient became NaN or infinite, or exploded: the run stops; the last good checkpoint stays."""


class DivergenceWatch:
    """The first bad step of a run (-1: none) and why, kept on the device."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.kind = torch.zeros((), dtype=torch.long, device=device)
        self.early_losses: list[torch.Tensor] = []
        self.loss_limit = torch.full((), float("inf"), device=device)  # LOSS_EXPLOSION x the early median, once known

    def watch(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Record `step` as the first bad one if its loss or gradient norm is not finite or exploded."""
        if len(self.early_losses) < EARLY_STEPS:
            self.early_losses.append(loss)
            if len(self.early_losses) == EARLY_STEPS:  # a NaN median leaves the limit NaN: the finite check acts first
                self.loss_limit = LOSS_EXPLOSION * torch.stack(self.early_losses).median().abs().clamp_min(1.0)
        finite = torch.isfinite(grad_norm) & torch.isfinite(loss)
        exploded = (grad_norm > MAX_GRAD_NORM) | (loss > self.loss_limit)
        kind = torch.where(~finite, NOT_FINITE, torch.where(exploded, EXPLODED, 0))
        first = (self.first_bad < 0) & (kind > 0)
        self.first_bad = torch.where(first, torch.full_like(self.first_bad, step + 1), self.first_bad)
        self.kind = torch.where(first, kind, self.kind)

    def check(self, done: int, out: Path, last_saved: int, d: Dist) -> None:
        """Raise TrainingDiverged (one line) if any step so far was bad (on any rank)."""
        check_finite(self.first_bad, done, out, last_saved, d, self.kind)


def check_finite(first_bad: torch.Tensor, done: int, out: Path, last_saved: int, d: Dist,
                 kind: torch.Tensor | None = None) -> None:
    """Raise TrainingDiverged (one line) if any step so far had a non-finite or an exploding (`kind` EXPLODED) loss
    or gradient norm (on any rank)."""
    if d.world > 1:  # the earliest bad step of any rank, with its own kind: (step, kind) reduced as one number
        none = torch.iinfo(torch.long).max
        code = torch.where(first_bad > 0, first_bad * 4 + (0 if kind is None else kind), torch.full_like(first_bad, none))
        dist.all_reduce(code, op=dist.ReduceOp.MIN)
        first_bad = torch.where(code < none, code // 4, torch.full_like(code, -1))
        kind = None if kind is None else code % 4
    bad = int(first_bad)
    if bad > 0:
        kept = f"{out / CHECKPOINT} keeps step {last_saved}" if last_saved else "no checkpoint was written"
        what = "is not finite" if kind is None or int(kind) != EXPLODED else \
            (f"exploded (a gradient norm above {MAX_GRAD_NORM:g} before clipping, or a loss above {LOSS_EXPLOSION:g}x "
             f"the median of the first {EARLY_STEPS} steps)")
        raise TrainingDiverged(f"training diverged: the loss or its gradient {what} at step {bad} (checked at "
                               f"step {done}); stopped, {kept}; lower --lr or check the data")
