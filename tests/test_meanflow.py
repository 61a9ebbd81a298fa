"""The MeanFlow peer (diffusers' DiT with a second time embedding, trained from the MeanFlow identity with a
JVP) on tiny CPU configs; skipped where the optional `diffusers` is not installed."""
import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.baselines.dit import DiTConfig
from parscale_ear.cli import main

from helpers import interrupt_after, perturb_, tiny_peer

pytest.importorskip("diffusers")

TINY = {"num_layers": 1, "heads": 2, "head_dim": 8, "objective": "meanflow", "steps": 1}


@pytest.fixture
def mf():
    torch.manual_seed(0)
    return perturb_(tiny_peer("meanflow-s", **TINY)).eval()


def test_meanflow_starts_as_a_flow_model():
    """The interval embedding is zero-initialised: before training, u(z, r, t) does not depend on r."""
    torch.manual_seed(0)
    model = tiny_peer("meanflow-s", **TINY).eval()
    x, t, y = torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([0, 1, 2])
    peer = model.generator
    assert torch.equal(peer.velocity(x, t, y, torch.zeros(3)), peer.velocity(x, t, y, t))


def test_meanflow_depends_on_the_interval_once_trained(mf):
    x, t, y = torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([0, 1, 2])
    assert not torch.allclose(mf.generator.velocity(x, t, y, torch.zeros(3)), mf.generator.velocity(x, t, y, t))


def test_meanflow_target_is_the_identity(mf, monkeypatch):
    """With u(x, r, t) = x (t + 2 r), the loss's target is v - (t - r) (v (t + 2 r) + x): the JVP runs along
    (dx/dt, dr/dt, dt/dt) = (v, 0, 1)."""
    peer = mf.generator
    peer.config.loss_power = 0.0  # unweighted: the loss is the mean squared error summed per example
    monkeypatch.setattr(peer, "velocity", lambda x, t, labels, r=None: x * (t + 2 * r).view(-1, 1, 1, 1))
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    t, r = torch.tensor([0.9, 0.5, 0.7, 1.0]), torch.tensor([0.1, 0.5, 0.2, 0.0])
    loss, mse = peer._meanflow_loss(x, v, t, r, torch.arange(4))
    a = (t + 2 * r).view(-1, 1, 1, 1)
    target = v - (t - r).view(-1, 1, 1, 1) * (v * a + x)
    want = (x * a - target).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(loss, want.mean())
    torch.testing.assert_close(mse, want.mean() / x[0].numel())


def test_meanflow_adaptive_weight_normalises_each_example(mf):
    """p = 1: each example's weighted loss is err / (err + eps), so the loss is below 1 and near it for large errors."""
    mf.train()
    losses = mf.generator.loss(torch.randn(4, 4, 16, 16) * 3, torch.arange(4))
    assert 0.5 < losses["loss"].item() < 1.0 and losses["mse"] > 0
    losses["loss"].backward()
    grads = [p.grad for p in mf.generator.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    interval = mf.generator.dit.transformer_blocks[0].norm1.emb.interval_embedder.linear_2.weight.grad
    assert interval is not None and interval.abs().sum() > 0  # the (t - r) embedding learns


def test_meanflow_steps_move_by_the_average_velocity(mf, monkeypatch):
    """z_r = z_t - (t - r) u(z_t, r, t): with u = z, one step from 1 to 0 gives 0, two give z_1 / 4; each step
    asks for its own interval."""
    seen = []

    def u(x, t, labels, r=None):
        seen.append((float(t[0]), float(r[0])))
        return x

    monkeypatch.setattr(mf.generator, "velocity", u)
    mf.generator.latent_std.fill_(1.0)
    x1 = torch.randn(2, 4, 16, 16)
    assert torch.equal(mf.generator.sample({"dit": {"x1": x1}}, torch.tensor([0, 1]), (1,)), torch.zeros_like(x1))
    torch.testing.assert_close(mf.generator.sample({"dit": {"x1": x1}}, torch.tensor([0, 1]), (2,)), x1 / 4)
    assert seen == [(1.0, 0.0), (1.0, 0.5), (0.5, 0.0)]
    assert mf.generator.passes(2) == 2


def test_meanflow_is_per_image_and_refuses_heun(mf):
    a = mf.generate(4, seed=3, batch_size=4, steps=2)
    b = mf.generate(4, seed=3, batch_size=3, steps=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="meanflow peer samples with its own"):
        mf.generate(2, steps=2, solver="heun")
    with pytest.raises(ValueError, match="solver must be 'euler'"):
        DiTConfig(objective="meanflow", solver="heun")
    with pytest.raises(ValueError, match="objective must be one of"):
        DiTConfig(objective="consistency")


def test_meanflow_through_the_fast_sampler(mf):
    torch.testing.assert_close(mf.compile_sampler(3, steps=2)(seed=4), mf.generate(3, seed=4, steps=2), rtol=0, atol=1e-5)


def test_cli_trains_resumes_and_exports_the_meanflow_peer(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 255, (16, 32, 32), dtype=np.uint8), labels=np.arange(16) % 10)
    common = ["--batch-size", "8", "--no-progress", "--sample-every", "100", "--device", "cpu", "--ckpt-every", "2"]
    assert main(["train-vae", "--preset", "tiny-32", "--data", str(data), "--out", str(tmp_path / "vae"), "--steps", "2",
                 *common]) == 0
    run = ["train", "--vae", str(tmp_path / "vae"), "--peer", "meanflow-s", "--steps", "4", *common,
           "--set", "dit.num_layers=1", "dit.heads=2", "dit.head_dim=8"]
    assert main([*run, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as m:  # killed after its checkpoint at step 2, then resumed
        interrupt_after(m, 2)
        assert main([*run, "--out", str(tmp_path / "killed")]) == 130  # Ctrl-C: one line, exit 130
    assert main(["train", "--vae", str(tmp_path / "vae"), "--steps", "4", "--out", str(tmp_path / "killed"), "--resume",
                 *common]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    model = pe.ParScaleEAR.from_pretrained(pe.train.export(tmp_path / "killed", tmp_path / "mf-rel"))
    assert model.config.dit.objective == "meanflow" and model.config.name == "meanflow-s"
    assert main(["sample", "--ckpt", str(tmp_path / "mf-rel"), "--n", "2", "--steps", "1",
                 "--out", str(tmp_path / "mf.png")]) == 0


def test_meanflow_jvp_runs_in_float32_under_bf16_autocast(mf):
    """Training runs under bf16 autocast; MeanFlow's network and JVP do not: its target feeds du/dt back into the
    network's own training, and bf16 derivatives diverged on a GPU. The loss is the float32 loss."""
    peer = mf.generator
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    t, r = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.2, 0.6, 0.1])
    want, _ = peer._meanflow_loss(x, v, t, r, torch.arange(3))
    seen = []
    velocity = peer.velocity
    peer.velocity = lambda *a, **k: seen.append(out := velocity(*a, **k)) or out
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = peer._meanflow_loss(x, v, t, r, torch.arange(3))
    assert seen and all(o.dtype == torch.float32 for o in seen)
    torch.testing.assert_close(got, want)


def test_meanflow_peer_embeds_raw_times():
    """MeanFlow's target carries (t - r) du/dt, so its peer embeds t in [0, 1] as SiT does (time_scale 1; at DiT's
    1000 t the CPU error of a small peer rose instead of falling, docs/QUALITY.md); the flow peers keep DiT's 1000 t."""
    from parscale_ear.baselines.dit import PEERS

    assert PEERS["meanflow-s"].time_scale == 1.0 and PEERS["dit-xs"].time_scale == 1000.0
    peer = tiny_peer("meanflow-s", **TINY).generator
    seen = []
    peer.dit.forward = lambda x, timestep, **k: seen.append(timestep) or x
    peer.velocity(torch.zeros(2, 4, 16, 16), torch.tensor([0.5, 0.25]), torch.arange(2), torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(seen[0], torch.tensor([[0.5, 0.25], [0.25, 0.25]]))
    with pytest.raises(ValueError, match="time_scale"):
        DiTConfig(time_scale=0.0)


def test_init_from_a_peer_of_another_time_scale_names_the_peer_field():
    """A MeanFlow peer (raw t) started from one trained at DiT's 1000 t: the error names `--set dit.time_scale`; with
    that set, the weights load."""
    from parscale_ear.distill import init_generator

    source = tiny_peer("meanflow-s", **TINY, time_scale=1000)
    with pytest.raises(ValueError, match=r"pass --set dit\.time_scale=1000\.0$"):
        init_generator(tiny_peer("meanflow-s", **TINY), source)
    assert init_generator(tiny_peer("meanflow-s", **TINY, time_scale=1000), source) == []
