"""FID against sampling cost for the default model, its teacher and the flow peer, from results/fashion_mnist.json;
and the equal-minutes screen of our flow design against the equal-size DiT, from results/flow_vs_dit_screen.json.

  python experiments/plot_curves.py [--out results]

Writes curve_b256.png and curve_b16.png (parscale_ear.plots.cost_plot): one point per measured schedule, labelled
with its passes per image; FID-50k where measured (filled), FID-10k otherwise (open); x = ms per image (log scale).
Writes flow_vs_dit_screen.png: FID-10k against passes per image for each screened model, each point labelled with
its ms per image at batch 256.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from parscale_ear.plots import cost_plot  # noqa: E402


def series(res: dict) -> dict[str, list[dict]]:
    """Each model's points: passes, fid, fid_n ("50k" or "10k"), ms per image at batch 256 and 16."""
    ours = [dict(passes=p["passes"], fid=p.get("fid_train_50k", p.get("fid_train_10k")),
                 n="50k" if "fid_train_50k" in p else "10k", b256=p["ms_per_image_b256"], b16=p["ms_per_image_b16"])
            for p in res["curve"] if "temperature 0" not in p["schedule"] and "temp 0" not in p["schedule"]]
    teacher = [dict(passes=s["passes_per_image"], fid=s["fid_train_50k"], n="50k", b256=s["ms_per_image_b256"],
                    b16=s["ms_per_image_b16"]) for s in res["other_schedules"] if "teacher" in s["model"]]
    flow = [dict(passes=p["passes"], fid=p["fid_train_10k"], n="10k", b256=p["ms_per_image_b256"], b16=p["ms_per_image_b16"])
            for p in res["peers"]["flow"]]
    return {f"ours: energy student ({res['train_minutes']['generator']} min)": ours,
            "its teacher, flow stages (8 min)": teacher, "flow peer DiT-S/2 (8 min)": flow}


def plot(res: dict, batch: int, path: Path) -> None:
    points = {name: [{"cost": p[f"b{batch}"], "score": p["fid"], "note": p["passes"], "open": p["n"] != "50k"}
                     for p in ps] for name, ps in series(res).items()}
    cost_plot(path, points, xlabel=f"sampling cost, ms per image (batch {batch}, H200, bf16, CUDA graphs)",
              ylabel="FID against the train statistics",
              title="Fashion-MNIST 32x32: quality against cost (numbers: passes per image;\nfilled: FID-50k, open: FID-10k)",
              colors=["tab:red", "tab:gray", "tab:blue"])


def plot_screen(screen: dict, path: Path) -> None:
    """FID-10k against passes per image of each model of the equal-minutes screen."""
    points = {f"{name} ({run['generator_params'] / 1e6:.1f}M, {run['train_minutes']} min)":
              [{"cost": r["passes_per_image"], "score": r["fid_train"], "note": f"{r['ms_per_image_b256']:.3f}"}
               for r in run["rows"]] for name, run in screen["runs"].items()}
    cost_plot(path, points, xlabel="network passes per image (log scale)", ylabel="FID-10k against the train statistics",
              title=f"Equal-minutes screen, {screen['device'].split(' (')[0]} (numbers: ms per image at batch 256)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "results" / "fashion_mnist.json"),
                   help="the measured rows (default: results/fashion_mnist.json)")
    p.add_argument("--screen", default=str(ROOT / "results" / "flow_vs_dit_screen.json"),
                   help="the equal-minutes screen's rows (default: results/flow_vs_dit_screen.json)")
    p.add_argument("--out", default=str(ROOT / "results"), help="folder for the PNGs, made if new (default: results)")
    args = p.parse_args()
    res = json.loads(Path(args.results).read_text())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for batch in (256, 16):
        plot(res, batch, Path(args.out) / f"curve_b{batch}.png")
        print(f"wrote {Path(args.out) / f'curve_b{batch}.png'}")
    plot_screen(json.loads(Path(args.screen).read_text()), Path(args.out) / "flow_vs_dit_screen.png")
    print(f"wrote {Path(args.out) / 'flow_vs_dit_screen.png'}")


if __name__ == "__main__":
    main()
