"""The README's Python example runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "tiny-release" / "model.safetensors").is_file()


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "bash setup_env.sh && .venv/bin/python -m pytest -q" in text
    assert "bash setup_env.sh && .venv/bin/parscale-ear train-vae" in text
