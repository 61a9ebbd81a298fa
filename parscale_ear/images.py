"""Images as the library stores them: uint8 <-> [-1, 1] floats, PNG grids (with column labels) and one PNG per
image, each written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .files import atomic_path

if TYPE_CHECKING:
    from PIL import Image

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
