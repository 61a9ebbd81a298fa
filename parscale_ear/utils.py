"""Boundary checks and atomic file writes used across the library.

Every public entry point validates its inputs here (short errors naming expected vs given), and
every file the library writes goes through a temporary file and an atomic rename.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

# Images may exceed [-1, 1] by this much (rounding of uint8 -> float conversions).
RANGE_TOLERANCE = 1e-3


def check_images(images: Any, channels: int, size: int, name: str = "images") -> torch.Tensor:
    """Check a float image batch (B, C, H, W) in [-1, 1] with the expected channels and size."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor in [-1, 1], got dtype {images.dtype}")
    if images.device.type == "meta":
        raise ValueError(f"{name}: a meta tensor holds no values; expected images on the CPU or a GPU")
    if images.ndim != 4:
        raise ValueError(f"{name}: expected shape (B, {channels}, {size}, {size}), got {tuple(images.shape)}")
    if images.shape[1] != channels or images.shape[2] != size or images.shape[3] != size:
        raise ValueError(f"{name}: expected shape (B, {channels}, {size}, {size}), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{name}: expected values in [-1, 1], got [{lo:.3g}, {hi:.3g}]")
    return images


def check_labels(labels: Any, num_classes: int, batch: int | None = None, name: str = "labels") -> torch.Tensor:
    """Check integer class labels in [0, num_classes); returns an int64 tensor."""
    if num_classes == 0:
        raise ValueError(f"{name}: this model is unconditional (num_classes=0) and takes no labels")
    if isinstance(labels, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in labels):
            raise TypeError(f"{name}: expected a list of int class indices, got {labels!r:.80}")
        bad = [int(v) for v in labels if not 0 <= int(v) < max(num_classes, 1)]
        if bad:
            raise ValueError(f"{name}: expected class indices in [0, {num_classes}), got {bad[0]}")
        labels = torch.tensor([int(v) for v in labels], dtype=torch.long)
    elif isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"{name}: expected integer class indices, got a numpy array of dtype {labels.dtype}")
        labels = torch.from_numpy(labels.astype(np.int64))
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, numpy array or list of ints, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{name}: expected shape (B,), got {tuple(labels.shape)}")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{name}: expected {batch} labels, got {labels.shape[0]}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name}: expected class indices in [0, {num_classes}), got [{labels.min().item()}, {labels.max().item()}]"
        )
    return labels.long()


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """An int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        want = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name}: expected {want}, got {value}")
    return int(value)


def check_real(value: Any, name: str, minimum: float = 0.0, inclusive: bool = True) -> float:
    """A finite real number (not a bool or a string) >= minimum (> minimum if not inclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>=' if inclusive else '>'} {minimum:g}, got {value}")
    return value


def check_field_types(config: Any) -> None:
    """A one-line TypeError naming the field when a config dataclass field's value is not of its annotated type
    (int, float, str, bool, tuple[int, ...], a nested config or a dict of its fields, optionally None); an int
    passes for a float, a bool never passes for a number. Call first in __post_init__."""
    import dataclasses
    import sys

    names = vars(sys.modules[type(config).__module__])
    for f in dataclasses.fields(config):
        try:  # the annotation as a type (a string under `from __future__ import annotations`)
            hint = eval(f.type, names) if isinstance(f.type, str) else f.type  # noqa: S307 (our own annotations)
        except Exception:  # a name this module does not import (a lazily loaded config): not checked here
            continue
        value = getattr(config, f.name)
        if not _is_instance(value, hint):
            raise TypeError(f"{type(config).__name__}.{f.name}: expected {_type_name(hint)}, got {value!r:.60} "
                            f"({type(value).__name__})")


def _is_instance(value: Any, hint: Any) -> bool:
    import dataclasses
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is None:
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_is_instance(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list)) and all(_is_instance(v, args[0]) for v in value) if args else \
            isinstance(value, (tuple, list))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a nested config, or a dict of its fields
        return isinstance(value, (hint, dict))
    return True  # annotations this check does not know (forward references, protocols): not checked here


def _type_name(hint: Any) -> str:
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) in (tuple, list):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    name = getattr(hint, "__name__", str(hint))
    return f"{name} (or a dict of its fields)" if hasattr(hint, "__dataclass_fields__") else name


def nested_config(cls: type, value: Any, name: str) -> Any:
    """`value` as config class `cls`: itself, or built from a dict of its fields (unknown fields: one ValueError)."""
    import dataclasses

    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected a {cls.__name__} or a dict of its fields, got {value!r:.60} ({type(value).__name__})")
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {', '.join(map(repr, unknown))} of {cls.__name__}")
    return cls(**value)


def check_latents(latents: Any, shape: tuple[int, int, int], name: str = "latents") -> torch.Tensor:
    """Check a float latent batch (B, C, h, w) of the expected per-sample shape."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(latents).__name__}")
    if not latents.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {latents.dtype}")
    if latents.ndim != 4 or tuple(latents.shape[1:]) != tuple(shape):
        raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, shape))}), got {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return latents


# temporaries are ".NAME.<8 random characters>.parscale-ear.tmp" beside the file they become: a name no user file
# has by accident, so removing stale ones never touches anything else
TEMP_SUFFIX = ".parscale-ear.tmp"
_TEMP_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`
    (then fsync the folder), else remove it. A kill or power loss never leaves a torn `path`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk (folders: where the OS allows opening them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete temporaries that `atomic_path` left beside `folder/NAME` (a killed write), for the given NAMEs
    (glob patterns, e.g. "step_*.png") only; never the files themselves. Returns what was removed."""
    import fnmatch
    import re

    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for name in names:
        pattern = re.compile(r"\." + fnmatch.translate(name).removeprefix("(?s:").removesuffix(")\\Z")
                             + r"\." + _TEMP_RANDOM + re.escape(TEMP_SUFFIX) + r"\Z", re.S)
        for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file() and pattern.match(tmp.name):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` atomically (indented, sorted keys)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` atomically: a kill mid-write never leaves a broken file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def prepare_output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create folder `path` (and parents) if needed, with a one-line error where it cannot be one."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: the folder is not writable")
    return path


def resolve_device(name: str | None) -> str:
    """A device string from --device (cpu, cuda, cuda:N); default cuda when available, else cpu.
    The one device resolver of the CLI, the ci/ scripts and the FID command."""
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ValueError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] (any layout) -> float32 in [-1, 1], on their device."""
    return images.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, H, W, C) on the CPU."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu()


def _pil(array) -> "Image.Image":
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, pad: int = 2,
              column_labels: list[str] | None = None) -> Path:
    """Save images (B, C, H, W) in [-1, 1] as one PNG grid (torchvision's make_grid, white padding),
    atomically; `column_labels` (one per column, e.g. class names) are written above the columns."""
    from torchvision.utils import make_grid

    x = (images.detach().float().clamp(-1, 1) + 1) / 2
    grid = make_grid(x.cpu(), nrow=min(nrow, len(x)), padding=pad, pad_value=1.0)  # (3, H, W) in [0, 1]
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = _pil(array)
    if column_labels:
        from PIL import Image, ImageDraw

        cell = images.shape[-1] + pad
        head = 12
        canvas = Image.new("RGB", (image.width, image.height + head), "white")
        canvas.paste(image.convert("RGB"), (0, head))
        draw = ImageDraw.Draw(canvas)
        for i, label in enumerate(column_labels[: min(nrow, len(x))]):
            draw.text((pad + i * cell, 0), str(label)[: max(1, cell // 6)], fill="black")
        image = canvas
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_images(images: torch.Tensor, folder: str | os.PathLike, names: list[str]) -> None:
    """Save each image (B, C, H, W) in [-1, 1] as folder/name.png, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(to_uint8(images).numpy(), names):
        with atomic_path(folder / f"{name}.png") as tmp:
            _pil(img).save(tmp, format="PNG")


def line_plot(path: str | os.PathLike, series: dict, title: str = "", xlabel: str = "", ylabel: str = "",
              log_x: bool = False, log_y: bool = False) -> Path | None:
    """A PNG line plot of {name: (xs, ys)} with matplotlib (the `plots` extra), axes, ticks and a
    legend outside the lines, written atomically. Without matplotlib: no file, one line on stderr."""
    import math
    import sys

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: no plot {path} (pip install 'parscale-ear[plots]' for matplotlib)", file=sys.stderr)
        return None
    if not any(math.isfinite(y) for _, ys in series.values() for y in ys):
        raise ValueError("line_plot: nothing to plot")
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=100)
    try:
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=str(name))
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if log_x:
            ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def environment(device: torch.device) -> dict:
    """Device name, torch version, git commit and date for a results file."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    commit = commit or os.environ.get("PARSCALE_EAR_COMMIT", "")  # copies of the tree without .git
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": name, "device_type": device.type, "torch": torch.__version__, "git_commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
