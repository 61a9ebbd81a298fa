"""The speed target's reference: DiT-XL/2 (Peebles & Xie 2023, 675M) sampling at 256x256 with 250 steps
and classifier-free guidance, timed per image at a batch size. A benchmark: it prints numbers.

  python scripts/dit_xl_latency.py --batch 16 --steps 250 --runs 5 --out results/dit_xl.json

diffusers' DiTTransformer2DModel at DiT-XL/2's size and geometry (28 layers, 16 heads x 72 = 1152, patch 2
on the SD-VAE's 4 x 32 x 32 latent: 256 tokens, 1000 classes), random weights (timing does not depend
on them), bf16, one guided step (2 x batch rows) captured in a CUDA graph and replayed `steps` times.
The SD-VAE decoder is not timed (it is not offline here), so the figure is a lower bound on DiT-XL/2's
cost, which makes every speed-up computed from it conservative. CUDA events; median and P99 of `runs`.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from parscale_ear.benchmark import time_callable  # noqa: E402
from parscale_ear.utils import environment  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--batch", type=int, default=16)
p.add_argument("--steps", type=int, default=250)
p.add_argument("--cfg", type=float, default=4.0, help="guidance scale (any value != 1 doubles the rows)")
p.add_argument("--runs", type=int, default=5)
p.add_argument("--no-graphs", action="store_true")
p.add_argument("--out", default=None, help="JSON file for the result")
args = p.parse_args()
if not torch.cuda.is_available():
    sys.exit("dit_xl_latency.py: needs a CUDA GPU")
from diffusers import DiTTransformer2DModel  # noqa: E402

dev = torch.device("cuda")
torch.manual_seed(0)
dit = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                            sample_size=32, patch_size=2, num_embeds_ada_norm=1000).to(dev, torch.bfloat16).eval()
params = sum(q.numel() for q in dit.parameters())
B = args.batch
x = torch.randn(B, 4, 32, 32, device=dev, dtype=torch.bfloat16)
labels = torch.cat([torch.randint(0, 1000, (B,), device=dev), torch.full((B,), 1000, device=dev)])
t = torch.full((2 * B,), 500.0, device=dev)
dt = 1.0 / args.steps


@torch.no_grad()
def step():
    out = dit(torch.cat([x, x]), timestep=t, class_labels=labels, return_dict=False)[0][:, :4]  # eps half (learned sigma)
    cond, uncond = out.chunk(2)
    x.sub_(dt * (uncond + args.cfg * (cond - uncond)))


run_step = step
if not args.no_graphs:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    run_step = graph.replay


def sample():
    for _ in range(args.steps):
        run_step()


ms = torch.tensor(time_callable(sample, dev, warmup=1, runs=args.runs)) / B
result = {"model": "DiT-XL/2 (diffusers DiTTransformer2DModel, random weights)", "params": params, "batch": B,
          "steps": args.steps, "cfg": args.cfg, "cuda_graphs": not args.no_graphs, "dtype": "bfloat16",
          "vae_decode_timed": False, "ms_per_image_p50": round(float(ms.median()), 3),
          "ms_per_image_p99": round(float(ms.quantile(0.99)), 3), "runs": args.runs, "command": "python " + " ".join(sys.argv),
          **environment(dev)}
print(json.dumps(result))
if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
