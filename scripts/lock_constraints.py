"""Print pip constraints (name==version) from poetry.lock, so a pip install follows the lock.

    python scripts/lock_constraints.py [poetry.lock] > constraints.txt

Poetry cannot reach its package index from every machine this project runs on, so setup_env.sh
installs with pip under these constraints. A name locked at several versions (Poetry keeps one per
platform marker: torch's CUDA wheels) is left out; torch and torchvision themselves are pinned.
Standard library only (no tomllib: Python 3.10 lacks it); reads the lock's `[[package]]` tables.
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path


def locked_versions(lock: Path) -> dict[str, set[str]]:
    """{name: {version, ...}} of every [[package]] in a poetry.lock."""
    versions: dict[str, set[str]] = defaultdict(set)
    for block in lock.read_text().split("[[package]]")[1:]:
        name = re.search(r'^name = "([^"]+)"', block, re.M)
        version = re.search(r'^version = "([^"]+)"', block, re.M)
        if name and version:
            versions[name.group(1).lower()].add(version.group(1))
    return versions


def constraints(lock: Path) -> list[str]:
    return [f"{name}=={next(iter(v))}" for name, v in sorted(locked_versions(lock).items()) if len(v) == 1]


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("lock", nargs="?", default=str(Path(__file__).resolve().parent.parent / "poetry.lock"),
                   help="the lock file (default: the repository's poetry.lock)")
    path = Path(p.parse_args().lock)
    if not path.is_file():
        sys.exit(f"lock_constraints: no lock file at {path}")
    print("\n".join(constraints(path)))
