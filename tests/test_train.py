"""Training, resume, CLI and evaluation plumbing on tiny CPU runs over a small real-format dataset."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear import train as train_mod
from parscale_ear.train import loop as train_loop
from parscale_ear.cli import main
from parscale_ear.loading import read_metrics
from parscale_ear.train import TrainConfig, load_checkpoint, load_pipeline, train
from parscale_ear.files import atomic_path

from helpers import StandIn, interrupt_after


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    """64 labelled 32x32 grey images as a real .npz dataset (blobs whose size depends on the class)."""
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 10
    yy, xx = np.mgrid[:32, :32]
    images = np.stack([((np.hypot(yy - 16, xx - 16) < 4 + l) * 200 + rng.integers(0, 40, (32, 32))).astype(np.uint8) for l in labels])
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images, labels=labels)
    return str(path)


def cfg(kind, data, vae_run="", steps=6):
    return TrainConfig(kind=kind, steps=steps, batch_size=8, lr=1e-3, warmup_steps=2, log_every=1, sample_every=100,
                       ckpt_every=3, data=data, vae_run=vae_run, bf16=False)


def losses(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, npz_data):
    out = tmp_path_factory.mktemp("runs") / "vae"
    train(cfg("vae", npz_data), out, pe.get_config("tiny-32-flow"), progress=False)
    return out


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")} for r in rows]


def test_vae_run_folder(vae_run):
    assert {"checkpoint.pt", "metrics.jsonl", "run.json", "loss.png", "samples"} <= {p.name for p in vae_run.iterdir()}
    ckpt = load_checkpoint(vae_run)
    assert ckpt["kind"] == "vae" and ckpt["step"] == 6 and ckpt["config"]["vae"]["latent_scale"] > 0
    assert [r["step"] for r in losses(vae_run)] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in losses(vae_run))


@pytest.mark.parametrize("kind", ["vae", "generator"])
def test_resume_matches_an_uninterrupted_run(kind, tmp_path, npz_data, vae_run, monkeypatch):
    run_cfg = cfg(kind, npz_data, str(vae_run) if kind == "generator" else "")
    model_cfg = None if kind == "generator" else pe.get_config("tiny-32")
    train(run_cfg, tmp_path / "straight", model_cfg, progress=False)
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            train(run_cfg, tmp_path / "killed", model_cfg, progress=False)
    assert load_checkpoint(tmp_path / "killed")["step"] == 3
    train(run_cfg, tmp_path / "killed", resume=True, progress=False)
    assert strip_timing(losses(tmp_path / "killed")) == strip_timing(losses(tmp_path / "straight"))
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_generator_run_export_and_sample_cli(tmp_path, npz_data, vae_run, capsys):
    run = tmp_path / "gen"
    train(cfg("generator", npz_data, str(vae_run)), run, progress=False)
    rows = losses(run)
    assert {"coarse", "fine", "loss"} <= set(rows[-1]) and rows[-1]["step"] == 6
    assert (run / "samples" / "step_0000006.png").is_file()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "release")]) == 0
    release = pe.ParScaleEAR.from_pretrained(tmp_path / "release")
    assert torch.equal(release.generate(2, seed=3), load_pipeline(run).generate(2, seed=3))
    assert main(["sample", "--ckpt", str(tmp_path / "release"), "--n", "3", "--seed", "5", "--out", str(tmp_path / "imgs")]) == 0
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["000005.png", "000006.png", "000007.png"]
    assert main(["sample", "--ckpt", str(run), "--n", "4", "--labels", "2", "--cfg", "2", "--steps", "2,1", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    # exporting a VAE run is refused with a one-line reason
    assert main(["export", "--run", str(vae_run), "--out", str(tmp_path / "x")]) == 2
    assert "export a generator run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train-vae", "--preset", "tiny-32", "--data", "no/such/folder", "--steps", "1", "--out", "{tmp}/r"], "no/such/folder"),
        (["train-vae", "--preset", "nope", "--steps", "1", "--out", "{tmp}/r"], "unknown model"),
        (["train", "--vae", "{tmp}/missing", "--steps", "1", "--out", "{tmp}/r"], "no checkpoint"),
        (["train-vae", "--steps", "1", "--out", "{tmp}/r", "--resume"], "no checkpoint"),
        (["sample", "--ckpt", "{tmp}/missing", "--out", "{tmp}/x.png"], "no checkpoint"),
        (["train-vae", "--preset", "tiny-32", "--steps", "1", "--out", "{tmp}/r", "--set", "vae.latent_chanels=2"], "unknown option"),
        (["train-vae", "--preset", "tiny-32", "--steps", "1", "--out", "{tmp}/r", "--fit-to-budget"], "needs a budget"),
    ],
)
def test_cli_errors_are_one_line(argv, match, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("parscale-ear: error:") and match in err and "\n" not in err and "Traceback" not in err


def test_cli_refuses_to_overwrite_a_run(tmp_path, vae_run, capsys):
    assert main(["train-vae", "--preset", "tiny-32", "--steps", "1", "--out", str(vae_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"\x80\x02truncated")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "run")


def test_atomic_path_keeps_the_old_file_when_a_write_fails(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_batch_indices_shard_a_global_batch():
    whole = train_mod.batch_indices(100, 8, 5, 0, train_mod.Dist())
    parts = [train_mod.batch_indices(100, 8, 5, 0, train_mod.Dist(rank=r, world=2)) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == sorted(whole.tolist())
    assert not set(parts[0].tolist()) & set(parts[1].tolist())


def test_param_groups_put_the_head_at_a_quarter_rate_without_decay():
    model = pe.create_model("tiny-32")
    groups = train_mod.param_groups(model.generator, TrainConfig())
    head = [g for g in groups if g["lr_ratio"] == 0.25][0]
    head_ids = {id(p) for n, p in model.generator.named_parameters() if ".head." in f".{n}"}
    assert {id(p) for p in head["params"]} == head_ids and head["weight_decay"] == 0
    assert sum(len(g["params"]) for g in groups) == len(list(model.generator.parameters()))


def test_latency_profile_on_cpu():
    from parscale_ear.evaluation.benchmark import markdown_table, profile_latency

    model = pe.create_model("tiny-32")
    rows = profile_latency(model, batch_sizes=(1, 2), runs=3, warmup=1)
    names = {r["name"].split(" ")[0] for r in rows}
    assert names == {"encode", "generate.coarse", "generate.fine", "decode", "end_to_end"}
    for r in rows:
        assert 0 < r["ms_per_image_p50"] <= r["ms_per_image_p99"] and r["runs"] == 3
    assert markdown_table(rows).count("\n") == len(rows) + 2


def test_evaluate_fid_and_vae_with_a_stand_in_network(npz_data):
    from parscale_ear.evaluation import evaluate

    model = pe.create_model("tiny-32").eval()
    inc = StandIn(dim=6)
    ref = evaluate.reference_statistics(npz_data, "train", inception=inc, batch_size=16)
    assert ref[2] == 64
    rows = evaluate.evaluate_fid(model, ref, n=20, cfgs=(1.0, 2.0), inception=inc, batch_size=10)
    assert [r["cfg"] for r in rows] == [1.0, 2.0] and all(np.isfinite(r["fid"]) and r["num_samples"] == 20 for r in rows)
    vae = evaluate.evaluate_vae(model, npz_data, "train", inc, limit=16, batch_size=8)
    assert vae["num_images"] == 16 and np.isfinite(vae["rfid"]) and vae["psnr"] > 0 and -1 <= vae["ssim"] <= 1


def test_ddp_two_processes_on_cpu(tmp_path, npz_data):
    """The DDP path (torchrun, gloo on the CPU): both stages train with world size 2 and rank 0 writes the run."""
    import subprocess
    import sys

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "parscale_ear", *args,
               "--steps", "3", "--batch-size", "8", "--device", "cpu", "--log-every", "1", "--no-progress"]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    torchrun("train-vae", "--preset", "tiny-32", "--data", npz_data, "--out", "vae")
    torchrun("train", "--vae", "vae", "--out", "gen")
    for run in ("vae", "gen"):
        assert json.loads((tmp_path / run / "run.json").read_text())["world_size"] == 2
        rows = losses(tmp_path / run)
        assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert load_pipeline(tmp_path / "gen").generate(2, seed=0).shape == (2, 1, 32, 32)


def test_cli_train_mode_and_streams_shorthands(tmp_path, vae_run, npz_data):
    out = tmp_path / "abl"
    assert main(["train", "--vae", str(vae_run), "--data", npz_data, "--mode", "no_fine", "--streams", "1", "--steps", "1",
                 "--batch-size", "8", "--set", "hybrid.coarse.depth=2", "--out", str(out), "--no-progress"]) == 0
    hybrid = json.loads((out / "run.json").read_text())["model"]["hybrid"]
    assert hybrid["mode"] == "no_fine" and hybrid["coarse"]["streams"] == 1 and hybrid["fine"]["streams"] == 1
    assert hybrid["coarse"]["depth"] == 2


def test_warmup_is_capped_so_a_short_run_reaches_its_lr():
    from parscale_ear.train import lr_at, warmup_steps

    short = TrainConfig(steps=20, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert warmup_steps(short) == 10
    assert lr_at(9, short) == pytest.approx(1e-3) and max(lr_at(s, short) for s in range(20)) == pytest.approx(1e-3)
    long = TrainConfig(steps=10_000, warmup_steps=100, lr=1e-3)
    assert warmup_steps(long) == 100 and lr_at(49, long) == pytest.approx(5e-4)


def test_run_json_records_what_the_run_does(tmp_path, npz_data):
    c = TrainConfig(kind="vae", steps=4, batch_size=8, lr=1e-3, warmup_steps=50, log_every=2, sample_every=100, ckpt_every=4,
                    data=npz_data, bf16=True)
    train(c, tmp_path / "v", pe.get_config("tiny-32"), progress=False)
    run = json.loads((tmp_path / "v" / "run.json").read_text())
    assert run["train"]["bf16"] is False and run["requested"]["bf16"] is True  # no bf16 autocast on the CPU
    assert run["train"]["warmup_steps"] == 2 and run["requested"]["warmup_steps"] == 50


def test_no_samples_and_sampling_time_stays_out_of_the_training_clock(tmp_path, npz_data, vae_run, monkeypatch):
    c = TrainConfig(kind="generator", steps=4, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, sample_every=2,
                    ckpt_every=4, data=npz_data, vae_run=str(vae_run), bf16=False, samples=False)
    train(c, tmp_path / "quiet", None, progress=False)
    assert not (tmp_path / "quiet" / "samples").exists() and not (tmp_path / "quiet" / "loss.png").exists()

    import time as time_mod

    real_generate = pe.ParScaleEAR.generate

    def slow_generate(self, *a, **k):
        time_mod.sleep(8.0)  # long against 4 tiny steps even on a loaded 2-core machine
        return real_generate(self, *a, **k)

    monkeypatch.setattr(pe.ParScaleEAR, "generate", slow_generate)
    c.samples = True
    train(c, tmp_path / "loud", None, progress=False)
    rows = losses(tmp_path / "loud")
    assert len(list((tmp_path / "loud" / "samples").glob("*.png"))) == 2
    assert rows[-1]["elapsed_s"] < 8.0  # the 8 s grid at step 2 is not training time (4 tiny steps take far less)
    grid = (tmp_path / "loud" / "samples" / "step_0000004.png")
    from PIL import Image

    with Image.open(grid) as im:  # class names above the 10 columns
        assert im.height > 10 * 34


def test_train_for_minutes_fits_the_steps_to_the_budget_in_the_run_itself(tmp_path, vae_run):
    """The fixed-budget harness: one run measures its rate during its warm-up, sets its step count so
    the cosine decay ends at the budget, records the plan in run.json, and stops inside max_minutes."""
    from parscale_ear.harness import train_for_minutes
    from parscale_ear.presets import recipe_config

    vae_config = pe.ParScaleEARConfig.from_dict(load_checkpoint(vae_run)["config"])
    config = recipe_config("tiny-32-flow", vae_config)
    assert config.name == "tiny-32-flow" and config.vae == vae_config.vae and config.hybrid.coarse.kind == "flow"
    budget = 0.25  # minutes (a loaded 2-core machine runs a tiny step in ~0.5 s)
    done = train_for_minutes(config, vae_run, budget, tmp_path / "run", "cpu", warmup_steps=14, batch_size=8, lr=1e-3)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["plans"][0]["at_step"] == 14 and run["fitted"]["steps_per_s"] > 0 and run["plans"][-1] == run["fitted"]
    assert done["planned_steps"] == run["fitted"]["steps"] == run["train"]["steps"] >= 28  # at least 2x the warm-up
    assert 14 < done["step"] <= done["planned_steps"] and done["wall_s"] < budget * 60 + 30
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == done["step"] and ckpt["train"]["max_minutes"] == budget
    assert ckpt["train"]["steps"] == done["planned_steps"]
    # the run's elapsed training time is inside the budget, give or take the last step
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["elapsed_s"] < budget * 60 + 5
    peer = recipe_config("dit-s", vae_config, {"dit": {"num_layers": 1}})
    assert peer.dit.num_layers == 1 and peer.cfg == 1.0
    with pytest.raises(ValueError, match="unknown model"):
        recipe_config("no-such-recipe", config)


def test_ema_update_is_the_lerp_of_every_parameter_and_copies_buffers():
    """One foreach call does what the per-parameter loop did: ema = decay ema + (1 - decay) p."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.fill_(0.5)
    before = [e.clone() for e in ema.parameters()]
    train_loop.ema_update(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)


def test_compile_wraps_the_training_step_once_with_a_static_shape(tmp_path, monkeypatch, npz_data, vae_run):
    """--compile hands the generator's step to torch.compile (static shapes: the batch never changes)
    and trains through what it returns; the real Inductor compile is timed on the GPU."""
    calls = []

    def fake_compile(module, **kw):
        calls.append((type(module).__name__, kw))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    c = cfg("generator", npz_data, str(vae_run), steps=2)
    c.compile = True
    train(c, tmp_path / "g", progress=False)
    assert calls == [("GeneratorStep", {"dynamic": False})]
    assert load_checkpoint(tmp_path / "g")["step"] == 2


def test_fit_steps_to_budget_changes_nothing_before_the_warm_up_ends(tmp_path, npz_data, vae_run, monkeypatch):
    """The fitted run is the plain run up to the end of warm-up (same losses, same learning rates),
    and its total follows fitted_steps: the steps done plus 98% of what the measured rate fits. The run reads a
    clock that advances 0.05 s a reading, so the test does not depend on the machine's speed."""
    from types import SimpleNamespace

    clock = {"t": 1000.0}

    def tick():
        clock["t"] += 0.05
        return clock["t"]

    monkeypatch.setattr(train_loop, "time", SimpleNamespace(time=tick))
    common = dict(kind="generator", batch_size=8, lr=1e-3, warmup_steps=14, log_every=1, sample_every=10**6,
                  ckpt_every=10**6, data=npz_data, vae_run=str(vae_run), bf16=False, samples=False)
    train(TrainConfig(steps=40, **common), tmp_path / "plain", progress=False)
    train(TrainConfig(steps=10**6, max_minutes=0.25, fit_steps_to_budget=True, **common), tmp_path / "fit", progress=False)
    plain, fit = losses(tmp_path / "plain"), losses(tmp_path / "fit")
    assert strip_timing(fit[:14]) == strip_timing(plain[:14])
    run = json.loads((tmp_path / "fit" / "run.json").read_text())
    steps = run["train"]["steps"]
    assert 28 <= steps < 10**6 and fit[-1]["step"] <= steps
    # a second plan a fifth of the way on, from the rate measured since the warm-up's end; the run follows it
    first, second = run["plans"]
    assert first["at_step"] == 14 and second["at_step"] == 14 + max(14, (first["steps"] - 14) // 5)
    assert second["steps"] == steps == run["fitted"]["steps"]

    cfg = TrainConfig(kind="generator", steps=10**6, warmup_steps=100, max_minutes=1.0, fit_steps_to_budget=True)
    assert train_mod.fitted_steps(100, 10.0, 30.0, cfg) == 100 + int(10.0 * 30.0 * 0.98)
    assert train_mod.fitted_steps(100, 0.01, 59.0, cfg) == 200  # never below twice the warm-up
    with pytest.raises(ValueError, match="needs a budget"):
        TrainConfig(kind="generator", fit_steps_to_budget=True)


def test_ablation_trains_each_distinct_variant_once_two_at_a_time(tmp_path, npz_data, vae_run):
    """ci/ablation --jobs 2: the runs train in worker processes, to the same weights as in this process; a
    variant equal to another (P=2 of a 2-stream design is "full") shares that one's runs and FIDs."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
    import ablation

    args = SimpleNamespace(device="cpu", out=str(tmp_path / "abl"), vae=str(vae_run), preset=None, variants=["full", "P=2", "no_fine"],
                           seeds=[0], steps=3, train_batch=8, lr=1e-3, ema_decay=0.99, max_images=0, data=npz_data, ref=None,
                           ref_limit=16, n=8, cfg=1.0, batch_size=8, latency_batch=2, latency_runs=1, bf16=False, quick=True, jobs=2)
    result = ablation.run(args)
    runs = tmp_path / "abl" / "ablation_runs"
    assert sorted(p.name for p in runs.iterdir()) == ["full-s0", "no_fine-s0"]
    by = {r["variant"]: r for r in result["rows"]}
    assert by["P=2"]["fid_seeds"] == by["full"]["fid_seeds"] and by["P=2"]["streams"] == by["full"]["streams"] == 2
    assert by["P=2"]["e2e_ms_per_image_p50"] == by["full"]["e2e_ms_per_image_p50"]  # timed once, not again
    assert by["no_fine"]["mode"] == "no_fine" and result["budget"]["jobs"] == 2
    assert result["reference"] == f"{npz_data}:train[:16]"
    here = tmp_path / "here"  # the same run ("full": the VAE run's design unchanged) trained in this process
    design = ablation.ParScaleEARConfig.from_dict(load_checkpoint(vae_run)["config"])
    ablation.train_one(design, here, 0, dict(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, sample_every=3,
                                             ckpt_every=3, data=npz_data, vae_run=str(vae_run), max_images=0, ema_decay=0.99,
                                             compile=False), "cpu")
    worker, local = load_checkpoint(runs / "full-s0")["ema"], load_checkpoint(here)["ema"]
    assert worker.keys() == local.keys() and all(torch.equal(worker[k], local[k]) for k in worker)


def test_vae_run_from_release(tmp_path):
    out = train_mod.vae_run_from_release(tmp_path / "vae")
    ckpt, shipped = load_checkpoint(out), pe.ParScaleEAR.from_pretrained()
    assert ckpt["kind"] == "vae" and ckpt["train"]["data"] == "fashion-mnist" and ckpt["config"] == shipped.config.to_dict()
    assert all(torch.equal(ckpt["ema"][k], v.float()) for k, v in shipped.vae.state_dict().items())
    with pytest.raises(ValueError, match="is a LiteVAE run"):  # a VAE run, not something to sample from
        load_pipeline(out)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_mod.vae_run_from_release(out)
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        train_mod.vae_run_from_release(tmp_path / "other", metrics=tmp_path / "missing.jsonl")
    assert not (tmp_path / "other").exists()  # nothing half-made


def test_reference_statistics_policy(tmp_path):
    """A given file first; all of Fashion-MNIST: the shipped statistics; else computed from the data."""
    from parscale_ear.evaluation import evaluate
    from parscale_ear.evaluation import fid as fidlib

    stats, source = evaluate.resolve_reference(data="fashion-mnist", split="test")
    assert source == "parscale_ear/stats/fashion-mnist-test.npz" and stats[0].shape == (2048,)
    path = fidlib.save_statistics(tmp_path / "ref.npz", stats[0], stats[1], stats[2])
    again, source = evaluate.resolve_reference(path, data="somewhere-else")
    assert source == str(path) and np.array_equal(again[0], stats[0]) and np.array_equal(again[1], stats[1])
    with pytest.raises(FileNotFoundError, match="statistics file not found"):
        evaluate.resolve_reference(tmp_path / "missing.npz")


def test_resume_compares_streams_with_the_stages_a_run_has(tmp_path, vae_run, npz_data, capsys):
    """A one-stage run (mode no_coarse) keeps an unused coarse config: `--resume --streams` is checked against the
    stage it runs, not that one."""
    out = tmp_path / "one"
    common = ["--vae", str(vae_run), "--data", npz_data, "--batch-size", "8", "--out", str(out), "--no-progress"]
    assert main(["train", *common, "--mode", "no_coarse", "--set", "hybrid.coarse.streams=2", "hybrid.fine.streams=1",
                 "--steps", "1"]) == 0
    assert main(["train", *common, "--streams", "1", "--steps", "2", "--resume"]) == 0
    assert main(["train", *common, "--streams", "2", "--steps", "3", "--resume"]) == 2
    assert "--streams 2 (the run's: 1)" in capsys.readouterr().err


def test_cli_trains_and_samples_a_joint_coarse_fine_model(tmp_path, vae_run, npz_data):
    """--mode joint: one flow stage over the coarse block means and the residual, the coarse tokens ahead in time."""
    out = tmp_path / "joint"
    assert main(["train", "--vae", str(vae_run), "--data", npz_data, "--preset", "fmnist-32-flow1", "--mode", "joint",
                 "--steps", "2", "--batch-size", "8", "--out", str(out), "--no-progress", "--no-samples", "--set",
                 "hybrid.fine.depth=1", "hybrid.fine.width=32", "hybrid.fine.heads=2", "hybrid.fine.coarse_lead=2"]) == 0
    hybrid = json.loads((out / "run.json").read_text())["model"]["hybrid"]
    assert hybrid["mode"] == "joint" and hybrid["fine"]["coarse_lead"] == 2
    pipe = load_pipeline(out)
    assert pipe.generator.fine.num_tokens == 16 + 64 and pipe.generator.fine.lead_tokens == 16
    images = pipe.generate(2, labels=[0, 1], seed=0, steps=2)
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
