"""The `parscale-ear` command line: models, train-vae, train, sample, export, data, fid, fid-weights.

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
    from .cli_data import add_data_commands
    from .cli_train import add_train_commands

    parser = OneLineParser(prog="parscale-ear", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"parscale-ear {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_parser_class())
    sub.add_parser("models", help="list the model presets and their parameter counts")
    add_train_commands(sub)
    _add_sample(sub)
    p = sub.add_parser("export", help="write a generator run in the release format (config.json + model.safetensors)")
    p.add_argument("--run", required=True, help="generator run folder (from train)")
    p.add_argument("--out", required=True, help="release folder to write (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="dtype of the stored parameters (half types halve the file)")
    add_data_commands(sub)
    sub.add_parser("fid", help="FID between two folders / .npz image files / statistics files", add_help=False)
    sub.add_parser("fid-weights", help="convert the offline InceptionV3 into pytorch-fid's weight file", add_help=False)
    return parser


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a run or release folder")
    p.add_argument("--ckpt", default=None, help="run folder, checkpoint file, release folder or shipped model name "
                                                "(default: the embedded fmnist-32-es)")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="one label for all, or one per image")
    p.add_argument("--per-class", type=int, default=None,
                   help="K images of every class, class by class (sets --n; a grid shows one class a row)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="how far a draw strays from the model's most likely path: 1 the trained distribution, 0 the "
                        "flow's mean path (what it scales per kind of model: docs/DESIGN.md) (default: the model's)")
    p.add_argument("--steps", type=_steps, default=None, help="N (in every stage) or COARSE,FINE (default: the model's)")
    p.add_argument("--solver", choices=("euler", "heun"), default=None,
                   help="flow solver: heun corrects each step but the last with a second pass, on the mean path "
                        "(temperature 0; refused above it, where each step draws x0) (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="image i is drawn from seed + i")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--out", required=True, help="grid.png, or a folder for one PNG per image named by its seed")


def resolve_device(name):
    from .utils import resolve_device as resolve

    return resolve(name)


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
            from .pipeline import create_model
            from .presets import list_models

            for name in list_models():
                try:
                    counts = create_model(name).num_parameters()
                except ImportError as e:  # a peer without the optional diffusers
                    print(f"{name:12s} ({e})")
                    continue
                print(f"{name:12s} " + "  ".join(f"{k}={v / 1e6:.2f}M" for k, v in counts.items()))
            return 0
        if args.command in ("train-vae", "train"):
            from .cli_train import train_command

            return train_command(args, "vae" if args.command == "train-vae" else "generator")
        if args.command == "sample":
            return _sample(args)
        if args.command == "data":
            from .cli_data import data_command

            return data_command(args)
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
