"""The data commands of the CLI: `data info` (what a source holds), `data folder` (any source rendered to an image
folder of PNGs at a size) and `data shards` (an image folder written as WebDataset tar shards)."""
from __future__ import annotations

import argparse


def add_data_commands(sub) -> None:
    """The `data` command and its subcommands."""
    p = sub.add_parser("data", help="inspect a dataset, render it to an image folder, or write it as tar shards")
    cmds = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    q = cmds.add_parser("info", help="one line: how many images a source holds, how it is read, and its classes")
    q.add_argument("source", help="fashion-mnist, a folder (idx, CIFAR-10, images, tar shards) or .npz")
    q.add_argument("--image-size", type=int, default=32, help="side the images are read at")
    q.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 (grey) or 3 (RGB)")
    q = cmds.add_parser("folder", help="render a source as OUT/CLASS/NNNNNN.png at a size (resumes when run again)")
    q.add_argument("source", help="fashion-mnist, a folder (idx, CIFAR-10, images, tar shards) or .npz")
    q.add_argument("out", help="image folder to write")
    q.add_argument("--image-size", type=int, required=True, help="side of the square PNGs (shorter side resized, centre cropped)")
    q.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="1 (grey) or 3 (RGB, the default; a grey source is written as RGB)")
    q.add_argument("--split", choices=("train", "test"), default="train", help="split of Fashion-MNIST / CIFAR-10")
    q.add_argument("--max-images", type=int, default=0, help="the first N images only (0: all)")
    q.add_argument("--per-class", type=int, default=0, help="the first N images of each class only (0: all)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = cmds.add_parser("shards", help="write an image folder as WebDataset tar shards (resumes when run again)")
    q.add_argument("source", help="image folder (one sub-folder a class, or flat)")
    q.add_argument("out", help="folder for shard-NNNNNN.tar and shards.json (new, or one this command started)")
    q.add_argument("--shard-items", type=int, default=1000, help="images per shard")
    q.add_argument("--workers", type=int, default=0, help="processes checking that images decode (0: this one)")
    q.add_argument("--max-unreadable", type=float, default=0.01, help="stop once more than this fraction cannot be read")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def data_command(args: argparse.Namespace) -> int:
    if args.data_command == "info":
        from .streaming import open_images

        images = open_images(args.source, args.image_size, args.channels)
        classes = f"{images.num_classes} classes ({', '.join(images.class_names[:3])}{', ...' if images.num_classes > 3 else ''})"
        print(f"{images.source}: {len(images):,} images ({type(images).__name__}), "
              f"{classes if images.num_classes else 'unlabelled'}")
    elif args.data_command == "folder":
        from .convert import write_image_folder

        out, n = write_image_folder(args.source, args.out, args.image_size, args.channels, args.split, args.max_images,
                                    args.per_class, progress=not args.no_progress)
        print(f"{out}: {n:,} images of {args.image_size}x{args.image_size} (written now or by an earlier run)")
    else:
        from .shards import write_shards

        out = write_shards(args.source, args.out, args.shard_items, args.workers, args.max_unreadable,
                           progress=not args.no_progress)
        print(f"wrote tar shards to {out}")
    return 0
