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
    assert ".venv/bin/python -m graphcore_models.baby_llama" in README
    assert ".venv/bin/python -m pytest -q" in README


def test_readme_has_code_blocks():
    assert len(BLOCKS) >= 4


OP_FRAGMENT = "# in graphcore/ops/unary.py\n"


def test_readme_adding_an_op_works(tmp_path):
    """The "Adding an op" fragment, as a module next to graphcore.ops.unary's names (in a child
    process: it registers an op), gives an op that computes, differentiates and checks like the
    built-in ones."""
    code = next(b for b in BLOCKS if b.startswith(OP_FRAGMENT))
    (tmp_path / "cube_op.py").write_text("from graphcore.ops.unary import *  # noqa: F403\n" + code)
    check = (
        "import numpy as np, graphcore as gc, graphcore.testing as gt\n"
        "import cube_op as U\n"
        "ctx = gc.init(1 << 20)\n"
        "x = gc.from_numpy(ctx, np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4))\n"
        "y = U.cube(ctx, x)\n"
        "gc.graph_compute_with_ctx(ctx, gc.build_forward(y), 2)\n"
        "assert np.allclose(y.numpy(), x.numpy() ** 3, rtol=1e-6)\n"
        "gt.assert_graph_close(y)\n"
        "gt.check_gradients(lambda c, a: gc.sum(c, U.cube(c, a)), [x], eps=1e-3, atol=1e-2)\n"
        "print('ok', gc.BY_NAME['CUBE'].code)\n")
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_copied(index, tmp_path):
    """Each block alone in a file of an empty folder, in a fresh interpreter: a block defining
    tests runs under pytest (and its tests must pass), any other as a script. (The op fragment
    belongs inside a module: the test above runs it there.)"""
    code = BLOCKS[index]
    if code.startswith(OP_FRAGMENT):
        return
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
