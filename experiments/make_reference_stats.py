"""Rebuild the shipped FID reference statistics parscale_ear/stats/fashion-mnist-{train,test}.npz.

Inception pool3 features of every image of the split (32x32 grey, zero-padded from 28x28, repeated
to RGB, resized to 299 by pytorch-fid's network); mu in float64, sigma in float32 stored as its upper
triangle (evaluate.write_reference_statistics). Then update SHA256SUMS.
Usage: python experiments/make_reference_stats.py [--device cuda] [--out parscale_ear/stats]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear.evaluation import evaluate, fid  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N for Inception (default: cuda)")
p.add_argument("--out", default="parscale_ear/stats", help="folder for the two .npz files (default: parscale_ear/stats)")
args = p.parse_args()
evaluate.write_reference_statistics(args.out, inception=fid.load_inception(args.device))
