"""The energy-flow stage (noise through backbone and head, energy score per token and per stage) and
the diffusers DiT peer, on tiny CPU configs."""
import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.cli import main
from parscale_ear.energy_flow import time_grid
from parscale_ear.losses import energy_score_loss, energy_score_samples

from helpers import perturb_

TINY_DIT = ["dit.num_layers=1", "dit.heads=2", "dit.head_dim=8"]


@pytest.fixture
def flow():
    torch.manual_seed(0)
    return perturb_(pe.create_model("tiny-32-flow")).eval()


def test_energy_score_samples_matches_the_pair_form_and_prefers_the_truth():
    x, y = torch.randn(2, 7, 5), torch.randn(7, 5)
    assert torch.allclose(energy_score_samples(x, y), energy_score_loss(x[0], x[1], y))
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4000, 3, generator=g) * 2 + 1  # y ~ N(1, 4)
    true = torch.randn(8, 4000, 3, generator=g) * 2 + 1
    narrow = torch.randn(8, 4000, 3, generator=g) * 0.5 + 1
    shifted = torch.randn(8, 4000, 3, generator=g) * 2 + 2
    best = energy_score_samples(true, target)
    assert best < energy_score_samples(narrow, target) and best < energy_score_samples(shifted, target)


def test_time_grid():
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = time_grid(2, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and shifted[1] > 0.5


def test_flow_loss_reaches_every_part():
    torch.manual_seed(0)
    model = pe.create_model("tiny-32-flow")
    latents = torch.randn(6, 4, 16, 16)
    model.hybrid.fit_token_scales(latents)
    losses = model.hybrid.loss(latents, torch.arange(6) % 10)
    assert set(losses) == {"coarse", "fine", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    fine = model.hybrid.fine
    # the head's output layer is zero-initialised (EAR): at the first step only it gets gradient
    assert fine.head.out.weight.grad.abs().sum() > 0
    assert fine.blocks[0].ada.weight.grad.abs().sum() == 0
    assert fine.num_tokens == 64 and fine.token_dim == 16  # 2x2 patches of 4 channels


def test_flow_all_parameters_train_after_one_step():
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow"))
    latents = torch.randn(6, 4, 16, 16)
    model.hybrid.loss(latents, torch.arange(6))["loss"].backward()
    dead = [n for n, p in model.hybrid.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_flow_images_do_not_depend_on_batch(flow):
    a = flow.generate(5, seed=3, batch_size=5, cfg=2.0)
    b = flow.generate(5, seed=3, batch_size=2, cfg=2.0)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[0], flow.generate(1, seed=4, labels=[3])[0], atol=1e-3)


def test_flow_noise_enters_the_backbone(flow):
    """Changing one token's noise changes other tokens' hidden states (joint sampling)."""
    fine = flow.hybrid.fine
    x, t, labels = torch.randn(1, 64, 16), torch.ones(1), torch.tensor([1])
    xi = torch.rand(1, 64, fine.config.noise_dim) - 0.5
    ctx = torch.randn(1, 64, 16)
    h1 = fine.hidden(x, t, xi, labels, ctx)
    xi2 = xi.clone()
    xi2[0, 0] += 0.3
    h2 = fine.hidden(x, t, xi2, labels, ctx)
    assert (h1[0, 1:] - h2[0, 1:]).abs().max() > 1e-6


def test_flow_steps(flow):
    assert flow.generate(2, steps=(1, 1)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="max_steps"):
        flow.generate(2, steps=(5, 1))
    one = pe.create_model("tiny-32-flow", mode="no_coarse").eval()
    assert one.generate(2, steps=3).shape == (2, 1, 32, 32)


def test_flow_single_stream_has_no_prefix():
    model = pe.create_model("tiny-32-flow", streams=1)
    assert not hasattr(model.hybrid.fine, "stream_prefix") and not hasattr(model.hybrid.fine, "aggregate")


def test_flow_save_load_round_trip(tmp_path, flow):
    flow.save_pretrained(tmp_path / "rel")
    same = pe.ParScaleEAR.from_pretrained(tmp_path / "rel")
    assert torch.equal(same.generate(3, seed=1), flow.generate(3, seed=1))


# ----------------------------------------------------------------------------- DiT peer
pytest.importorskip("diffusers")


@pytest.fixture
def dit():
    torch.manual_seed(0)
    return perturb_(pe.create_model("tiny-32", dit={"num_layers": 1, "heads": 2, "head_dim": 8})).eval()


def test_dit_is_diffusers_and_trains(dit):
    from diffusers import DiTTransformer2DModel

    assert isinstance(dit.hybrid.dit, DiTTransformer2DModel)
    latents = torch.randn(4, 4, 16, 16)
    dit.train()
    losses = dit.hybrid.loss(latents, torch.arange(4))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and dit.hybrid.dit.proj_out_2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_dit_sampling_is_per_image(solver):
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32", dit={"num_layers": 1, "heads": 2, "head_dim": 8, "solver": solver})).eval()
    a = model.generate(4, seed=2, batch_size=4, steps=3, cfg=2.0)
    b = model.generate(4, seed=2, batch_size=3, steps=3, cfg=2.0)
    assert torch.allclose(a, b, atol=1e-5) and a.shape == (4, 1, 32, 32)
    assert model.hybrid.passes(3) == (3 if solver == "euler" else 5)
    with pytest.raises(ValueError, match="one stage"):
        model.generate(2, steps=(1, 2))


def test_dit_exact_euler_on_a_known_velocity(dit, monkeypatch):
    """With v(x, t) = x the flow ODE dx/dt = x from t = 1 to 0 gives x_0 = x_1 * prod(1 - dt)."""
    monkeypatch.setattr(dit.hybrid, "velocity", lambda x, t, labels: x)
    x1 = torch.randn(2, 4, 16, 16)
    dit.hybrid.latent_std.fill_(1.0)
    out = dit.hybrid.sample({"dit": (x1,)}, torch.tensor([0, 1]), (0, 4))
    assert torch.allclose(out, x1 * 0.75**4)


def test_cli_trains_and_samples_the_peer(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 255, (16, 32, 32), dtype=np.uint8), labels=np.arange(16) % 10)
    common = ["--steps", "2", "--batch-size", "8", "--no-progress", "--sample-every", "100", "--device", "cpu"]
    assert main(["train-vae", "--preset", "tiny-32", "--data", str(data), "--out", str(tmp_path / "vae"), *common]) == 0
    assert main(["train", "--vae", str(tmp_path / "vae"), "--peer", "dit-s", "--out", str(tmp_path / "dit"), *common,
                 "--set", *TINY_DIT]) == 0
    assert main(["train", "--vae", str(tmp_path / "vae"), "--preset", "tiny-32-flow", "--out", str(tmp_path / "ef"), *common]) == 0
    for run in ("dit", "ef"):
        assert main(["sample", "--ckpt", str(tmp_path / run), "--n", "3", "--out", str(tmp_path / f"{run}.png")]) == 0
        assert (tmp_path / f"{run}.png").stat().st_size > 0
    model = pe.ParScaleEAR.from_pretrained(pe.train.export(tmp_path / "dit", tmp_path / "dit-rel"))
    assert model.config.dit is not None and model.config.name == "dit-s"
