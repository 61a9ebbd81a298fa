"""Throughput of the ways to read an image dataset for training: an image folder and WebDataset tar shards read by the
library (map-style, random access, DataLoader workers), the same shards through the `webdataset` package (a
sequential stream) and Hugging Face `datasets`' imagefolder, each decoding, converting and fitting every image.
Prints images/s per reader; readers whose package is not installed are skipped.

    python scripts/bench_data.py --images 2000 --size 64 --workers 2
    python scripts/bench_data.py --folder path/to/imagefolder --size 256 --workers 8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear.image_files import decode_image, fit  # noqa: E402
from parscale_ear.shards import write_shards  # noqa: E402
from parscale_ear.streaming import RankBatches, loader, open_images  # noqa: E402


def make_folder(root: Path, n: int, classes: int = 10, side: tuple[int, int] = (300, 240)) -> Path:
    """n JPEGs (smooth colour fields with noise, like photographs in their decode cost) in `classes` folders."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: side[1], : side[0]] / max(side)
    for i in range(n):
        folder = root / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + c) for c in range(3)], -1) * 100 + 128
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:07d}.jpg", quality=90)
    return root


def rate(batches, n_batches: int, warmup: int = 2) -> float:
    """Images per second over n_batches after `warmup` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0, count = time.perf_counter(), 0
    for _ in range(n_batches):
        batch = next(it)
        count += len(batch[0] if isinstance(batch, (tuple, list)) else batch.images)
    return count / (time.perf_counter() - t0)


def ours(source: str, args) -> float:
    images = open_images(source, args.size, 3)
    return rate(loader(images, RankBatches(len(images), args.batch, 0, 0, 1), args.workers), args.batches)


def with_webdataset(shards: Path, args) -> float | None:
    try:
        import webdataset as wds
    except ImportError:
        return None

    def prepare(sample):
        image = np.array(fit(sample[0].convert("RGB"), args.size))
        return torch.from_numpy(image).permute(2, 0, 1), int(sample[1])

    urls = sorted(str(p) for p in shards.glob("*.tar"))
    stream = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                             empty_check=False).repeat()
              .decode("pil").to_tuple("jpg;png", "cls").map(prepare).batched(args.batch))
    return rate(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers), args.batches)


def with_hf_datasets(folder: Path, cache: Path, args) -> float | None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache))
    try:
        import datasets
    except ImportError:
        return None
    data = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(cache))

    def prepare(batch):
        batch["image"] = [torch.from_numpy(np.array(fit(im.convert("RGB"), args.size))).permute(2, 0, 1)
                          for im in batch["image"]]
        return batch

    data = data.with_transform(prepare)
    sampler = torch.utils.data.RandomSampler(data, replacement=True, num_samples=10**9)
    batches = torch.utils.data.DataLoader(data, batch_size=args.batch, sampler=sampler, num_workers=args.workers,
                                          collate_fn=lambda rows: (torch.stack([r["image"] for r in rows]),))
    return rate(batches, args.batches)


def _part_of(folder: Path, out: Path, n: int) -> Path:
    """A folder of symbolic links to `n` images of `folder` spread over its classes (its layout kept)."""
    from parscale_ear.image_files import list_images
    from parscale_ear.streaming import spread

    listing = list_images(folder)
    for rel in listing.pick(spread(len(listing), n)).files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).symlink_to((folder / rel).resolve())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--folder", help="an image folder to read (default: one made of --images synthetic JPEGs)")
    p.add_argument("--images", type=int, default=2000, help="synthetic images to make, or images of --folder to read")
    p.add_argument("--size", type=int, default=64, help="side the images are fitted to")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=20, help="timed batches per reader")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(args.folder) if args.folder else make_folder(tmp / "folder", args.images)
        if args.folder:  # the first --images of it, linked into a folder of their own (nothing else is converted)
            folder = _part_of(folder, tmp / "part", args.images)
        t0 = time.perf_counter()
        write_shards(folder, tmp / "shards", shard_items=500)
        print(f"{len(open_images(str(folder), args.size, 3))} images; tar shards written in {time.perf_counter() - t0:.1f} s "
              f"(each image checked to decode); fitted to {args.size}x{args.size}, batch {args.batch}, "
              f"{args.workers} workers, torch {torch.__version__}, {os.cpu_count()} CPUs")
        rows = [("image folder (parscale_ear, random order)", ours(str(folder), args)),
                ("tar shards (parscale_ear, random order)", ours(str(tmp / "shards"), args)),
                ("tar shards (webdataset, stream order)", with_webdataset(tmp / "shards", args)),
                ("imagefolder (HF datasets, random order)", with_hf_datasets(folder, tmp / "hf-cache", args))]
        for name, value in rows:
            print(f"{name:45s} {'not installed' if value is None else f'{value:8.0f} images/s'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
