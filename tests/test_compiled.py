"""gc.graph_compile: a graph planned once with a work buffer of its own, computed again and again,
re-planned when the graph changes."""
import numpy as np
import pytest

import graphcore as gc


def _mlp(ctx, rng):
    w = gc.from_numpy(ctx, rng.standard_normal((16, 32)).astype(np.float32))
    x = gc.from_numpy(ctx, rng.standard_normal((3, 32)).astype(np.float32))
    return w, x, gc.soft_max(ctx, gc.mul_mat(ctx, w, x))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_compute_matches_numpy_and_repeats(n_threads):
    rng = np.random.default_rng(0)
    ctx = gc.init(1 << 20)
    w, x, y = _mlp(ctx, rng)
    g = gc.build_forward(y)
    compiled = gc.graph_compile(g, n_threads)
    assert isinstance(compiled, gc.CompiledGraph) and compiled.plan.n_threads == n_threads
    assert compiled.work_size == compiled.plan.work_size
    for _ in range(3):
        w.numpy()[...] = rng.standard_normal((16, 32))
        assert compiled() == gc.STATUS_SUCCESS
        z = x.numpy() @ w.numpy().T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(y.numpy(), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert "CompiledGraph" in repr(compiled)


def test_replans_when_the_graph_grows():
    rng = np.random.default_rng(1)
    ctx = gc.init(1 << 20)
    w, x, y = _mlp(ctx, rng)
    g = gc.build_forward(y)
    compiled = gc.graph_compile(g, 2)
    compiled()
    first = compiled.plan
    z = gc.mul_mat(ctx, gc.new_tensor_2d(ctx, gc.TYPE_F16, 3, 64), gc.cont(ctx, gc.transpose(ctx, y)))
    gc.build_forward_expand(g, z)
    compiled.compute()
    assert compiled.plan is not first and compiled.plan.n_nodes == g.n_nodes
    assert compiled.work_data is None or compiled.work_data.nbytes >= compiled.plan.work_size
    # the plain API refuses the stale plan; the compiled graph re-planned itself
    with pytest.raises(gc.GraphError, match="changed since it was planned"):
        gc.graph_compute(g, first)


def test_debugging_arguments_pass_through():
    ctx = gc.init(1 << 20)
    a = gc.from_numpy(ctx, np.array([1.0, -1.0], np.float32))
    g = gc.build_forward(gc.log(ctx, a))
    compiled = gc.graph_compile(g, 1)
    seen = []
    assert compiled.compute(callback=lambda i, t: seen.append(i) or False) == gc.STATUS_SUCCESS
    assert seen == list(range(g.n_nodes))
    with pytest.raises(gc.NonFiniteError, match="LOG"):
        compiled.compute(check_finite=True)


def test_bad_n_threads_is_refused_by_the_planner():
    ctx = gc.init(1 << 16)
    g = gc.build_forward(gc.neg(ctx, gc.new_tensor_1d(ctx, gc.TYPE_F32, 2)))
    with pytest.raises(gc.GraphError, match="n_threads"):
        gc.graph_compile(g, "two")
