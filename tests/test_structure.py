"""Structure: what each module imports and where each concept lives."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", [
    "from parscale_ear.loading import load_pipeline, export",
    "import parscale_ear.cli",
])
def test_loading_a_model_does_not_import_training_or_data(statement):
    mods = _imported_after(statement)
    assert "parscale_ear.train" not in mods and "parscale_ear.data" not in mods


def test_train_keeps_the_loading_names_it_always_had():
    from parscale_ear import loading, train

    for name in ("load_checkpoint", "load_pipeline", "model_from_checkpoint", "read_metrics", "export", "CHECKPOINT", "METRICS"):
        assert getattr(train, name) is getattr(loading, name)


def _package_imports(module: str) -> set[str]:
    """The parscale_ear modules that `module`'s source imports (relative imports, any depth)."""
    import ast
    from pathlib import Path

    import parscale_ear

    tree = ast.parse((Path(parscale_ear.__file__).parent / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


@pytest.mark.parametrize("module", ["stage", "generator", "energy_flow", "energy_head"])
def test_the_generators_and_the_energy_score_do_not_import_the_vae(module):
    assert not _package_imports(module) & {"vae", "vae_objective"}


def test_haar_wavelets_live_in_one_module_used_by_the_vae_and_its_objective():
    assert "wavelets" in _package_imports("vae") and "wavelets" in _package_imports("vae_objective")


def test_fid_is_split_by_concept_and_patches_nothing_at_runtime():
    from pathlib import Path

    import parscale_ear

    source = (Path(parscale_ear.__file__).parent / "evaluation" / "fid.py").read_text()
    assert "mock" not in source and "fid_weights" in _package_imports("evaluation/fid")
    assert "metrics" not in _package_imports("evaluation/fid") and "recon_metrics" not in source


def test_ci_gate_summary_says_when_no_gate_was_checked(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
    import validate_results

    monkeypatch.setattr(validate_results, "evaluate_gates", lambda folder, gates, enforce: [("latency", None, "n/a")])
    monkeypatch.setattr(validate_results, "check_sha256sums", lambda root: [("sha256:x", True, "matches")])
    assert validate_results.main([str(tmp_path), "--no-gates"]) == 0
    out = capsys.readouterr().out
    assert "no gates checked" in out and "all gates passed" not in out
    assert validate_results.main([str(tmp_path)]) == 0  # nothing gated, no flag given: said so, without the flag
    out = capsys.readouterr().out
    assert "none applies to a quick or CPU run" in out and "--no-gates" not in out
    monkeypatch.setattr(validate_results, "evaluate_gates", lambda folder, gates, enforce: [("latency", True, "ok")])
    assert validate_results.main([str(tmp_path)]) == 0
    assert "all gates passed" in capsys.readouterr().out


def test_ci_run_sh_has_help():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["bash", str(root / "ci" / "run.sh"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--quick" in out.stdout and "--device" in out.stdout
    assert "set -" not in out.stdout and "#" not in out.stdout  # the comment block only, as text


def test_ci_run_sh_without_device_needs_a_python_with_torch(tmp_path):
    """No --device: ci/run.sh asks torch for a GPU first, and says so in one line when it cannot."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHON": "false"}
    out = subprocess.run(["bash", str(root / "ci" / "run.sh"), "--out", str(tmp_path / "ci")], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and out.stderr.strip() == "ci/run.sh: false cannot import torch (run: bash setup_env.sh)"
    assert not (tmp_path / "ci").exists()  # nothing ran


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["sample", "--help"]])
def test_cli_help_and_version_answer_without_importing_torch(args):
    code = ("import sys\nfrom parscale_ear.cli import main\ntry:\n    main(%r)\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n" % (args,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if args == ["--version"]:
        from parscale_ear import __version__

        assert out.stdout.startswith(f"parscale-ear {__version__}")


def test_every_optional_cli_flag_has_help_and_shows_its_default():
    import argparse

    from parscale_ear.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        if name in ("fid", "fid-weights"):  # their own parsers (parscale_ear.evaluation.fid, fid_weights)
            continue
        sub.format_help()  # renders
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if not action.required and action.default not in (None, False):
                assert "default" in formatter._get_help_string(action), (name, action.dest)


def test_cli_training_defaults_are_the_readme_recipe():
    from parscale_ear.cli import build_parser
    from parscale_ear.cli_train import RUN_DEFAULTS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    vae, gen = RUN_DEFAULTS["vae"], RUN_DEFAULTS["generator"]  # what a new run takes when the flag is left out
    assert f"train-vae --preset fmnist-32 --data fashion-mnist --steps 3000 --batch-size {vae['batch_size']} --lr 1e-3" in readme
    assert vae["lr"] == 1e-3
    # the generator recipe is the shipped default's (preset fmnist-32-vflow-s, 12,183 steps, compiled step)
    assert (f"train --vae runs/vae --preset fmnist-32-vflow-s --steps 12183 --batch-size {gen['batch_size']} --lr 8e-4 "
            "--compile") in readme
    args = build_parser().parse_args(["train", "--vae", "v", "--steps", "1", "--out", "x"])
    assert gen["batch_size"] == 1024 and gen["lr"] == 8e-4 and not args.compile  # compile is asked for, not a default


def test_gates_read_the_seed_mean_and_report_the_peer(tmp_path, monkeypatch):
    """The ablation gate compares mean FIDs over seeds; the peer's FID is reported and never gated."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
    import json as _json

    import validate_results

    def write(name, obj):
        (tmp_path / name).write_text(_json.dumps(obj))

    env = {"device_type": "cuda", "device": "GPU", "date": "d"}
    big = _common_gates()["sanity"]["preset_256"]  # the gated 256x256 preset
    write("sanity.json", {"all_checks_pass": True, "presets": {big: {"params": {"generator": 35_000_000}}}})
    write("latency.json", {"quick": False, "env": env, "model": big,
                           "rows": [{"name": "end_to_end", "batch": 16, "ms_per_image_p99": 0.4}]})
    write("fid.json", {"quick": False, "best_fid": 4.0, "num_samples": 50000, "fid": [{"cfg": 1.0, "fid": 4.0, "num_samples": 50000}],
                       "vae": {"num_images": 10, "rfid": 1.0, "psnr": 30.0, "ssim": 0.9}})
    write("peer_dit-s.json", {"recipe": "dit-s", "budget_minutes": 4.0, "num_samples": 10000,
                        "rows": [{"schedule": "steps 4", "passes_per_image": 4, "fid_train": 20.0, "n": 10000},
                                 {"schedule": "steps 8", "passes_per_image": 8, "fid_train": 13.5, "n": 10000}]})
    rows = [{"variant": "full", "fid": 50.0, "fid_std": 1.0}, {"variant": "no_coarse", "fid": 49.0, "fid_std": 9.0},
            {"variant": "no_fine", "fid": 60.0, "fid_std": 1.0}]
    write("ablation.json", {"quick": False, "rows": rows})
    write("stage_seconds.json", {"sanity": 7, "latency": 62, "fid_eval": 101, "total": 190})
    gates = {n: (ok, d) for n, ok, d in validate_results.evaluate_gates(tmp_path, _common_gates(), True)}
    assert gates["ablation.full_beats_no_coarse"][0] is False and gates["ablation.full_beats_no_fine"][0] is True
    assert gates["peer.dit-s.fid"][0] is None and "13.500" in gates["peer.dit-s.fid"][1] and "steps 8" in gates["peer.dit-s.fid"][1]
    assert gates["fid_eval.fid"][0] is True and gates["latency.end_to_end_p99"][0] is True
    assert gates["sanity.generator_params_256"][0] is True
    write("sanity.json", {"all_checks_pass": True, "presets": {"lite-256": {"params": {"generator": 35_000_000}}}})
    stale = {n: (ok, d) for n, ok, d in validate_results.evaluate_gates(tmp_path, _common_gates(), True)}
    assert stale["sanity.generator_params_256"] == (False, f"{big} was not checked")  # the old preset does not count
    write("sanity.json", {"all_checks_pass": True, "presets": {big: {"params": {"generator": 35_000_000}}}})
    monkeypatch.setattr(validate_results, "check_sha256sums", lambda root: [])
    assert validate_results.main([str(tmp_path)]) == 1  # the no_coarse gate fails and is named
    report = (tmp_path / "report.md").read_text()
    assert "Peer (dit-s, 4.0 training minutes, not gated)" in report and "| steps 8 | 8 | 13.500 | 10000 |" in report
    assert "| latency | 62 |" in report and "| all timed stages | 170 |" in report  # ci/run.sh's stage durations
    assert "| the whole run | 190 |" in report  # ci/run.sh's total, set-up included, not summed as a stage


def _common_gates():
    import _common

    return _common.gates()


def test_peer_budget_is_the_generator_runs_minutes(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
    from types import SimpleNamespace

    import peer

    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "elapsed_s": 60.0}\n{"step": 20, "elapsed_s": 331.0}\n')
    assert peer.budget_minutes(SimpleNamespace(minutes=None, gen_run=str(tmp_path))) == 5.52
    assert peer.budget_minutes(SimpleNamespace(minutes=2.5, gen_run=str(tmp_path))) == 2.5
    assert peer.budget_minutes(SimpleNamespace(minutes=None, gen_run=None)) == 4.0
    assert peer.budget_minutes(SimpleNamespace(minutes=None, gen_run=str(tmp_path / "release"))) == 4.0  # no metrics


def _script_body_lines(tree) -> int:
    """Lines of the code a module runs at its top level outside functions and classes (a script's main body): every
    statement but imports, definitions, the docstring and CONSTANT = ... assignments."""
    import ast

    lines = 0
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            continue  # the docstring
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if targets and all(isinstance(t, ast.Name) and t.id.isupper() for t in targets):
            continue
        lines += node.end_lineno - node.lineno + 1
    return lines


@pytest.mark.parametrize("folder", ["parscale_ear", "ci", "experiments"])
def test_every_module_is_short_and_every_function_shorter(folder):
    """One concept a file: no module of the package, ci/ or experiments/ over 350 lines, no function over 60, and no
    script running more than 60 lines outside its functions (its `__main__` block included)."""
    import ast

    root = Path(__file__).resolve().parent.parent / folder
    long_modules, long_functions = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 350:
            long_modules.append(f"{path.relative_to(root)} ({len(text.splitlines())} lines)")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{path.relative_to(root)}:{node.name} ({node.end_lineno - node.lineno + 1})")
        if _script_body_lines(tree) > 60:
            long_functions.append(f"{path.relative_to(root)}: its top level ({_script_body_lines(tree)} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_the_github_workflow_runs_the_readme_commands_and_the_quick_milestone_run():
    """.github/workflows/ci.yml: on pushes and pull requests, the README's set-up and test commands (the locked torch
    as CPU wheels, pip's cache keyed by the lock), then the quick CPU milestone run."""
    import re

    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((root / ".github" / "workflows" / "ci.yml").read_text())
    assert {"push", "pull_request"} <= set(spec[True])  # YAML reads the key `on` as True
    (job,) = spec["jobs"].values()
    runs = [step["run"] for step in job["steps"] if "run" in step]
    readme = (root / "README.md").read_text()
    setup, test = re.search(r"bash setup_env.sh && (\.venv/bin/python -m pytest -q)", readme).group(0).split(" && ")
    assert setup in runs and test in runs
    assert any(r.startswith("bash ci/run.sh --device cpu --quick") for r in runs)
    (setup_step,) = [step for step in job["steps"] if step.get("run") == setup]
    assert setup_step["env"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    python = next(step for step in job["steps"] if "actions/setup-python" in step.get("uses", ""))
    assert python["with"]["cache"] == "pip" and python["with"]["cache-dependency-path"] == "poetry.lock"
    assert any("actions/checkout" in step.get("uses", "") for step in job["steps"])


@pytest.mark.parametrize("tool", [["check-jsonschema", "--builtin-schema", "vendor.github-workflows"],
                                  ["zizmor", "--offline"]])
def test_the_github_workflow_passes_its_linters(tool):
    """The workflow is valid by GitHub's schema and clean by zizmor's offline audits (actions pinned to commits, no
    persisted credentials, ...): both linters are wheels of the dev extra, so this runs wherever the tests do."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    beside = Path(sys.executable).parent / tool[0]  # installed into the environment that runs the tests
    exe = str(beside) if beside.is_file() else shutil.which(tool[0])
    assert exe, f"{tool[0]} is not installed: it is part of the dev extra (bash setup_env.sh installs it)"
    result = subprocess.run([exe, *tool[1:], str(root / ".github" / "workflows" / "ci.yml")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_product_speaks_of_the_product_alone():
    """README, docs, CHANGELOG, the package, ci/, experiments/ and the workflow name no machine paths and
    nothing of how the work was organised (sessions, leases, rounds, issue numbers, closing notes)."""
    import re

    root = Path(__file__).resolve().parent.parent
    words = re.compile(r"\b(sessions?|leases?|leased|rounds? (?:one|two|three|\d+)|issues? #?\d+|closing notes?|"
                       r"stops? \d+)\b|(?<![\w.])/(?:work|root|home)/", re.IGNORECASE)
    files = [root / "README.md", root / "CHANGELOG.md", *(root / "docs").rglob("*.md"), *(root / ".github").rglob("*.yml")]
    for folder in ("parscale_ear", "ci", "experiments"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in {".py", ".md", ".sh", ".json", ".txt"}]
    hits = [f"{p.relative_to(root)}:{n}: {m.group(0)}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
            for m in [words.search(line)] if m]
    assert not hits, hits


ORGANISATION = r"the issue (?:asks|says)|mission parts?|quality target|no gpu was available|within its budget"


def test_documents_speak_to_a_reader_not_of_how_the_work_was_organised():
    """README, CHANGELOG, docs, model cards, the package, ci/ and experiments/ explain results to a reader: no "the issue
    asks", "mission part", "quality target", "no GPU was available", "within its budget"."""
    import re

    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", root / "CHANGELOG.md", *(root / "docs").rglob("*.md")]
    for folder in ("parscale_ear", "ci", "experiments"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in {".py", ".md", ".sh"}]
    hits = [f"{p.relative_to(root)}:{n}: {m.group(0)}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
            for m in [re.search(ORGANISATION, line, re.IGNORECASE)] if m]
    assert not hits, hits


def _cited_paths(text: str) -> list[tuple[str, str | None]]:
    """(path, commit or None) of every path a document cites in backticks: a word with a slash, or a commit:path
    after `git show`."""
    import re

    cited = []
    for span in re.findall(r"`([^`]+)`", text):
        words = span.split()
        if words[:2] == ["git", "show"] and len(words) > 2 and ":" in words[2]:
            commit, path = words[2].split(":", 1)
            cited.append((path, commit))
            continue
        cited += [(w.strip(".,;:()'\""), None) for w in words if "/" in w and not w.startswith(("-", "$", "http"))]
    return cited


def _expand(path: str) -> list[str]:
    """A path with `{a,b}` alternatives as the paths it stands for."""
    import re

    found = re.search(r"\{([^{}]*)\}", path)
    if not found:
        return [path]
    return [p for alt in found.group(1).split(",") for p in _expand(path[:found.start()] + alt + path[found.end():])]


def test_documents_cite_paths_that_exist():
    """A path README, docs/ or a model card cites in backticks exists in the tree (also read from inside the package:
    `train/`, `baselines/dit.py`); a file that only lives in the git history is cited as `git show COMMIT:PATH`, and
    that commit holds it (where the clone has the commit)."""
    root = Path(__file__).resolve().parent.parent
    package = root / "parscale_ear"
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    files = tracked.stdout.split() if tracked.returncode == 0 and tracked.stdout else None
    if files is None:  # not a git checkout: what is there
        tops = {p.name for p in root.iterdir()} | {p.name for p in package.iterdir()}
    else:  # the tree's own names: a user's untracked runs/ or samples.png are not part of it
        tops = {f.split("/")[0] for f in files} | {f.split("/")[1] for f in files if f.startswith("parscale_ear/")}
    docs = [root / "README.md", *(root / "docs").rglob("*.md"), *(package / "weights").glob("*/README.md")]
    missing = []
    for doc in docs:
        for cited, commit in _cited_paths(doc.read_text()):
            if commit is not None:
                have_commit = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root,
                                             capture_output=True).returncode == 0
                if have_commit and subprocess.run(["git", "cat-file", "-e", f"{commit}:{cited.rstrip('/')}"],
                                                  cwd=root, capture_output=True).returncode != 0:
                    missing.append(f"{doc.name}: git show {commit}:{cited}")
                continue
            if cited.split("/")[0] not in tops or cited.startswith("/"):
                continue  # not a path of this tree (a user's runs/vae, a ratio such as H/2)
            for path in _expand(cited.rstrip("/")):
                if not any((base / path).exists() or list(base.glob(path)) for base in (root, package)):
                    missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_evaluation_scores_and_never_trains():
    """evaluation/ imports nothing of train/ (nor the training harness); a run that trains then scores is the
    harness's (harness.py), above both."""
    import ast

    root = Path(__file__).resolve().parent.parent / "parscale_ear"
    for path in sorted((root / "evaluation").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        names |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        bad = {n for n in names if n.lstrip(".").removeprefix("parscale_ear.").split(".")[0] in ("train", "harness")}
        assert not bad, (path.name, bad)
    assert "train" in _package_imports("harness")
