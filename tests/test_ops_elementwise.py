"""Elementwise ops against float64 numpy references: unary functions, scale, add1, add/sub/mul/div
with src1 tiled over src0, every *_inplace form; any layout (contiguous, permuted, transposed,
strided views); sentinel bytes around outputs; the same bits for 1, 2 and 4 threads; bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphcore as gc
from graphcore.testing import (Layout, assert_close_nmse, assert_same_bits, broadcastable_pairs,
                               compute_guarded, element_byte_offsets, layouts, make_tensor, ne4,
                               random_values, seeds, sentinel_context, shapes)

TOL = 1e-7


# -- float64 references (ggml's definitions) ---------------------------------------------------------
def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * x * (1.0 + 0.044715 * x * x)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


# name: (builder, inplace builder, reference on float64, value range)
UNARY = {
    "sqr": (gc.sqr, gc.sqr_inplace, lambda x: x * x, (-3, 3)),
    "sqrt": (gc.sqrt, gc.sqrt_inplace, np.sqrt, (0, 4)),
    "log": (gc.log, gc.log_inplace, np.log, (0.01, 5)),
    "neg": (gc.neg, gc.neg_inplace, lambda x: -x, (-3, 3)),
    "abs": (gc.abs, gc.abs_inplace, np.abs, (-3, 3)),
    "sgn": (gc.sgn, gc.sgn_inplace, lambda x: np.where(x > 0, 1.0, np.where(x < 0, -1.0, 0.0)), (-3, 3)),
    "step": (gc.step, gc.step_inplace, lambda x: np.where(x > 0, 1.0, 0.0), (-3, 3)),
    "relu": (gc.relu, gc.relu_inplace, lambda x: np.where(x > 0, x, 0.0), (-3, 3)),
    "gelu": (gc.gelu, gc.gelu_inplace, _gelu, (-6, 6)),
    "silu": (gc.silu, gc.silu_inplace, _silu, (-8, 8)),
}

BINARY = {
    "add": (gc.add, gc.add_inplace, lambda a, b: a + b),
    "sub": (gc.sub, gc.sub_inplace, lambda a, b: a - b),
    "mul": (gc.mul, gc.mul_inplace, lambda a, b: a * b),
    "div": (gc.div, gc.div_inplace, lambda a, b: a / b),
}


def tile_to(b, ne_a):
    """b (numpy order) tiled to ggml shape ne_a, as 4-D: ggml's can_repeat broadcast (i % ne)."""
    a4 = ne4(ne_a)[::-1]
    b4 = np.asarray(b).reshape(ne4(list(np.shape(b))[::-1] or [1])[::-1])
    return np.tile(b4, [x // y for x, y in zip(a4, b4.shape)])


def check_inplace(a, out, expected, what):
    """out is a view of a's bytes and a now holds the result."""
    assert out.view_src is not None, f"{what}: inplace result is not a view"
    assert np.array_equal(element_byte_offsets(out), element_byte_offsets(a)), f"{what}: not a's elements"
    assert_close_nmse(a.numpy4d(), expected, TOL, what + " (through src0)")


def _signed_away_from_zero(x):
    """values in [-1, 1) mapped to +-[0.5, 1.5) (safe divisors)."""
    return np.where(x < 0, x - 0.5, x + 0.5).astype(np.float32)


# -- unary -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", list(UNARY))
@given(ne=shapes(), layout=layouts(), seed=seeds())
def test_unary(name, inplace, ne, layout, seed):
    build, build_inplace, ref, (lo, hi) = UNARY[name]
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, lo, hi)
    a = make_tensor(ctx, ne, layout, x)
    out = (build_inplace if inplace else build)(ctx, a)
    assert out.ne == a.ne and out.type == gc.TYPE_F32
    assert out.op == gc.BY_NAME[name.upper()].code
    expected = ref(x.astype(np.float64)).reshape(ne4(ne)[::-1])
    compute_guarded(ctx, out, what=name)
    assert_close_nmse(out.numpy4d(), expected, TOL, f"{name} {layout}")
    if inplace:
        check_inplace(a, out, expected, f"{name}_inplace {layout}")


SPECIAL = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17e-38, -1.17e-38, 0.5, -0.5, 1.0, -1.0, 2.0,
                    88.0, -88.0, 100.0, -100.0, 1e20, -1e20, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan],
                   dtype=np.float32)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_special_values(name):
    """zeros, subnormals, huge values, inf and NaN: the float64 result rounded to float32."""
    build, _, ref, _ = UNARY[name]
    x = SPECIAL
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, x)
    out = build(ctx, a)
    compute_guarded(ctx, out, what=name)
    with np.errstate(all="ignore"):
        expected = ref(x.astype(np.float64)).astype(np.float32)
    if name in ("gelu", "silu"):        # the limit at -inf is 0 (the formulas give inf * 0, -inf / inf)
        assert np.isnan(expected[x == -np.inf]).all()
        expected[x == -np.inf] = 0.0
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=0, equal_nan=True,
                               err_msg=f"{name} on {x}")


# -- scale, add1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), layout=layouts(), seed=seeds(),
       s=st.one_of(st.just(0.0), st.floats(2.0**-20, 8, width=32), st.floats(-8, -2.0**-20, width=32)))
def test_scale(inplace, ne, layout, seed, s):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -2, 2)
    a = make_tensor(ctx, ne, layout, x)
    out = (gc.scale_inplace if inplace else gc.scale)(ctx, a, s)
    expected = (x.astype(np.float64) * s).reshape(ne4(ne)[::-1])
    compute_guarded(ctx, out, what="scale")
    assert_close_nmse(out.numpy4d(), expected, TOL, f"scale {s} {layout}")
    if inplace:
        check_inplace(a, out, expected, f"scale_inplace {layout}")


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), layout=layouts(), blayout=layouts(kinds=("contiguous", "strided")), seed=seeds())
def test_add1(inplace, ne, layout, blayout, seed):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -2, 2)
    v = np.float32(np.random.default_rng(seed + 1).uniform(-3, 3))
    a = make_tensor(ctx, ne, layout, x)
    b = make_tensor(ctx, [1], blayout, np.array([v]))
    out = (gc.add1_inplace if inplace else gc.add1)(ctx, a, b)
    expected = (x.astype(np.float64) + float(v)).reshape(ne4(ne)[::-1])
    compute_guarded(ctx, out, what="add1")
    assert_close_nmse(out.numpy4d(), expected, TOL, f"add1 {layout}")
    assert b.numpy()[0] == v
    if inplace:
        check_inplace(a, out, expected, f"add1_inplace {layout}")


# -- add / sub / mul / div with broadcast ------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", list(BINARY))
@given(pair=broadcastable_pairs(), la=layouts(), lb=layouts(), seed=seeds())
def test_binary(name, inplace, pair, la, lb, seed):
    build, build_inplace, ref = BINARY[name]
    ne_a, ne_b = pair
    ctx = sentinel_context(1 << 20)
    x = random_values(ne_a, seed, -2, 2)
    y = random_values(ne_b, seed + 1)
    if name == "div":
        y = _signed_away_from_zero(y)
    a = make_tensor(ctx, ne_a, la, x)
    b = make_tensor(ctx, ne_b, lb, y)
    out = (build_inplace if inplace else build)(ctx, a, b)
    assert out.ne == a.ne
    expected = ref(x.astype(np.float64).reshape(ne4(ne_a)[::-1]), tile_to(y.astype(np.float64), ne_a))
    compute_guarded(ctx, out, what=name)
    assert_close_nmse(out.numpy4d(), expected, TOL, f"{name} {ne_a} {la} by {ne_b} {lb}")
    assert np.array_equal(b.numpy4d().ravel(), y.ravel()), f"{name} changed src1"
    if inplace:
        check_inplace(a, out, expected, f"{name}_inplace")


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_same_operand(name):
    """a op a, and a op= a (src1 aliasing dst)."""
    build, build_inplace, ref = BINARY[name]
    ctx = sentinel_context(1 << 16)
    x = _signed_away_from_zero(random_values([7, 3, 2], 5))
    a = gc.from_numpy(ctx, x)
    out = build(ctx, a, a)
    compute_guarded(ctx, out)
    assert_close_nmse(out.numpy(), ref(x.astype(np.float64), x.astype(np.float64)), TOL, name)
    out2 = build_inplace(ctx, a, a)
    compute_guarded(ctx, out2)
    assert_close_nmse(a.numpy(), ref(x.astype(np.float64), x.astype(np.float64)), TOL, name + "_inplace")


def test_binary_wide_rows_broadcast():
    """Rows longer than one work segment, src1 a single row tiled over every row, and a column
    (ne0 == 1) tiled over every element of each row."""
    ctx = sentinel_context(1 << 20)
    ne = [5000, 3, 2]
    x = random_values(ne, 1)
    row = random_values([5000], 2)
    col = random_values([1, 3, 2], 3)
    a = gc.from_numpy(ctx, x)
    o1 = gc.add(ctx, a, gc.from_numpy(ctx, row))
    o2 = gc.mul(ctx, a, gc.from_numpy(ctx, col))
    compute_guarded(ctx, [o1, o2])
    x64 = x.astype(np.float64)
    assert_close_nmse(o1.numpy(), x64 + row.astype(np.float64), TOL, "add row")
    assert_close_nmse(o2.numpy(), x64 * col.astype(np.float64), TOL, "mul column")


# -- thread counts: identical bits, with tensors big enough that the planner splits ----------------------
BIG = [4100, 5, 2, 2]        # 82,000 elements: 5 tasks' worth, rows longer than one segment

ALL_ELEMENTWISE = ([(n, lambda ctx, a, b, f=UNARY[n][0]: f(ctx, a)) for n in UNARY]
                   + [(n, lambda ctx, a, b, f=BINARY[n][0]: f(ctx, a, b)) for n in BINARY]
                   + [("scale", lambda ctx, a, b: gc.scale(ctx, a, 0.37)),
                      ("add1", lambda ctx, a, b: gc.add1(ctx, a, gc.view_1d(ctx, b, 1, 4 * 7))),
                      ("add_bcast", lambda ctx, a, b: gc.add(ctx, a, gc.view_2d(ctx, b, BIG[0], 1, b.nb[1], 0)))])


def _threads_case(build, layout, positive):
    ctx = sentinel_context(4 << 20)
    x = random_values(BIG, 11, 0.01 if positive else -3, 3)
    y = _signed_away_from_zero(random_values(BIG, 12))
    a = make_tensor(ctx, BIG, layout, x)
    b = gc.from_numpy(ctx, y)
    out = build(ctx, a, b)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    return ctx, g, out


@pytest.mark.parametrize("layout", [Layout(), Layout("permuted", axes=(0, 2, 1, 3)),
                                    Layout("strided", pad=(3, 1, 0, 1), start=(2, 1, 0, 0))],
                         ids=["contiguous", "permuted", "strided"])
@pytest.mark.parametrize("name,build", ALL_ELEMENTWISE, ids=[n for n, _ in ALL_ELEMENTWISE])
def test_threads_same_bits(name, build, layout):
    ctx, g, out = _threads_case(build, layout, name in ("sqrt", "log"))
    node = g.nodes.index(out)
    results = []
    for n in (1, 2, 4):
        nt = gc.graph_plan(g, n).n_tasks[node]
        assert nt == n, f"{name}: planner gave {nt} tasks for {n} threads; the test needs a split"
        out.numpy4d()[...] = np.nan
        compute_guarded(ctx, out, n, graph=g, what=f"{name} x{n}")
        results.append(out.numpy().copy())
    assert_same_bits(results[1], results[0], f"{name} 2 vs 1 threads")
    assert_same_bits(results[2], results[0], f"{name} 4 vs 1 threads")
    assert not np.isnan(results[0]).any()


@pytest.mark.parametrize("name", ["neg", "mul", "scale"])
def test_threads_inplace_strided(name):
    """An inplace op on a strided view with 4 threads touches only the view's elements."""
    lay = Layout("strided", pad=(3, 1, 0, 1), start=(2, 1, 0, 0))
    ctx = sentinel_context(4 << 20)
    x = random_values(BIG, 3)
    a = make_tensor(ctx, BIG, lay, x)
    b = gc.from_numpy(ctx, random_values(BIG[:1], 4))
    out = {"neg": lambda: gc.neg_inplace(ctx, a), "mul": lambda: gc.mul_inplace(ctx, a, b),
           "scale": lambda: gc.scale_inplace(ctx, a, -2.5)}[name]()
    compute_guarded(ctx, out, 4)
    x64 = x.astype(np.float64)
    exp = {"neg": -x64, "mul": x64 * b.numpy().astype(np.float64), "scale": x64 * -2.5}[name]
    assert_close_nmse(a.numpy(), exp, TOL, name)


# -- bad input: GraphError naming the op and the shapes ------------------------------------------------------
def _ctx():
    return gc.init(1 << 16)


def _raises(fn, *needles):
    with pytest.raises(gc.GraphError) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message {msg!r}"
    return msg


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_errors(name):
    build, build_inplace, _, _ = UNARY[name]
    ctx = _ctx()
    i = gc.new_tensor_2d(ctx, gc.TYPE_I32, 4, 3)
    h = gc.new_tensor_2d(ctx, gc.TYPE_F16, 4, 3)
    _raises(lambda: build(ctx, np.zeros((3, 4), np.float32)), name, "ndarray", "(3, 4)")
    _raises(lambda: build(ctx, i), name, "[4, 3, 1, 1]", "i32")
    _raises(lambda: build(ctx, h), name, "[4, 3, 1, 1]", "f16")
    _raises(lambda: build_inplace(ctx, i), name + "_inplace", "[4, 3, 1, 1]", "i32")
    _raises(lambda: build(ctx, None), name)
    _raises(lambda: build(None, gc.new_tensor_1d(ctx, gc.TYPE_F32, 3)), name, "Context")


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_errors(name):
    build, build_inplace, _ = BINARY[name]
    ctx = _ctx()
    a = gc.new_tensor_2d(ctx, gc.TYPE_F32, 4, 3)
    b = gc.new_tensor_2d(ctx, gc.TYPE_F32, 3, 3)
    c = gc.new_tensor_3d(ctx, gc.TYPE_F32, 4, 3, 2)
    i = gc.new_tensor_2d(ctx, gc.TYPE_I32, 4, 3)
    _raises(lambda: build(ctx, a, b), name, "[4, 3, 1, 1]", "[3, 3, 1, 1]")
    _raises(lambda: build_inplace(ctx, a, b), name + "_inplace", "[4, 3, 1, 1]", "[3, 3, 1, 1]")
    _raises(lambda: build(ctx, a, c), name, "[4, 3, 1, 1]", "[4, 3, 2, 1]")    # src0 smaller than src1
    _raises(lambda: build(ctx, a, i), name, "i32", "[4, 3, 1, 1]")
    _raises(lambda: build(ctx, i, a), name, "i32")
    _raises(lambda: build(ctx, a, np.ones((3, 4), np.float32)), name, "ndarray", "(3, 4)")
    _raises(lambda: build(ctx, 1.0, a), name, "float")


def test_scale_add1_errors():
    ctx = _ctx()
    a = gc.new_tensor_2d(ctx, gc.TYPE_F32, 4, 3)
    b = gc.new_tensor_1d(ctx, gc.TYPE_F32, 2)
    i = gc.new_tensor_1d(ctx, gc.TYPE_I32, 1)
    _raises(lambda: gc.add1(ctx, a, b), "add1", "[4, 3, 1, 1]", "[2, 1, 1, 1]")
    _raises(lambda: gc.add1_inplace(ctx, a, b), "add1_inplace", "[2, 1, 1, 1]")
    _raises(lambda: gc.add1(ctx, a, i), "add1", "i32")
    _raises(lambda: gc.scale(ctx, a, b), "scale", "Tensor")
    _raises(lambda: gc.scale(ctx, a, "2"), "scale", "str")
    _raises(lambda: gc.scale_inplace(ctx, np.ones(3), 2.0), "scale_inplace", "ndarray")
    _raises(lambda: gc.scale(ctx, gc.new_tensor_1d(ctx, gc.TYPE_I32, 3), 2.0), "scale", "i32")



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["elementwise", "unary"] for op in family_ops(m)]


@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_elementwise_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
