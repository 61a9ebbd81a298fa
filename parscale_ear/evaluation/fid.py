"""Frechet Inception Distance (Heusel et al. 2017, arXiv 1706.08500): pool3 features of pytorch-fid's
FID InceptionV3 (2048 dims; set up offline by fid_weights.py), their statistics (stored as sigma's
upper triangle), image sources (folders, .npz) and the Frechet distance with pytorch-fid's formula;
`parscale-ear fid` is its command. PSNR/SSIM are in metrics.py.
"""
from __future__ import annotations

import sys
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import linalg
from torch import nn
from tqdm import tqdm

from .fid_weights import FEATURE_DIM, FIDWeightsError, load_inception  # noqa: F401  (load_inception: part of this API)
from ..files import atomic_path
from ..image_files import read_folder, read_npz

MIN_RELIABLE_IMAGES = 10_000  # below this FID is strongly biased (it falls with n); 50k is the standard


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
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"cannot read statistics {path}: {error or type(error).__name__} (truncated or not an .npz)") from None
    _check_statistics(mu, sigma, str(path))
    return mu, sigma, num_images


# ---------------------------------------------------------------------------- sources

def load_images_source(path: str | Path) -> np.ndarray:
    """uint8 images (N, H, W, C) of one size from an image folder (flat, or one sub-folder a class) or an .npz,
    read by the library's one image reader (image_files.py)."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"image source not found: {path}")
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
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
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


# ---------------------------------------------------------------------------- command line

def _check_stats_destination(path: Path, sources: Sequence[str]) -> None:
    """--save-stats never replaces an input, nor an existing file that is not FID statistics (one line)."""
    if path.suffix != ".npz":
        raise ValueError(f"--save-stats {path}: expected a .npz path")
    if path.exists():
        if any(Path(s).exists() and path.resolve() == Path(s).resolve() for s in sources):
            raise ValueError(f"--save-stats {path} is one of the sources; choose another path")
        if not _is_stats_file(path):
            raise FileExistsError(f"--save-stats {path} exists and is not a statistics file; it is left alone, choose "
                                  f"another path")


def fid_cli(argv: Sequence[str] | None = None) -> int:
    """`parscale-ear fid A [B] [--save-stats PATH] [--batch-size N] [--device D]`."""
    from ..cli import OneLineParser

    parser = OneLineParser(
        prog="parscale-ear fid",
        description="FID between two sources (image folder, images .npz, statistics .npz), "
                    "with pytorch-fid's InceptionV3 (pool3).")
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="A [B]")
    parser.add_argument("--save-stats", metavar="PATH", help="also write A's statistics to this .npz")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        if len(args.sources) > 2:
            parser.error(f"expected one or two sources, given {len(args.sources)}")
        if len(args.sources) == 1 and args.save_stats is None:
            parser.error("expected two sources, or one source with --save-stats")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        from ..utils import resolve_device

        if args.save_stats is not None:
            _check_stats_destination(Path(args.save_stats), args.sources)
        device = resolve_device(args.device)
        model = None
        if not all(_is_stats_file(s) for s in args.sources):
            model = load_inception(device)
        stats = [compute_statistics(s, args.batch_size, device, args.progress, model)
                 for s in args.sources]
        if args.save_stats is not None:
            path = save_statistics(args.save_stats, *stats[0])
            print(f"saved statistics of {args.sources[0]} ({stats[0][2]} images) to {path}")
        if len(stats) == 2:
            print(f"FID: {frechet_distance(stats[0], stats[1]):.4f}")
        for source, st in zip(args.sources, stats):
            if st[2] is not None and st[2] < MIN_RELIABLE_IMAGES:
                print(f"parscale-ear fid: warning: {source} has {st[2]} images; FID from fewer than "
                      f"{MIN_RELIABLE_IMAGES} is biased upwards and noisy (papers use 50,000)", file=sys.stderr)
    except (FIDWeightsError, OSError, ValueError, TypeError) as error:
        print(f"parscale-ear: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(fid_cli())
