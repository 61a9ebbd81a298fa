"""A new user's first hour, through the real entry points: shipped names everywhere a model or statistics are
named, `fid` that talks and checks its arguments first, `models` that says what ships, the scripts' help, the
first check (quick_check.py), and a model card whose numbers results/ holds."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parscale_ear.cli import main
from parscale_ear.evaluation import fid as fid_mod

from helpers import StandIn

ROOT = Path(__file__).resolve().parent.parent


def one_error_line(capsys, code) -> str:
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("parscale-ear")]
    assert code == 2 and len(err) == 1 and err[0].startswith("parscale-ear: error: "), (code, err)
    return err[0]


def test_sample_takes_a_shipped_models_name(tmp_path, capsys):
    assert main(["sample", "--ckpt", "fmnist-32-es", "--n", "2", "--device", "cpu", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    line = one_error_line(capsys, main(["sample", "--ckpt", "fmnist-32-vflow-s", "--n", "2", "--out",
                                        str(tmp_path / "t.png")]))
    assert "no trained weights ship for the preset 'fmnist-32-vflow-s'" in line and not (tmp_path / "t.png").exists()


@pytest.fixture
def stand_in(monkeypatch):
    """A stand-in Inception, recording every batch it sees."""
    model = StandIn()
    monkeypatch.setattr(fid_mod, "load_inception", lambda device="cpu", allow_download=False: model)
    return model


def _npz(path, n=12, seed=0):
    np.savez(path, images=np.random.default_rng(seed).integers(0, 255, (n, 16, 16), dtype=np.uint8))
    return str(path)


def test_fid_shows_progress_unless_told_not_to(tmp_path, stand_in, capsys):
    a, b = _npz(tmp_path / "a.npz"), _npz(tmp_path / "b.npz", seed=1)
    assert main(["fid", a, b, "--device", "cpu"]) == 0
    assert "inception" in capsys.readouterr().err  # a bar per source, on stderr
    assert main(["fid", a, b, "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "inception" not in captured.err and "FID:" in captured.out


@pytest.mark.parametrize("second", ["missing.npz", "crc.npz", "folder"])
def test_fid_checks_both_sources_before_inception_runs(tmp_path, stand_in, capsys, second):
    a = _npz(tmp_path / "a.npz")
    good = _npz(tmp_path / "good.npz", seed=2)
    data = bytearray(Path(good).read_bytes())
    start = data.index(b"images.npy")  # a byte of the array inside the zip: its CRC no longer matches
    data[start + 200] ^= 0xFF
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    (tmp_path / "folder").mkdir()  # a folder without images
    line = one_error_line(capsys, main(["fid", a, str(tmp_path / second), "--device", "cpu"]))
    assert second.split(".")[0] in line or "not found" in line
    assert stand_in.inputs == []  # nothing was computed for the first source


def test_fid_takes_the_shipped_statistics_by_name(tmp_path, capsys):
    out = tmp_path / "train.npz"
    assert main(["fid", "fashion-mnist-train", "--save-stats", str(out)]) == 0  # statistics in: no Inception needed
    mu, sigma, n = fid_mod.load_statistics(out)
    ref = fid_mod.load_statistics(fid_mod.STATS_DIR / "fashion-mnist-train.npz")
    assert n == ref[2] == 60000 and np.array_equal(mu, ref[0]) and np.array_equal(sigma, ref[1])
    line = one_error_line(capsys, main(["fid", "fashion-mnist-tset", "fashion-mnist-test"]))  # misspelt: a missing path
    assert "fashion-mnist-tset" in line


def test_models_says_which_presets_ship_weights_in_aligned_columns(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], [l for l in lines[1:] if not l.startswith("weights:")]
    assert header.split()[:5] == ["name", "weights", "vae", "generator", "total"]
    weights_at = header.index("weights")
    ends = {col: header.index(col) + len(col) for col in ("vae", "generator", "total")}  # numbers right-aligned
    by_name = {}
    for row in rows:
        name, weights = row.split()[:2]
        by_name[name] = weights
        assert row[weights_at:].startswith(weights), row
        for col, end in ends.items():
            assert row[end - 1] != " " and (end == len(row) or row[end] == " "), (col, row)
    assert by_name["fmnist-32-es"] == "shipped" and by_name["tiny-32"] == "-" and by_name["fmnist-32-vflow-s"] == "-"
    assert {"dit-s", "meanflow-s", "lite-256-es"} <= set(by_name)


def test_quick_check_answers_help_without_running_and_passes_on_every_preset():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    helped = subprocess.run([sys.executable, str(ROOT / "quick_check.py"), "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert helped.returncode == 0 and "usage:" in helped.stdout and "OK" not in helped.stdout.splitlines()
    ran = subprocess.run([sys.executable, str(ROOT / "quick_check.py")], capture_output=True, text=True, env=env,
                         timeout=600)  # every preset, then the shipped model: what a new user runs first
    assert ran.returncode == 0 and ran.stdout.strip().splitlines()[-1] == "OK", ran.stdout + ran.stderr
    assert "shipped" in ran.stdout
    assert "quick_check.py" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("script", sorted((ROOT / "experiments").glob("*.py")), ids=lambda p: p.name)
def test_every_experiment_script_has_a_description_and_helps_each_flag(script):
    calls = [node for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]
    assert calls and all(any(k.arg == "help" for k in call.keywords) for call in calls), script.name
    helped = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    first = ast.get_docstring(ast.parse(script.read_text())).splitlines()[0]
    assert helped.returncode == 0 and " ".join(first.split()[:6]) in " ".join(helped.stdout.split())


def test_plot_curves_makes_a_new_out_folder(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "plots"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "plot_curves.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert (out / "curve_b256.png").is_file() and (out / "curve_b16.png").is_file()


def test_the_model_cards_fid_numbers_are_in_results():
    """Every FID the shipped model's card states is an FID that results/ holds (a value under a key naming an FID; no
    claim without a measurement)."""
    held = set()

    def collect(x, fid=False):
        if isinstance(x, dict):
            for k, v in x.items():
                collect(v, fid or "fid" in str(k).lower())
        elif isinstance(x, list):
            for v in x:
                collect(v, fid)
        elif fid and isinstance(x, (int, float)) and not isinstance(x, bool):
            held.add(round(float(x), 2))

    for path in (ROOT / "results").glob("*.json"):
        collect(json.loads(path.read_text()))
    card = (ROOT / "parscale_ear" / "weights" / "fmnist-32-es" / "README.md").read_text()
    claims = re.findall(r"FID(?:-10k|-50k)?\s+(below|under|above)?\s*(\d+\.\d+)", card)
    table = re.findall(r"\| (\d+\.\d\d) / (\d+\.\d\d) \|", card)
    assert claims and table
    assert all(not bound for bound, _ in claims), claims  # a bound is not a measurement
    numbers = [float(v) for _, v in claims] + [float(v) for row in table for v in row]
    assert all(round(v, 2) in held for v in numbers), [v for v in numbers if round(v, 2) not in held]


def test_the_cli_picks_its_cpu_threads_unless_omp_num_threads_is_set(monkeypatch):
    from parscale_ear import args

    for cores, threads in ((1, 1), (2, 1), (4, 2), (8, 4), (64, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert args.cpu_threads() == threads
    code = ("import torch\nfrom parscale_ear.cli import main\nassert main(['models']) == 0\n"
            "from parscale_ear.args import cpu_threads\nassert torch.get_num_threads() == cpu_threads(), "
            "torch.get_num_threads()\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_first_mistakes_get_lines_that_name_the_choices(tmp_path, capsys):
    """A misspelled shipped model or statistics name is answered with the names that exist; --per-class with --n is
    refused (it sets the images itself); the data commands call their output OUT, as their usage does."""
    assert main(["sample", "--ckpt", "fmnist-32-ess", "--out", str(tmp_path / "s.png")]) == 2
    assert "nor is it a shipped model: fmnist-32-es" in capsys.readouterr().err
    assert main(["sample", "--per-class", "2", "--n", "5", "--out", str(tmp_path / "s.png")]) == 2
    assert "--per-class and --n: give one of them" in capsys.readouterr().err
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("L", (32, 32), 7).save(tmp_path / "img" / "0.png")
    assert main(["fid", str(tmp_path / "img"), "fashion-mnist-tain", "--device", "cpu"]) == 2
    assert "shipped statistics: fashion-mnist-train, fashion-mnist-test" in capsys.readouterr().err
    (tmp_path / "file.png").write_bytes(b"x")
    assert main(["data", "shards", str(tmp_path / "img"), str(tmp_path / "file.png"), "--no-progress"]) == 2
    assert "OUT " in capsys.readouterr().err and not (tmp_path / "s.png").exists()
