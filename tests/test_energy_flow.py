"""The energy-flow stage (noise through backbone and head, energy score per token and per stage) on
tiny CPU configs."""
import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.solvers import time_grid
from parscale_ear.energy_head import energy_score_loss, energy_score_samples

from helpers import perturb_, v_stage


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
    model.generator.fit_token_scales(latents)
    losses = model.generator.loss(latents, torch.arange(6) % 10)
    assert set(losses) == {"coarse", "fine", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    fine = model.generator.fine
    # the head's output layer is zero-initialised (EAR): at the first step only it gets gradient
    assert fine.head.out.weight.grad.abs().sum() > 0
    assert fine.blocks[0].ada.weight.grad.abs().sum() == 0
    assert fine.num_tokens == 64 and fine.token_dim == 16  # 2x2 patches of 4 channels


def test_flow_all_parameters_train_after_one_step():
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow"))
    latents = torch.randn(6, 4, 16, 16)
    model.generator.loss(latents, torch.arange(6))["loss"].backward()
    dead = [n for n, p in model.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_flow_images_do_not_depend_on_batch(flow):
    a = flow.generate(5, seed=3, batch_size=5, cfg=2.0)
    b = flow.generate(5, seed=3, batch_size=2, cfg=2.0)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[0], flow.generate(1, seed=4, labels=[3])[0], atol=1e-3)


def test_flow_noise_enters_the_backbone(flow):
    """Changing one token's noise changes other tokens' hidden states (joint sampling)."""
    fine = flow.generator.fine
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
    assert not hasattr(model.generator.fine, "stream_prefix") and not hasattr(model.generator.fine, "aggregate")


def test_flow_save_load_round_trip(tmp_path, flow):
    flow.save_pretrained(tmp_path / "rel")
    same = pe.ParScaleEAR.from_pretrained(tmp_path / "rel")
    assert torch.equal(same.generate(3, seed=1), flow.generate(3, seed=1))


def test_mean_head_variant_trains_every_part_and_samples():
    """backbone_noise False + mean_weight: one backbone pass, x0 = mean + energy-head residual."""
    torch.manual_seed(0)
    stage = dict(kind="flow", width=32, depth=1, heads=2, streams=2, prefix_len=2, head_width=32, head_depth=1,
                 noise_dim=8, max_steps=4, backbone_noise=False, mean_weight=1.0, samples=3)
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": stage, "fine": dict(stage)}))
    fine = model.generator.fine
    assert fine.noise_in is None and fine.mean_out is not None
    model.generator.loss(torch.randn(6, 4, 16, 16), torch.arange(6))["loss"].backward()
    dead = [n for n, p in model.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    model.eval()
    a = model.generate(2, labels=[1, 2], seed=0, steps=(2, 2), cfg=1.5)
    b = model.generate(2, labels=[1, 2], seed=0, steps=(2, 2), cfg=1.5)
    c = model.generate(2, labels=[1, 2], seed=5, steps=(2, 2), cfg=1.5)
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b) and not torch.allclose(a, c)
    # temperature 0 gives the mean path: the head's residual is switched off, the noise then only moves x_1
    with torch.no_grad():
        x = torch.randn(2, 64, 16)
        xi = torch.rand(2, 4, 64, 8) - 0.5
        cold = fine.sample(xi, x, torch.tensor([1, 2]), steps=1, temperature=0.0, context=torch.zeros(2, 64, 16))
        other = fine.sample(xi.flip(0), x, torch.tensor([1, 2]), steps=1, temperature=0.0, context=torch.zeros(2, 64, 16))
    torch.testing.assert_close(cold, other)


def test_mean_head_needs_a_noise_free_backbone():
    with pytest.raises(ValueError, match="mean_weight > 0 needs backbone_noise False"):
        pe.FlowConfig(kind="flow", mean_weight=1.0)


def test_v_mean_stage_at_temperature_zero_is_an_euler_flow_solver():
    """mean_param 'v': x0 = x_t - t v, so the DDIM step with the mean x0 is x_t + (t' - t) v."""
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(), "fine": v_stage()})).eval()
    fine = model.generator.fine
    x = torch.randn(2, 64, 16)
    labels, ctx = torch.tensor([1, 2]), torch.randn(2, 64, 16)
    xi = torch.rand(2, 4, 64, 8) - 0.5
    with torch.no_grad():
        got = fine.sample(xi, x, labels, steps=3, temperature=0.0, context=ctx)
        want = x.clone()
        times = time_grid(3)
        for t, t_next in zip(times[:-1], times[1:]):
            v = fine.mean_out(fine.hidden(want, torch.full((2,), t), None, labels, ctx))
            want = want + (t_next - t) * v
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_v_mean_loss_is_the_rectified_flow_loss_plus_the_energy_score(monkeypatch):
    """With the energy terms switched off (global_weight 0, zero-output head) the loss is mean_weight
    times the MSE of the v head against eps - x0."""
    torch.manual_seed(0)
    stage = v_stage(global_weight=0.0)
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": stage, "fine": dict(stage)}))
    fine = model.generator.fine
    tokens = torch.randn(4, 64, 16)
    torch.manual_seed(1)
    loss = fine.loss(tokens, torch.arange(4), torch.zeros(4, 64, 16))
    # replay the same draws: t, eps, xi (the class dropout draw comes first)
    torch.manual_seed(1)
    drop = torch.rand(4) < stage.get("class_dropout", 0.1)
    labels = torch.where(drop, torch.full((4,), fine.null_class), torch.arange(4))
    t = fine._times(4, "cpu")
    eps = torch.randn_like(tokens)
    xi = torch.rand(3 * 4, 64, 8) - 0.5
    x_t = (1 - t[:, None, None]) * tokens + t[:, None, None] * eps
    with torch.no_grad():
        h = fine.hidden(x_t, t, None, labels, torch.zeros(4, 64, 16))
        mse = torch.nn.functional.mse_loss(fine.mean_out(h), eps - tokens)
        mean = fine.mean_x0(h, x_t, t)
        res = fine.residual(h.repeat(3, 1, 1), fine.condition(t, labels, h.dtype).repeat(3, 1), xi).view(3, 4, 64, 16)
        energy = energy_score_samples(mean[None] + res, tokens)
    torch.testing.assert_close(loss.detach(), energy + mse, rtol=1e-5, atol=1e-6)


def test_residual_blocks_draw_neighbouring_tokens_jointly():
    """Without residual blocks the head draws each token from its own noise; with them, one token's
    noise moves the other tokens' residuals too. The mean does not depend on the noise either way."""
    torch.manual_seed(0)
    for blocks, coupled in ((0, False), (1, True)):
        stage = v_stage(residual_blocks=blocks)
        model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": stage, "fine": dict(stage)})).eval()
        fine = model.generator.fine
        assert (len(fine.residual_blocks) == blocks) and ((fine.residual_noise_in is not None) == bool(blocks))
        x, labels, ctx = torch.randn(1, 64, 16), torch.tensor([3]), torch.randn(1, 64, 16)
        xi = torch.rand(1, 4, 64, 8) - 0.5
        xi2 = xi.clone()
        xi2[:, :, 0] = torch.rand(8) - 0.5  # new noise for token 0 only
        with torch.no_grad():
            a = fine.sample(xi, x, labels, steps=1, context=ctx)
            b = fine.sample(xi2, x, labels, steps=1, context=ctx)
            cold_a = fine.sample(xi, x, labels, steps=1, temperature=0.0, context=ctx)
            cold_b = fine.sample(xi2, x, labels, steps=1, temperature=0.0, context=ctx)
        assert not torch.allclose(a[:, 0], b[:, 0])
        assert torch.allclose(a[:, 1:], b[:, 1:]) != coupled
        torch.testing.assert_close(cold_a, cold_b)


def test_residual_blocks_variant_trains_every_part_and_generates_per_image():
    torch.manual_seed(0)
    stage = v_stage(residual_blocks=1)
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": stage, "fine": dict(stage)}))
    model.generator.loss(torch.randn(6, 4, 16, 16), torch.arange(6))["loss"].backward()
    dead = [n for n, p in model.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    model.eval()
    both = model.generate(3, labels=[1, 2, 3], seed=4, steps=(2, 2), cfg=2.0, temperature=0.7, batch_size=3)
    one = model.generate(1, labels=[3], seed=6, steps=(2, 2), cfg=2.0, temperature=0.7)
    torch.testing.assert_close(both[2:], one, rtol=1e-5, atol=1e-5)
    sampler = model.compile_sampler(3, steps=(2, 2), cfg=2.0, temperature=0.7)
    assert torch.equal(sampler(seed=4, labels=[1, 2, 3]), both)


def test_residual_grad_scales_the_energy_scores_gradient_into_the_backbone():
    """The loss is the same for every residual_grad; the backbone's gradient is the MSE's plus
    residual_grad times the score's (so 0.5 lies halfway between 0 and 1), and the residual path
    itself always learns from the whole score."""
    losses, grads, head_grads = {}, {}, {}
    for w in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        stage = v_stage(residual_blocks=1, residual_grad=w)
        model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": stage, "fine": dict(stage)}))
        fine = model.generator.fine
        torch.manual_seed(1)
        losses[w] = fine.loss(torch.randn(4, 64, 16), torch.arange(4), torch.randn(4, 64, 16))
        losses[w].backward()
        grads[w] = torch.cat([p.grad.flatten() for p in fine.blocks.parameters()])
        head_grads[w] = torch.cat([p.grad.flatten() for p in fine.head.parameters()])
    torch.testing.assert_close(losses[0.0], losses[1.0])
    torch.testing.assert_close(losses[0.5], losses[1.0])
    assert not torch.allclose(grads[0.0], grads[1.0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(grads[0.5], (grads[0.0] + grads[1.0]) / 2, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(head_grads[0.0], head_grads[1.0])


def test_logit_normal_times_and_the_one_step_share():
    torch.manual_seed(0)
    fine = pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(), "fine": v_stage(one_step_prob=0.25)}).generator.fine
    t = fine._times(20000, "cpu")
    ones = (t == 1).float().mean().item()
    rest = t[t < 1]
    assert 0.23 < ones < 0.27 and rest.min() > 0
    # sigmoid(N(0, 1)): median 0.5, and far fewer draws near 0 or 1 than uniform times
    assert abs(rest.median().item() - 0.5) < 0.02 and (rest < 0.05).float().mean() < 0.01


@pytest.mark.parametrize("kwargs,match", [
    (dict(residual_blocks=1), "residual_blocks > 0 needs a mean head"),
    (dict(residual_grad=1.5), "residual_grad must be in"),
    (dict(backbone_noise=False, residual_grad=0.0), "residual_grad < 1 needs a mean head"),
    (dict(time_dist="cosine"), "time_dist must be"),
])
def test_mean_head_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pe.FlowConfig(kind="flow", **kwargs)


def _gaussian_data_stage():
    """The fine stage of a tiny v-mean model whose mean is exact for data x0 ~ N(0, s^2) per coordinate:
    E[x0 | x_t] = (1 - t) s^2 / ((1 - t)^2 s^2 + t^2) x_t. Its probability-flow ODE maps x_1 to
    sigma(t) / sigma(1) x_1 with sigma(t)^2 = (1 - t)^2 s^2 + t^2, so x_0 = s x_1 exactly."""
    s = 1.0
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(), "fine": v_stage()})).eval()
    fine = model.generator.fine
    fine.hidden = lambda x, t, xb, labels, ctx: x  # noqa: E731  (the "hidden state" carries x_t)
    fine.mean_x0 = lambda h, x, t: (1 - t)[:, None, None] * s**2 / ((1 - t) ** 2 * s**2 + t**2)[:, None, None] * x  # noqa: E731
    return fine, s


def test_heun_solves_the_flow_more_accurately_than_euler_at_equal_passes():
    fine, s = _gaussian_data_stage()
    x1, labels = torch.randn(2, 64, 16, dtype=torch.float64), torch.tensor([1, 2])
    xi = torch.zeros(2, 4, 64, 8, dtype=torch.float64)

    def error(steps, solver):
        fine.config.solver = solver
        out = fine.sample(xi, x1, labels, steps=steps, temperature=0.0)
        return (out - s * x1).abs().max().item()

    euler = {k: error(k, "euler") for k in (2, 3, 4)}
    heun = {k: error(k, "heun") for k in (2, 3, 4)}
    fine.config.solver = "heun"
    assert fine.passes(3) == 5 and fine.passes(1) == 1  # no correction on the last step
    assert heun[3] < euler[4] / 2 and heun[4] < euler[4] / 4  # 5 Heun passes beat 4 Euler passes by 2x
    assert heun[2] / heun[4] > 3.5 and euler[2] / euler[4] < 2.5  # halving the step: second order against first
    assert error(1, "heun") == error(1, "euler")  # one step is the last: nothing to correct
    fine.config.solver = "euler"


def test_heun_is_counted_and_skips_the_steps_the_energy_head_draws():
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(residual_blocks=1, solver="heun"),
                                                             "fine": v_stage(residual_blocks=1, solver="heun")})).eval()
    fine = model.generator.fine
    assert [fine.passes(4), fine.passes(4, temperature=0.5)] == [7, 4]  # every step draws at temperature > 0
    from parscale_ear.evaluation.quality import Schedule, passes_per_image

    assert passes_per_image(model, Schedule((3, 4), 1.0, 0.0)) == 5 + 7
    assert passes_per_image(model, Schedule((3, 4), 2.0, 0.0)) == 2 * (5 + 7)
    heun = model.generate(2, labels=[3, 4], steps=(2, 3), cfg=1.5, temperature=0.0, seed=0)
    fast = model.compile_sampler(2, (2, 3), 1.5, 0.0)(seed=0, labels=[3, 4])  # the public fast path: the same images
    assert torch.equal(fast, heun)
    model.generator.coarse.config.solver = model.generator.fine.config.solver = "euler"
    euler = model.generate(2, labels=[3, 4], steps=(2, 3), cfg=1.5, temperature=0.0, seed=0)
    assert torch.isfinite(heun).all() and not torch.allclose(heun, euler)
    # per call, through the public API: the same images as the configs set to heun, the configs untouched
    assert torch.equal(model.generate(2, labels=[3, 4], steps=(2, 3), cfg=1.5, temperature=0.0, seed=0, solver="heun"), heun)
    sampler = model.compile_sampler(2, (2, 3), 1.5, 0.0, solver="heun")
    assert torch.equal(sampler(seed=0, labels=[3, 4]), heun) and sampler.settings["solver"] == "heun"
    assert model.generator.fine.config.solver == "euler" and model.generator.passes((2, 3), 0.0, "heun") == 3 + 5
    with pytest.raises(ValueError, match="solver must be 'euler' or 'heun'"):
        model.generate(1, solver="rk4")


def test_heun_is_refused_where_there_is_no_mean_path():
    mar = pe.create_model("tiny-32").eval()  # MAR stages: no flow path at all
    with pytest.raises(ValueError, match="take no flow solver"):
        mar.generate(1, solver="heun")
    with pytest.raises(ValueError, match="take no flow solver"):
        mar.compile_sampler(1, solver="heun")
    flow = pe.create_model("tiny-32-flow").eval()  # flow stages drawn by the energy head alone
    with pytest.raises(ValueError, match="solver 'heun' needs a flow stage with a mean head"):
        flow.generate(1, solver="heun")
    with pytest.raises(ValueError, match="take no flow solver"):  # a flag that would change nothing is refused too
        mar.generate(1, solver="euler")
    assert mar.generate(1).shape == (1, 1, 32, 32)


def test_solver_is_checked():
    with pytest.raises(ValueError, match="solver must be 'euler' or 'heun'"):
        pe.FlowConfig(**v_stage(solver="rk4"))
    with pytest.raises(ValueError, match="solver 'heun' needs a flow stage with a mean head"):
        pe.FlowConfig(kind="flow", solver="heun")


def test_retired_stage_options_load_only_at_their_off_value(tmp_path, capsys):
    """noise_blocks, head_steps and mean_param left the stage config: a stored config holding them at the value that
    meant "off" loads as the same model; any other value is a one-line error naming the field. time_shift, retired
    once, is a sampling option again with the same meaning: a stored value is read as it was written."""
    import json

    from parscale_ear.stage_kinds import stage_config
    from parscale_ear.cli import main

    stored = {**v_stage(), "noise_blocks": 0, "head_steps": 0, "mean_param": "v"}
    assert stage_config(stored, "hybrid.fine") == pe.FlowConfig(**v_stage())
    assert stage_config({**v_stage(), "time_shift": 1.0}, "hybrid.fine") == pe.FlowConfig(**v_stage())
    assert stage_config({**v_stage(), "time_shift": 1.5}, "hybrid.fine").time_shift == 1.5
    assert stage_config({"kind": "mar", "time_shift": 1.0}, "hybrid.coarse") == pe.MARConfig()  # 0.2 stored it there
    with pytest.raises(ValueError, match="hybrid.coarse.time_shift = 1.5: this option was removed"):
        stage_config({"kind": "mar", "time_shift": 1.5}, "hybrid.coarse")
    plain = {"kind": "flow", "mean_param": "x0"}  # no mean head: mean_param did nothing
    assert stage_config(plain, "hybrid.fine") == pe.FlowConfig(kind="flow")
    for key, value in (("noise_blocks", 1), ("head_steps", 2), ("mean_param", "x0")):
        with pytest.raises(ValueError, match=f"hybrid.fine.{key} = {value!r}: this option was removed"):
            stage_config({**v_stage(), key: value}, "hybrid.fine")
    from pathlib import Path

    old = json.loads((Path(__file__).parent / "data" / "fmnist-32-es-0.1.0-config.json").read_text())["config"]
    assert old["hybrid"]["fine"]["head_steps"] == 0  # the shipped model's config as 0.1 wrote it: still loads
    assert pe.ParScaleEARConfig.from_dict(old).hybrid.fine == pe.get_config("fmnist-32-es").hybrid.fine
    assert pe.create_model("tiny-32-flow", hybrid={"fine": {"head_steps": 0}}).config == pe.get_config("tiny-32-flow")
    with pytest.raises(ValueError, match="mean_param = 'x0': this option was removed"):
        pe.create_model("tiny-32-flow", hybrid={"fine": {**v_stage(), "mean_param": "x0"}})
    code = main(["train-vae", "--preset", "tiny-32-flow", "--out", str(tmp_path / "vae"), "--steps", "1", "--device", "cpu",
                 "--set", "hybrid.fine.head_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "head_steps = 1: this option was removed" in err and err.count("\n") == 1, err
    assert not (tmp_path / "vae").exists()


def test_one_config_per_stage_kind():
    """MARConfig and FlowConfig share GeneratorConfig's fields and hold only their own kind's; a dict of fields
    becomes the config its kind names, and a 0.2 stage (every field of both kinds) loads as its own kind."""
    import dataclasses
    import json

    from pathlib import Path

    from parscale_ear.stage_kinds import stage_config, stored_stage

    mar, flow = ({f.name for f in dataclasses.fields(c)} for c in (pe.MARConfig, pe.FlowConfig))
    shared = {f.name for f in dataclasses.fields(pe.GeneratorConfig)}
    assert shared <= mar & flow and "samples" not in mar and "mask_ratio_min" not in flow
    with pytest.raises(TypeError, match="build MARConfig or FlowConfig"):
        pe.GeneratorConfig()
    assert isinstance(stage_config({"kind": "flow", "samples": 4}, "hybrid.fine"), pe.FlowConfig)
    assert isinstance(stage_config({"width": 64, "heads": 2}, "hybrid.fine"), pe.FlowConfig)  # the default kind
    with pytest.raises(ValueError, match="kind must be one of"):
        stage_config({"kind": "gan"}, "hybrid.fine")
    old = json.loads((Path(__file__).parent / "data" / "fmnist-32-es-0.1.0-config.json").read_text())["config"]
    stored = old["hybrid"]["fine"]
    assert {"mask_ratio_min", "samples"} <= set(stored)  # written by 0.1 and 0.2 with every field
    assert stage_config(stored_stage(stored, "hybrid.fine"), "hybrid.fine") == pe.get_config("fmnist-32-es").hybrid.fine
    with pytest.raises(ValueError, match="hybrid.fine.mask_ratio_min: a field of 'mar' stages, not of a 'flow' stage"):
        stage_config({**stored, "mask_ratio_min": 0.5}, "hybrid.fine")
    with pytest.raises(ValueError, match="hybrid.fine.samples: a field of 'flow' stages, not of a 'mar' stage"):
        pe.create_model("tiny-32", hybrid={"fine": {"samples": 4}})  # a flow field on a MAR stage
    model = pe.create_model("tiny-32", hybrid={"fine": {"kind": "flow", "max_steps": 4}})  # the stage changes kind
    assert isinstance(model.config.hybrid.fine, pe.FlowConfig) and model.config.hybrid.fine.width == 32


def test_a_plain_flow_stage_has_no_energy_head_and_learns_the_velocity_alone():
    torch.manual_seed(0)
    stage = v_stage(energy_head=False, one_step_prob=0.0, solver="heun")
    model = perturb_(pe.create_model("tiny-32-flow", streams=1, hybrid={"coarse": stage, "fine": dict(stage)}))
    fine = model.generator.fine
    assert fine.head is None and not any(".head." in f".{n}" for n, _ in model.named_parameters())
    latents = torch.randn(6, 4, 16, 16)
    model.generator.fit_token_scales(latents)
    losses = model.generator.loss(latents, torch.arange(6))
    losses["loss"].backward()
    dead = [n for n, p in model.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert torch.isfinite(losses["loss"]) and dead == []
    model.eval()
    images = model.generate(2, labels=[0, 1], steps=(2, 2), temperature=0.0, seed=0)
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    assert model.generator.passes((2, 2), 0.0) == 6  # Heun: 2 steps - 1 passes a stage
    with pytest.raises(ValueError, match="no energy head"):
        model.generate(2, labels=[0, 1], steps=(2, 2), temperature=0.5, seed=0)


@pytest.mark.parametrize("bad", [dict(objective="energy", mean_weight=0.0), dict(mean_weight=0.0),
                                 dict(residual_blocks=1)])
def test_a_plain_flow_stage_refuses_what_needs_the_head(bad):
    with pytest.raises(ValueError, match="energy_head False"):
        pe.create_model("tiny-32-flow", hybrid={"fine": {**v_stage(energy_head=False), **bad}})


def test_defaults_are_the_shipped_designs_kind_and_stored_configs_read_as_they_did():
    """A stage or hybrid built without a kind is the shipped design's (flow stages, 2x2 fine patches, 2 + 2 steps);
    a stored config that omitted a field reads with that field's earlier default (the MAR design), so it loads as
    the model it was."""
    from parscale_ear.hybrid import HybridConfig

    hybrid = HybridConfig()
    assert isinstance(hybrid.coarse, pe.FlowConfig) and isinstance(hybrid.fine, pe.FlowConfig)
    assert (hybrid.fine_patch, hybrid.coarse_steps, hybrid.fine_steps) == (2, 2, 2)
    assert pe.ParScaleEAR().generate(1, seed=0).shape == (1, 1, 32, 32)  # the default config builds and samples
    mar = pe.get_config("tiny-32").to_dict()
    old = {**mar, "hybrid": {k: v for k, v in mar["hybrid"].items() if k not in ("fine_patch", "coarse_steps")}}
    for stage in ("coarse", "fine"):
        old["hybrid"][stage] = {k: v for k, v in mar["hybrid"][stage].items() if k != "kind"}
    read = pe.ParScaleEARConfig.from_dict(old)
    assert isinstance(read.hybrid.fine, pe.MARConfig) and read.hybrid.fine_patch == 1 and read.hybrid.coarse_steps == 4
    assert read == pe.ParScaleEARConfig.from_dict({**mar, "hybrid": {**mar["hybrid"], "coarse_steps": 4}})
    assert isinstance(pe.ParScaleEARConfig.from_dict({"name": "x"}).hybrid.coarse, pe.MARConfig)  # 0.3's default


def test_a_field_that_does_nothing_is_refused_or_left_out():
    """residual_grad only weights the score's gradient under objective 'flow' with a mean head: the energy objective
    keeps every gradient, so another value is refused; a stored student that holds one (0.1 wrote the shipped
    model so) loads without it, as the same model."""
    import json

    from parscale_ear.release import DEFAULT_MODEL

    with pytest.raises(ValueError, match="residual_grad applies to objective 'flow'"):
        pe.create_model("fmnist-32-es", hybrid={"fine": {"residual_grad": 0.0}})
    with pytest.raises(ValueError, match="residual_grad applies to objective 'flow'"):
        pe.FlowConfig(**{**v_stage(), "mean_weight": 0.0, "objective": "energy", "residual_grad": 0.5})
    stored = pe.get_config("fmnist-32-es").to_dict()
    stored["hybrid"]["fine"]["residual_grad"] = 0.0
    assert pe.ParScaleEARConfig.from_dict(stored) == pe.get_config("fmnist-32-es")
    shipped = json.loads((DEFAULT_MODEL / "config.json").read_text())["config"]
    assert all(shipped["hybrid"][s]["residual_grad"] == 1.0 for s in ("coarse", "fine"))


def _meanflow_pair():
    """A plain one-stage flow model (perturbed, so nothing is zero) and a MeanFlow model initialised from it."""
    from parscale_ear.distill import init_generator

    plain = {**v_stage(energy_head=False, one_step_prob=0.0), "streams": 1}
    torch.manual_seed(0)
    flow = perturb_(pe.create_model("tiny-32-flow", mode="no_coarse", hybrid={"fine": plain})).eval()
    mean = pe.create_model("tiny-32-flow", mode="no_coarse", hybrid={"fine": {**plain, "objective": "meanflow"}}).eval()
    new = init_generator(mean, flow)
    mean.vae.load_state_dict(flow.vae.state_dict())  # the same decoder
    return flow, mean, new


def test_a_meanflow_stage_initialised_from_a_flow_stage_samples_as_that_flow():
    """MeanFlow fine-tuned from a flow model starts as it: the interval embedding (the only new weights) is zero, so
    u(z, r, t) = v(z, t) and each one-pass step is the flow's Euler step."""
    flow, mean, new = _meanflow_pair()
    assert new and all(".interval_embed." in f".{n}" for n in new)
    for steps in (1, 2, 4):
        a = flow.generate(3, labels=[0, 1, 2], steps=steps, temperature=0.0, solver="euler", seed=5)
        b = mean.generate(3, labels=[0, 1, 2], steps=steps, temperature=0.0, seed=5)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert mean.generator.passes(2, 0.0) == 2
    with pytest.raises(ValueError, match="average velocity"):
        mean.generate(1, labels=[0], steps=2, temperature=0.0, solver="heun")


def test_time_scale_is_what_the_stage_embeds_and_init_refuses_another():
    """time_scale multiplies t inside the time embedding (1000: DiT's steps; 1: raw t, as SiT and MeanFlow): the same
    weights give another velocity; --init from a source of another time_scale is a one-line error naming the fix."""
    from parscale_ear.distill import init_generator

    plain = {**v_stage(), "energy_head": False}
    flow = perturb_(pe.create_model("tiny-32-flow", mode="no_coarse", hybrid={"fine": plain})).eval()
    raw = pe.create_model("tiny-32-flow", mode="no_coarse", hybrid={"fine": {**plain, "time_scale": 1.0}}).eval()
    with pytest.raises(ValueError, match=r"time_scale 1.0, its source with 1000.0: pass --set hybrid.fine.time_scale"):
        init_generator(raw, flow)
    raw.generator.load_state_dict(flow.generator.state_dict())
    stage, same = flow.generator.fine, raw.generator.fine
    x, t, y = torch.randn(2, stage.num_tokens, stage.token_dim), torch.tensor([0.9, 0.6]), torch.tensor([0, 1])
    assert not torch.allclose(stage.hidden(x, t, None, y), same.hidden(x, t, None, y))
    torch.testing.assert_close(stage.hidden(x, t, None, y), same.hidden(x, t * 1000.0, None, y))
    with pytest.raises(ValueError, match="time_scale"):
        pe.FlowConfig(**{**plain, "time_scale": -1.0})


def test_a_meanflow_stage_trains_every_part_and_depends_on_the_interval():
    _, mean, _ = _meanflow_pair()
    perturb_(mean, seed=1).train()
    latents = torch.randn(6, 4, 16, 16)
    torch.manual_seed(0)
    losses = mean.generator.loss(latents, torch.arange(6))
    losses["loss"].backward()
    dead = [n for n, p in mean.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert torch.isfinite(losses["loss"]) and 0 < losses["loss"].item() < 1 and dead == []  # adaptive weight: < 1
    stage = mean.generator.fine.eval()
    x, t, y = torch.randn(2, stage.num_tokens, stage.token_dim), torch.tensor([0.9, 0.6]), torch.tensor([0, 1])
    assert not torch.allclose(stage.hidden(x, t, None, y, r=torch.zeros(2)), stage.hidden(x, t, None, y, r=t))


def test_the_meanflow_target_is_the_identity_on_tokens():
    """meanflow_loss with u(x, t, r) = x (t + 2 r) on tokens (B, N, D): the target is v - (t - r) (v (t + 2 r) + x),
    the JVP running along (v, 1, 0); power 0 leaves the squared error summed per example."""
    from parscale_ear.meanflow import interval, meanflow_loss

    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g)
    t, r = torch.tensor([0.9, 0.5, 0.7, 1.0]), torch.tensor([0.1, 0.5, 0.2, 0.0])
    loss, mse = meanflow_loss(lambda x, t, r: x * (t + 2 * r).view(-1, 1, 1), x, v, t, r, power=0.0)
    a = (t + 2 * r).view(-1, 1, 1)
    want = (x * a - (v - (t - r).view(-1, 1, 1) * (v * a + x))).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(loss, want.mean())
    torch.testing.assert_close(mse, want.mean() / 15)
    t2, r2 = interval(torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.3]), ratio=1.0)
    assert torch.equal(t2, torch.tensor([0.6, 0.8])) and torch.equal(r2, torch.tensor([0.2, 0.3]))
    assert torch.equal(interval(torch.tensor([0.2]), torch.tensor([0.6]), ratio=0.0)[1], torch.tensor([0.6]))


@pytest.mark.parametrize("bad", [dict(energy_head=True, mean_weight=1.0), dict(solver="heun")])
def test_a_meanflow_stage_refuses_what_it_cannot_use(bad):
    with pytest.raises(ValueError, match="meanflow"):
        pe.create_model("tiny-32-flow", hybrid={"fine": {**v_stage(energy_head=False, objective="meanflow"), **bad}})


def test_the_one_stage_flow_presets_fit_together():
    """fmnist-32-flow1 (one plain flow network on the whole grid) initialises its MeanFlow and energy-student
    versions: each takes all of its weights, and only their own parts (the interval embedding; the energy head and
    its residual path) start new."""
    from parscale_ear.distill import init_generator

    flow = pe.create_model("fmnist-32-flow1")
    fine = flow.generator.fine
    assert list(flow.generator.stages) == ["fine"] and fine.head is None and fine.config.streams == 1
    assert fine.num_tokens == 64 and len(fine.blocks) == 10 and flow.generator.passes() == 9  # 5 Heun steps
    mean, student = pe.create_model("fmnist-32-mf1"), pe.create_model("fmnist-32-es1")
    assert mean.generator.passes() == 2 and student.generator.passes(temperature=1.0) == 2
    assert {n.split(".")[1] for n in init_generator(mean, flow)} == {"interval_embed"}
    assert {n.split(".")[1] for n in init_generator(student, flow)} == {"head", "residual_noise_in", "residual_blocks"}


def _tiny_flow_model(**fine):
    """tiny-32-flow with these fields in both stages (P = 2, backbone noise: every repeat of the conditioning)."""
    return pe.create_model("tiny-32-flow", hybrid={"coarse": dict(fine), "fine": dict(fine)})


def test_time_shift_sets_the_sampling_grid(monkeypatch):
    """time_shift moves the grid of every step (SD3's shift; 1: the even grid) and is a per-schedule setting."""
    from parscale_ear.evaluation.quality import parse_schedules

    model = _tiny_flow_model(time_shift=3.0).eval()
    seen = []
    stage = model.generator.coarse  # the first stage: no context from an earlier one
    hidden = stage.hidden
    monkeypatch.setattr(stage, "hidden", lambda x, t, *a, **k: seen.append(round(t[0].item(), 6)) or hidden(x, t, *a, **k))
    noise = stage.draw_batch(2, "cpu", torch.float32)
    stage.sample(noise.get("xi"), noise["x1"], torch.arange(2), steps=2, temperature=1.0)
    assert seen == [round(t, 6) for t in time_grid(2, 3.0)[:2]] and seen[1] > 0.5
    assert parse_schedules("3@1@0@time_shift=2;3@1@0@fine.time_shift=0.5")[1].settings == {"fine.time_shift": 0.5}
    with pytest.raises(ValueError, match="time_shift must be a number"):
        parse_schedules("3@1@0@time_shift=x")
    with pytest.raises(ValueError, match="FlowConfig.time_shift: expected a finite number > 0"):
        pe.FlowConfig(kind="flow", time_shift=0.0)


def test_sincos_positions_are_fixed_and_not_weights():
    model = _tiny_flow_model(pos_embed="sincos")
    fine = model.generator.fine
    assert "pos_embed" not in dict(fine.named_parameters()) and not any("pos_embed" in k for k in fine.state_dict())
    side = int(fine.num_tokens ** 0.5)
    pos = fine.pos_embed.view(side, side, -1)
    half = pos.shape[-1] // 2
    assert torch.equal(pos[0, :, :half], pos[0, :1, :half].expand(side, -1))  # one row: the same row code
    assert torch.equal(pos[:, 0, half:], pos[:1, 0, half:].expand(side, -1))  # one column: the same column code
    assert not torch.equal(pos[0, 0], pos[1, 1])
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        pe.FlowConfig(kind="flow", pos_embed="rope")


def test_sincos_positions_need_a_square_token_grid():
    from parscale_ear.energy_flow import EnergyFlowGenerator

    with pytest.raises(ValueError, match="needs a square token grid, got 12 tokens"):
        EnergyFlowGenerator(pe.FlowConfig(kind="flow", width=32, heads=2, head_width=32, pos_embed="sincos"), 12, 4, 10)


def test_block_condition_gives_each_block_its_own_time_and_class_embedding():
    """block_condition: each block's adaLN sees its own embedding of t and the label (diffusers' DiT), through P
    streams and the m draws of backbone noise; every part trains."""
    torch.manual_seed(0)
    plain = _tiny_flow_model(depth=2)
    model = perturb_(_tiny_flow_model(block_condition=True, depth=2))
    fine = model.generator.fine
    assert fine.config.streams == 2 and fine.noise_in is not None  # the repeats for P and m are exercised
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    d, depth = fine.config.width, fine.config.depth
    per_block = 256 * d + d + d * d + d + (fine.num_classes + 1) * d
    coarse = model.generator.coarse.config
    assert extra == depth * per_block + coarse.depth * (256 * coarse.width + coarse.width + coarse.width ** 2 + coarse.width
                                                        + (fine.num_classes + 1) * coarse.width)
    conds = fine.block_conditions(torch.rand(3), torch.arange(3), torch.float32)
    assert conds.shape == (3, depth, d) and not torch.allclose(conds[:, 0], conds[:, 1])
    latents = torch.randn(6, 4, 16, 16)
    model.generator.fit_token_scales(latents)
    model.generator.loss(latents, torch.arange(6))["loss"].backward()
    dead = [n for n, p in model.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    model.eval()
    out = model.generate(2, labels=[0, 1], steps=2, cfg=1.5, temperature=1.0, seed=0)
    assert torch.isfinite(out).all()


def _joint(lead: float = 2.0, **fine):
    torch.manual_seed(0)
    stage = dict(depth=1, width=32, heads=2, head_width=32, coarse_lead=lead, **fine)
    return pe.create_model("fmnist-32-flow1", mode="joint", hybrid={"fine": stage})


def test_joint_mode_maps_latents_to_coarse_means_and_residual_and_back():
    model = _joint()
    gen = model.generator
    z = torch.randn(3, 4, 16, 16)
    scales = gen.fit_token_scales(z)
    tokens = gen.tokens(z)["fine"]
    assert tokens.shape == (3, 16 + 64, 16) and set(scales) == {"coarse", "fine"}
    means = torch.nn.functional.avg_pool2d(z, 2)  # the 2 x 2 block means, 2 x 2 patches of their 8 x 8 grid
    assert torch.allclose(tokens[:, :16].reshape(3, 4, 4, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(3, 4, 8, 8), means)
    assert torch.allclose(tokens[:, 16:].reshape(3, 64, 4, 4).sum(-1), torch.zeros(3, 64, 4), atol=1e-5)  # no means
    normalised = tokens / gen._std(gen.stage_list[0])
    assert torch.allclose(normalised[:, :16].std(), torch.tensor(1.0), atol=1e-5)
    torch.testing.assert_close(gen.latents({"fine": normalised}), z)
    with pytest.raises(ValueError, match="cannot be matched to a latent-grid teacher"):
        gen.latent_noise({"fine": torch.randn(3, 80, 16)})


def test_joint_coarse_tokens_run_ahead_in_time_in_training_and_sampling(monkeypatch):
    model = _joint(lead=2.0)
    stage = model.generator.fine
    times = stage.token_times(torch.tensor([1.0, 0.5, 0.0]))
    assert times.shape == (3, 80, 1)
    assert times[1, :16].eq(0.25).all() and times[1, 16:].eq(0.5).all()
    assert times[0].eq(1).all() and times[2].eq(0).all()
    # training: x_t of each token on its own line, at its own time
    seen = {}
    hidden = stage.hidden
    monkeypatch.setattr(stage, "hidden", lambda x, t, *a, **k: seen.setdefault("x", (x, t)) and hidden(x, t, *a, **k))
    x0, eps = torch.randn(2, 80, 16), torch.randn(2, 80, 16)
    stage.loss(x0, torch.arange(2), noise=eps)
    x_t, t = seen["x"]
    tt = stage.token_times(t)
    torch.testing.assert_close(x_t, (1 - tt) * x0 + tt * eps)
    # sampling (Euler and Heun): with x0 predicted as 0 every token shrinks along its own line, to t' (coarse: t'^2)
    monkeypatch.setattr(stage, "hidden", hidden)
    monkeypatch.setattr(stage, "mean_x0", lambda h, x, t: torch.zeros_like(x))
    for solver in ("euler", "heun"):
        calls = []
        monkeypatch.setattr(stage, "_guided_hidden", lambda x, tt, *a, **k: calls.append((x, tt[0].item())) or x)
        x1 = torch.randn(2, 80, 16)
        stage.sample(None, x1, torch.arange(2), steps=2, temperature=0.0, solver=solver)
        x_half = next(x for x, t in calls[1:] if t == 0.5)
        torch.testing.assert_close(x_half[:, :16], 0.25 * x1[:, :16])
        torch.testing.assert_close(x_half[:, 16:], 0.5 * x1[:, 16:])


def test_coarse_lead_needs_a_joint_plain_flow_stage():
    with pytest.raises(ValueError, match="coarse_lead applies to a joint coarse/fine stage"):
        pe.create_model("fmnist-32-flow1", hybrid={"fine": {"coarse_lead": 2.0}})
    with pytest.raises(ValueError, match="coarse_lead != 1 needs a plain flow stage"):
        pe.FlowConfig(**v_stage(coarse_lead=2.0))
    with pytest.raises(ValueError, match="mode 'joint' needs fine_patch >= 2"):
        pe.create_model("fmnist-32-flow1", mode="joint", hybrid={"fine_patch": 1})
    with pytest.raises(ValueError, match="needs a square token grid, got 80 tokens"):
        _joint(pos_embed="sincos")


def test_block_conditions_follow_each_example_through_streams_and_draws():
    """Batched hidden states with block_condition, P = 2 streams and m = 2 backbone-noise draws equal each example's
    own: row j B + b is draw j of example b, with that example's time and label in every block."""
    torch.manual_seed(0)
    stage = perturb_(_tiny_flow_model(block_condition=True, depth=2)).generator.coarse.eval()
    B, N, D = 3, stage.num_tokens, stage.token_dim
    x, t, y = torch.randn(B, N, D), torch.rand(B), torch.tensor([0, 4, 7])
    xi = torch.rand(2 * B, N, stage.config.noise_dim) - 0.5
    batched = stage.hidden(x, t, xi, y)
    for j in range(2):
        for b in range(B):
            one = stage.hidden(x[b:b + 1], t[b:b + 1], xi[j * B + b:j * B + b + 1], y[b:b + 1])
            torch.testing.assert_close(batched[j * B + b:j * B + b + 1], one, rtol=1e-5, atol=1e-5)


def test_a_joint_model_decodes_the_block_means_from_its_coarse_tokens_alone():
    model = _joint()
    gen = model.generator
    tokens = torch.randn(2, 80, 16)
    shifted = tokens.clone()
    shifted[:, 16:] += 0.7  # the same constant in every residual value: block means only
    torch.testing.assert_close(gen.latents({"fine": shifted}), gen.latents({"fine": tokens}))
