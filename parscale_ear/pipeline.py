"""ParScaleEAR: the end-to-end pipeline, noise -> coarse tokens -> fine residual -> LiteVAE decoder -> pixels.

Joins LiteVAE (vae.py) and the coarse/fine hybrid of energy generators (hybrid.py, generator.py).
Per-image seeds as in EDM (Karras et al. 2022): image i depends only on seed + i.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from .hybrid import CoarseFineHybrid, HybridConfig
from .latent_generator import Noise
from .checks import check_field_types, check_images, check_int, check_labels, check_real, nested_config
from .utils import check_device
from .vae import LiteVAE, LiteVAEConfig

if TYPE_CHECKING:
    from .fast import FastSampler

MAX_SEED = 2**63  # torch.Generator seeds are 64-bit; image i of a call uses seed + i


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (no limit where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def check_model_config(config: Any, generator: str, generator_cls: type) -> None:
    """What every model config (ParScaleEARConfig, a peer's PeerConfig) checks: its LiteVAE and its generator config
    `generator` (dicts become configs), the field types, the class count and the sampling defaults."""
    name = type(config).__name__
    config.vae = nested_config(LiteVAEConfig, config.vae, f"{name}.vae")
    setattr(config, generator, nested_config(generator_cls, getattr(config, generator), f"{name}.{generator}"))
    check_field_types(config)
    check_int(config.num_classes, f"{name}.num_classes", minimum=0)
    check_real(config.cfg, f"{name}.cfg", minimum=0.0)
    check_real(config.temperature, f"{name}.temperature", minimum=0.0)


@dataclass
class ParScaleEARConfig:
    name: str = "custom"
    num_classes: int = 10  # 0 = unconditional
    vae: LiteVAEConfig = field(default_factory=LiteVAEConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    cfg: float = 1.0  # default classifier-free guidance scale for `generate`
    temperature: float = 1.0  # default temperature (scales the head's adaLN shift, EAR; with a mean head the residual, 0 = the mean path)

    def __post_init__(self):
        check_model_config(self, "hybrid", HybridConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ParScaleEARConfig":
        """The config a dict of its fields describes (`presets.config_from_dict` also reads the peers')."""
        if isinstance(d, dict) and d.get("dit") is not None:
            raise ValueError("config describes a DiT peer, not a ParScaleEAR model (read it with "
                             "parscale_ear.presets.config_from_dict)")
        d = {k: v for k, v in d.items() if k != "dit"} if isinstance(d, dict) else d  # "dit": null, written by 0.2
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
            self.hybrid = self.make_generator(cfg)
        except (MemoryError, RuntimeError) as e:  # sizes this machine cannot hold: one line naming the config
            if not isinstance(e, MemoryError) and "allocate" not in str(e) and "out of memory" not in str(e):
                raise
            raise ValueError(f"ParScaleEARConfig {cfg.name!r}: its sizes need more memory than this machine has; "
                             f"reduce the widths, channels or streams") from None

    @staticmethod
    def make_generator(cfg: ParScaleEARConfig) -> nn.Module:
        """The generator on the LiteVAE's latents: the coarse/fine stages (a peer model puts its own here)."""
        return CoarseFineHybrid(cfg.hybrid, cfg.vae.latent_shape, cfg.num_classes)

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
    def draw_noise(self, seeds: Sequence[int], device: torch.device | str | None = None) -> Noise:
        """Per-image noise of each stage, by name (see `LatentGenerator.draw`), image i from seed i alone."""
        per_image = [self.hybrid.draw(torch.Generator().manual_seed(int(seed))) for seed in seeds]
        device = device or self.device
        dtype = next(self.parameters()).dtype

        def stack(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(parts).to(device, dtype if parts[0].is_floating_point() else parts[0].dtype)

        return {name: {part: stack([image[name][part] for image in per_image]) for part in parts}
                for name, parts in per_image[0].items()}

    def draw_noise_on_device(self, batch: int, generator: torch.Generator | None = None) -> Noise:
        """Batch noise drawn on the model's device in one go: the fast path for timing and serving (capturable in a
        CUDA graph), not tied to per-image seeds."""
        return self.hybrid.draw_batch(batch, self.device, next(self.parameters()).dtype, generator)

    def default_labels(self, seeds: Sequence[int]) -> torch.Tensor | None:
        """Labels cycle through the classes by seed, so image i's label depends only on seed + i."""
        if self.config.num_classes == 0:
            return None
        return torch.tensor([int(s) % self.config.num_classes for s in seeds], dtype=torch.long)

    def resolve_steps(self, steps) -> tuple[int, ...]:
        """Steps per stage from None (the model's), an int (that many in every stage) or one int per stage."""
        return self.hybrid.resolve_steps(steps)

    @torch.no_grad()
    def sample_latents(self, noise: Noise, labels: torch.Tensor | None, steps=None, cfg: float = 1.0,
                       temperature: float = 1.0, solver: str | None = None) -> torch.Tensor:
        """Latents (B, c, h, w) from pre-drawn noise; static shapes (the timed path)."""
        return self.hybrid.sample(noise, labels, steps, cfg, temperature, solver)

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
        self.hybrid.check_sampling(steps, cfg, temperature, solver)  # before any work
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
    def generate(self, n: int, labels: Sequence[int] | torch.Tensor | None = None, cfg: float | None = None,
                 temperature: float | None = None, steps: int | tuple[int, ...] | None = None, seed: int = 0,
                 batch_size: int = 64, progress: bool = False, solver: str | None = None) -> torch.Tensor:
        """Generate n images; image i depends only on seed + i (and its label), not on n or the batch size.

        Args:
            n: how many images (their float32 result must fit in memory; `iter_generate` yields batches).
            labels: n class indices, a list, array or tensor (default: (seed + i) mod num_classes).
            cfg: classifier-free guidance scale (default: the model's; 1 = unguided, one pass a step).
            temperature: scale of the energy head's draws (default: the model's; 0 = the mean path).
            steps: steps per stage, (coarse, fine), or an int for every stage (default: the model's).
            seed: the first image's seed.
            batch_size: images per forward pass (changes speed, not images).
            progress: show a progress bar.
            solver: "euler" or "heun" for flow stages with a mean head and the flow peer (default: the model's).
        Returns:
            A float32 tensor (n, C, H, W) with values in [-1, 1], on the model's device.
        """
        n = check_int(n, "n")
        v = self.config.vae
        need = n * v.in_channels * v.image_size**2 * 4  # the float32 result, all at once
        if need > _memory_bytes():
            raise ValueError(f"n: {n} images of {v.in_channels}x{v.image_size}x{v.image_size} need {need / 2**30:.1f} GiB at "
                             f"once, more than this machine's memory; use iter_generate for batches")
        return torch.cat(list(self.iter_generate(n, labels, cfg, temperature, steps, seed, batch_size, progress, solver)))

    def compile_sampler(self, batch_size: int, steps: int | tuple[int, ...] | None = None, cfg: float | None = None,
                        temperature: float | None = None, dtype: torch.dtype | None = None, graphs: bool | None = None,
                        compile: bool = False, channels_last: bool = False, solver: str | None = None) -> "FastSampler":
        """The whole noise -> pixels path for one batch shape at one schedule, set up once and replayed: the speed the
        benchmarks measure, through the public API.

        Args:
            batch_size: images per call.
            steps, cfg, temperature, solver: the schedule, as in `generate` (default: the model's).
            dtype: torch.bfloat16 (default on a GPU), torch.float16 or torch.float32 (default on the CPU).
            graphs: capture the path in a CUDA graph (default: on a GPU).
            compile: torch.compile the decoder.
            channels_last: NHWC decoder convolutions.
        Returns:
            A `FastSampler`: `sampler(seed=s)` gives generate's images for seeds s .. s + batch_size - 1 (bit-identical
            on the CPU in float32), `sampler()` draws the noise on the device (the fastest path). Its result is an
            output buffer, overwritten by the next call."""
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

    # ------------------------------------------------------------------ save / load (release.py)
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors (+ a model card) into `directory` (created if needed), each file
        atomically; other files in the folder are left alone (as diffusers does).

        Args:
            directory: the release folder, new or existing (never a training run's folder).
            dtype: torch.float16 / bfloat16 store the parameters at half size (buffers stay float32); None: float32.
        Returns:
            The folder."""
        from .release import save_release

        return save_release(self, directory, dtype)

    def model_card(self, dtype: torch.dtype | None = None) -> str:
        """A Hugging Face style model card (README.md) describing this model and how to load it."""
        from .release import model_card

        return model_card(self, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, device: torch.device | str = "cpu",
                        revision: str | None = None) -> "ParScaleEAR":
        """Load a model written by `save_pretrained`, as float32.

        Args:
            directory: a release folder, the name of a model shipped inside the package ("fmnist-32-es"), or a
                Hugging Face Hub id ("org/name", downloaded with huggingface_hub); None: the embedded default.
            device: "cpu", "cuda", "cuda:N" or a torch.device (checked before anything loads).
            revision: the Hub revision of a Hub id.
        Returns:
            The model in eval mode on `device`. A missing, damaged or edited file is a one-line error."""
        from .release import DEFAULT_MODEL, load_release

        if directory is None:
            directory = DEFAULT_MODEL
        if not isinstance(directory, (str, Path)) or not str(directory).strip():
            raise ValueError(f"from_pretrained: expected a release folder, a shipped model name or a Hub id, got {directory!r}")
        return load_release(cls, directory, check_device(device), revision)

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load a state dict; a mismatch with the config raises a ValueError naming it."""
        from .release import load_module_state

        load_module_state(self, state, f"weights in {source}")
