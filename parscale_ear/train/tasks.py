"""The two things the loop trains: the LiteVAE on images (VAETask: held on the device, or streamed by DataLoader
workers, each rank reading its share) and the generator, or a peer, on memory-mapped latents or a teacher's pairs
(GeneratorTask). A task gives the loop its trainable part, batches, the forward step, what goes into the checkpoint
and a sample grid."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..image_files import Unreadable
from ..images import from_uint8
from ..loading import load_pipeline
from ..pipeline import ParScaleEAR
from ..streaming import ImageSet, MemoryImages, RankBatches, loader, read_images
from ..vae_objective import vae_loss
from .config import TrainConfig
from .distributed import Dist, check_batch
from .latents import latent_scale, latent_shards

DEVICE_LATENTS_BYTES = 4 << 30  # on a GPU, latents up to this size are copied to it once; larger ones are gathered
SCALE_IMAGES = 5000  # images the latent scale is measured on (fewer for large images: at most 256 MB of them)

class VAEStep(nn.Module):
    """One VAE training forward: posterior sample -> decoder -> LiteVAE losses."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, logvar = self.vae.encode_moments(images)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        recon = self.vae.decoder(z)
        return vae_loss(recon.float(), images.float(), mean.float(), logvar.float(), kl_weight=self.kl_weight)


class GeneratorStep(nn.Module):
    """One generator training forward: the generator's losses on latents, or on a teacher's pairs."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, latents: torch.Tensor | None, labels: torch.Tensor | None,
                pairs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if pairs is not None:
            return self.generator.loss(None, labels, pairs=pairs)
        return self.generator.loss(latents, labels)


class VAETask:
    """What the loop needs to train the LiteVAE: its trainable part, inputs (uint8 images: on the device when held in
    memory, else read by DataLoader workers, this rank's share of each global batch), the step, the latent scale
    written into the checkpoint's config and a recon grid."""

    kind = "vae"
    loss_keys = ("loss",)

    def __init__(self, model: ParScaleEAR, data: ImageSet, cfg: TrainConfig, dev: torch.device, d: Dist, fresh: bool,
                 progress: bool = False, start: int = 0):
        check_batch(cfg.batch_size, d)
        self.model, self.data, self.dev = model, data, dev
        self.part, self.step = model.vae, VAEStep(model.vae, cfg.kl_weight)
        self.num_items, self.info, self.inputs, self.stream, self._first = len(data), {}, None, None, None
        if isinstance(data, MemoryImages):
            self.inputs = data.data.images.to(dev)
        else:
            sampler = RankBatches(len(data), cfg.batch_size, cfg.seed, d.rank, d.world, start)
            self.stream = iter(loader(data, sampler, cfg.workers, pin=dev.type == "cuda"))
            self.unreadable = Unreadable(cfg.max_unreadable, len(data))
            self.checked = False

    def trained(self, model: ParScaleEAR) -> nn.Module:
        return model.vae

    def batch(self, idx: torch.Tensor) -> tuple:
        if self.stream is None:
            return (from_uint8(self.inputs[idx]),)
        batch = next(self.stream)
        self.unreadable.add(batch.attempted, batch.skipped, batch.first)
        if not self.checked:  # the loader follows the loop's order (batch_indices)
            if not torch.equal(batch.indices, idx.cpu()):
                raise RuntimeError("the data loader's batch is not the step's; this is a bug")
            self.checked = True
        return (from_uint8(batch.images.to(self.dev, non_blocking=True)),)

    def scale_images(self) -> torch.Tensor:
        """Images spread over the set (uint8), read once: those the latent scale is measured on."""
        if self._first is None:
            c, h, w = self.model.config.vae.in_channels, self.model.config.vae.image_size, self.model.config.vae.image_size
            self._first = read_images(self.data, max(32, min(SCALE_IMAGES, (256 << 20) // (c * h * w))))
        return self._first

    def checkpoint(self, config: dict, ema: nn.Module) -> dict:
        config["vae"]["latent_scale"] = latent_scale(ema, self.scale_images(), self.dev)  # latents of unit std
        return {"config": config}

    def grid(self, ema_model: ParScaleEAR) -> tuple[torch.Tensor, int, list[str] | None]:
        """32 originals, then their reconstructions, 16 per row."""
        x = from_uint8(self.scale_images()[:32].to(self.dev))
        return torch.cat([x, ema_model.vae.decode(ema_model.vae.encode(x)).clamp(-1, 1)]), 16, None


class GeneratorTask:
    """What the loop needs to train the generator (or the DiT peer) on a VAE run's latents (memory-mapped; on a GPU
    copied to it when small), or on a teacher's pairs (`--teacher`): its trainable part, inputs and labels, the
    step, the VAE weights kept in the checkpoint and a class grid of samples."""

    kind = "generator"
    loss_keys = ("loss", "coarse", "fine")

    def __init__(self, model: ParScaleEAR, data: ImageSet, cfg: TrainConfig, dev: torch.device, d: Dist, fresh: bool,
                 progress: bool = False, start: int = 0):
        check_batch(cfg.batch_size, d)
        self.model, self.class_names, self.dev = model, data.class_names, dev
        model.vae.requires_grad_(False)
        self.info: dict = {}
        source = None
        if fresh and cfg.init:
            from ..distill import check_same_vae, init_generator

            source = load_pipeline(None if cfg.init == "default" else cfg.init)
            check_same_vae(model, source, "--init")
            self.info["init_new_weights"] = len(init_generator(model, source))
        self.pairs, self.labels, self.latents = None, None, None
        if cfg.teacher:
            self.inputs, self.pairs = None, self._teacher_pairs(cfg, dev, d, progress and d.main, data, source)
            self.num_items = len(self.pairs["labels"]) if "labels" in self.pairs else cfg.pairs
            if model.config.num_classes:
                self.labels = self.pairs.pop("labels")
        else:
            self.latents = self._latents(cfg, data, dev, d, progress)
            self.num_items, self.inputs = len(self.latents), self.latents
            self.info.update(latents=len(self.latents), unreadable_images=self.latents.skipped)
            if dev.type == "cuda" and self.latents.latents[0][:1].nbytes * len(self.latents) <= DEVICE_LATENTS_BYTES:
                self.inputs, self.labels = self.latents.to(dev)
            if fresh and not cfg.init:  # an initialised model keeps its source's token scales
                model.generator.fit_token_scales(self.latents.sample(10_000).to(dev))
        self.part, self.step = model.generator, GeneratorStep(model.generator)

    def _latents(self, cfg: TrainConfig, data: ImageSet, dev: torch.device, d: Dist, progress: bool):
        """The VAE run's latents of `data` (encoded by every rank, its share, where not yet made)."""
        return latent_shards(Path(cfg.vae_run), self.model, data, dev, d, workers=cfg.workers,
                             max_unreadable=cfg.max_unreadable, progress=progress and d.main)

    def _teacher_pairs(self, cfg: TrainConfig, dev: torch.device, d: Dist, progress: bool, data: ImageSet,
                       source: ParScaleEAR | None) -> dict:
        """The teacher's pairs on the device (generated once into the VAE run folder by rank 0), in the units of
        the student's token scales: a teacher with the student's stages gives its own, which the student takes; with a
        latent-grid (DiT) teacher, those of `--init`'s model (`source`), else those fitted on the VAE run's latents."""
        from ..distill import cached_teacher_pairs, check_same_vae, check_teacher, pairs_file, take_token_scales

        teacher = load_pipeline(None if cfg.teacher == "default" else cfg.teacher, device=dev)
        check_same_vae(self.model, teacher, "--teacher")
        through_latents = check_teacher(teacher, self.model) == "latents"
        if not through_latents:  # the teacher's own token units
            take_token_scales(self.model, teacher)
        elif cfg.init:  # the units its samples are cut in: --init's model's (loaded again on resume)
            take_token_scales(self.model, source or load_pipeline(None if cfg.init == "default" else cfg.init))
        else:  # ...or the VAE run's latents' (the same on resume)
            self.model.generator.fit_token_scales(self._latents(cfg, data, dev, d, progress).sample(10_000).to(dev))
        student = self.model if through_latents else None  # its token maps and scales cut the teacher's samples
        steps = None if not cfg.teacher_steps else cfg.teacher_steps[0] if len(cfg.teacher_steps) == 1 else tuple(cfg.teacher_steps)
        solver = cfg.teacher_solver or None
        folder = Path(cfg.vae_run)  # shared by every student of these latents
        cache = cached_teacher_pairs(folder, teacher, cfg.pairs, steps, solver, progress, student) if d.main else None
        if d.world > 1:
            dist.barrier()
        if cache is None:  # the other ranks read what rank 0 made
            cache = torch.load(pairs_file(folder, teacher, cfg.pairs, steps, solver, student)[0], map_location="cpu",
                               weights_only=True)
        pairs, self.info["pairs_seconds"] = cache["pairs"], cache.get("seconds")
        return {k: v.to(dev) if k == "labels" else v.to(dev, torch.float32) for k, v in pairs.items()}

    def trained(self, model: ParScaleEAR) -> nn.Module:
        return model.generator

    def batch(self, idx: torch.Tensor) -> tuple:
        if self.inputs is self.latents and self.latents is not None:  # gathered through the memory maps
            latents, labels = self.latents.gather(idx)
            labels = labels.to(self.dev) if self.model.config.num_classes else None
            return latents.to(self.dev, non_blocking=True), labels
        labels = None if self.labels is None or not self.model.config.num_classes else self.labels[idx]
        if self.pairs is not None:
            return None, labels, {k: v[idx] for k, v in self.pairs.items()}
        return self.inputs[idx], labels

    def checkpoint(self, config: dict, ema: nn.Module) -> dict:
        return {"config": config, "vae": self.model.vae.state_dict()}

    def grid(self, ema_model: ParScaleEAR) -> tuple[torch.Tensor, int, list[str] | None]:
        """Samples of seeds 0..n-1; with classes, column j shows class j (named above it)."""
        classes = ema_model.config.num_classes
        n = 10 * max(1, min(10, classes))
        labels = None if not classes else torch.arange(n) % classes
        nrow = max(8, min(10, classes or 10))
        names = self.class_names[:nrow] if classes and nrow == min(10, classes) and self.class_names else None
        return ema_model.generate(n, labels=labels, seed=0, batch_size=n), nrow, names
