"""Image files as uint8 arrays: one image decoded (grey or RGB; RGBA, palette and other modes converted), resized on
its shorter side and centre-cropped; an image folder listed (ImageFolder layout: one sub-folder a class, or flat);
a folder or .npz read whole (the one reader of the in-memory datasets and of FID); unreadable images counted, warned
about and, past a set fraction, refused with one line."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_UNREADABLE = 0.01  # default: a run may skip up to 1% of the images it reads
_MIN_COUNTED = 1000  # the fraction is judged over at least this many images (or all of a smaller set)


class DatasetError(ValueError):
    """Data missing, unreadable or not in the expected format; the message is one line."""


class ImageDtypeError(DatasetError, TypeError):
    """Stored images of a dtype other than uint8."""


class ImageModeError(DatasetError):
    """An image in a mode that cannot be kept as stored (neither grey nor RGB)."""


class UnreadableImageWarning(UserWarning):
    """An image could not be read and was skipped."""


# ----------------------------------------------------------------------------- one image

def fit(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic), then crop the centre size x size."""
    w, h = im.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def decode_image(source: str | os.PathLike | bytes, channels: int | None = None, image_size: int | None = None,
                 name: str | None = None) -> np.ndarray:
    """One image file (a path, or its bytes) as uint8 (H, W, C). `channels` 1 or 3 converts any mode (grey, RGBA,
    palette, ...) to grey or RGB; None keeps grey and RGB as stored (palette becomes RGB) and refuses other modes.
    `image_size` resizes the shorter side and crops the centre. Unreadable input is a one-line DatasetError."""
    name = name or str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if channels is not None:
                im = im.convert("L" if channels == 1 else "RGB")
            elif im.mode == "P":  # palette -> RGB is lossless
                im = im.convert("RGB")
            elif im.mode not in ("L", "RGB"):
                raise ImageModeError(f"{name}: expected an L (grey) or RGB image, given mode {im.mode}")
            else:
                im.load()
            if image_size is not None:
                im = fit(im, image_size)
            array = np.array(im, dtype=np.uint8)
    except ImageModeError:
        raise
    except UnidentifiedImageError:
        raise DatasetError(f"cannot read image {name}: not an image file PIL can identify") from None
    except Exception as error:  # PIL: OSError (truncated, unreadable), SyntaxError, DecompressionBombError, ...
        raise DatasetError(f"cannot read image {name}: {' '.join(str(error).split()) or type(error).__name__}") from None
    return array[:, :, None] if array.ndim == 2 else array  # (H, W, C)


# ----------------------------------------------------------------------------- unreadable images

@dataclass
class Unreadable:
    """Counts the images that could not be read; warns at the 1st, 2nd, 4th, ... and raises one line once more
    than `max_fraction` of the images read so far (judged over at least the first 1,000, or all of fewer) failed."""

    max_fraction: float = MAX_UNREADABLE
    total: int = 0  # images in the set (for the smallest count the fraction is judged over)
    attempted: int = 0
    skipped: int = 0
    first: str = ""  # the first failure's message

    def add(self, attempted: int, skipped: int, first: str = "") -> None:
        """Record `attempted` reads of which `skipped` failed (`first`: one failure's message); may raise."""
        before = self.skipped
        self.attempted, self.skipped = self.attempted + attempted, self.skipped + skipped
        self.first = self.first or first
        if not skipped:
            return
        if self.skipped > self.max_fraction * max(self.attempted, min(self.total, _MIN_COUNTED)):
            raise DatasetError(f"{self.skipped} of {self.attempted} images read could not be read, more than the "
                               f"{self.max_fraction:.2%} allowed (--max-unreadable); the first: {self.first}")
        if before.bit_length() != self.skipped.bit_length():  # the 1st, 2nd, 4th, 8th, ... skipped
            warnings.warn(f"skipped {self.skipped} unreadable image(s) of {self.attempted} read; the first: {self.first}",
                          UnreadableImageWarning, stacklevel=3)


# ----------------------------------------------------------------------------- folders

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


@dataclass
class ImageListing:
    """The image files of a folder in a fixed order (sorted, class by class) with their labels."""

    root: Path
    files: list[str]  # paths relative to root
    labels: np.ndarray | None  # (N,) int64 class indices, None for a flat folder
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def pick(self, index: list[int]) -> ImageListing:
        """The files at `index`, in that order."""
        return ImageListing(self.root, [self.files[i] for i in index], None if self.labels is None else self.labels[index],
                            self.class_names)

    def identity(self) -> str:
        """SHA-256 of the manifest: each file's path, size and modification time, and the class names."""
        digest = hashlib.sha256("\n".join(self.class_names).encode() + b"\0")
        for rel in self.files:
            st = os.stat(self.root / rel)
            digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def list_images(folder: str | os.PathLike) -> ImageListing:
    """The images of `folder`: one sub-folder a class (searched recursively), or a flat folder (unlabelled)."""
    folder = Path(folder)
    entries = sorted(folder.iterdir())
    top_images = [p for p in entries if _is_image(p)]
    class_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    per_class = [sorted(p for p in d.rglob("*") if _is_image(p)) for d in class_dirs]
    if top_images and any(per_class):
        raise DatasetError(f"{folder} mixes images at its top level with class sub-folders; "
                           f"use one layout (sub-folders = classes, or a flat folder)")
    if top_images:
        return ImageListing(folder, [p.name for p in top_images], None, [])
    if not any(per_class):
        raise DatasetError(f"no data found in {folder}: looked for images ({', '.join(IMAGE_EXTENSIONS)}), idx files, "
                           f"CIFAR-10 batches and tar shards, found none")
    for d, images in zip(class_dirs, per_class):
        if not images:
            raise DatasetError(f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    files = [str(p.relative_to(folder)) for images in per_class for p in images]
    labels = np.concatenate([np.full(len(images), i, np.int64) for i, images in enumerate(per_class)])
    return ImageListing(folder, files, labels, [d.name for d in class_dirs])


def read_folder(folder: str | os.PathLike, image_size: int | None = None, channels: int | None = None,
                max_unreadable: float = MAX_UNREADABLE) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """A whole image folder in memory: (images (N, H, W, C) uint8, labels or None, class names). Without
    `image_size` the images keep their size, which must be one; unreadable images are skipped (`Unreadable`)."""
    listing = list_images(folder)
    images, keep, seen = [], [], Unreadable(max_unreadable, len(listing))
    for i, rel in enumerate(listing.files):
        try:
            images.append(decode_image(listing.root / rel, channels, image_size))
            keep.append(i)
            seen.add(1, 0)
        except ImageModeError:
            raise
        except DatasetError as error:
            seen.add(1, 1, str(error))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DatasetError(f"{folder}: expected images of one size and mode, given shapes {sorted(shapes)[:4]}")
    labels = None if listing.labels is None else listing.labels[keep]
    return np.stack(images), labels, listing.class_names


# ----------------------------------------------------------------------------- .npz arrays

def read_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """uint8 images (N, H, W, C) from an .npz ('images' or 'arr_0': (N, H, W), (N, H, W, C) or (N, C, H, W), C 1 or
    3), with its 'labels' and 'class_names' when it has them."""
    path = Path(path)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            key = next((k for k in ("images", "arr_0") if k in npz.files), None)
            if key is None:
                raise DatasetError(f"{path} has no 'images' array; expected 'images' or 'arr_0' (it holds: "
                                   f"{', '.join(npz.files) or 'nothing'})")
            images = npz[key]
            labels = npz["labels"] if "labels" in npz.files else None
            names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
    except DatasetError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"image source not found: {path}") from None
    except Exception as e:  # bad zip, truncated member, object arrays (pickle refused), ...
        raise DatasetError(f"cannot read {path} as .npz: {' '.join(str(e).split())}") from None
    if images.dtype != np.uint8:
        raise ImageDtypeError(f"{path}: 'images' must be uint8, got {images.dtype}")
    images = _channels_last(images, path)
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
            raise DatasetError(f"{path}: 'labels' must be integer ({len(images)},), got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise DatasetError(f"{path}: 'labels' must be >= 0, got {labels.min()}")
        if names is not None and labels.size and labels.max() >= len(names):
            raise DatasetError(f"{path}: label {labels.max()} has no entry in its {len(names)} 'class_names'")
    return images, labels, names


def _channels_last(images: np.ndarray, path: Path) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3 -> (N, H, W, C)."""
    expected = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3"
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        raise DatasetError(f"{path}: 'images' must be {expected}, got {images.shape}")
    last, first = images.shape[3] in (1, 3), images.shape[1] in (1, 3)
    if first and last and images.shape[1] != images.shape[3]:
        raise DatasetError(f"{path}: 'images' shape {images.shape} is ambiguous between (N, C, H, W) and (N, H, W, C)")
    if first and not last:
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if not last:
        raise DatasetError(f"{path}: 'images' must be {expected}, got {images.shape}")
    return images


# ----------------------------------------------------------------------------- arrays

def check_upscale_size(height: int, width: int, image_size: int, where) -> None:
    """A one-line DatasetError where images of height x width would be upscaled by more than 2x to image_size."""
    if 2 * min(height, width) < image_size:
        raise DatasetError(f"{where}: images are {height}x{width}; the model needs {image_size}x{image_size} and "
                           f"upscaling by more than 2x is refused (resize them first, e.g. `parscale-ear data folder`)")


def fit_arrays(images: np.ndarray, image_size: int | None, channels: int | None, source: str) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, S, S, C') at `image_size` (None: as stored) with `channels` (None: as stored); grey
    uses PIL's ITU-R 601-2 luma; upscaling by more than 2x is refused."""
    if len(images) == 0:
        raise DatasetError(f"{source} holds no images")
    if channels == 1 and images.shape[3] == 3:  # PIL's luma, in its fixed-point form
        rgb = images.astype(np.uint32)
        images = ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        check_upscale_size(images.shape[1], images.shape[2], image_size, source)
        out = np.empty((len(images), image_size, image_size, images.shape[3]), np.uint8)
        for i, img in enumerate(images):
            im = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)  # 2-D -> "L", (H, W, 3) -> "RGB"
            out[i] = np.asarray(fit(im, image_size)).reshape(out.shape[1:])
        images = out
    if channels == 3 and images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    return images
