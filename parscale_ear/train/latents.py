"""What a generator trains on: the training images (a slice for quick runs), their latents under a VAE run's
weights (cached once in that run folder, keyed by the weights and a digest of the data), the latent scale a VAE
run measures, and a VAE run made from a release's LiteVAE."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import ImageData, load_dataset
from ..files import atomic_torch_save, prepare_output_folder, remove_stale_temporaries
from ..images import from_uint8
from ..loading import CHECKPOINT, METRICS, state_digest, weights_digest
from ..pipeline import ParScaleEAR, ParScaleEARConfig
from .config import CHECKPOINT_VERSION, TrainConfig
from .distributed import Dist

def load_images(cfg: TrainConfig, config: ParScaleEARConfig) -> ImageData:
    v = config.vae
    data = load_dataset(cfg.data, "train", image_size=v.image_size, channels=v.in_channels)
    return data.subset(cfg.max_images) if 0 < cfg.max_images < len(data) else data


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor, device: torch.device, batch: int = 500, progress: bool = False) -> torch.Tensor:
    """Scaled posterior means (N, c, h, w) of uint8 images (N, C, H, W), in float32 on the CPU."""
    vae = vae.to(device).eval()
    out = []
    starts = range(0, len(images), batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="encode latents", unit="batch")
    for i in starts:
        x = from_uint8(images[i : i + batch].to(device))
        out.append(vae.encode(x).float().cpu())
    return torch.cat(out)


def cached_latents(vae_run: Path, model: ParScaleEAR, data: ImageData, device: torch.device, d: Dist,
                   progress: bool = False) -> torch.Tensor:
    """Latents of the training images under the VAE run's weights, cached once in the VAE run folder, keyed by
    the VAE weights and the data's identity (source, size and a digest of the images): other data never reuses
    another set's latents."""
    path = vae_run / "latents-train.pt"
    key = {"vae": weights_digest(model.vae), "source": data.source, "num_images": len(data),
           "shape": list(data.images.shape), "images": _digest(data.images), "labels": _digest(data.labels)}
    if path.exists():
        try:
            cache = torch.load(path, weights_only=True)
        except Exception:  # a foreign or broken cache is rebuilt
            cache = {}
        if isinstance(cache, dict) and cache.get("key") == key:
            return cache["latents"]
    latents = None
    if d.main:
        remove_stale_temporaries(vae_run, (path.name,))
        latents = encode_dataset(model.vae, data.images, device, progress=progress)
        atomic_torch_save({"key": key, "latents": latents}, path)
    if d.world > 1:
        dist.barrier()
    return latents if latents is not None else torch.load(path, weights_only=True)["latents"]


def _digest(t: torch.Tensor | None) -> str | None:
    """SHA-256 of a tensor's bytes (None for None)."""
    if t is None:
        return None
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def latent_scale(vae, data: ImageData, device: torch.device, n: int = 5000) -> float:
    """1 / std of the (unscaled) posterior means over up to n training images."""
    scale = vae.config.latent_scale
    z = encode_dataset(vae, data.images[:n], device) / scale
    return float(1.0 / z.std().clamp_min(1e-6))


def vae_run_from_release(out: str | Path, release: str | Path | None = None, data: str = "fashion-mnist",
                         metrics: str | Path | None = None) -> Path:
    """A LiteVAE run folder holding a release's VAE (default: the shipped model's), so generators (ours,
    the peer, the ablation's variants) train on exactly that model's latents without training a VAE again.
    The folder's checkpoint has kind "vae", the release's VAE weights as model and EMA, its config and the
    data it was trained on; `metrics`, the VAE's own training log, is copied beside it when given."""
    import shutil

    out = Path(out)
    if (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out} already holds a run; choose a new folder")
    if metrics is not None and not Path(metrics).is_file():
        raise FileNotFoundError(f"metrics file not found: {metrics}")
    model = ParScaleEAR.from_pretrained(release)
    prepare_output_folder(out)
    vae = {k: v.float() for k, v in model.vae.state_dict().items()}
    state = {"kind": "vae", "version": CHECKPOINT_VERSION, "step": 0, "train": asdict(TrainConfig(kind="vae", data=data)),
             "model": vae, "ema": vae, "config": model.config.to_dict(), "source": str(release or "shipped")}
    atomic_torch_save({**state, "digest": state_digest(state)}, out / CHECKPOINT)
    if metrics is not None:
        shutil.copyfile(metrics, out / METRICS)
    return out
