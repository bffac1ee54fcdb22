"""Debugging a compute (issue 18's executor part): graph_compute's per-node callback, check_finite
(and GRAPHCORE_CHECK_FINITE) and CPlan.abort_callback, at 1 and 2 threads."""
import os
import subprocess
import sys

import numpy as np
import pytest

import graphcore as gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chain(ctx, n=6):
    """x -> x+1 -> (x+1)*2 -> ... on a 64 x 512 tensor (big enough to split over 2 threads)."""
    x = gc.set_name(gc.from_numpy(ctx, np.arange(64 * 512, dtype=np.float32).reshape(64, 512) / 1000), "x")
    one = gc.new_f32(ctx, 1.0)
    t, want = x, x.numpy().astype(np.float64)
    for k in range(n):
        if k % 2:
            t, want = gc.scale(ctx, t, 2.0), want * 2
        else:
            t, want = gc.add1(ctx, t, one), want + 1
    return gc.build_forward(t), want


@pytest.mark.parametrize("n_threads", [1, 2])
def test_callback_sees_every_node_after_it_ran(n_threads):
    ctx = gc.init(16 << 20)
    g, want = chain(ctx)
    seen = []

    def cb(i, t):
        assert t is g.nodes[i]
        seen.append((i, t.numpy().copy()))

    plan = gc.graph_plan(g, n_threads)
    assert gc.graph_compute(g, plan, callback=cb) == gc.STATUS_SUCCESS
    assert [i for i, _ in seen] == list(range(g.n_nodes))
    for i, v in seen:           # each node's value, seen right after it ran, is its final value
        np.testing.assert_allclose(v, g.nodes[i].numpy(), rtol=0)
    np.testing.assert_allclose(seen[-1][1], want, rtol=1e-6)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_callback_returning_true_stops(n_threads):
    ctx = gc.init(16 << 20)
    g, _ = chain(ctx)
    for t in g.nodes:
        t.numpy4d()[...] = -7          # sentinels: nodes after the stop keep them
    plan = gc.graph_plan(g, n_threads)
    assert gc.graph_compute(g, plan, callback=lambda i, t: i == 2) == gc.STATUS_ABORTED
    assert not np.any(g.nodes[2].numpy() == -7)
    assert all(np.all(t.numpy4d() == -7) for t in g.nodes[3:])  # (raw bytes: these were never computed)
    assert gc.graph_compute(g, plan) == gc.STATUS_SUCCESS      # and the plan computes again in full
    assert not np.any(g.nodes[-1].numpy() == -7)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_abort_callback(n_threads):
    ctx = gc.init(16 << 20)
    g, _ = chain(ctx)
    calls = []
    plan = gc.graph_plan(g, n_threads)
    plan.abort_callback = lambda: calls.append(1) or len(calls) == 3
    for t in g.nodes:
        t.numpy4d()[...] = -7
    assert gc.graph_compute(g, plan) == gc.STATUS_ABORTED
    assert len(calls) == 3 and all(np.all(t.numpy4d() == -7) for t in g.nodes[3:])
    # ggml's form: the callback gets abort_callback_data
    plan = gc.graph_plan(g, n_threads)
    plan.abort_callback, plan.abort_callback_data = (lambda data: data["stop"]), {"stop": False}
    assert gc.graph_compute(g, plan) == gc.STATUS_SUCCESS


def test_callback_exception_propagates_and_the_graph_still_computes():
    ctx = gc.init(16 << 20)
    g, want = chain(ctx)
    plan = gc.graph_plan(g, 2)

    def cb(i, t):
        raise RuntimeError(f"at {i}")

    with pytest.raises(RuntimeError, match="at 0"):
        gc.graph_compute(g, plan, callback=cb)
    gc.graph_compute(g, plan)
    np.testing.assert_allclose(g.nodes[-1].numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_check_finite_names_the_first_bad_node(n_threads):
    ctx = gc.init(16 << 20)
    x = gc.set_name(gc.from_numpy(ctx, np.linspace(-1, 1, 64 * 512, dtype=np.float32).reshape(64, 512)), "x")
    h = gc.set_name(gc.sqr(ctx, x), "h")
    lg = gc.set_name(gc.log(ctx, gc.add1(ctx, x, gc.new_f32(ctx, 0.5))), "lg")      # log of a negative: NaN
    out = gc.set_name(gc.mul(ctx, lg, h), "out")
    g = gc.build_forward(out)
    with pytest.raises(gc.NonFiniteError) as ei:
        gc.graph_compute_with_ctx(ctx, g, n_threads, check_finite=True)
    e = ei.value
    assert e.node is lg and g.nodes[e.node_index] is lg
    # numpy's first non-finite element of log(x + 0.5), in memory order, as ggml's [i0, i1, i2, i3]
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.log(x.numpy() + np.float32(0.5))
    i1, i0 = np.argwhere(~np.isfinite(ref))[0]
    assert e.index == [i0, i1, 0, 0]
    msg = str(e)
    assert "'lg'" in msg and "LOG" in msg and "src[0]" in msg and f"{[int(i0), int(i1), 0, 0]}" in msg
    with pytest.warns(gc.NotComputedWarning):  # the compute stopped there: later nodes never ran
        assert np.all(out.numpy() == 0)
    # without the check the same graph computes (with NaNs), as ggml would
    assert gc.graph_compute_with_ctx(ctx, g, n_threads) == gc.STATUS_SUCCESS
    assert np.isnan(out.numpy()).any()


def test_check_finite_from_the_environment():
    code = ("import numpy as np, graphcore as gc\n"
            "ctx = gc.init(1 << 20)\n"
            "x = gc.from_numpy(ctx, np.array([1.0, 0.0, 2.0], np.float32))\n"
            "y = gc.set_name(gc.div(ctx, x, gc.sub(ctx, x, x)), 'ratio')\n"
            "try:\n"
            "    gc.graph_compute_with_ctx(ctx, gc.build_forward(y), 1)\n"
            "    print('computed')\n"
            "except gc.NonFiniteError as e:\n"
            "    print('refused', e.node.name, e.index)\n")
    for flag, want in (("1", "refused ratio [0, 0, 0, 0]"), ("0", "computed")):
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=ROOT, GRAPHCORE_CHECK_FINITE=flag))
        assert r.returncode == 0 and r.stdout.strip() == want, (r.stdout, r.stderr[-2000:])
