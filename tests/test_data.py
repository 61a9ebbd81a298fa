"""Tests for parscale_ear.data: each format written in its real on-disk layout, each bad input
gets a one-line DatasetError naming the file. CPU only, a few seconds."""

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parscale_ear import data as data_module
from parscale_ear.data import (CIFAR10_CLASSES, DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, DatasetError,
                               ImageData, dataset_summary, load_dataset)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The idx encoding: big-endian magic, one big-endian uint32 per dim, then the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in ((f"{prefix}-images-idx3-ubyte", idx_bytes(images, 2051)),
                          (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049))):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


@pytest.fixture
def fmnist(tmp_path):
    """A tiny Fashion-MNIST folder: 6 train and 4 test images of 28x28, gzipped like Debian's."""
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(1, 256, (6, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 9, 9, 3], np.uint8)),
              "t10k": (rng.integers(1, 256, (4, 28, 28), dtype=np.uint8), np.array([5, 6, 7, 8], np.uint8))}
    folder = tmp_path / "fm"
    for prefix, (images, labels) in arrays.items():
        write_idx(folder, prefix, images, labels, gz=True)
    return folder, arrays


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)


# ----------------------------------------------------------------------------- Fashion-MNIST / idx

@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_pads_28_to_32(tmp_path, gz):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(1, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 0, 9, 1, 1], np.uint8)
    write_idx(tmp_path, "train", images, labels, gz)
    data = load_dataset(str(tmp_path))
    assert data.images.shape == (5, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert torch.equal(data.images[:, 0, 2:30, 2:30], torch.from_numpy(images))  # content centred at offset 2
    border = data.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.max()) == 0
    assert data.class_names == FASHION_MNIST_CLASSES and data.num_classes == 10 and len(data) == 5


def test_idx_test_split_reads_t10k_and_resizes(fmnist):
    folder, arrays = fmnist
    test = load_dataset(str(folder), split="test")
    assert len(test) == 4 and test.labels.tolist() == [5, 6, 7, 8]
    assert torch.equal(test.images[:, 0, 2:30, 2:30], torch.from_numpy(arrays["t10k"][0]))
    small = load_dataset(str(folder), split="test", image_size=16, channels=3)
    assert small.images.shape == (4, 3, 16, 16)
    assert torch.equal(small.images[:, 0], small.images[:, 2])  # grey repeated to RGB
    padded = Image.fromarray(np.pad(arrays["t10k"][0][0], 2))
    expected = np.asarray(padded.resize((16, 16), Image.BICUBIC))
    assert np.array_equal(small.images[0, 0].numpy(), expected)


def test_fashion_mnist_honours_env(fmnist, monkeypatch):
    folder, _ = fmnist
    monkeypatch.setenv("PARSCALE_EAR_DATA", str(folder))
    assert len(load_dataset("fashion-mnist")) == 6
    monkeypatch.setenv("PARSCALE_EAR_DATA", str(folder.parent))  # rename fm -> <env>/fashion-mnist
    folder.rename(folder.parent / "fashion-mnist")
    data = load_dataset("fashion-mnist", split="test")
    assert len(data) == 4 and data.source == "fashion-mnist test"


def test_fashion_mnist_missing_says_where_it_looked(tmp_path, monkeypatch):
    empty, debian = tmp_path / "empty", tmp_path / "no-debian"
    empty.mkdir()
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST_DIR", str(debian))
    monkeypatch.setenv("PARSCALE_EAR_DATA", str(empty))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("fashion-mnist")
    assert_one_line_error(excinfo, empty, empty / "fashion-mnist", debian, "apt-get install dataset-fashion-mnist",
                          "train-images-idx3-ubyte")
    monkeypatch.delenv("PARSCALE_EAR_DATA")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("fashion-mnist", split="test")
    assert_one_line_error(excinfo, debian, "$PARSCALE_EAR_DATA (unset)", "t10k-images-idx3-ubyte")


def corrupt_idx_cases(folder: Path):
    """(name, what to do to a valid gzipped train split, fragment the message must hold)."""
    images = folder / "train-images-idx3-ubyte.gz"
    labels = folder / "train-labels-idx1-ubyte.gz"
    good = gzip.decompress(images.read_bytes())
    return {
        "bad magic": (lambda: images.write_bytes(gzip.compress((2049).to_bytes(4, "big") + good[4:])),
                      "magic number 2049"),
        "short data": (lambda: images.write_bytes(gzip.compress(good[:-10])), "holds"),
        "short header": (lambda: images.write_bytes(gzip.compress(good[:9])), "truncated"),
        "truncated gzip": (lambda: images.write_bytes(images.read_bytes()[:200]), "cannot read"),
        "not gzip": (lambda: images.write_bytes(b"plain bytes, not gzip" * 10), "cannot read"),
        "count mismatch": (lambda: labels.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8), 2049))),
                           "6 images"),
        "no labels": (lambda: labels.unlink(), "train-labels-idx1-ubyte"),
    }


@pytest.mark.parametrize("case", ["bad magic", "short data", "short header", "truncated gzip", "not gzip",
                                  "count mismatch", "no labels"])
def test_corrupt_idx_raises(fmnist, case):
    folder, _ = fmnist
    damage, fragment = corrupt_idx_cases(folder)[case]
    damage()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(folder))
    name = "train-labels-idx1-ubyte" if case == "no labels" else "train-images-idx3-ubyte"
    assert_one_line_error(excinfo, folder, name, fragment)


# ----------------------------------------------------------------------------- image folders

def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def bands(width: int, height: int, colours, vertical: bool) -> np.ndarray:
    """An RGB image cut into equal bands of the given colours, left-to-right or top-to-bottom."""
    image = np.zeros((height, width, 3), np.uint8)
    n = len(colours)
    for i, colour in enumerate(colours):
        if vertical:
            image[:, i * width // n:(i + 1) * width // n] = colour
        else:
            image[i * height // n:(i + 1) * height // n] = colour
    return image


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_image_folder_classes_resize_and_centre_crop(tmp_path):
    save(tmp_path / "dog" / "wide.png", bands(96, 32, [RED, GREEN, BLUE], vertical=True))  # no resize, crop middle
    save(tmp_path / "dog" / "tall.png", bands(64, 192, [RED, GREEN, BLUE], vertical=False))  # halve, crop middle
    save(tmp_path / "cat" / "a.png", np.full((20, 40, 3), 7, np.uint8))  # upscaled
    save(tmp_path / "cat" / "nested" / "b.bmp", np.full((50, 50), 200, np.uint8))  # grey, in a sub-folder
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset(str(tmp_path))
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert data.images.shape == (4, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 1, 1]  # cat/a, cat/nested/b, dog/tall, dog/wide
    assert int(data.images[0].min()) == int(data.images[0].max()) == 7
    assert int(data.images[1].min()) == int(data.images[1].max()) == 200
    green = torch.tensor(GREEN, dtype=torch.uint8)[:, None, None]
    assert torch.equal(data.images[3], green.expand(3, 32, 32))
    assert torch.equal(data.images[2][:, 4:28], green.expand(3, 24, 32))  # bicubic blends only near the cut
    grey = load_dataset(str(tmp_path), channels=1, image_size=8)
    assert grey.images.shape == (4, 1, 8, 8)
    green_luma = Image.new("RGB", (1, 1), GREEN).convert("L").getpixel((0, 0))
    assert grey.images[3, 0, :, 3:5].eq(green_luma).all()  # centre of the middle band, away from the blend


def test_flat_folder_is_unlabelled(tmp_path):
    save(tmp_path / "x.jpg", np.full((40, 30, 3), 128, np.uint8))
    save(tmp_path / "y.PNG", np.full((32, 32, 3), 9, np.uint8))
    save(tmp_path / "z.webp", np.full((32, 64, 3), 60, np.uint8))
    data = load_dataset(str(tmp_path), image_size=16)
    assert data.images.shape == (3, 3, 16, 16) and data.labels is None
    assert data.num_classes == 0 and data.class_names == []
    assert abs(int(data.images[0].float().mean()) - 128) <= 2  # jpeg is lossy
    assert "unlabelled" in dataset_summary(data) and "\n" not in dataset_summary(data)


def test_bad_image_folders_raise(tmp_path):
    save(tmp_path / "a" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path))
    assert_one_line_error(excinfo, tmp_path / "a" / "broken.png", "cannot read image")
    (tmp_path / "a" / "broken.png").unlink()
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path))
    assert_one_line_error(excinfo, tmp_path / "b", "no images")
    (tmp_path / "b").rmdir()
    save(tmp_path / "top.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path))
    assert_one_line_error(excinfo, tmp_path, "mixes")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(empty))
    assert_one_line_error(excinfo, empty, "no data found")


# ----------------------------------------------------------------------------- CIFAR-10

def write_cifar(folder: Path, counts=(2, 2, 2, 2, 2), test_count=3, meta=True) -> dict:
    """CIFAR-10 python batches with the official dict structure, pickled with protocol 2."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    written = {}
    names = [f"data_batch_{i + 1}" for i in range(len(counts))] + ["test_batch"]
    for name, n in zip(names, list(counts) + [test_count]):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = batch
    if meta:
        labels = [n.encode() for n in CIFAR10_CLASSES]
        labels[0] = b"plane"  # so the test can tell meta names from the built-in ones
        (folder / "batches.meta").write_bytes(pickle.dumps(
            {b"num_cases_per_batch": 10000, b"label_names": labels, b"num_vis": 3072}, protocol=2))
    return written


def test_cifar_batches(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-py")
    train = load_dataset(str(tmp_path))  # the cifar-10-batches-py sub-folder is found
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.class_names[:2] == ["plane", "automobile"] and train.num_classes == 10
    first = written["data_batch_1"]
    assert train.labels[:2].tolist() == first[b"labels"]
    # row layout: 1024 red, then 1024 green, then 1024 blue, each row-major
    assert int(train.images[1, 2, 5, 7]) == int(first[b"data"][1, 2 * 1024 + 5 * 32 + 7])
    assert torch.equal(train.images[0].flatten(), torch.from_numpy(first[b"data"][0]))
    test = load_dataset(str(tmp_path / "cifar-10-batches-py"), split="test", image_size=16, channels=1)
    assert test.images.shape == (3, 1, 16, 16) and test.labels.tolist() == written["test_batch"][b"labels"]


def test_cifar_without_meta_uses_cifar10_names(tmp_path):
    write_cifar(tmp_path, meta=False)
    assert load_dataset(str(tmp_path), split="test").class_names == CIFAR10_CLASSES


class _Evil:
    def __reduce__(self):
        return (os.getenv, ("HOME",))


@pytest.mark.parametrize("case,fragment", [
    ("missing batch", "no data_batch_3"),
    ("a list", "holds a list"),
    ("wrong data shape", "(N, 3072)"),
    ("label count", "b'labels'"),
    ("not a pickle", "not a Python pickle"),
    ("truncated", "corrupt"),
    ("foreign global", "os"),
])
def test_corrupt_cifar_raises(tmp_path, case, fragment):
    write_cifar(tmp_path)
    target = tmp_path / "data_batch_3"
    if case == "missing batch":
        target.unlink()
    elif case == "a list":
        target.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    elif case == "wrong data shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2))
    elif case == "label count":
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    elif case == "not a pickle":
        target.write_text("hello")
    elif case == "truncated":
        target.write_bytes(target.read_bytes()[:500])
    elif case == "foreign global":
        target.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path))
    assert_one_line_error(excinfo, target if case != "missing batch" else tmp_path, fragment)


# ----------------------------------------------------------------------------- .npz

@pytest.mark.parametrize("layout", ["NHW", "NHW1", "NHWC", "NCHW", "N1HW"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(3)
    rgb = layout in ("NHWC", "NCHW")
    hwc = rng.integers(0, 256, (4, 32, 32, 3 if rgb else 1), dtype=np.uint8)  # (N, H, W, C)
    stored = {"NHW": hwc[..., 0], "NHW1": hwc, "NHWC": hwc}.get(layout, hwc.transpose(0, 3, 1, 2))
    path = tmp_path / "set.npz"
    np.savez(path, images=stored, labels=np.array([0, 2, 1, 2]))
    data = load_dataset(str(path))
    assert data.images.shape == (4, 3 if rgb else 1, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(hwc.transpose(0, 3, 1, 2)))
    assert data.labels.tolist() == [0, 2, 1, 2] and data.class_names == ["0", "1", "2"]


def test_npz_resize_unlabelled_and_class_names(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, images=np.full((2, 48, 64, 3), 90, np.uint8))
    data = load_dataset(str(path), channels=1)
    assert data.images.shape == (2, 1, 32, 32) and data.labels is None
    assert int(data.images.min()) == int(data.images.max()) == 90
    np.savez(path, images=np.zeros((2, 32, 32), np.uint8), labels=np.array([1, 0]), class_names=np.array(["a", "b"]))
    assert load_dataset(str(path)).class_names == ["a", "b"]
    rgb = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.savez(path, images=rgb)
    grey = load_dataset(str(path), channels=1).images[:, 0].numpy()
    assert all(np.array_equal(grey[i], np.asarray(Image.fromarray(rgb[i]).convert("L"))) for i in range(3))


@pytest.mark.parametrize("contents,fragment", [
    ({"pixels": np.zeros((2, 8, 8), np.uint8)}, "no 'images'"),
    ({"images": np.zeros((2, 8, 8), np.float32)}, "uint8"),
    ({"images": np.zeros((2, 8, 8, 4), np.uint8)}, "(2, 8, 8, 4)"),
    ({"images": np.zeros((2, 8), np.uint8)}, "(2, 8)"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.zeros(3, np.int64)}, "'labels'"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([-1, 0])}, ">= 0"),
    ({"images": np.array([None, None], dtype=object)}, "cannot read"),
])
def test_bad_npz_raises(tmp_path, contents, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **contents)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(path))
    assert_one_line_error(excinfo, path, fragment)


def test_corrupt_npz_and_other_files_raise(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(path))
    assert_one_line_error(excinfo, path, "cannot read")
    other = tmp_path / "images.csv"
    other.write_text("1,2,3")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(other))
    assert_one_line_error(excinfo, other, ".npz")


# ----------------------------------------------------------------------------- arguments and ImageData

def test_bad_arguments_raise(fmnist, tmp_path):
    folder, _ = fmnist
    for kwargs, fragment in [({"channels": 2}, "channels"), ({"split": "val"}, "split"),
                             ({"image_size": 0}, "image_size")]:
        with pytest.raises(DatasetError) as excinfo:
            load_dataset(str(folder), **kwargs)
        assert_one_line_error(excinfo, fragment)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / "nowhere"))
    assert_one_line_error(excinfo, tmp_path / "nowhere", "not found")


def test_image_data_methods():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    data = ImageData(images, torch.tensor([1, 0, 1]), ["a", "b"], "toy")
    x = data.to_float()
    assert x.dtype == torch.float32 and x.shape == (3, 1, 2, 2)
    assert x[0].eq(-1).all() and x[1].eq(1).all() and torch.allclose(x[2], torch.tensor(-0.6))
    assert data.num_classes == 2 and len(data) == 3
    assert data.subset(2).labels.tolist() == [1, 0]
    picked = data.subset(2, seed=0)
    assert len(picked) == 2 and torch.equal(picked.images, data.subset(2, seed=0).images)
    with pytest.raises(ValueError):
        data.subset(4)
    with pytest.raises(ValueError):
        ImageData(images.float())
    with pytest.raises(ValueError):
        ImageData(images, torch.tensor([0, 1, 2]), ["a", "b"])  # label 2 has no class name
    assert ImageData(images).num_classes == 0
    assert dataset_summary(data) == "toy: 3 images, 1x2x2 grey, 2 classes (1 to 2 per class: a, b)"


FM_TEST = Path(DEBIAN_FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz"


@pytest.mark.skipif(not FM_TEST.is_file(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv("PARSCALE_EAR_DATA", raising=False)
    data = load_dataset("fashion-mnist", split="test")
    assert data.images.shape == (10000, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.num_classes == 10 and data.class_names == FASHION_MNIST_CLASSES
    assert torch.bincount(data.labels, minlength=10).tolist() == [1000] * 10
    assert int(data.images[:, :, :2].max()) == int(data.images[:, :, :, 30:].max()) == 0  # zero padding
