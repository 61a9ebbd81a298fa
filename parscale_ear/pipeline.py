"""ParScaleEAR: the end-to-end pipeline, noise -> a generator of latents -> LiteVAE decoder -> pixels.

A LiteVAE (vae.py) plus a generator of its latents, any LatentGenerator (latent_generator.py): ParScale-EAR's
coarse/fine hybrid of energy stages (hybrid.py) or a DiT peer (baselines/dit.py), as its config says
(model_config.py). Per-image seeds as in EDM (Karras et al. 2022): image i depends only on seed + i.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from .checks import check_images, check_int, check_labels, check_real
from .latent_generator import Noise
from .model_config import ModelConfig, ParScaleEARConfig
from .presets import PEER_NAMES, config_from_dict, get_config, list_models
from .release import DEFAULT_MODEL, load_module_state, model_card, read_release, resolve, save_release, shipped_models
from .utils import available_memory, check_device
from .vae import LiteVAE

if TYPE_CHECKING:
    from .fast import FastSampler

MAX_SEED = 2**63  # torch.Generator seeds are 64-bit; image i of a call uses seed + i


class ParScaleEAR(nn.Module):
    """A LiteVAE plus a generator of its latents (`generator`); `generate`, `reconstruct`, save/load."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = cfg = ParScaleEARConfig() if config is None else config
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"ParScaleEAR: expected a model config (ParScaleEARConfig or PeerConfig), got "
                            f"{type(cfg).__name__}")
        try:
            self.vae = LiteVAE(cfg.vae)
            self.generator = cfg.make_generator()
        except (MemoryError, RuntimeError) as e:  # sizes this machine cannot hold: one line naming the config
            if not isinstance(e, MemoryError) and "allocate" not in str(e) and "out of memory" not in str(e):
                raise
            raise ValueError(f"{type(cfg).__name__} {cfg.name!r}: its sizes need more memory than this machine has; "
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
        for name, stage in self.generator.stages.items():
            out[f"generator.{name}"] = count(stage)
        out["generator"] = sum(v for k, v in out.items() if k.startswith("generator."))
        out["total"] = count(self)
        return out

    # ------------------------------------------------------------------ sampling
    def draw_noise(self, seeds: Sequence[int], device: torch.device | str | None = None) -> Noise:
        """Per-image noise of each stage, by name (see `LatentGenerator.draw`), image i from seed i alone."""
        per_image = [self.generator.draw(torch.Generator().manual_seed(int(seed))) for seed in seeds]
        device = device or self.device
        dtype = next(self.parameters()).dtype

        def stack(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(parts).to(device, dtype if parts[0].is_floating_point() else parts[0].dtype)

        return {name: {part: stack([image[name][part] for image in per_image]) for part in parts}
                for name, parts in per_image[0].items()}

    def draw_noise_on_device(self, batch: int, generator: torch.Generator | None = None) -> Noise:
        """Batch noise drawn on the model's device in one go: the fast path for timing and serving (capturable in a
        CUDA graph), not tied to per-image seeds."""
        return self.generator.draw_batch(batch, self.device, next(self.parameters()).dtype, generator)

    def default_labels(self, seeds: Sequence[int]) -> torch.Tensor | None:
        """Labels cycle through the classes by seed, so image i's label depends only on seed + i."""
        if self.config.num_classes == 0:
            return None
        return torch.tensor([int(s) % self.config.num_classes for s in seeds], dtype=torch.long)

    def resolve_steps(self, steps) -> tuple[int, ...]:
        """Steps per stage from None (the model's), an int (that many in every stage) or one int per stage."""
        return self.generator.resolve_steps(steps)

    @torch.no_grad()
    def sample_latents(self, noise: Noise, labels: torch.Tensor | None, steps=None, cfg: float = 1.0,
                       temperature: float = 1.0, solver: str | None = None) -> torch.Tensor:
        """Latents (B, c, h, w) from pre-drawn noise; static shapes (the timed path)."""
        return self.generator.sample(noise, labels, steps, cfg, temperature, solver)

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
        self.generator.check_sampling(steps, cfg, temperature, solver)  # before any work
        starts = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="generate", unit="batch")
        for i in starts:
            chunk = seeds[i : i + batch_size]
            noise = self.draw_noise(chunk)
            y = labels[i : i + len(chunk)] if labels is not None else self.default_labels(chunk)
            y = None if y is None else y.to(self.device)
            latents = self.generator.sample(noise, y, steps, cfg, temperature, solver)
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
            temperature: how far a draw strays from the model's most likely path, 1 the trained distribution
                (default: the model's; what it scales in each kind of model: `latent_generator`).
            steps: steps per stage, (coarse, fine), or an int for every stage (default: the model's).
            seed: the first image's seed.
            batch_size: images per forward pass (changes speed, not images).
            progress: show a progress bar.
            solver: "euler" or "heun" for the mean path of flow stages with a mean head (temperature 0) and the
                flow peer (default: the model's).
        Returns:
            A float32 tensor (n, C, H, W) with values in [-1, 1], on the model's device.
        """
        n = check_int(n, "n")
        v = self.config.vae
        need = n * v.in_channels * v.image_size**2 * 4  # the float32 result, all at once
        if need > available_memory():
            raise ValueError(f"n: {n} images of {v.in_channels}x{v.image_size}x{v.image_size} need {need / 2**30:.1f} GiB at "
                             f"once, more than this machine has free; use iter_generate for batches")
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
        return save_release(self, directory, dtype)

    def model_card(self, dtype: torch.dtype | None = None) -> str:
        """A Hugging Face style model card (README.md) describing this model and how to load it."""
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
        if directory is None:
            directory = DEFAULT_MODEL
        if not isinstance(directory, (str, Path)) or not str(directory).strip():
            raise ValueError(f"from_pretrained: expected a release folder, a shipped model name or a Hub id, got {directory!r}")
        device = check_device(device)
        _check_not_a_bare_preset(directory)
        config, state, weights = read_release(resolve(directory, revision))
        try:
            model = cls(config_from_dict(config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"from_pretrained: {weights.parent / 'config.json'}: {e}") from None
        model.load_weights(state, source=str(weights))
        return model.to(device).eval()

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load a state dict; a mismatch with the config raises a ValueError naming it."""
        load_module_state(self, state, f"weights in {source}")


def _check_not_a_bare_preset(name: str | Path) -> None:
    """A one-line FileNotFoundError for a preset's name that is no folder and no shipped model: weights ship only for
    the models in weights/, and the error says how to build or train the preset instead."""
    if isinstance(name, str) and not Path(name).exists() and name not in shipped_models() and name in list_models():
        flag = "peer" if name in PEER_NAMES else "preset"
        raise FileNotFoundError(f"from_pretrained: no trained weights ship for the preset {name!r} (shipped: "
                                f"{', '.join(shipped_models())}); create_model({name!r}) builds it untrained, "
                                f"`parscale-ear train --{flag} {name}` trains it")


def create_model(name: str, /, **overrides: Any) -> ParScaleEAR:
    """Build a preset with random weights (float32, on the CPU).

    Args:
        name: a preset of `list_models()`, e.g. "fmnist-32-es", or a peer's, e.g. "dit-s".
        overrides: config fields to change: top-level (cfg=1.5), nested dicts (hybrid={"fine": {"depth": 6}}), or the
            shorthands mode, pool, coarse_steps, fine_steps (the hybrid) and streams, prefix_len, alpha, tau,
            class_dropout (both stages). A wrong name, field or value is a one-line ValueError or TypeError.
    Returns:
        The model; `ParScaleEAR.from_pretrained()` loads trained weights instead."""
    return ParScaleEAR(get_config(name, **overrides))
