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


TEMP_SUFFIX = ".tmp"  # temporaries are ".NAME.<random>.tmp" beside the file they become


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
    """Delete temporaries that `atomic_path` left beside `folder/NAME` (a killed write), for the
    given NAMEs only; never the files themselves. Returns what was removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f".{glob.escape(name)}.*{TEMP_SUFFIX}"):
            if tmp.is_file():
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
    if device.type not in ("cpu", "cuda"):
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


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, pad: int = 2) -> Path:
    """Save images (B, C, H, W) in [-1, 1] as one PNG grid, atomically."""
    x = to_uint8(images)
    B, H, W, C = x.shape
    ncol = min(nrow, B)
    rows = (B + ncol - 1) // ncol
    canvas = torch.full((rows * (H + pad) + pad, ncol * (W + pad) + pad, C), 255, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        canvas[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = x[i]
    with atomic_path(path) as tmp:
        _pil(canvas.numpy()).save(tmp, format="PNG")
    return Path(path)


def save_images(images: torch.Tensor, folder: str | os.PathLike, names: list[str]) -> None:
    """Save each image (B, C, H, W) in [-1, 1] as folder/name.png, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(to_uint8(images).numpy(), names):
        with atomic_path(folder / f"{name}.png") as tmp:
            _pil(img).save(tmp, format="PNG")


def line_plot(path: str | os.PathLike, series: dict, title: str = "", xlabel: str = "", log_x: bool = False) -> Path:
    """A small PNG line plot of {name: (xs, ys)} (PIL only, no matplotlib), written atomically."""
    import math

    from PIL import Image, ImageDraw

    W, H, pad = 720, 400, 50
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    fx = (lambda v: math.log2(v)) if log_x else (lambda v: v)  # noqa: E731
    xs = [fx(x) for xs_, _ in series.values() for x in xs_]
    ys = [y for _, ys_ in series.values() for y in ys_ if math.isfinite(y)]
    if not xs or not ys:
        raise ValueError("line_plot: nothing to plot")
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda v: pad + (W - 2 * pad) * (fx(v) - x0) / ((x1 - x0) or 1)  # noqa: E731
    sy = lambda v: H - pad - (H - 2 * pad) * (v - y0) / ((y1 - y0) or 1)  # noqa: E731
    draw.rectangle([pad, pad, W - pad, H - pad], outline="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    for k, (name, (xs_, ys_)) in enumerate(series.items()):
        c = colors[k % len(colors)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs_, ys_) if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=c, width=2)
        for px, py in pts:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
        draw.text((pad + 6, pad + 6 + 13 * k), str(name), fill=c)
    draw.text((pad, 15), title, fill="black")
    draw.text((pad, H - pad + 8), f"{xlabel}: {min(v for s in series.values() for v in s[0]):g} .. "
              f"{max(v for s in series.values() for v in s[0]):g}   y: {y0:.4g} .. {y1:.4g}", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
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
