"""The `parscale-ear` command line: models, train-vae, train, sample, export, fid, fid-weights.

Multi-GPU: `torchrun --nproc_per_node N -m parscale_ear train ...` (same code path for 1..N GPUs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Errors a user can cause (bad flags, files, folders): one line, exit 2. OSError covers missing,
# unwritable and wrong-kind paths (NotADirectoryError, IsADirectoryError, PermissionError).
USER_ERRORS = (ValueError, TypeError, OSError)


def _steps(text: str):
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or COARSE,FINE (ints), got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"--steps: expected N or COARSE,FINE, got {text!r}")


def _overrides(items: list[str]) -> dict:
    """--set key=value pairs (value parsed as JSON when it can be); dotted keys nest: vae.latent_channels=8."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# flags that define a run (its recipe): a resumed run keeps its own, and one given that differs is refused
RUN_DEFAULTS = {"vae": dict(batch_size=256, lr=1e-3, ema_decay=0.999), "generator": dict(batch_size=1024, lr=8e-4, ema_decay=0.999)}
COMMON_DEFAULTS = dict(seed=0, warmup_steps=100, max_images=0)


def _train_args(p: argparse.ArgumentParser, kind: str) -> None:
    d = {**RUN_DEFAULTS[kind], **COMMON_DEFAULTS}
    p.add_argument("--steps", type=int, required=True, help="optimiser steps of the run")
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch over all GPUs (default: {d['batch_size']})")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where it stopped, with its own settings")
    p.add_argument("--seed", type=int, default=None, help=f"initial weights and every random draw of the run (default: {d['seed']})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (AdamW, cosine decay; default: {d['lr']:g})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear warm-up, capped at half the run (default: {d['warmup_steps']})")
    p.add_argument("--ema-decay", type=float, default=None, help=f"EMA of the weights used for sampling (default: {d['ema_decay']})")
    p.add_argument("--log-every", type=int, default=50, help="steps between metrics.jsonl rows")
    p.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids")
    p.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop and checkpoint after this wall time")
    p.add_argument("--fit-to-budget", action="store_true",
                   help="with --max-minutes: at the end of warm-up, set --steps from the measured rate so the "
                        "learning-rate decay ends at the budget (--steps is then an upper bound)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA (bf16 autocast is the default)")
    p.add_argument("--max-images", type=int, default=None, help="train on the first N images only (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-samples", action="store_true", help="no sample grids or loss plot during or after training")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="model config overrides, e.g. hybrid.fine.depth=8")


class _Help(argparse.HelpFormatter):
    """Help with each optional flag's default shown (not for required flags, None or switches)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and not action.required and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


class OneLineParser(argparse.ArgumentParser):
    """argparse with every usage error as one `parscale-ear: error:` line (exit 2), not a usage block; `--help`
    still prints the usage."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self.prog.removeprefix("parscale-ear").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"parscale-ear: error: {where}{message} (see {self.prog} --help)\n")


def _parser_class():
    return OneLineParser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = OneLineParser(prog="parscale-ear", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"parscale-ear {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_parser_class())

    sub.add_parser("models", help="list the model presets and their parameter counts")

    p = sub.add_parser("train-vae", help="train the LiteVAE of a preset on images")
    p.add_argument("--preset", default=None, help="model preset (see `parscale-ear models`; default: fmnist-32)")
    p.add_argument("--data", default=None,
                   help="fashion-mnist, a folder (idx, ImageFolder, CIFAR-10) or .npz (default: fashion-mnist)")
    _train_args(p, "vae")  # the README recipe

    p = sub.add_parser("train", help="train the coarse/fine energy generators on a VAE run's cached latents")
    p.add_argument("--vae", required=True, help="VAE run folder (from train-vae)")
    p.add_argument("--data", default=None, help="default: the VAE run's data")
    p.add_argument("--mode", choices=["full", "no_coarse", "no_fine"], default=None, help="hybrid mode (ablations)")
    p.add_argument("--streams", type=int, default=None, help="ParScale streams P of every stage")
    p.add_argument("--preset", default=None, help="generator design from this preset (default: the VAE run's)")
    p.add_argument("--peer", choices=["dit-s", "dit-b", "meanflow-s"], default=None,
                   help="train a peer instead of ParScale-EAR: the DiT flow peer (dit-s, dit-b: diffusers, rectified "
                        "flow) or the one-step MeanFlow peer on the same DiT-S/2 (meanflow-s)")
    p.add_argument("--init", default=None,
                   help="start from this release or run folder's generator weights ('default': the embedded model)")
    p.add_argument("--teacher", default=None,
                   help="train on a teacher's pairs (its noise -> its sample) instead of the data: a release or run "
                        "folder ('default': the embedded model); needs --pairs")
    p.add_argument("--pairs", type=int, default=0, help="with --teacher: how many teacher pairs to draw")
    p.add_argument("--teacher-steps", type=_steps, default=None, help="with --teacher: its steps, N or COARSE,FINE "
                                                                      "(default: the teacher's own)")
    p.add_argument("--teacher-solver", choices=("euler", "heun"), default=None, help="with --teacher: its solver "
                                                                                      "(default: the teacher's own)")
    _train_args(p, "generator")  # the README recipe (the shipped default's)

    p = sub.add_parser("sample", help="generate images from a run or release folder")
    p.add_argument("--ckpt", default=None,
                   help="run folder, checkpoint file or release folder (default: the embedded fmnist-32-vflow-s)")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="one label for all, or one per image")
    p.add_argument("--per-class", type=int, default=None,
                   help="K images of every class, class by class (sets --n; a grid shows one class a row)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the model's)")
    p.add_argument("--steps", type=_steps, default=None, help="N or COARSE,FINE (default: the model's)")
    p.add_argument("--solver", choices=("euler", "heun"), default=None,
                   help="flow solver: heun corrects each step but the last with a second pass (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="image i is drawn from seed + i")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--out", required=True, help="grid.png, or a folder for one PNG per image named by its seed")

    p = sub.add_parser("export", help="write a generator run in the release format (config.json + model.safetensors)")
    p.add_argument("--run", required=True, help="generator run folder (from train)")
    p.add_argument("--out", required=True, help="release folder to write (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="dtype of the stored parameters (half types halve the file)")

    sub.add_parser("fid", help="FID between two folders / .npz image files / statistics files", add_help=False)
    sub.add_parser("fid-weights", help="convert the offline InceptionV3 into pytorch-fid's weight file", add_help=False)
    return parser


def resolve_device(name):
    from .utils import resolve_device as resolve

    return resolve(name)


def _train(args, kind: str) -> int:
    from .train import train

    cfg, model_config = (_resumed if args.resume else _new_run)(args, kind)
    out = train(cfg, args.out, model_config, resume=args.resume, device=resolve_device(args.device), progress=not args.no_progress)
    print(f"run folder: {out}")
    return 0


def _schedule(args) -> dict:
    """The TrainConfig fields a resumed run may change: how long, how often it logs, samples and saves, compile."""
    return dict(steps=args.steps, log_every=args.log_every, sample_every=args.sample_every, ckpt_every=args.ckpt_every,
                max_minutes=args.max_minutes, fit_steps_to_budget=args.fit_to_budget, samples=not args.no_samples,
                compile=args.compile)


def _run_flags(args, kind: str) -> dict:
    """The run-defining TrainConfig fields given on the command line (None: not given)."""
    flags = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_steps=args.warmup_steps,
                 ema_decay=args.ema_decay, max_images=args.max_images, bf16=False if args.no_bf16 else None)
    if kind == "generator":
        steps = args.teacher_steps
        flags.update(init=args.init, teacher=args.teacher, pairs=args.pairs or None, teacher_solver=args.teacher_solver,
                     teacher_steps=None if steps is None else list(steps if isinstance(steps, tuple) else (steps,)),
                     data=args.data)
    else:
        flags.update(data=args.data)
    return flags


def _new_run(args, kind: str):
    from .pipeline import ParScaleEARConfig
    from .presets import apply_overrides, get_config
    from .train import TrainConfig, load_checkpoint

    overrides = _overrides(args.set)
    given = {k: v for k, v in _run_flags(args, kind).items() if v is not None}
    defaults = {**RUN_DEFAULTS[kind], **COMMON_DEFAULTS}
    if kind == "vae":
        model_config, data = get_config(args.preset or "fmnist-32", **overrides), args.data or "fashion-mnist"
    else:
        if args.peer and (args.preset or args.mode or args.streams is not None):
            raise ValueError("--peer trains a DiT peer; --preset, --mode and --streams describe ParScale-EAR and do not "
                             "apply to it (use --set dit.FIELD=VALUE)")
        vae_ckpt = load_checkpoint(args.vae)
        if vae_ckpt["kind"] != "vae":
            raise ValueError(f"--vae {args.vae}: a {vae_ckpt['kind']} run, not a VAE run")
        base = ParScaleEARConfig.from_dict(vae_ckpt["config"])
        recipe = args.peer or args.preset  # the peer, or the preset's generator and sampling defaults, on the VAE run's VAE
        if recipe:
            from .evaluation.quality import recipe_config

            base = recipe_config(recipe, base)
        shorthand = {k: v for k, v in (("mode", args.mode), ("streams", args.streams)) if v is not None}
        model_config = apply_overrides(base, **{**overrides, **shorthand})
        data = args.data or vae_ckpt["train"].get("data")
        if not data:
            raise ValueError(f"--vae {args.vae}: its checkpoint does not say what data it was trained on; pass --data")
        defaults["vae_run"] = str(args.vae)
    cfg = TrainConfig(kind=kind, **{**defaults, **given, "data": data}, **_schedule(args))
    return cfg, model_config


def _resumed(args, kind: str):
    """The run's own TrainConfig with only `_schedule`'s fields from the command line; a run-defining flag or model
    option given with a value other than the run's is a one-line error naming it."""
    import dataclasses

    from .pipeline import ParScaleEARConfig
    from .presets import apply_overrides
    from .train import CHECKPOINT, TrainConfig, load_checkpoint

    ckpt = load_checkpoint(Path(args.out) / CHECKPOINT)
    saved = {f.name: ckpt["train"][f.name] for f in dataclasses.fields(TrainConfig) if f.name in ckpt["train"]}
    run_config = ParScaleEARConfig.from_dict(ckpt["config"])
    differ = [f"--{k.replace('_', '-')} {v} (the run's: {saved.get(k)})" for k, v in _run_flags(args, kind).items()
              if v is not None and k in saved and v != saved[k]]
    if kind == "generator" and Path(args.vae).resolve() != Path(saved.get("vae_run", args.vae)).resolve():
        differ.append(f"--vae {args.vae} (the run's: {saved.get('vae_run')})")
    if args.set and apply_overrides(run_config, **_overrides(args.set)) != run_config:
        differ.append("--set (changes the run's model)")
    for flag, value, own in (("--preset", getattr(args, "preset", None), run_config.name),
                             ("--peer", getattr(args, "peer", None), run_config.name),
                             ("--mode", getattr(args, "mode", None), run_config.hybrid.mode),
                             ("--streams", getattr(args, "streams", None), run_config.hybrid.coarse.streams)):
        if value is not None and value != own:
            differ.append(f"{flag} {value} (the run's: {own})")
    if differ:
        raise ValueError(f"--resume: {'; '.join(differ)}: a resumed run keeps its own settings; leave these out, or "
                         f"start a new run with another --out")
    return TrainConfig(**{**saved, "kind": kind, **_schedule(args)}), None


MAX_SAMPLE_IMAGES = 10_000_000  # a call of `sample`; more: several calls with --seed


def _sample_out(text: str) -> tuple[Path, bool]:
    """--out as (path, is a grid): NAME.png for one grid, or a folder (no suffix) for one PNG per image."""
    if not text.strip():
        raise ValueError("--out: expected grid.png (one grid) or a folder (one PNG per image), got an empty path")
    out = Path(text)
    as_grid = out.suffix.lower() == ".png"
    if out.name.lower() == ".png" or (not as_grid and out.name.lower().endswith(".png")):
        raise ValueError(f"--out {text}: a grid needs a file name before .png (e.g. samples.png)")
    if as_grid and out.is_dir():
        raise IsADirectoryError(f"--out {out} is an existing folder; give a new .png path for a grid, or a folder without a suffix")
    if not as_grid and out.suffix:
        raise ValueError(f"--out {out}: expected grid.png (one grid) or a folder name without a suffix (one PNG per image)")
    return out, as_grid


def _sample(args) -> int:
    from .loading import load_pipeline
    from .checks import check_int
    from .files import prepare_output_folder, remove_stale_temporaries
    from .images import save_grid, save_images

    out, as_grid = _sample_out(args.out)
    n, labels = check_int(args.n, "--n"), args.labels
    if args.per_class is not None:
        if labels is not None:
            raise ValueError("--per-class and --labels: give one of them")
        per_class = check_int(args.per_class, "--per-class")
    if n > MAX_SAMPLE_IMAGES:
        raise ValueError(f"--n {n}: at most {MAX_SAMPLE_IMAGES:,} images a call; split larger jobs with --seed")
    prepare_output_folder(out.parent if as_grid else out)
    # what a killed earlier call left
    remove_stale_temporaries(*((out.parent, (out.name,)) if as_grid else (out, ("[0-9]*.png",))))
    model = load_pipeline(args.ckpt, device=resolve_device(args.device))
    if args.per_class is not None:  # K images of each class, class by class (one row a class in a grid)
        classes = model.config.num_classes
        if not classes:
            raise ValueError("--per-class: this model is unconditional")
        n, labels = per_class * classes, [c for c in range(classes) for _ in range(per_class)]
    elif labels is not None and len(labels) == 1:
        labels = labels * n
    options = dict(labels=labels, cfg=args.cfg, temperature=args.temperature, steps=args.steps, solver=args.solver,
                   seed=args.seed, batch_size=args.batch_size, progress=True)
    if as_grid:  # generate checks that the grid fits in memory
        nrow = per_class if args.per_class is not None else min(10, n)
        save_grid(model.generate(n, **options), out, nrow=nrow)
    else:
        seed = args.seed
        for images in model.iter_generate(n, **options):
            save_images(images, out, [f"{s:06d}" for s in range(seed, seed + len(images))])
            seed += len(images)
    print(f"wrote {n} images to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "fid":
            from .evaluation.fid import fid_cli

            return fid_cli(argv[1:])
        if argv and argv[0] == "fid-weights":
            from .evaluation.fid_weights import fid_weights_cli

            return fid_weights_cli(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version (0) or a usage error (2, one line already printed)
            return e.code if isinstance(e.code, int) else 2
        if args.command == "models":
            from .presets import create_model, list_models

            for name in list_models():
                counts = create_model(name).num_parameters()
                print(f"{name:12s} " + "  ".join(f"{k}={v / 1e6:.2f}M" for k, v in counts.items()))
            return 0
        if args.command == "train-vae":
            return _train(args, "vae")
        if args.command == "train":
            return _train(args, "generator")
        if args.command == "sample":
            return _sample(args)
        if args.command == "export":
            from .loading import export

            import torch

            print(f"wrote {export(args.run, args.out, getattr(torch, args.dtype))}")
            return 0
    except USER_ERRORS as e:
        print(f"parscale-ear: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # sizes this machine cannot hold: one line; other errors stay loud
        if not _out_of_memory(e):
            raise
        print(f"parscale-ear: error: out of memory ({_one_line(e)[:160]}): reduce the sizes asked for (--set widths, "
              f"--streams, --n, --batch-size)", file=sys.stderr)
        return 2
    return 1


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


if __name__ == "__main__":
    sys.exit(main())
