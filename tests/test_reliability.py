"""No wrong result and no lost file: statistics never replace a user's file, cached latents follow the data,
a diverged run stops with its last finite checkpoint, a removed run folder is not made anew, releases never mix
into runs, temporaries of killed writes are cleaned up, a resumed run draws the grid it owed."""
import json

import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear import train as train_mod
from parscale_ear.cli import main
from parscale_ear.data import ImageData
from parscale_ear.train import CHECKPOINT, RUN_CONFIG, TrainConfig, TrainingDiverged, train

from helpers import interrupt_after


def one_error_line(capsys, code) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("parscale-ear: error: "), (code, err)
    return err[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, images=rng.integers(0, 255, (24, 32, 32), dtype=np.uint8), labels=np.arange(24) % 10)
    return str(path)


def cfg(kind, data, vae_run="", steps=3, **kw):
    base = dict(kind=kind, steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, sample_every=100,
                ckpt_every=1, data=data, vae_run=vae_run, bf16=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def vae(tmp_path_factory, data):
    return train(cfg("vae", data, steps=2), tmp_path_factory.mktemp("runs") / "vae", pe.get_config("tiny-32"), progress=False)


def test_fid_save_stats_never_replaces_a_source_or_a_foreign_file(tmp_path, capsys):
    images = tmp_path / "images.npz"
    np.savez(images, images=np.zeros((4, 32, 32), dtype=np.uint8))
    before = images.read_bytes()
    assert "is one of the sources" in one_error_line(capsys, main(["fid", str(images), "--save-stats", str(images)]))
    notes = tmp_path / "notes.npz"
    np.savez(notes, something=np.arange(3))
    assert "is not a statistics file" in one_error_line(capsys, main(["fid", str(images), "--save-stats", str(notes)]))
    assert images.read_bytes() == before and set(np.load(notes).files) == {"something"}


def test_cached_latents_follow_the_data_not_only_its_size(tmp_path, vae):
    model = train_mod.model_from_checkpoint(train_mod.load_checkpoint(vae))
    rng = np.random.default_rng(1)
    a = ImageData(torch.from_numpy(rng.integers(0, 255, (6, 1, 32, 32), dtype=np.uint8)), torch.arange(6) % 2,
                  ["x", "y"], "a")
    b = ImageData(torch.from_numpy(rng.integers(0, 255, (6, 1, 32, 32), dtype=np.uint8)), torch.arange(6) % 2,
                  ["x", "y"], "a")
    d = train_mod.Dist()
    la = train_mod.cached_latents(vae, model, a, torch.device("cpu"), d)
    lb = train_mod.cached_latents(vae, model, b, torch.device("cpu"), d)
    assert not torch.equal(la, lb)  # the same size, other images: encoded again
    assert torch.equal(train_mod.cached_latents(vae, model, b, torch.device("cpu"), d), lb)


def test_a_diverged_run_stops_with_its_last_finite_checkpoint(tmp_path, data, vae, capsys):
    run = tmp_path / "gen"
    with pytest.raises(TrainingDiverged, match="not finite at step"):
        train(cfg("generator", data, str(vae), steps=4, **{"lr": 1e30}), run, progress=False)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)  # nothing non-finite was logged
    if (run / CHECKPOINT).exists():  # what is kept is finite
        ckpt = torch.load(run / CHECKPOINT, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt["ema"].values() if v.is_floating_point())
    code = main(["train", "--vae", str(vae), "--steps", "4", "--batch-size", "8", "--lr", "1e30", "--out",
                 str(tmp_path / "cli"), "--device", "cpu", "--no-progress", "--no-samples", "--warmup-steps", "1"])
    assert "training diverged" in one_error_line(capsys, code)


def test_non_finite_weights_are_refused_by_resume_export_and_sample(tmp_path, data, vae, capsys):
    run = train(cfg("generator", data, str(vae), steps=1), tmp_path / "gen", progress=False)
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    key = next(k for k, v in ckpt["ema"].items() if v.is_floating_point())
    ckpt["ema"][key] = torch.full_like(ckpt["ema"][key], float("nan"))
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], float("nan"))
    torch.save(ckpt, run / CHECKPOINT)
    assert "NaN or Inf" in one_error_line(capsys, main(["export", "--run", str(run), "--out", str(tmp_path / "rel")]))
    assert not (tmp_path / "rel").exists()
    assert "NaN or Inf" in one_error_line(capsys, main(["sample", "--ckpt", str(run), "--n", "1", "--out",
                                                        str(tmp_path / "s.png")]))
    assert "NaN or Inf" in one_error_line(capsys, main(["train", "--vae", str(vae), "--steps", "3", "--batch-size", "8",
                                                        "--out", str(run), "--resume", "--device", "cpu",
                                                        "--no-progress"]))


def test_a_run_folder_removed_mid_run_is_not_made_anew(tmp_path, data, vae, monkeypatch):
    run = tmp_path / "gen"
    real = train_mod.ema_update

    def remove_after_first(*a, **k):
        real(*a, **k)
        if (run / RUN_CONFIG).exists() and (run / "metrics.jsonl").exists():
            for p in sorted(run.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            run.rmdir()

    monkeypatch.setattr(train_mod, "ema_update", remove_after_first)
    with pytest.raises(FileNotFoundError, match="was removed or moved during the run"):
        train(cfg("generator", data, str(vae), steps=3), run, progress=False)
    assert not run.exists()


def test_releases_never_mix_into_runs_and_bad_dtypes_create_nothing(tmp_path, data, vae, capsys):
    run = train(cfg("generator", data, str(vae), steps=1), tmp_path / "gen", progress=False)
    other = train(cfg("generator", data, str(vae), steps=1), tmp_path / "other", progress=False)
    listing = sorted(p.name for p in other.iterdir())
    assert "holds a training run" in one_error_line(capsys, main(["export", "--run", str(run), "--out", str(other)]))
    assert sorted(p.name for p in other.iterdir()) == listing
    model = pe.create_model("tiny-32")
    with pytest.raises(ValueError, match="dtype must be"):
        model.save_pretrained(tmp_path / "new", dtype=torch.int8)
    assert not (tmp_path / "new").exists()
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="expected a folder path"):
            model.save_pretrained(bad)


def test_a_resumed_run_draws_the_grid_of_the_step_it_was_killed_at(tmp_path, data, vae, monkeypatch):
    run = tmp_path / "gen"
    config = cfg("generator", data, str(vae), steps=4, **{"sample_every": 2, "ckpt_every": 2})
    real = train_mod.save_grid

    def dying_grid(*a, **k):  # killed after the checkpoint at step 2, before its grid
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(train_mod, "save_grid", dying_grid)
        with pytest.raises(KeyboardInterrupt):
            train(config, run, progress=False)
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 2
    assert not (run / "samples" / "step_0000002.png").exists()
    assert real is train_mod.save_grid
    train(config, run, resume=True, progress=False)
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "samples" / "step_0000004.png").is_file()
