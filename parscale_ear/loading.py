"""Loading trained models for inference: a run folder's checkpoint, its metrics, a release folder
(config.json + model.safetensors) and the export from one to the other. Nothing here imports the
training loop, distributed set-up or data loading, so sampling and evaluation stay light.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .pipeline import CONFIG_NAME, ParScaleEAR, ParScaleEARConfig

CHECKPOINT = "checkpoint.pt"  # in a run folder, written by `train`
METRICS = "metrics.jsonl"


def load_checkpoint(run: str | Path) -> dict:
    """The checkpoint dict of a run folder (or a checkpoint file), with a clear error if unusable."""
    path = Path(run)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): it was never written completely")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "kind" not in ckpt:
        raise ValueError(f"{path} is not a parscale-ear training checkpoint")
    return ckpt


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a torn last line (a killed write) is dropped, a torn middle line is an error."""
    if not path.exists():
        return []
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # the write of the last row was cut short
            raise ValueError(f"{path} line {i + 1} is not JSON ({e}); fix or remove that line") from None
    return rows


def check_finite_state(state: dict, source: str) -> None:
    """A one-line ValueError if any floating-point tensor of a state dict holds NaN or Inf (a diverged run)."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{source}: weight {name!r} holds NaN or Inf (a diverged run); it cannot be used")


def model_from_checkpoint(ckpt: dict, use_ema: bool = True) -> ParScaleEAR:
    """The pipeline held by a checkpoint (EMA weights by default)."""
    model = ParScaleEAR(ParScaleEARConfig.from_dict(ckpt["config"]))
    weights = ckpt["ema"] if use_ema else ckpt["model"]
    check_finite_state(weights, "checkpoint")
    if ckpt["kind"] == "vae":
        model.vae.load_state_dict(weights)
    else:
        model.vae.load_state_dict(ckpt["vae"])
        model.hybrid.load_state_dict(weights)
    return model.eval()


def load_pipeline(path: str | Path | None, device: str | torch.device = "cpu") -> ParScaleEAR:
    """A pipeline from a release folder (config.json) or a run folder / checkpoint file; None: the
    embedded default model."""
    if path is None:
        return ParScaleEAR.from_pretrained(device=device)
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return ParScaleEAR.from_pretrained(path, device=device)
    ckpt = load_checkpoint(path)
    if ckpt["kind"] != "generator":
        raise ValueError(f"{path} is a LiteVAE run; sampling needs a generator run (parscale-ear train) or a release folder")
    return model_from_checkpoint(ckpt).to(device)


def export(run: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a run's EMA pipeline in the release format (config.json + model.safetensors) into `out`,
    which must not be the run folder or inside it; `dtype` float16/bfloat16 halves the weights."""
    ckpt = load_checkpoint(run)
    if ckpt["kind"] != "generator":
        raise ValueError(f"export: {run} is a {ckpt['kind']} run; export a generator run (trained with `parscale-ear train`)")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    target = Path(out).resolve()
    if target == run_dir.resolve() or run_dir.resolve() in target.parents:
        raise ValueError(f"export: --out {out} is the run folder or inside it; choose a folder outside {run_dir}")
    return model_from_checkpoint(ckpt).save_pretrained(out, dtype)
