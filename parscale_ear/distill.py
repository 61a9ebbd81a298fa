"""Teacher pairs for few-step energy students: per stage, the noise x_1 a teacher starts from and the
output tokens its many-step sampler reaches, so a student learns the teacher's noise -> sample coupling in
one or a few passes (rectified flow's "reflow" coupling, Liu et al. 2022) with the energy score (EAR)
instead of regression: where the student cannot resolve the map, it draws sharp samples rather than
their mean (distributional diffusion, De Bortoli et al., arXiv 2502.02483).

`init_generator` starts a student from a trained pipeline's generator weights (the teacher's features:
"Towards training one-step diffusion models without distillation", arXiv 2502.08005).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from .files import shared_folder
from .hybrid import CoarseFineHybrid
from .loading import state_digest, weights_digest
from .pipeline import ParScaleEAR

PAIRS_PREFIX = "teacher-pairs-"  # + a digest of the teacher and the settings
PAIRS_SEED = 0
PAIRS_BATCH = 4096  # the noise of a pair depends on its batch's size and place: part of the key
# stage-config fields that change a teacher's pairs beside its weights: in the key where they differ from their default
PAIRS_SAMPLING_FIELDS = ("time_shift", "coarse_lead", "time_scale")


def check_same_vae(model: ParScaleEAR, other: ParScaleEAR, what: str) -> None:
    """A one-line ValueError unless `other`'s LiteVAE (config and weights) is `model`'s: a teacher or an
    initialisation must come from the latents the student trains on."""
    if other.config.vae != model.config.vae:
        raise ValueError(f"{what}: its LiteVAE config differs from the --vae run's; train on that model's own LiteVAE "
                         f"(e.g. a VAE run made with train.vae_run_from_release)")
    mine, theirs = model.vae.state_dict(), other.vae.state_dict()
    if any(not torch.equal(mine[k].float().cpu(), theirs[k].float().cpu()) for k in mine):
        raise ValueError(f"{what}: its LiteVAE weights differ from the --vae run's; train on that model's own LiteVAE "
                         f"(e.g. a VAE run made with train.vae_run_from_release)")


def latent_coupling(teacher: ParScaleEAR) -> bool:
    """Whether a teacher's whole noise is one x_1 on its latent grid (a DiT peer's): a student takes its coupling
    through the latents, not stage by stage."""
    noise = teacher.generator.draw_batch(1, "meta", torch.float32)  # shapes only: nothing is drawn
    parts = [{part: tuple(t.shape[1:]) for part, t in stage.items()} for stage in noise.values()]
    return parts == [{"x1": tuple(teacher.generator.latent_shape)}]


def check_teacher(teacher: ParScaleEAR, student: ParScaleEAR) -> str:
    """How the student takes the teacher's noise -> sample coupling, or a one-line ValueError where it cannot:
    "stages", a teacher with the student's flow stages and tokens (its own stage noise and stage outputs), or
    "latents", a flow teacher whose noise is one x_1 on the student's latent grid (assembled from the student's stage
    noises, `CoarseFineHybrid.latent_noise`; its sample cut into the student's tokens)."""
    if not isinstance(student.generator, CoarseFineHybrid):
        raise ValueError("--teacher: the student must have ParScale-EAR stages (a coarse/fine hybrid), not be a DiT peer")
    s_stages = student.generator.stages
    if latent_coupling(teacher):
        objective = getattr(teacher.generator.config, "objective", "flow")
        if objective != "flow":
            raise ValueError(f"--teacher: a latent-grid (DiT) teacher must be a flow model, got objective {objective!r}")
        bad = [name for name, stage in s_stages.items() if stage.config.kind != "flow"]
        if bad:
            raise ValueError(f"--teacher: a latent-grid (DiT) teacher needs flow stages in the student; {bad} are not")
        if student.generator.joint_coarse:
            raise ValueError("--teacher: a latent-grid (DiT) teacher's noise does not split into a joint student's "
                             "coarse and fine noise; use a joint teacher, or a student of another mode")
        return "latents"
    t_stages = teacher.generator.stages
    if not isinstance(teacher.generator, CoarseFineHybrid) or list(t_stages) != list(s_stages):
        raise ValueError(f"--teacher: its stages {list(t_stages)} differ from the student's {list(s_stages)}")
    for name, stage in s_stages.items():
        t = t_stages[name]
        if (t.num_tokens, t.token_dim) != (stage.num_tokens, stage.token_dim) or t.config.kind != "flow":
            raise ValueError(f"--teacher: stage {name!r} must be a flow stage with the student's tokens "
                             f"({stage.num_tokens} x {stage.token_dim}), got {t.config.kind} {t.num_tokens} x {t.token_dim}")
    return "stages"


@torch.no_grad()
def teacher_pairs(teacher: ParScaleEAR, n: int, steps: tuple[int, ...], solver: str | None = None, batch_size: int = 4096,
                  seed: int = 0, progress: bool = False, student: ParScaleEAR | None = None) -> dict[str, torch.Tensor]:
    """n pairs on the teacher's device: {NAME_x1, NAME_x0} per stage (its noise and its normalised output tokens,
    float16) and `labels` (cycling through the classes), sampled at cfg 1 with `steps` and `solver`, under bf16
    autocast on a GPU. Noise comes from a generator seeded by `seed`, drawn a batch at a time (the same n,
    batch_size and seed give the same pairs).

    A teacher with stages samples its mean path (temperature 0) from its own stage noise, in its own token units.
    A latent-grid teacher (`student` required) samples from the latent noise assembled from the student's stage
    noises (temperature 1: that x_1 as it is); its latents are cut into the student's tokens, in the student's units."""
    teacher.eval()
    device = teacher.device
    steps = teacher.resolve_steps(steps)
    latent = latent_coupling(teacher)
    teacher.generator.check_sampling(steps, 1.0, 1.0 if latent else 0.0, solver)
    if latent and student is None:
        raise ValueError("teacher_pairs: a latent-grid (DiT) teacher needs the student whose tokens the pairs are cut into")
    gen = torch.Generator(device).manual_seed(seed)
    classes = teacher.config.num_classes
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    parts: dict[str, list[torch.Tensor]] = {}
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher pairs", unit="batch")
    for i in starts:
        b = min(batch_size, n - i)
        labels = (torch.arange(i, i + b, device=device) % classes) if classes else None
        with amp:
            x1, x0 = _latent_batch(teacher, student, b, labels, steps, solver, gen) if latent else \
                _stage_batch(teacher, b, labels, steps, solver, gen)
        for name in x0:
            parts.setdefault(f"{name}_x1", []).append(x1[name].half())
            parts.setdefault(f"{name}_x0", []).append(x0[name].half())
        if labels is not None:
            parts.setdefault("labels", []).append(labels)
    return {k: torch.cat(v) for k, v in parts.items()}


def _stage_batch(teacher: ParScaleEAR, b: int, labels, steps, solver, gen) -> tuple[dict, dict]:
    """A teacher's stage noises (their x_1) and mean-path stage outputs for one batch."""
    noise = teacher.draw_noise_on_device(b, gen)
    outputs = teacher.generator.sample_stages(noise, labels, steps, 1.0, 0.0, solver)
    return {name: noise[name]["x1"] for name in outputs}, outputs


def _latent_batch(teacher: ParScaleEAR, student: ParScaleEAR, b: int, labels, steps, solver, gen) -> tuple[dict, dict]:
    """The student's stage noises (their x_1) and a latent-grid teacher's sample from the latent noise they assemble,
    as the student's normalised stage tokens, for one batch."""
    hybrid = student.generator
    x1 = {name: parts["x1"] for name, parts in hybrid.draw_batch(b, teacher.device, torch.float32, gen).items()}
    std = {s.name: getattr(hybrid, f"{s.name}_std").to(teacher.device) for s in hybrid.stage_list}
    z = hybrid.latent_noise(x1).to(next(teacher.parameters()).dtype)
    (name,) = teacher.generator.stages
    latents = teacher.generator.sample({name: {"x1": z}}, labels, steps, 1.0, 1.0, solver).float()
    return x1, {name: tokens / std[name] for name, tokens in hybrid.tokens(latents).items()}


def take_token_scales(model: ParScaleEAR, source: ParScaleEAR) -> None:
    """Give `model` the token scales of `source` (the same stages, `check_teacher`): both buffers, since a joint
    stage scales its coarse tokens by `coarse_std` and its fine ones by `fine_std`."""
    for name in ("coarse", "fine"):
        getattr(model.generator, f"{name}_std").copy_(getattr(source.generator, f"{name}_std"))


def init_generator(model: ParScaleEAR, source: ParScaleEAR) -> list[str]:
    """Copy `source`'s generator weights (and token scales) into `model`'s where names and shapes match;
    returns the names left at their initialisation (new modules of the student). A name in the source that the
    model lacks, or one whose shape differs, is a one-line ValueError (a different architecture)."""
    mine, theirs = model.generator.state_dict(), source.generator.state_dict()
    unknown = sorted(set(theirs) - set(mine))
    wrong = [k for k in theirs if k in mine and theirs[k].shape != mine[k].shape]
    if unknown or wrong:
        detail = f"names the student lacks: {unknown[:3]}" if unknown else \
            f"{wrong[0]}: student {tuple(mine[wrong[0]].shape)}, source {tuple(theirs[wrong[0]].shape)}"
        raise ValueError(f"--init: the source's generator does not fit this model ({detail})")
    stages, field = model.generator.stages, model.config.GENERATOR  # "hybrid" (stages under it) or "dit" (one stage)
    for name, stage in source.generator.stages.items():  # the same weights read other times at another time_scale
        theirs_scale, mine_scale = (getattr(getattr(s, "config", None), "time_scale", None) for s in (stage, stages.get(name)))
        if name in stages and theirs_scale != mine_scale:
            key = field if name == field else f"{field}.{name}"
            raise ValueError(f"--init: stage {name!r} embeds time_scale * t with time_scale {mine_scale}, its source "
                             f"with {theirs_scale}: pass --set {key}.time_scale={theirs_scale}")
    model.generator.load_state_dict({**mine, **{k: v.to(mine[k].dtype) for k, v in theirs.items()}})
    return sorted(set(mine) - set(theirs))


def pairs_file(folder: Path, teacher: ParScaleEAR, n: int, steps, solver: str | None,
               student: ParScaleEAR | None = None) -> tuple[Path, dict]:
    """Where `cached_teacher_pairs` keeps these pairs (a name per teacher and settings) and their key; a latent-grid
    teacher's pairs also depend on the student's stages and token scales."""
    key = {"teacher": weights_digest(teacher), "n": n, "steps": list(teacher.resolve_steps(steps)), "solver": solver,
           "seed": PAIRS_SEED, "batch_size": PAIRS_BATCH}
    # sampling fields that change the pairs beside the weights (in the key only where set: older keys stay valid)
    sampling = {name: {f.name: v for f in dataclasses.fields(stage.config)
                       if f.name in PAIRS_SAMPLING_FIELDS and (v := getattr(stage.config, f.name)) != f.default}
                for name, stage in teacher.generator.stages.items()}
    if any(sampling.values()):
        key["sampling"] = sampling
    if latent_coupling(teacher):
        h = student.generator
        key["student"] = {"mode": h.config.mode, "pool": h.config.pool, "fine_patch": h.config.fine_patch,
                          "scales": {s.name: float(getattr(h, f"{s.name}_std")) for s in h.stage_list}}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"{PAIRS_PREFIX}{name}.pt", key


def pairs_layout(teacher: ParScaleEAR, n: int, student: ParScaleEAR | None = None) -> dict[str, tuple]:
    """{name: (shape, dtype)} of every tensor `teacher_pairs` makes: per stage NAME_x1 and NAME_x0, (n, tokens,
    token dims) in float16 (the student's stages for a latent-grid teacher), and `labels` (n,) int64 for a conditional
    one."""
    stages = (student if latent_coupling(teacher) else teacher).generator.stages
    layout = {f"{name}_{x}": ((n, stage.num_tokens, stage.token_dim), torch.float16) for name, stage in stages.items()
              for x in ("x1", "x0")}
    if teacher.config.num_classes:
        layout["labels"] = ((n,), torch.int64)
    return layout


def check_pairs_cache(cache, key: dict, layout: dict[str, tuple], classes: int) -> str | None:
    """Why a loaded pairs cache cannot be used (None: it can): its key, every tensor's name, shape and dtype, finite
    values, labels in [0, classes), and the digest of the tensors recorded when it was written."""
    if not isinstance(cache, dict) or cache.get("key") != key:
        return "it is not the cache of these pairs (another key, or not a cache)"
    pairs = cache.get("pairs")
    if not isinstance(pairs, dict) or set(pairs) != set(layout):
        found = sorted(pairs) if isinstance(pairs, dict) else type(pairs).__name__
        return f"it holds {found}, expected the tensors {sorted(layout)}"
    for name, (shape, dtype) in layout.items():
        t = pairs[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            return f"{name} is {got}, expected {shape} {dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{name} holds NaN or Inf"
    labels = pairs.get("labels")
    if labels is not None and len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        return f"its labels are outside [0, {classes})"
    if cache.get("digest") != state_digest(pairs):
        return "its tensors do not match the digest recorded when it was written (the file was damaged)"
    return None


def cached_teacher_pairs(folder: Path, teacher: ParScaleEAR, n: int, steps, solver: str | None,
                         progress: bool = False, student: ParScaleEAR | None = None) -> dict:
    """{"key", "pairs", "seconds", "digest"}: `teacher_pairs` (n of them at `steps` and `solver`, from seed PAIRS_SEED:
    a fixed data set, the same for every training seed) with the seconds they took, made once into `folder` (a VAE
    run folder: every student trained on its latents shares them) and read from there after, checked against their
    key and digest (`check_pairs_cache`); a cache that fails a check is made again (one warning line), so a resumed
    run finds exactly the same pairs. Also the file's path, as "path"."""
    path, key = pairs_file(folder, teacher, n, steps, solver, student)
    with shared_folder(folder, (f"{PAIRS_PREFIX}*.pt",)):  # other students on this VAE run may make pairs too
        return _read_or_make_pairs(path, key, teacher, n, steps, solver, progress, student)


def _read_or_make_pairs(path: Path, key: dict, teacher: ParScaleEAR, n: int, steps, solver: str | None, progress: bool,
                        student: ParScaleEAR | None) -> dict:
    """`cached_teacher_pairs`' work: the pairs at `path` if they pass their checks, else made and written there."""
    from .files import atomic_torch_save

    if path.exists():
        try:
            cache = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file
            cache = None
        problem = check_pairs_cache(cache, key, pairs_layout(teacher, n, student), teacher.config.num_classes) \
            if cache is not None else "it cannot be read (truncated, or another kind of file)"
        if problem is None:
            return {**cache, "path": path}
        warnings.warn(f"teacher pairs {path}: {problem}; they are made again", stacklevel=3)
    t0 = time.time()
    pairs = teacher_pairs(teacher, n, steps, solver, PAIRS_BATCH, PAIRS_SEED, progress, student)
    pairs = {k: v.cpu() for k, v in pairs.items()}
    cache = {"key": key, "pairs": pairs, "seconds": round(time.time() - t0, 1), "digest": state_digest(pairs)}
    atomic_torch_save(cache, path)
    return {**cache, "path": path}
