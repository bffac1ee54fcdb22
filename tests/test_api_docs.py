"""The public API is documented: every callable has a docstring, `__all__` lists the API without
shadowing builtins, and the API reference builds from the docstrings (pdoc, tools.build_docs)."""
import builtins
import inspect
import pathlib
import subprocess
import sys

import pytest

import graphcore as gc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _public():
    return {n: getattr(gc, n) for n in dir(gc) if not n.startswith("_") and not inspect.ismodule(getattr(gc, n))}


def test_every_public_callable_has_a_docstring():
    missing = [n for n, o in _public().items() if callable(o) and not (o.__doc__ or "").strip()]
    assert not missing, f"public callables of graphcore without a docstring: {missing}"


def test_dataclasses_have_their_own_docstring():
    # a dataclass without one gets its signature as __doc__ ("AdamParams(n_iter: int = ...)")
    generated = [n for n, o in _public().items() if inspect.isclass(o) and (o.__doc__ or "").startswith(f"{n}(")]
    assert not generated, f"classes whose docstring is only their generated signature: {generated}"


def test_generated_builders_are_named_and_documented():
    # builders made by factories (unary ops, _inplace forms) carry their own name and ggml's
    for n in ("sqr", "relu", "tanh", "gelu_quick", "relu_inplace", "tanh_inplace"):
        f = getattr(gc, n)
        assert f.__name__ == n and f.__qualname__ == n
        assert f"ggml_{n}" in f.__doc__
    for n in ("add_inplace", "view_2d", "reshape_3d", "cont_1d", "new_tensor_4d", "set_1d_inplace"):
        assert f"ggml_{n}" in getattr(gc, n).__doc__
    assert gc.abs.__name__ == "abs" and "ggml_abs" in gc.abs.__doc__


def test_all_names_exist_and_cover_the_public_api():
    assert len(gc.__all__) == len(set(gc.__all__)), "__all__ repeats names"
    absent = [n for n in gc.__all__ if not hasattr(gc, n)]
    assert not absent, f"__all__ names that graphcore does not define: {absent}"
    shadowing = [n for n in gc.__all__ if hasattr(builtins, n)]
    assert not shadowing, f"__all__ names that would shadow Python builtins: {shadowing}"
    unlisted = [n for n in _public() if n not in gc.__all__ and not hasattr(builtins, n)]
    assert not unlisted, f"public names of graphcore missing from __all__: {unlisted}"
    assert "OP_MUL_MAT" in gc.__all__ and "testing" not in gc.__all__


def test_star_import_keeps_the_builtins():
    ns = {}
    exec("from graphcore import *", ns)
    for n in ("sum", "abs", "set"):
        assert n not in ns
        assert eval(n, ns) is getattr(builtins, n)
    assert ns["mul_mat"] is gc.mul_mat and ns["TYPE_F32"] == gc.TYPE_F32
    assert gc.sum is not builtins.sum and gc.abs.__module__ == "graphcore.ops.unary"


def test_api_reference_builds(tmp_path):
    pytest.importorskip("pdoc")
    out = tmp_path / "api"
    r = subprocess.run([sys.executable, "-m", "graphcore_tools.build_docs", "-o", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (out / "graphcore.html").read_text()
    for text in ("mul_mat", "ggml_mul_mat", "view_2d", "ggml_view_2d", "graph_plan", "relu_inplace",
                 "ggml_relu_inplace", "new_tensor_4d"):
        assert text in page, f"graphcore.html lacks {text!r}"
    # sum, abs and set (not in __all__) are documented with their modules
    assert "ggml_sum" in (out / "graphcore" / "ops" / "reduce.html").read_text()
    assert "ggml_set" in (out / "graphcore" / "ops" / "indexing.html").read_text()


def test_build_docs_refuses_a_missing_parent_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "graphcore_tools.build_docs", "-o", str(tmp_path / "no" / "api")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
