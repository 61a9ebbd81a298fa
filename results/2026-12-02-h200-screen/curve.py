"""FID-10k (train statistics) against sampling ms/image for the screen's runs: curve_b256.png, curve_b16.png.
  python results/2026-12-02-h200-screen/curve.py"""
import json
from pathlib import Path

from parscale_ear.utils import line_plot

here = Path(__file__).resolve().parent
for batch in (256, 16):
    series = {}
    for part, label in (("d1", "DiT-S/2 peer"), ("s1", "ours, residual_grad 1"), ("s3", "ours, residual_grad 0 (shipped)")):
        rows = sorted(json.loads((here / f"{part}_quality.json").read_text())["rows"], key=lambda r: r[f"ms_per_image_b{batch}"])
        best, xs, ys = float("inf"), [], []
        for r in rows:  # the lower envelope: the best FID reached at or below each latency
            if r["fid_train"] < best:
                best = r["fid_train"]
                xs.append(r[f"ms_per_image_b{batch}"])
                ys.append(best)
        series[label] = (xs, ys)
    line_plot(here / f"curve_b{batch}.png", series, ylabel="FID-10k (train)", title=f"FID-10k vs ms/image, batch {batch}, H200 bf16 graphs",
              xlabel="ms/image", log_x=True)
    print(batch, {k: list(zip(*v)) for k, v in series.items()})
