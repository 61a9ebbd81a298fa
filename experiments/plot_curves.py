"""FID against sampling cost for the default model, its teacher and the flow peer, from results/fashion_mnist.json.

  python experiments/plot_curves.py [--out results]

Writes curve_b256.png and curve_b16.png: one point per measured schedule, labelled with its passes per image;
FID-50k where measured (filled), FID-10k otherwise (open); x = ms per image (log scale).
"""
import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def series(res: dict) -> list[tuple[str, str, list[dict]]]:
    """(label, marker, points) of each model; a point: passes, fid, fid_n, ms_b256, ms_b16."""
    ours = [dict(passes=p["passes"], fid=p.get("fid_train_50k", p.get("fid_train_10k")),
                 n="50k" if "fid_train_50k" in p else "10k", b256=p["ms_per_image_b256"], b16=p["ms_per_image_b16"])
            for p in res["curve"] if "temperature 0" not in p["schedule"] and "temp 0" not in p["schedule"]]
    teacher = [dict(passes=s["passes_per_image"], fid=s["fid_train_50k"], n="50k", b256=s["ms_per_image_b256"],
                    b16=s["ms_per_image_b16"]) for s in res["other_schedules"] if "teacher" in s["model"]]
    flow = [dict(passes=p["passes"], fid=p["fid_train_10k"], n="10k", b256=p["ms_per_image_b256"], b16=p["ms_per_image_b16"])
            for p in res["peers"]["flow"]]
    return [(f"ours: energy student ({res['train_minutes']['generator']} min)", "o", ours),
            ("its teacher, flow stages (8 min)", "s", teacher),
            ("flow peer DiT-S/2 (8 min)", "^", flow)]


def plot(res: dict, batch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (label, marker, points), color in zip(series(res), ("tab:red", "tab:gray", "tab:blue")):
        points = sorted(points, key=lambda p: p[f"b{batch}"])
        xs, ys = [p[f"b{batch}"] for p in points], [p["fid"] for p in points]
        ax.plot(xs, ys, color=color, alpha=0.5, lw=1)
        for p in points:
            ax.scatter(p[f"b{batch}"], p["fid"], marker=marker, color=color,
                       facecolors=color if p["n"] == "50k" else "none", zorder=3)
            ax.annotate(str(p["passes"]), (p[f"b{batch}"], p["fid"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=color)
        ax.scatter([], [], marker=marker, color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"sampling cost, ms per image (batch {batch}, H200, bf16, CUDA graphs)")
    ax.set_ylabel("FID against the train statistics")
    ax.set_title("Fashion-MNIST 32x32: quality against cost (numbers: passes per image;\n"
                 "filled: FID-50k, open: FID-10k)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "results" / "fashion_mnist.json"),
                   help="the measured rows (default: results/fashion_mnist.json)")
    p.add_argument("--out", default=str(ROOT / "results"), help="folder for the two PNGs, made if new (default: results)")
    args = p.parse_args()
    res = json.loads(Path(args.results).read_text())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for batch in (256, 16):
        plot(res, batch, Path(args.out) / f"curve_b{batch}.png")
        print(f"wrote {Path(args.out) / f'curve_b{batch}.png'}")
