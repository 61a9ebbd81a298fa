"""Time small CPU work at a given number of torch threads: the shipped model drawing 100 images, and one training step
(forward and backward) of the fmnist-32-cpu generator at batch 64; each the median of several calls after a warm-up.

  python experiments/cpu_threads.py --threads 1
  python experiments/cpu_threads.py --threads 2

Run the thread counts alternately, several times, to compare them on a machine whose load changes (the README's
"CPU threads" paragraph reports the medians of such runs).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads for this run")
p.add_argument("--calls", type=int, default=5, help="timed calls of each task; their median is printed (default: 5)")
args = p.parse_args()

import torch  # noqa: E402

import parscale_ear as pe  # noqa: E402

torch.set_num_threads(args.threads)
model = pe.ParScaleEAR.from_pretrained()
model.generate(10, seed=0)  # warm-up
draws = []
for _ in range(args.calls):
    t = time.perf_counter()
    model.generate(100, seed=0, batch_size=256)
    draws.append(time.perf_counter() - t)
generator = pe.create_model("fmnist-32-cpu")
latents = torch.randn(64, *generator.config.vae.latent_shape, generator=torch.Generator().manual_seed(0))
labels = torch.arange(64) % 10
steps = []
for _ in range(args.calls + 1):  # the first call is a warm-up
    t = time.perf_counter()
    generator.generator.loss(latents, labels)["loss"].backward()
    steps.append(time.perf_counter() - t)
print(f"threads {args.threads}: 100 images {statistics.median(draws):.2f} s, training step "
      f"{statistics.median(steps[1:]):.3f} s (medians of {args.calls} calls)")
