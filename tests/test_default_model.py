"""The embedded default model (parscale_ear/weights/fmnist-32-es): it is the preset it names,
its weights are the ones SHA256SUMS lists, and the API and the CLI use it when given no path."""
import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

import parscale_ear as pe
from parscale_ear.cli import main
from parscale_ear.release import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def default():
    return pe.ParScaleEAR.from_pretrained()


def test_default_is_the_named_preset_at_its_measured_schedule(default):
    shipped, preset = default.config, pe.get_config("fmnist-32-es")
    # everything but the VAE's latent scale, which training measured, matches the preset
    assert dataclasses.replace(shipped, vae=dataclasses.replace(shipped.vae, latent_scale=1.0)) == preset
    assert shipped.vae.latent_scale != 1.0
    assert default.resolve_steps(None) == (2, 2) and shipped.cfg == 1.0 and shipped.temperature == 1.0
    for stage in (shipped.hybrid.coarse, shipped.hybrid.fine):  # the energy student: every step draws from the head
        assert stage.objective == "energy" and stage.solver == "euler"
    assert 6.0e6 < default.num_parameters()["generator"] < 6.6e6


def test_default_weights_match_sha256sums():
    sums = dict(reversed(line.split()) for line in (ROOT / "SHA256SUMS").read_text().splitlines() if line.strip())
    weights = DEFAULT_MODEL / "model.safetensors"
    rel = weights.relative_to(ROOT).as_posix()
    assert rel in sums, f"{rel} is not listed in SHA256SUMS"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == sums[rel]


def test_default_generates_per_image_seeded_images(default):
    both = default.generate(2, labels=[7, 9], seed=3)
    assert both.shape == (2, 1, 32, 32) and both.min() >= -1 and both.max() <= 1
    torch.testing.assert_close(default.generate(1, labels=[9], seed=4), both[1:], rtol=1e-4, atol=1e-4)
    # a trained model: class 1 (trousers) and class 8 (bag) give different mean images
    trousers, bags = default.generate(4, labels=[1] * 4, seed=0), default.generate(4, labels=[8] * 4, seed=0)
    assert (trousers.mean(0) - bags.mean(0)).abs().mean() > 0.1


def test_cli_sample_without_ckpt_uses_the_default(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--n", "4", "--labels", "0", "1", "2", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 200


def test_the_default_draws_with_its_energy_head(tmp_path, default):
    """At its temperature (1) every step draws x0 from the energy head: the noise of the draws changes the image;
    temperature 0 is the mean path alone, which the CLI still reaches."""
    a = default.generate(2, labels=[3, 3], seed=5)
    mean = default.generate(2, labels=[3, 3], seed=5, temperature=0.0)
    assert not torch.allclose(a, mean, atol=1e-3)
    out = tmp_path / "mean.png"
    assert main(["sample", "--n", "2", "--temperature", "0", "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 200
    assert main(["sample", "--n", "2", "--solver", "rk4", "--out", str(tmp_path / "x.png")]) == 2  # a usage error
    assert not (tmp_path / "x.png").exists()


def test_results_table_describes_the_default_at_its_schedule(default):
    import json

    res = json.loads((ROOT / "results" / "fashion_mnist.json").read_text())
    for key in ("fid_train_50k", "fid_test", "fid_no_cfg", "steps", "passes_per_image", "ms_per_image_b256", "peer",
                "device", "command", "commit", "date"):
        assert key in res, f"results/fashion_mnist.json lacks {key}"
    assert {"fid_train_50k", "ms_per_image_b256"} <= set(res["peer"])
    # the speed and FID published are those of the default's own sampling schedule
    assert tuple(res["steps"]) == default.resolve_steps(None)
    assert (res["cfg"], res["temperature"]) == (default.config.cfg, default.config.temperature)
    assert res["solver"] == default.config.hybrid.coarse.solver == default.config.hybrid.fine.solver
    from parscale_ear.evaluation.quality import Schedule, passes_per_image

    assert res["passes_per_image"] == passes_per_image(default, Schedule(tuple(res["steps"]), res["cfg"], res["temperature"]))


def test_lite_256_es_follows_the_shipped_design(default):
    """The 256x256 preset to be timed uses the default's stage design, token geometry and schedule."""
    big, ship = pe.get_config("lite-256-es"), default.config
    assert big.hybrid.fine_patch == ship.hybrid.fine_patch == 2 and big.hybrid.pool == ship.hybrid.pool
    design = ("kind", "streams", "backbone_noise", "mean_weight", "residual_blocks", "objective",
              "samples", "solver")
    for name in ("coarse", "fine"):
        a, b = getattr(big.hybrid, name), getattr(ship.hybrid, name)
        assert {k: getattr(a, k) for k in design} == {k: getattr(b, k) for k in design}
    assert (big.hybrid.coarse_steps, big.hybrid.fine_steps, big.cfg, big.temperature) == \
           (ship.hybrid.coarse_steps, ship.hybrid.fine_steps, ship.cfg, ship.temperature)
    model = pe.create_model("lite-256-es").eval()
    assert 30e6 <= model.num_parameters()["generator"] <= 40e6
    assert model.generator.fine.num_tokens == 64 and model.generator.fine.token_dim == 128


def test_the_shipped_config_is_in_the_current_format_and_the_old_one_loads_the_same_model(default, tmp_path):
    """config.json builds its config without any reading of earlier versions (no retired fields, no other kind's
    fields, no field that does nothing); the same release as 0.1 wrote it (tests/data) loads as the same model and
    gives the same images."""
    import json
    import shutil

    shipped = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert shipped["library_version"] == pe.__version__
    assert pe.ParScaleEARConfig(**shipped["config"]) == default.config
    old = tmp_path / "old"
    old.mkdir()
    shutil.copyfile(ROOT / "tests" / "data" / "fmnist-32-es-0.1.0-config.json", old / "config.json")
    shutil.copyfile(DEFAULT_MODEL / "model.safetensors", old / "model.safetensors")
    before = pe.ParScaleEAR.from_pretrained(old)
    assert before.config == default.config
    for seed in (0, 7):
        assert torch.equal(before.generate(3, seed=seed, steps=(1, 1)), default.generate(3, seed=seed, steps=(1, 1)))
    with pytest.raises(TypeError):  # the old file needs the reading of earlier versions: not the current format
        pe.ParScaleEARConfig(**json.loads((old / "config.json").read_text())["config"])


def test_steps_and_solver_mean_one_thing_through_the_api_and_the_cli(default, tmp_path, capsys):
    """An int of steps is that many steps in every stage (1 -> 1 + 1); an explicit Heun solver where every step
    draws x0 from the energy head (temperature > 0) would change nothing and is refused with one line."""
    assert default.resolve_steps(1) == (1, 1) and default.generator.passes(1, 1.0) == 2
    assert torch.equal(default.generate(2, seed=1, steps=1), default.generate(2, seed=1, steps=(1, 1)))
    for call in (lambda: default.generate(2, solver="heun"), lambda: default.compile_sampler(2, solver="heun"),
                 lambda: default.generator.passes((2, 2), 0.5, "heun")):
        with pytest.raises(ValueError, match="solver 'heun' at temperature"):
            call()
    mean = default.generate(2, seed=1, temperature=0.0, steps=(2, 2))  # the mean path: Heun corrects it
    assert not torch.equal(default.generate(2, seed=1, temperature=0.0, steps=(2, 2), solver="heun"), mean)
    assert main(["sample", "--n", "2", "--solver", "heun", "--device", "cpu", "--out", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err
    assert "solver 'heun' at temperature 1" in err and err.count("\n") == 1 and not (tmp_path / "h.png").exists()
    for steps in ("1", "1,1"):
        assert main(["sample", "--n", "2", "--steps", steps, "--device", "cpu", "--out", str(tmp_path / steps)]) == 0
    for image in ("000000.png", "000001.png"):
        assert (tmp_path / "1" / image).read_bytes() == (tmp_path / "1,1" / image).read_bytes()
