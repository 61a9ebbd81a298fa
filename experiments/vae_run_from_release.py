"""Make a LiteVAE run folder from a release folder's VAE (default: the shipped model), so generators train on
exactly the latents of that model's LiteVAE without training the VAE again (parscale_ear.train.vae_run_from_release):

  python experiments/vae_run_from_release.py --out runs/vae [--release parscale_ear/weights/fmnist-32-vflow-s] \
      [--metrics runs/vae/metrics.jsonl]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear.train import vae_run_from_release  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--out", required=True, help="new VAE run folder")
p.add_argument("--release", default=None, help="release folder (default: the shipped model)")
p.add_argument("--data", default="fashion-mnist", help="the data the VAE was trained on (generator runs read it)")
p.add_argument("--metrics", default=None, help="the VAE run's metrics.jsonl, copied beside the checkpoint")
args = p.parse_args()
try:
    out = vae_run_from_release(args.out, args.release, args.data, args.metrics)
except (FileExistsError, FileNotFoundError, ValueError) as error:
    sys.exit(f"vae_run_from_release: {error}")
print(f"VAE run from {args.release or 'the shipped model'}: {out}")
