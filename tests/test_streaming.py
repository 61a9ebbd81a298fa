"""Streamed training data: image folders and WebDataset tar shards read lazily (decode, convert, resize and crop per
item), the shard converter (atomic, resumable), unreadable images skipped and counted, and each rank reading only its
share of every global batch. CPU only, tiny images, a few seconds."""
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parscale_ear import shards as shards_mod
from parscale_ear.cli import main
from parscale_ear.image_files import DatasetError, UnreadableImageWarning
from parscale_ear.streaming import FolderImages, MemoryImages, RankBatches, ShardImages, loader, open_images
from parscale_ear.train.distributed import Dist, batch_indices


class Killed(Exception):
    """A process killed mid-write (as far as the code under test can tell)."""


def write_folder(root: Path, per_class: int = 4, classes=("cat", "dog"), size=(20, 24)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def one_error_line(capsys, code) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("parscale-ear: error: "), (code, err)
    return err[0]


def test_an_image_folder_is_read_lazily_item_by_item_with_every_mode_converted(tmp_path):
    root = write_folder(tmp_path / "imgs")
    Image.new("RGBA", (16, 16), (10, 20, 30, 40)).save(root / "cat" / "rgba.png")
    Image.new("P", (16, 16), 3).save(root / "dog" / "palette.png")
    Image.new("L", (16, 16), 77).save(root / "dog" / "grey.png")
    images = open_images(str(root), 16, 3)
    assert isinstance(images, FolderImages) and len(images) == 11 and images.class_names == ["cat", "dog"]
    assert not hasattr(images, "images")  # nothing decoded up front
    modes = {images.listing.files[i]: images[i][0] for i in range(len(images))}
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.uint8 for x in modes.values())
    assert modes["cat/rgba.png"][:, 0, 0].tolist() == [10, 20, 30]
    assert modes["dog/grey.png"].eq(77).all()
    grey = open_images(str(root), 8, 1)
    assert grey[0][0].shape == (1, 8, 8) and [grey[i][1] for i in range(len(grey))] == [0] * 5 + [1] * 6


def test_shards_hold_the_folder_and_read_back_the_same_items(tmp_path, capsys):
    root = write_folder(tmp_path / "imgs", per_class=5)
    assert main(["data", "shards", str(root), str(tmp_path / "shards"), "--shard-items", "4"]) == 0
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shards.json"]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:  # WebDataset's layout: KEY.EXT, KEY.cls
        assert tar.getnames()[:4] == ["000000000.png", "000000000.cls", "000000001.png", "000000001.cls"]
    folder, shards = open_images(str(root), 16, 3), open_images(str(tmp_path / "shards"), 16, 3)
    assert isinstance(shards, ShardImages) and len(shards) == len(folder) == 10 and shards.class_names == ["cat", "dog"]
    for i in range(10):
        assert torch.equal(shards[i][0], folder[i][0]) and shards[i][1] == folder[i][1]
    assert main(["data", "info", str(tmp_path / "shards")]) == 0
    assert "10 images (ShardImages), 2 classes" in capsys.readouterr().out
    assert len(open_images(str(tmp_path / "shards"), 16, 3, max_images=3)) == 3


def test_the_shard_converter_writes_atomically_and_resumes(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs", per_class=5)
    out = tmp_path / "shards"
    real, calls, kill = shards_mod._write_shard, [], [True]

    def dying(path, samples):
        calls.append(path.name)
        if len(calls) == 2 and kill and kill.pop():
            raise Killed()
        real(path, samples)

    monkeypatch.setattr(shards_mod, "_write_shard", dying)
    with pytest.raises(Killed):
        shards_mod.write_shards(root, out, shard_items=4)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shards.json"]  # nothing half-written
    assert not json.loads((out / "shards.json").read_text())["complete"]
    with pytest.raises(DatasetError, match="did not finish; run it again to resume"):
        open_images(str(out), 16, 3)
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / ".shard-000001.tar.abcdefgh.parscale-ear.tmp").write_bytes(b"torn")  # what a SIGKILL leaves
    calls.clear()
    shards_mod.write_shards(root, out, shard_items=4)
    assert calls == ["shard-000001.tar", "shard-000002.tar"] and (out / "shard-000000.tar").stat().st_mtime_ns == first
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shards.json"]
    assert len(open_images(str(out), 16, 3)) == 10
    with pytest.raises(FileExistsError, match="another source"):
        shards_mod.write_shards(root, out, shard_items=3)
    damaged = bytearray((out / "shard-000001.tar").read_bytes())  # a flipped byte, the size unchanged
    damaged[600] ^= 0xFF
    (out / "shard-000001.tar").write_bytes(bytes(damaged))
    calls.clear()
    shards_mod.write_shards(root, out, shard_items=4)  # a rerun trusts only shards that match their SHA-256
    assert calls == ["shard-000001.tar", "shard-000002.tar"] and len(open_images(str(out), 16, 3)) == 10


def test_unreadable_images_are_skipped_counted_and_past_the_fraction_stop_the_run(tmp_path, capsys):
    root = write_folder(tmp_path / "imgs", per_class=6)
    (root / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # corrupt
    whole = (root / "dog" / "1.png").read_bytes()
    (root / "dog" / "1.png").write_bytes(whole[: len(whole) // 2])  # truncated
    images = open_images(str(root), 16, 3)
    item = images[0]  # replaced by the next readable image, and counted
    assert torch.equal(item[0], images[1][0]) and item[3] == 1 and "cat/0.png" in item[4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shards_mod.write_shards(root, tmp_path / "shards", shard_items=5, max_unreadable=0.5)
    assert any(issubclass(w.category, UnreadableImageWarning) and "skipped 1 unreadable" in str(w.message) for w in caught)
    manifest = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert sum(r["count"] for r in manifest["shards"]) == 10 and sum(r["skipped"] for r in manifest["shards"]) == 2
    code = main(["train-vae", "--preset", "tiny-32", "--data", str(root), "--steps", "2", "--batch-size", "4",
                 "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu", "--workers", "0"])
    line = one_error_line(capsys, code)  # 2 of 12 is over the default 1%
    assert "could not be read, more than the 1.00% allowed (--max-unreadable)" in line and "cannot read image" in line


@pytest.mark.parametrize("case", ["empty class", "no images"])
def test_empty_class_folders_and_folders_without_images_are_one_line_errors(tmp_path, capsys, case):
    root = write_folder(tmp_path / "imgs") if case == "empty class" else tmp_path / "imgs"
    (root / "empty").mkdir(parents=True)
    (root / "empty" / "notes.txt").write_text("not an image")
    code = main(["train-vae", "--preset", "tiny-32", "--data", str(root), "--steps", "1", "--out", str(tmp_path / "r")])
    line = one_error_line(capsys, code)
    assert ("class folder" in line and "holds no images" in line) if case == "empty class" else "no data found" in line


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_rank_reads_only_its_share_of_the_global_batch(tmp_path, world):
    images = open_images(str(write_folder(tmp_path / "imgs", per_class=9)), 8, 1)
    reads = []
    for rank in range(world):  # the loader of each rank, from step 3 (a resumed run)
        batches = iter(loader(images, RankBatches(len(images), 8, 5, rank, world, start=3), workers=0))
        reads.append([next(batches).indices.tolist() for _ in range(4)])
    for step in range(4):
        shares = [set(r[step]) for r in reads]
        assert sum(len(s) for s in shares) == 8 and len(set().union(*shares)) == 8  # disjoint, the whole batch
        assert set().union(*shares) == set(batch_indices(len(images), 8, 3 + step, 5, Dist()).tolist())
        for rank in range(world):
            assert reads[rank][step] == batch_indices(len(images), 8, 3 + step, 5, Dist(rank, world)).tolist()


def test_rank_batches_are_distributed_samplers_order():
    from torch.utils.data import DistributedSampler

    for rank in range(3):
        ours = iter(RankBatches(50, 12, 7, rank, 3))
        sampler = DistributedSampler(range(50), num_replicas=3, rank=rank, seed=7 * 7919, drop_last=True)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            order = list(sampler)
            assert [next(ours) for _ in range(50 // 12)] == [order[i * 4:(i + 1) * 4] for i in range(50 // 12)]


def test_in_memory_sources_keep_their_fast_path(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((6, 32, 32), np.uint8), labels=np.arange(6) % 2)
    images = open_images(str(path), 32, 1)
    assert isinstance(images, MemoryImages) and images.data.images.shape == (6, 1, 32, 32)


def _relative_imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level and node.module}


def test_one_image_reader_and_the_data_modules_import_one_way():
    package = Path(__file__).resolve().parent.parent / "parscale_ear"
    assert _relative_imports(package / "data_formats.py") == {"image_files"}  # data -> data_formats, never back
    assert not _relative_imports(package / "image_files.py")  # the room below data, streaming, shards and FID
    fid_source = (package / "evaluation" / "fid.py").read_text()
    assert "image_files" in _relative_imports(package / "evaluation" / "fid.py") and "Image.open" not in fid_source
    assert "Image.open" not in (package / "data.py").read_text() + (package / "data_formats.py").read_text()


def test_a_streamed_vae_run_resumes_bit_for_bit(tmp_path):
    import parscale_ear as pe
    from parscale_ear.train import TrainConfig, train

    root = write_folder(tmp_path / "imgs", per_class=8, size=(32, 32))
    config = pe.get_config("tiny-32", num_classes=2)

    def cfg(steps):
        return TrainConfig(kind="vae", steps=steps, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=2,
                           data=str(root), bf16=False, samples=False, workers=1)

    train(cfg(4), tmp_path / "whole", config, progress=False)
    train(cfg(2), tmp_path / "split", config, progress=False)
    train(cfg(4), tmp_path / "split", resume=True, progress=False)
    whole, split = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("whole", "split"))
    assert all(torch.equal(whole["model"][k], split["model"][k]) for k in whole["model"])
    assert whole["config"]["vae"]["latent_scale"] == split["config"]["vae"]["latent_scale"]


def test_a_part_of_a_folder_or_of_shards_covers_every_class(tmp_path):
    """Folders and shards hold their classes one after another: --max-images and the images the scales are measured
    on are spread over the whole set, so they cover every class rather than the first ones."""
    from parscale_ear.streaming import read_images, spread

    root = write_folder(tmp_path / "imgs", per_class=4, classes=("a", "b", "c"))
    assert main(["data", "shards", str(root), str(tmp_path / "shards"), "--shard-items", "5"]) == 0
    for source in (root, tmp_path / "shards"):
        part = open_images(str(source), 16, 3, max_images=3)
        assert len(part) == 3 and sorted(part[i][1] for i in range(3)) == [0, 1, 2]
    whole = open_images(str(root), 16, 3)
    assert spread(12, 3) == [0, 6, 11] and spread(4, 9) == [0, 1, 2, 3]
    assert torch.equal(read_images(whole, 3), torch.stack([whole[i][0] for i in (0, 6, 11)]))


def test_training_refuses_to_upscale_a_folder_more_than_twice_as_in_memory_sources(tmp_path, capsys):
    from parscale_ear.streaming import check_upscale

    root = write_folder(tmp_path / "small", size=(12, 14))  # 14 x 12 images for a 32 x 32 model
    with pytest.raises(DatasetError, match="upscaling by more than 2x is refused"):
        check_upscale(open_images(str(root), 32, 1), 32)
    assert check_upscale(open_images(str(root), 24, 1), 24) is not None  # 2x at most: read
    assert main(["data", "shards", str(root), str(tmp_path / "shards")]) == 0
    with pytest.raises(DatasetError, match="sample 0"):
        check_upscale(open_images(str(tmp_path / "shards"), 32, 1), 32)
