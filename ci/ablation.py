"""Ablation: full model vs no-coarse vs no-fine vs streams P in {1, 2, 4, 8}, each trained from
the same VAE with the same budget (steps x batch) for each of --seeds, then FID (mean and spread over
the seeds) and end-to-end latency in one table and one plot. Writes ablation.json, ablation.md and ablation.png."""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import shutil
import statistics
from pathlib import Path

import _common

from parscale_ear.evaluation import evaluate
from parscale_ear.evaluation import fid as fidlib
from parscale_ear.evaluation.benchmark import profile_latency
from parscale_ear.loading import load_checkpoint, load_pipeline, read_metrics
from parscale_ear.model_config import ParScaleEARConfig
from parscale_ear.presets import apply_overrides, recipe_config
from parscale_ear.train import TrainConfig, train
from parscale_ear.plots import line_plot
from parscale_ear.utils import environment

VARIANTS = {  # name -> create_model shorthands (presets.apply_overrides)
    "full": {},
    "no_coarse": {"mode": "no_coarse"},
    "no_fine": {"mode": "no_fine"},
    **{f"P={p}": {"streams": p} for p in (1, 2, 4, 8)},
}


def run(args) -> dict:
    dev = _common.device(args.device)
    out = Path(args.out)
    base = ParScaleEARConfig.from_dict(load_checkpoint(args.vae)["config"])
    if args.preset:  # the preset's generator design on the VAE run's VAE
        base = recipe_config(args.preset, base)
    compiled = dev.type == "cuda" and not args.quick  # the shipped recipe's compiled training step, on a GPU
    train_options = dict(steps=args.steps, batch_size=args.train_batch, lr=args.lr, warmup_steps=min(100, args.steps // 10 + 1),
                         log_every=max(1, args.steps // 10), sample_every=args.steps, ckpt_every=args.steps, data=args.data,
                         vae_run=str(args.vae), max_images=args.max_images, ema_decay=args.ema_decay, compile=compiled)
    # each seed: its own initial weights and data order; a variant equal to another one (P=2 when the design
    # has 2 streams is "full") shares that one's run folders instead of training the same model twice
    stems, run_dirs, todo = {}, {}, {}
    for name in args.variants:
        config = apply_overrides(base, **VARIANTS[name])
        stem = stems.setdefault(json.dumps(config.to_dict(), sort_keys=True), name.replace("=", ""))
        run_dirs[name] = [out / "ablation_runs" / f"{stem}-s{seed}" for seed in args.seeds]
        for seed, run_dir in zip(args.seeds, run_dirs[name]):
            todo.setdefault(run_dir, (config, run_dir, seed, train_options, str(dev)))
    todo = list(todo.values())
    if args.jobs > 1:  # fixed steps: sharing the device changes the wall time, never the trained weights' recipe
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            list(pool.map(train_one, *zip(*todo)))
    else:
        for job in todo:
            train_one(*job)
    inception = fidlib.load_inception(dev)
    v = base.vae
    ref, ref_source = evaluate.resolve_reference(args.ref, args.data, "train", v.image_size, v.in_channels, inception,
                                                 args.batch_size, limit=args.ref_limit)
    rows, scored, timed = [], {}, {}  # by run folder: a variant sharing another's runs reuses their model, FID, latency
    for name in args.variants:
        fids, train_rows = [], []
        for seed, run_dir in zip(args.seeds, run_dirs[name]):
            if run_dir not in scored:
                model = load_pipeline(run_dir, device=dev)
                scored[run_dir] = model, evaluate.evaluate_fid(model, ref, args.n, [args.cfg], inception, args.batch_size,
                                                               seed=0)[0]["fid"]
            model, fid = scored[run_dir]
            fids.append(fid)
            train_rows.append(read_metrics(run_dir / "metrics.jsonl")[-1])
            print(f"{name:10s} seed {seed}  FID {fids[-1]:8.3f}", flush=True)
        if run_dir not in timed:
            timed[run_dir] = [r for r in profile_latency(model, [args.latency_batch], runs=args.latency_runs, warmup=3,
                                                         bf16=args.bf16) if r["name"] == "end_to_end"][0]
        lat = timed[run_dir]
        spread = statistics.stdev(fids) if len(fids) > 1 else None
        rows.append({"variant": name, "mode": model.config.hybrid.mode, "streams": model.config.hybrid.fine.streams,
                     "generator_params": model.num_parameters()["generator"], "fid": statistics.fmean(fids),
                     "fid_std": spread, "fid_seeds": fids, "seeds": list(args.seeds),
                     "num_samples": args.n, "cfg": args.cfg, "e2e_ms_per_image_p50": lat["ms_per_image_p50"],
                     "e2e_ms_per_image_p99": lat["ms_per_image_p99"], "final_train_rows": train_rows})
        print(f"{name:10s} FID {rows[-1]['fid']:8.3f}{'' if spread is None else f' +- {spread:.3f}'}  "
              f"e2e {lat['ms_per_image_p50']:.4f} ms/image", flush=True)
    return {"milestone": "ablation", "env": environment(dev), "quick": args.quick, "vae_run": str(args.vae), "reference": ref_source,
            "preset": args.preset or base.name, "budget": {"steps": args.steps, "batch_size": args.train_batch, "lr": args.lr,
                                                          "compile": compiled, "seeds": list(args.seeds), "jobs": args.jobs},
            "rows": rows}


def train_one(config, run_dir: Path, seed: int, options: dict, device: str) -> None:
    """One variant's training run (a fresh folder: this script's own), in this process or a worker's."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(TrainConfig(kind="generator", seed=seed, **options), run_dir, config, device=device, progress=False)


if __name__ == "__main__":
    p = _common.parser(" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--vae", required=True, help="VAE run folder shared by every variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=2000, help="training steps of every variant (the budget)")
    p.add_argument("--train-batch", type=int, default=1024, help="(default: the shipped model's recipe)")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ref", default=None, help="reference statistics .npz (default: the shipped ones for all of Fashion-MNIST)")
    p.add_argument("--ref-limit", type=int, default=None)
    p.add_argument("--n", type=int, default=10_000, help="samples per FID")
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--latency-batch", type=int, default=16)
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per variant (FID: mean and spread)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time on the one device (fixed steps: only the wall time changes)")
    p.add_argument("--preset", default=None, help="generator design to ablate (default: the VAE run's preset)")
    args = p.parse_args()
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.quick:
        args.steps, args.train_batch, args.n, args.ref_limit, args.batch_size = 4, 16, 32, 64, 32
        args.latency_runs, args.latency_batch = 3, 4
        args.variants = [v for v in args.variants if v != "P=8"]
    result = run(args)
    out = Path(args.out)
    def fid_cell(r):
        return f"{r['fid']:.2f}" + ("" if r["fid_std"] is None else f" +- {r['fid_std']:.2f}")

    table = "| variant | mode | P | generator params | FID (mean +- std over seeds) | e2e ms/image P50 | P99 |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    table += "".join(f"| {r['variant']} | {r['mode']} | {r['streams']} | {r['generator_params'] / 1e6:.2f}M | {fid_cell(r)} | "
                     f"{r['e2e_ms_per_image_p50']:.4f} | {r['e2e_ms_per_image_p99']:.4f} |\n" for r in result["rows"])
    print(table)
    _common.write(out, "ablation.json", result)
    (out / "ablation.md").write_text(f"# Ablation ({result['env']['device']}, {result['env']['date']})\n\n"
                                     f"Budget per variant: {result['budget']}\n\n" + table)
    streams = [r for r in result["rows"] if r["variant"].startswith("P=")]
    if len(streams) >= 2:
        line_plot(out / "ablation.png", {"FID vs P": ([r["streams"] for r in streams], [r["fid"] for r in streams],
                                                     [r["fid_std"] for r in streams])},
                  title="FID vs ParScale streams P (same budget; bars: std over seeds)",
                  xlabel="parallel streams P", ylabel=f"FID ({args.n} samples)", log_x=True)
