"""Peak memory of a generator run at 1x and 8x the data: an image folder of N and 8N images, one tiny LiteVAE
run, then `parscale-ear train` (latents encoded into memory-mapped shards, then a fixed number of steps gathered
through the maps) in a fresh process each, which reports its own peak RSS. For contrast, the peak of holding the same
folder in memory (`load_dataset`). Prints the numbers and their ratios; memory that stays flat (within 20%) is the
point, not a timing.

    python scripts/bench_latent_memory.py --images 2000 --size 32
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# run in a fresh interpreter; prints the process's peak RSS in MiB (Linux reports ru_maxrss in KiB), which counts the
# pages of memory-mapped files it touched (the page cache, which the system reclaims), and the peak of its anonymous
# memory (RssAnon, sampled every 20 ms): what it holds itself
_MEASURE = """
import resource, sys, threading, time
peak = [0]
def watch():
    while True:
        with open('/proc/self/status') as f:
            anon = next((int(l.split()[1]) for l in f if l.startswith('RssAnon:')), 0)
        peak[0] = max(peak[0], anon)
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ['parscale-ear', *{args!r}]
{body}
time.sleep(0.05)
print('PEAK_MIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak[0] / 1024)
"""
_TRAIN = "from parscale_ear.cli import main\nassert main(sys.argv[1:]) == 0"
_HOLD = ("from parscale_ear.data import load_dataset\n"
         "data = load_dataset(sys.argv[1], image_size=int(sys.argv[2]), channels=1)\nprint(len(data))")


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i:07d}.png", compress_level=1)
    return root


def peak_mib(body: str, args: list[str], cwd: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(args=args, body=body)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    rss, anon = next(line.split()[1:3] for line in out.stdout.splitlines() if line.startswith("PEAK_MIB"))
    return {"rss": float(rss), "anon": float(anon)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--images", type=int, default=2000, help="N: the 1x data; 8x is 8N")
    p.add_argument("--size", type=int, default=32, help="image side (tiny-32 trains at 32)")
    p.add_argument("--steps", type=int, default=20, help="generator steps after the latents are made")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = {x: make_folder(tmp / f"data-{x}x", x * args.images, args.size) for x in (1, 8)}
        common = ["--device", "cpu", "--no-progress", "--no-samples", "--workers", "0", "--batch-size", "64"]
        peak_mib(_TRAIN, ["train-vae", "--preset", "tiny-32", "--data", str(folders[1]), "--steps", "1", "--out", "vae",
                          *common], tmp)
        rows = {}
        for x, folder in folders.items():
            train = peak_mib(_TRAIN, ["train", "--vae", "vae", "--data", str(folder), "--steps", str(args.steps), "--out",
                                      f"gen-{x}x", *common], tmp)
            held = peak_mib(_HOLD, [str(folder), str(args.size)], tmp)
            rows[x] = {"images": x * args.images, "train_peak_mib": train["rss"], "train_peak_anon_mib": train["anon"],
                       "in_memory_peak_mib": held["rss"], "in_memory_peak_anon_mib": held["anon"],
                       "latent_shard_files": len(sorted((tmp / "vae" / "latents").glob("*/*.latents.npy")))}
        print(json.dumps(rows, indent=1))
        for key in ("train_peak_anon_mib", "train_peak_mib", "in_memory_peak_anon_mib", "in_memory_peak_mib"):
            ratio = rows[8][key] / rows[1][key]
            print(f"{key}: {rows[1][key]:.0f} MiB at 1x, {rows[8][key]:.0f} MiB at 8x: ratio {ratio:.2f}"
                  + (f" ({'flat within 20%' if ratio <= 1.2 else 'NOT flat within 20%'})" if key == "train_peak_anon_mib"
                     else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
