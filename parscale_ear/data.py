"""Image datasets held in memory as uint8 (N, C, H, W) tensors: Fashion-MNIST idx files, CIFAR-10 python batches
(data_formats.py), image folders (ImageFolder layout or flat) and .npz arrays (image_files.py). Fashion-MNIST's 28x28
images are zero-padded to 32x32 (its background is 0); other sources are resized to fit. Sets too large for memory
are read lazily instead (streaming.py)."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data_formats import CIFAR10_CLASSES, CIFAR_DIR, cifar_files, has_cifar, load_cifar  # noqa: F401 (CIFAR10_CLASSES)
from .files import sha256_file
from .image_files import IMAGE_EXTENSIONS, DatasetError, fit_arrays, read_folder, read_npz  # noqa: F401
from .images import from_uint8

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian `dataset-fashion-mnist`
DATA_ENV = "PARSCALE_EAR_DATA"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = ("train", "test")

_IDX_PREFIX = {"train": "train", "test": "t10k"}  # Fashion-MNIST names its test split t10k
_IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dims (N, H, W)
_IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dim (N,)


@dataclass
class ImageData:
    """A set of images with optional class labels, held in memory as uint8."""

    images: torch.Tensor  # (N, C, H, W) uint8, C = 1 (grey) or 3 (RGB)
    labels: torch.Tensor | None = None  # (N,) int64 class indices, None when unlabelled
    class_names: list[str] = field(default_factory=list)  # label i is class_names[i]
    source: str = ""  # where the images came from, for summaries and logs
    identity: str = ""  # a digest of the source files and how they were read ("": none, e.g. arrays made in memory)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"ImageData.images must be uint8 (N, C, H, W) with C 1 or 3, "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (len(self.images),):
                raise ValueError(f"ImageData.labels must be int64 ({len(self.images)},), "
                                 f"got {self.labels.dtype} {tuple(self.labels.shape)}")
            if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
                raise ValueError(f"ImageData.labels must lie in [0, {len(self.class_names)}) to match "
                                 f"class_names, got [{int(self.labels.min())}, {int(self.labels.max())}]")

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 if unlabelled."""
        return len(self.class_names) if self.labels is not None else 0

    def __len__(self) -> int:
        return len(self.images)

    def to_float(self) -> torch.Tensor:
        """Images as float32 in [-1, 1], (N, C, H, W)."""
        return from_uint8(self.images)

    def subset(self, n: int, seed: int | None = None) -> ImageData:
        """The first n images, or n drawn without replacement with `seed`."""
        if not 0 <= n <= len(self):
            raise ValueError(f"subset size must be in [0, {len(self)}], got {n}")
        if seed is None:
            index = torch.arange(n)
        else:
            index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        labels = None if self.labels is None else self.labels[index]
        identity = self.identity and f"{self.identity}:{'first' if seed is None else f'seed{seed}-'}{n}"
        return ImageData(self.images[index], labels, list(self.class_names), self.source, identity)


def load_dataset(source: str, split: str = "train", image_size: int | None = 32,
                 channels: int | None = None) -> ImageData:
    """Load "fashion-mnist", or a folder (idx files, CIFAR-10 batches, images) or .npz file.

    `split` ("train" or "test") selects the files of Fashion-MNIST and CIFAR-10; an image folder
    or .npz file is a single split and is returned whole. `channels` forces 1 (grey) or 3 (RGB);
    by default idx files give 1, CIFAR-10 and image folders 3, .npz what it stores. `image_size` None
    keeps the stored size (an image folder's must then be one).
    """
    check_read_options(split, image_size, channels)
    if str(source).lower() == "fashion-mnist":
        return _load_idx(_find_fashion_mnist(split), split, image_size, channels, f"fashion-mnist {split}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"data source not found: {path} (expected 'fashion-mnist', a folder of idx "
                           f"files, CIFAR-10 batches, images or tar shards, or a .npz file)")
    if not path.is_dir():
        if path.is_file() and path.suffix.lower() == ".npz":
            return _finish(*read_npz(path), image_size, channels, str(path), [path])
        raise DatasetError(f"unsupported data source {path}: expected a .npz file or a folder")
    for folder, kind in ((path, "idx"), (path, "cifar"), (path / "fashion-mnist", "idx"), (path / CIFAR_DIR, "cifar")):
        if kind == "idx" and _has_idx(folder):
            return _load_idx(folder, split, image_size, channels)
        if kind == "cifar" and has_cifar(folder):
            return _finish(*load_cifar(folder, split), image_size, channels, f"{folder} {split}", cifar_files(folder, split))
    channels = 3 if channels is None else channels
    images, labels, names = read_folder(path, image_size, channels)
    return _finish(images, labels, names, image_size, channels, str(path))


def check_read_options(split: str, image_size: int | None, channels: int | None) -> None:
    """One-line errors for a split, image size or channel count that no source can give."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 (grey), 3 (RGB) or None (as stored), got {channels!r}")


def in_memory_source(source: str) -> bool:
    """True for the sources held in memory (Fashion-MNIST, idx files, CIFAR-10 batches, .npz); False for a folder
    of images or of tar shards, which are read lazily."""
    if str(source).lower() == "fashion-mnist":
        return True
    path = Path(source).expanduser()
    if not path.is_dir():
        return True  # a .npz, or a missing or unsupported path: load_dataset says which
    return any(_has_idx(f) for f in (path, path / "fashion-mnist")) or any(has_cifar(f) for f in (path, path / CIFAR_DIR))


def dataset_summary(data: ImageData) -> str:
    """One line: source, count, image shape, classes and images per class."""
    n, c, h, w = data.images.shape
    text = f"{data.source or 'images'}: {n:,} images, {c}x{h}x{w} {'grey' if c == 1 else 'RGB'}"
    if data.labels is None or data.num_classes == 0:
        return text + ", unlabelled"
    counts = torch.bincount(data.labels, minlength=data.num_classes)
    return (text + f", {data.num_classes} classes ({int(counts.min()):,} to {int(counts.max()):,} "
            f"per class: {', '.join(data.class_names[:3])}{', ...' if data.num_classes > 3 else ''})")


def _finish(images: np.ndarray, labels: np.ndarray | None, names: list[str] | None, image_size: int | None,
            channels: int | None, source: str, files: list[Path] | None = None) -> ImageData:
    """(N, H, W, C) uint8 -> ImageData with the requested size and channels; `files` (the source files, hashed)
    give its identity."""
    images = fit_arrays(images, image_size, channels, source)
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, S, S)
    label_tensor = None
    if labels is not None:
        label_tensor = torch.from_numpy(labels.astype(np.int64))
        if names is None:
            names = [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise DatasetError(f"{source}: labels span [{labels.min()}, {labels.max()}], "
                               f"outside its {len(names)} classes ({shown})")
    identity = ""
    if files:
        digest = hashlib.sha256(f"{image_size} {channels}".encode())
        for path in files:
            digest.update(f"{path.name}\t{sha256_file(path)}\n".encode())
        identity = digest.hexdigest()
    return ImageData(tensor, label_tensor, list(names or []), source, identity)


# ----------------------------------------------------------------------------- Fashion-MNIST

def _idx_file(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in folder, whichever exists (uncompressed first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_idx(folder: Path) -> bool:
    return folder.is_dir() and any(_idx_file(folder, f"{prefix}-{kind}-ubyte") is not None
                                   for prefix in _IDX_PREFIX.values() for kind in ("images-idx3", "labels-idx1"))


def _find_fashion_mnist(split: str) -> Path:
    """First folder holding idx files: $PARSCALE_EAR_DATA, its fashion-mnist/, the Debian folder."""
    env = os.environ.get(DATA_ENV)
    folders = [Path(env), Path(env) / "fashion-mnist"] if env else []
    folders.append(Path(DEBIAN_FASHION_MNIST_DIR))
    for folder in folders:
        if _has_idx(folder):
            return folder
    prefix = _IDX_PREFIX[split]
    if env:
        looked = f"${DATA_ENV}={folders[0]}, {folders[1]} and {folders[2]}"
    else:
        looked = f"{folders[0]} and ${DATA_ENV} (unset)"
    raise DatasetError(f"Fashion-MNIST not found: looked in {looked}; install it with "
                       f"`apt-get install dataset-fashion-mnist`, set ${DATA_ENV}, or pass --data PATH to a "
                       f"folder holding {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped if its name ends in .gz) as an array."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read idx file {path}: {e}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim  # magic, then one big-endian uint32 per dimension
    if len(raw) < header:
        raise DatasetError(f"idx file {path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(f"idx file {path} has magic number {found}, expected {magic}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DatasetError(f"idx file {path} holds {len(raw) - header} bytes of data, "
                           f"its header {dims} says {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_idx(folder: Path, split: str, image_size: int, channels: int | None,
              source: str | None = None) -> ImageData:
    prefix = _IDX_PREFIX[split]
    files = {kind: _idx_file(folder, f"{prefix}-{kind}-ubyte") for kind in ("images-idx3", "labels-idx1")}
    for kind, path in files.items():
        if path is None:
            raise DatasetError(f"{split} split incomplete in {folder}: no {prefix}-{kind}-ubyte[.gz]")
    images = _read_idx(files["images-idx3"], _IDX_IMAGES_MAGIC)  # (N, H, W)
    labels = _read_idx(files["labels-idx1"], _IDX_LABELS_MAGIC)  # (N,)
    if len(images) != len(labels):
        raise DatasetError(f"{files['images-idx3']} holds {len(images)} images but "
                           f"{files['labels-idx1']} holds {len(labels)} labels")
    if images.shape[1:] == (28, 28):
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # (N, 32, 32); the background is 0
    names = FASHION_MNIST_CLASSES if len(labels) == 0 or labels.max() < 10 else None
    return _finish(images[..., None], labels, names, image_size, channels, source or f"{folder} {split}",
                   list(files.values()))
