"""Make a LiteVAE run folder from a release folder's VAE (default: the shipped model), so generators train on
exactly the latents of that model's LiteVAE without training the VAE again:

  python scripts/vae_run_from_release.py --out runs/vae [--release parscale_ear/weights/fmnist-32-vflow-s] \
      [--metrics results/2026-12-02-h200-compiled/vae_metrics.jsonl]

The folder holds checkpoint.pt (kind "vae", the release's VAE weights as its EMA and model, its config) and,
with --metrics, a copy of the VAE's own training log so the quality harness can report its minutes.
"""
import argparse
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear import ParScaleEAR  # noqa: E402
from parscale_ear.loading import CHECKPOINT, METRICS  # noqa: E402
from parscale_ear.train import CHECKPOINT_VERSION, TrainConfig  # noqa: E402
from parscale_ear.utils import atomic_torch_save, prepare_output_folder  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--out", required=True, help="new VAE run folder")
p.add_argument("--release", default=None, help="release folder (default: the shipped model)")
p.add_argument("--data", default="fashion-mnist", help="the data the VAE was trained on (generator runs read it)")
p.add_argument("--metrics", default=None, help="the VAE run's metrics.jsonl, copied beside the checkpoint")
args = p.parse_args()

out = Path(args.out)
if (out / CHECKPOINT).exists():
    sys.exit(f"vae_run_from_release: {out} already holds a run")
model = ParScaleEAR.from_pretrained(args.release)
prepare_output_folder(out)
vae = {k: v.float() for k, v in model.vae.state_dict().items()}
atomic_torch_save({"kind": "vae", "version": CHECKPOINT_VERSION, "step": 0, "train": asdict(TrainConfig(kind="vae", data=args.data)),
                   "model": vae, "ema": vae, "config": model.config.to_dict(), "source": str(args.release or "shipped")},
                  out / CHECKPOINT)
if args.metrics:
    shutil.copyfile(args.metrics, out / METRICS)
print(f"VAE run from {args.release or 'the shipped model'}: {out}")
