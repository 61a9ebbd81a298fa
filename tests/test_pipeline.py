import json

import pytest
import torch

import parscale_ear as pe
from parscale_ear.release import config_digest
from parscale_ear.hybrid import merge_coarse_fine, patchify, split_coarse_fine, unpatchify

from helpers import perturb_


@pytest.fixture
def model():
    torch.manual_seed(0)
    return perturb_(pe.create_model("tiny-32-flow")).eval()


def test_list_and_create_models():
    assert {"fmnist-32", "lite-256", "tiny-32"} <= set(pe.list_models())
    m = pe.create_model("tiny-32", mode="no_fine", streams=3, fine_steps=1, vae={"latent_channels": 2})
    assert m.config.hybrid.mode == "no_fine" and m.generator.fine is None
    assert m.config.hybrid.coarse.streams == 3 and m.config.vae.latent_channels == 2
    with pytest.raises(ValueError, match="unknown model"):
        pe.create_model("nope")
    with pytest.raises(ValueError, match="unknown option"):
        pe.create_model("tiny-32", vae={"latent_chanels": 2})
    with pytest.raises(ValueError, match="mode"):
        pe.create_model("tiny-32", mode="coarse_only")


def test_lite_256_has_the_seed_latent_and_a_30_to_40M_generator():
    cfg = pe.get_config("lite-256")
    assert cfg.vae.latent_shape == (32, 16, 16) and cfg.vae.image_size == 256
    m = pe.ParScaleEAR(cfg)
    assert 30e6 <= m.num_parameters()["generator"] <= 40e6


def test_coarse_fine_split_merge_and_patchify_roundtrip():
    z = torch.randn(2, 4, 16, 16)
    coarse, fine = split_coarse_fine(z, 4)
    assert coarse.shape == (2, 4, 4, 4) and fine.shape == z.shape
    torch.testing.assert_close(merge_coarse_fine(coarse, fine, 4), z)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(fine, 4), torch.zeros_like(coarse), atol=1e-6, rtol=0)
    p = patchify(z, 4)
    assert p.shape == (2, 16, 64)
    assert torch.equal(unpatchify(p, 4, 4), z)
    assert torch.equal(p[0, 1], z[0, :, 0:4, 4:8].reshape(-1))


@pytest.mark.parametrize("mode", ["full", "no_coarse", "no_fine"])
def test_modes_generate_and_train(mode):
    torch.manual_seed(0)
    m = perturb_(pe.create_model("tiny-32", mode=mode))
    stages = set(m.generator.stages)
    assert stages == {"full": {"coarse", "fine"}, "no_coarse": {"fine"}, "no_fine": {"coarse"}}[mode]
    z = torch.randn(4, 4, 16, 16)
    losses = m.generator.loss(z, torch.tensor([0, 1, 2, 3]))
    assert set(losses) == stages | {"loss"} and torch.isfinite(losses["loss"])
    x = m.eval().generate(3, seed=0)
    assert x.shape == (3, 1, 32, 32) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_fit_token_scales():
    m = pe.create_model("tiny-32")
    z = 3 * torch.randn(64, 4, 16, 16)
    scales = m.generator.fit_token_scales(z)
    assert set(scales) == {"coarse", "fine"}
    assert m.generator.fine_std.item() == pytest.approx(scales["fine"]) and 2.0 < scales["fine"] < 4.0
    assert scales["coarse"] < scales["fine"]  # averaging 16 independent values shrinks the std


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 5e-4)])
def test_generate_is_batch_invariant(model, dtype, atol):
    """Image i depends only on seed + i: exactly in float64; up to float32 GEMM rounding otherwise."""
    model = model.to(dtype)
    full = model.generate(5, seed=10, batch_size=5, cfg=2.0)
    ones = model.generate(5, seed=10, batch_size=1, cfg=2.0)
    tail = model.generate(2, seed=13, batch_size=2, cfg=2.0)
    assert full.dtype == dtype
    torch.testing.assert_close(full, ones, rtol=0, atol=atol)
    torch.testing.assert_close(full[3:], tail, rtol=0, atol=atol)
    assert not torch.allclose(full[0], full[1])


def test_generate_respects_labels_and_settings(model):
    a = model.generate(2, labels=[1, 1], seed=0)
    b = model.generate(2, labels=[2, 2], seed=0)
    assert not torch.equal(a, b)
    assert not torch.equal(model.generate(2, seed=0, temperature=0.5), model.generate(2, seed=0, temperature=1.0))
    assert model.generate(2, seed=0, steps=(2, 1)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(n=0), ValueError, "positive"),
        (dict(n=2, labels=[0, 10]), ValueError, r"\[0, 10\)"),
        (dict(n=2, labels=[0]), ValueError, "expected 2 labels"),
        (dict(n=2, labels=torch.tensor([0.0, 1.0])), TypeError, "integer"),
        (dict(n=2, temperature=-0.5), ValueError, "temperature"),
        (dict(n=2, cfg=float("nan")), ValueError, "cfg"),
        (dict(n=2, steps=(99, 1)), ValueError, "steps must be in"),
        (dict(n=2, steps="4"), TypeError, "steps"),
    ],
)
def test_generate_rejects_bad_arguments(model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        model.generate(**kwargs)


def test_unconditional_model_rejects_labels():
    m = pe.create_model("tiny-32", num_classes=0).eval()
    assert m.generate(2, seed=0).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="unconditional"):
        m.generate(2, labels=[0, 1])


def test_reconstruct(model):
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = model.reconstruct(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    with pytest.raises(ValueError, match="expected shape"):
        model.reconstruct(torch.zeros(2, 3, 32, 32))


def test_save_load_is_bit_identical(model, tmp_path):
    model.generator.fit_token_scales(torch.randn(8, 4, 16, 16) * 2)
    model.config.vae.latent_scale = 0.7
    before = model.generate(3, seed=4, cfg=1.5)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]  # + the model card
    loaded = pe.ParScaleEAR.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(loaded.generate(3, seed=4, cfg=1.5), before)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    # saving again over the folder replaces it whole and leaves no temporary files
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_rejects_mismatched_config(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["hybrid"]["fine"]["width"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match its recorded digest"):  # an edit of a written release
        pe.ParScaleEAR.from_pretrained(tmp_path / "m")
    meta["config_sha256"] = config_digest(meta["config"])  # edited, the digest recomputed: the weights
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))  # must still fit the config
    with pytest.raises(ValueError, match="do not match the config"):
        pe.ParScaleEAR.from_pretrained(tmp_path / "m")
    meta["config"]["hybrid"]["fine"]["width"] = 32
    meta["config"]["hybrid"]["fine"]["streams"] = 1
    meta["config_sha256"] = config_digest(meta["config"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unexpected"):
        pe.ParScaleEAR.from_pretrained(tmp_path / "m")


def test_load_errors_are_clear(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        pe.ParScaleEAR.from_pretrained(tmp_path / "missing")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        pe.ParScaleEAR.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pe.ParScaleEAR.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="not a parscale-ear config"):
        pe.ParScaleEAR.from_pretrained(tmp_path / "m")


def test_failed_save_leaves_nothing_behind(model, tmp_path, monkeypatch):
    import safetensors.torch

    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_every_pipeline_parameter_gets_a_gradient(model):
    from parscale_ear.vae_objective import vae_loss

    model.train()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    mean, logvar = model.vae.encode_moments(x)
    out = vae_loss(model.vae.decode(mean), x, mean, logvar)
    torch.manual_seed(0)
    total = out["loss"] + model.generator.loss(torch.randn(4, 4, 16, 16), torch.arange(4))["loss"]
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode, names, default", [("full", ["coarse", "fine"], (4, 2)), ("no_coarse", ["fine"], (6,)),
                                                  ("no_fine", ["coarse"], (4,))])
def test_stages_run_as_an_ordered_list_with_one_step_count_each(mode, names, default):
    """A mode is a list of stages (token mapping + context source); steps are one per stage, with
    no (0, N) sentinel for one-stage models."""
    from parscale_ear.hybrid import STAGE_LISTS

    model = pe.create_model("tiny-32", mode=mode).eval()
    assert [s.name for s in model.generator.stage_list] == names == list(model.generator.stages)
    assert model.generator.stage_list == STAGE_LISTS[mode]
    assert model.resolve_steps(None) == default and model.generator.default_steps() == default
    assert model.resolve_steps(3) == (3,) * len(default)  # an int: that many steps in every stage
    with pytest.raises(ValueError, match="one per stage"):
        model.generator.sample(model.draw_noise([0]), None, (1,) * (len(names) + 1))
    latents = torch.randn(2, 4, 16, 16)
    tokens = model.generator.tokens(latents)  # the stages' parts add up to the latents again
    rebuilt = sum(model.generator._latents_part(s, tokens[s.name]) for s in model.generator.stage_list)
    torch.testing.assert_close(rebuilt, latents)


def test_a_new_generator_plugs_into_the_pipeline():
    """Anything that implements LatentGenerator samples, times and gives the training step its loss through the
    pipeline without a line of the pipeline knowing it: a one-stage toy whose latents are its scaled x_1."""
    import dataclasses
    from typing import ClassVar

    from torch import nn

    from parscale_ear.evaluation.benchmark import profile_latency
    from parscale_ear.latent_generator import LatentGenerator
    from parscale_ear.model_config import ModelConfig

    @dataclasses.dataclass
    class ToyConfig:
        steps: int = 3

    class Toy(LatentGenerator):
        config_class = ToyConfig

        def __init__(self, config, latent_shape, num_classes):
            super().__init__(config, latent_shape, num_classes)
            self.scale = nn.Parameter(torch.ones(()))

        stages = property(lambda self: {"toy": self})
        default_steps = lambda self: (self.config.steps,)  # noqa: E731
        draw = lambda self, g: {"toy": {"x1": torch.randn(self.latent_shape, generator=g)}}  # noqa: E731
        draw_batch = lambda self, b, device, dtype, g=None: {  # noqa: E731
            "toy": {"x1": torch.randn(b, *self.latent_shape, generator=g, device=device, dtype=dtype)}}
        stage_passes = lambda self, name, steps, temperature, solver: steps  # noqa: E731
        latents = lambda self, outputs: outputs["toy"]  # noqa: E731
        fit_token_scales = lambda self, latents: {}  # noqa: E731

        def sample_stage(self, name, noise, labels, steps, cfg, temperature, solver, earlier):
            return noise["toy"]["x1"] * temperature * self.scale / steps

        def loss(self, latents, labels=None, pairs=None):
            loss = (self.scale * latents).pow(2).mean()
            return {"toy": loss, "loss": loss}

    @dataclasses.dataclass
    class ToyModelConfig(ModelConfig):
        GENERATOR: ClassVar[str] = "toy"
        GENERATOR_CLASS: ClassVar[type] = Toy
        WHAT: ClassVar[str] = "toy model"
        toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)

    model = pe.ParScaleEAR(ToyModelConfig(vae=pe.get_config("tiny-32-flow").vae, temperature=0.5)).eval()
    a = model.generate(3, seed=4, batch_size=2)
    assert a.shape == (3, 1, 32, 32) and torch.equal(model.generate(1, seed=6), a[2:])
    noise = model.draw_noise([4])
    want = model.vae.decode(noise["toy"]["x1"] * 0.5 / 3).clamp(-1, 1)
    torch.testing.assert_close(a[:1], want)
    whole = model.generate(3, seed=4, batch_size=3)
    assert torch.equal(model.compile_sampler(3)(seed=4), whole) and model.resolve_steps(2) == (2,)
    torch.testing.assert_close(whole, a)
    assert model.num_parameters()["generator.toy"] == 1
    rows = profile_latency(model, batch_sizes=(2,), runs=1, warmup=0)
    assert [r["name"] for r in rows] == ["encode", "generate.toy (3 steps)", "decode", "end_to_end"]
    with pytest.raises(ValueError, match="one stage"):
        model.generate(1, steps=(1, 1))
    from parscale_ear.train import GeneratorStep

    losses = GeneratorStep(model.generator)(torch.ones(2, 4, 16, 16), None)
    losses["loss"].backward()
    assert model.generator.scale.grad == 2.0
