"""Training of both stages: the LiteVAE on images, then the generator (or a peer) on cached latents or a teacher's
pairs. One loop serves 1..N GPUs (DDP through torchrun) and the CPU.

config (TrainConfig), distributed (ranks, seeds, data order), optim (AdamW groups, schedules, EMA), latents (data,
memory-mapped latents, VAE runs), tasks (what is trained), divergence (when a run has diverged), loop (the run).
Optimiser settings follow EAR (arXiv 2505.07812).
"""
from ..loading import CHECKPOINT, METRICS, export, load_checkpoint, load_pipeline, model_from_checkpoint, read_metrics
from .config import CHECKPOINT_VERSION, RUN_CONFIG, TrainConfig
from .distributed import Dist, batch_indices, setup_distributed, step_seed
from .latents import LatentSet, encode_dataset, latent_scale, latent_shards, load_images, vae_run_from_release
from .divergence import TrainingDiverged, check_finite
from .loop import TrainingInterrupted, plot_losses, train
from .optim import FIT_FROM, ema_update, fitted_steps, lr_at, param_groups, warmup_steps
from .tasks import GeneratorStep, GeneratorTask, VAEStep, VAETask

__all__ = ["CHECKPOINT", "CHECKPOINT_VERSION", "METRICS", "RUN_CONFIG", "Dist", "FIT_FROM", "GeneratorStep", "GeneratorTask",
           "TrainConfig", "TrainingDiverged", "TrainingInterrupted", "VAEStep", "VAETask", "batch_indices", "check_finite",
           "ema_update", "encode_dataset", "export", "fitted_steps", "LatentSet", "latent_scale", "latent_shards", "load_checkpoint", "load_images",
           "load_pipeline", "lr_at", "model_from_checkpoint", "param_groups", "plot_losses", "read_metrics",
           "setup_distributed", "step_seed", "train", "vae_run_from_release", "warmup_steps"]
