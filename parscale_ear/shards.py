"""WebDataset tar shards (the layout of large image-generation training sets): a folder of shard-NNNNNN.tar files whose
samples are KEY.EXT (the image file's own bytes) and KEY.cls (its class index as text), with shards.json naming the
classes and each shard's count, size and SHA-256. `write_shards` converts an image folder, one shard at a time and
each atomically, and resumes after a kill; `ShardSet` reads one sample by its offset in a shard (random access, so a
map-style dataset and any sampler can use it). Shards written by other WebDataset tools read too (indexed at open)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_path, atomic_write_json, prepare_output_folder, remove_stale_temporaries, sha256_file
from .image_files import IMAGE_EXTENSIONS, MAX_UNREADABLE, DatasetError, Unreadable, decode_image, list_images

MANIFEST = "shards.json"
FORMAT = "webdataset-image-folder"
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


# ----------------------------------------------------------------------------- writing

def _checked_bytes(path: Path) -> tuple[bytes | None, str]:
    """(the file's bytes, "") when it decodes as an image, else (None, why)."""
    try:
        data = path.read_bytes()
        decode_image(data, channels=3, name=str(path))
        return data, ""
    except (OSError, DatasetError) as error:
        return None, str(error) if isinstance(error, DatasetError) else f"cannot read image {path}: {error.strerror}"


def _write_shard(path: Path, samples: list[tuple[str, str, bytes, int | None]]) -> None:
    """A tar of (key, ext, image bytes, label or None) samples, written atomically, byte-for-byte reproducible."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ext, data, label in samples:
            members = [(f"{key}.{ext}", data)] + ([(f"{key}.cls", str(label).encode())] if label is not None else [])
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                tar.addfile(info, io.BytesIO(payload))


def write_shards(source: str | os.PathLike, out: str | os.PathLike, shard_items: int = 1000, workers: int = 0,
                 max_unreadable: float = MAX_UNREADABLE, progress: bool = False) -> Path:
    """Write the image folder `source` as tar shards of `shard_items` samples into `out`: each image is checked to
    decode (unreadable ones are skipped and counted), shards are written atomically, shards.json after each one; a
    rerun resumes after the last shard written. Returns `out`."""
    if isinstance(shard_items, bool) or not isinstance(shard_items, int) or shard_items < 1:
        raise ValueError(f"shard_items must be a positive int, got {shard_items!r}")
    listing = list_images(source)
    out = prepare_output_folder(out, "OUT")
    plan = {"format": FORMAT, "version": 1, "source": str(Path(source).resolve()), "source_identity": listing.identity(),
            "shard_items": shard_items, "num_source_images": len(listing), "class_names": listing.class_names}
    done = _resumable(out, plan)
    remove_stale_temporaries(out, ("shard-*.tar", MANIFEST))
    seen = Unreadable(max_unreadable, len(listing))
    for rec in done:
        seen.add(rec["count"] + rec["skipped"], rec["skipped"], rec.get("first_skipped", ""))
    starts = range(len(done) * shard_items, len(listing), shard_items)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="write shards", unit="shard")
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for start in starts:
            files = [listing.root / rel for rel in listing.files[start:start + shard_items]]
            checked = list(pool.map(_checked_bytes, files, chunksize=16) if pool else map(_checked_bytes, files))
            samples, failures = [], [why for data, why in checked if data is None]
            for i, (path, (data, _)) in enumerate(zip(files, checked), start):
                if data is not None:
                    ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
                    samples.append((f"{i:09d}", ext, data, None if listing.labels is None else int(listing.labels[i])))
            seen.add(len(files), len(failures), failures[0] if failures else "")
            name = shard_name(len(done))
            _write_shard(out / name, samples)
            done.append({"name": name, "count": len(samples), "skipped": len(failures), "bytes": (out / name).stat().st_size,
                         "sha256": sha256_file(out / name), **({"first_skipped": failures[0]} if failures else {})})
            atomic_write_json(out / MANIFEST, {**plan, "complete": False, "shards": done})
    finally:
        if pool:
            pool.shutdown()
    atomic_write_json(out / MANIFEST, {**plan, "complete": True, "shards": done})
    return out


def _resumable(out: Path, plan: dict) -> list[dict]:
    """The shards a previous run of the same conversion finished (checked by size and SHA-256); one-line errors for a folder
    that holds something else."""
    path = out / MANIFEST
    if not path.is_file():
        others = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if others:
            raise FileExistsError(f"{out} is not empty ({', '.join(sorted(others)[:3])}, ...); shards go into a new "
                                  f"folder or one this converter started")
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path} is unreadable ({error}); remove the folder or choose another") from None
    if {k: old.get(k) for k in plan} != plan:
        raise FileExistsError(f"{out} holds shards of another source or shard size; choose another folder")
    done = []
    for rec in old.get("shards", []):
        shard = out / rec["name"]
        if not (shard.is_file() and shard.stat().st_size == rec["bytes"] and sha256_file(shard) == rec.get("sha256")):
            break
        done.append(rec)
    return done


# ----------------------------------------------------------------------------- reading

def index_shard(path: Path) -> list[tuple[str, int, int, int]]:
    """The samples of a tar, in order: (image extension, its offset, its size, label or -1) from its headers."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                folder, _, base = member.name.rpartition("/")
                if not member.isfile() or "." not in base:
                    continue
                stem, ext = base.split(".", 1)  # WebDataset: the key ends at the first dot of the file name
                entry, ext = samples.setdefault(f"{folder}/{stem}", {}), ext.lower()
                if ext in _IMAGE_EXTS:
                    entry["image"] = (ext, member.offset_data, member.size)
                elif ext == "cls":
                    tar.fileobj.seek(member.offset_data)
                    entry["cls"] = int(tar.fileobj.read(member.size).decode().strip())
    except (OSError, tarfile.TarError, ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read tar shard {path}: {error}") from None
    return [(e["image"][0], e["image"][1], e["image"][2], e.get("cls", -1)) for e in samples.values() if "image" in e]


@dataclass
class ShardSet:
    """A folder of tar shards: sample i's bytes, extension and label, read by offset (indexes cached per process)."""

    folder: Path
    names: list[str]
    counts: list[int]
    class_names: list[str]
    identity: str
    _index: dict = field(default_factory=dict, repr=False)
    _files: dict = field(default_factory=dict, repr=False)  # shard -> an open file descriptor

    def __len__(self) -> int:
        return sum(self.counts)

    def __getstate__(self) -> dict:  # DataLoader workers open their own files
        return {**self.__dict__, "_index": {}, "_files": {}}

    def sample(self, i: int) -> tuple[bytes, str, int]:
        """(image bytes, extension, label or -1) of sample i."""
        k = 0
        while i >= self.counts[k]:
            i, k = i - self.counts[k], k + 1
        if k not in self._index:
            index = index_shard(self.folder / self.names[k])
            if len(index) != self.counts[k]:
                raise DatasetError(f"tar shard {self.folder / self.names[k]} holds {len(index)} samples, its manifest "
                                   f"says {self.counts[k]}; rewrite the shards")
            self._index[k] = index
        if k not in self._files:
            self._files[k] = os.open(self.folder / self.names[k], os.O_RDONLY)
        ext, offset, size, label = self._index[k][i]
        return os.pread(self._files[k], size, offset), ext, label

    def __del__(self):
        for fd in self._files.values():
            os.close(fd)


def open_shards(folder: str | os.PathLike) -> ShardSet | None:
    """The tar shards of `folder` (None when it holds no .tar files): from its shards.json when there is one (checked
    against the files' sizes), else each tar indexed now."""
    folder = Path(folder)
    tars = sorted(p.name for p in folder.glob("*.tar") if p.is_file())
    if not tars:
        return None
    path = folder / MANIFEST
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            shards = manifest["shards"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{path} is unreadable ({type(error).__name__}); rewrite the shards") from None
        if not manifest.get("complete"):
            raise DatasetError(f"{folder}: the conversion into shards did not finish; run it again to resume")
        for rec in shards:
            if not (folder / rec["name"]).is_file() or (folder / rec["name"]).stat().st_size != rec["bytes"]:
                raise DatasetError(f"{folder / rec['name']} is missing or not the size shards.json records; rewrite the shards")
        digest = hashlib.sha256(json.dumps([manifest["class_names"], shards], sort_keys=True).encode()).hexdigest()
        return ShardSet(folder, [r["name"] for r in shards], [r["count"] for r in shards], manifest["class_names"], digest)
    indexes = [index_shard(folder / name) for name in tars]
    labels = {label for index in indexes for *_, label in index}
    names = [str(c) for c in range(max(labels) + 1)] if labels and min(labels) >= 0 else []
    stats = [(n, (folder / n).stat()) for n in tars]
    digest = hashlib.sha256("".join(f"{n}\t{s.st_size}\t{s.st_mtime_ns}\n" for n, s in stats).encode()).hexdigest()
    shard_set = ShardSet(folder, tars, [len(index) for index in indexes], names, digest)
    shard_set._index = dict(enumerate(indexes))
    return shard_set
