"""The one-pass objective trained by the energy distance to the data (energy_distance.py, objective "distance",
preset fmnist-32-ed1) on CPU-sized tensors."""
import pytest
import torch

import parscale_ear as pe
from parscale_ear.energy_distance import energy_distance, pooled_features


def _features(x):
    return [x]


def test_the_energy_distance_is_lowest_for_the_data_distribution():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 3, generator=g) * 2 + 1
    groups = torch.zeros(600, dtype=torch.long)
    true = torch.randn(600, 3, generator=g) * 2 + 1
    narrow = torch.randn(600, 3, generator=g) * 0.5 + 1  # a collapsed generator: attraction alone would prefer it
    shifted = true + 1.5
    best = energy_distance(_features(true), _features(real), groups)
    assert best < energy_distance(_features(narrow), _features(real), groups)
    assert best < energy_distance(_features(shifted), _features(real), groups)


def test_samples_are_compared_within_their_group_only():
    """Two classes far apart: generated samples with the right labels score lower than the same samples swapped."""
    g = torch.Generator().manual_seed(1)
    real = torch.cat([torch.randn(50, 2, generator=g) - 5, torch.randn(50, 2, generator=g) + 5])
    drawn = torch.cat([torch.randn(50, 2, generator=g) - 5, torch.randn(50, 2, generator=g) + 5])
    labels = torch.arange(100) // 50
    right = energy_distance(_features(drawn), _features(real), labels)
    wrong = energy_distance(_features(drawn.flip(0)), _features(real), labels)
    assert right < wrong - 5


def test_the_gradient_attracts_to_the_data_and_repels_the_other_samples():
    real = torch.tensor([[0.0, 0.0], [0.1, 0.0]])
    drawn = torch.tensor([[3.0, 0.0], [3.0, 0.5]], requires_grad=True)
    energy_distance(_features(drawn), _features(real), torch.zeros(2, dtype=torch.long)).backward()
    assert drawn.grad[0, 0] > 0 and drawn.grad[1, 0] > 0  # a descent step moves both toward x = 0
    assert drawn.grad[0, 1] > 0 > drawn.grad[1, 1]  # and apart from each other along y
    lone = torch.tensor([[1.0, 1.0]], requires_grad=True)  # a group of one: attraction only, still finite
    loss = energy_distance(_features(lone), _features(torch.zeros(1, 2)), torch.zeros(1, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(lone.grad).all() and loss.item() == pytest.approx(2 ** 0.5, rel=1e-4)


def test_pooled_features_cover_every_scale_and_need_a_square_grid():
    tokens = torch.randn(2, 64, 16)  # an 8 x 8 grid
    feats = pooled_features(tokens)
    assert [f.shape[1] for f in feats] == [64 * 16, 16 * 16, 4 * 16, 16]
    whole = tokens.mean(1) / 4.0  # one block: the mean token, divided by sqrt(16)
    torch.testing.assert_close(feats[-1], whole)
    with pytest.raises(ValueError, match="square grid, got 80 tokens"):
        pooled_features(torch.randn(2, 80, 16))


def test_a_distance_stage_trains_at_pure_noise_and_samples_in_one_pass(monkeypatch):
    torch.manual_seed(0)
    model = pe.create_model("fmnist-32-ed1", hybrid={"fine": {"depth": 1, "width": 32, "heads": 2}})
    gen = model.generator
    assert gen.default_steps() == (1,) and model.config.hybrid.coarse_steps == 0
    stage = gen.fine
    seen = []
    hidden = stage.hidden
    monkeypatch.setattr(stage, "hidden", lambda x, t, *a, **k: seen.append(t) or hidden(x, t, *a, **k))
    z = torch.randn(8, 4, 16, 16)
    gen.fit_token_scales(z)
    losses = gen.loss(z, torch.arange(8) % 2)
    assert torch.isfinite(losses["loss"]) and all(bool((t == 1).all()) for t in seen)
    losses["loss"].backward()
    assert stage.mean_out.weight.grad.abs().sum() > 0
    model.eval()
    assert model.generate(2, seed=0).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="one-pass generator; use 1 step"):
        model.generate(2, seed=0, steps=2)


def test_distance_and_step_settings_are_checked():
    with pytest.raises(ValueError, match="objective 'distance' is a plain one-pass stage"):
        pe.FlowConfig(kind="flow", objective="distance")
    with pytest.raises(ValueError, match=r"steps must be >= 1 \(in mode 'full'\)"):
        pe.create_model("fmnist-32-flow1", mode="full", hybrid={"coarse_steps": 0})
    with pytest.raises(ValueError, match=r"steps must be >= 1 \(in mode 'no_coarse'\)"):
        pe.create_model("fmnist-32-flow1", hybrid={"coarse_steps": 0, "fine_steps": 0})


def test_the_batched_distance_equals_the_sum_over_groups():
    """All pairs at once, masked to their groups, give each group's E||g - y|| - 1/2 E||g - g'|| weighted by its size."""
    g = torch.Generator().manual_seed(0)
    drawn = [torch.randn(30, 5, generator=g), torch.randn(30, 2, generator=g)]
    real = [torch.randn(30, 5, generator=g), torch.randn(30, 2, generator=g)]
    groups = torch.randint(0, 4, (30,), generator=g)
    groups[0] = 9  # a group of one: no repulsion
    want = 0.0
    for c in torch.unique(groups):
        rows = groups == c
        n = int(rows.sum())
        for d, r in zip(drawn, real):
            a, b = d[rows], r[rows]
            loss = torch.cdist(a, b).mean()
            if n > 1:
                loss = loss - 0.5 * torch.cdist(a, a).sum() / (n * (n - 1))
            want = want + loss * n / 30
    torch.testing.assert_close(energy_distance(drawn, real, groups), want, rtol=1e-4, atol=1e-4)
