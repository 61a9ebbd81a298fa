"""Scoring a trained model's sampling schedules: FID against the train and test statistics, network passes per image
and synchronised sampling ms/image, one row per schedule; rows go to JSON and Markdown with command, commit, device
and date, and each run's FID-vs-latency curve to a plot. Training for a budget first is harness.py's.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..pipeline import ParScaleEAR


# stage config fields that only change sampling, settable per schedule (see `stage_settings`)
SAMPLING_FIELDS = ("max_steps", "solver", "time_shift")


@dataclass
class Schedule:
    steps: object  # an int (that many in every stage) or one per stage, (coarse, fine)
    cfg: float = 1.0
    temperature: float = 1.0
    # sampling fields of the stage configs for this schedule: {"fine.solver": "heun", "max_steps": 4}
    # (no stage prefix: every stage); {} keeps the model's own
    settings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        steps = "+".join(map(str, self.steps)) if isinstance(self.steps, (tuple, list)) else str(self.steps)
        extra = "".join(f", {k} {v:g}" if isinstance(v, (int, float)) else f", {k} {v}" for k, v in self.settings.items())
        return f"steps {steps}, cfg {self.cfg:g}, temp {self.temperature:g}{extra}"


def parse_schedules(text: str) -> list[Schedule]:
    """'1,1@2.0;2,2@1.5@0.9;8@2;4,4@1@0@fine.solver=heun,max_steps=4;4,4@1@0@solver=heun' -> schedules:
    steps[@cfg[@temperature[@settings]]] separated by ';', settings as comma-separated KEY=VALUE with
    KEY one of SAMPLING_FIELDS, optionally prefixed by a stage name."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        fields = part.split("@")
        if len(fields) > 4:
            raise ValueError(f"schedule {part!r}: expected steps[@cfg[@temperature[@settings]]]")
        steps = tuple(int(s) for s in fields[0].split(","))
        settings = {}
        for item in filter(None, fields[3].split(",")) if len(fields) == 4 else ():
            key, sep, value = item.partition("=")
            if not sep or key.rpartition(".")[2] not in SAMPLING_FIELDS:
                raise ValueError(f"schedule {part!r}: settings are KEY=VALUE with KEY in {SAMPLING_FIELDS} "
                                 f"(optionally STAGE.KEY), got {item!r}")
            name = key.rpartition(".")[2]
            try:
                settings[key] = {"solver": str, "time_shift": float}.get(name, int)(value)
            except ValueError:
                raise ValueError(f"schedule {part!r}: {key} must be a number, got {value!r}") from None
        out.append(Schedule(steps[0] if len(steps) == 1 else steps, *(float(f) for f in fields[1:3]), settings=settings))
    return out


@contextmanager
def stage_settings(model: ParScaleEAR, settings: dict):
    """Set sampling fields of the model's stage configs for the duration of the block, then restore them."""
    stages = model.generator.stages
    saved = []
    try:
        for key, value in settings.items():
            stage, _, name = key.rpartition(".")
            if stage and stage not in stages:
                raise ValueError(f"schedule setting {key!r}: no stage {stage!r}; the model has {list(stages)}")
            for config in [stages[stage].config] if stage else [s.config for s in stages.values()]:
                if not hasattr(config, name):
                    raise ValueError(f"schedule setting {key!r}: the stage config has no field {name!r}")
                saved.append((config, name, getattr(config, name)))
                setattr(config, name, value)
                replace(config)  # the config's own checks, on the new value
        yield model
    finally:
        for config, name, value in reversed(saved):
            setattr(config, name, value)


def passes_per_image(model: ParScaleEAR, schedule: Schedule) -> int:
    """Backbone passes per image (the P streams of a pass run together in it); CFG doubles each."""
    steps = model.resolve_steps(schedule.steps)
    guided = 2 if schedule.cfg != 1.0 else 1
    return model.generator.passes(steps, schedule.temperature) * guided  # each stage's count (a Heun stage's corrections)


def time_sampling(model: ParScaleEAR, schedule: Schedule, batch: int, runs: int = 50, bf16: bool = True,
                  graphs: bool = True) -> dict:
    """ms/image (median and P99) of `model.compile_sampler(batch, ...)()` (device noise -> pixels):
    the public fast path, bf16 and CUDA graphs on a GPU; CUDA events."""
    from .benchmark import time_callable

    cuda = model.device.type == "cuda"
    sampler = model.compile_sampler(batch, schedule.steps, schedule.cfg, schedule.temperature,
                                    dtype=torch.bfloat16 if bf16 and cuda else torch.float32, graphs=graphs and cuda)
    ms = torch.tensor(time_callable(sampler, model.device, warmup=5, runs=runs)) / batch
    return {"ms_per_image_p50": float(ms.median()), "ms_per_image_p99": float(ms.quantile(0.99))}


def generated_statistics(model: ParScaleEAR, schedule: Schedule, n: int, inception, batch_size: int = 1000,
                         bf16: bool = True, seed: int = 0):
    """FID statistics (mu, sigma) of n generated images (per-image seeds seed .. seed + n - 1),
    through evaluate.sample_statistics (uint8-quantised, Inception in float32)."""
    from .evaluate import sample_statistics

    mu, sigma, _, _ = sample_statistics(model, n, inception, schedule.cfg, schedule.temperature, schedule.steps, seed,
                                        batch_size, bf16=bf16)
    return mu, sigma


def evaluate_schedules(model: ParScaleEAR, schedules: list[Schedule], n: int, references: dict, inception,
                       time_batches=(256, 16), seed: int = 0, time_runs: int = 50) -> list[dict]:
    """One row per schedule: FID-n against each reference statistics, passes, ms/image per batch."""
    from .fid import frechet_distance

    rows = []
    for s in schedules:
        t0 = time.time()
        with stage_settings(model, s.settings):
            stats = generated_statistics(model, s, n, inception, seed=seed)
            row = {"schedule": s.label, "steps": list(model.resolve_steps(s.steps)), "cfg": s.cfg,
                   "temperature": s.temperature, **({"settings": s.settings} if s.settings else {}), "n": n,
                   "passes_per_image": passes_per_image(model, s)}
            for name, ref in references.items():
                row[f"fid_{name}"] = round(frechet_distance(stats, ref), 3)
            if model.device.type == "cuda":
                for b in time_batches:
                    t = time_sampling(model, s, b, runs=time_runs)
                    row[f"ms_per_image_b{b}"] = round(t["ms_per_image_p50"], 4)
                    row[f"ms_per_image_b{b}_p99"] = round(t["ms_per_image_p99"], 4)
        row["eval_s"] = round(time.time() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def lower_envelope(rows: list[dict], batch: int, key: str = "fid_train") -> list[tuple[float, float]]:
    """(ms/image, FID) points of the best FID reached at or below each latency: a run's FID-vs-latency curve
    over its schedules, from the rows of `evaluate_schedules` timed at `batch`."""
    points, best = [], float("inf")
    for r in sorted(rows, key=lambda r: r[f"ms_per_image_b{batch}"]):
        if r[key] < best:
            best = r[key]
            points.append((r[f"ms_per_image_b{batch}"], best))
    return points


def plot_curves(rows: dict[str, list[dict]], path: str | Path, batch: int, key: str = "fid_train") -> dict:
    """Plot each run's FID-vs-latency curve (`lower_envelope` at `batch`) into `path` (plots.cost_plot); returns the
    curves."""
    from ..plots import cost_plot

    curves = {name: lower_envelope(r, batch, key) for name, r in rows.items()}
    cost_plot(path, {name: [{"cost": ms, "score": fid} for ms, fid in c] for name, c in curves.items()},
              xlabel=f"ms per image (batch {batch})", ylabel="FID-10k (train)",
              title=f"FID-10k vs sampling cost, batch {batch}")
    return curves


def compare_curves(ours: list[dict], peer: list[dict], batch: int, key: str = "fid_train") -> list[dict]:
    """At each point of the peer's curve (its latency and FID), our best FID at that latency or less
    (None where we have no schedule that fast): our curve lies below the peer's at every latency the
    peer reaches when every row has `below` True."""
    curve = lower_envelope(ours, batch, key)
    out = []
    for ms, fid in lower_envelope(peer, batch, key):
        reached = [f for m, f in curve if m <= ms]
        best = min(reached) if reached else None
        out.append({"ms_per_image": ms, "peer_fid": fid, "our_fid": best, "below": best is not None and best < fid})
    return out


def markdown(rows: list[dict]) -> str:
    keys = [k for k in ("recipe", "seed", "train_minutes", "schedule", "passes_per_image", "fid_train", "fid_test",
                        "ms_per_image_b256", "ms_per_image_b16", "ms_per_image_b16_p99") if any(k in r for r in rows)]
    head = "| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n" for r in rows)


def write_table(rows: list[dict], out: str | Path, meta: dict) -> None:
    """results JSON (rows + meta) and a Markdown table beside it, both atomically."""
    from ..files import atomic_write_json, atomic_write_text

    out = Path(out)
    atomic_write_json(out.with_suffix(".json"), {**meta, "rows": rows})
    atomic_write_text(out.with_suffix(".md"), markdown(rows))
