"""Reductions and tiling against float64 numpy: sum, sum_rows, mean, argmax, repeat; any layout,
sentinel bytes around outputs, the same bits for 1, 2 and 4 threads, bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc
from graphcore.testing import (Layout, assert_close_nmse, assert_same_bits, broadcastable_pairs,
                               compute_guarded, layouts, make_tensor, ne4, random_values, seeds,
                               sentinel_context, shapes)

TOL = 1e-7
F32, I32 = gc.TYPE_F32, gc.TYPE_I32


@given(ne=shapes(max_side=6), layout=layouts(), seed=seeds())
def test_sum(ne, layout, seed):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    out = gc.sum(ctx, a)
    assert out.ne == [1, 1, 1, 1] and out.type == F32
    compute_guarded(ctx, out)
    assert_close_nmse(out.numpy(), [x.astype(np.float64).sum()], TOL, f"sum {ne} {layout}")


@pytest.mark.parametrize("name", ["sum_rows", "mean"])
@given(ne=shapes(max_side=6), layout=layouts(), seed=seeds())
def test_sum_rows_mean(name, ne, layout, seed):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    out = getattr(gc, name)(ctx, a)
    assert out.ne == [1, *ne4(ne)[1:]] and out.type == F32
    x4 = x.astype(np.float64).reshape(ne4(ne)[::-1])
    expected = x4.sum(axis=3, keepdims=True) if name == "sum_rows" else x4.mean(axis=3, keepdims=True)
    compute_guarded(ctx, out)
    assert_close_nmse(out.numpy4d(), expected, TOL, f"{name} {ne} {layout}")


@given(ne=shapes(max_dims=2, max_side=9), layout=layouts(), seed=seeds(), ties=st.booleans())
def test_argmax(ne, layout, seed, ties):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -4, 4)
    if ties:                                   # few distinct values: the first maximum wins
        x = np.round(x)
    a = make_tensor(ctx, ne, layout, x)
    out = gc.argmax(ctx, a)
    ne1 = ne4(ne)[1]
    assert out.ne == [ne1, 1, 1, 1] and out.type == I32
    compute_guarded(ctx, out)
    expected = np.argmax(x.reshape(ne1, ne4(ne)[0]), axis=1).astype(np.int32)
    assert_same_bits(out.numpy(), expected, f"argmax {ne} {layout}")


def test_argmax_special():
    x = np.array([[1, 3, 3, -1], [-np.inf, -np.inf, -np.inf, -np.inf], [np.inf, 0, np.inf, 5],
                  [-5, -2, -7, -2], [-0.0, 0.0, -1, -1]], dtype=np.float32)
    ctx = sentinel_context(1 << 16)
    out = gc.argmax(ctx, gc.from_numpy(ctx, x))
    compute_guarded(ctx, out)
    assert list(out.numpy()) == [1, 0, 0, 1, 0]


@given(pair=broadcastable_pairs(), layout=layouts(), seed=seeds())
def test_repeat(pair, layout, seed):
    ne_b, ne_a = pair                 # a tiles to b's shape
    ctx = sentinel_context(1 << 20)
    x = random_values(ne_a, seed)
    a = make_tensor(ctx, ne_a, layout, x)
    b = gc.new_tensor(ctx, F32, ne_b)           # only its shape matters (its data is never read)
    out = gc.repeat(ctx, a, b)
    assert out.ne == ne4(ne_b)
    x4 = x.reshape(ne4(ne_a)[::-1])
    expected = np.tile(x4, [p // q for p, q in zip(ne4(ne_b)[::-1], x4.shape)])
    compute_guarded(ctx, out)
    assert_same_bits(out.numpy4d(), expected, f"repeat {ne_a} {layout} -> {ne_b}")


def test_sum_precision_large():
    """Sums accumulate in float64: 1e6 ones and a large cancelling pair are exact."""
    ctx = sentinel_context(8 << 20)
    x = np.ones(1_000_000, dtype=np.float32)
    x[0], x[1] = 1e8, -1e8
    a = gc.from_numpy(ctx, x)
    s, r = gc.sum(ctx, a), gc.sum_rows(ctx, a)
    compute_guarded(ctx, [s, r], 2)
    assert s.numpy()[0] == 999_998.0 and r.numpy()[0] == 999_998.0


# -- thread counts ----------------------------------------------------------------------------------------
BIG = [2050, 10, 2, 2]      # 82,000 elements in 40 rows

CASES = {
    "sum": lambda ctx, a: gc.sum(ctx, a),
    "sum_rows": lambda ctx, a: gc.sum_rows(ctx, a),
    "mean": lambda ctx, a: gc.mean(ctx, a),
    "argmax": lambda ctx, a: gc.argmax(ctx, gc.reshape_2d(ctx, gc.cont(ctx, a), 2050, 40)),
    "repeat": lambda ctx, a: gc.repeat(ctx, gc.view_4d(ctx, a, 2050, 10, 1, 2, a.nb[1], a.nb[2], a.nb[3], 0),
                                       gc.new_tensor_4d(ctx, F32, 4100, 10, 2, 2)),
}


@pytest.mark.parametrize("layout", [Layout(), Layout("permuted", axes=(0, 2, 1, 3)),
                                    Layout("strided", pad=(3, 1, 1, 0), start=(1, 1, 0, 0))],
                         ids=["contiguous", "permuted", "strided"])
@pytest.mark.parametrize("name", list(CASES))
def test_threads_same_bits(name, layout):
    ctx = sentinel_context(8 << 20)
    x = random_values(BIG, 7)
    a = make_tensor(ctx, BIG, layout, x)
    out = CASES[name](ctx, a)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    node = g.nodes.index(out)
    results = []
    for n in (1, 2, 4):
        assert gc.graph_plan(g, n).n_tasks[node] == n, f"{name}: no split at {n} threads"
        out.numpy4d()[...] = 0
        compute_guarded(ctx, [o for o in g.nodes if o.op in (gc.OP_CONT,)] + [out], n, graph=g)
        results.append(out.numpy().copy())
    assert_same_bits(results[1], results[0], f"{name} 2 vs 1 threads")
    assert_same_bits(results[2], results[0], f"{name} 4 vs 1 threads")
    x64 = x.astype(np.float64)
    if name == "sum":
        assert_close_nmse(results[0], [x64.sum()], TOL, name)
    elif name in ("sum_rows", "mean"):
        ref = x64.sum(axis=-1, keepdims=True) if name == "sum_rows" else x64.mean(axis=-1, keepdims=True)
        assert_close_nmse(results[0], ref, TOL, name)
    elif name == "argmax":
        assert_same_bits(results[0], np.argmax(x.reshape(40, 2050), axis=1).astype(np.int32), name)
    else:
        assert_same_bits(results[0], np.tile(x[:, :1], (1, 2, 1, 2)), name)


# -- bad input -------------------------------------------------------------------------------------------
def _raises(fn, *needles):
    with pytest.raises(gc.GraphError) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message {msg!r}"
    return msg


@pytest.mark.parametrize("name", ["sum", "sum_rows", "mean", "argmax"])
def test_reduce_errors(name):
    f = getattr(gc, name)
    ctx = gc.init(1 << 16)
    i = gc.new_tensor_2d(ctx, I32, 4, 3)
    h = gc.new_tensor_2d(ctx, gc.TYPE_F16, 4, 3)
    _raises(lambda: f(ctx, i), name, "[4, 3, 1, 1]", "i32")
    _raises(lambda: f(ctx, h), name, "[4, 3, 1, 1]", "f16")
    _raises(lambda: f(ctx, np.zeros((3, 4), np.float32)), name, "ndarray", "(3, 4)")
    _raises(lambda: f(ctx, None), name)


def test_argmax_repeat_errors():
    ctx = gc.init(1 << 16)
    a3 = gc.new_tensor_3d(ctx, F32, 4, 3, 2)
    _raises(lambda: gc.argmax(ctx, a3), "argmax", "[4, 3, 2, 1]")
    _raises(lambda: gc.argmax(ctx, gc.new_tensor_4d(ctx, F32, 4, 3, 1, 2)), "argmax", "[4, 3, 1, 2]")
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    _raises(lambda: gc.repeat(ctx, a, gc.new_tensor_2d(ctx, F32, 6, 3)), "repeat", "[4, 3, 1, 1]", "[6, 3, 1, 1]")
    _raises(lambda: gc.repeat(ctx, a, gc.new_tensor_2d(ctx, F32, 2, 3)), "repeat", "[4, 3, 1, 1]", "[2, 3, 1, 1]")
    _raises(lambda: gc.repeat(ctx, gc.new_tensor_2d(ctx, I32, 4, 3), a), "repeat", "i32")
    _raises(lambda: gc.repeat(ctx, a, np.zeros((6, 8))), "repeat", "ndarray")
    _raises(lambda: gc.repeat(ctx, np.zeros((6, 8)), a), "repeat", "ndarray")



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["reduce"] for op in family_ops(m)]


@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_reduce_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
