"""Sampling sweep of the shipped default model on the CPU (no retraining): does any energy-head
temperature > 0 or another guidance scale beat the default 4 + 4, cfg 2, temperature 0?
FID-2k against the shipped train statistics (biased upwards at n = 2,000: compare rows with each other).
  .venv/bin/python results/2026-12-02-cpu-default-sweep/run.py [N]   -> sweep.json beside this file"""
import json
import sys
import time
from pathlib import Path

import torch

import parscale_ear as pe
from parscale_ear import fid, quality
from parscale_ear.utils import environment

here = Path(__file__).resolve().parent
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
torch.set_num_threads(2)
model = pe.ParScaleEAR.from_pretrained().eval()
inception = fid.load_inception("cpu")
stats = Path(pe.__file__).resolve().parent / "stats"
refs = {"train": fid.load_statistics(stats / "fashion-mnist-train.npz")}
schedules = quality.parse_schedules("4,4@2@0;4,4@2@0.25;4,4@2@0.5;4,4@1.5@0;4,4@3@0;2,2@2@0.25")
out = here / "sweep.json"
rows = []
for s in schedules:  # one at a time, written after each, so a stopped run keeps its rows
    t0 = time.time()
    rows += quality.evaluate_schedules(model, [s], n, refs, inception, seed=0)
    rows[-1]["wall_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps({"command": "python results/2026-12-02-cpu-default-sweep/run.py " + str(n),
                               "model": "fmnist-32-vflow-s (embedded default)", **environment(torch.device("cpu")),
                               "rows": rows}, indent=2) + "\n")
print(quality.markdown(rows))
