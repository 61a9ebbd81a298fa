"""No wrong result and no lost file: statistics never replace a user's file, cached latents follow the data,
a diverged run stops with its last finite checkpoint, a removed run folder is not made anew, releases never mix
into runs, temporaries of killed writes are cleaned up, a resumed run draws the grid it owed."""
import json

import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.release import config_digest
from parscale_ear import train as train_mod
from parscale_ear.train import loop as train_loop
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
    return train(cfg("vae", data, steps=2), tmp_path_factory.mktemp("runs") / "vae", pe.get_config("tiny-32-flow"), progress=False)


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
    from parscale_ear.streaming import MemoryImages

    model = train_mod.model_from_checkpoint(train_mod.load_checkpoint(vae))
    rng = np.random.default_rng(1)
    a = ImageData(torch.from_numpy(rng.integers(0, 255, (6, 1, 32, 32), dtype=np.uint8)), torch.arange(6) % 2,
                  ["x", "y"], "a")
    b = ImageData(torch.from_numpy(rng.integers(0, 255, (6, 1, 32, 32), dtype=np.uint8)), torch.arange(6) % 2,
                  ["x", "y"], "a")
    d = train_mod.Dist()
    la = train_mod.latent_shards(vae, model, MemoryImages(a), torch.device("cpu"), d).sample(6)
    lb = train_mod.latent_shards(vae, model, MemoryImages(b), torch.device("cpu"), d).sample(6)
    assert not torch.equal(la, lb)  # the same size, other images: encoded again
    assert torch.equal(train_mod.latent_shards(vae, model, MemoryImages(b), torch.device("cpu"), d).sample(6), lb)


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
    resave(ckpt, run / CHECKPOINT)  # with a digest that matches: the finiteness checks, not the digest, refuse it
    assert "NaN or Inf" in one_error_line(capsys, main(["export", "--run", str(run), "--out", str(tmp_path / "rel")]))
    assert not (tmp_path / "rel").exists()
    assert "NaN or Inf" in one_error_line(capsys, main(["sample", "--ckpt", str(run), "--n", "1", "--out",
                                                        str(tmp_path / "s.png")]))
    assert "NaN or Inf" in one_error_line(capsys, main(["train", "--vae", str(vae), "--steps", "3", "--batch-size", "8",
                                                        "--out", str(run), "--resume", "--device", "cpu",
                                                        "--no-progress"]))


def test_a_run_folder_removed_mid_run_is_not_made_anew(tmp_path, data, vae, monkeypatch):
    run = tmp_path / "gen"
    real = train_loop.ema_update

    def remove_after_first(*a, **k):
        real(*a, **k)
        if (run / RUN_CONFIG).exists() and (run / "metrics.jsonl").exists():
            for p in sorted(run.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            run.rmdir()

    monkeypatch.setattr(train_loop, "ema_update", remove_after_first)
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
    real = train_loop.save_grid

    def dying_grid(*a, **k):  # killed after the checkpoint at step 2, before its grid
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(train_loop, "save_grid", dying_grid)
        with pytest.raises(KeyboardInterrupt):
            train(config, run, progress=False)
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 2
    assert not (run / "samples" / "step_0000002.png").exists()
    assert real is train_loop.save_grid
    train(config, run, resume=True, progress=False)
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "samples" / "step_0000004.png").is_file()


# ---------------------------------------------------------------------------- every bad input: one line, exit 2
def resave(ckpt: dict, path, digest: bool = True) -> None:
    """Save an edited checkpoint, with a digest of its new contents (as an edit that recomputed it) or none."""
    from parscale_ear.loading import state_digest

    body = {k: v for k, v in ckpt.items() if k != "digest"}
    torch.save({**body, "digest": state_digest(body)} if digest else body, path)


@pytest.fixture(scope="module")
def broken(tmp_path_factory, data, vae):
    """A generator run, its release, and copies of its checkpoint each missing one key or with wrong shapes."""
    root = tmp_path_factory.mktemp("broken")
    gen = train(cfg("generator", data, str(vae), steps=2), root / "gen", progress=False)
    assert main(["export", "--run", str(gen), "--out", str(root / "rel")]) == 0
    pe.create_model("tiny-32").save_pretrained(root / "mar")  # MAR stages: no flow solver
    ckpt = torch.load(gen / CHECKPOINT, weights_only=True)
    # the structure checks below are those a checkpoint whose digest was recomputed after an edit meets
    for key in ("ema", "vae", "train", "optimizer", "model"):
        (root / f"no_{key}").mkdir()
        resave({k: v for k, v in ckpt.items() if k != key}, root / f"no_{key}" / CHECKPOINT)
    (root / "shape").mkdir()
    resave({**ckpt, "ema": {k: v[:1] if v.ndim else v for k, v in ckpt["ema"].items()},
            "model": {k: v[:1] if v.ndim else v for k, v in ckpt["model"].items()}}, root / "shape" / CHECKPOINT)
    vk = torch.load(vae / CHECKPOINT, weights_only=True)
    (root / "vae_no_ema").mkdir()
    resave({k: v for k, v in vk.items() if k != "ema"}, root / "vae_no_ema" / CHECKPOINT)
    (root / "no_digest").mkdir()  # a damaged weight with the digest removed: refused, never loaded
    resave({**ckpt, "ema": {k: v * 1.5 for k, v in ckpt["ema"].items()}}, root / "no_digest" / CHECKPOINT, digest=False)
    (root / "pickled").mkdir()  # Python objects beside the tensors: refused unread
    torch.save({**ckpt, "note": __import__("argparse").Namespace(a=1)}, root / "pickled" / CHECKPOINT)
    (root / "text.pt").write_text("not a checkpoint\n")
    (root / "damaged").mkdir()  # one weight changed after the write: the digest catches it
    ckpt_bad = torch.load(gen / CHECKPOINT, weights_only=True)
    key = next(iter(ckpt_bad["ema"]))
    ckpt_bad["ema"][key] = ckpt_bad["ema"][key] + 1
    torch.save(ckpt_bad, root / "damaged" / CHECKPOINT)
    (root / "cut").mkdir()
    (root / "cut" / CHECKPOINT).write_bytes((gen / CHECKPOINT).read_bytes()[:5000])
    return root


CPU = ["--batch-size", "8", "--no-progress", "--no-samples", "--device", "cpu"]
BAD_CLI = [  # (argv with {root} and {vae}, a part of the one-line message)
    (["sample", "--ckpt", "{root}/no_ema", "--n", "2", "--out", "{tmp}/o.png"], "lacks 'ema'"),
    (["sample", "--ckpt", "{root}/no_vae", "--n", "2", "--out", "{tmp}/o.png"], "lacks 'vae'"),
    (["export", "--run", "{root}/no_model", "--out", "{tmp}/r"], "lacks 'model'"),
    (["export", "--run", "{root}/no_train", "--out", "{tmp}/r"], "lacks 'train'"),
    (["train", "--vae", "{vae}", "--steps", "5", "--out", "{root}/no_optimizer", "--resume", *CPU], "no optimizer state"),
    (["train", "--vae", "{vae}", "--steps", "5", "--out", "{root}/no_ema", "--resume", *CPU], "lacks 'ema'"),
    (["sample", "--ckpt", "{root}/shape", "--n", "2", "--out", "{tmp}/o.png"], "weights do not match the config"),
    (["train", "--vae", "{vae}", "--steps", "5", "--out", "{root}/shape", "--resume", *CPU], "weights do not match"),
    (["train-vae", "--steps", "5", "--out", "{root}/vae_no_ema", "--resume", *CPU], "lacks 'ema'"),
    (["train", "--vae", "{root}/vae_no_ema", "--steps", "2", "--out", "{tmp}/g", *CPU], "lacks 'ema'"),
    (["sample", "--ckpt", "{root}/text.pt", "--n", "2", "--out", "{tmp}/o.png"], "not a complete PyTorch checkpoint"),
    (["sample", "--ckpt", "{root}/damaged", "--n", "2", "--out", "{tmp}/o.png"], "does not match its recorded digest"),
    (["sample", "--ckpt", "{root}/cut", "--n", "2", "--out", "{tmp}/o.png"], "not a complete PyTorch checkpoint"),
    (["sample", "--ckpt", "{root}/no_digest", "--n", "2", "--out", "{tmp}/o.png"], "records no digest of its contents"),
    (["export", "--run", "{root}/no_digest", "--out", "{tmp}/r"], "records no digest of its contents"),
    (["sample", "--ckpt", "{root}/pickled", "--n", "2", "--out", "{tmp}/o.png"],
     "it holds a Python object (argparse.Namespace)"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--set", "hybrid.coarse=5", *CPU], "HybridConfig.coarse"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--set", "vae=null", *CPU], "ParScaleEARConfig.vae"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--set", 'hybrid.coarse_steps="4"', *CPU],
     "coarse_steps: expected int"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--set", "hybrid.coarse.width=2000000", *CPU],
     "need more memory than this machine has"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--streams", "1000000000", *CPU], "need more memory than this machine has"),
    (["sample", "--ckpt", "{root}/rel", "--n", "1000000000000", "--out", "{tmp}/many"], "at most 10,000,000"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--set", "hybrid.coarse.class_dropout=-3", *CPU],
     "class_dropout must be in [0, 1]"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--device", "cpu:5", "--batch-size", "8"],
     "--device: expected 'cpu', 'cuda' or 'cuda:N'"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--batch-size", "1000", "--device", "cpu",
      "--no-progress"], "exceeds the 24 training items"),
    (["sample", "--ckpt", "{root}/mar", "--n", "2", "--solver", "euler", "--out", "{tmp}/o.png"], "take no flow solver"),
    (["sample", "--ckpt", "{root}/rel", "--n", "2", "--solver", "heun", "--out", "{tmp}/o.png"], "needs a flow stage with a mean head"),
    (["sample", "--ckpt", "{root}/rel", "--n", "2", "--out", ""], "got an empty path"),
    (["sample", "--ckpt", "{root}/rel", "--n", "2", "--out", "{tmp}/out/.png"], "a grid needs a file name"),
    (["train", "--vae", "{vae}", "--steps", "2", "--out", "{tmp}/g", "--peer", "dit-s", "--streams", "2", *CPU],
     "do not apply to it"),
    (["train", "--vae", "{vae}", "--steps", "9", "--out", "{root}/gen", "--resume", "--lr", "0.5", "--seed", "3", *CPU],
     "--lr 0.5 (the run's: 0.001); --seed 3 (the run's: 0)"),
    (["train", "--vae", "{vae}", "--steps", "9", "--out", "{root}/gen", "--resume", "--mode", "no_fine", *CPU],
     "--mode no_fine (the run's: full)"),
    (["train", "--vae", "{vae}", "--steps", "9", "--out", "{root}/gen", "--resume", "--set", "hybrid.fine.depth=3",
      *CPU], "--set (changes the run's model)"),
    (["sample", "--ckpt", "{root}/rel", "--n", "2", "--seed", "99999999999999999999999", "--out", "{tmp}/o.png"],
     "below 2**63"),
    (["sample", "--ckpt", "{root}/rel", "--n", "2", "--labels", "99999999999999999999999", "--out", "{tmp}/o.png"],
     "class indices in [0, 10)"),
    (["fid-weights", "--source", "{tmp}/nonexistent.pt"], "does not exist"),
    (["fid-weights", "--source", "{tmp}"], "is a folder"),
    (["sample", "--ckpt", "{root}/rel", "--n", "2", "--steps", "x", "--out", "{tmp}/o.png"], "expected N or COARSE,FINE"),
    (["sample", "--ckpt", "{root}/rel", "--bogus", "--out", "{tmp}/o.png"], "unrecognized arguments: --bogus"),
    (["train", "--vae", "{vae}", "--out", "{tmp}/g"], "the following arguments are required: --steps"),
    (["fid", "a", "b", "c"], "expected one or two sources"),
    (["bogus-command"], "invalid choice"),
]


@pytest.mark.parametrize("argv, message", BAD_CLI, ids=[" ".join(a[:2]) + f" [{m[:24]}]" for a, m in BAD_CLI])
def test_bad_input_is_one_line(argv, message, broken, vae, tmp_path, capsys):
    argv = [a.format(root=broken, vae=vae, tmp=tmp_path) for a in argv]
    line = one_error_line(capsys, main(argv))
    assert message in line and "Traceback" not in line, line


def test_train_vae_takes_a_config_name_and_a_resume_keeps_the_runs_settings(tmp_path, data, capsys):
    common = ["--batch-size", "8", "--no-progress", "--no-samples", "--device", "cpu", "--data", data]
    assert main(["train-vae", "--preset", "tiny-32", "--steps", "2", "--out", str(tmp_path / "v"), "--set", "name=mine",
                 "--lr", "3e-3", *common]) == 0
    assert torch.load(tmp_path / "v" / CHECKPOINT, weights_only=True)["config"]["name"] == "mine"
    # resumed without its flags: the run's own lr and preset, not the command line's defaults
    assert main(["train-vae", "--steps", "3", "--out", str(tmp_path / "v"), "--resume", *common]) == 0
    ckpt = torch.load(tmp_path / "v" / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 3 and ckpt["train"]["lr"] == 3e-3 and ckpt["config"]["name"] == "mine"


def test_the_api_raises_value_and_type_errors_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match="device: expected 'cpu'"):
        pe.ParScaleEAR.from_pretrained(device="bogus")
    with pytest.raises(TypeError, match="device: expected"):
        pe.ParScaleEAR.from_pretrained(device=7)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pe.ParScaleEAR.from_pretrained(device="cuda")
    with pytest.raises(ValueError, match="expected a release folder"):
        pe.ParScaleEAR.from_pretrained("")
    model = pe.create_model("tiny-32")
    rel = model.save_pretrained(tmp_path / "rel")
    meta = json.loads((rel / "config.json").read_text())
    meta["config"]["hybrid"]["coarse"] = 5
    meta["config_sha256"] = config_digest(meta["config"])  # edited by hand, the digest recomputed
    (rel / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="config.json: .*HybridConfig.coarse"):
        pe.ParScaleEAR.from_pretrained(rel)
    with pytest.raises(ValueError, match="n: 1000000000000 images"):
        model.generate(10**12)
    with pytest.raises(ValueError, match="meta tensor"):
        model.reconstruct(torch.zeros(1, 1, 32, 32, device="meta"))
    with pytest.raises(TypeError, match="HybridConfig.coarse"):
        pe.create_model("tiny-32", hybrid={"coarse": 5})
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        model.compile_sampler(2, channels_last="no")
    with pytest.raises(ValueError, match="class_dropout must be in"):
        pe.create_model("tiny-32", class_dropout=-5.0)
    assert pe.ParScaleEAR.from_pretrained("fmnist-32-es").config.name == "fmnist-32-es"  # a shipped model by name
    with pytest.raises(FileNotFoundError, match=r"no trained weights ship for the preset 'fmnist-32-vflow-s' "
                       r"\(shipped: fmnist-32-es\); create_model"):
        pe.ParScaleEAR.from_pretrained("fmnist-32-vflow-s")  # a preset's name, not a folder: says what ships


def test_fid_weights_convert_only_the_known_torchscript(tmp_path):
    from parscale_ear.evaluation import fid_weights as fidw

    fake = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), fake)
    with pytest.raises(fidw.FIDWeightsError, match="only that file is converted"):
        fidw.convert_fid_helper_weights(fake, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
