import pytest
import torch

from parscale_ear.energy_head import EnergyHead, energy_score_loss
from parscale_ear.generator import EnergyGenerator, MARConfig, unmask_schedule

from helpers import perturb_


def small(streams=1, **kw):
    torch.manual_seed(0)
    cfg = MARConfig(width=32, depth=2, heads=2, streams=streams, prefix_len=3, head_width=32, head_depth=2, noise_dim=8, **kw)
    return EnergyGenerator(cfg, num_tokens=16, token_dim=4, num_classes=5, context_dim=4)


def inputs(B=3, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, N, 4, generator=g)
    known = torch.rand(B, N, generator=g) < 0.5
    labels = torch.randint(0, 5, (B,), generator=g)
    context = torch.randn(B, N, 4, generator=g)
    return tokens, known, labels, context


def test_energy_score_prefers_the_true_distribution():
    """On a 2-D Gaussian the expected loss is lowest for samples from the target distribution."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    y = torch.randn(n, 2, generator=g) + torch.tensor([1.0, -0.5])
    z1, z2 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)

    def score(shift=0.0, scale=1.0):
        mu = torch.tensor([1.0, -0.5]) + shift
        return energy_score_loss(mu + scale * z1, mu + scale * z2, y).item()

    true = score()
    for other in (score(shift=0.3), score(shift=-0.3), score(scale=1.5), score(scale=0.6), score(scale=0.0)):
        assert true < other - 1e-3


def test_energy_score_validates_alpha_tau_and_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="alpha"):
        energy_score_loss(x, x, x, alpha=2.0)
    with pytest.raises(ValueError, match="tau"):
        energy_score_loss(x, x, x, tau=1.5)
    with pytest.raises(ValueError, match="shapes"):
        energy_score_loss(x, x, torch.zeros(2, 4))


def test_energy_score_weight_selects_tokens():
    y = torch.zeros(1, 2, 3)
    x = torch.tensor([[[1.0, 0, 0], [5.0, 0, 0]]])
    w = torch.tensor([[1.0, 0.0]])
    assert energy_score_loss(x, x, y, weight=w).item() == pytest.approx(2.0, abs=1e-3)  # the 5.0 token would give 10


@pytest.mark.parametrize("N,K", [(16, 1), (16, 4), (16, 16), (256, 8), (5, 3)])
def test_unmask_schedule(N, K):
    s = unmask_schedule(N, K)
    assert len(s) == K and s[-1] == N and all(b > a for a, b in zip([0] + s, s))


def test_unmask_schedule_rejects_too_many_steps():
    with pytest.raises(ValueError, match="steps"):
        unmask_schedule(16, 17)


def test_single_stream_is_the_plain_model():
    """P = 1 has no prefix and no aggregation: hidden() equals a plain transformer pass."""
    gen = small(streams=1).eval()
    assert not hasattr(gen, "stream_prefix") and not hasattr(gen, "aggregate")
    tokens, known, labels, context = inputs()
    x = torch.where(known[..., None], gen.token_in(tokens), gen.mask_token) + gen.pos_embed + gen.context_in(context)
    seq = torch.cat([gen.class_embed(labels)[:, None], x], 1)
    for block in gen.blocks:
        seq = block(seq)
    assert torch.equal(gen.hidden(tokens, known, labels, context), gen.norm(seq)[:, 1:])


def test_identical_streams_reduce_to_single_stream():
    """P streams that see the same prefix aggregate (convex weights) to the single-stream output."""
    multi = small(streams=4).eval()
    single = small(streams=1).eval()
    single.load_state_dict({k: v for k, v in multi.state_dict().items() if k in single.state_dict()})
    perturb_(multi.aggregate)  # non-uniform weights
    with torch.no_grad():
        multi.stream_prefix.copy_(multi.stream_prefix[:1].expand_as(multi.stream_prefix))
    tokens, known, labels, context = inputs()
    h_multi, w = multi.hidden(tokens, known, labels, context, return_weights=True)
    assert w.shape == (3, 16, 4) and not torch.allclose(w, torch.full_like(w, 0.25))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 16))
    # reference: the single-stream model with that one prefix prepended
    x = torch.where(known[..., None], single.token_in(tokens), single.mask_token) + single.pos_embed + single.context_in(context)
    seq = torch.cat([multi.stream_prefix[0][None].expand(3, -1, -1), single.class_embed(labels)[:, None], x], 1)
    for block in single.blocks:
        seq = block(seq)
    torch.testing.assert_close(h_multi, single.norm(seq)[:, -16:], rtol=1e-5, atol=1e-5)


def test_streams_differ_with_random_prefixes():
    """Different learned prefixes give different per-stream hidden states, and the output is their
    per-token convex combination with the reported weights."""
    gen = small(streams=3).eval()
    tokens, known, labels, context = inputs()
    B, N = known.shape
    seen = {}
    gen.aggregate.register_forward_hook(lambda m, args, out: seen.update(streams=args[0].detach()))
    h, w = gen.hidden(tokens, known, labels, context, return_weights=True)
    streams = seen["streams"].view(B, 3, N, -1)  # (B, P, N, d) before aggregation
    for i, j in ((0, 1), (0, 2), (1, 2)):
        gap = (streams[:, i] - streams[:, j]).norm() / streams[:, i].norm()
        assert gap > 1e-3, f"streams {i} and {j} coincide (relative gap {gap:.2e})"
    torch.testing.assert_close(h, torch.einsum("bnp,bpnd->bnd", w, streams))
    assert torch.all(w >= gen.config.agg_smoothing / 3 - 1e-7)


def test_every_parameter_gets_a_gradient():
    gen = perturb_(small(streams=2))
    tokens, _, labels, context = inputs(B=8)
    torch.manual_seed(1)
    loss = gen.loss(tokens, labels, context)
    loss.backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_head_is_noise_independent_at_init_and_zero():
    head = EnergyHead(cond_dim=8, token_dim=3, width=16, depth=2, noise_dim=4)
    h = torch.randn(5, 8)
    assert torch.equal(head(h, torch.rand(5, 4)), torch.zeros(5, 3))


def test_temperature_scales_only_the_shift():
    head = perturb_(EnergyHead(cond_dim=8, token_dim=3, width=16, depth=2, noise_dim=4), std=0.2)
    h, noise = torch.randn(5, 8), torch.rand(5, 4) - 0.5
    assert not torch.allclose(head(h, noise, 1.0), head(h, noise, 0.5))
    with torch.no_grad():  # with no shift weights the temperature has no effect
        for ada in [*head.ada, head.ada_out]:
            ada.weight[: head.ada_out.out_features // 2 if ada is head.ada_out else ada.out_features // 3].zero_()
            ada.bias[: head.ada_out.out_features // 2 if ada is head.ada_out else ada.out_features // 3].zero_()
    torch.testing.assert_close(head(h, noise, 1.0), head(h, noise, 0.5))


def test_sample_fills_every_token_and_depends_on_noise():
    gen = perturb_(small(streams=2)).eval()
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 16, 8, generator=g) - 0.5
    orders = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])
    labels = torch.tensor([1, 3])
    ctx = torch.randn(2, 16, 4, generator=g)
    out = gen.sample(noise, orders, labels, steps=4, cfg=2.0, context=ctx)
    assert out.shape == (2, 16, 4) and torch.isfinite(out).all() and (out != 0).all()
    assert not torch.equal(out, gen.sample(noise.flip(0), orders, labels, steps=4, cfg=2.0, context=ctx))
    assert not out.requires_grad  # sampling builds no autograd graph, called directly too


def test_unconditional_model_rejects_cfg():
    cfg = MARConfig(width=16, depth=1, heads=2, head_width=16, head_depth=1, noise_dim=4)
    gen = EnergyGenerator(cfg, num_tokens=4, token_dim=2, num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        gen.sample(torch.zeros(1, 4, 4), torch.arange(4)[None], steps=2, cfg=2.0)


@pytest.mark.parametrize("kw,match", [(dict(streams=0), "streams"), (dict(width=30, heads=4), "divisible"), (dict(alpha=2.0), "alpha"), (dict(tau=1.2), "tau")])
def test_bad_generator_config(kw, match):
    with pytest.raises(ValueError, match=match):
        MARConfig(**kw)
