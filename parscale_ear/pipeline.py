"""ParScaleEAR: the end-to-end pipeline, noise -> coarse tokens -> fine residual -> LiteVAE decoder -> pixels.

Joins LiteVAE (vae.py) and the coarse/fine hybrid of energy generators (hybrid.py, generator.py).
Per-image seeds as in EDM (Karras et al. 2022): image i depends only on seed + i.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .hybrid import CoarseFineHybrid, HybridConfig
from .checks import check_field_types, check_images, check_int, check_labels, check_real, nested_config
from .files import atomic_path
from .vae import LiteVAE, LiteVAEConfig

FORMAT = "parscale-ear"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CARD_MARK = "<!-- written by parscale-ear save_pretrained -->"
# the embedded default model (docs: its README.md; numbers: results/fashion_mnist.json)
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "fmnist-32-es"
HUB_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"


def _sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _config_digest(config: dict) -> str:
    """SHA-256 of a config as canonical JSON (sorted keys, no spaces)."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_device(device, name: str = "device") -> torch.device:
    """`device` as a torch.device: a torch.device or 'cpu', 'cuda', 'cuda:N' that this machine has (one-line errors)."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name}: expected 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r} ({type(device).__name__})")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name}: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu" or device.index not in (None, 0):
        raise ValueError(f"{name}: expected 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    return device


def _resolve_pretrained(name: str | Path, revision: str | None = None) -> Path:
    """A local folder as given, or the snapshot folder of a Hub id that is not a local path."""
    import re

    path = Path(name)
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


MAX_SEED = 2**63  # torch.Generator seeds are 64-bit; image i of a call uses seed + i


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (no limit where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


@dataclass
class ParScaleEARConfig:
    name: str = "custom"
    num_classes: int = 10  # 0 = unconditional
    vae: LiteVAEConfig = field(default_factory=LiteVAEConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    # the DiT peer in place of the hybrid (baselines/dit.py), same VAE; None = ParScale-EAR
    dit: "DiTConfig | dict | None" = None
    cfg: float = 1.0  # default classifier-free guidance scale for `generate`
    temperature: float = 1.0  # default temperature (scales the head's adaLN shift, EAR; with a mean head the residual, 0 = the mean path)

    def __post_init__(self):
        self.vae = nested_config(LiteVAEConfig, self.vae, "ParScaleEARConfig.vae")
        self.hybrid = nested_config(HybridConfig, self.hybrid, "ParScaleEARConfig.hybrid")
        if self.dit is not None:
            from .baselines.dit import DiTConfig

            self.dit = nested_config(DiTConfig, self.dit, "ParScaleEARConfig.dit")
        check_field_types(self)
        check_int(self.num_classes, "ParScaleEARConfig.num_classes", minimum=0)
        check_real(self.cfg, "ParScaleEARConfig.cfg", minimum=0.0)
        check_real(self.temperature, "ParScaleEARConfig.temperature", minimum=0.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ParScaleEARConfig":
        try:
            return cls(**d)
        except TypeError as e:  # unknown or missing keys
            raise ValueError(f"config does not describe a ParScaleEAR model: {e}") from None


class ParScaleEAR(nn.Module):
    """LiteVAE + coarse/fine energy generators; `generate`, `reconstruct`, save/load."""

    def __init__(self, config: ParScaleEARConfig | None = None):
        super().__init__()
        self.config = cfg = config or ParScaleEARConfig()
        try:
            self.vae = LiteVAE(cfg.vae)
            if cfg.dit is not None:  # the peer takes the generator's place
                from .baselines.dit import DiTBaseline

                self.hybrid = DiTBaseline(cfg.dit, cfg.vae.latent_shape, cfg.num_classes)
            else:
                self.hybrid = CoarseFineHybrid(cfg.hybrid, cfg.vae.latent_shape, cfg.num_classes)
        except (MemoryError, RuntimeError) as e:  # sizes this machine cannot hold: one line naming the config
            if not isinstance(e, MemoryError) and "allocate" not in str(e) and "out of memory" not in str(e):
                raise
            raise ValueError(f"ParScaleEARConfig {cfg.name!r}: its sizes need more memory than this machine has; "
                             f"reduce the widths, channels or streams") from None

    # ------------------------------------------------------------------ info
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per module."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        out = {
            "vae.encoder": count(self.vae) - count(self.vae.decoder),
            "vae.decoder": count(self.vae.decoder),
        }
        for name, stage in self.hybrid.stages.items():
            out[f"generator.{name}"] = count(stage)
        out["generator"] = sum(v for k, v in out.items() if k.startswith("generator."))
        out["total"] = count(self)
        return out

    # ------------------------------------------------------------------ sampling
    def draw_noise(self, seeds: Sequence[int], device: torch.device | str | None = None) -> dict:
        """Per-image randomness of each stage (coarse before fine), image i from seed i alone."""
        stages = self.hybrid.stages
        per_stage = {name: [] for name in stages}
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            for name, stage in stages.items():
                per_stage[name].append(stage.draw(g))
        device = device or self.device
        dtype = next(self.parameters()).dtype
        stack = lambda xs: torch.stack(xs).to(device, dtype if xs[0].is_floating_point() else xs[0].dtype)  # noqa: E731
        return {k: tuple(stack(list(parts)) for parts in zip(*draws)) for k, draws in per_stage.items()}

    def draw_noise_on_device(self, batch: int, generator: torch.Generator | None = None) -> dict:
        """Batch randomness drawn on the model's device in one go: the fast path for timing and
        serving (capturable in a CUDA graph), not tied to per-image seeds."""
        dtype = next(self.parameters()).dtype
        return {name: stage.draw_batch(batch, self.device, dtype, generator) for name, stage in self.hybrid.stages.items()}

    def default_labels(self, seeds: Sequence[int]) -> torch.Tensor | None:
        """Labels cycle through the classes by seed, so image i's label depends only on seed + i."""
        if self.config.num_classes == 0:
            return None
        return torch.tensor([int(s) % self.config.num_classes for s in seeds], dtype=torch.long)

    def resolve_steps(self, steps) -> tuple[int, ...]:
        """Steps per stage (matched to the hybrid's stage list) from None (the config's), an int or
        a tuple. An int sets a one-stage model's steps, or the first (coarse) stage's of a two-stage
        model (the fine stage keeps its default); a tuple gives every stage's."""
        default = tuple(self.hybrid.default_steps())
        if steps is None:
            return default
        if isinstance(steps, (tuple, list)):
            if len(steps) != len(default):
                if len(default) == 1:
                    raise ValueError(f"steps: this model has one stage; pass an int, got the pair {tuple(steps)}")
                raise TypeError(f"steps: expected an int or a (coarse, fine) pair of ints, got {steps!r}")
            names = ("coarse", "fine") if len(default) == 2 else ("steps",)
            return tuple(check_int(k, f"steps[{i}] ({n})") for i, (k, n) in enumerate(zip(steps, names)))
        steps = check_int(steps, "steps")
        return (steps,) + default[1:]

    @torch.no_grad()
    def sample_latents(self, noise: dict, labels: torch.Tensor | None, steps=None, cfg: float = 1.0, temperature: float = 1.0,
                       solver: str | None = None) -> torch.Tensor:
        """Latents (B, c, h, w) from pre-drawn noise; static shapes (the timed path)."""
        return self.hybrid.sample(noise, labels, self.resolve_steps(steps), cfg, temperature, solver)

    @torch.no_grad()
    def iter_generate(
        self,
        n: int,
        labels=None,
        cfg: float | None = None,
        temperature: float | None = None,
        steps=None,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        solver: str | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield image batches (b, C, H, W) in [-1, 1] for images seed, seed + 1, ..., seed + n - 1."""
        n = check_int(n, "n")
        batch_size = check_int(batch_size, "batch_size")
        seed = check_int(seed, "seed", minimum=0)
        if seed + n > MAX_SEED:
            raise ValueError(f"seed: image seeds seed .. seed + n - 1 must stay below 2**63, got seed {seed} and n {n}")
        cfg = check_real(self.config.cfg if cfg is None else cfg, "cfg", minimum=0.0)
        temperature = check_real(self.config.temperature if temperature is None else temperature, "temperature",
                                 minimum=0.0)
        seeds = range(seed, seed + n)  # lazy: a batch's seeds and labels are made when it is drawn
        if labels is not None:
            labels = check_labels(labels, self.config.num_classes, batch=n)
        steps = self.resolve_steps(steps)
        self.hybrid.check_solver(solver)  # before any work
        starts = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="generate", unit="batch")
        for i in starts:
            chunk = seeds[i : i + batch_size]
            noise = self.draw_noise(chunk)
            y = labels[i : i + len(chunk)] if labels is not None else self.default_labels(chunk)
            y = None if y is None else y.to(self.device)
            latents = self.hybrid.sample(noise, y, steps, cfg, temperature, solver)
            yield self.vae.decode(latents).clamp(-1, 1)

    @torch.no_grad()
    def generate(self, n: int, labels=None, cfg: float | None = None, temperature: float | None = None, steps=None, seed: int = 0,
                 batch_size: int = 64, progress: bool = False, solver: str | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1]; image i depends only on seed + i (and its label).

        labels: n class indices (default: (seed + i) mod num_classes); steps: int (coarse steps, or
        the single stage's) or (coarse, fine); cfg/temperature default to the config's; solver: "euler"
        or "heun" (flow stages with a mean head, and the DiT peer; default: each stage's config).
        """
        n = check_int(n, "n")
        v = self.config.vae
        need = n * v.in_channels * v.image_size**2 * 4  # the float32 result, all at once
        if need > _memory_bytes():
            raise ValueError(f"n: {n} images of {v.in_channels}x{v.image_size}x{v.image_size} need {need / 2**30:.1f} GiB at "
                             f"once, more than this machine's memory; use iter_generate for batches")
        return torch.cat(list(self.iter_generate(n, labels, cfg, temperature, steps, seed, batch_size, progress, solver)))

    def compile_sampler(self, batch_size: int, steps=None, cfg: float | None = None, temperature: float | None = None,
                        dtype: torch.dtype | None = None, graphs: bool | None = None, compile: bool = False,
                        channels_last: bool = False, solver: str | None = None):
        """A `FastSampler` (parscale_ear.fast): noise -> pixels for `batch_size` images at this schedule,
        bfloat16 + CUDA graphs on a GPU (the benchmarked speed through the public API), eager float32
        on the CPU. `sampler(seed=s)` gives generate's per-image seeds; `sampler(seed=None)` device noise."""
        from .fast import FastSampler

        return FastSampler(self, batch_size, steps, cfg, temperature, dtype, graphs, compile, channels_last, solver)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode (posterior mean) and decode images (B, C, H, W) in [-1, 1]; runs in the model's
        dtype and returns the input's dtype."""
        check_images(images, self.config.vae.in_channels, self.config.vae.image_size)
        dtype = next(self.parameters()).dtype
        recon = self.vae.decode(self.vae.encode(images.to(self.device, dtype))).clamp(-1, 1)
        return recon.to(images.dtype)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors into `directory` (created if needed), each file
        atomically; other files in the folder are left alone (as diffusers does). `dtype`
        (torch.float16 / bfloat16) stores the parameters at half size; buffers stay float32 and
        `from_pretrained` loads either as float32."""
        from safetensors.torch import save_file

        from . import __version__
        from .files import prepare_output_folder, remove_stale_temporaries

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
        prepare_output_folder(directory, "save_pretrained:")
        remove_stale_temporaries(directory, (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__}
        params = {k for k, _ in self.named_parameters()}
        state = {k: (v.to(dtype) if dtype is not None and k in params else v).detach().contiguous().cpu()
                 for k, v in self.state_dict().items()}
        # weights first: a config.json never points at weights that are not there yet
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
            weights_sha256 = _sha256_file(tmp)
        config = self.config.to_dict()
        # the digests let from_pretrained tell a damaged or edited file from a release (one-line error, never wrong weights)
        meta.update(weights_sha256=weights_sha256, config_sha256=_config_digest(config))
        with atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps({**meta, "config": config}, indent=2) + "\n")
        card = directory / CARD_NAME
        if not card.exists() or CARD_MARK in card.read_text(errors="replace"):  # never replace a card of your own
            with atomic_path(card) as tmp:
                tmp.write_text(self.model_card(dtype))
        return directory

    def model_card(self, dtype: torch.dtype | None = None) -> str:
        """A Hugging Face style model card (README.md) describing this model and how to load it."""
        from . import __version__

        c, counts = self.config, self.num_parameters()
        kind = "DiT peer (diffusers)" if c.dit is not None else f"ParScale-EAR, hybrid mode {c.hybrid.mode}"
        steps = self.hybrid.default_steps()
        return (f"---\nlibrary_name: parscale-ear\ntags:\n- image-generation\n- energy-score\n- parscale-ear\n---\n"
                f"{CARD_MARK}\n# {c.name}\n\n{kind}: {c.vae.image_size}x{c.vae.image_size}x{c.vae.in_channels} images, "
                f"latent {c.vae.latent_channels}x{c.vae.latent_size}x{c.vae.latent_size}, {c.num_classes} classes; "
                f"{counts['total'] / 1e6:.2f}M parameters ({counts['generator'] / 1e6:.2f}M generator), stored as "
                f"{str(dtype or torch.float32).replace('torch.', '')}. Default sampling: steps {steps}, cfg {c.cfg:g}, "
                f"temperature {c.temperature:g}.\n\n```python\nimport parscale_ear as pe\n\n"
                f"model = pe.ParScaleEAR.from_pretrained(\"PATH_OR_HUB_ID\")\nimages = model.generate(16, seed=0)  "
                f"# (16, C, H, W) in [-1, 1]\n```\n\nWritten by parscale-ear {__version__} (`save_pretrained`). "
                f"Quality and speed numbers belong in this card only with the command that measured them.\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, device: torch.device | str = "cpu",
                        revision: str | None = None) -> "ParScaleEAR":
        """Load a folder written by `save_pretrained`, or a Hugging Face Hub id ("org/name") that is
        not a local folder (downloaded with huggingface_hub; a clear error without a network); with
        no directory, the embedded default (`DEFAULT_MODEL`, fmnist-32-vflow-s).
        Weights load as float32, on `device`."""
        if directory is None:
            directory = DEFAULT_MODEL
        if not isinstance(directory, (str, Path)) or not str(directory).strip():
            raise ValueError(f"from_pretrained: expected a release folder, a shipped model name or a Hub id, got {directory!r}")
        device = check_device(device)  # before anything loads
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if isinstance(directory, str) and (DEFAULT_MODEL.parent / directory / CONFIG_NAME).is_file() \
                and not Path(directory).exists():
            directory = DEFAULT_MODEL.parent / directory  # a model shipped inside the package, by name
        directory = _resolve_pretrained(directory, revision)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (config_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"from_pretrained: {p} not found (expected a folder written by save_pretrained)")
        try:
            meta = json.loads(config_path.read_text())
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
        if "config_sha256" in meta and meta["config_sha256"] != _config_digest(meta["config"]):
            raise ValueError(f"from_pretrained: {config_path}: the config does not match its recorded digest (the file was "
                             f"edited or damaged)")

        try:
            model = cls(ParScaleEARConfig.from_dict(meta["config"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"from_pretrained: {config_path}: {e}") from None
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"from_pretrained: cannot read {weights_path} ({e})") from None
        if "weights_sha256" in meta and meta["weights_sha256"] != _sha256_file(weights_path):
            raise ValueError(f"from_pretrained: {weights_path} does not match the digest in {CONFIG_NAME} (the file was "
                             f"changed or damaged)")
        model.load_weights(state, source=str(weights_path))
        return model.to(device).eval()

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load a state dict; a mismatch with the config raises a ValueError naming it."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [f"{k}: config expects {tuple(own[k].shape)}, weights have {tuple(state[k].shape)}" for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
            if unexpected:
                parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
            if wrong:
                parts.append(wrong[0] + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
            raise ValueError(f"weights in {source} do not match the config: " + "; ".join(parts))
        self.load_state_dict(state, strict=True)
