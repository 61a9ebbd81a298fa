"""The few-step energy student: teacher pairs, initialisation from a trained pipeline, the energy objective that
trains the whole stage, and the CLI that ties them together; tiny CPU configs."""
import numpy as np
import pytest
import torch

import parscale_ear as pe
from parscale_ear.cli import main
from parscale_ear.distill import PAIRS_PREFIX, check_same_vae, init_generator, teacher_pairs

from helpers import interrupt_after, perturb_, tiny_peer, v_stage


def tiny_teacher(seed: int = 0, **stage) -> pe.ParScaleEAR:
    torch.manual_seed(seed)
    model = pe.create_model("tiny-32-flow", hybrid={"coarse": v_stage(residual_blocks=1, **stage),
                                                    "fine": v_stage(residual_blocks=1, **stage)})
    return perturb_(model, seed=seed).eval()


def student_of(teacher: pe.ParScaleEAR, **stage) -> pe.ParScaleEAR:
    stage = {**dict(objective="energy", mean_weight=0.0, one_step_prob=0.5, time_dist="uniform"), **stage}
    config = pe.presets.apply_overrides(teacher.config, name="tiny-student", temperature=1.0,
                                        hybrid={"coarse": dict(stage), "fine": dict(stage)})
    student = pe.ParScaleEAR(config)
    student.vae.load_state_dict(teacher.vae.state_dict())
    return student


def test_teacher_pairs_are_the_teachers_samples():
    teacher = tiny_teacher()
    pairs = teacher_pairs(teacher, 6, (2, 2), "heun", batch_size=4, seed=3)
    assert set(pairs) == {"coarse_x1", "coarse_x0", "fine_x1", "fine_x0", "labels"}
    assert pairs["labels"].tolist() == [0, 1, 2, 3, 4, 5] and pairs["fine_x0"].shape == (6, 64, 16)
    # the same noise through the teacher's own sampler gives the stored outputs
    noise = {name: {"xi": torch.zeros(6, 4, stage.num_tokens, stage.config.noise_dim), "x1": pairs[f"{name}_x1"].float()}
             for name, stage in teacher.generator.stages.items()}
    out = teacher.generator.sample_stages(noise, pairs["labels"], (2, 2), 1.0, 0.0, "heun")
    for name in out:  # float16 storage
        torch.testing.assert_close(out[name].half(), pairs[f"{name}_x0"], rtol=2e-3, atol=2e-3)
    again = teacher_pairs(teacher, 6, (2, 2), "heun", batch_size=4, seed=3)  # the same settings: the same pairs
    assert all(torch.equal(again[k], pairs[k]) for k in pairs)


def test_a_student_starts_as_its_teacher():
    teacher = tiny_teacher()
    student = student_of(teacher)
    assert init_generator(student, teacher) == []  # the same architecture: nothing left at init
    a = teacher.generate(3, seed=1, steps=(2, 2), temperature=0.0)
    b = student.eval().generate(3, seed=1, steps=(2, 2), temperature=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    bigger = pe.ParScaleEAR(pe.presets.apply_overrides(student.config, hybrid={"fine": {"width": 48, "head_width": 48}}))
    with pytest.raises(ValueError, match="does not fit this model"):
        init_generator(bigger, teacher)


def test_energy_objective_trains_the_backbone_through_the_score():
    """objective 'energy' with no MSE: the score of the drawn x0 alone reaches the backbone and the mean head;
    objective 'flow' with residual_grad 0 keeps the score out of them."""
    teacher = tiny_teacher()
    pairs = teacher_pairs(teacher, 8, (2, 2), "heun", seed=0)
    labels = pairs.pop("labels")
    batch = {k: v.float() for k, v in pairs.items()}
    with pytest.raises(ValueError, match="residual_grad applies to objective 'flow'"):
        student_of(teacher, residual_grad=0.0)  # the energy objective keeps every gradient: 0 would do nothing
    for objective, reaches in (("energy", True), ("flow", False)):
        model = student_of(teacher) if objective == "energy" else tiny_teacher()
        if objective == "flow":
            model.generator.fine.config.residual_grad, model.generator.fine.config.mean_weight = 0.0, 1.0
            model.generator.coarse.config.mean_weight = 1.0
            model.generator.fine.config.mean_weight = 0.0  # no MSE either: only the score is left
            model.generator.fine.config.objective = "flow"
        init_generator(model, teacher)
        model.train()
        loss = model.generator.fine.loss(batch["fine_x0"], labels, model.generator.context(batch["coarse_x0"]),
                                      noise=batch["fine_x1"])
        loss.backward()
        grad = model.generator.fine.blocks[0].attn.qkv.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches, objective
        assert model.generator.fine.residual_blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_pairs_put_x_t_on_the_teachers_line(monkeypatch):
    """With teacher pairs, x_t = (1 - t) x0 + t x1 uses the teacher's x1: at t = 1 the stage sees exactly it."""
    teacher = tiny_teacher()
    student = student_of(teacher, one_step_prob=1.0)
    init_generator(student, teacher)
    pairs = teacher_pairs(teacher, 4, (1, 1), "euler", seed=0)
    labels = pairs.pop("labels")
    seen = {}
    stage = student.generator.coarse
    real = stage.hidden

    def spy(x_t, t, xi, labels, context=None):
        seen["x_t"], seen["t"] = x_t.detach().clone(), t.clone()
        return real(x_t, t, xi, labels, context)

    monkeypatch.setattr(stage, "hidden", spy)
    student.generator.loss(None, labels, pairs={k: v.float() for k, v in pairs.items()})
    assert torch.all(seen["t"] == 1)
    torch.testing.assert_close(seen["x_t"], pairs["coarse_x1"].float())


def test_check_same_vae():
    teacher = tiny_teacher()
    other = tiny_teacher(seed=1)
    check_same_vae(teacher, teacher, "--teacher")
    with pytest.raises(ValueError, match="LiteVAE weights differ"):
        check_same_vae(teacher, other, "--teacher")


@pytest.fixture
def runs(tmp_path):
    """A tiny VAE run and a tiny v-mean teacher release that shares its LiteVAE."""
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 255, (16, 32, 32), dtype=np.uint8), labels=np.arange(16) % 10)
    common = ["--batch-size", "8", "--no-progress", "--sample-every", "100", "--device", "cpu"]
    assert main(["train-vae", "--preset", "tiny-32", "--data", str(data), "--out", str(tmp_path / "vae"), "--steps", "2",
                 *common]) == 0
    stage = ["hybrid.{s}.backbone_noise=false", "hybrid.{s}.mean_weight=1.0",
             "hybrid.{s}.residual_blocks=1", "hybrid.{s}.max_steps=4"]
    sets = [x.format(s=s) for s in ("coarse", "fine") for x in stage]
    assert main(["train", "--vae", str(tmp_path / "vae"), "--preset", "tiny-32-flow", "--steps", "2",
                 "--out", str(tmp_path / "teacher"), *common, "--set", *sets]) == 0
    return tmp_path, common, sets


def test_cli_trains_a_student_on_teacher_pairs_and_resumes_exactly(runs, monkeypatch):
    tmp, common, sets = runs
    student = [f"hybrid.{s}.{k}" for s in ("coarse", "fine") for k in ('objective="energy"', "mean_weight=0.0")]
    run = ["train", "--vae", str(tmp / "vae"), "--preset", "tiny-32-flow", "--init", str(tmp / "teacher"),
           "--teacher", str(tmp / "teacher"), "--pairs", "24", "--teacher-steps", "2,2", "--teacher-solver", "heun",
           "--steps", "4", "--ckpt-every", "2", *common, "--set", *sets, *student]
    assert main([*run, "--out", str(tmp / "straight")]) == 0
    info = __import__("json").loads((tmp / "straight" / "run.json").read_text())
    assert info["init_new_weights"] == 0 and info["pairs_seconds"] >= 0 and info["train"]["pairs"] == 24
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert main([*run, "--out", str(tmp / "killed")]) == 130  # Ctrl-C: one line, exit 130
    (cache,) = (tmp / "vae").glob(f"{PAIRS_PREFIX}*.pt")  # made once, beside the latents, for every student
    before = cache.stat().st_mtime_ns
    assert main(["train", "--vae", str(tmp / "vae"), "--steps", "4", "--out", str(tmp / "killed"), "--resume", *common,
                 "--teacher", str(tmp / "teacher"), "--pairs", "24", "--teacher-steps", "2,2", "--teacher-solver",
                 "heun"]) == 0
    assert cache.stat().st_mtime_ns == before  # the cached pairs, not new ones
    a = torch.load(tmp / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp / "killed" / "checkpoint.pt", weights_only=True)
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert main(["sample", "--ckpt", str(tmp / "straight"), "--n", "2", "--steps", "1,1", "--temperature", "1",
                 "--out", str(tmp / "s.png")]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "default"], "--teacher and --pairs go together"),
    (["--pairs", "8"], "--teacher and --pairs go together"),
    (["--teacher", "default", "--pairs", "8"], "its LiteVAE config differs"),
    (["--init", "default"], "its LiteVAE config differs"),
])
def test_cli_refuses_a_teacher_that_does_not_fit(runs, capsys, extra, message):
    tmp, common, sets = runs
    code = main(["train", "--vae", str(tmp / "vae"), "--preset", "tiny-32-flow", "--steps", "2", "--out",
                 str(tmp / "bad"), *common, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_latent_noise_is_unit_noise_split_into_the_stages():
    """The coarse x_1 sets the block means, the fine x_1 the detail inside them; independent draws give N(0, I)."""
    hybrid = student_of(tiny_teacher()).generator
    torch.manual_seed(0)
    x1 = {name: torch.randn(4000, stage.num_tokens, stage.token_dim) for name, stage in hybrid.stages.items()}
    z = hybrid.latent_noise(x1)
    assert z.shape == (4000, *hybrid.latent_shape)
    pool = hybrid.config.pool
    torch.testing.assert_close(hybrid.tokens(z)["coarse"], x1["coarse"] / pool)  # the coarse draw alone
    detail = pe.hybrid.split_coarse_fine(hybrid._fine_grid(x1["fine"]), pool)[1]
    torch.testing.assert_close(hybrid.tokens(z)["fine"], hybrid._fine_tokens(detail))  # the fine draw's detail alone
    cov = torch.cov(z.flatten(1)[:, :64].T)  # unit variance, no correlation inside or across blocks
    torch.testing.assert_close(cov, torch.eye(64), atol=0.1, rtol=0)


def tiny_dit(seed: int = 0, **dit) -> pe.ParScaleEAR:
    pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    return perturb_(tiny_peer(**dit), seed=seed).eval()


def test_dit_teacher_pairs_are_its_samples_cut_into_the_students_tokens():
    teacher = tiny_dit()
    student = student_of(tiny_teacher())
    student.vae.load_state_dict(teacher.vae.state_dict())
    student.generator.coarse_std.fill_(0.7)
    student.generator.fine_std.fill_(0.3)
    pairs = teacher_pairs(teacher, 5, 3, "heun", batch_size=4, seed=1, student=student)
    assert {k: tuple(v.shape) for k, v in pairs.items()} == {
        "coarse_x1": (5, 16, 4), "coarse_x0": (5, 16, 4), "fine_x1": (5, 64, 16), "fine_x0": (5, 64, 16), "labels": (5,)}
    # the DiT's own sampler from the assembled noise gives the latents the stage tokens add up to
    x1 = {name: pairs[f"{name}_x1"].float() for name in student.generator.stages}
    want = teacher.generator.sample({"dit": {"x1": student.generator.latent_noise(x1)}}, pairs["labels"], (3,), 1.0, 1.0, "heun")
    got = student.generator.latents({name: pairs[f"{name}_x0"].float() for name in x1})
    torch.testing.assert_close(got, want, rtol=2e-3, atol=3e-3)
    with pytest.raises(ValueError, match="needs the student"):
        teacher_pairs(teacher, 2, 3)


@pytest.mark.parametrize("teacher, student, message", [
    ("meanflow", "flow", "must be a flow model"),
    ("flow", "dit", "not be a DiT peer"),
])
def test_a_dit_teacher_must_be_a_flow_model_and_the_student_ours(teacher, student, message):
    from parscale_ear.distill import check_teacher

    t = tiny_dit(objective=teacher)
    s = tiny_dit() if student == "dit" else student_of(tiny_teacher())
    with pytest.raises(ValueError, match=message):
        check_teacher(t, s)


def test_cli_trains_a_student_of_a_dit_teacher_and_resumes_exactly(runs, monkeypatch):
    tmp, common, sets = runs
    assert main(["train", "--vae", str(tmp / "vae"), "--peer", "dit-s", "--steps", "2", "--out", str(tmp / "dit"),
                 *common, "--set", "dit.num_layers=1", "dit.heads=2", "dit.head_dim=8"]) == 0
    student = [f"hybrid.{s}.{k}" for s in ("coarse", "fine") for k in ('objective="energy"', "mean_weight=0.0")]
    run = ["train", "--vae", str(tmp / "vae"), "--preset", "tiny-32-flow", "--teacher", str(tmp / "dit"), "--pairs", "24",
           "--teacher-steps", "2", "--teacher-solver", "heun", "--steps", "4", "--ckpt-every", "2", *common,
           "--set", *sets, *student]
    assert main([*run, "--out", str(tmp / "straight")]) == 0
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert main([*run, "--out", str(tmp / "killed")]) == 130  # Ctrl-C: one line, exit 130
    (cache,) = (tmp / "vae").glob(f"{PAIRS_PREFIX}*.pt")
    before = cache.stat().st_mtime_ns
    assert main([*run[:1], "--vae", str(tmp / "vae"), "--steps", "4", "--out", str(tmp / "killed"), "--resume", *common,
                 "--teacher", str(tmp / "dit"), "--pairs", "24", "--teacher-steps", "2", "--teacher-solver", "heun"]) == 0
    assert cache.stat().st_mtime_ns == before  # the student's scales are the same on resume: the same pairs
    a = torch.load(tmp / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp / "killed" / "checkpoint.pt", weights_only=True)
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    # the student's token scales are fitted on the VAE run's latents, the units its pairs are in
    assert not torch.equal(a["ema"]["coarse_std"], torch.ones(()))


def test_a_one_stage_student_takes_the_dit_coupling_whole():
    """Without the coarse split the student's one stage draws the whole latent grid: the DiT's noise is its x_1."""
    teacher = tiny_dit()
    student = pe.ParScaleEAR(pe.presets.apply_overrides(student_of(tiny_teacher()).config, mode="no_coarse"))
    student.vae.load_state_dict(teacher.vae.state_dict())
    pairs = teacher_pairs(teacher, 3, 2, "euler", batch_size=2, seed=0, student=student)
    assert set(pairs) == {"fine_x1", "fine_x0", "labels"}
    z = student.generator.latent_noise({"fine": pairs["fine_x1"].float()})
    torch.testing.assert_close(student.generator.tokens(z)["fine"], pairs["fine_x1"].float())
    want = teacher.generator.sample({"dit": {"x1": z}}, pairs["labels"], (2,), 1.0, 1.0, "euler")
    torch.testing.assert_close(student.generator.latents({"fine": pairs["fine_x0"].float()}), want,
                               rtol=2e-3, atol=3e-3)


def _joint(seed: int = 0, **stage) -> pe.ParScaleEAR:
    torch.manual_seed(seed)
    fine = dict(depth=1, width=32, heads=2, head_width=32, **stage)
    return perturb_(pe.create_model("fmnist-32-flow1", mode="joint", hybrid={"fine": fine}), seed=seed).eval()


def test_a_joint_student_takes_both_token_scales_of_a_joint_teacher():
    """A joint stage scales its coarse tokens by coarse_std and its fine ones by fine_std: a student of a joint teacher
    takes both, so the same normalised tokens decode to the same latents."""
    from parscale_ear.distill import check_teacher, take_token_scales

    teacher, student = _joint(coarse_lead=2.0), _joint(seed=1)
    teacher.generator.coarse_std.fill_(1.5)
    teacher.generator.fine_std.fill_(2.5)
    assert check_teacher(teacher, student) == "stages"
    take_token_scales(student, teacher)
    tokens = {"fine": torch.randn(2, 80, 16)}
    torch.testing.assert_close(student.generator.latents(tokens), teacher.generator.latents(tokens))


def test_a_dit_teacher_cannot_teach_a_joint_student():
    from parscale_ear.distill import check_teacher

    with pytest.raises(ValueError, match="does not split into a joint student's coarse and fine noise"):
        check_teacher(tiny_dit(), _joint())


def test_teacher_pairs_are_cached_apart_for_other_sampling_settings(tmp_path):
    """time_shift, time_scale and coarse_lead change a teacher's pairs without changing its weights: their cache files differ;
    at the defaults the key is what it was."""
    from parscale_ear.distill import pairs_file

    teacher = _joint()
    path, key = pairs_file(tmp_path, teacher, 8, 2, "euler")
    assert "sampling" not in key
    teacher.generator.fine.config.time_shift = 2.0
    shifted, key = pairs_file(tmp_path, teacher, 8, 2, "euler")
    assert shifted != path and key["sampling"] == {"fine": {"time_shift": 2.0}}
    teacher.generator.fine.config.time_scale = 1.0  # the same weights see other times
    rescaled, key = pairs_file(tmp_path, teacher, 8, 2, "euler")
    assert rescaled not in (path, shifted) and key["sampling"] == {"fine": {"time_shift": 2.0, "time_scale": 1.0}}
