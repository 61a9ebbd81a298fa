"""Each fault case of the library (a corrupt cache or file, a path holding a user's file, a second run in one folder, a
diverging run, an interrupt, a huge request), through the real entry point: one clear line (exit 2) or a correct result,
nothing lost. Output paths never replace a user's file, a run folder is locked, a resume keeps its own schedule and
teacher, numeric and format faults are refused by name, Ctrl-C is one line and exit 130."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.cli import main
from parscale_ear.files import LOCK_NAME, TEMP_SUFFIX
from parscale_ear.loading import state_digest
from parscale_ear.release import config_digest
from parscale_ear.train import CHECKPOINT, METRICS, RUN_CONFIG

from helpers import interrupt_after

ROOT = Path(__file__).resolve().parent.parent
CPU = ["--batch-size", "8", "--no-progress", "--device", "cpu", "--warmup-steps", "1"]


def one_error_line(capsys, code, status=2) -> str:
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("parscale-ear")]
    assert code == status and len(err) == 1, (code, err)
    return err[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (24, 32, 32), dtype=np.uint8), labels=np.arange(24) % 10)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """A tiny VAE run, a generator run on it and that run's release."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train-vae", "--preset", "tiny-32", "--data", data, "--steps", "2", "--out", str(root / "vae"),
                 "--no-samples", *CPU]) == 0
    assert main(["train", "--vae", str(root / "vae"), "--steps", "2", "--out", str(root / "gen"), "--no-samples",
                 *CPU]) == 0
    assert main(["export", "--run", str(root / "gen"), "--out", str(root / "rel")]) == 0
    return root


# ---------------------------------------------------------------------------- output paths destroy nothing
def test_sample_never_replaces_a_users_pngs(runs, tmp_path, capsys):
    folder = tmp_path / "userimgs"
    folder.mkdir()
    for name in ("000000.png", "000001.png"):
        (folder / name).write_bytes(b"mine")
    grid = tmp_path / "photo.png"
    grid.write_bytes(b"my photo")
    line = one_error_line(capsys, main(["sample", "--ckpt", str(runs / "rel"), "--n", "2", "--out", str(folder)]))
    assert "already holds 2 of the PNGs" in line and "--overwrite" in line
    assert "--overwrite" in one_error_line(capsys, main(["sample", "--ckpt", str(runs / "rel"), "--n", "2", "--out",
                                                         str(grid)]))
    assert all((folder / n).read_bytes() == b"mine" for n in ("000000.png", "000001.png"))
    assert grid.read_bytes() == b"my photo"
    assert main(["sample", "--ckpt", str(runs / "rel"), "--n", "2", "--seed", "2", "--out", str(folder)]) == 0  # others
    assert main(["sample", "--ckpt", str(runs / "rel"), "--n", "2", "--out", str(grid), "--overwrite"]) == 0
    assert grid.read_bytes()[:4] == b"\x89PNG" and (folder / "000003.png").is_file()


def test_export_never_replaces_a_model_folder(runs, tmp_path, capsys):
    foreign = tmp_path / "hfmodel"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "bert"}')
    (foreign / "model.safetensors").write_bytes(b"their weights")
    line = one_error_line(capsys, main(["export", "--run", str(runs / "gen"), "--out", str(foreign)]))
    assert "already holds config.json and model.safetensors" in line and "--overwrite" in line
    assert (foreign / "model.safetensors").read_bytes() == b"their weights"
    before = (runs / "rel" / "model.safetensors").read_bytes()
    assert "already holds" in one_error_line(capsys, main(["export", "--run", str(runs / "gen"), "--out",
                                                           str(runs / "rel"), "--dtype", "float16"]))
    assert (runs / "rel" / "model.safetensors").read_bytes() == before  # another release: left alone
    assert main(["export", "--run", str(runs / "gen"), "--out", str(foreign), "--overwrite"]) == 0
    assert pe.ParScaleEAR.from_pretrained(foreign).config.name == "tiny-32"


def test_fid_save_stats_replaces_statistics_only_when_told(tmp_path, capsys, monkeypatch):
    from parscale_ear.evaluation import fid as fid_mod

    from helpers import StandIn

    monkeypatch.setattr(fid_mod, "load_inception", lambda device="cpu", allow_download=False: StandIn())
    images = tmp_path / "imgs.npz"
    np.savez(images, images=np.random.default_rng(0).integers(0, 255, (6, 16, 16), dtype=np.uint8))
    keep = tmp_path / "keep_stats.npz"
    np.savez(keep, mu=np.zeros(8), sigma=np.eye(8))
    before = keep.read_bytes()
    line = one_error_line(capsys, main(["fid", str(images), "--save-stats", str(keep), "--no-progress"]))
    assert "exists" in line and "--overwrite" in line and keep.read_bytes() == before
    assert main(["fid", str(images), "--save-stats", str(keep), "--overwrite", "--no-progress"]) == 0
    assert fid_mod.load_statistics(keep)[2] == 6


def test_a_new_run_never_truncates_an_earlier_runs_metrics(tmp_path, data, capsys):
    old = tmp_path / "oldrun"
    old.mkdir()
    rows = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 21))
    (old / METRICS).write_text(rows)
    line = one_error_line(capsys, main(["train-vae", "--preset", "tiny-32", "--data", data, "--steps", "1", "--out",
                                        str(old), *CPU]))
    assert "metrics.jsonl of an earlier run" in line and (old / METRICS).read_text() == rows


def test_a_run_never_writes_into_its_data_nor_into_an_empty_path(tmp_path, capsys, monkeypatch):
    from PIL import Image

    ds = tmp_path / "ds10"
    for c in range(2):
        (ds / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32), 40 * i + c, np.uint8)).save(ds / f"class{c}" / f"{i}.png")
    listing = sorted(p.relative_to(ds) for p in ds.rglob("*"))
    for out in (ds, ds / "run"):
        line = one_error_line(capsys, main(["train-vae", "--preset", "tiny-32", "--data", str(ds), "--steps", "1",
                                            "--out", str(out), *CPU]))
        assert "is the data folder" in line
    assert sorted(p.relative_to(ds) for p in ds.rglob("*")) == listing
    monkeypatch.chdir(tmp_path)
    assert "empty value" in one_error_line(capsys, main(["train-vae", "--data", str(ds), "--steps", "1", "--out", "",
                                                         *CPU]))
    assert not (tmp_path / CHECKPOINT).exists() and not (tmp_path / RUN_CONFIG).exists()


# ---------------------------------------------------------------------------- one run per folder
def test_a_run_folder_in_use_refuses_a_second_training(tmp_path, data, capsys):
    out = tmp_path / "shared"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_error_line(capsys, main(["train-vae", "--preset", "tiny-32", "--data", data, "--steps", "1",
                                            "--out", str(out), *CPU]))
        assert "is in use by another process" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    assert main(["train-vae", "--preset", "tiny-32", "--data", data, "--steps", "1", "--out", str(out), "--no-samples",
                 *CPU]) == 0  # the lock dies with its process
    assert not (out / LOCK_NAME).exists()  # a run removes its lock file when it ends


# ---------------------------------------------------------------------------- resume keeps the run's own
def test_a_plain_resume_keeps_the_runs_intervals(tmp_path, data):
    out = tmp_path / "r"
    common = ["train-vae", "--preset", "tiny-32", "--data", data, "--out", str(out), "--no-samples", *CPU]
    assert main([*common, "--steps", "4", "--ckpt-every", "2", "--log-every", "2", "--sample-every", "3"]) == 0
    assert main([*common, "--steps", "8", "--resume"]) == 0
    train = torch.load(out / CHECKPOINT, weights_only=True)["train"]
    assert (train["ckpt_every"], train["log_every"], train["sample_every"]) == (2, 2, 3)
    assert [json.loads(l)["step"] for l in (out / METRICS).read_text().splitlines()] == [2, 4, 6, 8]
    assert main([*common, "--steps", "9", "--resume", "--log-every", "1"]) == 0  # given: taken
    assert torch.load(out / CHECKPOINT, weights_only=True)["train"]["log_every"] == 1


def test_a_teacher_changed_between_kill_and_resume_is_refused(tmp_path, data, capsys, monkeypatch):
    vae, teacher, student = tmp_path / "vae", tmp_path / "teacher", tmp_path / "student"
    flow = ["--set", *[f"hybrid.{s}.backbone_noise=false" for s in ("coarse", "fine")]]
    assert main(["train-vae", "--preset", "tiny-32-flow", "--data", data, "--steps", "2", "--out", str(vae),
                 "--no-samples", *CPU]) == 0
    assert main(["train", "--vae", str(vae), "--steps", "2", "--out", str(teacher), "--no-samples", *CPU, *flow]) == 0
    run = ["train", "--vae", str(vae), "--init", str(teacher), "--teacher", str(teacher), "--pairs", "16",
           "--out", str(student), "--no-samples", "--ckpt-every", "2", *CPU]
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert main([*run, "--steps", "4"]) == 130
    capsys.readouterr()
    assert main(["train", "--vae", str(vae), "--steps", "3", "--out", str(teacher), "--resume", "--no-samples",
                 *CPU]) == 0  # the teacher trains on
    line = one_error_line(capsys, main(["train", "--vae", str(vae), "--teacher", str(teacher), "--pairs", "16",
                                        "--steps", "4", "--out", str(student), "--resume", *CPU]))
    assert "the teacher" in line and "changed since this run began" in line
    assert torch.load(student / CHECKPOINT, weights_only=True)["step"] == 2


# ---------------------------------------------------------------------------- numeric and format faults
def test_a_half_precision_export_that_overflows_is_refused_by_name(runs, tmp_path, capsys):
    big = tmp_path / "big"
    big.mkdir()
    ckpt = torch.load(runs / "gen" / CHECKPOINT, weights_only=True)
    ckpt["ema"] = {k: v * 1e6 if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    body = {k: v for k, v in ckpt.items() if k != "digest"}
    torch.save({**body, "digest": state_digest(body)}, big / CHECKPOINT)
    line = one_error_line(capsys, main(["export", "--run", str(big), "--out", str(tmp_path / "rel"), "--dtype",
                                        "float16"]))
    assert "holds NaN or Inf as float16" in line and "nothing was written" in line
    assert not (tmp_path / "rel").exists()
    assert main(["export", "--run", str(big), "--out", str(tmp_path / "rel32")]) == 0  # float32 holds them


def _edited_release(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    edit(meta)
    meta["config_sha256"] = config_digest(meta["config"])  # edited by hand, the digest recomputed
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("field, message", [
    ("hybrid.coarse_steps", "lacks hybrid.coarse_steps"), ("hybrid.fine_steps", "lacks hybrid.fine_steps"),
    ("cfg", "lacks cfg"), ("temperature", "lacks temperature"), ("weights_sha256", "records no weights_sha256"),
])
def test_a_release_missing_a_field_or_a_digest_is_refused(runs, tmp_path, capsys, field, message):
    def drop(meta):
        *parents, leaf = field.split(".")
        node = meta if field.endswith("sha256") else meta["config"]
        for p in parents:
            node = node[p]
        del node[leaf]

    rel = _edited_release(runs / "rel", tmp_path / "rel", drop)
    line = one_error_line(capsys, main(["sample", "--ckpt", str(rel), "--n", "1", "--out", str(tmp_path / "s.png")]))
    assert message in line and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("field", ["solver", "max_steps", "objective", "mean_weight", "backbone_noise", "kind"])
def test_a_release_missing_a_flow_stage_field_that_sets_sampling_is_refused(tmp_path, capsys, field):
    """A flow stage's solver, step limit, objective, mean head and noise path set how it samples: a release whose
    stage lacks one is refused (its default could silently change the images), as the release's own fields are."""
    import parscale_ear as pe

    pe.create_model("tiny-32-flow").save_pretrained(tmp_path / "flow")
    rel = _edited_release(tmp_path / "flow", tmp_path / "edited", lambda meta: meta["config"]["hybrid"]["fine"].pop(field))
    line = one_error_line(capsys, main(["sample", "--ckpt", str(rel), "--n", "1", "--out", str(tmp_path / "s.png")]))
    assert f"lacks hybrid.fine.{field}" in line and not (tmp_path / "s.png").exists()


def test_integer_weights_and_a_binary_config_are_refused_by_name(runs, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    from parscale_ear.files import sha256_file

    rel = tmp_path / "ints"
    shutil.copytree(runs / "rel", rel)
    state = {k: torch.zeros(v.shape, dtype=torch.int32) for k, v in load_file(str(rel / "model.safetensors")).items()}
    save_file(state, str(rel / "model.safetensors"), metadata={"format": "parscale-ear"})
    meta = json.loads((rel / "config.json").read_text())
    meta["weights_sha256"] = sha256_file(rel / "model.safetensors")
    (rel / "config.json").write_text(json.dumps(meta))
    line = one_error_line(capsys, main(["sample", "--ckpt", str(rel), "--n", "1", "--out", str(tmp_path / "s.png")]))
    assert "is torch.int32, expected a floating-point tensor" in line
    binary = tmp_path / "binary"
    shutil.copytree(runs / "rel", binary)
    (binary / "config.json").write_bytes(bytes(range(256)))
    line = one_error_line(capsys, main(["sample", "--ckpt", str(binary), "--n", "1", "--out", str(tmp_path / "b.png")]))
    assert str(binary / "config.json") in line and "not a text file" in line


def test_a_loss_explosion_stops_the_run_and_keeps_the_last_good_checkpoint(runs, tmp_path, capsys):
    out = tmp_path / "exploded"
    line = one_error_line(capsys, main(["train", "--vae", str(runs / "vae"), "--lr", "1e4", "--warmup-steps", "0",
                                        "--steps", "6", "--ckpt-every", "1", "--log-every", "1", "--out", str(out),
                                        "--no-samples", "--batch-size", "8", "--no-progress", "--device", "cpu"]))
    assert "training diverged" in line and ("exploded" in line or "not finite" in line)
    if (out / CHECKPOINT).exists():  # what is kept loads, and is finite
        ckpt = pe.train.load_checkpoint(out)
        assert all(torch.isfinite(v).all() for v in ckpt["ema"].values() if v.is_floating_point())
    rows = [json.loads(l) for l in (out / METRICS).read_text().splitlines()]
    assert all(abs(r["loss"]) < 1e6 and r["grad_norm"] <= 1e6 for r in rows)


def test_the_explosion_limits_follow_the_early_losses():
    from parscale_ear.train.divergence import EXPLODED, DivergenceWatch

    watch = DivergenceWatch(torch.device("cpu"))
    for step in range(12):  # a healthy run: the loss falls, norms of order one
        watch.watch(step, torch.tensor(5.0 / (1 + step)), torch.tensor(2.0))
    assert int(watch.first_bad) == -1
    watch.watch(12, torch.tensor(3e9), torch.tensor(1.0))  # finite, but 1e4 x the early median
    assert int(watch.first_bad) == 13 and int(watch.kind) == EXPLODED
    other = DivergenceWatch(torch.device("cpu"))
    other.watch(0, torch.tensor(1.0), torch.tensor(3.65e16))  # a gradient explosion counts from the first step
    assert int(other.first_bad) == 1


# ---------------------------------------------------------------------------- silent acceptance
@pytest.mark.parametrize("argv, message", [
    (["train-vae", "--preset", "", "--data", "{data}"], "--preset: expected a preset name, got an empty value"),
    (["train-vae", "--data", ""], "--data: expected a data set, got an empty value"),
    (["train", "--vae", "{vae}", "--preset", ""], "--preset: expected a preset name"),
    (["train", "--vae", "{vae}", "--teacher-steps", "4"], "they need --teacher"),
    (["train", "--vae", "{vae}", "--teacher-solver", "heun"], "they need --teacher"),
    (["train-vae", "--data", "{data}", "--seed", str(10**23)], "below 2**32"),
])
def test_flags_that_would_do_nothing_are_refused(argv, message, runs, data, tmp_path, capsys):
    argv = [a.format(data=data, vae=runs / "vae") for a in argv]
    line = one_error_line(capsys, main([*argv, "--steps", "1", "--out", str(tmp_path / "x"), *CPU]))
    assert message in line and not (tmp_path / "x" / CHECKPOINT).exists()


# ---------------------------------------------------------------------------- tracebacks and hangs
def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, data, capsys, monkeypatch):
    import errno

    from parscale_ear import files

    real, calls = files.torch.save, {"n": 0}

    def filling(obj, f):
        calls["n"] += 1
        if calls["n"] < 2:
            return real(obj, f)
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.torch, "save", filling)
    out = tmp_path / "full"
    line = one_error_line(capsys, main(["train-vae", "--preset", "tiny-32", "--data", data, "--steps", "3",
                                        "--ckpt-every", "1", "--out", str(out), "--no-samples", *CPU]))
    assert f"cannot write {out / CHECKPOINT}: No space left on device (the previous file is kept)" in line
    monkeypatch.undo()
    assert pe.train.load_checkpoint(out)["step"] == 1 and not list(out.glob(f"*{TEMP_SUFFIX}"))


def test_ctrl_c_while_sampling_is_one_line_and_exit_130(runs, tmp_path, capsys, monkeypatch):
    from parscale_ear import images

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "save_images", interrupted)
    line = one_error_line(capsys, main(["sample", "--ckpt", str(runs / "rel"), "--n", "2", "--out",
                                        str(tmp_path / "imgs")]), status=130)
    assert line.startswith("parscale-ear: interrupted")


def test_ctrl_c_while_training_is_one_line_and_exit_130(tmp_path, data):
    """A real SIGINT to `python -m parscale_ear train-vae`: one line naming the checkpoint kept, exit 130; --resume
    then continues."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "parscale_ear", "train-vae", "--preset", "tiny-32", "--data", data, "--steps",
           "100000", "--ckpt-every", "2", "--out", str(out), "--no-samples", *CPU]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 600  # a first checkpoint at step 2: seconds, however loaded the machine
    while not (out / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if proc.poll() is not None or not (out / CHECKPOINT).exists():
        proc.kill()
        pytest.fail(f"the run ended or wrote no checkpoint before the interrupt: {proc.communicate()[1][-500:]}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1, err
    assert lines[0].startswith("parscale-ear: interrupted: stopped at step") and "keeps step" in lines[0]
    assert not list(out.glob(f"*{TEMP_SUFFIX}"))
    step = pe.train.load_checkpoint(out)["step"]
    assert main(["train-vae", "--steps", str(step + 1), "--out", str(out), "--resume", "--no-samples", *CPU]) == 0


def test_a_grid_is_bounded_before_any_work(runs, tmp_path, capsys, monkeypatch):
    line = one_error_line(capsys, main(["sample", "--ckpt", str(runs / "rel"), "--n", "5000000", "--out",
                                        str(tmp_path / "s.png")]))
    assert "a grid holds at most 10,000 images" in line and "--out FOLDER" in line
    from parscale_ear import utils

    monkeypatch.setattr(utils, "available_memory", lambda: 1 << 20)  # 1 MiB free
    line = one_error_line(capsys, main(["sample", "--ckpt", str(runs / "rel"), "--n", "2000", "--out",
                                        str(tmp_path / "s.png")]))
    assert "GiB of memory free" in line and not (tmp_path / "s.png").exists()
