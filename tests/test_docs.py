"""The README documents every registered op, and each of its Python code blocks runs as copied."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import graphcore as gc

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_lists_every_op():
    words = set(re.findall(r"[a-z_0-9]+", README))
    missing = [op.name.lower() for op in gc.OPS if op.name != "NONE" and op.name.lower() not in words]
    assert not missing, f"README does not mention: {missing}"


def test_readme_gives_the_two_setup_commands():
    assert ".venv/bin/python -m models.baby_llama" in README
    assert ".venv/bin/python -m pytest -q" in README


def test_readme_has_code_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_copied(index, tmp_path):
    """Each block alone in a file of an empty folder, in a fresh interpreter: a block defining
    tests runs under pytest (and its tests must pass), any other as a script."""
    code = BLOCKS[index]
    is_test = re.search(r"^def test_", code, re.M) is not None
    path = tmp_path / (f"test_block_{index}.py" if is_test else f"block_{index}.py")
    path.write_text(code)
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)] if is_test \
        else [sys.executable, str(path)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"README block {index} failed:\n{code}\n--- output ---\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    if is_test:
        assert re.search(r"\b\d+ passed\b", r.stdout) and "failed" not in r.stdout, r.stdout
