"""One loop for 1..N processes on one or many nodes (DDP through torchrun: `--nproc_per_node G`, and `--nnodes N
--rdzv-backend c10d --rdzv-endpoint HOST:PORT` across nodes) and the CPU: the process's rank, the seeded data order of
each rank and each step's seed, so `--resume` and any number of GPUs draw the global batches an uninterrupted run
would."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Collectives wait this long: ranks meet after each encodes its share of the latents, which can take a while
TIMEOUT = timedelta(minutes=60)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev, timeout=TIMEOUT)
    else:
        dev = torch.device(device)
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Dist(rank, world, local), dev


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 4096 + rank


def check_batch(batch: int, d: Dist) -> None:
    """The global batch splits evenly over the processes (one line otherwise)."""
    if batch % d.world:
        raise ValueError(f"--batch-size {batch} must be a multiple of the {d.world} processes (each takes an equal share)")


def batch_indices(num_items: int, batch: int, step: int, seed: int, d: Dist) -> torch.Tensor:
    """This rank's share of global batch `step`: epochs are seeded permutations, cut into batches; the same items as
    DistributedSampler(seed=seed * 7919, drop_last=True) at that epoch gives this rank (streaming.RankBatches), so the
    global batch does not depend on the number of processes."""
    per_epoch = max(1, num_items // batch)
    epoch, i = divmod(step, per_epoch)
    global_batch = _epoch_order(num_items, seed * 7919 + epoch)[i * batch : (i + 1) * batch]
    return global_batch[d.rank :: d.world].clone()  # never a view of the cached order


@functools.lru_cache(maxsize=1)
def _epoch_order(num_items: int, seed: int) -> torch.Tensor:
    """An epoch's permutation of the items, made once per epoch rather than at every step (a million items: ~10 ms)."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
