"""The `parscale-ear` command line: models, train-vae, train, sample, export, data, fid, fid-weights.

Multi-GPU: `torchrun --nproc_per_node N -m parscale_ear train ...` (same code path for 1..N GPUs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import (USER_ERRORS, OneLineParser, one_line, parse_steps, print_error, print_interrupted, resolve_device,
                   set_cpu_threads)



def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .cli_data import add_data_commands
    from .cli_train import add_train_commands

    parser = OneLineParser(prog="parscale-ear", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"parscale-ear {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("models", help="list the model presets, which of them ship trained weights, and their sizes")
    add_train_commands(sub)
    _add_sample(sub)
    p = sub.add_parser("export", help="write a generator run in the release format (config.json + model.safetensors)")
    p.add_argument("--run", required=True, help="generator run folder (from train)")
    p.add_argument("--out", required=True, help="release folder to write (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="dtype of the stored parameters (half types halve the file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the config.json and model.safetensors a folder already holds")
    add_data_commands(sub)
    sub.add_parser("fid", help="FID between two folders / .npz image files / statistics files", add_help=False)
    sub.add_parser("fid-weights", help="convert the offline InceptionV3 into pytorch-fid's weight file", add_help=False)
    return parser


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a run or release folder")
    p.add_argument("--ckpt", default=None, help="run folder, checkpoint file, release folder or shipped model name "
                                                "(default: the embedded fmnist-32-es)")
    p.add_argument("--n", type=int, default=None, help="number of images (default: 64)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="one label for all, or one per image")
    p.add_argument("--per-class", type=int, default=None,
                   help="K images of every class, class by class (sets --n; a grid shows one class a row)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="how far a draw strays from the model's most likely path: 1 the trained distribution, 0 the "
                        "flow's mean path (what it scales per kind of model: docs/DESIGN.md) (default: the model's)")
    p.add_argument("--steps", type=parse_steps, default=None, help="N (in every stage) or COARSE,FINE (default: the model's)")
    p.add_argument("--solver", choices=("euler", "heun"), default=None,
                   help="flow solver: heun corrects each step but the last with a second pass, on the mean path "
                        "(temperature 0; refused above it, where each step draws x0) (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="image i is drawn from seed + i")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--out", required=True, help="grid.png, or a folder for one PNG per image named by its seed")
    p.add_argument("--overwrite", action="store_true", help="replace the grid, or the PNGs of these seeds, if they exist")


MAX_SAMPLE_IMAGES = 10_000_000  # a call of `sample`; more: several calls with --seed
MAX_GRID_IMAGES = 10_000  # one PNG grid (a 1,000 x 10 sheet); more: --out FOLDER, one PNG per image
GRID_BYTES_PER_VALUE = 16  # the float32 images, the grid make_grid builds, its uint8 copy and PIL's image


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


def _check_sample_targets(out: Path, as_grid: bool, seeds: range, overwrite: bool) -> None:
    """A one-line FileExistsError where the call would replace a file (the grid, or a PNG of one of `seeds`)
    that --overwrite does not allow it to replace."""
    if overwrite:
        return
    if as_grid:
        if out.exists():
            raise FileExistsError(f"--out {out} exists; it is left alone: choose another path, or pass --overwrite "
                                  f"to replace it")
        return
    taken = sorted(p.name for p in out.glob("*.png") if p.stem.isdigit() and int(p.stem) in seeds
                   and f"{int(p.stem):06d}" == p.stem)
    if taken:
        raise FileExistsError(f"--out {out} already holds {len(taken)} of the PNGs this call writes ({taken[0]}"
                              f"{', ...' if len(taken) > 1 else ''}); they are left alone: choose another folder or "
                              f"--seed, or pass --overwrite to replace them")


def _check_grid(n: int, image_shape: tuple[int, int, int]) -> None:
    """A grid is bounded: at most MAX_GRID_IMAGES images, and no more than the memory free now can hold."""
    from .utils import available_memory

    if n > MAX_GRID_IMAGES:
        raise ValueError(f"--n {n}: a grid holds at most {MAX_GRID_IMAGES:,} images; for more, write one PNG per "
                         f"image with --out FOLDER")
    need, free = n * GRID_BYTES_PER_VALUE * image_shape[0] * image_shape[1] * image_shape[2], available_memory()
    if need > free:
        raise ValueError(f"--n {n}: a grid of {n} images of {'x'.join(map(str, image_shape))} needs about "
                         f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory free; lower --n, or "
                         f"write one PNG per image with --out FOLDER")


def _sample(args) -> int:
    from .loading import load_pipeline
    from .checks import check_int
    from .files import prepare_output_folder, remove_stale_temporaries
    from .images import save_grid, save_images

    out, as_grid = _sample_out(args.out)
    n, labels = check_int(64 if args.n is None else args.n, "--n"), args.labels
    if args.per_class is not None:
        if labels is not None or args.n is not None:
            raise ValueError(f"--per-class and --{'labels' if labels is not None else 'n'}: give one of them "
                             f"(--per-class K sets the labels and K x classes images)")
        per_class = check_int(args.per_class, "--per-class")
    if n > MAX_SAMPLE_IMAGES:
        raise ValueError(f"--n {n}: at most {MAX_SAMPLE_IMAGES:,} images a call; split larger jobs with --seed")
    if as_grid and args.per_class is None and n > MAX_GRID_IMAGES:  # before the model loads
        _check_grid(n, (1, 1, 1))
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
    _check_sample_targets(out, as_grid, range(args.seed, args.seed + n), args.overwrite)
    options = dict(labels=labels, cfg=args.cfg, temperature=args.temperature, steps=args.steps, solver=args.solver,
                   seed=args.seed, batch_size=args.batch_size, progress=True)
    if as_grid:
        v = model.config.vae
        _check_grid(n, (v.in_channels, v.image_size, v.image_size))
        nrow = per_class if args.per_class is not None else min(10, n)
        save_grid(model.generate(n, **options), out, nrow=nrow)
    else:
        seed = args.seed
        for images in model.iter_generate(n, **options):
            save_images(images, out, [f"{s:06d}" for s in range(seed, seed + len(images))])
            seed += len(images)
    print(f"wrote {n} images to {out}")
    return 0


def _models() -> int:
    """The presets as a table: whether trained weights ship, and parameter counts (from shapes alone: the models
    are built on the meta device, so nothing is allocated or initialised)."""
    import torch

    from .pipeline import create_model
    from .presets import list_models
    from .release import shipped_models

    shipped = set(shipped_models())
    rows = [("name", "weights", "vae", "generator", "total", "generator parts")]
    for name in list_models():
        weights = "shipped" if name in shipped else "-"
        try:
            with torch.device("meta"):
                counts = create_model(name).num_parameters()
        except ImportError as e:  # a peer without the optional diffusers
            rows.append((name, weights, "-", "-", "-", f"({one_line(e)})"))
            continue
        millions = lambda k: f"{counts[k] / 1e6:.2f}M"  # noqa: E731
        parts = ", ".join(f"{k.split('.', 1)[1]} {millions(k)}" for k in counts if k.startswith("generator."))
        rows.append((name, weights, f"{(counts['vae.encoder'] + counts['vae.decoder']) / 1e6:.2f}M",
                     millions("generator"), millions("total"), parts))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:  # text columns left-aligned, numbers right-aligned, the last column as it comes
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), *(c.rjust(w) for c, w in zip(row[2:5], widths[2:]))]
        print("  ".join(cells + [row[5]]))
    print(f"weights: 'shipped' loads trained with ParScaleEAR.from_pretrained(NAME) or `parscale-ear sample --ckpt "
          f"NAME`; the others are designs to train (`parscale-ear train-vae` / `train --preset`; the peers: "
          f"`train --peer`)")
    return 0


def _export(args) -> int:
    import torch

    from .loading import export

    print(f"wrote {export(args.run, args.out, getattr(torch, args.dtype), overwrite=args.overwrite)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("fid", "fid-weights"):  # their own parsers and error handling
        from .evaluation.commands import fid_cli, fid_weights_cli

        return (fid_cli if argv[0] == "fid" else fid_weights_cli)(argv[1:])
    args = build_parser().parse_or_exit_code(argv)
    if isinstance(args, int):  # --help, --version (0) or a usage error (2, one line already printed)
        return args
    set_cpu_threads()
    try:
        if args.command == "models":
            return _models()
        if args.command in ("train-vae", "train"):
            from .cli_train import train_command

            return train_command(args, "vae" if args.command == "train-vae" else "generator")
        if args.command == "sample":
            return _sample(args)
        if args.command == "data":
            from .cli_data import data_command

            return data_command(args)
        if args.command == "export":
            return _export(args)
    except KeyboardInterrupt:
        return print_interrupted("every file written so far is complete")
    except USER_ERRORS as e:
        return print_error(e)
    except (MemoryError, RuntimeError) as e:  # sizes this machine cannot hold: one line; other errors stay loud
        if not _out_of_memory(e):
            raise
        return print_error(f"out of memory ({one_line(e)[:160]}): reduce the sizes asked for (--set widths, "
                           f"--streams, --n, --batch-size)")
    return 1


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


if __name__ == "__main__":
    sys.exit(main())
