"""Loading trained models for inference: a run folder's checkpoint, its metrics, a release folder
(config.json + model.safetensors) and the export from one to the other. Nothing here imports the
training loop, distributed set-up or data loading, so sampling and evaluation stay light.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from .pipeline import ParScaleEAR
from .presets import config_from_dict
from .release import CONFIG_NAME, load_module_state  # noqa: F401  (load_module_state: part of this API)

CHECKPOINT = "checkpoint.pt"  # in a run folder, written by `train`
METRICS = "metrics.jsonl"


def _name_hint(given: str | Path) -> str:
    """For a bare name that is no folder: the names of the models shipped inside the package."""
    if Path(given).exists() or len(Path(given).parts) != 1:
        return ""
    from .release import shipped_models

    return f" (nor is it a shipped model: {', '.join(shipped_models())})"


def load_checkpoint(run: str | Path) -> dict:
    """The checkpoint dict of a run folder (or a checkpoint file), with a clear error if unusable."""
    path = Path(run)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}{_name_hint(run)}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): it was never written completely")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message is long and about pickles
        raise ValueError(f"cannot read checkpoint {path}: {_unreadable(e)}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "kind" not in ckpt:
        raise ValueError(f"{path} is not a parscale-ear training checkpoint")
    if "digest" not in ckpt:
        raise ValueError(f"{path}: the checkpoint records no digest of its contents: it was edited or damaged, or "
                         f"written by parscale-ear 0.1 (0.2 and later always write one), and is refused")
    if ckpt["digest"] != state_digest({k: v for k, v in ckpt.items() if k != "digest"}):
        raise ValueError(f"{path}: the checkpoint does not match its recorded digest (the file was damaged)")
    check_checkpoint(ckpt, path)
    return ckpt


def _unreadable(error: Exception) -> str:
    """Why torch.load (weights_only) refused a file, in a few words."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:  # a pickle of Python objects: never unpickled, it could run code
        return (f"it holds a Python object ({found.group(1)}), not only tensors and plain values; it is refused unread "
                f"(loading it could run code), so it was not written by parscale-ear train")
    return "not a complete PyTorch checkpoint (truncated, or another kind of file)"


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, float32 values): what a cache of its outputs is keyed by."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def state_digest(obj) -> str:
    """SHA-256 of a checkpoint's contents (nested dicts, lists, tensors and plain values, in a fixed order): `train`
    records it, `load_checkpoint` checks it, so a damaged file is refused rather than loaded with wrong weights."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


STATE_KEYS = {"vae": ("model", "ema"), "generator": ("model", "ema", "vae")}  # dicts of tensors a checkpoint holds


def check_checkpoint(ckpt: dict, path) -> None:
    """A one-line ValueError unless `ckpt` has what `train` writes: its kind, step, train and config dicts and the
    weights of its kind (an optimizer state is checked where a run resumes)."""
    kind = ckpt.get("kind")
    if kind not in STATE_KEYS:
        raise ValueError(f"{path}: checkpoint kind {kind!r} is neither 'vae' nor 'generator'")
    missing = [k for k in ("step", "train", "config", *STATE_KEYS[kind]) if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {', '.join(map(repr, missing))}; it was not written completely "
                         f"by parscale-ear train")
    if isinstance(ckpt["step"], bool) or not isinstance(ckpt["step"], int) or ckpt["step"] < 0:
        raise ValueError(f"{path}: the checkpoint's step is {ckpt['step']!r}, expected an int >= 0")
    for key in ("train", "config", *STATE_KEYS[kind]):
        if not isinstance(ckpt[key], dict):
            raise ValueError(f"{path}: the checkpoint's {key!r} is a {type(ckpt[key]).__name__}, expected a dict")
    for key in STATE_KEYS[kind]:
        bad = [k for k, v in ckpt[key].items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{path}: the checkpoint's {key!r} holds a non-tensor entry {bad[0]!r}")


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
    model = ParScaleEAR(config_from_dict(ckpt["config"]))
    weights = ckpt["ema"] if use_ema else ckpt["model"]
    check_finite_state(weights, "checkpoint")
    if ckpt["kind"] == "vae":
        load_module_state(model.vae, weights, "checkpoint (LiteVAE)")
    else:
        load_module_state(model.vae, ckpt["vae"], "checkpoint (LiteVAE)")
        load_module_state(model.generator, weights, "checkpoint (generator)")
    return model.eval()


def load_pipeline(path: str | Path | None, device: str | torch.device = "cpu") -> ParScaleEAR:
    """A pipeline from a release folder (config.json), a run folder / checkpoint file, or, where no such path exists,
    a shipped model's name ("fmnist-32-es"; a preset's name says whether weights ship); None: the embedded default
    model."""
    if path is None:
        return ParScaleEAR.from_pretrained(device=device)
    if isinstance(path, str) and not Path(path).exists() and is_model_name(path):
        return ParScaleEAR.from_pretrained(path, device=device)
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return ParScaleEAR.from_pretrained(path, device=device)
    ckpt = load_checkpoint(path)
    if ckpt["kind"] != "generator":
        raise ValueError(f"{path} is a LiteVAE run; sampling needs a generator run (parscale-ear train) or a release folder")
    return model_from_checkpoint(ckpt).to(device)


def is_model_name(name: str) -> bool:
    """Whether `name` names a model rather than a path: a shipped model or a preset (a missing relative path such as
    runs/gen stays a missing path, never a Hub download)."""
    from .presets import list_models
    from .release import shipped_models

    return name in shipped_models() or name in list_models()


def export(run: str | Path, out: str | Path, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write a run's EMA pipeline in the release format (config.json + model.safetensors) into `out`,
    which must not be the run folder or inside it; `dtype` float16/bfloat16 halves the weights. A folder that
    holds a model already (config.json or model.safetensors, another release's or anyone's) is left alone unless
    `overwrite`."""
    from .release import WEIGHTS_NAME

    ckpt = load_checkpoint(run)
    if ckpt["kind"] != "generator":
        raise ValueError(f"export: {run} is a {ckpt['kind']} run; export a generator run (trained with `parscale-ear train`)")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    target = Path(out).resolve()
    if target == run_dir.resolve() or run_dir.resolve() in target.parents:
        raise ValueError(f"export: --out {out} is the run folder or inside it; choose a folder outside {run_dir}")
    taken = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if (Path(out) / name).exists()]
    if taken and not overwrite and not (Path(out) / CHECKPOINT).exists():  # a run folder: save_pretrained says so
        raise FileExistsError(f"export: --out {out} already holds {' and '.join(taken)}; they are left alone: choose a "
                              f"new folder, or pass --overwrite to replace them")
    return model_from_checkpoint(ckpt).save_pretrained(out, dtype)


def source_digest(source: str | Path) -> str:
    """What a release or run folder ('default': the shipped model) holds now, as a digest, without building a model:
    a release's recorded weights and config digests, a run's checkpoint file's SHA-256. A run records its teacher's,
    so a resume notices a teacher that changed."""
    from .files import sha256_file
    from .release import DEFAULT_MODEL, read_meta, resolve

    path = DEFAULT_MODEL if str(source) == "default" else resolve(source)
    if (path / CONFIG_NAME).is_file():
        meta = read_meta(path / CONFIG_NAME)
        return f"release {meta['weights_sha256']} {meta['config_sha256']}"
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return f"checkpoint {sha256_file(path)}"
