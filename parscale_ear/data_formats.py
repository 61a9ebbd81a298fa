"""CIFAR-10 python batches as uint8 arrays (N, 32, 32, 3) with their labels and class names, read with an unpickler
that only builds plain arrays; `data.load_dataset` makes them an `ImageData`."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .image_files import DatasetError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def has_cifar(folder: Path) -> bool:
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


def cifar_files(folder: Path, split: str) -> list[Path]:
    """The batch files of a split (and batches.meta when present)."""
    names = (_CIFAR_TRAIN if split == "train" else _CIFAR_TEST) + ["batches.meta"]
    return [folder / n for n in names if (folder / n).is_file()]


def load_cifar(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """A split's images (N, 32, 32, 3) uint8, labels and class names (None: unnamed)."""
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
    return np.concatenate(images), labels, names
