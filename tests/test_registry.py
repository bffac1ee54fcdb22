"""The op registry is complete (every op has every part, as ggml static-asserts its op count), its
names are exported as gc.OP_<NAME>, and every builder of the core op families turns bad input
into a gc.GraphError naming the op, never another exception."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphcore as gc
from graphcore.ops import elementwise, layout, matmul, reduce, unary
from graphcore.ops.registry import OpDef

VIEW_OPS = {"NONE", "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE"}

# the ops of the engine foundation: each must be registered
CORE_OPS = {"NONE", "DUP", "ADD", "ADD1", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG", "SUM", "SUM_ROWS",
            "MEAN", "ARGMAX", "REPEAT", "ABS", "SGN", "NEG", "STEP", "RELU", "GELU", "SILU", "SCALE",
            "CPY", "CONT", "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "MUL_MAT", "OUT_PROD"}


def test_core_ops_registered():
    missing = CORE_OPS - set(gc.BY_NAME)
    assert not missing, f"not registered: {sorted(missing)}"


@pytest.mark.parametrize("op", gc.OPS, ids=[op.name for op in gc.OPS])
def test_every_op_has_every_part(op):
    assert isinstance(op, OpDef)
    assert isinstance(op.name, str) and op.name and op.name == op.name.upper() and " " not in op.name
    assert isinstance(op.symbol, str) and op.symbol, f"{op.name}: no dot symbol"
    assert gc.OPS[op.code] is op and gc.BY_NAME[op.name] is op, f"{op.name}: code/name tables disagree"
    if op.name in VIEW_OPS:
        assert op.kernel is None, f"{op.name} is a view op and must not compute"
    else:
        assert callable(op.kernel), f"{op.name}: no kernel and not a view op"
    assert callable(op.n_tasks), f"{op.name}: n_tasks is not callable"
    assert callable(op.work_size), f"{op.name}: work_size is not callable"
    assert callable(op.n_phases) or (isinstance(op.n_phases, int) and op.n_phases >= 1), f"{op.name}: n_phases"
    assert isinstance(op.inplace, bool)
    assert hasattr(op, "backward")
    # graphcore.testing's parts, beside the kernel: a numpy reference and a sampler for random graphs
    assert callable(op.reference), f"{op.name}: no numpy reference (@reference_of in its module)"
    assert op.reference_nmse > 0, f"{op.name}: reference tolerance"
    if op.name != "NONE":
        assert callable(op.sample), f"{op.name}: no sampler for random graphs (@sample_of in its module)"
    # graph files (graphcore.graphfile): every op is rebuilt through its own builder on import
    assert callable(op.rebuild), f"{op.name}: no rebuild adapter for graph files (@rebuild_of in its module)"
    assert op.not_exportable is None or isinstance(op.not_exportable, str)
    assert op_constant(op.name) == op.code


def op_constant(name):
    return getattr(gc, f"OP_{name}", None)


def test_op_constants_match_registry():
    assert len({op.name for op in gc.OPS}) == len(gc.OPS), "duplicate op names"
    assert [op.code for op in gc.OPS] == list(range(len(gc.OPS)))
    assert gc.OP_NONE == 0
    for op in gc.OPS:
        assert getattr(gc, f"OP_{op.name}") == op.code
        assert gc.op_name(op.code) == op.name and gc.op_symbol(op.code) == op.symbol
    consts = {k for k in dir(gc) if k.startswith("OP_")}
    assert consts == {f"OP_{op.name}" for op in gc.OPS}, "gc.OP_* constants and the registry differ"


def test_op_name_out_of_range():
    assert gc.op_name(len(gc.OPS)).startswith("<op")
    assert gc.op_symbol(-1) == "?"


# -- every builder of the core families: bad input is a GraphError naming the op ---------------------------
def _builders():
    out = []
    for mod in (elementwise, unary, layout, reduce, matmul):
        for name, f in vars(mod).items():
            if name.startswith("_") or not inspect.isfunction(f) or f.__module__ != mod.__name__:
                continue
            params = list(inspect.signature(f).parameters)
            if not params or params[0] != "ctx":
                continue
            out.append((name.rstrip("_"), f, params[1:]))
    return sorted(out, key=lambda x: x[0])


BUILDERS = _builders()
TENSOR_PARAMS = {"a", "b"}


def test_builders_found():
    names = {n for n, _, _ in BUILDERS}
    for n in ["add", "add_inplace", "neg", "gelu_inplace", "scale", "cpy", "view_4d", "permute", "reshape_3d",
              "sum_rows", "argmax", "repeat", "mul_mat", "out_prod", "cont_2d", "dup_inplace"]:
        assert n in names
    for n, f, params in BUILDERS:
        assert getattr(gc, n if n != "abs" else "abs") is not None, n


def _valid_args(ctx, params, bad=None):
    """Arguments that are fine by type (numpy arrays where `bad` says so)."""
    args = []
    for p in params:
        if p in TENSOR_PARAMS:
            args.append(np.zeros((3, 4), np.float32) if p == bad else gc.new_tensor_2d(ctx, gc.TYPE_F32, 4, 3))
        elif p.startswith("axis"):
            args.append(int(p[-1]))
        elif p.startswith("nb"):
            args.append(16)
        elif p == "s":
            args.append(1.0)
        else:                   # ne*, offset
            args.append(1 if p.startswith("ne") else 0)
    return args


@pytest.mark.parametrize("name,f,params", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_builder_rejects_numpy_arrays(name, f, params):
    ctx = gc.init(1 << 16)
    base = name.replace("_inplace", "")
    base = base[:-3] if base[-3:] in ("_1d", "_2d", "_3d", "_4d") else base
    for p in params:
        if p not in TENSOR_PARAMS:
            continue
        with pytest.raises(gc.GraphError) as ei:
            f(ctx, *_valid_args(ctx, params, bad=p))
        msg = str(ei.value)
        assert base in msg and "ndarray" in msg and "(3, 4)" in msg, msg


@pytest.mark.parametrize("name,f,params", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_builder_rejects_bad_context(name, f, params):
    ctx = gc.init(1 << 16)
    args = _valid_args(ctx, params)
    for bad in (None, "ctx", np.zeros(3)):
        with pytest.raises(gc.GraphError):
            f(bad, *args)
    dead = gc.init(1 << 16)
    args = _valid_args(dead, params)
    gc.free(dead)
    with pytest.raises(gc.GraphError):
        f(dead, *args)


def _pool(ctx):
    f32 = gc.new_tensor_2d(ctx, gc.TYPE_F32, 4, 3)
    return [f32, gc.new_tensor_1d(ctx, gc.TYPE_F32, 1), gc.new_tensor_2d(ctx, gc.TYPE_F16, 4, 3),
            gc.new_tensor_2d(ctx, gc.TYPE_I32, 4, 3), gc.transpose(ctx, f32), gc.new_tensor_3d(ctx, gc.TYPE_F32, 4, 3, 2),
            gc.view_2d(ctx, f32, 2, 3, 16, 4), None, 1.5, -1, 0, 1, 2, 3, 4, 12, 16, 2**40, -2**40, "x",
            np.zeros(3, np.float32), [1, 2], float("nan"), float("inf"), True, np.int64(2)]


@pytest.mark.parametrize("name,f,params", BUILDERS, ids=[b[0] for b in BUILDERS])
@given(picks=st.lists(st.integers(0, 25), min_size=10, max_size=10))
@settings(max_examples=60)
def test_builder_never_crashes(name, f, params, picks):
    """Any mix of tensors, numbers and junk: either a node or a GraphError, never another exception."""
    ctx = gc.init(1 << 16)
    pool = _pool(ctx)
    args = [pool[picks[i] % len(pool)] for i in range(len(params))]
    try:
        t = f(ctx, *args)
    except gc.GraphError:
        return
    assert isinstance(t, gc.Tensor)
    assert all(x >= 1 for x in t.ne)


def test_symbols_are_plain_text_and_the_dot_writer_escapes_them():
    # ggml's C symbols carry dot escapes ("x-\\>y"); here the record holds the text and dump.py escapes
    assert gc.op_symbol(gc.OP_CPY) == "x->y" and gc.op_symbol(gc.OP_SET) == "y->view(x)"
    assert all("\\" not in op.symbol for op in gc.OPS)
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)
    b = gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)
    g = gc.build_forward(gc.cpy(ctx, a, b))
    assert "x-\\>y" in gc.graph_dot(g)


def test_only_ops_that_use_blas_get_its_address():
    from graphcore.kernel import R_BLAS
    from graphcore.planner import lowered
    ctx = gc.init(1 << 20)
    a = gc.new_tensor_2d(ctx, gc.TYPE_F32, 8, 8)
    b = gc.new_tensor_2d(ctx, gc.TYPE_F32, 8, 8)
    g = gc.build_forward(gc.add(ctx, gc.mul_mat(ctx, a, b), b))
    plan = gc.graph_plan(g, 1)
    low = lowered(plan)
    recs = {gc.op_name(g.nodes[i].op): low.recs[i, R_BLAS] for i in range(g.n_nodes)}
    assert recs["MUL_MAT"] != 0 and recs["ADD"] == 0
    assert {op.name for op in gc.OPS if op.uses_blas} == {"MUL_MAT", "OUT_PROD"}


_COLD_START = """
import numpy as np, graphcore as gc
ctx = gc.init(1 << 16)
y = gc.neg(ctx, gc.from_numpy(ctx, np.arange(4, dtype=np.float32)))
gc.graph_compute_with_ctx(ctx, gc.build_forward(y), 1)
print(y.numpy().tolist())
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_cold_start_says_it_is_compiling(tmp_path, quiet):
    """With an empty kernel cache the compile is announced on stderr (a cold start must never look
    hung), once per kernel compiled; GRAPHCORE_QUIET=1 silences it; a warm start says nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "GRAPHCORE_QUIET")}
    env["GRAPHCORE_CACHE_DIR"] = str(tmp_path)
    if quiet:
        env["GRAPHCORE_QUIET"] = "1"
    runs = [subprocess.run([sys.executable, "-c", _COLD_START], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0 and r.stdout.strip() == "[-0.0, -1.0, -2.0, -3.0]", r.stderr[-2000:]
    cold, warm = runs[0].stderr, runs[1].stderr
    if quiet:
        assert "graphcore:" not in cold
    else:
        assert "graphcore: compiling 1 kernel (numba" in cold and "[1/1] NEG" in cold and "kernels ready" in cold
    assert "graphcore:" not in warm


_USER_OP = """
import numpy as np, graphcore as gc
from graphcore.kernel import inline
from graphcore.ops.common import define_unary
from graphcore.ops.registry import ZERO_GRADIENT
MY, my, my_inplace = define_unary("MY_SCALE", "k x", inline(lambda x, p: x * {k}), formula="k x",
                                  backward=ZERO_GRADIENT)
ctx = gc.init(1 << 16)
y = my(ctx, gc.from_numpy(ctx, np.arange(4, dtype=np.float32)))
gc.graph_compute_with_ctx(ctx, gc.build_forward(y), 1)
print(y.numpy().tolist())
"""


def test_an_op_defined_outside_graphcore_never_loads_a_stale_kernel(tmp_path):
    """define_unary's kernel is kernel.specialise's copy of one loop, cached by numba under the op's
    name and a digest of the scalar function's code: the same name with another function (an edit
    between runs) compiles anew and computes the new function; the same function loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "GRAPHCORE_QUIET")}
    env["GRAPHCORE_CACHE_DIR"] = str(tmp_path)

    def run(k):
        script = tmp_path / "my_op.py"      # a module of the user's (numba caches nothing defined in -c code)
        script.write_text(_USER_OP.format(k=k))
        r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.strip(), "[1/1] MY_SCALE" in r.stderr

    assert run(2) == ("[0.0, 2.0, 4.0, 6.0]", True)
    assert run(3) == ("[0.0, 3.0, 6.0, 9.0]", True)      # compiled again, not the cached x * 2
    assert run(2) == ("[0.0, 2.0, 4.0, 6.0]", False)     # x * 2's own entry, loaded
