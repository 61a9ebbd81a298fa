"""Shared plumbing of the ci/ scripts (argument parsing, JSON output); no model logic."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from parscale_ear.files import atomic_write_json  # noqa: E402

GATES = Path(__file__).with_name("gates.json")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline works, no gates")
    p.add_argument("--out", default="results/ci", help="folder for the JSON, tables and plots")
    return p


def device(name: str):
    import torch

    from parscale_ear.utils import resolve_device

    try:
        return torch.device(resolve_device(name))
    except ValueError as e:
        raise SystemExit(str(e)) from None


def write(out: str | Path, name: str, obj: dict) -> Path:
    path = Path(out) / name
    atomic_write_json(path, obj)
    print(f"wrote {path}")
    return path


def gates() -> dict:
    return json.loads(GATES.read_text())
