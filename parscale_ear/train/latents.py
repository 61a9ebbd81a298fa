"""What a generator trains on: the training images (in memory or read lazily), their latents under a VAE run's weights
and the latent scale a VAE run measures, and a VAE run made from a release's LiteVAE.

The latents are encoded once into memory-mapped shards in the VAE run folder (latents/KEY/), each rank encoding its
share of the shards in parallel; KEY is a digest of the VAE weights and of the data's identity (its files' manifest or
its tar shards' digests). Each shard is written atomically, its .json (count, shape, dtype, SHA-256 of its files)
last: a killed encode resumes at the first shard without one, and a shard that fails its check is encoded again."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..files import atomic_path, atomic_torch_save, atomic_write_json, prepare_output_folder, shared_folder
from ..image_files import MAX_UNREADABLE, DatasetError, Unreadable
from ..images import from_uint8
from ..loading import CHECKPOINT, METRICS, state_digest, weights_digest
from ..pipeline import ParScaleEAR, ParScaleEARConfig
from ..streaming import ImageSet, check_upscale, loader, open_images, ordered_batches, read_images, spread
from .config import CHECKPOINT_VERSION, TrainConfig
from .distributed import Dist

LATENTS_DIR = "latents"
SHARD_ITEMS = 4096  # images per latent shard: ranks share the shards, and a killed encode redoes at most one
_FORMAT = 1


def load_images(cfg: TrainConfig, config: ParScaleEARConfig) -> ImageSet:
    """The run's training images at the model's size and channels (--max-images of them when set; upscaling by more
    than 2x refused)."""
    v = config.vae
    return check_upscale(open_images(cfg.data, v.image_size, v.in_channels, cfg.max_images), v.image_size)


def with_data_classes(config, data: str, max_images: int = 0):
    """`config` (a model config) with the classes of `data` (0 when unlabelled): a new run's model takes its data's
    classes, not those of the dataset its preset was made for."""
    import dataclasses

    images = open_images(data, config.vae.image_size, config.vae.in_channels, max_images)
    return config if images.num_classes == config.num_classes else dataclasses.replace(config, num_classes=images.num_classes)


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


@dataclass
class LatentSet:
    """Latents (N, c, h, w) float32 and labels (N,) int64 (-1: unlabelled), memory-mapped shard by shard."""

    latents: list[np.memmap]
    labels: list[np.memmap]
    skipped: int = 0  # images that could not be read, so have no latent

    def __post_init__(self):
        self.offsets = np.cumsum([0] + [len(x) for x in self.latents])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, idx: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `idx` (latents, labels) read through the memory maps."""
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        lat = np.empty((len(idx), *self.latents[0].shape[1:]), np.float32)
        lab = np.empty(len(idx), np.int64)
        for k in np.unique(shard):
            rows = shard == k
            lat[rows], lab[rows] = self.latents[k][idx[rows] - self.offsets[k]], self.labels[k][idx[rows] - self.offsets[k]]
        return torch.from_numpy(lat), torch.from_numpy(lab)

    def sample(self, n: int) -> torch.Tensor:
        """n latents spread over the set (a copy; `streaming.spread`): what token scales are fitted on."""
        return self.gather(np.asarray(spread(len(self), n)))[0]

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """All latents and labels as tensors on `device`, copied shard by shard (the shards stay read-only)."""
        return (torch.cat([_copy_to(x, device) for x in self.latents]), torch.cat([_copy_to(y, device) for y in self.labels]))


def latent_key(vae, images: ImageSet, shard_items: int = SHARD_ITEMS) -> str:
    """The digest that names a set of latents: the VAE weights, the data's identity and count, the shard size."""
    fields = {"format": _FORMAT, "vae": weights_digest(vae), "data": images.identity, "num_images": len(images),
              "shard_items": shard_items}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def latent_shards(vae_run: str | Path, model: ParScaleEAR, images: ImageSet, device: torch.device, d: Dist = Dist(),
                  shard_items: int = SHARD_ITEMS, workers: int = -1, max_unreadable: float = MAX_UNREADABLE,
                  progress: bool = False) -> LatentSet:
    """The latents of `images` under the model's VAE, from (or encoded into) memory-mapped shards in the VAE run folder:
    this rank checks and, where missing or failing their check, encodes shards rank, rank + world, ...; then every rank
    maps all of them."""
    key = latent_key(model.vae, images, shard_items)
    folder = Path(vae_run) / LATENTS_DIR / key[:16]
    plan = [(k, start, min(len(images), start + shard_items)) for k, start in enumerate(range(0, len(images), shard_items))]
    prepare_output_folder(folder, "latents")
    mine = plan[d.rank :: d.world]
    seen = Unreadable(max_unreadable, len(images))
    with shared_folder(folder, [f"{k:06d}.*" for k, _, _ in mine]):  # other runs on this VAE run may encode too
        for k, start, stop in mine:
            meta = _check_shard(folder, k, key, start, stop, full=True)
            if meta is None:
                meta = _encode_shard(folder, k, key, start, stop, model.vae, images, device, workers, progress and d.main)
            seen.add(stop - start, meta["skipped"], meta.get("first_skipped", ""))
    if d.world > 1:
        dist.barrier()
    metas = [_check_shard(folder, k, key, start, stop, full=False) for k, start, stop in plan]
    if any(m is None for m in metas):
        missing = next(k for (k, _, _), m in zip(plan, metas) if m is None)
        raise DatasetError(f"latent shard {folder / f'{missing:06d}.json'} is missing or fails its check after encoding; "
                           f"is {vae_run} on a file system every node sees?")
    total = Unreadable(max_unreadable, len(images))
    total.add(len(images), sum(m["skipped"] for m in metas), next((m["first_skipped"] for m in metas if m["skipped"]), ""))
    return LatentSet([_map(folder / f"{k:06d}.latents.npy") for k, _, _ in plan],
                     [_map(folder / f"{k:06d}.labels.npy") for k, _, _ in plan], total.skipped)


def _map(path: Path) -> np.ndarray:
    """An .npy memory-mapped (read only); one with no rows is read (it cannot be mapped)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an array with no rows cannot be mapped
        return np.load(path)


def _file_check(path: Path, full: bool, finite: bool) -> tuple[str, tuple, str]:
    """(SHA-256 or "" when not `full`, shape, dtype) of an .npy; with `finite`, raises if a value is NaN or Inf."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if fortran or f.seek(0, 2) != offset + int(np.prod(shape)) * dtype.itemsize:
            raise ValueError("its size does not match its header")
        if not full:
            return "", tuple(shape), dtype.str
        f.seek(0)
        digest, data = hashlib.sha256(f.read(offset)), b""
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
            if finite and not np.isfinite(np.frombuffer(chunk, dtype)).all():
                raise ValueError("it holds NaN or Inf")
    return digest.hexdigest(), tuple(shape), dtype.str


def _check_shard(folder: Path, k: int, key: str, start: int, stop: int, full: bool) -> dict | None:
    """Shard k's record if its files are what it says (count, shape, dtype; with `full` also the SHA-256 of both
    files and finite latents), else None (with a one-line warning where files were there)."""
    meta_path = folder / f"{k:06d}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if (meta["key"], meta["start"], meta["stop"]) != (key, start, stop) or meta["count"] + meta["skipped"] != stop - start:
            raise ValueError("its record belongs to other data")
        digest, shape, dtype = _file_check(folder / f"{k:06d}.latents.npy", full, finite=True)
        label_digest, label_shape, label_dtype = _file_check(folder / f"{k:06d}.labels.npy", full, finite=False)
        if (list(shape), dtype, list(label_shape), label_dtype) != (meta["shape"], "<f4", [meta["count"]], "<i8"):
            raise ValueError(f"it holds {dtype} {shape} latents and {label_dtype} {label_shape} labels, its record says "
                             f"{meta['shape']}")
        if full and (digest, label_digest) != (meta["latents_sha256"], meta["labels_sha256"]):
            raise ValueError("its contents differ from the digest written when it was made")
        return meta
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"latent shard {meta_path} fails its check ({' '.join(str(error).split())}); it is encoded again",
                      stacklevel=3)
        return None


@torch.no_grad()
def _encode_shard(folder: Path, k: int, key: str, start: int, stop: int, vae, images: ImageSet, device: torch.device,
                  workers: int, progress: bool) -> dict:
    """Encode images start..stop-1 (unreadable ones skipped) into shard k: latents, labels, then its record."""
    vae = vae.to(device).eval()
    shape = (stop - start, vae.config.latent_channels, vae.config.latent_size, vae.config.latent_size)
    labels, skipped, first, n = [], 0, "", 0
    batches = loader(images.without_replacement(), ordered_batches(start, stop, 256), workers)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"encode latents {k + 1}", unit="batch", leave=False)
    latents_path = folder / f"{k:06d}.latents.npy"
    with atomic_path(latents_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for batch in batches:
            skipped, first = skipped + batch.skipped, first or batch.first
            if len(batch.images):
                z = vae.encode(from_uint8(batch.images.to(device))).float()
                if not torch.isfinite(z).all():  # nothing of it is written: the shard's temporary goes
                    raise DatasetError(f"the LiteVAE of {folder.parent.parent} encodes images {start + n}.. of the data "
                                       f"to NaN or Inf: that VAE run diverged; train it again or use another --vae")
                out[n : n + len(batch.images)] = z.cpu().numpy()
                labels.append(batch.labels.numpy())
                n += len(batch.images)
        out.flush()
        if n < len(out):  # unreadable images: keep the first n rows
            kept = np.array(out[:n])
            del out
            with open(tmp, "wb") as f:
                np.save(f, kept)
        else:
            del out
    with atomic_path(folder / f"{k:06d}.labels.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate(labels) if labels else np.zeros(0, np.int64))
    meta = {"key": key, "start": start, "stop": stop, "count": n, "skipped": skipped, "shape": [n, *shape[1:]],
            "latents_sha256": _file_check(latents_path, True, True)[0],
            "labels_sha256": _file_check(folder / f"{k:06d}.labels.npy", True, False)[0],
            **({"first_skipped": first} if skipped else {})}
    atomic_write_json(folder / f"{k:06d}.json", meta)
    return meta


@torch.no_grad()
def latent_scale(vae, images, device: torch.device, n: int = 5000) -> float:
    """1 / std of the (unscaled) posterior means over up to n training images spread over the set (uint8 (N, C, H, W),
    or an ImageSet)."""
    scale = vae.config.latent_scale
    first = images[spread(len(images), n)] if isinstance(images, torch.Tensor) else read_images(images, n)
    z = encode_dataset(vae, first, device) / scale
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


def _copy_to(array, device) -> torch.Tensor:
    """A copy of a (read-only, memory-mapped) array on `device`: on the CPU a copy in memory; on an accelerator
    straight from the map to the device, without a host copy first."""
    array = np.asarray(array)
    if torch.device(device).type == "cpu":
        return torch.tensor(array)
    with warnings.catch_warnings():  # the view is only read, by the copy to the device
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)
