"""Train one recipe for a fixed number of GPU-minutes on a VAE run's latents, then score its schedules.

  python experiments/quality_run.py --vae runs/vae --recipe dit-s --minutes 6 --out runs/q/dit --schedules '4;8;20;8@2'
  python experiments/quality_run.py --vae runs/vae --recipe meanflow-s --minutes 6 --out runs/q/mf --schedules '1;2;4'
  python experiments/quality_run.py --vae runs/vae --recipe fmnist-32-es --init default --teacher default --pairs 400000 \
      --teacher-steps 4,4 --teacher-solver heun --minutes 1 --out runs/q/es --schedules '1,1@1@1;2,2@1@1'
  python experiments/quality_run.py --vae runs/vae --recipe dit-s --out runs/q/dit --schedules '8' --n 50000 --table fid50k

A release folder (config.json + model.safetensors, e.g. parscale_ear/weights/fmnist-32-es) is only scored,
into a --table path outside it; its rows then carry no training minutes or steps.

The run measures its own rate during its warm-up and sets its step count there (harness.train_for_minutes) so the
cosine schedule ends at the budget; --minutes of wall time (compile included) caps it in any case. The VAE's own minutes (from its run) are reported beside. A folder
that holds a trained run already is only scored (e.g. FID-50k at the best schedule into --table fid50k).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from parscale_ear.evaluation import fid, quality  # noqa: E402
from parscale_ear.harness import train_for_minutes  # noqa: E402
from parscale_ear import train as T  # noqa: E402
from parscale_ear.utils import environment  # noqa: E402
from parscale_ear.model_config import ParScaleEARConfig  # noqa: E402
from parscale_ear.presets import recipe_config  # noqa: E402
from parscale_ear.release import CONFIG_NAME  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="VAE run folder whose latents the generator trains on")
    p.add_argument("--recipe", required=True, help="a preset name (fmnist-32-flow, ...) or a peer (dit-s, dit-b)")
    p.add_argument("--minutes", type=float, default=None, help="generator training budget (GPU-minutes)")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead of a budget in minutes")
    p.add_argument("--out", required=True, help="run folder (trained here unless it holds a run), or a release to score")
    p.add_argument("--schedules", required=True, help="steps[@cfg[@temperature]] separated by ';' (steps: N in every stage, or COARSE,FINE)")
    p.add_argument("--n", type=int, default=10000, help="samples per schedule for FID (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default: cuda)")
    p.add_argument("--batch-size", type=int, default=256, help="training batch (default: 256)")
    p.add_argument("--lr", type=float, default=4e-4, help="peak learning rate (default: 4e-4)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the sampled weights (default: 0.999)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--head-lr-ratio", type=float, default=0.25, help="energy head lr / --lr (EAR: 0.25)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (its compile time counts in --minutes)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides, as parscale-ear's --set")
    p.add_argument("--init", default="", help="start from this release or run's generator ('default': the embedded model)")
    p.add_argument("--teacher", default="", help="train on this release or run's pairs ('default': the embedded model)")
    p.add_argument("--pairs", type=int, default=0, help="with --teacher: how many pairs")
    p.add_argument("--teacher-steps", default="", help="with --teacher: N (in every stage) or COARSE,FINE (default: the teacher's)")
    p.add_argument("--teacher-solver", default="", help="with --teacher: euler or heun (default: the teacher's)")
    p.add_argument("--time-runs", type=int, default=50, help="timed calls per batch size and schedule")
    p.add_argument("--train-only", action="store_true", help="train (unless --out holds a run) and stop before scoring")
    p.add_argument("--table", default="quality", help="name of the results table written in --out (NAME.json, NAME.md)")
    p.add_argument("--stats-dir", default=str(Path(__file__).resolve().parent.parent / "parscale_ear" / "stats"),
                   help="folder of fashion-mnist-{train,test}.npz (default: the shipped statistics)")
    return p.parse_args()


def train_or_find(args, out: Path, release: bool) -> tuple[dict, float | None]:
    """(the run's last metrics row, its training seconds): a release folder is scored as it is and a folder holding a
    trained run already (an earlier call or another command) is only scored, --recipe then being the rows' label;
    otherwise the recipe trains here for its budget."""
    from parscale_ear.args import parse_overrides

    if release:  # never written into
        if out.resolve() in (out / args.table).resolve().parents:
            sys.exit(f"quality_run: {out} is a release folder and is not written into; pass --table PATH outside it")
        return {}, None
    if (out / T.CHECKPOINT).exists():
        done = T.read_metrics(out / T.METRICS)[-1]
        return done, done["elapsed_s"]
    config = recipe_config(args.recipe, ParScaleEARConfig.from_dict(T.load_checkpoint(args.vae)["config"]),
                           parse_overrides(args.set))
    if (args.minutes is None) == (args.steps is None):
        sys.exit("quality_run: training needs exactly one of --minutes and --steps")
    done = train_for_minutes(config, args.vae, args.minutes, out, args.device, steps=args.steps,
                             warmup_steps=args.warmup_steps, batch_size=args.batch_size, lr=args.lr,
                             ema_decay=args.ema_decay, head_lr_ratio=args.head_lr_ratio, seed=args.seed,
                             compile=args.compile, init=args.init, teacher=args.teacher, pairs=args.pairs,
                             teacher_steps=[int(k) for k in args.teacher_steps.split(",") if k],
                             teacher_solver=args.teacher_solver)
    return done, done["wall_s"]


def score(args, out: Path, release: bool, done: dict, train_s: float | None) -> None:
    """Each schedule's row (FID train and test, passes, ms/image) with the run's settings, into --table."""
    model = T.load_pipeline(out, device=args.device).eval()
    inception = fid.load_inception(args.device)
    refs = {name: fid.load_statistics(Path(args.stats_dir) / f"fashion-mnist-{name}.npz") for name in ("train", "test")}
    rows = quality.evaluate_schedules(model, quality.parse_schedules(args.schedules), args.n, refs, inception, seed=0,
                                      time_runs=args.time_runs)
    vae_rows = T.read_metrics(Path(args.vae) / T.METRICS)
    # the run's own settings (also from another command); a release folder has none
    run_info = {} if release else json.loads((out / T.RUN_CONFIG).read_text())
    trained = run_info.get("train", {})
    for r in rows:
        r.update(recipe=args.recipe, seed=trained.get("seed"), train_minutes=None if train_s is None else round(train_s / 60, 2),
                 train_steps=done.get("step"), final_loss=done.get("loss"), pairs_seconds=run_info.get("pairs_seconds"),
                 vae_minutes=round(vae_rows[-1]["elapsed_s"] / 60, 2) if vae_rows else None)
    meta = {"command": "python " + " ".join(sys.argv), **environment(torch.device(args.device)),
            "generator_params": model.num_parameters()["generator"], "overrides": args.set,
            **{k: trained.get(k) for k in ("batch_size", "lr", "head_lr_ratio", "compile", "init", "teacher", "pairs",
                                           "teacher_steps", "teacher_solver")}}
    quality.write_table(rows, out / args.table, meta)
    print(quality.markdown(rows))


def main() -> None:
    args = parse_args()
    T.load_checkpoint(args.vae)  # a missing or damaged VAE run: one line before anything else
    out = Path(args.out)
    release = (out / CONFIG_NAME).is_file()
    done, train_s = train_or_find(args, out, release)
    if not args.train_only:
        score(args, out, release, done, train_s)


if __name__ == "__main__":
    main()
