"""Evaluation of trained pipelines: FID of samples against reference statistics (pytorch-fid, see
fid.py) and reconstruction quality of the LiteVAE (rFID, PSNR, SSIM).

Samples are quantised to 8 bits before Inception, exactly as if written to PNG, so generated and
reference images pass through the same pipeline (REFERENCE.md: compare only same-pipeline FIDs).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from . import fid as fidlib
from .fid import STATS_DIR, shipped_statistics  # noqa: F401  (part of this module's API)
from .metrics import recon_metrics
from ..data import load_dataset
from ..pipeline import ParScaleEAR
from ..images import from_uint8, to_uint8



def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 (N, C, H, W), the values a PNG would hold."""
    return to_uint8(images).permute(0, 3, 1, 2).contiguous()


def reference_statistics(source: str = "fashion-mnist", split: str = "train", image_size: int = 32, channels: int = 1,
                         inception=None, batch_size: int = 500, limit: int | None = None, progress: bool = False):
    """(mu, sigma, n) of a dataset split's images."""
    data = load_dataset(source, split, image_size=image_size, channels=channels)
    images = data.images if limit is None else data.images[:limit]
    feats = fidlib.inception_features(images, inception, batch_size=batch_size, progress=progress)
    mu, sigma = fidlib.statistics(feats)
    return mu, sigma, len(feats)


def resolve_reference(ref: str | Path | None = None, data: str = "fashion-mnist", split: str = "train",
                      image_size: int = 32, channels: int = 1, inception=None, batch_size: int = 500,
                      limit: int | None = None) -> tuple[tuple, str]:
    """Reference statistics for FID and where they came from: the file `ref` when given; for the whole
    of Fashion-MNIST, the shipped statistics (exact, offline, in SHA256SUMS); else computed from the
    data split (a `limit` of images, or all). Returns ((mu, sigma, n), source)."""
    if ref:
        return fidlib.load_statistics(ref), str(ref)
    if data == "fashion-mnist" and limit is None:
        path = shipped_statistics(f"fashion-mnist-{split}")
        return fidlib.load_statistics(path), f"parscale_ear/stats/{path.name}"  # no machine path in results
    stats = reference_statistics(data, split, image_size, channels, inception, batch_size, limit=limit)
    return stats, f"{data}:{split}" + ("" if limit is None else f"[:{limit}]")


@torch.no_grad()
def sample_statistics(model: ParScaleEAR, n: int, inception=None, cfg: float | None = None, temperature: float | None = None,
                      steps=None, seed: int = 0, batch_size: int = 500, progress: bool = False, bf16: bool = False) -> tuple:
    """(mu, sigma, n, seconds spent sampling) of n generated images (labels cycle through the classes),
    quantised to uint8 as a PNG would hold them. bf16: generate under CUDA bf16 autocast (the
    Inception always runs outside it, in float32)."""
    feats, t_sample = [], 0.0
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and model.device.type == "cuda" else nullcontext()
    batches = model.iter_generate(n, cfg=cfg, temperature=temperature, steps=steps, seed=seed, batch_size=batch_size, progress=progress)
    while True:
        t0 = time.perf_counter()
        with amp:
            images = next(batches, None)
        if images is not None and images.is_cuda:
            torch.cuda.synchronize(images.device)
        t_sample += time.perf_counter() - t0
        if images is None:
            break
        feats.append(fidlib.inception_features(quantize(images.float()), inception, batch_size=batch_size))
    mu, sigma = fidlib.statistics(np.concatenate(feats))
    return mu, sigma, n, t_sample


def default_guidance_scales(model: ParScaleEAR) -> list[float]:
    """The scales a FID report shows by default: no guidance, and the model's own (2 if that is 1)."""
    return sorted({1.0, float(model.config.cfg) if model.config.cfg != 1.0 else 2.0})


def evaluate_fid(model: ParScaleEAR, reference, n: int, cfgs=None, inception=None, batch_size: int = 500,
                 seed: int = 0, temperature: float | None = None, steps=None, progress: bool = False) -> list[dict]:
    """FID of n samples for each guidance scale in `cfgs` (default `default_guidance_scales`)
    against `reference` (mu, sigma[, n])."""
    rows = []
    for cfg in default_guidance_scales(model) if cfgs is None else cfgs:
        mu, sigma, count, seconds = sample_statistics(model, n, inception, cfg, temperature, steps, seed, batch_size, progress)
        rows.append({"cfg": cfg, "temperature": model.config.temperature if temperature is None else temperature,
                     "num_samples": count, "fid": fidlib.frechet_distance((mu, sigma), reference),
                     "sampling_seconds": round(seconds, 2)})
    return rows


@torch.no_grad()
def evaluate_vae(model: ParScaleEAR, source: str = "fashion-mnist", split: str = "test", inception=None,
                 limit: int | None = None, batch_size: int = 500, reference=None) -> dict:
    """rFID (reconstructions vs originals of the split), PSNR and SSIM of the LiteVAE."""
    v = model.config.vae
    data = load_dataset(source, split, image_size=v.image_size, channels=v.in_channels)
    images = data.images if limit is None else data.images[:limit]
    recon, psnr, ssim = [], [], []
    for i in range(0, len(images), batch_size):
        x = from_uint8(images[i : i + batch_size].to(model.device))
        y = quantize(model.reconstruct(x))
        recon.append(y)
        m = recon_metrics(x.cpu(), from_uint8(y))
        psnr.append(m["psnr"] * len(x))
        ssim.append(m["ssim"] * len(x))
    recon = torch.cat(recon)
    if reference is None:
        mu, sigma = fidlib.statistics(fidlib.inception_features(images, inception, batch_size=batch_size))
        reference = (mu, sigma)
    r_mu, r_sigma = fidlib.statistics(fidlib.inception_features(recon, inception, batch_size=batch_size))
    return {"split": split, "num_images": len(images), "rfid": fidlib.frechet_distance((r_mu, r_sigma), reference),
            "psnr": sum(psnr) / len(images), "ssim": sum(ssim) / len(images)}


def write_reference_statistics(out: str | Path, source: str = "fashion-mnist", splits=("train", "test"), inception=None,
                               batch_size: int = 500, progress: bool = False) -> list[Path]:
    """Compute and write {source}-{split}.npz for each split into `out`, sigma stored exactly as its
    upper triangle (the layout of the shipped files; `fid.load_statistics` reads both layouts)."""
    paths = []
    for split in splits:
        mu, sigma, n = reference_statistics(source, split, inception=inception, batch_size=batch_size, progress=progress)
        paths.append(fidlib.pack_statistics(Path(out) / f"{source}-{split}.npz", mu, sigma.astype(np.float32), n))
        print(f"{paths[-1]}: {n} images")
    return paths


def save_reference(path: str | Path, stats) -> Path:
    """Write (mu, sigma, n) statistics in pytorch-fid's .npz layout (+ num_images)."""
    mu, sigma, n = stats
    return fidlib.save_statistics(path, mu, sigma, n)
