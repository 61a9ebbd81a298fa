"""The kinds of generation stage, by the name a config's `kind` holds: "flow" (energy_flow.py: FlowConfig,
EnergyFlowGenerator) and "mar" (generator.py: MARConfig, EnergyGenerator). A dict of stage fields becomes the config
its kind names, fields written by earlier versions included (retired options at their off value, the other kind's
fields at their defaults), and a config becomes its stage module (`make_stage`)."""
from __future__ import annotations

import dataclasses

from .checks import nested_config
from .energy_flow import EnergyFlowGenerator, FlowConfig
from .generator import EnergyGenerator, MARConfig
from .stage import GeneratorConfig, StageBase

STAGE_KINDS: dict[str, tuple[type, type]] = {"flow": (FlowConfig, EnergyFlowGenerator), "mar": (MARConfig, EnergyGenerator)}

# fields of earlier versions whose experiments were dropped (docs/QUALITY.md keeps their measurements) and the value
# that meant "off": a stored config holding one at that value is the same model without it
RETIRED = {"noise_blocks": 0, "head_steps": 0, "mean_param": "v"}


def config_class(fields: dict, name: str = "GeneratorConfig") -> type:
    """The config class a dict of stage fields describes (by its `kind`, default GeneratorConfig's)."""
    kind = fields.get("kind", GeneratorConfig.__dataclass_fields__["kind"].default)
    if kind not in STAGE_KINDS:
        raise ValueError(f"{name}: kind must be one of {tuple(STAGE_KINDS)}, got {kind!r}")
    return STAGE_KINDS[kind][0]


def upgrade(fields: dict, name: str) -> dict:
    """`fields` without what a stored config of an earlier version may hold beyond its kind's fields: the retired
    options at their "off" value (mean_param: 'v', or anything in a stage without a mean head, where it did nothing)
    and the other kind's fields at their defaults (0.2 stored every field in every stage); any other value is a
    one-line ValueError naming the field."""
    fields = dict(fields)
    kind = fields.get("kind", GeneratorConfig.__dataclass_fields__["kind"].default)
    # time_shift is a flow stage's sampling option again; in a MAR stage (0.2 stored it there) it stays retired
    for key, off in dict(RETIRED, **({"time_shift": 1.0} if kind == "mar" else {})).items():
        if key not in fields:
            continue
        value = fields.pop(key)
        weight = fields.get("mean_weight", 0.0)
        mean_head = kind == "flow" and (
            (isinstance(weight, (int, float)) and weight > 0) or fields.get("objective", "flow") == "energy")
        if value != off and not (key == "mean_param" and not mean_head):
            raise ValueError(f"{name}.{key} = {value!r}: this option was removed in parscale-ear 0.3 (its runs are "
                             f"in docs/QUALITY.md); only {off!r}, its off value, still loads")
    mine = config_class(fields, name) if isinstance(kind, str) else GeneratorConfig
    for other_kind, (other, _) in STAGE_KINDS.items():
        if other is mine:
            continue
        for f in dataclasses.fields(other):
            if f.name in fields and f.name not in mine.__dataclass_fields__:
                if fields[f.name] != f.default:
                    raise ValueError(f"{name}.{f.name}: a field of {other_kind!r} stages, not of a {kind!r} stage")
                del fields[f.name]
    return fields


def stored_stage(fields: dict, name: str) -> dict:
    """A stored stage's fields as this version reads them: without a kind, the earlier default ('mar'); a field
    that did nothing in it left out (residual_grad under the energy objective, which keeps every gradient)."""
    fields = {"kind": "mar", **fields}
    if fields["kind"] == "flow" and fields.get("objective") == "energy":
        fields.pop("residual_grad", None)
    return fields


def stage_config(value: GeneratorConfig | dict, name: str) -> GeneratorConfig:
    """`value` as the config of its stage kind: a config as it is, or a dict of fields (see `upgrade`)."""
    if isinstance(value, GeneratorConfig):
        return value
    if not isinstance(value, dict):
        return nested_config(GeneratorConfig, value, name)  # the one-line TypeError for anything else
    fields = upgrade(value, name)
    return nested_config(config_class(fields, name), fields, name)


def as_kind(config: GeneratorConfig, kind: str) -> GeneratorConfig:
    """A stage's shared fields in a config of `kind` (its own fields at their defaults)."""
    target = config_class({"kind": kind})
    if type(config) is target:
        return config
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(GeneratorConfig) if f.name != "kind"}
    return target(**shared, kind=kind)


def make_stage(config: GeneratorConfig, num_tokens: int, token_dim: int, num_classes: int, context_dim: int = 0,
               lead_tokens: int = 0) -> StageBase:
    """The generation stage module of `config`'s kind; `lead_tokens`: how many leading tokens are a joint stage's
    coarse tokens (flow stages only)."""
    if lead_tokens and config.kind != "flow":
        raise ValueError(f"a joint coarse/fine stage must be a flow stage, got kind {config.kind!r}")
    extra = {"lead_tokens": lead_tokens} if lead_tokens else {}
    return STAGE_KINDS[config.kind][1](config, num_tokens, token_dim, num_classes, context_dim, **extra)
