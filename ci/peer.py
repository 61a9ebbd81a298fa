"""Peers: the flow DiT (diffusers' DiT-S/2, rectified flow, Euler and Heun) and the one-step MeanFlow DiT, each
trained on the same VAE's latents for the same wall-clock budget as our generator, then scored by the same FID
code at its few-step schedules. Reported beside fid_eval in report.md, not gated. Writes peer_RECIPE.json."""
from __future__ import annotations

import shutil
from pathlib import Path

import _common

from parscale_ear.evaluation import evaluate, quality
from parscale_ear.harness import train_for_minutes
from parscale_ear.evaluation import fid as fidlib
from parscale_ear.loading import load_checkpoint, load_pipeline, read_metrics
from parscale_ear.model_config import ParScaleEARConfig
from parscale_ear.presets import recipe_config
from parscale_ear.utils import environment


# each peer at its own best-known schedules: the flow DiT with Euler and Heun steps (Heun k steps: 2k - 1 passes),
# MeanFlow at its one-pass steps
SCHEDULES = {"dit-xs": "2;4;8;16;32;3@1@1@solver=heun;5@1@1@solver=heun;13@1@1@solver=heun",
             "dit-s": "2;4;8;16;32;3@1@1@solver=heun;5@1@1@solver=heun;13@1@1@solver=heun",
             "dit-b": "2;4;8;16;32;3@1@1@solver=heun;5@1@1@solver=heun;13@1@1@solver=heun",
             "meanflow-s": "1;2;4;8"}


def budget_minutes(args) -> float:
    """--minutes, else the generator run's own training minutes (equal budget), else 4."""
    if args.minutes:
        return args.minutes
    rows = read_metrics(Path(args.gen_run) / "metrics.jsonl") if args.gen_run else []
    return round(rows[-1]["elapsed_s"] / 60, 2) if rows else 4.0


def run(args) -> dict:
    dev = _common.device(args.device)
    vae_config = ParScaleEARConfig.from_dict(load_checkpoint(args.vae)["config"])
    overrides = {"dit": {"num_layers": 1, "heads": 1, "head_dim": 16}} if args.quick else {}
    config = recipe_config(args.recipe, vae_config, overrides)
    minutes = budget_minutes(args)
    run_dir = Path(args.out) / "peer_run"  # this script's own run folder: a fresh one each time, as ci/ablation's
    if run_dir.exists():
        shutil.rmtree(run_dir)
    extra = {"max_images": 400, "warmup_steps": 12} if args.quick else {}
    compiled = dev.type == "cuda" and not args.quick  # as our own runs: the training step compiled on a GPU
    done = train_for_minutes(config, args.vae, minutes, run_dir, str(dev), batch_size=args.train_batch, lr=args.lr,
                                     ema_decay=args.ema_decay, seed=args.seed, compile=compiled, **extra)
    model = load_pipeline(run_dir, device=dev).eval()
    inception = fidlib.load_inception(dev)
    v = model.config.vae
    if args.quick:  # as fid_eval --quick: statistics of a slice of the data
        ref = evaluate.reference_statistics(args.data, "train", v.image_size, v.in_channels, inception, 64, limit=128)
    else:
        ref = fidlib.load_statistics(evaluate.shipped_statistics("fashion-mnist-train"))
    rows = quality.evaluate_schedules(model, quality.parse_schedules(args.schedules), args.n, {"train": ref}, inception)
    return {"milestone": "peer", "env": environment(dev), "quick": args.quick, "recipe": args.recipe,
            "generator_params": model.num_parameters()["generator"], "budget_minutes": minutes,
            "train": {"steps": done["step"], "wall_s": round(done["wall_s"], 1), "batch_size": args.train_batch, "lr": args.lr,
                      "compile": compiled},
            "rows": rows, "best_fid": min(r["fid_train"] for r in rows), "num_samples": args.n}


if __name__ == "__main__":
    p = _common.parser(" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--vae", required=True, help="the VAE run whose latents both models train on")
    p.add_argument("--gen-run", default=None, help="the generator run whose training minutes set the budget")
    p.add_argument("--minutes", type=float, default=None, help="training budget (default: the --gen-run's minutes, else 4)")
    p.add_argument("--recipe", default="dit-s", choices=list(SCHEDULES))
    p.add_argument("--schedules", default=None, help="steps[@cfg[@temperature[@settings]]] separated by ';' (default: "
                                                     "the recipe's own, SCHEDULES)")
    # the peer's best measured recipe (results/2026-12-02-h200-batch1024/, P1: better than batch 512 / 3e-4)
    p.add_argument("--train-batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=4.2e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--n", type=int, default=10_000, help="samples per FID")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.schedules = args.schedules or SCHEDULES[args.recipe]
    if args.quick:
        args.minutes, args.train_batch, args.n, args.schedules = 0.02, 16, 32, "2"
    result = run(args)
    for r in result["rows"]:
        print(f"peer {r['schedule']:32s} FID {r['fid_train']:8.3f}  ({r['passes_per_image']} passes)")
    _common.write(args.out, f"peer_{args.recipe}.json", result)
