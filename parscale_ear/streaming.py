"""Training images as map-style torch Datasets read in DataLoader workers: held in memory (Fashion-MNIST, idx files,
CIFAR-10, .npz), or read lazily from an image folder or WebDataset tar shards, each item decoded, converted to the
model's channels, resized and centre-cropped when it is read. Each rank reads only its share of every global batch, in
DistributedSampler's order (that of `train.distributed.batch_indices`, so any world size draws the same global
batches); an unreadable image is counted and replaced by the next readable one, so every batch keeps its size."""
from __future__ import annotations

import hashlib
import io
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from .data import ImageData, check_read_options, in_memory_source, load_dataset
from .image_files import DatasetError, ImageListing, check_upscale_size, decode_image, list_images
from .shards import ShardSet, open_shards

MAX_TRIES = 32  # an item whose image and the next 31 cannot be read stops the run (the data is broken, not a file)


class ImageSet(Dataset, ABC):
    """Images with labels (-1: unlabelled) by index; item i is (uint8 (C, H, W) or None, label, i, failed reads,
    the first failure's message). Unreadable images are replaced by the next readable one, or (replace False) given
    as None."""

    source: str = ""
    class_names: list[str] = []
    labelled: bool = False
    replace: bool = True

    @abstractmethod
    def load(self, i: int) -> tuple[torch.Tensor, int]:
        """Image i (uint8 (C, H, W)) and its label; a DatasetError where it cannot be read."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.labelled else 0

    @property
    @abstractmethod
    def identity(self) -> str:
        """A digest of the source (its files' manifest) and of how it is read."""

    def __getitem__(self, i: int):
        failed, first = 0, ""
        for t in range(MAX_TRIES if self.replace else 1):
            try:
                image, label = self.load((i + t) % len(self))
                return image, label, i, failed, first
            except DatasetError as error:
                failed, first = failed + 1, first or str(error)
        if self.replace:
            raise DatasetError(f"{MAX_TRIES} images in a row from item {i} of {self.source} cannot be read; the "
                               f"first: {first}")
        return None, -1, i, failed, first

    def without_replacement(self) -> ImageSet:
        """The same images, an unreadable one given as None (for encoding each image once)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__, replace=False)
        return view


class MemoryImages(ImageSet):
    """An in-memory `ImageData`."""

    def __init__(self, data: ImageData):
        self.data, self.source, self.class_names = data, data.source, data.class_names
        self.labelled = data.labels is not None

    def __len__(self) -> int:
        return len(self.data)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data.images[i], -1 if self.data.labels is None else int(self.data.labels[i])

    @property
    def identity(self) -> str:
        if self.data.identity:
            return self.data.identity
        digest = hashlib.sha256(self.data.images.contiguous().numpy().tobytes())  # arrays made in memory: their bytes
        if self.data.labels is not None:
            digest.update(self.data.labels.numpy().tobytes())
        return digest.hexdigest()


class FolderImages(ImageSet):
    """An image folder (ImageFolder layout or flat), each image decoded when read."""

    def __init__(self, listing: ImageListing, image_size: int, channels: int):
        self.listing, self.image_size, self.channels = listing, image_size, channels
        self.source, self.class_names, self.labelled = str(listing.root), listing.class_names, listing.labels is not None
        self._identity = ""

    def __len__(self) -> int:
        return len(self.listing)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        image = decode_image(self.listing.root / self.listing.files[i], self.channels, self.image_size)
        return torch.from_numpy(image).permute(2, 0, 1), -1 if self.listing.labels is None else int(self.listing.labels[i])

    @property
    def identity(self) -> str:
        if not self._identity:
            self._identity = f"folder:{self.listing.identity()}:{self.image_size}:{self.channels}"
        return self._identity


class ShardImages(ImageSet):
    """WebDataset tar shards, each sample's image decoded when read (`limit` samples spread over them)."""

    def __init__(self, shards: ShardSet, image_size: int, channels: int, limit: int = 0):
        self.shards, self.image_size, self.channels = shards, image_size, channels
        self.items = spread(len(shards), limit if limit > 0 else len(shards))  # shards hold classes in order
        self.length = len(self.items)
        self.source, self.class_names, self.labelled = str(shards.folder), shards.class_names, bool(shards.class_names)

    def __len__(self) -> int:
        return self.length

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        data, ext, label = self.shards.sample(self.items[i])
        image = decode_image(data, self.channels, self.image_size, name=f"{self.source} sample {i} (.{ext})")
        return torch.from_numpy(image).permute(2, 0, 1), label

    @property
    def identity(self) -> str:
        return f"shards:{self.shards.identity}:{self.length}:{self.image_size}:{self.channels}"


def check_upscale(images: ImageSet, image_size: int) -> ImageSet:
    """`images`, with a one-line DatasetError where their first image is under half of `image_size` on a side: training
    refuses upscaling by more than 2x, as it does for in-memory sources (`data folder` renders at another size)."""
    if isinstance(images, MemoryImages):
        return images
    for i in range(min(len(images), 16)):  # the first readable one (unreadable images are counted when read)
        try:
            if isinstance(images, ShardImages):
                where, opened = f"{images.source} sample {images.items[i]}", io.BytesIO(images.shards.sample(images.items[i])[0])
            else:
                where = opened = images.listing.root / images.listing.files[i]
            with Image.open(opened) as im:
                width, height = im.size
            break
        except (OSError, SyntaxError, ValueError):
            continue
    else:
        return images
    check_upscale_size(height, width, image_size, where)
    return images


def open_images(source: str, image_size: int, channels: int, max_images: int = 0) -> ImageSet:
    """The training images of `source` ("fashion-mnist", idx files, CIFAR-10 or .npz: in memory; a folder of images or
    of tar shards: read lazily); with `max_images` > 0, that many: the first of an in-memory set (stored shuffled), spread
    over a folder or shards (stored class by class)."""
    check_read_options("train", image_size, channels)
    if in_memory_source(source):
        data = load_dataset(source, "train", image_size=image_size, channels=channels)
        return MemoryImages(data.subset(max_images) if 0 < max_images < len(data) else data)
    folder = Path(source).expanduser()
    shards = open_shards(folder)
    if shards is not None:
        return ShardImages(shards, image_size, channels, max_images)
    listing = list_images(folder)
    return FolderImages(listing.pick(spread(len(listing), max_images)) if max_images > 0 else listing, image_size,
                        channels)


# ----------------------------------------------------------------------------- batches

@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) uint8, the readable ones
    labels: torch.Tensor  # (B,) int64, -1 where unlabelled
    indices: torch.Tensor  # (B,) the items asked for
    attempted: int  # images read (failures included)
    skipped: int  # failed reads
    first: str  # the first failure's message

    def pin_memory(self) -> Batch:
        self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        return self


def collate(items: list) -> Batch:
    kept = [item for item in items if item[0] is not None]
    images = torch.stack([item[0] for item in kept]) if kept else torch.empty(0, dtype=torch.uint8)
    skipped = sum(item[3] for item in items)
    return Batch(images, torch.tensor([item[1] for item in kept], dtype=torch.int64),
                 torch.tensor([item[2] for item in kept], dtype=torch.int64), len(kept) + skipped, skipped,
                 next((item[4] for item in items if item[4]), ""))


class RankBatches(Sampler):
    """This rank's share of global batches `start`, `start + 1`, ... (endless): epoch e is the order of
    DistributedSampler(seed=seed * 7919, drop_last=True) at epoch e, cut into batches of batch // world."""

    def __init__(self, num_items: int, batch: int, seed: int, rank: int, world: int, start: int = 0):
        self.num_items, self.batch, self.seed, self.rank, self.world, self.start = num_items, batch, seed, rank, world, start

    def __iter__(self):
        per_epoch = max(1, self.num_items // self.batch)
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            sampler = DistributedSampler(range(self.num_items), num_replicas=self.world, rank=self.rank, shuffle=True,
                                         seed=self.seed * 7919, drop_last=True)
            sampler.set_epoch(epoch)
            for i, indices in enumerate(BatchSampler(sampler, self.batch // self.world, drop_last=False)):
                if i >= per_epoch:
                    break
                if i >= skip:
                    yield indices
            epoch, skip = epoch + 1, 0


def default_workers() -> int:
    """DataLoader workers per process: the CPUs this process may use over the processes of its node, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def loader(images: ImageSet, sampler, workers: int = -1, pin: bool = False) -> DataLoader:
    """A DataLoader of `Batch`es with `workers` processes (-1: `default_workers()`; 0: in this process)."""
    workers = default_workers() if workers < 0 else workers
    return DataLoader(images, batch_sampler=sampler, num_workers=workers, collate_fn=collate, pin_memory=pin,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def ordered_batches(start: int, stop: int, batch: int) -> list[list[int]]:
    """Items start..stop-1 in order, in batches of `batch`."""
    return [list(range(i, min(stop, i + batch))) for i in range(start, stop, batch)]


def spread(num_items: int, n: int) -> list[int]:
    """n of items 0..num_items-1 evenly spaced over all of them (all where n >= num_items): a sample that covers every
    class of a folder or of shards written class by class, the same at every call."""
    if n >= num_items:
        return list(range(num_items))
    return [int(i) for i in torch.linspace(0, num_items - 1, n).round().long()]


def read_images(images: ImageSet, n: int, workers: int = 0) -> torch.Tensor:
    """n readable images spread over the set (`spread`) as uint8 (n', C, H, W) (n' < n only if fewer can be read)."""
    index = spread(len(images), n)
    if isinstance(images, MemoryImages):
        return images.data.images[index]
    batches = [index[i:i + 256] for i in range(0, len(index), 256)]
    return torch.cat([b.images for b in loader(images.without_replacement(), batches, workers)])
