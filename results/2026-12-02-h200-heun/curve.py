"""FID-10k (train statistics) against sampling ms/image (lower envelope of each run's schedules): the shipped
model R2 with its Euler schedules, with the Heun schedules added, and the 3-minute peer P1 (not equal minutes:
R2 trained 8). Writes curve_b256.png, curve_b16.png and curves.json (at each point of P1's curve, R2's best FID
at that latency or less, Euler only and with Heun).
  python results/2026-12-02-h200-heun/curve.py"""
import json
from pathlib import Path

from parscale_ear.quality import compare_curves, plot_curves

here = Path(__file__).resolve().parent
batch1024 = here.parent / "2026-12-02-h200-batch1024"
r2 = json.loads((batch1024 / "r2_quality.json").read_text())["rows"]
heun = json.loads((here / "heun.json").read_text())["rows"]
p1 = json.loads((batch1024 / "p1_quality.json").read_text())["rows"]
rows = {"ours, 8 min (R2, shipped), Euler": r2, "ours, 8 min (R2, shipped), Euler + Heun": r2 + heun,
        "DiT-S/2 peer, 3 min (P1), Euler": p1}
out = {}
for batch in (256, 16):
    curves = plot_curves(rows, here / f"curve_b{batch}.png", batch)
    out[f"b{batch}"] = {"curves": curves,
                        "r2_euler_vs_p1": compare_curves(r2, p1, batch), "r2_heun_vs_p1": compare_curves(r2 + heun, p1, batch)}
(here / "curves.json").write_text(json.dumps(out, indent=1) + "\n")
for b, o in out.items():
    for name in ("r2_euler_vs_p1", "r2_heun_vs_p1"):
        print(b, name, [(round(r["ms_per_image"], 3), r["peer_fid"], r["our_fid"], r["below"]) for r in o[name]])
