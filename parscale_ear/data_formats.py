"""Image files other than Fashion-MNIST's idx files, as `data.ImageData`: CIFAR-10 python batches (read with an
unpickler that only builds plain arrays), .npz arrays and image folders (ImageFolder layout or flat)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from .data import CIFAR10_CLASSES, IMAGE_EXTENSIONS, DatasetError, ImageData, _finish, _fit

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def _has_cifar(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _CIFAR_TRAIN + _CIFAR_TEST)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only what CIFAR-10 batches hold: dicts, lists, bytes, numpy arrays."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],  # old and new numpy names
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # how protocol 2 stores bytes from Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")
        return self._allowed[(module, name)]


def _read_cifar_pickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read CIFAR-10 file {path}: {e}") from None
    if len(raw) < 2 or raw[0] != 0x80 or not 2 <= raw[1] <= 5:  # PROTO opcode, protocol 2 to 5
        raise DatasetError(f"CIFAR-10 file {path} is not a Python pickle (protocol 2 or later)")
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise DatasetError(f"CIFAR-10 file {path} is corrupt or not a CIFAR-10 batch: {e}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR-10 file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _load_cifar(folder: Path, split: str, image_size: int, channels: int | None) -> ImageData:
    images, labels = [], []
    for name in _CIFAR_TRAIN if split == "train" else _CIFAR_TEST:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"CIFAR-10 {split} split incomplete in {folder}: no {name}")
        batch = _read_cifar_pickle(path)
        data, batch_labels = batch.get(b"data"), batch.get(b"labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DatasetError(f"CIFAR-10 file {path}: b'data' must be a uint8 (N, 3072) array, got {got}")
        if not isinstance(batch_labels, (list, np.ndarray)) or len(batch_labels) != len(data):
            is_list = isinstance(batch_labels, (list, np.ndarray))
            got = f"{len(batch_labels)} items" if is_list else type(batch_labels).__name__
            raise DatasetError(f"CIFAR-10 file {path}: b'labels' must list {len(data)} class indices, got {got}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, 32, 32, 3)
        labels.append(np.asarray(batch_labels))
    labels = np.concatenate(labels)
    if labels.size and labels.dtype.kind not in "iu":
        raise DatasetError(f"CIFAR-10 labels in {folder} must be integers, got {labels.dtype}")
    names = None
    if (folder / "batches.meta").is_file():
        meta = _read_cifar_pickle(folder / "batches.meta").get(b"label_names")
        if not isinstance(meta, list) or not all(isinstance(m, bytes) for m in meta):
            raise DatasetError(f"CIFAR-10 file {folder / 'batches.meta'}: b'label_names' must be a list of bytes")
        names = [m.decode("utf-8", "replace") for m in meta]
    elif labels.size == 0 or labels.max() < 10:
        names = CIFAR10_CLASSES
    return _finish(np.concatenate(images), labels, names, image_size, channels, f"{folder} {split}")


# ----------------------------------------------------------------------------- .npz arrays

def _load_npz(path: Path, image_size: int, channels: int | None) -> ImageData:
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise DatasetError(f"{path} has no 'images' array (it holds: {', '.join(npz.files) or 'nothing'})")
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
            names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
    except DatasetError:
        raise
    except Exception as e:  # bad zip, truncated member, object arrays (pickle refused), ...
        raise DatasetError(f"cannot read {path} as .npz: {e}") from None
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]  # (N, H, W, 1)
    elif images.ndim == 4:
        last, first = images.shape[3] in (1, 3), images.shape[1] in (1, 3)
        if first and last and images.shape[1] != images.shape[3]:
            raise DatasetError(f"{path}: 'images' shape {images.shape} is ambiguous between "
                               f"(N, C, H, W) and (N, H, W, C)")
        if first and not last:
            images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        elif not last:
            raise DatasetError(f"{path}: 'images' must be (N, H, W), (N, H, W, C) or (N, C, H, W) "
                               f"with C 1 or 3, got {images.shape}")
    else:
        raise DatasetError(f"{path}: 'images' must be (N, H, W), (N, H, W, C) or (N, C, H, W), got {images.shape}")
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
            raise DatasetError(f"{path}: 'labels' must be integer ({len(images)},), "
                               f"got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise DatasetError(f"{path}: 'labels' must be >= 0, got {labels.min()}")
        if names is not None and labels.size and labels.max() >= len(names):
            raise DatasetError(f"{path}: label {labels.max()} has no entry in its {len(names)} 'class_names'")
    return _finish(images, labels, names, image_size, channels, str(path))


# ----------------------------------------------------------------------------- image folders

def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _load_image_folder(folder: Path, image_size: int, channels: int) -> ImageData:
    top_images = sorted(p for p in folder.iterdir() if _is_image(p))
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [sorted(p for p in d.rglob("*") if _is_image(p)) for d in class_dirs]
    if top_images and any(per_class):
        raise DatasetError(f"{folder} mixes images at its top level with class sub-folders; "
                           f"use one layout (sub-folders = classes, or a flat folder)")
    if top_images:
        files, labels, names = top_images, None, None
    elif any(per_class):
        for d, imgs in zip(class_dirs, per_class):
            if not imgs:
                raise DatasetError(f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files = [p for imgs in per_class for p in imgs]
        labels = np.concatenate([np.full(len(imgs), i) for i, imgs in enumerate(per_class)])
        names = [d.name for d in class_dirs]
    else:
        raise DatasetError(f"no data found in {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}), "
                           f"idx files or CIFAR-10 batches")
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((len(files), image_size, image_size, channels), np.uint8)  # (N, S, S, C)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError ...
            raise DatasetError(f"cannot read image {path}: {e}") from None
        images[i] = np.asarray(_fit(im, image_size)).reshape(image_size, image_size, channels)
    return _finish(images, labels, names, image_size, channels, str(folder))


# ----------------------------------------------------------------------------- shared
