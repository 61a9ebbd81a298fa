"""Datasets rewritten for training at another size or scale: any source (Fashion-MNIST, idx files, CIFAR-10, .npz, an
image folder or tar shards) rendered to an image folder of PNGs at a chosen size (one sub-folder a class), e.g. the
256 x 256 RGB folder the lite-256 presets train on; an image folder into WebDataset tar shards is shards.write_shards."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .data import check_read_options, in_memory_source, load_dataset
from .files import atomic_path, prepare_output_folder, remove_stale_temporaries
from .image_files import fit
from .streaming import open_images


def _folder_name(name: str, i: int) -> str:
    """A class name as a folder name: no path separators or leading dots ("T-shirt/top" -> "T-shirt-top")."""
    return re.sub(r"[^\w.+-]+", "-", name).strip("-.") or f"class-{i}"


MANIFEST = ".parscale-ear-folder.json"  # what a folder was rendered from and how: a rerun resumes only the same


def _claim(out: Path, settings: dict) -> None:
    """Mark `out` as this conversion's (a new or empty folder), or check it is (a rerun); a one-line error for a folder
    that holds something else or was rendered at other settings (its PNGs would be of two kinds)."""
    import json

    from .files import atomic_write_json

    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != settings:
            raise FileExistsError(f"{out} was rendered from other settings ({path}: {old}); choose another folder")
        return
    if any(not p.name.startswith(".") for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and was not started by `data folder`; images go into a new folder")
    atomic_write_json(path, settings)


def write_image_folder(source: str, out: str | os.PathLike, image_size: int, channels: int = 3, split: str = "train",
                       max_images: int = 0, per_class: int = 0, progress: bool = False) -> tuple[Path, int]:
    """Render `source`'s images as `out`/CLASS/NNNNNN.png (flat when unlabelled) at image_size x image_size with
    `channels` (1 grey, 3 RGB): the shorter side resized (up or down, bicubic), the centre cropped; the first
    `max_images`, or the first `per_class` of each class, when > 0. Each PNG is written atomically and one already
    there is kept, so a rerun resumes. Returns (out, number of images written or kept)."""
    check_read_options(split, image_size, channels)
    if channels is None:
        raise ValueError("channels must be 1 (grey) or 3 (RGB)")
    out = prepare_output_folder(out, "OUT")
    _claim(out, {"source": str(source), "split": split, "image_size": image_size, "channels": channels})
    if in_memory_source(source):
        data = load_dataset(source, split, image_size=None)  # as stored: fitted below, upscaling included
        images, labels, names = data.images.permute(0, 2, 3, 1).numpy(), data.labels, data.class_names
        count = len(images) if max_images <= 0 else min(max_images, len(images))

        def item(i: int) -> tuple[np.ndarray, int]:
            return images[i], -1 if labels is None else int(labels[i])
    else:
        stream = open_images(source, image_size, channels, max_images)
        count, names = len(stream), stream.class_names if stream.labelled else []

        def item(i: int) -> tuple[np.ndarray, int]:
            image, label = stream.load(i)
            return image.permute(1, 2, 0).numpy(), label
    # a folder's classes are its sub-folders in sorted order: in-memory sources prefix the label to keep theirs
    width = len(str(max(len(names) - 1, 0)))
    folders = {i: out / (f"{i:0{width}d}-{_folder_name(name, i)}" if in_memory_source(source) else _folder_name(name, i))
               for i, name in enumerate(names)}
    for folder in {out, *folders.values()}:
        remove_stale_temporaries(folder, ("[0-9]*.png",))
    indices, taken = range(count), {}
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="write images", unit="image")
    for i in indices:
        image, label = item(i)
        if per_class > 0 and taken.get(label, 0) >= per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        path = folders.get(label, out) / f"{i:06d}.png"
        path.parent.mkdir(exist_ok=True)  # a class folder only for a class that has images
        if path.is_file():
            continue
        im = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        im = fit(im.convert("L" if channels == 1 else "RGB"), image_size)
        with atomic_path(path) as tmp:
            im.save(tmp, format="PNG")
    return out, sum(taken.values())
