"""Bad input and faults, as a new user meets them: every CLI mistake is one `parscale-ear: error:`
line with exit code 2, the library never deletes a user's file, and killed writes leave nothing torn."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.evaluation import fid as fid_mod
from parscale_ear.evaluation import fid_weights as fidw
from parscale_ear.evaluation import metrics as metrics_mod
from parscale_ear.cli import main
from parscale_ear.train import CHECKPOINT, METRICS, TrainConfig, train
from parscale_ear.files import TEMP_SUFFIX, atomic_path, remove_stale_temporaries

from helpers import StandIn

UNWRITABLE = "/proc/parscale-ear-test/out"  # no one, root included, can create folders here


def run_cli(capsys, *argv) -> str:
    """Run the CLI in-process; assert exit 2 and exactly one `parscale-ear: error:` line; return it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("parscale-ear: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, 32, 32), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "noise.npz"
    np.savez(path, images=images, labels=np.arange(32) % 10)
    return str(path)


def tiny_cfg(kind, data, vae_run="", steps=2):
    return TrainConfig(kind=kind, steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, sample_every=100,
                       ckpt_every=1, data=data, vae_run=vae_run, bf16=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, npz_data):
    root = tmp_path_factory.mktemp("runs")
    vae = train(tiny_cfg("vae", npz_data), root / "vae", pe.get_config("tiny-32-flow"), progress=False)
    gen = train(tiny_cfg("generator", npz_data, str(vae)), root / "gen", progress=False)
    return vae, gen


@pytest.fixture
def empty_ckpt(tmp_path):
    run = tmp_path / "zero"
    run.mkdir()
    (run / CHECKPOINT).write_bytes(b"")
    return run


# ----------------------------------------------------------------------------- data loss
def test_save_pretrained_keeps_the_users_files(tmp_path, tiny):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    tiny.save_pretrained(folder)
    tiny.save_pretrained(folder)  # and again, over its own files
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]  # + the model card
    assert oct((folder / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_pretrained_refuses_a_regular_file(tmp_path, tiny):
    target = tmp_path / "release"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="is a file"):
        tiny.save_pretrained(target)
    assert target.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]  # no hidden leftovers


def test_export_refuses_the_run_folder_and_keeps_the_run(capsys, runs):
    _, gen = runs
    before = sorted(p.name for p in gen.iterdir())
    assert "run folder" in run_cli(capsys, "export", "--run", gen, "--out", gen)
    assert "run folder" in run_cli(capsys, "export", "--run", gen, "--out", gen / "release")
    assert sorted(p.name for p in gen.iterdir()) == before
    assert (gen / CHECKPOINT).stat().st_size > 0


def test_export_into_an_existing_folder_keeps_other_files(tmp_path, capsys, runs):
    _, gen = runs
    out = tmp_path / "rel"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--run", str(gen), "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").is_file()


def test_stale_temporaries_are_removed_on_start_and_resume(tmp_path, npz_data, runs):
    vae, _ = runs
    out = tmp_path / "gen"
    train(tiny_cfg("generator", npz_data, str(vae), steps=1), out, progress=False)
    stale = [out / f".{CHECKPOINT}.abcdefg{i}{TEMP_SUFFIX}" for i in range(5)] + [out / f".{METRICS}.xxxxxxxx{TEMP_SUFFIX}"]
    stale += [out / f".loss.png.lossloss{TEMP_SUFFIX}", out / "samples" / f".step_0000001.png.gridgrid{TEMP_SUFFIX}"]
    (out / "samples").mkdir(exist_ok=True)
    for p in stale:
        p.write_bytes(b"torn")
    keep = out / f".notes.txt.abcdefgh{TEMP_SUFFIX}"  # not one of the library's files: untouched
    keep.write_text("mine")
    live = (out / CHECKPOINT).read_bytes()
    train(tiny_cfg("generator", npz_data, str(vae), steps=2), out, resume=True, progress=False)
    assert not any(p.exists() for p in stale)
    assert keep.read_text() == "mine"
    assert (out / CHECKPOINT).stat().st_size > 0 and (out / CHECKPOINT).read_bytes() != live  # step 2 saved


def test_remove_stale_temporaries_never_touches_the_file(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"live")
    (tmp_path / f".checkpoint.pt.q1q1q1q1{TEMP_SUFFIX}").write_bytes(b"torn")
    (tmp_path / ".checkpoint.pt.q1.tmp").write_bytes(b"a user's file: not the library's temporary naming")
    removed = remove_stale_temporaries(tmp_path, ["checkpoint.pt"])
    assert [p.name for p in removed] == [f".checkpoint.pt.q1q1q1q1{TEMP_SUFFIX}"]
    assert (tmp_path / ".checkpoint.pt.q1.tmp").is_file()
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"live"


# ----------------------------------------------------------------------------- CLI: one line, exit 2
def test_train_vae_data_that_is_not_a_dataset(capsys, tmp_path):
    assert "unsupported data source" in run_cli(capsys, "train-vae", "--data", "/dev/null", "--steps", "1", "--out", tmp_path / "r")


@pytest.mark.parametrize("flag", ["--log-every", "--ckpt-every", "--sample-every"])
def test_zero_intervals(capsys, tmp_path, npz_data, flag):
    assert flag in run_cli(capsys, "train-vae", "--data", npz_data, "--steps", "1", "--out", tmp_path / "r", flag, "0")


@pytest.mark.parametrize("flag,value,word", [
    ("--ema-decay", "5", "ema-decay"), ("--ema-decay", "-1", "ema-decay"), ("--warmup-steps", "-10", "warmup-steps"),
    ("--max-images", "-1", "max-images"), ("--max-minutes", "-1", "max-minutes"),
])
def test_out_of_range_training_flags(capsys, tmp_path, npz_data, flag, value, word):
    assert word in run_cli(capsys, "train-vae", "--data", npz_data, "--steps", "1", "--out", tmp_path / "r", flag, value)
    assert not (tmp_path / "r" / CHECKPOINT).exists()


def test_bogus_device_everywhere(capsys, tmp_path, npz_data, runs):
    _, gen = runs
    assert "--device" in run_cli(capsys, "train-vae", "--data", npz_data, "--steps", "1", "--out", tmp_path / "r", "--device", "bogus")
    assert "--device" in run_cli(capsys, "sample", "--ckpt", gen, "--out", tmp_path / "s.png", "--device", "bogus")
    a = tmp_path / "a.npz"
    np.savez(a, mu=np.zeros(3), sigma=np.eye(3))
    assert "--device" in run_cli(capsys, "fid", a, a, "--device", "bogus")


def test_out_under_a_regular_file(capsys, tmp_path, npz_data):
    (tmp_path / "file").write_text("x")
    assert "is a file" in run_cli(capsys, "train-vae", "--data", npz_data, "--steps", "1", "--out", tmp_path / "file" / "run")
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_out(capsys, tmp_path, npz_data, runs):
    _, gen = runs
    run_cli(capsys, "train-vae", "--data", npz_data, "--steps", "1", "--out", UNWRITABLE)
    run_cli(capsys, "sample", "--ckpt", gen, "--n", "2", "--out", UNWRITABLE + "/grid.png")
    run_cli(capsys, "export", "--run", gen, "--out", UNWRITABLE)
    a = tmp_path / "a.npz"
    np.savez(a, images=np.zeros((2, 8, 8), np.uint8))
    run_cli(capsys, "fid", a, "--save-stats", UNWRITABLE + "/s.npz", "--device", "cpu")


def test_zero_byte_checkpoints(capsys, tmp_path, npz_data, empty_ckpt):
    assert "empty" in run_cli(capsys, "sample", "--ckpt", empty_ckpt, "--out", tmp_path / "s.png")
    assert "empty" in run_cli(capsys, "train-vae", "--data", npz_data, "--steps", "3", "--out", empty_ckpt, "--resume")
    assert "empty" in run_cli(capsys, "train", "--vae", empty_ckpt, "--steps", "3", "--out", tmp_path / "g")
    assert "empty" in run_cli(capsys, "export", "--run", empty_ckpt, "--out", tmp_path / "rel")


def test_sample_out_paths(capsys, tmp_path, runs):
    _, gen = runs
    (tmp_path / "x.png").mkdir()
    assert "existing folder" in run_cli(capsys, "sample", "--ckpt", gen, "--n", "2", "--out", tmp_path / "x.png")
    assert ".png" in run_cli(capsys, "sample", "--ckpt", gen, "--n", "2", "--out", tmp_path / "s.jpg")
    assert not (tmp_path / "s.jpg").exists()


def test_sample_from_a_vae_run(capsys, tmp_path, runs):
    vae, _ = runs
    assert "generator run" in run_cli(capsys, "sample", "--ckpt", vae, "--n", "2", "--out", tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def test_resume_with_fewer_steps_than_done(capsys, tmp_path, runs, npz_data):
    vae, _ = runs
    out = tmp_path / "g"
    train(tiny_cfg("generator", npz_data, str(vae), steps=3), out, progress=False)
    assert "already at step 3" in run_cli(capsys, "train", "--vae", vae, "--steps", "2", "--out", out, "--resume")


def test_tiny_npz_images_are_refused(capsys, tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, images=np.zeros((8, 1, 1), np.uint8), labels=np.arange(8) % 2)
    assert "upscaling" in run_cli(capsys, "train-vae", "--data", path, "--steps", "1", "--out", tmp_path / "r")


def test_fid_bad_sources(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(fid_mod, "load_inception", lambda *a, **k: StandIn())
    good = tmp_path / "good.npz"
    np.savez(good, mu=np.zeros(4), sigma=np.eye(4))
    torn = tmp_path / "torn.npz"
    torn.write_bytes(good.read_bytes()[:100])
    assert "truncated" in run_cli(capsys, "fid", torn, good)
    nan = tmp_path / "nan.npz"
    sigma = np.eye(4)
    sigma[1, 2] = np.nan
    np.savez(nan, mu=np.zeros(4), sigma=sigma)
    assert "NaN" in run_cli(capsys, "fid", nan, good)  # refused at load, no hang in sqrtm
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert "bad.png" in run_cli(capsys, "fid", folder, good, "--device", "cpu")


def test_console_script_prints_one_line(tmp_path):
    """The real entry point (python -m parscale_ear): one error line, exit 2, no traceback."""
    r = subprocess.run([sys.executable, "-m", "parscale_ear", "sample", "--ckpt", str(tmp_path / "none"), "--out",
                        str(tmp_path / "s.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("parscale-ear: error: ")


# ----------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_reconstruct_any_float_dtype(tiny, dtype):
    x = torch.rand(2, 1, 32, 32, dtype=dtype) * 2 - 1
    out = tiny.reconstruct(x)
    assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out.float()).all()


def test_reconstruct_float64_model(tiny):
    model = tiny.double()
    out = model.reconstruct(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("overrides,match", [
    (dict(vae={"latent_channels": 0}), "latent_channels"), (dict(temperature=-1.0), "temperature"),
    (dict(cfg=float("nan")), "cfg"), (dict(hybrid={"pool": 0}), "pool"),
])
def test_config_checks_at_creation(overrides, match):
    with pytest.raises(ValueError, match=match):
        pe.create_model("tiny-32", **overrides)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=True), "n"), (dict(n=2, steps=True), "steps"), (dict(n=2, cfg="2"), "cfg"), (dict(n=2, seed=1.5), "seed"),
])
def test_generate_rejects_non_numbers(tiny, kwargs, match):
    with pytest.raises(TypeError, match=match):
        tiny.generate(**kwargs)


def test_steps_pair_on_a_one_stage_model():
    model = pe.create_model("tiny-32", mode="no_coarse").eval()
    with pytest.raises(ValueError, match="one stage"):
        model.generate(2, steps=(3, 2))
    assert model.generate(2, steps=2).shape == (2, 1, 32, 32)


def test_numpy_integer_labels(tiny):
    a = tiny.generate(2, labels=np.array([3, 4]), seed=5)
    assert torch.equal(a, tiny.generate(2, labels=[3, 4], seed=5))
    with pytest.raises(TypeError, match="integer"):
        tiny.generate(2, labels=np.array([3.0, 4.0]))


# ----------------------------------------------------------------------------- crash safety
def test_atomic_writes_fsync_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    with atomic_path(tmp_path / "f.bin") as tmp:
        tmp.write_bytes(b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)


def test_torn_metrics_line(tmp_path, npz_data, runs):
    vae, _ = runs
    out = tmp_path / "g"
    train(tiny_cfg("generator", npz_data, str(vae), steps=2), out, progress=False)
    with open(out / METRICS, "a") as f:
        f.write('{"step": 3, "loss": 1.')  # a kill mid-write
    train(tiny_cfg("generator", npz_data, str(vae), steps=3), out, resume=True, progress=False)
    rows = [json.loads(l) for l in (out / METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    lines = (out / METRICS).read_text().splitlines()
    (out / METRICS).write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=f"{METRICS} line 2"):
        train(tiny_cfg("generator", npz_data, str(vae), steps=4), out, resume=True, progress=False)


# ----------------------------------------------------------------------------- security
class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-fid-weights",))


def test_fid_weights_are_checked_and_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    path = fidw.fid_weights_path()
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:  # a replaced file that runs code when unpickled
        pickle.dump({"x": _Exploit()}, f)
    with pytest.raises(fid_mod.FIDWeightsError, match="neither a converted file"):
        fid_mod.load_inception("cpu")
    (path.parent / (path.name + ".sha256")).write_text(fidw.sha256_file(path) + "\n")  # and its record too
    with pytest.raises(fid_mod.FIDWeightsError, match="cannot read"):
        fid_mod.load_inception("cpu")
    assert not (tmp_path / "pwned-by-fid-weights").exists()
    torch.save({"w": torch.zeros(1)}, path)  # changed after conversion: the record no longer matches
    with pytest.raises(fid_mod.FIDWeightsError, match="was changed"):
        fid_mod.load_inception("cpu")


def test_save_pretrained_half_weights_load_back_as_float32(tmp_path):
    import parscale_ear as pe

    torch.manual_seed(0)
    model = pe.create_model("tiny-32-flow").eval()
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    full, half = (tmp_path / n / "model.safetensors" for n in ("full", "half"))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = pe.ParScaleEAR.from_pretrained(tmp_path / "half")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a.half().to(a.dtype) if a.is_floating_point() and "std" not in name else a)
    with pytest.raises(ValueError, match="dtype must be"):
        model.save_pretrained(tmp_path / "bad", dtype=torch.int8)


def test_release_folder_has_a_model_card_and_keeps_a_users_own(tmp_path):
    import parscale_ear as pe

    model = pe.create_model("tiny-32")
    model.save_pretrained(tmp_path / "r")
    card = (tmp_path / "r" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: parscale-ear") and "tiny-32" in card and "from_pretrained" in card
    model.save_pretrained(tmp_path / "r", dtype=torch.float16)  # our own card is refreshed
    assert "float16" in (tmp_path / "r" / "README.md").read_text()
    (tmp_path / "r" / "README.md").write_text("my notes\n")
    model.save_pretrained(tmp_path / "r")
    assert (tmp_path / "r" / "README.md").read_text() == "my notes\n"


def test_hub_id_without_a_network_is_one_clear_error(tmp_path, monkeypatch):
    import parscale_ear as pe

    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"^from_pretrained: parscale/fmnist-32 is not a local folder and could not be fetched") as e:
        pe.ParScaleEAR.from_pretrained("parscale/fmnist-32")
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="config.json not found"):  # a path that is not a Hub id stays a path
        pe.ParScaleEAR.from_pretrained(str(tmp_path / "missing" / "folder"))
