"""The training commands of the CLI, `train-vae` and `train`: their flags, a new run's settings (defaults where a
flag is left out) and a resumed run's (its own; a run-defining flag that differs is a one-line error)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .args import parse_overrides, parse_steps, print_interrupted, resolve_device
from .baselines import PEER_NAMES

# flags that define a run (its recipe): a resumed run keeps its own, and one given that differs is refused
RUN_DEFAULTS = {"vae": dict(batch_size=256, lr=1e-3, ema_decay=0.999), "generator": dict(batch_size=1024, lr=8e-4, ema_decay=0.999)}
COMMON_DEFAULTS = dict(seed=0, warmup_steps=100, max_images=0)
# how often a run logs, samples and saves: a new run's defaults; a resumed run keeps its own unless a flag is given
SCHEDULE_DEFAULTS = dict(log_every=50, sample_every=1000, ckpt_every=1000)


def _named(what: str):
    """A flag's value that must not be empty or blank (an empty --preset or --data is refused, not read as the
    default)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty value")
        return text

    return parse


def _train_args(p: argparse.ArgumentParser, kind: str) -> None:
    d = {**RUN_DEFAULTS[kind], **COMMON_DEFAULTS}
    p.add_argument("--steps", type=int, required=True, help="optimiser steps of the run")
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch over all GPUs (default: {d['batch_size']})")
    p.add_argument("--out", required=True, type=_named("a run folder"), help="run folder")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where it stopped, with its own settings")
    p.add_argument("--seed", type=int, default=None, help=f"initial weights and every random draw of the run (default: {d['seed']})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (AdamW, cosine decay; default: {d['lr']:g})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear warm-up, capped at half the run (default: {d['warmup_steps']})")
    p.add_argument("--ema-decay", type=float, default=None, help=f"EMA of the weights used for sampling (default: {d['ema_decay']})")
    for flag, what in (("log-every", "metrics.jsonl rows"), ("sample-every", "sample grids"), ("ckpt-every", "checkpoints")):
        default = SCHEDULE_DEFAULTS[flag.replace("-", "_")]
        p.add_argument(f"--{flag}", type=int, default=None,
                       help=f"steps between {what} (default: {default}; a resumed run keeps its own)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop and checkpoint after this wall time")
    p.add_argument("--fit-to-budget", action="store_true",
                   help="with --max-minutes: at the end of warm-up, set --steps from the measured rate so the "
                        "learning-rate decay ends at the budget, and again a fifth of the way on from the rate "
                        "since (--steps is then an upper bound)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA (bf16 autocast is the default)")
    p.add_argument("--max-images", type=int, default=None, help="train on the first N images only (default: all)")
    p.add_argument("--workers", type=int, default=-1,
                   help="DataLoader processes per rank reading an image folder or tar shards (-1: up to 8, the CPUs per rank)")
    p.add_argument("--max-unreadable", type=float, default=0.01,
                   help="stop once more than this fraction of the images read could not be read (they are skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-samples", action="store_true", help="no sample grids or loss plot during or after training")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="model config overrides, e.g. hybrid.fine.depth=8")


def add_train_commands(sub) -> None:
    """The `train-vae` and `train` subcommands."""
    p = sub.add_parser("train-vae", help="train the LiteVAE of a preset on images")
    p.add_argument("--preset", default=None, type=_named("a preset name"),
                   help="model preset (see `parscale-ear models`; default: fmnist-32)")
    p.add_argument("--data", default=None, type=_named("a data set"),
                   help="fashion-mnist, a folder (idx, ImageFolder, CIFAR-10, WebDataset tar shards) or .npz "
                        "(default: fashion-mnist)")
    _train_args(p, "vae")  # the README recipe

    p = sub.add_parser("train", help="train the coarse/fine energy generators on a VAE run's cached latents")
    p.add_argument("--vae", required=True, help="VAE run folder (from train-vae)")
    p.add_argument("--data", default=None, type=_named("a data set"), help="default: the VAE run's data")
    p.add_argument("--mode", choices=["full", "no_coarse", "no_fine", "joint"], default=None,
                   help="hybrid mode (ablations; joint: coarse and fine tokens in one network pass)")
    p.add_argument("--streams", type=int, default=None, help="ParScale streams P of every stage")
    p.add_argument("--preset", default=None, type=_named("a preset name"),
                   help="generator design from this preset (default: the VAE run's)")
    p.add_argument("--peer", choices=list(PEER_NAMES), default=None,
                   help="train a peer instead of ParScale-EAR: the DiT flow peer (dit-xs, dit-s, dit-b: diffusers, rectified "
                        "flow) or the one-step MeanFlow peer on the same DiT-S/2 (meanflow-s)")
    p.add_argument("--init", default=None,
                   help="start from this release or run folder's generator weights ('default': the embedded model)")
    p.add_argument("--teacher", default=None,
                   help="train on a teacher's pairs (its noise -> its sample) instead of the data: a release or run "
                        "folder ('default': the embedded model); needs --pairs")
    p.add_argument("--pairs", type=int, default=0, help="with --teacher: how many teacher pairs to draw")
    p.add_argument("--teacher-steps", type=parse_steps, default=None, help="with --teacher: its steps, N (in every stage) "
                                                                      "or COARSE,FINE (default: the teacher's own)")
    p.add_argument("--teacher-solver", choices=("euler", "heun"), default=None, help="with --teacher: its solver "
                                                                                      "(default: the teacher's own)")
    _train_args(p, "generator")


def train_command(args, kind: str) -> int:
    from .train import TrainingInterrupted, train

    cfg, model_config = (_resumed if args.resume else _new_run)(args, kind)
    try:
        out = train(cfg, args.out, model_config, resume=args.resume, device=resolve_device(args.device),
                    progress=not args.no_progress)
    except TrainingInterrupted as e:  # Ctrl-C: the run folder is consistent; say where it stands
        return print_interrupted(str(e))
    print(f"run folder: {out}")
    return 0


def _schedule(args, own: dict) -> dict:
    """The TrainConfig fields a resumed run may change: how long, how often it logs, samples and saves (a flag left
    out: `own`, the run's own or a new run's default), compile."""
    every = {k: own[k] if getattr(args, k) is None else getattr(args, k) for k in SCHEDULE_DEFAULTS}
    return dict(steps=args.steps, **every, max_minutes=args.max_minutes, fit_steps_to_budget=args.fit_to_budget,
                samples=not args.no_samples, compile=args.compile, workers=args.workers,
                max_unreadable=args.max_unreadable)


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

    overrides = parse_overrides(args.set)
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
            from .presets import recipe_config

            base = recipe_config(recipe, base)
        shorthand = {k: v for k, v in (("mode", args.mode), ("streams", args.streams)) if v is not None}
        model_config = apply_overrides(base, **{**overrides, **shorthand})
        data = args.data or vae_ckpt["train"].get("data")
        if not data:
            raise ValueError(f"--vae {args.vae}: its checkpoint does not say what data it was trained on; pass --data")
        defaults["vae_run"] = str(args.vae)
    if "num_classes" not in overrides:  # the data's classes, not those of the dataset the preset was made for
        from .train.latents import with_data_classes

        model_config = with_data_classes(model_config, data, given.get("max_images", 0))
    cfg = TrainConfig(kind=kind, **{**defaults, **given, "data": data}, **_schedule(args, SCHEDULE_DEFAULTS))
    return cfg, model_config


def _resumed(args, kind: str):
    """The run's own TrainConfig with only `_schedule`'s fields from the command line; a run-defining flag or model
    option given with a value other than the run's is a one-line error naming it."""
    import dataclasses

    from .presets import apply_overrides, config_from_dict
    from .train import CHECKPOINT, TrainConfig, load_checkpoint

    ckpt = load_checkpoint(Path(args.out) / CHECKPOINT)
    saved = {f.name: ckpt["train"][f.name] for f in dataclasses.fields(TrainConfig) if f.name in ckpt["train"]}
    run_config = config_from_dict(ckpt["config"])
    differ = [f"--{k.replace('_', '-')} {v} (the run's: {saved.get(k)})" for k, v in _run_flags(args, kind).items()
              if v is not None and k in saved and v != saved[k]]
    if kind == "generator" and Path(args.vae).resolve() != Path(saved.get("vae_run", args.vae)).resolve():
        differ.append(f"--vae {args.vae} (the run's: {saved.get('vae_run')})")
    if args.set and apply_overrides(run_config, **parse_overrides(args.set)) != run_config:
        differ.append("--set (changes the run's model)")
    for flag, value, own in (("--preset", getattr(args, "preset", None), run_config.name),
                             ("--peer", getattr(args, "peer", None), run_config.name),
                             ("--mode", getattr(args, "mode", None), getattr(run_config, "hybrid", None) and run_config.hybrid.mode),
                             ("--streams", getattr(args, "streams", None), _streams(run_config))):
        if value is not None and value != own:
            differ.append(f"{flag} {value} (the run's: {own})")
    if differ:
        raise ValueError(f"--resume: {'; '.join(differ)}: a resumed run keeps its own settings; leave these out, or "
                         f"start a new run with another --out")
    return TrainConfig(**{**saved, "kind": kind, **_schedule(args, {**SCHEDULE_DEFAULTS, **saved})}), None


def _streams(config) -> int | str | None:
    """The P streams of a model's stages (those its mode runs; "2/1" where they differ), None for a peer."""
    generator = getattr(config, "hybrid", None)
    if generator is None:
        return None
    from .hybrid import STAGE_LISTS

    streams = {getattr(generator, stage.name).streams for stage in STAGE_LISTS[generator.mode]}
    return streams.pop() if len(streams) == 1 else "/".join(map(str, sorted(streams)))
