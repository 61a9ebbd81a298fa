"""The fixed-budget quality harness (parscale_ear.evaluation.quality) on the CPU with a stand-in Inception."""
import json

import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.evaluation import evaluate, fid, quality

from helpers import StandIn, perturb_, v_stage


def test_parse_schedules_and_passes():
    s = quality.parse_schedules("1,1@2;4;2,2@1.5@0.7")
    assert [(x.steps, x.cfg, x.temperature) for x in s] == [((1, 1), 2.0, 1.0), (4, 1.0, 1.0), ((2, 2), 1.5, 0.7)]
    model = pe.create_model("tiny-32-flow")
    assert quality.passes_per_image(model, s[0]) == 4  # (1 + 1) passes, doubled by CFG
    assert quality.passes_per_image(model, s[2]) == 8
    assert s[2].label == "steps 2+2, cfg 1.5, temp 0.7"


def test_generated_statistics_are_the_evaluation_statistics():
    """quality and evaluate score generated images one way: the same uint8-quantised images."""
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow")).eval()
    schedule = quality.Schedule((2, 1), 1.5, 0.8)
    mu, sigma = quality.generated_statistics(model, schedule, 6, StandIn(), batch_size=4)
    mu2, sigma2, n, _ = evaluate.sample_statistics(model, 6, StandIn(), 1.5, 0.8, (2, 1), batch_size=4)
    np.testing.assert_allclose(mu, mu2, rtol=1e-6)
    np.testing.assert_allclose(sigma, sigma2, rtol=1e-6, atol=1e-9)
    images = model.generate(6, cfg=1.5, temperature=0.8, steps=(2, 1))
    want = fid.statistics(fid.inception_features(evaluate.quantize(images), StandIn(), batch_size=4))
    np.testing.assert_allclose(mu, want[0], rtol=1e-6)


def test_evaluate_schedules_and_write_table(tmp_path):
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow")).eval()
    inception = StandIn()
    ref = fid.statistics(np.random.default_rng(0).normal(size=(40, 8)))
    rows = quality.evaluate_schedules(model, quality.parse_schedules("1,1;2,2@2"), 10, {"train": ref}, inception)
    assert [r["passes_per_image"] for r in rows] == [2, 8]
    assert all(r["fid_train"] > 0 and r["n"] == 10 for r in rows)
    assert "ms_per_image_b256" not in rows[0]  # timings are taken on CUDA only
    quality.write_table(rows, tmp_path / "q", {"command": "test"})
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["command"] == "test" and saved["rows"] == rows
    assert (tmp_path / "q.md").read_text().count("\n") == 4  # header, rule, two rows


def test_time_sampling_uses_the_public_sampler_on_cpu():
    model = pe.create_model("tiny-32-flow").eval()
    t = quality.time_sampling(model, quality.Schedule((1, 1)), batch=2, runs=2)
    assert t["ms_per_image_p50"] > 0 and t["ms_per_image_p99"] >= t["ms_per_image_p50"]


def test_schedule_settings_are_parsed_applied_and_restored():
    """The fourth field sets sampling fields of the stage configs for that schedule only."""
    s = quality.parse_schedules("2,2@1@0@fine.solver=heun,max_steps=6;1,1")
    assert s[0].settings == {"fine.solver": "heun", "max_steps": 6} and s[1].settings == {}
    assert s[0].label == "steps 2+2, cfg 1, temp 0, fine.solver heun, max_steps 6"
    for bad in ("2,2@1@0@depth=3", "2,2@1@0@solver", "2,2@1@0@x@y", "2,2@1@0@head_steps=1"):
        with pytest.raises(ValueError, match="schedule"):
            quality.parse_schedules(bad)
    torch.manual_seed(0)
    model = perturb_(pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(), "fine": v_stage()})).eval()
    with quality.stage_settings(model, s[0].settings):
        assert model.generator.fine.config.solver == "heun" and model.generator.coarse.config.solver == "euler"
        assert model.generator.fine.config.max_steps == model.generator.coarse.config.max_steps == 6
        with_settings = model.generate(2, steps=(2, 2), temperature=0.0)
    assert model.generator.fine.config.solver == "euler" and model.generator.coarse.config.max_steps == 4
    assert not torch.allclose(with_settings, model.generate(2, steps=(2, 2), temperature=0.0))
    with pytest.raises(ValueError, match="no stage 'middle'"):
        with quality.stage_settings(model, {"middle.solver": "heun"}):
            pass
    ref = fid.statistics(np.random.default_rng(0).normal(size=(40, 8)))
    rows = quality.evaluate_schedules(model, s, 6, {"train": ref}, StandIn())
    assert rows[0]["settings"] == s[0].settings and "settings" not in rows[1]
    assert model.generator.fine.config.solver == "euler"  # restored after the evaluation


def test_lower_envelope_and_curve_comparison():
    """The envelope keeps the best FID at or below each latency; the comparison asks, at each point of
    the peer's curve, for our best FID at that latency or less."""
    row = lambda ms, fid: {"ms_per_image_b16": ms, "fid_train": fid}  # noqa: E731
    ours = [row(0.3, 20.0), row(0.1, 40.0), row(0.2, 45.0), row(0.5, 15.0)]
    assert quality.lower_envelope(ours, 16) == [(0.1, 40.0), (0.3, 20.0), (0.5, 15.0)]
    peer = [row(0.05, 90.0), row(0.15, 35.0), row(0.6, 12.0)]
    got = quality.compare_curves(ours, peer, 16)
    assert [(g["our_fid"], g["below"]) for g in got] == [(None, False), (40.0, False), (15.0, False)]
    assert [g["below"] for g in quality.compare_curves(ours, [row(0.35, 25.0), row(0.5, 16.0)], 16)] == [True, True]


def test_a_schedule_can_ask_for_the_heun_solver():
    from parscale_ear.evaluation import quality

    (s,) = quality.parse_schedules("4,4@1@0@fine.solver=heun")
    assert s.settings == {"fine.solver": "heun"} and s.label == "steps 4+4, cfg 1, temp 0, fine.solver heun"
    model = pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(), "fine": v_stage()}).eval()
    with quality.stage_settings(model, s.settings):
        assert model.generator.fine.config.solver == "heun" and quality.passes_per_image(model, s) == 4 + 7
    assert model.generator.fine.config.solver == "euler" and quality.passes_per_image(model, s) == 8
    with pytest.raises(ValueError, match="solver must be 'euler' or 'heun'"):
        with quality.stage_settings(model, {"solver": "rk4"}):
            pass
    assert model.generator.coarse.config.solver == "euler"  # restored after the refusal


def test_plot_curves_writes_each_runs_lower_envelope(tmp_path):
    rows = {"a": [{"fid_train": 30.0, "ms_per_image_b16": 0.2}, {"fid_train": 35.0, "ms_per_image_b16": 0.3},
                  {"fid_train": 20.0, "ms_per_image_b16": 0.4}],
            "b": [{"fid_train": 25.0, "ms_per_image_b16": 0.1}]}
    curves = quality.plot_curves(rows, tmp_path / "c.png", 16)
    assert curves == {"a": [(0.2, 30.0), (0.4, 20.0)], "b": [(0.1, 25.0)]} and (tmp_path / "c.png").stat().st_size > 1000


def test_line_plot_draws_error_bars_where_a_point_has_a_spread(tmp_path):
    from parscale_ear.plots import line_plot

    path = line_plot(tmp_path / "p.png", {"FID vs P": ([1, 2, 4], [10.0, 9.0, 8.5], [0.3, None, 0.2]), "one seed": ([1, 2], [11.0, 10.0])},
                     xlabel="parallel streams P", ylabel="FID", log_x=True)
    assert path == tmp_path / "p.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to plot"):
        line_plot(tmp_path / "q.png", {"a": ([1], [float("nan")], [None])})
    assert not (tmp_path / "q.png").exists()
