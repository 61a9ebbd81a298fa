"""FID-10k (train statistics) against sampling ms/image, lower envelope of each run's schedules, at equal
training minutes where the legend says so: curve_b256.png, curve_b16.png and curves.json (with, at each point
of each 3-minute peer's curve, our best FID at that latency or less).
  python results/2026-12-02-h200-batch1024/curve.py"""
import json
from pathlib import Path

from parscale_ear.quality import compare_curves, plot_curves

here = Path(__file__).resolve().parent
compiled = here.parent / "2026-12-02-h200-compiled"
runs = {"ours, 3 min, batch 1024 (R1)": here / "r1_quality.json", "ours, 8 min, batch 1024 (R2, shipped)": here / "r2_quality.json",
        "ours, 3 min, batch 256 (previous default)": here / "shipped_sweep.json",
        "DiT-S/2 peer, 3 min, batch 1024 (P1)": here / "p1_quality.json",
        "DiT-S/2 peer, 3 min, batch 512 (d1c)": compiled / "d1c_quality.json"}
rows = {k: json.loads(p.read_text())["rows"] for k, p in runs.items()}
out = {}
for batch in (256, 16):
    curves = plot_curves(rows, here / f"curve_b{batch}.png", batch)
    out[f"b{batch}"] = {"curves": curves,
                        "ours_3min_vs_peer_3min_b1024": compare_curves(rows["ours, 3 min, batch 1024 (R1)"], rows["DiT-S/2 peer, 3 min, batch 1024 (P1)"], batch),
                        "ours_8min_vs_peer_3min_b1024": compare_curves(rows["ours, 8 min, batch 1024 (R2, shipped)"], rows["DiT-S/2 peer, 3 min, batch 1024 (P1)"], batch)}
(here / "curves.json").write_text(json.dumps(out, indent=1) + "\n")
for b, o in out.items():
    for name in ("ours_3min_vs_peer_3min_b1024", "ours_8min_vs_peer_3min_b1024"):
        print(b, name, [(round(r["ms_per_image"], 3), r["peer_fid"], r["our_fid"], r["below"]) for r in o[name]])
