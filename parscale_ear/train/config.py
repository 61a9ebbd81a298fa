"""The training run's settings (TrainConfig): what a run trains, for how long, with which optimiser settings and
data; saved in run.json and the checkpoint, so `--resume` continues with exactly these."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..checks import check_field_types, check_int, check_real
from ..solvers import check_solver

RUN_CONFIG = "run.json"
CHECKPOINT_VERSION = 1
# every draw of a run seeds torch from (seed, step, rank) (distributed.step_seed): seeds below 2**32 keep those
# seeds inside the 64 bits torch.manual_seed takes
MAX_SEED = 2**32


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
    # cosine decay ends at the budget (the warm-up is the same for any total, so nothing changes before), and set them
    # again a fifth of the way on from the rate measured after the warm-up
    fit_steps_to_budget: bool = False
    data: str = "fashion-mnist"
    vae_run: str = ""  # generator runs: the VAE run folder
    kl_weight: float = 1e-6
    max_images: int = 0  # train on the first N images only (quick runs); 0 = all
    workers: int = -1  # DataLoader worker processes per rank reading streamed images; -1: up to 8, the CPUs per rank
    max_unreadable: float = 0.01  # stop once more than this fraction of the images read could not be read
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
        if self.seed >= MAX_SEED:
            raise ValueError(f"TrainConfig.seed (--seed): expected an int below 2**32, got {self.seed}")
        check_real(self.lr, "TrainConfig.lr (--lr)", minimum=0.0, inclusive=False)
        check_int(self.workers, "TrainConfig.workers (--workers)", minimum=-1)
        check_real(self.max_unreadable, "TrainConfig.max_unreadable (--max-unreadable)", minimum=0.0)
        if self.max_unreadable > 1:
            raise ValueError(f"TrainConfig.max_unreadable (--max-unreadable): expected a fraction in [0, 1], got {self.max_unreadable}")
        check_real(self.max_minutes, "TrainConfig.max_minutes (--max-minutes)", minimum=0.0)
        check_real(self.ema_decay, "TrainConfig.ema_decay (--ema-decay)", minimum=0.0)
        if not self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay (--ema-decay): expected a value in [0, 1), got {self.ema_decay}")
        if self.fit_steps_to_budget and not self.max_minutes > 0:
            raise ValueError("TrainConfig.fit_steps_to_budget needs a budget: set max_minutes (--max-minutes) > 0")
        check_int(self.pairs, "TrainConfig.pairs (--pairs)", minimum=0)
        if bool(self.teacher) != (self.pairs > 0):
            raise ValueError("TrainConfig: --teacher and --pairs go together (a teacher and how many of its pairs)")
        if not self.teacher and (self.teacher_steps or self.teacher_solver):
            raise ValueError("TrainConfig: --teacher-steps and --teacher-solver set how the teacher samples; they need "
                             "--teacher")
        if (self.init or self.teacher) and self.kind != "generator":
            raise ValueError("TrainConfig: --init and --teacher are for generator runs")
        for k in self.teacher_steps:
            check_int(k, "TrainConfig.teacher_steps (--teacher-steps)")
        if self.teacher_solver:
            check_solver(self.teacher_solver, "TrainConfig.teacher_solver (--teacher-solver)")
