"""The DiT peer (diffusers' DiTTransformer2DModel, rectified flow) behind the ParScale-EAR pipeline,
on tiny CPU configs; skipped where the optional `diffusers` is not installed."""
import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.cli import main

from helpers import perturb_, tiny_peer

pytest.importorskip("diffusers")

TINY_DIT = ["dit.num_layers=1", "dit.heads=2", "dit.head_dim=8"]


@pytest.fixture
def dit():
    torch.manual_seed(0)
    return perturb_(tiny_peer()).eval()


def test_dit_is_diffusers_and_trains(dit):
    from diffusers import DiTTransformer2DModel

    assert isinstance(dit.generator.dit, DiTTransformer2DModel)
    latents = torch.randn(4, 4, 16, 16)
    dit.train()
    losses = dit.generator.loss(latents, torch.arange(4))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and dit.generator.dit.proj_out_2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_dit_sampling_is_per_image(solver):
    torch.manual_seed(0)
    model = perturb_(tiny_peer(solver=solver)).eval()
    a = model.generate(4, seed=2, batch_size=4, steps=3, cfg=2.0)
    b = model.generate(4, seed=2, batch_size=3, steps=3, cfg=2.0)
    assert torch.allclose(a, b, atol=1e-5) and a.shape == (4, 1, 32, 32)
    assert model.generator.passes(3) == (3 if solver == "euler" else 5)
    with pytest.raises(ValueError, match="one stage"):
        model.generate(2, steps=(1, 2))


def test_dit_exact_euler_on_a_known_velocity(dit, monkeypatch):
    """With v(x, t) = x the flow ODE dx/dt = x from t = 1 to 0 gives x_0 = x_1 * prod(1 - dt)."""
    monkeypatch.setattr(dit.generator, "velocity", lambda x, t, labels: x)
    x1 = torch.randn(2, 4, 16, 16)
    dit.generator.latent_std.fill_(1.0)
    out = dit.generator.sample({"dit": {"x1": x1}}, torch.tensor([0, 1]), 4)
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


def test_dit_through_the_fast_sampler(dit):
    want = dit.generate(3, seed=4, steps=2, cfg=1.5)
    got = dit.compile_sampler(3, steps=2, cfg=1.5)(seed=4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_dit_solver_per_call(dit):
    """generate(solver=...) overrides the peer's configured solver for that call only."""
    heun = dit.generate(2, seed=1, steps=3, solver="heun")
    assert dit.generator.config.solver == "euler" and dit.generator.passes(3, solver="heun") == 5
    assert not torch.equal(heun, dit.generate(2, seed=1, steps=3))
    dit.generator.config.solver = "heun"
    assert torch.equal(heun, dit.generate(2, seed=1, steps=3))
    with pytest.raises(ValueError, match="solver must be 'euler' or 'heun'"):
        dit.generate(2, steps=3, solver="rk4")


def test_peers_are_generators_beside_ours():
    """The peers register beside the presets with their own config of the one model shape; ParScaleEARConfig has no
    field for them; a peer's model is the pipeline with a DiT as its generator, not a subclass of anything of ours."""
    import dataclasses

    from parscale_ear.baselines.dit import DiTBaseline
    from parscale_ear.hybrid import CoarseFineHybrid
    from parscale_ear.model_config import ModelConfig, PeerConfig

    assert {"dit-s", "dit-b", "meanflow-s"} <= set(pe.list_models()) and "dit-s" not in pe.list_models(peers=False)
    assert "dit" not in {f.name for f in dataclasses.fields(pe.ParScaleEARConfig)}
    config = pe.get_config("meanflow-s")
    assert isinstance(config, PeerConfig) and config.dit.objective == "meanflow" and config.vae == pe.get_config("fmnist-32").vae
    assert isinstance(config, ModelConfig) and isinstance(pe.get_config("tiny-32-flow"), ModelConfig)
    peer = tiny_peer()
    assert type(peer) is pe.ParScaleEAR and isinstance(peer.generator, DiTBaseline) and not hasattr(peer, "hybrid")
    assert isinstance(peer.generator, pe.LatentGenerator) and not isinstance(peer.generator, CoarseFineHybrid)
    assert isinstance(pe.create_model("tiny-32-flow").generator, pe.LatentGenerator)
    with pytest.raises(ValueError, match="unknown option 'mode'"):
        pe.create_model("dit-s", mode="no_coarse")  # ParScale-EAR's shorthands do not apply to a peer


def test_stored_configs_load_as_the_model_they_describe():
    """A peer's config of 0.2 (ParScale-EAR's fields with `dit` set) loads as a PeerConfig; ParScale-EAR's with
    `dit: null` as a ParScaleEARConfig; each class refuses the other's."""
    from parscale_ear.model_config import PeerConfig
    from parscale_ear.presets import config_from_dict

    ours = pe.get_config("tiny-32-flow").to_dict()
    old_peer = {**ours, "name": "dit-s", "dit": {"num_layers": 1, "heads": 2, "head_dim": 8}, "cfg": 1.0}
    peer = config_from_dict(old_peer)
    assert isinstance(peer, PeerConfig) and peer.dit.num_layers == 1 and peer.vae == pe.get_config("tiny-32-flow").vae
    assert config_from_dict(peer.to_dict()) == peer
    assert config_from_dict({**ours, "dit": None}) == pe.get_config("tiny-32-flow")
    with pytest.raises(ValueError, match="describes a DiT peer"):
        pe.ParScaleEARConfig.from_dict(old_peer)
    with pytest.raises(ValueError, match="does not describe a peer model"):
        PeerConfig.from_dict({**peer.to_dict(), "streams": 2})
    with pytest.raises(ValueError, match="expected a dict"):
        config_from_dict([1, 2])


def test_the_equal_size_peer_matches_our_generators_size():
    """dit-xs: 10 layers, 192 wide, patch 2 on the Fashion-MNIST latents: 7.6M parameters, about the size of
    ParScale-EAR's Fashion-MNIST generators (6.3M), so the two compare at equal size."""
    model = pe.create_model("dit-xs")
    dit = model.generator.dit
    assert len(dit.transformer_blocks) == 10 and dit.config.num_attention_heads * dit.config.attention_head_dim == 192
    assert 7.4e6 < model.num_parameters()["generator"] < 7.8e6
