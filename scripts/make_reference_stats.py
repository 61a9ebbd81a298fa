"""Rebuild the shipped FID reference statistics parscale_ear/stats/fashion-mnist-{train,test}.npz.

Inception pool3 features of every image of the split (32x32 grey, zero-padded from 28x28, repeated
to RGB, resized to 299 by pytorch-fid's network); mu in float64, sigma stored in float32 (halves the
file; the FID changes by far less than its sampling noise). Then update SHA256SUMS.
Usage: python scripts/make_reference_stats.py [--device cuda] [--out parscale_ear/stats]
"""
import argparse
import sys
from pathlib import Path

import numpy as np  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear import evaluate, fid  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cuda")
p.add_argument("--out", default="parscale_ear/stats")
args = p.parse_args()
inception = fid.load_inception(args.device)
for split in ("train", "test"):
    mu, sigma, n = evaluate.reference_statistics("fashion-mnist", split, inception=inception, batch_size=500)
    path = Path(args.out) / f"fashion-mnist-{split}.npz"
    fid.pack_statistics(path, mu, sigma.astype(np.float32), n)  # exact: sigma's upper triangle
    print(f"{path}: {n} images")
