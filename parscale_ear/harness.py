"""Fixed-budget quality runs train a named recipe (a ParScale-EAR preset or a peer) on a VAE run's latents for a budget
of minutes, then score its schedules (evaluation/quality.py): experiments/quality_run.py and ci/peer.py. This is their
training half, above train/ beside the scoring, so that evaluation/ scores and never trains.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .loading import load_checkpoint, read_metrics
from .model_config import ModelConfig
from .train import METRICS, RUN_CONFIG, TrainConfig, train


def train_for_minutes(config: ModelConfig, vae_run: str | Path, minutes: float, out: str | Path, device: str,
                      warmup_steps: int = 100, steps: int | None = None, **train_options) -> dict:
    """Train `config` on the VAE run's latents for `minutes` of wall time, compile included: the run
    measures its own rate during its warm-up and sets its step count there so that its cosine decay
    ends at the budget, then sets it again a fifth of the way on from the rate since (TrainConfig.fit_steps_to_budget),
    and max_minutes caps it in any case; or, with
    `steps`, for that many steps (its wall time then is what it took).
    `train_options` go to TrainConfig (batch_size, lr, ema_decay, head_lr_ratio, seed, compile, ...).
    Returns the run's last metrics row with the measured rate, the planned steps and the wall seconds."""
    out = Path(out)
    data = load_checkpoint(vae_run)["train"]["data"]
    # steps is an upper bound until the warm-up's end sets it; the warm-up does not depend on it
    budget = dict(steps=steps, max_minutes=0.0, fit_steps_to_budget=False) if steps else \
        dict(steps=10**7, max_minutes=minutes, fit_steps_to_budget=True)
    cfg = TrainConfig(kind="generator", warmup_steps=warmup_steps, log_every=20, sample_every=10**9,
                      ckpt_every=10**9, data=data, vae_run=str(vae_run), samples=False, **budget, **train_options)
    t0 = time.time()
    train(cfg, out, config, device=device, progress=False)
    wall = time.time() - t0
    fitted = json.loads((out / RUN_CONFIG).read_text()).get("fitted", {})
    if fitted:
        print(f"{config.name}: {fitted['steps_per_s']:.2f} steps/s at step {fitted['at_step']} -> {fitted['steps']} steps "
              f"planned in {minutes} min; wall {wall:.1f} s", flush=True)
    else:
        print(f"{config.name}: {cfg.steps} steps; wall {wall:.1f} s", flush=True)
    return {**read_metrics(out / METRICS)[-1], "steps_per_s": fitted.get("steps_per_s"), "planned_steps": fitted.get("steps"),
            "wall_s": wall}
