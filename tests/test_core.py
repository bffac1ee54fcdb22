"""Context, tensors, graphs, planner and executor: the engine's foundation."""
import threading

import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc


def test_context_arena_and_used_mem():
    with gc.init(1024) as ctx:
        assert gc.used_mem(ctx) == 0
        t = gc.new_tensor_1d(ctx, gc.TYPE_F32, 10)
        assert gc.used_mem(ctx) == 40
        u = gc.new_tensor_1d(ctx, gc.TYPE_F16, 3)
        assert u.data % 16 == 0 and u.data - t.data == 48  # aligned offsets
        assert gc.used_mem(ctx) == 48 + 6
    assert ctx.freed


def test_out_of_memory_names_bytes():
    ctx = gc.init(100)
    gc.new_tensor_1d(ctx, gc.TYPE_F32, 20)
    with pytest.raises(gc.OutOfMemoryError, match=r"asked for 40 bytes, 20 left of 100"):
        gc.new_tensor_1d(ctx, gc.TYPE_F32, 10)
    assert isinstance(gc.OutOfMemoryError("x"), MemoryError)


def test_callers_mem_buffer():
    buf = np.zeros(4096, dtype=np.uint8)
    ctx = gc.init(4096, mem_buffer=buf)
    t = gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)
    gc.set_f32(t, 2.5)
    assert np.frombuffer(buf[:16].tobytes(), dtype=np.float32).tolist() == [2.5] * 4
    with pytest.raises(gc.GraphError):
        gc.init(10, mem_buffer=np.zeros(4, dtype=np.float32))


def test_no_alloc_tensors_have_no_data():
    ctx = gc.init(1 << 16, no_alloc=True)
    a = gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)
    assert not a.has_data and a.data == 0 and gc.used_mem(ctx) == 0
    b = gc.neg(ctx, a)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, b)
    with pytest.raises(gc.GraphError, match="no data"):
        gc.graph_compute_with_ctx(ctx, g, 1)
    with pytest.raises(gc.GraphError, match="no data"):
        a.numpy()


def test_freed_context_is_refused():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, gc.neg(ctx, a))
    plan = gc.graph_plan(g, 1)
    gc.graph_compute(g, plan)           # the executor keeps its checks on the plan: freeing must undo that
    gc.free(ctx)
    with pytest.raises(gc.GraphError, match="freed"):
        gc.graph_compute(g, plan)
    with pytest.raises(gc.GraphError, match="freed"):
        gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)


def test_tensor_fields_and_properties():
    ctx = gc.init(1 << 16)
    t = gc.new_tensor_3d(ctx, gc.TYPE_F32, 4, 3, 2)
    assert t.ne == [4, 3, 2, 1] and t.nb == [4, 16, 48, 96]
    assert gc.nelements(t) == 24 and gc.nrows(t) == 6 and gc.nbytes(t) == 96
    assert gc.n_dims(t) == 3 and gc.element_size(t) == 4 and gc.type_size(gc.TYPE_F16) == 2
    assert gc.is_contiguous(t) and not gc.is_transposed(t) and not gc.is_permuted(t)
    assert t.op == gc.OP_NONE and t.src == [] and t.grad is None and t.view_src is None
    assert t.numpy().shape == (2, 3, 4)
    tt = gc.transpose(ctx, t)
    assert gc.is_transposed(tt) and gc.is_permuted(tt) and not gc.is_contiguous(tt)
    assert tt.view_src is t and tt.op == gc.OP_TRANSPOSE
    assert gc.can_repeat(gc.new_tensor_1d(ctx, gc.TYPE_F32, 4), t)
    assert not gc.can_repeat(gc.new_tensor_1d(ctx, gc.TYPE_F32, 3), t)
    gc.set_name(t, "x")
    assert gc.get_name(t) == "x"
    gc.format_name(t, "w_%d", 3)
    assert t.name == "w_3"
    assert gc.n_dims(gc.new_tensor_4d(ctx, gc.TYPE_F32, 1, 1, 1, 1)) == 1


def test_numpy_view_is_zero_copy_and_writable():
    ctx = gc.init(1 << 16)
    t = gc.new_tensor_2d(ctx, gc.TYPE_F32, 4, 3)
    v = t.numpy()
    v[...] = np.arange(12).reshape(3, 4)
    assert gc.get_f32_1d(t, 5) == 5.0
    gc.set_f32_1d(t, 5, -1)
    assert v[1, 1] == -1
    tt = gc.transpose(ctx, t)
    assert tt.numpy().shape == (4, 3) and tt.numpy()[1, 1] == -1
    assert np.shares_memory(tt.numpy(), v)


def test_from_numpy_types():
    ctx = gc.init(1 << 16)
    assert gc.from_numpy(ctx, np.zeros((2, 3))).type == gc.TYPE_F32
    assert gc.from_numpy(ctx, np.zeros(3, np.float16)).type == gc.TYPE_F16
    assert gc.from_numpy(ctx, np.arange(3)).type == gc.TYPE_I32
    with pytest.raises(gc.GraphError):
        gc.from_numpy(ctx, np.array([2**40]))
    with pytest.raises(gc.GraphError):
        gc.from_numpy(ctx, np.zeros((1, 1, 1, 1, 2), np.float32))
    with pytest.raises(gc.GraphError, match="unknown tensor type"):
        gc.new_tensor_1d(ctx, 99, 3)
    with pytest.raises(gc.GraphError, match=">= 1"):
        gc.new_tensor_2d(ctx, gc.TYPE_F32, 3, 0)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=40))
def test_element_access_all_types(values):
    ctx = gc.init(1 << 16)
    n = len(values)
    for typ in (gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32):
        t = gc.new_tensor_1d(ctx, typ, n)
        for i, v in enumerate(values):
            if typ == gc.TYPE_I32:
                if np.isfinite(v) and abs(v) < 2**31:
                    gc.set_i32_1d(t, i, int(v))
                    assert gc.get_i32_1d(t, i) == int(v)
            else:
                gc.set_f32_1d(t, i, v)
                with np.errstate(over="ignore"):
                    want = np.float32(v) if typ == gc.TYPE_F32 else np.float32(np.float16(v))
                got = gc.get_f32_1d(t, i)
                assert (np.isnan(want) and np.isnan(got)) or got == want


def test_element_access_on_permuted_views():
    ctx = gc.init(1 << 16)
    a = gc.from_numpy(ctx, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    p = gc.permute(ctx, a, 2, 0, 1, 3)           # ne [3, 2, 4]
    ref = np.transpose(a.numpy(), (1, 0, 2))     # numpy view of p: shape (4, 2, 3)
    ref = a.numpy().transpose(2, 0, 1)
    assert p.numpy().shape == ref.shape
    flat = [gc.get_f32_1d(p, i) for i in range(24)]
    assert flat == ref.reshape(-1).tolist()
    gc.set_f32(p, 7)
    assert (a.numpy() == 7).all()


def test_fp16_roundtrip_matches_numpy():
    bits = np.arange(65536, dtype=np.uint16)
    f = gc.fp16_to_fp32(bits)
    assert np.array_equal(np.isnan(f), np.isnan(bits.view(np.float16)))
    ok = ~np.isnan(f)
    assert np.array_equal(gc.fp32_to_fp16(f[ok]), bits[ok])


def test_graph_visit_order_leafs_and_nodes():
    ctx = gc.init(1 << 16)
    a = gc.set_name(gc.new_tensor_1d(ctx, gc.TYPE_F32, 4), "a")
    b = gc.set_name(gc.new_tensor_1d(ctx, gc.TYPE_F32, 4), "b")
    c = gc.add(ctx, gc.mul(ctx, a, b), gc.neg(ctx, a))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, c)
    assert [gc.op_name(n.op) for n in g.nodes] == ["MUL", "NEG", "ADD"]
    assert g.leafs == [a, b]
    n0 = g.n_nodes
    gc.build_forward_expand(g, c)             # nothing is added twice
    assert g.n_nodes == n0
    assert gc.graph_get_tensor(g, "a") is a and gc.graph_get_tensor(g, "zz") is None
    text = gc.graph_text(g)
    assert "n_nodes = 3" in text and "MUL" in text and "f32" in text
    d = gc.graph_dup(ctx, g)
    assert d.nodes == g.nodes and d.leafs == g.leafs and d is not g
    v = gc.graph_view(g, 1, 3)
    assert v.nodes == g.nodes[1:3]


def test_graph_size_limit_raises_and_leaves_graph_intact():
    ctx = gc.init(1 << 20)
    x = gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)
    t = x
    for _ in range(10):
        t = gc.neg(ctx, t)
    g = gc.new_graph_custom(ctx, 5, False)
    with pytest.raises(gc.GraphError, match="size 5"):
        gc.build_forward_expand(g, t)
    assert g.n_nodes == 0 and g.n_leafs == 0


def test_long_chain_needs_no_recursion():
    ctx = gc.init(1 << 22)
    x = gc.from_numpy(ctx, np.ones(2, np.float32))
    t = x
    for _ in range(5000):
        t = gc.add(ctx, t, x)
    g = gc.new_graph_custom(ctx, 8192, False)
    gc.build_forward_expand(g, t)
    gc.graph_compute_with_ctx(ctx, g, 2)
    assert t.numpy().tolist() == [5001.0, 5001.0]


def _big_graph(ctx):
    rng = np.random.default_rng(0)
    a = gc.from_numpy(ctx, rng.standard_normal((64, 1024)).astype(np.float32))
    b = gc.from_numpy(ctx, rng.standard_normal((1, 1024)).astype(np.float32))
    w = gc.from_numpy(ctx, rng.standard_normal((300, 1024)).astype(np.float32))
    h = gc.silu(ctx, gc.add(ctx, a, b))
    y = gc.mul_mat(ctx, w, h)
    return gc.sum(ctx, gc.sqr(ctx, y)), y


def test_plan_and_bitwise_identical_threads():
    ctx = gc.init(1 << 24)
    loss, y = _big_graph(ctx)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, loss)
    results = {}
    for nt in (1, 2, 3, 4):
        plan = gc.graph_plan(g, nt)
        assert plan.n_threads == nt and len(plan.n_tasks) == g.n_nodes
        assert max(plan.n_tasks) == nt                   # big nodes are split
        plan.work_data = np.empty(plan.work_size, np.uint8)
        assert gc.graph_compute(g, plan) == gc.STATUS_SUCCESS
        results[nt] = (loss.numpy().copy(), y.numpy().copy())
    for nt in (2, 3, 4):
        assert results[nt][0].tobytes() == results[1][0].tobytes()
        assert results[nt][1].tobytes() == results[1][1].tobytes()


def test_tiny_nodes_get_one_task():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_1d(ctx, gc.TYPE_F32, 16)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, gc.add(ctx, a, a))
    assert gc.graph_plan(g, 4).n_tasks.tolist() == [1]


def test_plan_misuse_is_refused():
    ctx = gc.init(1 << 24)
    loss, _ = _big_graph(ctx)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, loss)
    plan = gc.graph_plan(g, 2)
    assert plan.work_size > 0
    with pytest.raises(gc.GraphError, match="work buffer"):
        gc.graph_compute(g, plan)
    plan.work_data = np.empty(plan.work_size - 1, np.uint8)
    with pytest.raises(gc.GraphError, match="work_data holds"):
        gc.graph_compute(g, plan)
    plan.work_data = np.empty(plan.work_size, np.uint8)
    gc.graph_compute(g, plan)           # checked once, then kept: a new work_data is checked again
    plan.work_data = np.empty(plan.work_size - 1, np.uint8)
    with pytest.raises(gc.GraphError, match="work_data holds"):
        gc.graph_compute(g, plan)
    plan.work_data = None
    with pytest.raises(gc.GraphError, match="work buffer"):
        gc.graph_compute(g, plan)
    plan.work_data = np.empty(plan.work_size, np.uint8)
    gc.build_forward_expand(g, gc.neg(ctx, loss))
    with pytest.raises(gc.GraphError, match="changed since it was planned"):
        gc.graph_compute(g, plan)
    with pytest.raises(gc.GraphError):
        gc.graph_compute(g, "not a plan")


def test_concurrent_computes_from_python_threads():
    ctx = gc.init(1 << 24)
    loss, _ = _big_graph(ctx)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, loss)
    gc.graph_compute_with_ctx(ctx, g, 2)
    want = loss.numpy().copy()
    errors = []

    def worker():
        try:
            for _ in range(3):
                gc.graph_compute_with_ctx(ctx, g, 2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ths = [threading.Thread(target=worker) for _ in range(3)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    assert not errors
    assert loss.numpy().tobytes() == want.tobytes()


def test_empty_graph_computes():
    ctx = gc.init(1024)
    assert gc.graph_compute_with_ctx(ctx, gc.new_graph(ctx), 2) == gc.STATUS_SUCCESS


def test_tensor_repr_shows_values_once_computed_and_reading_early_warns():
    ctx = gc.init(1 << 20)
    a = gc.set_name(gc.from_numpy(ctx, np.arange(6, dtype=np.float32).reshape(2, 3)), "a")
    y = gc.scale(ctx, a, 2.0)
    assert "values=[[0., 1., 2.]," in repr(a) and "ne=[3, 2]" in repr(a)
    assert "not computed" in repr(y)
    with pytest.warns(gc.NotComputedWarning, match="has not been computed"):
        y.numpy()
    gc.graph_compute_with_ctx(ctx, gc.build_forward(y), 1)
    assert "10." in repr(y)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert y.numpy()[1, 2] == 10.0
        gc.view_1d(ctx, y, 3, 0).numpy()                  # a view of a computed node reads it quietly
    gc.free(ctx)
    assert "context freed" in repr(a)
