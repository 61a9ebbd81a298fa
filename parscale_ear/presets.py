"""Named model configs and the `get_config(name, **overrides)` / `list_models()` registry (timm style; the models
themselves: `pipeline.create_model`), and the reading of a stored config as the kind of model it describes."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .baselines import PEER_NAMES  # the peers (baselines/dit.py), named free of torch for the CLI
from .baselines.dit import PEERS
from .flow_config import FlowConfig
from .generator import MARConfig
from .hybrid import HybridConfig
from .model_config import ModelConfig, ParScaleEARConfig, PeerConfig
from .stage import GeneratorConfig
from .stage_kinds import as_kind, upgrade
from .vae import LiteVAEConfig


def _fmnist_vae() -> LiteVAEConfig:
    """The Fashion-MNIST LiteVAE: 32x32x1 -> 4x16x16 latent (f = 2, two Haar levels)."""
    return LiteVAEConfig(image_size=32, in_channels=1, latent_channels=4, latent_size=16, dwt_levels=2,
                         extractor_channels=32, aggregator_channels=64, decoder_channels=(128, 64))


def fmnist_32() -> ParScaleEARConfig:
    """Class-conditional 32x32 grey (Fashion-MNIST) with the first design's MAR stages: 32x32x1 -> 4x16x16 latent,
    4x4 coarse grid, the fine residual one token per latent position."""
    return ParScaleEARConfig(
        name="fmnist-32",
        num_classes=10,
        vae=_fmnist_vae(),
        hybrid=HybridConfig(
            fine_patch=1,
            coarse=MARConfig(width=256, depth=6, heads=4, streams=2, head_width=256, head_depth=3),
            fine=MARConfig(width=256, depth=6, heads=4, streams=2, head_width=256, head_depth=3),
            coarse_steps=8,
            fine_steps=4,
        ),
        # sampling defaults from the FID-10k sweep of results/2026-11-23-h100-sampling-sweep
        # (best of cfg {1, 2, 3} x temperature {1, 0.85, 0.7, 0.55})
        cfg=2.0,
        temperature=0.55,
    )


def fmnist_32_flow() -> ParScaleEARConfig:
    """fmnist-32 with energy-flow stages: coarse 4x4x4 (16 tokens), fine residual as 2x2 patches
    (64 tokens of 16 dims); each stage draws all its tokens jointly in every pass."""
    return ParScaleEARConfig(
        name="fmnist-32-flow",
        num_classes=10,
        vae=_fmnist_vae(),
        hybrid=HybridConfig(
            fine_patch=2,
            coarse=FlowConfig(width=256, depth=4, heads=4, streams=2, head_width=256, head_depth=2,
                                   noise_dim=16),
            fine=FlowConfig(width=384, depth=6, heads=6, streams=2, head_width=384, head_depth=3,
                                 noise_dim=32),
            coarse_steps=2,
            fine_steps=2,
        ),
    )


# A regression-anchored energy-flow stage: one backbone pass per example; a mean head trained by the
# rectified-flow velocity loss (logit-normal t) plus EAR's head drawing the residual through one
# attention block (neighbouring tokens drawn jointly), m = 4 energy-score draws per target.
_VMEAN_STAGE = dict(backbone_noise=False, mean_weight=1.0, time_dist="logit_normal", samples=4,
                    residual_blocks=1)


def fmnist_32_vflow() -> ParScaleEARConfig:
    """fmnist-32-flow with v-mean stages (`_VMEAN_STAGE`): at temperature 0 each stage is an Euler flow
    solver; temperature > 0 adds the energy head's draw around the mean."""
    return apply_overrides(fmnist_32_flow(), name="fmnist-32-vflow", temperature=0.5,
                           hybrid={"coarse": dict(_VMEAN_STAGE), "fine": dict(_VMEAN_STAGE)})


# The shipped default's stage design and schedule (fmnist-32-vflow-s), shared by lite-256-vflow: Heun 3 + 3
# (10 passes), the schedule whose FID-50k (13.17) and 256x256 latency (0.48 ms/image P99 at batch 16) were
# measured (results/fashion_mnist.json); Euler 4 + 4 (8 passes, the default until 2026-12-02) scores 19.09.
_SHIPPED_STAGE = dict(_VMEAN_STAGE, head_depth=2, residual_grad=0.0, solver="heun")
_SHIPPED_STEPS = (3, 3)
_SHIPPED_SAMPLING = dict(cfg=1.0, temperature=0.0)


def fmnist_32_vflow_s() -> ParScaleEARConfig:
    """The shipped default (6.3M generator parameters, 14 MB at float16): fmnist-32-vflow at a size
    that fits in the repository, with the energy score's gradient kept out of the backbone
    (residual_grad 0). Sampling defaults: the schedule of its measured FID-50k (results/fashion_mnist.json),
    3 + 3 Heun steps, cfg 1 (unguided), temperature 0 (the v-mean's flow path): 10 backbone passes per image."""
    small = {"coarse": dict(_SHIPPED_STAGE, width=128, depth=3, heads=2, head_width=128),
             "fine": dict(_SHIPPED_STAGE, width=192, depth=5, heads=3, head_width=192),
             "coarse_steps": _SHIPPED_STEPS[0], "fine_steps": _SHIPPED_STEPS[1]}
    return apply_overrides(fmnist_32_flow(), name="fmnist-32-vflow-s", hybrid=small, **_SHIPPED_SAMPLING)


# The few-step energy student (distill.py): the shipped flow design, its whole stage trained by the energy score
# of the drawn x0 (mean + the residual path's draw, every gradient kept: residual_grad at its default), half the
# training draws at t = 1 (the one-pass case) and the rest uniform; sampled with one DDIM-like step per stage, each
# drawing x0 from the energy head (temperature 1).
_STUDENT_STAGE = dict(objective="energy", mean_weight=0.0, residual_grad=1.0, solver="euler", one_step_prob=0.5,
                      time_dist="uniform")
_STUDENT_SAMPLING = dict(cfg=1.0, temperature=1.0)


def fmnist_32_es() -> ParScaleEARConfig:
    """The embedded default: the few-step energy student of fmnist-32-vflow-s (same architecture and size, 6.3M
    generator parameters), trained from a fmnist-32-vflow-s run's weights on its teacher pairs (`parscale-ear train
    --init RUN --teacher RUN --pairs N`); default sampling 2 + 2 steps (4 passes), temperature 1 (every step draws x0
    from the energy head), cfg 1; 1 + 1 (2 passes) is the fastest schedule."""
    stages = {"coarse": dict(_STUDENT_STAGE), "fine": dict(_STUDENT_STAGE), "coarse_steps": 2, "fine_steps": 2}
    return apply_overrides(fmnist_32_vflow_s(), name="fmnist-32-es", hybrid=stages, **_STUDENT_SAMPLING)


# One flow network over the whole latent grid (mode no_coarse: the 4x16x16 latent as 64 tokens of 2x2 patches): 10
# adaLN blocks x 192, P = 1, no energy head, logit-normal t. At equal size and minutes its passes score within 7% of
# the equal-size DiT's (dit-xs) and cost 0.84x theirs (docs/QUALITY.md rows 111-116). Its steps: coarse_steps +
# fine_steps (one stage runs both).
_FLOW1_STAGE = dict(width=192, depth=10, heads=3, head_width=192, streams=1, backbone_noise=False, mean_weight=1.0,
                    time_dist="logit_normal", energy_head=False, residual_blocks=0, one_step_prob=0.0, solver="heun")


def fmnist_32_flow1() -> ParScaleEARConfig:
    """The flow stage as one network on the whole latent grid (6.8M generator parameters), sampled with 5 Heun steps
    (9 passes), temperature 0 (there is no energy head: the flow's deterministic path), cfg 1: the teacher and the
    initialisation of the one-pass models `fmnist-32-mf1` and `fmnist-32-es1`."""
    return apply_overrides(fmnist_32_flow(), name="fmnist-32-flow1", mode="no_coarse", cfg=1.0, temperature=0.0,
                           hybrid={"fine": dict(_FLOW1_STAGE), "coarse_steps": 3, "fine_steps": 2})


def fmnist_32_mf1() -> ParScaleEARConfig:
    """fmnist-32-flow1 learning MeanFlow's average velocity (one pass a step; 2 steps by default): trained
    from a fmnist-32-flow1 run's weights (`--init RUN`), where it starts as that flow (its interval embedding is zero),
    with MeanFlow's time draws (logit-normal(-0.4, 1), 25% of draws with r < t)."""
    stage = dict(_FLOW1_STAGE, objective="meanflow", solver="euler", time_mean=-0.4)
    return apply_overrides(fmnist_32_flow1(), name="fmnist-32-mf1", hybrid={"fine": stage, "coarse_steps": 1,
                                                                            "fine_steps": 1})


def fmnist_32_ed1() -> ParScaleEARConfig:
    """fmnist-32-flow1 as a one-pass generator trained by the energy distance to each class's data in multi-scale
    pooled latent features (`energy_distance.py`; drifting models' attraction and repulsion): from a
    fmnist-32-flow1 run's weights (`--init RUN`), whose one-step x0 is each class's mean; 1 step, one pass."""
    stage = dict(_FLOW1_STAGE, objective="distance", solver="euler")
    return apply_overrides(fmnist_32_flow1(), name="fmnist-32-ed1", hybrid={"fine": stage, "coarse_steps": 0,
                                                                            "fine_steps": 1})


def fmnist_32_es1() -> ParScaleEARConfig:
    """fmnist-32-flow1 as a few-step energy student on one stage: every pass sees the whole noise the teacher used,
    so a one-stage teacher's noise -> sample pairs stay a map; an energy head (m = 4 draws through one attention
    block) draws each step's x0 around the mean, the whole stage trained by the energy score (`_STUDENT_STAGE`); 2
    steps by default, temperature 1."""
    stage = dict(_FLOW1_STAGE, **_STUDENT_STAGE, energy_head=True, residual_blocks=1, samples=4)
    return apply_overrides(fmnist_32_flow1(), name="fmnist-32-es1", hybrid={"fine": stage, "coarse_steps": 1,
                                                                            "fine_steps": 1}, **_STUDENT_SAMPLING)


def fmnist_32_cpu() -> ParScaleEARConfig:
    """A small fmnist-32-flow (~0.9M generator parameters) whose recipe in the README trains on a
    2-core CPU in minutes: rough samples, for trying the library without a GPU."""
    return apply_overrides(fmnist_32_flow(), name="fmnist-32-cpu", hybrid={
        "coarse": dict(width=96, depth=2, heads=2, head_width=96, head_depth=1, noise_dim=16),
        "fine": dict(width=128, depth=3, heads=4, head_width=128, head_depth=1, noise_dim=16)})


def lite_256() -> ParScaleEARConfig:
    """256x256 RGB at the seed's 32x16x16 latent (f = 16, four Haar levels); ~30-40M generator params."""
    return ParScaleEARConfig(
        name="lite-256",
        num_classes=1000,
        vae=LiteVAEConfig(image_size=256, in_channels=3, latent_channels=32, latent_size=16, dwt_levels=4,
                          extractor_channels=32, aggregator_channels=128, decoder_channels=(256, 192, 128, 64, 32)),
        hybrid=HybridConfig(
            fine_patch=1,
            coarse=MARConfig(width=384, depth=4, heads=6, streams=2, head_width=384, head_depth=3),
            fine=MARConfig(width=512, depth=6, heads=8, streams=2, head_width=512, head_depth=3),
            coarse_steps=4,
            fine_steps=1,
        ),
    )


def lite_256_vflow() -> ParScaleEARConfig:
    """lite-256's LiteVAE with the shipped default's design and token geometry (fmnist-32-vflow-s):
    v-mean energy-flow stages, coarse 4x4 grid and fine 2x2 latent patches (64 tokens of 128 dims),
    residual_grad 0, sampled at the default's 3 + 3 Heun steps, cfg 1, temperature 0; 30-40M generator
    parameters like lite-256 (the seeds' size). Untrained here: it exists to be timed at that schedule."""
    stage = dict(_SHIPPED_STAGE, kind="flow", streams=2)
    return dataclasses.replace(lite_256(), name="lite-256-vflow", **_SHIPPED_SAMPLING, hybrid=HybridConfig(
        fine_patch=2,
        coarse=FlowConfig(**stage, width=320, depth=3, heads=5, head_width=320, noise_dim=16),
        fine=FlowConfig(**stage, width=448, depth=5, heads=7, head_width=448, noise_dim=32),
        coarse_steps=_SHIPPED_STEPS[0], fine_steps=_SHIPPED_STEPS[1]))


def lite_256_es() -> ParScaleEARConfig:
    """lite-256-vflow as a few-step energy student (the default's objective and schedule: 2 + 2 steps drawn by the
    energy head; 1 + 1 = 2 passes the fastest); untrained here: it exists to be timed at those schedules."""
    stages = {"coarse": dict(_STUDENT_STAGE), "fine": dict(_STUDENT_STAGE), "coarse_steps": 2, "fine_steps": 2}
    return apply_overrides(lite_256_vflow(), name="lite-256-es", hybrid=stages, **_STUDENT_SAMPLING)


def tiny_32() -> ParScaleEARConfig:
    """A few-thousand-parameter 32x32 model for tests and smoke runs (not for quality)."""
    return ParScaleEARConfig(
        name="tiny-32",
        num_classes=10,
        vae=LiteVAEConfig(image_size=32, in_channels=1, latent_channels=4, latent_size=16, dwt_levels=2,
                          extractor_channels=8, extractor_blocks=1, aggregator_channels=16, aggregator_blocks=1,
                          decoder_channels=(16, 8)),
        hybrid=HybridConfig(
            fine_patch=1,
            coarse=MARConfig(width=32, depth=1, heads=2, streams=2, prefix_len=2, head_width=32, head_depth=1, noise_dim=8),
            fine=MARConfig(width=32, depth=1, heads=2, streams=2, prefix_len=2, head_width=32, head_depth=1, noise_dim=8),
            coarse_steps=4,
            fine_steps=2,
        ),
    )


def tiny_32_flow() -> ParScaleEARConfig:
    """tiny-32 with energy-flow stages and 2x2 fine patches (tests only)."""
    c = tiny_32()
    stage = dict(kind="flow", width=32, depth=1, heads=2, streams=2, prefix_len=2, head_width=32, head_depth=1,
                 noise_dim=8, max_steps=4)
    return apply_overrides(c, name="tiny-32-flow", hybrid={"fine_patch": 2, "coarse_steps": 2, "fine_steps": 2,
                                                           "coarse": stage, "fine": dict(stage)})


_PRESETS: dict[str, Callable[[], ParScaleEARConfig]] = {
    "fmnist-32": fmnist_32,
    "fmnist-32-flow": fmnist_32_flow,
    "fmnist-32-cpu": fmnist_32_cpu,
    "fmnist-32-vflow": fmnist_32_vflow,
    "fmnist-32-vflow-s": fmnist_32_vflow_s,
    "fmnist-32-es": fmnist_32_es,
    "fmnist-32-flow1": fmnist_32_flow1,
    "fmnist-32-mf1": fmnist_32_mf1,
    "fmnist-32-es1": fmnist_32_es1,
    "fmnist-32-ed1": fmnist_32_ed1,
    "lite-256-es": lite_256_es,
    "tiny-32-flow": tiny_32_flow,
    "lite-256": lite_256,
    "lite-256-vflow": lite_256_vflow,
    "tiny-32": tiny_32,
}


# the kinds of model, by the field that holds their generator's config, in the order a stored dict is matched (a peer
# stored by 0.2 holds an unused hybrid beside its dit)
MODEL_CONFIGS: tuple[type[ModelConfig], ...] = (PeerConfig, ParScaleEARConfig)


def peer_config(name: str, vae: LiteVAEConfig | None = None, num_classes: int = 10) -> PeerConfig:
    """The peer `name`'s config on `vae` (default: the fmnist-32 LiteVAE), sampled unguided."""
    return PeerConfig(name=name, num_classes=num_classes, vae=vae or _fmnist_vae(), dit=dataclasses.replace(PEERS[name]))


def config_from_dict(d: dict) -> ModelConfig:
    """The config a stored dict describes: the kind of model whose generator field it holds (`MODEL_CONFIGS`)."""
    if not isinstance(d, dict):
        raise ValueError(f"config: expected a dict of config fields, got {type(d).__name__}")
    kind = next((c for c in MODEL_CONFIGS if d.get(c.GENERATOR) is not None), ParScaleEARConfig)
    return kind.from_dict(d)


# Shorthands accepted by create_model: they set a field of the hybrid or of both stages.
_HYBRID_KEYS = {"mode", "pool", "coarse_steps", "fine_steps"}
_STAGE_KEYS = {"streams", "prefix_len", "alpha", "tau", "class_dropout"}


def list_models(peers: bool = True) -> list[str]:
    """Names of the registered presets: ParScale-EAR's and, with `peers`, the peer models (they need diffusers)."""
    return sorted(_PRESETS) + (list(PEER_NAMES) if peers else [])


def merge_overrides(obj: Any, overrides: dict, where: str = "") -> Any:
    """A copy of config dataclass `obj` with `overrides` applied; nested dicts update nested configs."""
    stage = isinstance(obj, GeneratorConfig)
    if stage and isinstance(overrides.get("kind"), str):  # a stage of another kind
        obj = as_kind(obj, overrides["kind"])
    fields = {f.name for f in dataclasses.fields(obj)}
    if stage:  # a retired field: its off value changes nothing, any other is refused by name
        kept = upgrade({**{f: getattr(obj, f) for f in fields}, **overrides}, f"create_model: {where}".rstrip("."))
        overrides = {k: v for k, v in overrides.items() if k in kept}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"create_model: unknown option {where}{key!r}; known: {sorted(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = merge_overrides(current, value, f"{where}{key}.")
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def apply_overrides(config: ModelConfig, **overrides: Any) -> ModelConfig:
    """`config` with overrides: top-level fields, nested dicts (vae={...}, hybrid={...}), or the
    shorthands mode/pool/coarse_steps/fine_steps (hybrid) and streams/prefix_len/alpha/tau/
    class_dropout (both stages)."""
    if not isinstance(config, ParScaleEARConfig):  # a peer: its own fields only
        return merge_overrides(config, overrides)
    hybrid = {k: overrides.pop(k) for k in list(overrides) if k in _HYBRID_KEYS}
    stage = {k: overrides.pop(k) for k in list(overrides) if k in _STAGE_KEYS}
    if stage:
        hybrid.update(coarse=stage, fine=dict(stage))
    if hybrid:
        nested = overrides.setdefault("hybrid", {})
        for k, v in hybrid.items():
            nested[k] = {**v, **nested.get(k, {})} if isinstance(v, dict) else v
    return merge_overrides(config, overrides)


def get_config(name: str, /, **overrides: Any) -> ModelConfig:
    """The preset's config with overrides (see `apply_overrides`)."""
    if name not in _PRESETS and name not in PEER_NAMES:
        raise ValueError(f"create_model: unknown model {name!r}; available: {', '.join(list_models())}")
    return apply_overrides(_PRESETS[name]() if name in _PRESETS else peer_config(name), **overrides)


def recipe_config(recipe: str, vae_config: ModelConfig, overrides: dict | None = None) -> ModelConfig:
    """The model of a named recipe on a VAE run's VAE: a preset's generator (and sampling defaults), or
    a peer model (`PEER_NAMES`) on that VAE, with create_model-style overrides."""
    if recipe in PEER_NAMES:
        config = peer_config(recipe, vae_config.vae, vae_config.num_classes)
    else:
        config = dataclasses.replace(get_config(recipe), vae=vae_config.vae)
    return apply_overrides(config, **(overrides or {}))
