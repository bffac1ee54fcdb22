"""map_custom1/2/3: numba-jitted functions run by the executor like any kernel (any types, layouts,
n_tasks, threads, in place), plain Python functions only with allow_python=True, and failures
reported as gc.ComputeError / gc.GraphError."""
import threading

import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

import graphcore as gc
from graphcore.testing import (assert_close_nmse, assert_same_bits, compute_guarded, element_byte_offsets, layouts,
                               make_tensor, ne4, random_values, seeds, sentinel_context, shapes)

F32, F16, I32 = gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32


@njit(cache=False)
def _rows(a, ith, nth):
    n = a.shape[0] * a.shape[1] * a.shape[2]
    per = (n + nth - 1) // nth
    return min(n, per * ith), min(n, per * ith + per)


@njit
def scale3(dst, a, ith, nth):
    """dst = 3 * a, rows split across the tasks ggml's way."""
    ne2, ne1 = a.shape[1], a.shape[2]
    lo, hi = _rows(a, ith, nth)
    for r in range(lo, hi):
        i3, i2, i1 = r // (ne2 * ne1), (r // ne1) % ne2, r % ne1
        for i0 in range(a.shape[3]):
            dst[i3, i2, i1, i0] = 3 * a[i3, i2, i1, i0]


@njit
def axpy(dst, a, b, ith, nth):
    ne2, ne1 = a.shape[1], a.shape[2]
    lo, hi = _rows(a, ith, nth)
    for r in range(lo, hi):
        i3, i2, i1 = r // (ne2 * ne1), (r // ne1) % ne2, r % ne1
        for i0 in range(a.shape[3]):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0] * 2 + b[i3, i2, i1, i0]


@njit
def fma3(dst, a, b, c, ith, nth, k):
    ne2, ne1 = a.shape[1], a.shape[2]
    lo, hi = _rows(a, ith, nth)
    for r in range(lo, hi):
        i3, i2, i1 = r // (ne2 * ne1), (r // ne1) % ne2, r % ne1
        for i0 in range(a.shape[3]):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0] * b[i3, i2, i1, i0] + c[0, 0, 0, 0] * k


@njit
def record_tasks(dst, a, ith, nth):
    """dst[0, 0, 0, ith] = nth: which tasks ran, and with which nth."""
    dst[0, 0, 0, ith] = nth


@njit
def raises(dst, a, ith, nth):
    if a[0, 0, 0, 0] > 0:
        raise ValueError("positive")
    dst[0, 0, 0, 0] = 1.0


@njit
def bad_types(dst, a, ith, nth):
    dst[0, 0, 0, 0] = a.nonexistent_attribute


@njit
def copy_i32(dst, a, ith, nth):
    if ith == 0:
        for i in range(a.shape[3]):
            dst[0, 0, 0, i] = a[0, 0, 0, i] + 1


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), layout=layouts(), seed=seeds(), n_tasks=st.sampled_from([1, 2, 3, gc.N_TASKS_MAX]),
       n_threads=st.sampled_from([1, 2, 4]))
def test_map_custom1(inplace, ne, layout, seed, n_tasks, n_threads):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    out = (gc.map_custom1_inplace if inplace else gc.map_custom1)(ctx, a, scale3, n_tasks)
    assert out.op == gc.OP_MAP_CUSTOM1 and out.ne == a.ne and out.type == F32 and out.src == [a]
    plan = gc.graph_plan(gc.build_forward(out), n_threads)
    assert plan.n_tasks[-1] == (n_threads if n_tasks == gc.N_TASKS_MAX else min(n_tasks, n_threads))
    compute_guarded(ctx, out, n_threads)
    expected = (np.float32(3) * x).reshape(ne4(ne)[::-1])
    assert_same_bits(out.numpy4d(), expected, f"map_custom1 {layout}")
    if inplace:
        assert np.array_equal(element_byte_offsets(out), element_byte_offsets(a))


@given(ne=shapes(), la=layouts(), lb=layouts(), seed=seeds(), n_threads=st.sampled_from([1, 2, 4]))
def test_map_custom2_custom3(ne, la, lb, seed, n_threads):
    ctx = sentinel_context(1 << 18)
    x, y = random_values(ne, seed), random_values(ne, seed + 1)
    a = make_tensor(ctx, ne, la, x)
    b = make_tensor(ctx, ne, lb, y)
    c = gc.new_f32(ctx, 0.5)
    o2 = gc.map_custom2(ctx, a, b, axpy, gc.N_TASKS_MAX)
    o3 = gc.map_custom3(ctx, a, b, c, fma3, 2, 4.0)       # userdata 4.0 is compiled in
    assert o2.src == [a, b] and o3.src == [a, b, c]
    compute_guarded(ctx, [o2, o3], n_threads)
    x64, y64 = (v.astype(np.float64).reshape(ne4(ne)[::-1]) for v in (x, y))
    assert_close_nmse(o2.numpy4d(), 2 * x64 + y64, 1e-7, "map_custom2")
    assert_close_nmse(o3.numpy4d(), x64 * y64 + 2.0, 1e-7, "map_custom3")


@pytest.mark.parametrize("n_tasks,n_threads", [(1, 4), (2, 4), (3, 2), (gc.N_TASKS_MAX, 4), (gc.N_TASKS_MAX, 1)])
def test_tasks_run_with_ggml_ith_nth(n_tasks, n_threads):
    ctx = sentinel_context(1 << 16)
    a = gc.new_tensor_1d(ctx, F32, 8)
    gc.set_zero(a)
    out = gc.map_custom1_inplace(ctx, a, record_tasks, n_tasks)
    compute_guarded(ctx, out, n_threads)
    nt = n_threads if n_tasks == gc.N_TASKS_MAX else min(n_tasks, n_threads)
    assert list(a.numpy()) == [nt] * nt + [0] * (8 - nt)


def test_map_custom_other_types_and_same_bits_across_threads():
    ctx = sentinel_context(1 << 20)
    xi = np.arange(10, dtype=np.int32)
    ai = gc.from_numpy(ctx, xi)
    oi = gc.map_custom1(ctx, ai, copy_i32, 1)
    assert oi.type == I32
    compute_guarded(ctx, oi)
    assert list(oi.numpy()) == list(xi + 1)
    big = random_values([300, 200], 4)
    a = gc.from_numpy(ctx, big)
    out = gc.map_custom1(ctx, a, scale3, gc.N_TASKS_MAX)
    g = gc.build_forward(out)
    res = []
    for n in (1, 2, 4):
        out.numpy4d()[...] = np.nan
        compute_guarded(ctx, out, n, graph=g)
        res.append(out.numpy().copy())
    assert_same_bits(res[1], res[0])
    assert_same_bits(res[2], res[0])


def test_python_functions_need_allow_python():
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, random_values([5, 3], 1))

    def add_one(dst, x, ith, nth):
        dst[...] = x + 1

    with pytest.raises(gc.GraphError) as ei:
        gc.map_custom1(ctx, a, add_one, 1)
    assert "map_custom1" in str(ei.value) and "add_one" in str(ei.value) and "allow_python=True" in str(ei.value)
    with pytest.raises(gc.GraphError, match="map_custom2.*numba-jitted"):
        gc.map_custom2(ctx, a, a, 42, 1)
    out = gc.map_custom1(ctx, a, add_one, 1, allow_python=True)
    compute_guarded(ctx, out, 2)
    np.testing.assert_array_equal(out.numpy(), a.numpy() + np.float32(1))


def test_python_function_tasks_userdata_and_types():
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, random_values([6, 4], 1))
    h = gc.cpy(ctx, a, gc.new_tensor_2d(ctx, F16, 6, 4))
    seen = []
    lock = threading.Lock()

    def f(dst, x, y, ith, nth, userdata):
        assert dst.shape == (1, 1, 4, 6) and x.dtype == np.float32 and y.dtype == np.float16
        with lock:
            seen.append((ith, nth))
        lo, hi = ith * 4 // nth, (ith + 1) * 4 // nth
        dst[:, :, lo:hi] = x[:, :, lo:hi] * userdata["k"] + y[:, :, lo:hi]

    out = gc.map_custom2(ctx, a, h, f, gc.N_TASKS_MAX, {"k": 2.0}, allow_python=True)
    compute_guarded(ctx, [h, out], 4)
    assert sorted(seen) == [(i, 4) for i in range(4)]
    np.testing.assert_allclose(out.numpy(), a.numpy() * 2 + a.numpy().astype(np.float16), rtol=1e-6)


def test_failures_become_compute_errors():
    ctx = sentinel_context(1 << 16)
    pos = gc.from_numpy(ctx, np.array([1.0, 2.0], np.float32))
    neg = gc.from_numpy(ctx, np.array([-1.0, 2.0], np.float32))
    ok = gc.map_custom1(ctx, neg, raises, 1)
    compute_guarded(ctx, ok, 2)
    assert ok.numpy()[0] == 1.0
    bad = gc.map_custom1(ctx, pos, raises, 1)
    with pytest.raises(gc.ComputeError, match="MAP_CUSTOM1.*raises.*raised an exception"):
        gc.graph_compute_with_ctx(ctx, gc.build_forward(bad), 2)

    def boom(dst, x, ith, nth):
        raise KeyError("boom")

    pb = gc.map_custom1(ctx, pos, boom, 2, allow_python=True)
    with pytest.raises(gc.ComputeError, match="boom") as ei:
        gc.graph_compute_with_ctx(ctx, gc.build_forward(pb), 2)
    assert isinstance(ei.value.__cause__, KeyError)


def test_map_custom_build_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_1d(ctx, F32, 4)
    with pytest.raises(gc.GraphError, match="map_custom1: could not compile bad_types"):
        gc.map_custom1(ctx, a, bad_types, 1)
    with pytest.raises(gc.GraphError, match="n_tasks"):
        gc.map_custom1(ctx, a, scale3, 0)
    with pytest.raises(gc.GraphError, match="n_tasks"):
        gc.map_custom1(ctx, a, scale3, 1.5)
    with pytest.raises(gc.GraphError, match="userdata"):
        gc.map_custom1(ctx, a, scale3, 1, np.ones(3))
    with pytest.raises(gc.GraphError, match="map_custom3"):
        gc.map_custom3(ctx, a, a, None, fma3, 1)
    with pytest.raises(gc.GraphError, match="Context"):
        gc.map_custom1(None, a, scale3, 1)
    with pytest.raises(gc.GraphError, match="allow_python"):
        gc.map_custom1(ctx, a, scale3, 1, allow_python="yes")



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["custom"] for op in family_ops(m)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # inf and NaN through the Python functions
@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_custom_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
