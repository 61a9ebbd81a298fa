"""The release format: a folder with config.json (the format, its version, the model config and SHA-256 digests of
config and weights) and model.safetensors (float32, or float16 / bfloat16 parameters), plus a model card; written
atomically by `save_release`, read strictly by `read_release` (a damaged or edited file is a one-line error, never
wrong weights). Models shipped inside the package load by name; a Hugging Face Hub id "org/name" downloads. The
model itself is built from the config by the pipeline (`ParScaleEAR.from_pretrained`); nothing here knows a model."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from .files import atomic_path, prepare_output_folder, remove_stale_temporaries, sha256_file

FORMAT = "parscale-ear"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CARD_MARK = "<!-- written by parscale-ear save_pretrained -->"
# the embedded default model (docs: its README.md; numbers: results/fashion_mnist.json)
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "fmnist-32-es"
HUB_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
# fields a release's config must hold: left out, their defaults would silently change how the model samples
REQUIRED_FIELDS = {"": ("num_classes", "vae", "cfg", "temperature"),
                   "hybrid": ("mode", "coarse", "fine", "coarse_steps", "fine_steps"),
                   "dit": ("objective", "steps", "solver", "time_shift"),
                   # each stage of the hybrid, by its kind (every release since 0.1 writes these)
                   "stage": ("kind",), "flow": ("solver", "max_steps", "objective", "mean_weight", "backbone_noise")}


def config_digest(config: dict) -> str:
    """SHA-256 of a config as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_module_state(module: torch.nn.Module, state: dict, source: str) -> None:
    """Strictly load a state dict; missing, unexpected or mis-shaped entries raise one ValueError naming `source`."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}" for k in own
             if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    kinds = [f"{k} is {state[k].dtype}, expected {'a floating-point' if own[k].is_floating_point() else 'an integer'} "
             f"tensor" for k in own if k in state and own[k].is_floating_point() != state[k].is_floating_point()]
    if kinds:
        raise ValueError(f"{source}: " + kinds[0] + (f" (+{len(kinds) - 1} more)" if len(kinds) > 1 else ""))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(wrong[0] + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        raise ValueError(f"{source}: weights do not match the config: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def shipped_models() -> list[str]:
    """The names of the models shipped inside the package (folders of weights/ with a config.json)."""
    return sorted(p.name for p in DEFAULT_MODEL.parent.iterdir() if (p / CONFIG_NAME).is_file())


def resolve(name: str | Path, revision: str | None = None) -> Path:
    """A local folder as given, a model shipped inside the package by name, or the snapshot folder of a Hub id."""
    path = Path(name)
    if isinstance(name, str) and not path.exists():
        shipped = DEFAULT_MODEL.parent
        if (shipped / name / CONFIG_NAME).is_file():
            return shipped / name
    if path.exists() or not isinstance(name, str) or not re.fullmatch(HUB_ID, name):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise OSError(f"from_pretrained: {name} is not a local folder, and loading a Hub id needs huggingface_hub "
                      f"(pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
    except Exception as e:  # offline, unknown repo, no access: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(f"from_pretrained: {name} is not a local folder and could not be fetched from the Hugging Face "
                      f"Hub ({type(e).__name__}: {first[:200]})") from None


def save_release(model, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors (+ a model card unless one of the user's is there) into `directory`,
    each atomically; other files in the folder are left alone. `dtype` float16 / bfloat16 halves the parameters."""
    from safetensors.torch import save_file

    from . import __version__

    if not isinstance(directory, (str, Path)) or not str(directory).strip():
        raise ValueError(f"save_pretrained: expected a folder path, got {directory!r}")
    if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):  # before anything is created
        raise ValueError(f"save_pretrained: dtype must be float32, float16 or bfloat16, got {dtype}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"save_pretrained: {directory} is a file; expected a folder (existing or new)")
    if (directory / "checkpoint.pt").exists():
        raise FileExistsError(f"save_pretrained: {directory} holds a training run (checkpoint.pt); write the release "
                              f"into a folder of its own")
    params = {k for k, _ in model.named_parameters()}
    state = {_stored_name(k): (v.to(dtype) if dtype is not None and k in params else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    _check_finite_weights(state, dtype)
    prepare_output_folder(directory, "save_pretrained:")
    remove_stale_temporaries(directory, (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME))
    with atomic_path(directory / WEIGHTS_NAME) as tmp:  # weights first: a config never points at missing weights
        save_file(state, str(tmp), metadata={"format": FORMAT})
        weights_sha256 = sha256_file(tmp)
    config = model.config.to_dict()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
            "weights_sha256": weights_sha256, "config_sha256": config_digest(config)}
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps({**meta, "config": config}, indent=2) + "\n")
    card = directory / CARD_NAME
    if not card.exists() or CARD_MARK in card.read_text(errors="replace"):  # never replace a card of your own
        with atomic_path(card) as tmp:
            tmp.write_text(model_card(model, dtype))
    return directory


def _check_finite_weights(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    """A one-line ValueError naming the first tensor that holds NaN or Inf as it would be stored (a value beyond
    float16's range of +-65504 becomes Inf), before anything is written."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        stored = str(dtype or torch.float32).replace("torch.", "")
        raise ValueError(f"save_pretrained: {bad[0]} holds NaN or Inf as {stored}" + (f" (+{len(bad) - 1} more)" if
                         len(bad) > 1 else "") + "; nothing was written" + ("" if dtype in (None, torch.float32) else
                         " (values beyond the dtype's range become Inf: store float32 or bfloat16)"))


def model_card(model, dtype: torch.dtype | None = None) -> str:
    """A Hugging Face style model card (README.md): what the model is, its license, data, use and limits."""
    from . import __version__

    c, counts = model.config, model.num_parameters()
    kind, steps = c.describe(), model.generator.default_steps()
    return (f"---\nlibrary_name: parscale-ear\nlicense: mit\ntags:\n- image-generation\n- energy-score\n- parscale-ear\n"
            f"---\n{CARD_MARK}\n# {c.name}\n\n{kind}: {c.vae.image_size}x{c.vae.image_size}x{c.vae.in_channels} images, "
            f"latent {c.vae.latent_channels}x{c.vae.latent_size}x{c.vae.latent_size}, {c.num_classes} classes; "
            f"{counts['total'] / 1e6:.2f}M parameters ({counts['generator'] / 1e6:.2f}M generator), stored as "
            f"{str(dtype or torch.float32).replace('torch.', '')}. Default sampling: steps {steps}, cfg {c.cfg:g}, "
            f"temperature {c.temperature:g}.\n\n```python\nimport parscale_ear as pe\n\n"
            f"model = pe.ParScaleEAR.from_pretrained(\"PATH_OR_HUB_ID\")\nimages = model.generate(16, seed=0)  "
            f"# (16, C, H, W) in [-1, 1]\n```\n\nWritten by parscale-ear {__version__} (`save_pretrained`), MIT license. "
            f"Quality and speed numbers belong in this card only with the command that measured them.\n")


def read_meta(config_path: Path) -> dict:
    """config.json's contents, checked: the format, its version, both digests, a config object matching its digest
    and holding the fields that set how the model samples."""
    try:
        meta = json.loads(config_path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"from_pretrained: {config_path} is not a text file (expected the JSON that "
                         f"save_pretrained writes)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"from_pretrained: {config_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"from_pretrained: {config_path} is not a {FORMAT} config")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"from_pretrained: {config_path}: format_version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"from_pretrained: format_version {version} is newer than this library's {FORMAT_VERSION}")
    if not isinstance(meta["config"], dict):
        raise ValueError(f"from_pretrained: {config_path}: 'config' must be a JSON object")
    lacking = [k for k in ("weights_sha256", "config_sha256") if not isinstance(meta.get(k), str)]
    if lacking:
        raise ValueError(f"from_pretrained: {config_path} records no {' or '.join(lacking)} (save_pretrained always "
                         f"writes both); it was edited or damaged, and is refused")
    if meta["config_sha256"] != config_digest(meta["config"]):
        raise ValueError(f"from_pretrained: {config_path}: the config does not match its recorded digest (the file was "
                         f"edited or damaged)")
    _check_required_fields(meta["config"], config_path)
    return meta


def _check_required_fields(config: dict, config_path: Path) -> None:
    """A one-line ValueError naming the fields of REQUIRED_FIELDS the stored config lacks."""
    generator = "dit" if config.get("dit") is not None else "hybrid"
    missing = [k for k in (*REQUIRED_FIELDS[""], generator) if k not in config]
    if isinstance(config.get(generator), dict):
        missing += [f"{generator}.{k}" for k in REQUIRED_FIELDS[generator] if k not in config[generator]]
        for name in ("coarse", "fine") if generator == "hybrid" else ():
            stage = config[generator].get(name)
            if isinstance(stage, dict):
                fields = REQUIRED_FIELDS["stage"] + (REQUIRED_FIELDS["flow"] if stage.get("kind") == "flow" else ())
                missing += [f"hybrid.{name}.{k}" for k in fields if k not in stage]
    if missing:
        raise ValueError(f"from_pretrained: {config_path}: the config lacks {', '.join(missing)}; their defaults "
                         f"could change how the model samples, so it is refused")


def read_release(directory: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """A release folder's model config (a dict), its weights by the model's names and the weights' path, each file
    checked: the format, its version, the digests of config and weights (a damaged or edited file is a one-line
    error, never wrong weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"from_pretrained: {p} not found (expected a folder written by save_pretrained)")
    meta = read_meta(config_path)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"from_pretrained: cannot read {weights_path} ({e})") from None
    if meta["weights_sha256"] != sha256_file(weights_path):
        raise ValueError(f"from_pretrained: {weights_path} does not match the digest in {CONFIG_NAME} (the file was "
                         f"changed or damaged)")
    return meta["config"], {_model_name(k): v for k, v in state.items()}, weights_path


# the weights file keeps the names it has had since 0.1: the generator's weights (the model's `generator`) under
# "hybrid.", whatever the generator is
STORED_GENERATOR, MODEL_GENERATOR = "hybrid.", "generator."


def _stored_name(key: str) -> str:
    return STORED_GENERATOR + key[len(MODEL_GENERATOR):] if key.startswith(MODEL_GENERATOR) else key


def _model_name(key: str) -> str:
    return MODEL_GENERATOR + key[len(STORED_GENERATOR):] if key.startswith(STORED_GENERATOR) else key
