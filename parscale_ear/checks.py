"""Boundary checks: every public entry point validates its inputs here, with a short error naming the argument,
what was expected and what was given, and never corrects silently."""
from __future__ import annotations

import math
from typing import Any

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
