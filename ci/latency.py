"""Latency: per-image P50/P95/P99 of encode, each generation stage, decode and end to end
(noise -> pixels) at several batch sizes; CUDA events with synchronisation, warm-up, many runs.
end_to_end times `model.compile_sampler(batch, steps, cfg, temperature, ...)()`, the public fast
path, so its number is what a user gets. Writes latency.json, latency.md and latency.png."""
from __future__ import annotations

import _common
import torch

import parscale_ear as pe
from parscale_ear.utils import environment
from parscale_ear.evaluation.benchmark import markdown_table, profile_latency
from parscale_ear.solvers import SOLVERS
from parscale_ear.loading import load_pipeline
from parscale_ear.plots import line_plot


def run(device, quick: bool, preset: str, ckpt: str | None, batch_sizes, runs: int, warmup: int, bf16: bool, compile: bool,
        graphs: bool, channels_last: bool = False, steps=None, cfg: float | None = None, temperature: float | None = None,
        solver: str | None = None) -> dict:
    torch.manual_seed(0)
    # weights do not change the timing: random weights for presets without a checkpoint
    model = (load_pipeline(ckpt) if ckpt else pe.create_model(preset)).to(device).eval()
    rows = profile_latency(model, batch_sizes, runs=runs, warmup=warmup, bf16=bf16, compile=compile, graphs=graphs,
                           channels_last=channels_last, steps=steps, cfg=cfg, temperature=temperature, solver=solver,
                           on_row=lambda r: print(f"{r['name']:28s} batch {r['batch']:4d}  P50 {r['ms_per_image_p50']:.4f}  "
                                                  f"P99 {r['ms_per_image_p99']:.4f} ms/image", flush=True))
    return {"milestone": "latency", "env": environment(device), "quick": quick, "model": model.config.name,
            "checkpoint": ckpt, "params": model.num_parameters(),
            "settings": {"batch_sizes": list(batch_sizes), "runs": runs, "warmup": warmup, "bf16": bf16,
                         "compile": compile, "cuda_graphs": graphs, "channels_last": channels_last,
                         "cfg": model.config.cfg if cfg is None else cfg,
                         "temperature": model.config.temperature if temperature is None else temperature,
                         "steps": list(model.resolve_steps(steps)), "solver": solver or "the model's"},
            "rows": rows}


def parse_args():
    p = _common.parser(" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default=_common.gates()["latency"]["preset"], help="(default: the gated one, the shipped design at 256x256)")
    p.add_argument("--ckpt", default=None, help="time a trained pipeline instead of a preset")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="NHWC decoder convolutions")
    p.add_argument("--steps", default=None, help="schedule to time: N (in every stage) or COARSE,FINE (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None, help="(default: the model's)")
    p.add_argument("--solver", choices=SOLVERS, default=None, help="flow solver (default: the model's)")
    p.add_argument("--dit-xl", action="store_true",
                   help="also time DiT-XL/2 (250 guided steps + SD-VAE-sized decoder, bf16, CUDA graphs) at each batch size")
    p.add_argument("--dit-xl-runs", type=int, default=3, help="whole DiT-XL/2 runs timed per batch size")
    args = p.parse_args()
    steps = None if args.steps is None else tuple(int(x) for x in args.steps.split(","))
    args.steps = steps[0] if steps is not None and len(steps) == 1 else steps
    if args.quick:
        args.preset, args.batch_sizes, args.runs, args.warmup = "tiny-32-flow", [1, 4], 5, 1
    return args


def time_reference(result: dict, device, batch_sizes, runs: int) -> None:
    """DiT-XL/2 timed at each batch size in the same run, beside our end-to-end P99 (result["dit_xl"])."""
    from parscale_ear.evaluation.benchmark import time_dit_xl

    result["dit_xl"] = [time_dit_xl(b, device, runs=runs) for b in batch_sizes]
    ours = {r["batch"]: r for r in result["rows"] if r["name"] == "end_to_end"}
    for r in result["dit_xl"]:
        r["ours_ms_per_image_p99"] = ours[r["batch"]]["ms_per_image_p99"]
        r["speedup_p99"] = round(r["ms_per_image_p99"] / ours[r["batch"]]["ms_per_image_p99"], 1)
        print(f"{r['name']:40s} batch {r['batch']:4d}  P50 {r['ms_per_image_p50']:.3f}  P99 {r['ms_per_image_p99']:.3f} "
              f"ms/image  ({r['speedup_p99']}x ours at P99)", flush=True)


def table(result: dict) -> str:
    """The rows as Markdown, and the reference's beside ours where it was timed."""
    text = markdown_table(result["rows"])
    if result.get("dit_xl"):
        text += ("\n| reference | batch | ms/image P50 | P99 | ours P99 | speed-up at P99 |\n| --- | --- | --- | --- | --- | --- |\n"
                 + "".join(f"| {r['name']} | {r['batch']} | {r['ms_per_image_p50']:.3f} | {r['ms_per_image_p99']:.3f} | "
                           f"{r['ours_ms_per_image_p99']:.4f} | {r['speedup_p99']}x |\n" for r in result["dit_xl"]))
    return text


def write(result: dict, out: str) -> None:
    """latency.json, latency.md (a header saying how it was timed) and latency.png."""
    text = table(result)
    print(text)
    _common.write(out, "latency.json", result)
    s = result["settings"]
    header = (f"# Latency: {result['model']} on {result['env']['device']}\n\n{result['env']['date']}, torch "
              f"{result['env']['torch']}, commit {result['env']['git_commit']}; bf16={s['bf16']} "
              f"compile={s['compile']} cuda_graphs={s['cuda_graphs']} channels_last={s['channels_last']}, {s['runs']} timed runs after {s['warmup']} warm-up.\n\n"
              "end_to_end is noise -> pixels: the generate.* rows plus decode (encode is timed beside, it is not part of "
              "generation); each row is timed alone, so the sum differs from end_to_end by the sampler's noise draw.\n\n")
    (_common.Path(out) / "latency.md").write_text(header + text)
    series = {}
    for r in result["rows"]:
        xs, ys = series.setdefault(r["name"], ([], []))
        xs.append(r["batch"])
        ys.append(r["ms_per_image_p50"])
    line_plot(_common.Path(out) / "latency.png", series, title=f"median latency per image vs batch ({result['env']['device']})",
              xlabel="batch size (images)", ylabel="ms per image (P50)", log_x=True, log_y=True)


def main() -> None:
    args = parse_args()
    device = _common.device(args.device)
    try:
        result = run(device, args.quick, args.preset, args.ckpt, args.batch_sizes, args.runs, args.warmup, args.bf16,
                     args.compile, args.cuda_graphs, args.channels_last, args.steps, args.cfg, args.temperature, args.solver)
    except ValueError as e:  # a schedule the model cannot run (steps, cfg, solver): one line
        raise SystemExit(f"ci/latency.py: {e}") from None
    if args.dit_xl:  # the reference, side by side in the same run
        time_reference(result, device, args.batch_sizes, args.dit_xl_runs)
    write(result, args.out)


if __name__ == "__main__":
    main()
