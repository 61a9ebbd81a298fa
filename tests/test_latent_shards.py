"""Latents on disk: memory-mapped shards in the VAE run folder, encoded once, keyed by the VAE weights and the data's
identity, checked before every use (a damaged shard is encoded again), resumed after a killed encode, and read by
training through the memory map. CPU only, tiny images, a few seconds each."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import parscale_ear as pe
from parscale_ear import train as train_mod
from parscale_ear.streaming import open_images
from parscale_ear.train import GeneratorTask, TrainConfig, latent_shards, load_checkpoint, model_from_checkpoint, train
from parscale_ear.train import latents as latents_mod


class Killed(Exception):
    """A process killed mid-encode (as far as the code under test can tell)."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 labelled 32x32 grey PNGs in two class folders."""
    root = tmp_path_factory.mktemp("data") / "imgs"
    rng = np.random.default_rng(0)
    for i in range(24):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:02d}.png")
    return root


def cfg(kind, data, vae_run="", steps=2, **kw):
    return TrainConfig(**{**dict(kind=kind, steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1,
                                 sample_every=100, ckpt_every=1, data=str(data), vae_run=str(vae_run), bf16=False,
                                 samples=False, workers=0), **kw})


@pytest.fixture(scope="module")
def vae(tmp_path_factory, folder):
    config = pe.get_config("tiny-32", num_classes=2)
    return train(cfg("vae", folder), tmp_path_factory.mktemp("runs") / "vae", config, progress=False)


@pytest.fixture
def setup(vae, folder):
    model = model_from_checkpoint(load_checkpoint(vae))
    return model, open_images(str(folder), 32, 1)


def encode(vae, setup, **kw):
    model, images = setup
    return latent_shards(vae, model, images, torch.device("cpu"), shard_items=8, workers=0, **kw)


def shard_folder(vae, setup):
    model, images = setup
    return vae / "latents" / latents_mod.latent_key(model.vae, images, 8)[:16]


def test_latents_are_memory_mapped_shards_that_training_reads_through_the_map(tmp_path, vae, folder, setup):
    latents = encode(vae, setup)
    assert len(latents) == 24 and len(latents.latents) == 3 and all(isinstance(x, np.memmap) for x in latents.latents)
    model, images = setup
    expected = train_mod.encode_dataset(model.vae, torch.stack([images[i][0] for i in range(24)]), torch.device("cpu"))
    torch.testing.assert_close(latents.sample(24), expected)
    task = GeneratorTask(model, images, cfg("generator", folder, vae), torch.device("cpu"), train_mod.Dist(), fresh=True)
    assert task.inputs is task.latents and all(isinstance(x, np.memmap) for x in task.inputs.latents)
    x, labels = task.batch(torch.tensor([9, 0, 17]))
    torch.testing.assert_close(x, expected[[9, 0, 17]])
    assert labels.tolist() == [images[9][1], images[0][1], images[17][1]]
    run = train(cfg("generator", folder, vae), tmp_path / "gen", progress=False)  # the real entry point
    info = json.loads((run / "run.json").read_text())
    assert info["latents"] == 24 and info["unreadable_images"] == 0 and info["num_images"] == 24


def damage(case, npy, meta):
    record = json.loads(meta.read_text())
    array = np.load(npy)
    if case == "flipped byte":
        raw = bytearray(npy.read_bytes())
        raw[-7] ^= 0x01
        npy.write_bytes(bytes(raw))
    elif case == "fewer latents":
        np.save(npy, array[:3])
    elif case == "half precision":
        np.save(npy, array.astype(np.float16))
    elif case == "sliced":
        np.save(npy, array[:, :2])
    elif case == "no record":
        meta.unlink()
    elif case == "non-finite":
        array[1, 0, 0, 0] = np.nan
        np.save(npy, array)
        record["latents_sha256"] = latents_mod._file_check(npy, True, False)[0]  # a digest that matches the NaN
        meta.write_text(json.dumps(record))
    elif case == "torn file":
        npy.write_bytes(npy.read_bytes()[:200])


@pytest.mark.parametrize("case", ["flipped byte", "fewer latents", "half precision", "sliced", "no record",
                                  "non-finite", "torn file"])
def test_a_damaged_shard_is_never_trusted_and_is_encoded_again(vae, setup, case):
    good = encode(vae, setup).sample(24)
    npy, meta = shard_folder(vae, setup) / "000001.latents.npy", shard_folder(vae, setup) / "000001.json"
    damage(case, npy, meta)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = encode(vae, setup)
    if case != "no record":  # a shard without its record is one a killed encode left: encoded without a word
        assert any("fails its check" in str(w.message) and "encoded again" in str(w.message) for w in caught), case
    assert len(again) == 24 and torch.equal(again.sample(24), good)
    assert latents_mod._check_shard(meta.parent, 1, json.loads(meta.read_text())["key"], 8, 16, full=True) is not None


def test_a_killed_encode_resumes_where_it_stopped(vae, setup, monkeypatch):
    from parscale_ear.files import TEMP_SUFFIX

    encode(vae, setup)  # the folder exists whichever tests ran before
    for path in shard_folder(vae, setup).iterdir():
        path.unlink()
    real, calls, kill = latents_mod._encode_shard, [], [True]

    def dying(folder, k, *args, **kw):
        calls.append(k)
        if k == 1 and kill and kill.pop():
            (folder / f".{k:06d}.latents.npy.abcdefgh.parscale-ear.tmp").write_bytes(b"half a shard")  # a SIGKILL's
            raise Killed()
        return real(folder, k, *args, **kw)

    monkeypatch.setattr(latents_mod, "_encode_shard", dying)
    with pytest.raises(Killed):
        encode(vae, setup)
    folder = shard_folder(vae, setup)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "000000.json", "000000.labels.npy", "000000.latents.npy"]
    calls.clear()
    latents = encode(vae, setup)
    assert calls == [1, 2] and len(latents) == 24  # shard 0 was kept
    assert not any(p.name.endswith(TEMP_SUFFIX) for p in folder.iterdir())  # the killed write's temporary is gone


def test_the_cache_key_follows_the_vae_weights_and_the_data(vae, setup, folder, tmp_path):
    model, images = setup
    key = latents_mod.latent_key(model.vae, images)
    assert latents_mod.latent_key(model.vae, open_images(str(folder), 32, 1)) == key  # same files: same key
    assert latents_mod.latent_key(model.vae, open_images(str(folder), 32, 1, max_images=10)) != key
    with torch.no_grad():
        next(model.vae.parameters()).add_(1e-3)
    assert latents_mod.latent_key(model.vae, images) != key
    copy = tmp_path / "imgs"
    for path in folder.rglob("*.png"):
        (copy / path.parent.name).mkdir(parents=True, exist_ok=True)
        (copy / path.parent.name / path.name).write_bytes(path.read_bytes())
    before = latents_mod.latent_key(model.vae, open_images(str(copy), 32, 1))
    (copy / "c0" / "00.png").write_bytes((copy / "c0" / "02.png").read_bytes() + b"\0")  # one file changed
    assert latents_mod.latent_key(model.vae, open_images(str(copy), 32, 1)) != before


def test_unreadable_images_get_no_latent_and_the_labels_stay_aligned(vae, tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    for i in range(12):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:02d}.png")
    (root / "c0" / "04.png").write_bytes(b"not a png")
    model, images = model_from_checkpoint(load_checkpoint(vae)), open_images(str(root), 32, 1)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        latents = latent_shards(vae, model, images, torch.device("cpu"), shard_items=8, workers=0, max_unreadable=0.2)
    assert len(latents) == 11 and latents.skipped == 1
    assert latents.gather(np.arange(11))[1].tolist() == [0] * 5 + [1] * 6


def test_a_shared_folder_keeps_the_temporaries_of_a_process_still_at_work(tmp_path):
    """Runs on one VAE run share its latent shards and teacher pairs: a process entering the folder removes the
    temporaries of killed writes only where no other process holds the folder, never one another process is writing."""
    import os
    import subprocess
    import sys

    from parscale_ear.files import shared_folder

    from parscale_ear.files import TEMP_SUFFIX

    live = tmp_path / f".000000.latents.npy.abcdef12{TEMP_SUFFIX}"  # as atomic_path names a temporary
    live.write_text("being written")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from parscale_ear.files import shared_folder\n"
                               f"with shared_folder({str(tmp_path)!r}, []):\n    print('in', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "in"
        with shared_folder(tmp_path, ["000000.*"]):
            assert live.exists()  # another process holds the folder: its temporary stays
    finally:
        holder.kill()
        holder.wait()
    with shared_folder(tmp_path, ["000000.*"]):
        assert not live.exists()  # alone: the temporary of a dead writer goes


def test_a_vae_that_encodes_to_nan_writes_no_shard_and_names_its_run(vae, setup, monkeypatch):
    from parscale_ear.image_files import DatasetError

    encode(vae, setup)
    for path in shard_folder(vae, setup).iterdir():
        path.unlink()
    model, _ = setup
    monkeypatch.setattr(model.vae, "encode", lambda x: torch.full((len(x), 4, 16, 16), float("nan")))
    with pytest.raises(DatasetError, match=f"the LiteVAE of {vae} encodes images 0.. of the data to NaN or Inf"):
        encode(vae, setup)
    assert [p.name for p in shard_folder(vae, setup).iterdir() if not p.name.startswith(".")] == []


def _report_divergence(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from parscale_ear.train.distributed import Dist
    from parscale_ear.train.divergence import EXPLODED, NOT_FINITE, TrainingDiverged, check_finite

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:  # rank 0 exploded at step 5, rank 1 had a non-finite loss earlier, at step 3
        first_bad, kind = torch.tensor([5, 3][rank]), torch.tensor([EXPLODED, NOT_FINITE][rank])
        try:
            check_finite(first_bad, 9, Path(out), 0, Dist(rank, 2, rank), kind)
        except TrainingDiverged as e:
            (Path(out) / f"rank{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_divergence_on_several_processes_names_the_earliest_step_and_its_kind(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_report_divergence, args=(f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        text = (tmp_path / f"rank{rank}.txt").read_text()
        assert "is not finite at step 3" in text, text
