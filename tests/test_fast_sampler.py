"""compile_sampler / FastSampler on the CPU: same images as generate for the same seeds and labels."""
import pytest
import torch

import parscale_ear as pe

from helpers import perturb_


@pytest.mark.parametrize("preset, steps", [("tiny-32", (2, 1)), ("tiny-32-flow", (2, 2))])
def test_seeded_sampler_is_bit_identical_to_generate_in_float32(preset, steps):
    torch.manual_seed(0)
    model = perturb_(pe.create_model(preset)).eval()
    sampler = model.compile_sampler(4, steps=steps, cfg=1.5, temperature=0.9)
    assert sampler.settings["dtype"] == "float32" and not sampler.graphs
    for seed, labels in ((0, None), (7, [3, 3, 9, 0])):
        want = model.generate(4, labels=labels, cfg=1.5, temperature=0.9, steps=steps, seed=seed)
        got = sampler(seed=seed, labels=labels).clone()
        assert torch.equal(got, want)
    assert torch.equal(sampler.replay(), want)  # the buffers still hold the last inputs


def test_random_noise_path_and_output_buffer_reuse():
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow")).eval()
    sampler = model.compile_sampler(3)
    a = sampler().clone()
    b = sampler()
    assert a.shape == (3, 1, 32, 32) and a.dtype == torch.float32 and not torch.equal(a, b)
    assert a.abs().max() <= 1
    assert sampler._labels.tolist() == [0, 1, 2]
    sampler(seed=5)  # generate's labels for seeds 5, 6, 7
    assert sampler._labels.tolist() == [5, 6, 7]
    sampler()
    assert sampler._labels.tolist() == [0, 1, 2]


def test_bfloat16_sampler_is_close_to_generate():
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow")).eval()
    got = model.compile_sampler(4, dtype=torch.bfloat16)(seed=2)
    want = model.generate(4, seed=2)
    assert got.dtype == torch.float32 and (got - want).abs().mean() < 0.05


def test_sampler_rejects_bad_settings():
    model = pe.create_model("tiny-32-flow").eval()
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        model.compile_sampler(2, graphs=True)
    with pytest.raises(ValueError, match="dtype must be"):
        model.compile_sampler(2, dtype=torch.int8)
    with pytest.raises(ValueError, match="batch_size"):
        model.compile_sampler(0)
    sampler = model.compile_sampler(2)
    with pytest.raises(ValueError):
        sampler(seed=0, labels=[1, 2, 3])
    with pytest.raises(ValueError):
        sampler(seed=-1)


@pytest.mark.parametrize("mode", ["full", "no_coarse", "no_fine"])
def test_profile_latency_times_the_sampler_stage_by_stage(mode):
    from parscale_ear.evaluation.benchmark import profile_latency

    torch.manual_seed(0)
    model = pe.create_model("tiny-32", mode=mode).eval()
    rows = profile_latency(model, batch_sizes=(2,), runs=2, warmup=1, steps=None, temperature=0.7)
    names = [r["name"] for r in rows]
    assert names[0] == "encode" and names[-2:] == ["decode", "end_to_end"]
    assert any(n.startswith("generate.") for n in names)
    assert all(r["ms_per_image_p50"] > 0 for r in rows)


def test_profile_latency_times_the_heun_solver(monkeypatch):
    """profile_latency(solver="heun") runs every timed part with that solver (ci/latency.py --solver)."""
    from helpers import v_stage

    from parscale_ear.evaluation.benchmark import profile_latency
    from parscale_ear.energy_flow import EnergyFlowGenerator

    model = pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(), "fine": v_stage()}).eval()
    seen, real = [], EnergyFlowGenerator.sample

    def spy(self, *args, solver=None, **kwargs):
        seen.append(solver)
        return real(self, *args, solver=solver, **kwargs)

    monkeypatch.setattr(EnergyFlowGenerator, "sample", spy)
    rows = profile_latency(model, batch_sizes=(2,), runs=1, warmup=1, steps=(2, 2), temperature=0.0, solver="heun")
    assert [r["name"] for r in rows][-2:] == ["decode", "end_to_end"] and seen and set(seen) == {"heun"}
    with pytest.raises(ValueError, match="solver must be 'euler' or 'heun'"):
        profile_latency(model, batch_sizes=(2,), runs=1, warmup=1, solver="rk4")
