"""FID over guidance scales and temperatures (for choosing sampling defaults).
Usage: python scripts/fid_sweep.py RELEASE_DIR REF_STATS.npz OUT.json [--n 10000] [--cfgs 1 2] [--temperatures 1 0.7]"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parscale_ear import evaluate, fid  # noqa: E402
from parscale_ear.pipeline import ParScaleEAR  # noqa: E402
from parscale_ear.utils import atomic_write_json  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("release")
p.add_argument("ref")
p.add_argument("out")
p.add_argument("--n", type=int, default=10_000)
p.add_argument("--cfgs", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.85, 0.7])
p.add_argument("--device", default="cuda")
args = p.parse_args()
model = ParScaleEAR.from_pretrained(args.release, device=args.device)
inc = fid.load_inception(args.device)
ref = fid.load_statistics(args.ref)
rows = []
for temperature in args.temperatures:
    for row in evaluate.evaluate_fid(model, ref, args.n, args.cfgs, inc, 500, temperature=temperature):
        rows.append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(args.out, {"release": args.release, "num_samples": args.n, "rows": rows})
