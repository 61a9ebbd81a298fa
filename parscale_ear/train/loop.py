"""The training loop: one run folder (run.json, metrics.jsonl, checkpoint.pt, sample grids, loss.png) trained step
by step, every draw of step s from a seed derived from (seed, s, rank), so `--resume` continues exactly. It stops
at the first non-finite or exploding loss or gradient (keeping the last good checkpoint), holds a lock on its folder,
never replaces an earlier run's files, and never writes into a folder made anew."""
from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..files import (atomic_torch_save, atomic_write_json, atomic_write_text, folder_lock, prepare_output_folder,
                     remove_stale_temporaries)
from ..images import save_grid
from ..loading import (CHECKPOINT, METRICS, check_finite_state, load_checkpoint, load_module_state, read_metrics,
                       source_digest, state_digest)
from ..model_config import ModelConfig, ParScaleEARConfig
from ..pipeline import ParScaleEAR
from ..plots import line_plot
from ..presets import config_from_dict, get_config
from .config import CHECKPOINT_VERSION, RUN_CONFIG, TrainConfig
from .distributed import Dist, batch_indices, setup_distributed, step_seed
from .divergence import DivergenceWatch
from .latents import load_images
from .optim import FIT_FROM, ema_update, fitted_steps, lr_at, param_groups, warmup_steps
from .tasks import GeneratorTask, VAETask


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; its message says which checkpoint the folder keeps."""


def train(cfg: TrainConfig, out: str | Path, model_config: ModelConfig | None = None, resume: bool = False,
          device: str = "cpu", progress: bool = True) -> Path:
    """Train a VAE (`kind='vae'`) or the generators (`kind='generator'`) into run folder `out`, holding a lock on it
    (a second process training into it gets a one-line error)."""
    cfg = replace(cfg)  # fit_steps_to_budget may set cfg.steps: never the caller's object
    out = check_run_folder(out, cfg)
    d, dev = setup_distributed(device)
    try:
        if d.main:
            prepare_output_folder(out)  # fail before the data loads, not after
        with folder_lock(out) if d.main else nullcontext():
            run = None
            try:
                run = _start(cfg, out, model_config, resume, d, dev, progress)
                run.loop(progress)
            except KeyboardInterrupt:
                if d.main:  # a write the interrupt cut short leaves no temporary (the run folder is still ours: locked)
                    remove_stale_temporaries(out, (CHECKPOINT, METRICS, RUN_CONFIG, "loss.png"))
                    remove_stale_temporaries(out / "samples", ("step_*.png",))
                raise TrainingInterrupted(_where_it_stopped(out, run)) from None
        if d.world > 1:
            dist.barrier()
    finally:  # also when a rank fails: its process group goes down cleanly and the others see the failure
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return out


def check_run_folder(out: str | Path, cfg: TrainConfig) -> Path:
    """`out` as a Path, refused (one line) when empty, or when it is the data folder or inside it."""
    if not str(out).strip():
        raise ValueError("--out: expected a run folder, got an empty path")
    out, data = Path(out), Path(cfg.data)
    if cfg.data and data.is_dir() and (out.resolve() == data.resolve() or data.resolve() in out.resolve().parents):
        raise ValueError(f"--out {out} is the data folder {cfg.data} or inside it: the run's files (samples/, "
                         f"checkpoints) would mix into the data; choose a folder outside it")
    return out


def _where_it_stopped(out: Path, run) -> str:
    """What a Ctrl-C left: the step reached and the checkpoint the folder keeps."""
    if run is None:
        return f"stopped before training began; {out} holds no new checkpoint"
    if not run.last_saved:
        return f"stopped at step {run.step_now} of {run.cfg.steps}; no checkpoint was written"
    return (f"stopped at step {run.step_now} of {run.cfg.steps}; {out / CHECKPOINT} keeps step {run.last_saved} "
            f"(--resume continues from there)")


def _start(cfg: TrainConfig, out: Path, model_config, resume: bool, d: Dist, dev: torch.device, progress: bool) -> "Run":
    """The run ready for its first step: the checkpoint resumed or none, the model, the data and the task."""
    ckpt, model_config, vae_ckpt = _open(cfg, out, model_config, resume, d.main)
    teacher = _teacher_digest(cfg, ckpt)
    torch.manual_seed(cfg.seed)  # initial weights follow --seed (identical on every rank)
    model = ParScaleEAR(model_config)
    if vae_ckpt is not None:
        if ParScaleEARConfig.from_dict(vae_ckpt["config"]).vae != model_config.vae:
            raise ValueError("the generator's VAE config does not match the VAE run's")
        load_module_state(model.vae, vae_ckpt["ema"], f"--vae {cfg.vae_run}")
    data = load_images(cfg, model_config)
    if model_config.num_classes and data.num_classes != model_config.num_classes:
        raise ValueError(f"data has {data.num_classes} classes, the model expects {model_config.num_classes}")
    task = (VAETask if cfg.kind == "vae" else GeneratorTask)(model, data, cfg, dev, d, fresh=ckpt is None, progress=progress,
                                                             start=ckpt["step"] if ckpt else 0)
    if cfg.batch_size > task.num_items:
        raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {task.num_items} training items; use at most that")
    return Run(cfg, out, d, dev, model, model_config, task, ckpt, num_images=len(data), teacher_digest=teacher)


def _teacher_digest(cfg: TrainConfig, ckpt: dict | None) -> str | None:
    """The digest of what the teacher holds now (None without one); a resumed run refuses a teacher that changed
    since it began (its pairs would differ, and the run would not continue exactly)."""
    if not cfg.teacher:
        return None
    digest = source_digest(cfg.teacher)
    if ckpt is not None and ckpt.get("teacher_digest") not in (None, digest):
        raise ValueError(f"--resume: the teacher {cfg.teacher} changed since this run began (it holds other weights "
                         f"now); its pairs would differ, so the run cannot continue exactly: restore that teacher, or "
                         f"start a new run with another --out")
    return digest


def _open(cfg: TrainConfig, out: Path, model_config: ModelConfig | None, resume: bool, main: bool = True):
    """(the checkpoint to resume or None, the model config, the VAE run's checkpoint or None), with one-line errors."""
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out)
        if not isinstance(ckpt.get("optimizer"), dict):
            raise ValueError(f"--resume: {out / CHECKPOINT} holds no optimizer state; it cannot be resumed")
        if ckpt["kind"] != cfg.kind:
            raise ValueError(f"--resume: {out} holds a {ckpt['kind']} run, not a {cfg.kind} run")
        model_config = config_from_dict(ckpt["config"])
        if ckpt["step"] >= cfg.steps:
            raise ValueError(f"--resume: {out} is already at step {ckpt['step']}; pass --steps above it to train further")
    elif (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    elif main and any((out / name).exists() for name in (METRICS, RUN_CONFIG)):
        old = " and ".join(name for name in (METRICS, RUN_CONFIG) if (out / name).exists())
        raise FileExistsError(f"{out} holds {old} of an earlier run that left no checkpoint; a new run would replace "
                              f"them: move them away, or choose another --out")
    vae_ckpt = load_checkpoint(cfg.vae_run) if cfg.kind == "generator" else None
    if vae_ckpt is not None and vae_ckpt["kind"] != "vae":
        raise ValueError(f"--vae: {cfg.vae_run} is a {vae_ckpt['kind']} run, not a VAE run")
    if model_config is None:
        model_config = ParScaleEARConfig.from_dict(vae_ckpt["config"]) if vae_ckpt else get_config("fmnist-32")
    return ckpt, model_config, vae_ckpt


def plot_losses(metrics_path: Path, out: Path, keys=("loss",)) -> None:
    """A loss-curve PNG from metrics.jsonl."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if len(rows) >= 2:
        series = {k: ([r["step"] for r in rows], [r[k] for r in rows]) for k in keys if all(k in r for r in rows)}
        line_plot(out, series, title="training loss", xlabel="step", ylabel="loss")


class Run:
    """A run between steps: the task, its optimizer and EMA, the clocks of the budget and of the log."""

    def __init__(self, cfg: TrainConfig, out: Path, d: Dist, dev: torch.device, model: ParScaleEAR,
                 model_config: ModelConfig, task, ckpt: dict | None, num_images: int, teacher_digest: str | None):
        self.cfg, self.out, self.d, self.dev, self.task, self.model_config = cfg, out, d, dev, task, model_config
        self.sources = {} if teacher_digest is None else {"teacher_digest": teacher_digest}  # kept in the checkpoint
        self.part = task.part
        model.to(dev)
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval()  # EMA of the trained part; used for samples
        self.ema = task.trained(self.ema_model)
        # fused on CUDA: one kernel per step instead of a few per parameter group (same update rule)
        self.optimizer = torch.optim.AdamW(param_groups(self.part, cfg), lr=cfg.lr, betas=(0.9, 0.95),
                                           fused=dev.type == "cuda")
        self.start = self._restore(ckpt) if ckpt is not None else 0
        runner = task.step
        if cfg.compile:  # the batch shape never changes: one static graph (Inductor's RNG, so draws differ from eager)
            runner = torch.compile(runner, dynamic=False)
        if d.world > 1:
            runner = nn.parallel.DistributedDataParallel(runner, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.runner, self.use_bf16 = runner, cfg.bf16 and dev.type == "cuda"
        used = {"bf16": self.use_bf16, "warmup_steps": warmup_steps(cfg)}  # what this run does, not only what was asked
        self.info = {"train": {**asdict(cfg), **used}, "requested": {k: getattr(cfg, k) for k in used},
                     "model": model_config.to_dict(), "world_size": d.world, "device": str(dev), "torch": torch.__version__,
                     "num_images": num_images, **task.info, **self.sources}  # rewritten with the plan by fit_steps_to_budget
        if d.main:
            self._start_files()
        self.divergence = DivergenceWatch(dev)
        self.last_saved, self.step_now, self.bar, self.fit_mark = self.start, self.start, None, None

    def _restore(self, ckpt: dict) -> int:
        """Load a checkpoint's weights, EMA and optimizer state (each checked); returns its step."""
        where = f"--resume: {self.out / CHECKPOINT}"
        for key in ("model", "ema"):
            check_finite_state(ckpt[key], where)
        load_module_state(self.part, ckpt["model"], where)
        load_module_state(self.ema, ckpt["ema"], where)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise ValueError(f"{where}: its optimizer state does not fit the model ({type(e).__name__})") from None
        return ckpt["step"]

    def _start_files(self) -> None:
        """The run folder at the start: no stale temporaries, run.json, the metrics of the steps kept."""
        out = self.out
        prepare_output_folder(out)
        remove_stale_temporaries(out, (CHECKPOINT, METRICS, RUN_CONFIG, "loss.png"))
        remove_stale_temporaries(out / "samples", ("step_*.png",))
        atomic_write_json(out / RUN_CONFIG, self.info)
        if (out / METRICS).exists():  # drop rows past the checkpoint we resume from (a killed run's tail)
            keep = [r for r in read_metrics(out / METRICS) if r.get("step", 0) <= self.start]
            atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in keep))

    # ------------------------------------------------------------------ the loop
    def loop(self, progress: bool) -> None:
        cfg, d = self.cfg, self.d
        if progress and d.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(initial=self.start, total=cfg.steps, desc=f"train-{cfg.kind}", unit="step")
        if cfg.samples and self.start and d.main and (self.start % cfg.sample_every == 0 or self.start == cfg.steps) \
                and not (self.out / "samples" / f"step_{self.start:07d}.png").is_file():
            self.snapshot(self.start)  # the grid of the step a killed run had checkpointed but not drawn yet
        self.t_start = self.window_t = time.time()
        self.window_n = 0
        warm = warmup_steps(cfg)
        fit = cfg.fit_steps_to_budget and self.start + FIT_FROM < warm  # a resumed run past its warm-up keeps its steps
        refit = None  # the step of the second plan, from the rate after the warm-up (often faster than during it)
        step = self.start
        while step < cfg.steps:
            losses, grad_norm = self.step(step)
            done = self.step_now = step + 1
            if fit and done in (self.start + FIT_FROM, warm, refit):
                self.replan(done)
                if done == warm:
                    refit = warm + max(warm, (cfg.steps - warm) // 5)
            out_of_time = cfg.max_minutes > 0 and (time.time() - self.t_start) > 60 * cfg.max_minutes
            self.after_step(step, losses, grad_norm, out_of_time)
            step = done
            if self.bar is not None:
                self.bar.update(1)
            if out_of_time:
                break
        if self.bar is not None:
            self.bar.close()

    def step(self, step: int) -> tuple[dict, torch.Tensor]:
        """One optimiser step from step's own seed; its losses and gradient norm (on the device, no sync)."""
        cfg, d, task = self.cfg, self.d, self.task
        torch.manual_seed(step_seed(cfg.seed, step, d.rank))
        idx = batch_indices(task.num_items, cfg.batch_size, step, cfg.seed, d).to(self.dev)
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_ratio"]
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            losses = self.runner(*task.batch(idx))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.part.parameters(), cfg.grad_clip)
        self.divergence.watch(step, losses["loss"].detach().float(), grad_norm.detach().float())
        self.optimizer.step()
        ema_update(self.ema, self.part, min(cfg.ema_decay, (1 + step) / (10 + step)))
        self.window_n += len(idx) * d.world
        return losses, grad_norm

    def replan(self, done: int) -> None:
        """fit_steps_to_budget: mark the rate's start; at the warm-up's end set the steps the budget fits, and set them
        again a fifth of the way on from the rate measured since (a short run would otherwise end early where its
        steps speed up after the warm-up: ~10% of a 4-minute budget on a GPU)."""
        cfg, d = self.cfg, self.d
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        now = time.time()
        if done == self.start + FIT_FROM:
            self.fit_mark = (done, now)
            return
        rate = (done - self.fit_mark[0]) / max(now - self.fit_mark[1], 1e-9)
        self.fit_mark = (done, now)
        planned = torch.tensor([fitted_steps(done, rate, time.time() - self.t_start, cfg)], device=self.dev)
        if d.world > 1:  # every rank must stop at the same step: rank 0's plan
            dist.broadcast(planned, 0)
        cfg.steps = int(planned)
        if self.bar is not None:
            self.bar.total = cfg.steps
            self.bar.refresh()
        if d.main:
            self.info["train"]["steps"] = cfg.steps
            self.info["fitted"] = {"at_step": done, "steps_per_s": round(rate, 3), "steps": cfg.steps}  # the last plan
            self.info.setdefault("plans", []).append(self.info["fitted"])
            atomic_write_json(self.out / RUN_CONFIG, self.info)

    def after_step(self, step: int, losses: dict, grad_norm: torch.Tensor, out_of_time: bool) -> None:
        """The log row, the checkpoint and the sample grid that are due after `step` (the last step: all three)."""
        cfg, done = self.cfg, step + 1
        logging = done % cfg.log_every == 0 or done == cfg.steps or out_of_time
        saving = done % cfg.ckpt_every == 0 or done == cfg.steps or out_of_time
        if logging or saving:  # nothing non-finite reaches the log or a checkpoint, nor a folder made anew
            self.divergence.check(done, self.out, self.last_saved, self.d)
            if self.d.main and not (self.out / RUN_CONFIG).is_file():
                raise FileNotFoundError(f"the run folder {self.out} (its {RUN_CONFIG}) was removed or moved during the "
                                        f"run; stopped at step {done} without writing into it")
        if logging:
            self.log(step, losses, grad_norm)
        if saving:
            self.save(done)
            self.last_saved = done
        if cfg.samples and (done % cfg.sample_every == 0 or done == cfg.steps or out_of_time):
            t0 = time.time()
            self.snapshot(done)
            spent = time.time() - t0  # sampling is not training: kept out of images/s, elapsed_s and --max-minutes
            self.t_start, self.window_t = self.t_start + spent, self.window_t + spent

    def log(self, step: int, losses: dict, grad_norm: torch.Tensor) -> None:
        """A metrics.jsonl row: the losses (averaged over ranks), lr, gradient norm, images/s, training seconds."""
        d = self.d
        vals = {k: v.detach().float() for k, v in losses.items()}
        if d.world > 1:
            for v in vals.values():
                dist.all_reduce(v)
            vals = {k: v / d.world for k, v in vals.items()}
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        now = time.time()
        row = {"step": step + 1, **{k: round(v.item(), 6) for k, v in vals.items()}, "lr": lr_at(step, self.cfg),
               "grad_norm": round(float(grad_norm), 4), "images_per_s": round(self.window_n / (now - self.window_t), 1),
               "elapsed_s": round(now - self.t_start, 2)}
        self.window_t, self.window_n = now, 0
        if d.main:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")

    def save(self, step: int) -> None:
        """checkpoint.pt (atomically, with the digest of its contents), from the unwrapped modules."""
        if not self.d.main:
            return
        cfg = self.cfg
        state = {"kind": cfg.kind, "version": CHECKPOINT_VERSION, "step": step, "train": asdict(cfg),
                 "model": self.part.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                 **self.task.checkpoint(self.model_config.to_dict(), self.ema), **self.sources}
        atomic_torch_save({**state, "digest": state_digest(state)}, self.out / CHECKPOINT)

    def snapshot(self, step: int) -> None:
        """samples/step_NNNNNNN.png from the EMA weights, and loss.png."""
        if not self.d.main:
            return
        with torch.no_grad():
            grid, nrow, names = self.task.grid(self.ema_model)
        (self.out / "samples").mkdir(exist_ok=True)
        save_grid(grid, self.out / "samples" / f"step_{step:07d}.png", nrow=nrow, column_labels=names)
        plot_losses(self.out / METRICS, self.out / "loss.png", keys=self.task.loss_keys)
