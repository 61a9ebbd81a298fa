"""Frechet Inception Distance (Heusel et al. 2017, arXiv 1706.08500): pool3 features of pytorch-fid's
FID InceptionV3 (2048 dims; set up offline by fid_weights.py), their statistics (stored as sigma's
upper triangle), image sources (folders, .npz, the statistics shipped in parscale_ear/stats) and the Frechet
distance with pytorch-fid's formula; `parscale-ear fid` (commands.py) is its command. PSNR/SSIM are in metrics.py.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import nn
from tqdm import tqdm

from .fid_weights import FEATURE_DIM, FIDWeightsError, load_inception  # noqa: F401  (load_inception: part of this API)
from ..files import atomic_path
from ..image_files import read_folder, read_npz

MIN_RELIABLE_IMAGES = 10_000  # below this FID is strongly biased (it falls with n); 50k is the standard
STATS_DIR = Path(__file__).resolve().parent.parent / "stats"  # parscale_ear/stats: fashion-mnist-{train,test}.npz
_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError)  # a truncated or damaged .npz (a bad CRC included)


# ---------------------------------------------------------------------------- features

def _check_images(images: torch.Tensor | np.ndarray) -> tuple[bool, bool]:
    """Validate `images` without copying them; return (channels_last, is_uint8)."""
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise TypeError(f"expected images as a torch.Tensor or numpy array, given {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W) or uint8 (N, H, W, C), "
                         f"given shape {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("expected at least one image, given 0")
    if isinstance(images, torch.Tensor):
        is_uint8, is_float = images.dtype == torch.uint8, images.is_floating_point()
    else:
        is_uint8, is_float = images.dtype == np.uint8, np.issubdtype(images.dtype, np.floating)
    if not (is_uint8 or is_float):
        raise TypeError(f"expected uint8 images in [0, 255] or float images in [-1, 1], "
                        f"given dtype {images.dtype}")
    first, last = images.shape[1] in (1, 3), images.shape[-1] in (1, 3)
    if is_float:  # the library's images: float (N, C, H, W) in [-1, 1]
        if not first:
            raise ValueError(f"expected float images (N, C, H, W) with C = 1 or 3, "
                             f"given shape {tuple(images.shape)}")
        values = torch.as_tensor(images)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("expected finite image values, given NaN or inf")
        low, high = float(values.min()), float(values.max())
        if low < -1 or high > 1:
            raise ValueError(f"expected float images in [-1, 1], given values in "
                             f"[{low:.4g}, {high:.4g}]; clamp or rescale them first")
        return False, False
    if first and last:
        raise ValueError(f"ambiguous uint8 layout {tuple(images.shape)}: both dim 1 and dim 3 "
                         f"could be channels")
    if not (first or last):
        raise ValueError(f"expected uint8 images (N, C, H, W) or (N, H, W, C) with C = 1 or 3, "
                         f"given shape {tuple(images.shape)}")
    return last, True


def inception_features(images: torch.Tensor | np.ndarray, model: nn.Module | None = None,
                       batch_size: int = 200, device: str | torch.device | None = None,
                       progress: bool = False) -> np.ndarray:
    """Pool3 features (N, 2048) of uint8 images in [0, 255] ((N, C, H, W) or (N, H, W, C))
    or float images (N, C, H, W) in [-1, 1]; grey (C = 1) is repeated to RGB and the
    network resizes to 299x299 itself (bilinear, pytorch-fid's default)."""
    channels_last, is_uint8 = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, given {batch_size}")
    if model is None:
        model = load_inception(device if device is not None else "cpu")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    features = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="inception"):
        batch = torch.as_tensor(images[start:start + batch_size]).to(device)
        if channels_last:
            batch = batch.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        batch = batch.float() / 255 if is_uint8 else (batch.float() + 1) / 2  # [0, 1]
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)  # grey -> RGB
        with torch.no_grad():
            output = model(batch)
        output = output[0] if isinstance(output, (list, tuple)) else output
        if output.ndim == 4 and output.shape[2:] != (1, 1):
            raise ValueError(f"expected pooled features (B, D, 1, 1), given {tuple(output.shape)}")
        features.append(output.reshape(len(batch), -1).cpu().numpy())
    return np.concatenate(features)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), as pytorch-fid computes them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected features of shape (N >= 2, D), given {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _check_statistics(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{where}: expected mu (D,) and sigma (D, D), "
                         f"given mu {mu.shape} and sigma {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{where}: mu or sigma holds NaN or inf; recompute the statistics")


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray,
                    num_images: int | None) -> Path:
    """Write a pytorch-fid compatible .npz (mu, sigma) plus num_images, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"expected a .npz path for statistics, given {path}")
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    _check_statistics(mu, sigma, str(path))
    arrays = {"mu": mu, "sigma": sigma}
    if num_images is not None:
        arrays["num_images"] = np.asarray(int(num_images), dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def _unpack_triu(triu: np.ndarray, dim: int, path) -> np.ndarray:
    """The symmetric (D, D) matrix whose upper triangle (row-major, diagonal included) is `triu`."""
    if triu.shape != (dim * (dim + 1) // 2,):
        raise ValueError(f"{path}: sigma_triu has shape {triu.shape}, expected ({dim * (dim + 1) // 2},) for D = {dim}")
    sigma = np.zeros((dim, dim), dtype=np.float64)
    rows, cols = np.triu_indices(dim)
    sigma[rows, cols] = triu
    sigma[cols, rows] = triu
    return sigma


def pack_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, num_images: int | None) -> Path:
    """Write statistics compactly and exactly: sigma is symmetric, so only its upper triangle is
    stored (compressed); `load_statistics` rebuilds the same matrix. Half the size of pytorch-fid's
    layout, which `save_statistics` writes."""
    path = Path(path)
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    _check_statistics(mu.astype(np.float64), sigma.astype(np.float64), str(path))
    if not np.array_equal(sigma, sigma.T):
        raise ValueError(f"{path}: sigma is not exactly symmetric; store it with save_statistics")
    arrays = {"mu": mu, "sigma_triu": sigma[np.triu_indices(len(mu))]}
    if num_images is not None:
        arrays["num_images"] = np.asarray(int(num_images), dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, num_images or None) from a statistics .npz (ours or pytorch-fid's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or not {"sigma", "sigma_triu"} & set(data.files):
                raise ValueError(f"{path}: expected keys 'mu' and 'sigma' (or 'sigma_triu'), given {sorted(data.files)}")
            mu = data["mu"].astype(np.float64)
            sigma = data["sigma"].astype(np.float64) if "sigma" in data.files else _unpack_triu(data["sigma_triu"], len(mu), path)
            num_images = int(data["num_images"]) if "num_images" in data.files else None
    except _READ_ERRORS as error:
        raise ValueError(f"cannot read statistics {path}: {error or type(error).__name__} (truncated or not an .npz)") from None
    _check_statistics(mu, sigma, str(path))
    return mu, sigma, num_images


# ---------------------------------------------------------------------------- sources

def shipped_statistics(name: str) -> Path:
    """Path of a reference-statistics file shipped with the package, e.g. 'fashion-mnist-train'."""
    path = STATS_DIR / f"{name}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in STATS_DIR.glob("*.npz"))
        raise FileNotFoundError(f"no shipped statistics {name!r}; available: {', '.join(known) or 'none'}")
    return path


def resolve_source(source: str | Path) -> Path:
    """A source as given, or the shipped statistics it names ('fashion-mnist-train') when no such path exists."""
    path = Path(source)
    if not path.exists() and isinstance(source, str) and (STATS_DIR / f"{source}.npz").is_file():
        return STATS_DIR / f"{source}.npz"
    return path


def load_images_source(path: str | Path) -> np.ndarray:
    """uint8 images (N, H, W, C) of one size from an image folder (flat, or one sub-folder a class) or an .npz,
    read by the library's one image reader (image_files.py)."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"image source not found: {path} (a folder of images or an .npz; shipped statistics: "
                                f"fashion-mnist-train, fashion-mnist-test)")
    if path.suffix != ".npz":
        raise ValueError(f"expected a folder of images or an .npz, given {path}")
    return read_npz(path)[0]


def _is_stats_file(source) -> bool:
    """True for an .npz path holding 'mu' and 'sigma'."""
    if not isinstance(source, (str, Path)) or Path(source).suffix != ".npz" or not Path(source).is_file():
        return False
    try:
        with np.load(source, allow_pickle=False) as data:
            return "mu" in data.files and bool({"sigma", "sigma_triu"} & set(data.files))
    except (*_READ_ERRORS, ValueError) as error:
        raise ValueError(f"cannot read {source}: {error or type(error).__name__} (truncated or not an .npz)") from None


def compute_statistics(source: str | Path | torch.Tensor | np.ndarray, batch_size: int = 200,
                       device: str | torch.device | None = None, progress: bool = False,
                       model: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, num_images) of a folder, an images .npz, a statistics .npz or an image array."""
    if _is_stats_file(source):
        return load_statistics(source)
    if isinstance(source, (str, Path)):
        source = load_images_source(source)
    features = inception_features(source, model, batch_size, device, progress)
    mu, sigma = statistics(features)
    return mu, sigma, len(features)


def frechet_distance(stats_a: tuple, stats_b: tuple, eps: float = 1e-6) -> float:
    """Frechet distance between (mu, sigma[, n]) statistics: |mu_a - mu_b|^2 + tr(sigma_a + sigma_b
    - 2 (sigma_a sigma_b)^(1/2)), computed as pytorch-fid's calculate_frechet_distance does (the same
    eps offset when the product is singular, the same check on the imaginary part), with a direct
    scipy.linalg.sqrtm call that works on every scipy version."""
    (mu_a, sigma_a), (mu_b, sigma_b) = stats_a[:2], stats_b[:2]
    mu_a, sigma_a = np.asarray(mu_a, np.float64), np.asarray(sigma_a, np.float64)
    mu_b, sigma_b = np.asarray(mu_b, np.float64), np.asarray(sigma_b, np.float64)
    _check_statistics(mu_a, sigma_a, "stats_a")
    _check_statistics(mu_b, sigma_b, "stats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"expected statistics of one dimension, given {mu_a.shape[0]} and {mu_b.shape[0]}")
    diff = mu_a - mu_b
    with warnings.catch_warnings():  # a singular product is handled below, not reported twice
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma_a.dot(sigma_b))
        if not np.isfinite(covmean).all():  # singular product: add eps to the diagonals
            offset = np.eye(sigma_a.shape[0]) * eps
            covmean = linalg.sqrtm((sigma_a + offset).dot(sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def fid(a, b, batch_size: int = 200, device: str | torch.device | None = None,
        progress: bool = False, model: nn.Module | None = None) -> float:
    """FID between two sources (folder, images .npz, statistics .npz or image array)."""
    if model is None and not (_is_stats_file(a) and _is_stats_file(b)):
        model = load_inception(device if device is not None else "cpu")
    stats_a = compute_statistics(a, batch_size, device, progress, model)
    stats_b = compute_statistics(b, batch_size, device, progress, model)
    return frechet_distance(stats_a, stats_b)
