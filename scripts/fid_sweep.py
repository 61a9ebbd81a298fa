"""FID-10k over guidance scales and temperatures (for choosing sampling defaults; not a headline number).
Usage: python scripts/fid_sweep.py RELEASE_DIR REF_STATS.npz OUT.json"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear import evaluate, fid  # noqa: E402
from parscale_ear.pipeline import ParScaleEAR  # noqa: E402
from parscale_ear.utils import atomic_write_json  # noqa: E402

release, ref_path, out = sys.argv[1:4]
model = ParScaleEAR.from_pretrained(release, device="cuda")
inc = fid.load_inception("cuda")
ref = fid.load_statistics(ref_path)
rows = []
for temperature in (1.0, 0.85, 0.7):
    for row in evaluate.evaluate_fid(model, ref, 10_000, (1.0, 1.5, 2.0, 3.0), inc, 500, temperature=temperature):
        rows.append(row)
        print(json.dumps(row))
atomic_write_json(out, {"release": release, "num_samples": 10_000, "rows": rows})
