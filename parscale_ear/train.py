"""Training of both stages: the LiteVAE on images, then the coarse/fine energy generators on cached
latents. One loop serves 1..N GPUs (DDP through torchrun) and the CPU.

Optimiser settings follow EAR (arXiv 2505.07812): AdamW (0.9, 0.95), weight decay 0.02 except on
the head, head learning rate 0.25x, gradient clip 3.0, EMA. Every random draw of step s comes from
a seed derived from (seed, s, rank), so `--resume` reproduces an uninterrupted run exactly.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .data import ImageData, load_dataset
from .vae_objective import vae_loss
from .loading import (CHECKPOINT, METRICS, check_finite_state, export, load_checkpoint, load_module_state,  # noqa: F401
                      load_pipeline, model_from_checkpoint, read_metrics, state_digest)
from .pipeline import ParScaleEAR, ParScaleEARConfig
from .presets import get_config
from .distill import weights_digest
from .solvers import check_solver
from .checks import check_field_types, check_int, check_real
from .files import atomic_torch_save, atomic_write_json, atomic_write_text, prepare_output_folder, remove_stale_temporaries
from .images import from_uint8, save_grid
from .plots import line_plot

RUN_CONFIG = "run.json"
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    kind: str = "vae"  # "vae" or "generator"
    steps: int = 1000
    batch_size: int = 256  # global batch (split across ranks)
    lr: float = 4e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio after warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.02  # not on biases, norms, embeddings or the energy head (EAR)
    head_lr_ratio: float = 0.25  # energy head trains at 0.25x (EAR: full rate collapses)
    grad_clip: float = 3.0
    ema_decay: float = 0.999  # short runs need a low decay (EAR); warmed up as (1 + t) / (10 + t)
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    ckpt_every: int = 1000
    bf16: bool = True  # autocast on CUDA only
    compile: bool = False
    max_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    # with max_minutes: at the end of warm-up, set `steps` from the rate measured during warm-up so the
    # cosine decay ends at the budget (the warm-up is the same for any total, so nothing changes before)
    fit_steps_to_budget: bool = False
    data: str = "fashion-mnist"
    vae_run: str = ""  # generator runs: the VAE run folder
    kl_weight: float = 1e-6
    max_images: int = 0  # train on the first N images only (quick runs); 0 = all
    samples: bool = True  # sample grids (and the loss plot) every sample_every steps and at the end
    # generator runs: start from this release or run folder's generator weights ("default": the embedded model);
    # new modules keep their initialisation
    init: str = ""
    # generator runs: train on a teacher's pairs (its noise -> its sample, per stage; distill.py) instead of the
    # data: `pairs` of them from this release or run folder ("default": the embedded model) at `teacher_steps`
    # per stage with `teacher_solver` (empty: the teacher's own schedule)
    teacher: str = ""
    pairs: int = 0
    teacher_steps: list = field(default_factory=list)
    teacher_solver: str = ""

    def __post_init__(self):
        check_field_types(self)
        if self.kind not in ("vae", "generator"):
            raise ValueError(f"TrainConfig: kind must be 'vae' or 'generator', got {self.kind!r}")
        for name in ("steps", "batch_size", "log_every", "sample_every", "ckpt_every"):
            check_int(getattr(self, name), f"TrainConfig.{name} (--{name.replace('_', '-')})")
        for name in ("warmup_steps", "max_images", "seed"):
            check_int(getattr(self, name), f"TrainConfig.{name} (--{name.replace('_', '-')})", minimum=0)
        check_real(self.lr, "TrainConfig.lr (--lr)", minimum=0.0, inclusive=False)
        check_real(self.max_minutes, "TrainConfig.max_minutes (--max-minutes)", minimum=0.0)
        check_real(self.ema_decay, "TrainConfig.ema_decay (--ema-decay)", minimum=0.0)
        if not self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay (--ema-decay): expected a value in [0, 1), got {self.ema_decay}")
        if self.fit_steps_to_budget and not self.max_minutes > 0:
            raise ValueError("TrainConfig.fit_steps_to_budget needs a budget: set max_minutes (--max-minutes) > 0")
        check_int(self.pairs, "TrainConfig.pairs (--pairs)", minimum=0)
        if bool(self.teacher) != (self.pairs > 0):
            raise ValueError("TrainConfig: --teacher and --pairs go together (a teacher and how many of its pairs)")
        if (self.init or self.teacher) and self.kind != "generator":
            raise ValueError("TrainConfig: --init and --teacher are for generator runs")
        for k in self.teacher_steps:
            check_int(k, "TrainConfig.teacher_steps (--teacher-steps)")
        if self.teacher_solver:
            check_solver(self.teacher_solver, "TrainConfig.teacher_solver (--teacher-solver)")


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device(device)
        dist.init_process_group("gloo")
    return Dist(rank, world, local), dev


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 4096 + rank


def batch_indices(num_items: int, batch: int, step: int, seed: int, d: Dist) -> torch.Tensor:
    """This rank's share of global batch `step`: epochs are seeded permutations, cut into batches."""
    per_epoch = max(1, num_items // batch)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    global_batch = perm[i * batch : (i + 1) * batch]
    return global_batch[d.rank :: d.world]


# ----------------------------------------------------------------------------- tasks
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
    """One generator training forward: the losses of every stage (or of the DiT peer) on latents, or on a
    teacher's pairs."""

    def __init__(self, hybrid):
        super().__init__()
        self.hybrid = hybrid

    def forward(self, latents: torch.Tensor | None, labels: torch.Tensor | None,
                pairs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if pairs is not None:
            return self.hybrid.loss(None, labels, pairs=pairs)
        return self.hybrid.loss(latents, labels)


class VAETask:
    """What the loop needs to train the LiteVAE: its trainable part, inputs (uint8 images on the
    device), the step, the latent scale written into the checkpoint's config and a recon grid."""

    kind = "vae"
    loss_keys = ("loss",)

    def __init__(self, model: ParScaleEAR, data: ImageData, cfg: TrainConfig, dev: torch.device, d: Dist, fresh: bool,
                 progress: bool = False, run: Path | None = None):
        self.model, self.data, self.dev = model, data, dev
        self.part, self.step = model.vae, VAEStep(model.vae, cfg.kl_weight)
        self.inputs = data.images.to(dev)
        self.num_items, self.info = len(self.inputs), {}

    def trained(self, model: ParScaleEAR) -> nn.Module:
        return model.vae

    def batch(self, idx: torch.Tensor) -> tuple:
        return (from_uint8(self.inputs[idx]),)

    def checkpoint(self, config: dict, ema: nn.Module) -> dict:
        config["vae"]["latent_scale"] = latent_scale(ema, self.data, self.dev)  # latents of unit std for the generator
        return {"config": config}

    def grid(self, ema_model: ParScaleEAR) -> tuple[torch.Tensor, int, list[str] | None]:
        """32 originals, then their reconstructions, 16 per row."""
        x = from_uint8(self.data.images[:32].to(self.dev))
        return torch.cat([x, ema_model.vae.decode(ema_model.vae.encode(x)).clamp(-1, 1)]), 16, None


class GeneratorTask:
    """What the loop needs to train the generator (or the DiT peer) on a VAE run's cached latents, or on a
    teacher's pairs (`--teacher`): its trainable part, inputs and labels, the step, the VAE weights kept in
    the checkpoint and a class grid of samples."""

    kind = "generator"
    loss_keys = ("loss", "coarse", "fine")

    def __init__(self, model: ParScaleEAR, data: ImageData, cfg: TrainConfig, dev: torch.device, d: Dist, fresh: bool,
                 progress: bool = False, run: Path | None = None):
        self.model, self.class_names = model, data.class_names
        model.vae.requires_grad_(False)
        self.info: dict = {}
        if fresh and cfg.init:
            from .distill import check_same_vae, init_generator

            source = load_pipeline(None if cfg.init == "default" else cfg.init)
            check_same_vae(model, source, "--init")
            self.info["init_new_weights"] = len(init_generator(model, source))
        self.pairs = None
        if cfg.teacher:
            self.inputs, self.pairs = None, self._teacher_pairs(cfg, dev, d, run, progress and d.main)
            self.num_items = len(self.pairs["labels"]) if "labels" in self.pairs else cfg.pairs
        else:
            self.inputs = cached_latents(Path(cfg.vae_run), model, data, dev, d, progress and d.main).to(dev)
            self.num_items = len(self.inputs)
            if fresh and not cfg.init:  # an initialised model keeps its source's token scales
                model.hybrid.fit_token_scales(self.inputs[:10_000])
        self.labels = data.labels.to(dev) if model.config.num_classes and self.pairs is None else None
        if self.pairs is not None and model.config.num_classes:
            self.labels = self.pairs.pop("labels")
        self.part, self.step = model.hybrid, GeneratorStep(model.hybrid)

    def _teacher_pairs(self, cfg: TrainConfig, dev: torch.device, d: Dist, run: Path, progress: bool) -> dict:
        """The teacher's pairs on the device (generated once into the VAE run folder by rank 0); the student takes
        the teacher's token scales, the units the pairs are in."""
        from .distill import cached_teacher_pairs, check_same_vae, check_teacher, pairs_file

        teacher = load_pipeline(None if cfg.teacher == "default" else cfg.teacher, device=dev)
        check_same_vae(self.model, teacher, "--teacher")
        check_teacher(teacher, self.model)
        for name in teacher.hybrid.stages:
            getattr(self.model.hybrid, f"{name}_std").copy_(getattr(teacher.hybrid, f"{name}_std"))
        steps = None if not cfg.teacher_steps else cfg.teacher_steps[0] if len(cfg.teacher_steps) == 1 else tuple(cfg.teacher_steps)
        solver = cfg.teacher_solver or None
        folder = Path(cfg.vae_run)  # shared by every student of these latents
        if d.main:
            cached_teacher_pairs(folder, teacher, cfg.pairs, steps, solver, progress)
        if d.world > 1:
            dist.barrier()
        cache = torch.load(pairs_file(folder, teacher, cfg.pairs, steps, solver)[0], map_location="cpu", weights_only=True)
        pairs, self.info["pairs_seconds"] = cache["pairs"], cache.get("seconds")
        return {k: v.to(dev) if k == "labels" else v.to(dev, torch.float32) for k, v in pairs.items()}

    def trained(self, model: ParScaleEAR) -> nn.Module:
        return model.hybrid

    def batch(self, idx: torch.Tensor) -> tuple:
        labels = None if self.labels is None else self.labels[idx]
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


def param_groups(module: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: decayed weights, undecayed (biases/norms/embeddings), energy head (0.25x, no decay)."""
    decay, no_decay, head = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if ".head." in f".{name}":
            head.append(p)
        elif p.ndim >= 2 and "embed" not in name and "prefix" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_ratio": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_ratio": 1.0},
        {"params": head, "weight_decay": 0.0, "lr_ratio": cfg.head_lr_ratio},
    ]
    return [g for g in groups if g["params"]]


def warmup_steps(cfg: TrainConfig) -> int:
    """The warm-up actually used: --warmup-steps, capped at half the run, so a short run reaches --lr."""
    return min(cfg.warmup_steps, cfg.steps // 2)


FIT_FROM = 10  # fit_steps_to_budget: the rate is measured from this many steps into the run (compile done) to warm-up's end


def fitted_steps(done: int, rate: float, elapsed_s: float, cfg: TrainConfig) -> int:
    """fit_steps_to_budget's total: the steps done plus 98% of what `rate` (steps/s) fits in the budget's
    remaining time, at least twice the warm-up (so the warm-up already run stays what it was)."""
    left_s = max(0.0, 60 * cfg.max_minutes - elapsed_s)
    return max(done + int(rate * left_s * 0.98), 2 * warmup_steps(cfg))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over `warmup_steps(cfg)`, then cosine decay to cfg.lr * min_lr_ratio."""
    warm = warmup_steps(cfg)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter (one fused foreach call: a Python
    loop of small kernels was a visible share of a small model's GPU step); buffers are copied."""
    e_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for e, p in zip(e_params, model.parameters())]
    if e_params:
        torch._foreach_lerp_(e_params, params, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


# ----------------------------------------------------------------------------- data
def load_images(cfg: TrainConfig, config: ParScaleEARConfig) -> ImageData:
    v = config.vae
    data = load_dataset(cfg.data, "train", image_size=v.image_size, channels=v.in_channels)
    return data.subset(cfg.max_images) if 0 < cfg.max_images < len(data) else data


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor, device: torch.device, batch: int = 500, progress: bool = False) -> torch.Tensor:
    """Scaled posterior means (N, c, h, w) of uint8 images (N, C, H, W), in float32 on the CPU."""
    vae = vae.to(device).eval()
    out = []
    starts = range(0, len(images), batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="encode latents", unit="batch")
    for i in starts:
        x = from_uint8(images[i : i + batch].to(device))
        out.append(vae.encode(x).float().cpu())
    return torch.cat(out)


def cached_latents(vae_run: Path, model: ParScaleEAR, data: ImageData, device: torch.device, d: Dist,
                   progress: bool = False) -> torch.Tensor:
    """Latents of the training images under the VAE run's weights, cached once in the VAE run folder, keyed by
    the VAE weights and the data's identity (source, size and a digest of the images): other data never reuses
    another set's latents."""
    path = vae_run / "latents-train.pt"
    key = {"vae": weights_digest(model.vae), "source": data.source, "num_images": len(data),
           "shape": list(data.images.shape), "images": _digest(data.images), "labels": _digest(data.labels)}
    if path.exists():
        try:
            cache = torch.load(path, weights_only=True)
        except Exception:  # a foreign or broken cache is rebuilt
            cache = {}
        if isinstance(cache, dict) and cache.get("key") == key:
            return cache["latents"]
    if d.main:
        remove_stale_temporaries(vae_run, (path.name,))
        latents = encode_dataset(model.vae, data.images, device, progress=progress)
        atomic_torch_save({"key": key, "latents": latents}, path)
    if d.world > 1:
        dist.barrier()
    return torch.load(path, weights_only=True)["latents"]


def _digest(t: torch.Tensor | None) -> str | None:
    """SHA-256 of a tensor's bytes (None for None)."""
    if t is None:
        return None
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


# ----------------------------------------------------------------------------- the loop
def plot_losses(metrics_path: Path, out: Path, keys=("loss",)) -> None:
    """A loss-curve PNG from metrics.jsonl."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if len(rows) >= 2:
        series = {k: ([r["step"] for r in rows], [r[k] for r in rows]) for k in keys if all(k in r for r in rows)}
        line_plot(out, series, title="training loss", xlabel="step")


def train(cfg: TrainConfig, out: str | Path, model_config: ParScaleEARConfig | None = None, resume: bool = False,
          device: str = "cpu", progress: bool = True) -> Path:
    """Train a VAE (`kind='vae'`) or the generators (`kind='generator'`) into run folder `out`."""
    cfg = replace(cfg)  # fit_steps_to_budget may set cfg.steps: never the caller's object
    out = Path(out)
    d, dev = setup_distributed(device)
    if d.main:
        prepare_output_folder(out)  # fail before the data loads, not after
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out)
        if not isinstance(ckpt.get("optimizer"), dict):
            raise ValueError(f"--resume: {out / CHECKPOINT} holds no optimizer state; it cannot be resumed")
        if ckpt["kind"] != cfg.kind:
            raise ValueError(f"--resume: {out} holds a {ckpt['kind']} run, not a {cfg.kind} run")
        model_config = ParScaleEARConfig.from_dict(ckpt["config"])
        if ckpt["step"] >= cfg.steps:
            raise ValueError(f"--resume: {out} is already at step {ckpt['step']}; pass --steps above it to train further")
    elif (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    vae_run = Path(cfg.vae_run) if cfg.kind == "generator" else None
    vae_ckpt = load_checkpoint(vae_run) if vae_run else None
    if vae_ckpt is not None and vae_ckpt["kind"] != "vae":
        raise ValueError(f"--vae: {vae_run} is a {vae_ckpt['kind']} run, not a VAE run")
    if model_config is None:
        model_config = ParScaleEARConfig.from_dict(vae_ckpt["config"]) if vae_ckpt else get_config("fmnist-32")
    torch.manual_seed(cfg.seed)  # initial weights follow --seed (identical on every rank)
    model = ParScaleEAR(model_config)
    if vae_ckpt is not None:
        vae_cfg = ParScaleEARConfig.from_dict(vae_ckpt["config"]).vae
        if vae_cfg != model_config.vae:
            raise ValueError("the generator's VAE config does not match the VAE run's")
        load_module_state(model.vae, vae_ckpt["ema"], f"--vae {vae_run}")

    data = load_images(cfg, model_config)
    if model_config.num_classes and data.num_classes != model_config.num_classes:
        raise ValueError(f"data has {data.num_classes} classes, the model expects {model_config.num_classes}")
    task = (VAETask if cfg.kind == "vae" else GeneratorTask)(model, data, cfg, dev, d, fresh=ckpt is None, progress=progress,
                                                             run=out)
    if cfg.batch_size > task.num_items:
        raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {task.num_items} training items; use at most that")
    part = task.part
    model.to(dev)
    ema_model = copy.deepcopy(model).requires_grad_(False).eval()  # EMA of the trained part; used for samples
    ema = task.trained(ema_model)
    # fused on CUDA: one kernel per step instead of a few per parameter group (same update rule)
    optimizer = torch.optim.AdamW(param_groups(part, cfg), lr=cfg.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    start = 0
    if ckpt is not None:
        where = f"--resume: {out / CHECKPOINT}"
        for key in ("model", "ema"):
            check_finite_state(ckpt[key], where)
        load_module_state(part, ckpt["model"], where)
        load_module_state(ema, ckpt["ema"], where)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise ValueError(f"{where}: its optimizer state does not fit the model ({type(e).__name__})") from None
        start = ckpt["step"]

    runner = task.step
    if cfg.compile:  # the batch shape never changes: one static graph (Inductor's RNG, so draws differ from eager)
        runner = torch.compile(runner, dynamic=False)
    if d.world > 1:
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=[dev.index] if dev.type == "cuda" else None)
    use_bf16 = cfg.bf16 and dev.type == "cuda"

    if d.main:
        prepare_output_folder(out)
        remove_stale_temporaries(out, (CHECKPOINT, METRICS, RUN_CONFIG, "loss.png"))
        remove_stale_temporaries(out / "samples", ("step_*.png",))
    used = {"bf16": use_bf16, "warmup_steps": warmup_steps(cfg)}  # what this run does, not only what was asked
    run_info = {"train": {**asdict(cfg), **used}, "requested": {k: getattr(cfg, k) for k in used},
                "model": model_config.to_dict(), "world_size": d.world, "device": str(dev), "torch": torch.__version__,
                "num_images": len(data), **task.info}  # rewritten with the plan by fit_steps_to_budget
    if d.main:
        atomic_write_json(out / RUN_CONFIG, run_info)
        metrics = out / METRICS
        if metrics.exists():  # drop rows past the checkpoint we resume from (a killed run's tail)
            keep = [r for r in read_metrics(metrics) if r.get("step", 0) <= start]
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in keep))

    def save(step: int) -> None:
        if not d.main:
            return
        state = {"kind": cfg.kind, "version": CHECKPOINT_VERSION, "step": step, "train": asdict(cfg),
                 "model": part.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                 **task.checkpoint(model_config.to_dict(), ema)}
        atomic_torch_save({**state, "digest": state_digest(state)}, out / CHECKPOINT)

    def snapshot(step: int) -> None:
        if not d.main:
            return
        with torch.no_grad():
            grid, nrow, names = task.grid(ema_model)
        (out / "samples").mkdir(exist_ok=True)
        save_grid(grid, out / "samples" / f"step_{step:07d}.png", nrow=nrow, column_labels=names)
        plot_losses(out / METRICS, out / "loss.png", keys=task.loss_keys)

    bar = None
    if progress and d.main:
        from tqdm.auto import tqdm

        bar = tqdm(initial=start, total=cfg.steps, desc=f"train-{cfg.kind}", unit="step")
    if cfg.samples and start and d.main and (start % cfg.sample_every == 0 or start == cfg.steps) \
            and not (out / "samples" / f"step_{start:07d}.png").is_file():
        snapshot(start)  # the grid of the step a killed run had checkpointed but not drawn yet
    t_start, window_t, window_n = time.time(), time.time(), 0
    warm = warmup_steps(cfg)
    fit = cfg.fit_steps_to_budget and start + FIT_FROM < warm  # a resumed run past its warm-up keeps its steps
    fit_mark = None
    step = last_saved = start
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)
    while step < cfg.steps:
        torch.manual_seed(step_seed(cfg.seed, step, d.rank))
        idx = batch_indices(task.num_items, cfg.batch_size, step, cfg.seed, d).to(dev)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_ratio"]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            losses = runner(*task.batch(idx))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(part.parameters(), cfg.grad_clip)
        # the first step whose loss or gradient is not finite, recorded on the device (no sync a step)
        finite = torch.isfinite(grad_norm) & torch.isfinite(losses["loss"].detach())
        first_bad = torch.where((first_bad < 0) & ~finite, torch.full_like(first_bad, step + 1), first_bad)
        optimizer.step()
        ema_update(ema, part, min(cfg.ema_decay, (1 + step) / (10 + step)))
        window_n += len(idx) * d.world
        done = step + 1
        if fit and done in (start + FIT_FROM, warm):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if done == start + FIT_FROM:
                fit_mark = (done, time.time())
            else:
                rate = (done - fit_mark[0]) / max(time.time() - fit_mark[1], 1e-9)
                planned = torch.tensor([fitted_steps(done, rate, time.time() - t_start, cfg)], device=dev)
                if d.world > 1:  # every rank must stop at the same step: rank 0's plan
                    dist.broadcast(planned, 0)
                cfg.steps = int(planned)
                if bar is not None:
                    bar.total = cfg.steps
                    bar.refresh()
                if d.main:
                    run_info["train"]["steps"] = cfg.steps
                    run_info["fitted"] = {"at_step": done, "steps_per_s": round(rate, 3), "steps": cfg.steps}
                    atomic_write_json(out / RUN_CONFIG, run_info)
        out_of_time = cfg.max_minutes > 0 and (time.time() - t_start) > 60 * cfg.max_minutes
        logging = done % cfg.log_every == 0 or done == cfg.steps or out_of_time  # the last step is always logged
        saving = done % cfg.ckpt_every == 0 or done == cfg.steps or out_of_time
        if logging or saving:  # nothing non-finite reaches the log or a checkpoint, nor a folder made anew
            check_finite(first_bad, done, out, last_saved, d)
            if d.main and not (out / RUN_CONFIG).is_file():
                raise FileNotFoundError(f"the run folder {out} (its {RUN_CONFIG}) was removed or moved during the run; "
                                        f"stopped at step {done} without writing into it")
        if logging:
            vals = {k: v.detach().float() for k, v in losses.items()}
            if d.world > 1:
                for v in vals.values():
                    dist.all_reduce(v)
                vals = {k: v / d.world for k, v in vals.items()}
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            now = time.time()
            row = {"step": done, **{k: round(v.item(), 6) for k, v in vals.items()}, "lr": lr_at(step, cfg),
                   "grad_norm": round(float(grad_norm), 4), "images_per_s": round(window_n / (now - window_t), 1),
                   "elapsed_s": round(now - t_start, 2)}
            window_t, window_n = now, 0
            if d.main:
                with open(out / METRICS, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if saving:
            save(done)
            last_saved = done
        if cfg.samples and (done % cfg.sample_every == 0 or done == cfg.steps or out_of_time):
            t0 = time.time()
            snapshot(done)
            spent = time.time() - t0  # sampling is not training: keep it out of images/s, elapsed_s and --max-minutes
            t_start, window_t = t_start + spent, window_t + spent
        step = done
        if bar is not None:
            bar.update(1)
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out


class TrainingDiverged(ValueError):
    """A loss or gradient became NaN or infinite: the run stops; the last finite checkpoint stays."""


def check_finite(first_bad: torch.Tensor, done: int, out: Path, last_saved: int, d: Dist) -> None:
    """Raise TrainingDiverged (one line) if any step so far had a non-finite loss or gradient (on any rank)."""
    if d.world > 1:
        dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
    bad = int(first_bad)
    if bad > 0:
        kept = f"{out / CHECKPOINT} keeps step {last_saved}" if last_saved else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged: the loss or its gradient is not finite at step {bad} (checked at "
                               f"step {done}); stopped, {kept}; lower --lr or check the data")


@torch.no_grad()
def latent_scale(vae, data: ImageData, device: torch.device, n: int = 5000) -> float:
    """1 / std of the (unscaled) posterior means over up to n training images."""
    scale = vae.config.latent_scale
    z = encode_dataset(vae, data.images[:n], device) / scale
    return float(1.0 / z.std().clamp_min(1e-6))


def vae_run_from_release(out: str | Path, release: str | Path | None = None, data: str = "fashion-mnist",
                         metrics: str | Path | None = None) -> Path:
    """A LiteVAE run folder holding a release's VAE (default: the shipped model's), so generators (ours,
    the peer, the ablation's variants) train on exactly that model's latents without training a VAE again.
    The folder's checkpoint has kind "vae", the release's VAE weights as model and EMA, its config and the
    data it was trained on; `metrics`, the VAE's own training log, is copied beside it when given."""
    import shutil

    out = Path(out)
    if (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out} already holds a run; choose a new folder")
    if metrics is not None and not Path(metrics).is_file():
        raise FileNotFoundError(f"metrics file not found: {metrics}")
    model = ParScaleEAR.from_pretrained(release)
    prepare_output_folder(out)
    vae = {k: v.float() for k, v in model.vae.state_dict().items()}
    state = {"kind": "vae", "version": CHECKPOINT_VERSION, "step": 0, "train": asdict(TrainConfig(kind="vae", data=data)),
             "model": vae, "ema": vae, "config": model.config.to_dict(), "source": str(release or "shipped")}
    atomic_torch_save({**state, "digest": state_digest(state)}, out / CHECKPOINT)
    if metrics is not None:
        shutil.copyfile(metrics, out / METRICS)
    return out
