"""FID-10k (train statistics) against sampling ms/image (lower envelope of each run's schedules) at equal training
minutes: the shipped model R2 (8 generator minutes) with its Euler and Heun schedules, and the DiT-S/2 peer that
ci/run.sh trained for the same 8 minutes in this folder's run (peer.json). Writes curve_b256.png, curve_b16.png
and curves.json (at each point of the peer's curve, R2's best FID at that latency or less).
  python results/2026-12-02-h200-ci-run/curve.py"""
import json
from pathlib import Path

from parscale_ear.quality import compare_curves, plot_curves

here = Path(__file__).resolve().parent
r2 = json.loads((here.parent / "2026-12-02-h200-batch1024" / "r2_quality.json").read_text())["rows"]
heun = json.loads((here.parent / "2026-12-02-h200-heun" / "heun.json").read_text())["rows"]
peer = json.loads((here / "peer.json").read_text())["rows"]
rows = {"ours, 8 min (R2, shipped), Euler + Heun": r2 + heun, "DiT-S/2 peer, 8 min (ci/run.sh), Euler": peer}
out = {}
for batch in (256, 16):
    out[f"b{batch}"] = {"curves": plot_curves(rows, here / f"curve_b{batch}.png", batch),
                        "r2_vs_peer": compare_curves(r2 + heun, peer, batch)}
(here / "curves.json").write_text(json.dumps(out, indent=1) + "\n")
for b, o in out.items():
    print(b, [(round(r["ms_per_image"], 3), r["peer_fid"], r["our_fid"], r["below"]) for r in o["r2_vs_peer"]])
