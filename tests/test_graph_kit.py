"""graphcore.testing's graph kit: the numpy reference interpreter (memory and float64 modes),
assert_graph_close and its reports, assert_gradients_close against the float64 reference, the
planner override that splits tiny nodes, and the types / tensors / graphs strategies."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphcore as gc
from graphcore.ops.registry import OPS
from graphcore.testing import (GraphMismatch, assert_gradients_close, assert_graph_close, evaluate, family_ops,
                               graphs, layouts, ne4, sentinel_context, shapes, small_tasks, tensors, types)
from graphcore.testing.strategies import make_tensor, Layout


def _arange(ctx, *shape, start=0.0):
    return gc.from_numpy(ctx, (np.arange(int(np.prod(shape)), dtype=np.float32) + start).reshape(shape))


# -- the README example ---------------------------------------------------------------------------------------
@given(data=st.data(), ne=shapes(min_dims=2, max_dims=2))
def test_readme_example(data, ne):
    ctx = sentinel_context(1 << 20)                      # arena filled with NaN sentinels
    w = data.draw(tensors(ctx, gc.TYPE_F32, [ne[0], 8], layouts(kinds=("contiguous", "strided"))))
    x = data.draw(tensors(ctx, gc.TYPE_F32, ne))         # any layout: permuted, transposed, strided
    y = gc.soft_max(ctx, gc.scale(ctx, gc.mul_mat(ctx, w, x), 0.5))
    assert_graph_close(y, n_threads=(1, 2, 4))            # each node against its numpy reference


# -- the interpreter ------------------------------------------------------------------------------------------
def test_evaluate_memory_mode_models_inplace_writes():
    ctx = sentinel_context(1 << 16)
    x = _arange(ctx, 2, 3)
    one = gc.new_f32(ctx, 1.0)
    y = gc.add1_inplace(ctx, x, one)          # writes over x's bytes
    z = gc.scale(ctx, x, 2.0)                 # computed after y: reads x + 1
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    gc.build_forward_expand(g, z)
    start = x.numpy().copy()
    ev = evaluate(g)
    assert np.array_equal(x.numpy(), start), "evaluate must not touch the graph's memory"
    assert np.array_equal(ev[z].reshape(2, 3), (start + 1) * 2)
    assert np.array_equal(ev.final(x).reshape(2, 3), start + 1)
    gc.graph_compute_with_ctx(ctx, g, 1)
    assert np.array_equal(z.numpy(), ev[z].reshape(2, 3))
    with pytest.raises(gc.GraphError, match="read after node"):
        evaluate(g, mode="float64")


def test_evaluate_cpy_converts_into_the_destination():
    ctx = sentinel_context(1 << 16)
    a = _arange(ctx, 3, 4, start=-5.7)
    b = gc.new_tensor_2d(ctx, gc.TYPE_I32, 6, 2)
    c = gc.cpy(ctx, gc.transpose(ctx, a), b)
    ev = evaluate(c)
    expected = np.trunc(a.numpy().T.reshape(-1)).astype(np.int32).reshape(2, 6)
    assert np.array_equal(ev[c].reshape(2, 6), expected)
    assert np.array_equal(ev.final(b).reshape(2, 6), expected)
    assert_graph_close(c)


def test_view_reference_knows_when_a_view_leaves_its_source():
    ctx = sentinel_context(1 << 16)
    parent = _arange(ctx, 3, 5)
    inner = gc.view_2d(ctx, parent, 3, 3, parent.nb[1], 4)          # columns 1..3
    gap = gc.view_1d(ctx, inner, 5, 0)                               # runs into column 4 (not inner's)
    ok = gc.view_2d(ctx, inner, 2, 2, parent.nb[1], 4)
    ev = evaluate([gap, ok])
    assert np.array_equal(ev[gap].ravel(), parent.numpy().ravel()[1:6])
    assert np.array_equal(ev[ok].reshape(2, 2), parent.numpy()[:2, 2:4])
    assert np.array_equal(evaluate(ok, mode="float64")[ok].reshape(2, 2), parent.numpy()[:2, 2:4])
    with pytest.raises(gc.GraphError, match="not a function of its source"):
        evaluate(gap, mode="float64")
    assert_graph_close([gap, ok])


def test_float64_mode_does_not_round():
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, np.float32([1.0, 3.0]))
    y = gc.div(ctx, gc.new_f32(ctx, 1.0), gc.new_f32(ctx, 3.0))
    assert evaluate(y)[y].ravel()[0] == np.float32(1 / 3)
    assert evaluate(y, mode="float64")[y].ravel()[0] == 1 / 3
    v = evaluate(gc.sum(ctx, a), mode="float64", values={a: np.array([0.5, 0.25])})
    assert v.nodes[-1].op == gc.OP_SUM and v[v.nodes[-1]].ravel()[0] == 0.75


# -- assert_graph_close ---------------------------------------------------------------------------------------
def _small_graph(ctx):
    a = _arange(ctx, 3, 4)
    b = gc.from_numpy(ctx, np.float32([1, 2, 3, 4]))
    y = gc.mul(ctx, gc.add(ctx, a, b), gc.permute(ctx, gc.transpose(ctx, a), 1, 0, 2, 3))
    return gc.sum_rows(ctx, y)


def test_assert_graph_close_passes_and_counts():
    ctx = sentinel_context(1 << 16)
    check = assert_graph_close(_small_graph(ctx), n_threads=(1, 2, 4), end_to_end=True)
    assert check.ops == {"ADD": 1, "TRANSPOSE": 1, "PERMUTE": 1, "MUL": 1, "SUM_ROWS": 1}
    assert check.n_computed == 3 and check.worst_nmse["MUL"] == 0.0


def test_assert_graph_close_names_the_first_diverging_node(monkeypatch):
    ctx = sentinel_context(1 << 16)
    out = _small_graph(ctx)
    mul = gc.BY_NAME["MUL"]
    right = mul.reference
    monkeypatch.setattr(mul, "reference", lambda node, srcs: right(node, srcs) * (1 + 1e-3))
    with pytest.raises(GraphMismatch) as ei:
        assert_graph_close(out)
    e = ei.value
    assert e.op == "MUL" and e.index == 3 and e.node is out.src[0]
    assert np.allclose(e.expected, e.actual * (1 + 1e-3))
    msg = str(e)
    for needle in ("first diverging node", "node 3 MUL", "ne=[4, 3, 1, 1]", "f32", "src[0]: ADD", "src[1]: PERMUTE",
                   "NMSE", "executor:", "reference:"):
        assert needle in msg, (needle, msg)


def test_assert_graph_close_catches_results_that_depend_on_the_thread_count():
    ctx = sentinel_context(1 << 16)

    def by_split(dst, a, ith, nth):
        if ith == 0:
            dst[...] = a + nth

    c = gc.map_custom1(ctx, _arange(ctx, 3, 4), by_split, gc.N_TASKS_MAX, allow_python=True)
    assert_graph_close(c, n_threads=(1,))
    with pytest.raises(GraphMismatch, match="n_threads=2 differs from n_threads=1"):
        assert_graph_close(c, n_threads=(1, 2))


def test_assert_graph_close_catches_writes_outside_a_node():
    ctx = sentinel_context(1 << 16)
    other = _arange(ctx, 4)

    def scribble(dst, a, ith, nth, victim):
        dst[...] = a
        victim[0, 0, 0, 1] = 7

    c = gc.map_custom1(ctx, _arange(ctx, 3, 4), scribble, 1, other.numpy4d(), allow_python=True)
    with pytest.raises(GraphMismatch, match="outside its own elements"):
        assert_graph_close(c, n_threads=(1,))


def test_assert_graph_close_accepts_tensors_and_reports_nan_placement():
    ctx = sentinel_context(1 << 16)
    x = gc.from_numpy(ctx, np.float32([4.0, -1.0, 0.0]))
    assert_graph_close([gc.sqrt(ctx, x), gc.log(ctx, x)])     # NaN and -inf in both


def test_small_tasks_splits_tiny_nodes():
    ctx = gc.init(1 << 16)
    y = gc.add(ctx, _arange(ctx, 4, 3), _arange(ctx, 4, 3))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    assert list(gc.graph_plan(g, 2).n_tasks) == [1]
    with small_tasks():
        assert list(gc.graph_plan(g, 2).n_tasks) == [2]
    assert list(gc.graph_plan(g, 2).n_tasks) == [1]


# -- gradients --------------------------------------------------------------------------------------------------
def _sqr_loss(ctx):
    p = _arange(ctx, 2, 3, start=-2.5)
    gc.set_param(ctx, p)
    loss = gc.sum(ctx, gc.mul(ctx, gc.sqr(ctx, p), _arange(ctx, 2, 3, start=1.0)))
    gf = gc.new_graph(ctx)
    gc.build_forward_expand(gf, loss)
    gb = gc.build_backward(ctx, gf)
    gc.graph_reset(gb)
    gc.set_f32(loss.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    return loss, p, gb


def test_assert_gradients_close():
    ctx = gc.init(1 << 20)
    loss, p, gb = _sqr_loss(ctx)
    report = assert_gradients_close(loss, [p], n_directions=2, per_param=6)        # the executor's p.grad
    assert report.checks == 8 and report.skipped == 0 and report.worst < 0.01
    report = assert_gradients_close(loss, [p], gb, n_directions=2, per_param=6)    # gb in float64
    assert report.checks == 8 and report.skipped == 0 and report.worst < 0.01


def test_assert_gradients_close_catches_a_wrong_rule(monkeypatch):
    ctx = gc.init(1 << 20)
    sqr = gc.BY_NAME["SQR"]

    def wrong(ctx_, t, g, d):     # 3 x g instead of 2 x g
        if d.needs(0):
            d.add(0, gc.scale(ctx_, gc.mul(ctx_, t.src[0], g), 3.0))

    monkeypatch.setattr(sqr, "backward", wrong)
    loss, p, gb = _sqr_loss(ctx)
    with pytest.raises(AssertionError, match="differs from finite differences"):
        assert_gradients_close(loss, [p])
    with pytest.raises(AssertionError, match="backward graph in float64"):
        assert_gradients_close(loss, [p], gb)


def test_assert_gradients_close_skips_kinks():
    ctx = gc.init(1 << 20)
    p = gc.from_numpy(ctx, np.float32([3e-5, 2e-3, 0.5]))
    gc.set_param(ctx, p)
    loss = gc.sum(ctx, gc.abs(ctx, p))
    gf = gc.new_graph(ctx)
    gc.build_forward_expand(gf, loss)
    gb = gc.build_backward(ctx, gf)
    gc.graph_reset(gb)
    gc.set_f32(loss.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    report = assert_gradients_close(loss, [p], n_directions=0, per_param=3)
    assert report.skipped == 1 and report.checks == 2       # |x| has a kink within eps of 3e-5


# -- strategies ---------------------------------------------------------------------------------------------------
@given(data=st.data(), type_=types(), ne=shapes())
def test_tensors_strategy(data, type_, ne):
    ctx = sentinel_context(1 << 16)
    t = data.draw(tensors(ctx, type_, ne, low=-3, high=3))
    assert t.type == type_ and t.ne == ne4(ne)
    v = t.numpy4d().astype(np.float64)
    assert np.isfinite(v).all() and (np.abs(v) <= 3).all()


@settings(max_examples=40)
@given(drawn=graphs(ops=["ADD", "MUL_MAT", "SOFT_MAX", "CPY"], max_nodes=5))
def test_graphs_strategy(drawn):
    allowed = {"ADD", "MUL_MAT", "SOFT_MAX", "CPY", "PERMUTE", "TRANSPOSE", "VIEW"}    # + leaves' layouts
    assert {OPS[n.op].name for n in drawn.nodes} <= allowed - {"PERMUTE", "TRANSPOSE", "VIEW"}
    assert {OPS[n.op].name for n in drawn.graph.nodes} <= allowed
    ids = {id(n) for n in drawn.graph.nodes}
    assert all(id(n) in ids for n in drawn.nodes)
    read = {id(s) for n in drawn.graph.nodes for s in n.src}
    assert drawn.outputs and not any(id(o) in read for o in drawn.outputs)
    assert "graph nodes" in repr(drawn)


@settings(max_examples=25)
@given(drawn=graphs(max_nodes=4, backward=True))
def test_graphs_strategy_backward(drawn):
    assert drawn.loss.type == gc.TYPE_F32 and gc.nelements(drawn.loss) == 1
    assert drawn.backward_graph.n_nodes >= drawn.graph.n_nodes
    for p in drawn.params:
        assert p.flags & gc.FLAG_PARAM and p.type == gc.TYPE_F32 and p.grad is not None
    assert not any(n.view_src is not None and OPS[n.op].kernel is not None and n.op != gc.OP_CPY
                   for n in drawn.graph.nodes), "no in-place forms in a graph to differentiate"


def test_family_ops_and_first():
    assert family_ops("matmul") == ["MUL_MAT", "OUT_PROD"]
    assert family_ops(gc.ops.norm) == ["NORM", "RMS_NORM", "RMS_NORM_BACK"]

    @settings(max_examples=5)
    @given(drawn=graphs(ops=["ADD"], first="ARGMAX", max_nodes=1))
    def only_argmax(drawn):
        assert [OPS[n.op].name for n in drawn.nodes] == ["ARGMAX"]
    only_argmax()


def test_make_tensor_layout_kinds_cover_views():
    ctx = sentinel_context(1 << 16)
    t = make_tensor(ctx, [3, 2], Layout("strided", pad=(1, 1, 0, 0), start=(1, 0, 0, 0)), np.ones((2, 3)))
    assert_graph_close(gc.sum(ctx, t))
