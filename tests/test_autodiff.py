"""Autodiff as ggml does it: set_param, build_backward(_expand) with add-or-set accumulation,
keep, graph_reset, gradients as ordinary graph nodes; errors for ops without a rule and for
gradients that would read bytes an in-place op wrote over; the same bits for 1 and 2 threads."""
import numpy as np
import pytest

import graphcore as gc
from graphcore.testing import check_gradients


def rand(ctx, *ne, seed=0, lo=-1.0, hi=1.0):
    """A tensor of ggml shape ne (numpy shape ne reversed) with uniform values."""
    return gc.from_numpy(ctx, np.random.default_rng(seed).uniform(lo, hi, ne[::-1]).astype(np.float32))


def backward(ctx, f, keep=False, n_threads=1):
    """Forward and backward graphs of the scalar f, computed with f's gradient seeded to 1."""
    gf = gc.new_graph_custom(ctx, 2048, True)
    gc.build_forward_expand(gf, f)
    gb = gc.graph_dup(ctx, gf)
    gc.build_backward_expand(ctx, gf, gb, keep)
    gc.graph_reset(gb)
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, n_threads)
    return gf, gb


def ops(g):
    return [gc.op_name(n.op) for n in g.nodes]


# -- set_param ----------------------------------------------------------------------------------------------
def test_set_param_gives_a_zero_gradient():
    ctx = gc.init(1 << 20)
    w = rand(ctx, 3, 4)
    gc.set_name(w, "w")
    assert w.grad is None and not w.flags & gc.FLAG_PARAM
    gc.set_param(ctx, w)
    assert w.flags & gc.FLAG_PARAM
    assert w.grad.ne == w.ne and w.grad.type == gc.TYPE_F32 and w.grad.name == "w (grad)"
    assert np.all(w.grad.numpy() == 0)
    g0 = w.grad
    gc.set_param(ctx, w)                              # twice: nothing changes
    assert w.grad is g0
    with pytest.raises(gc.GraphError, match="set_param"):
        gc.set_param(ctx, gc.new_i32(ctx, 3))
    with pytest.raises(gc.GraphError, match="set_param"):
        gc.set_param(ctx, np.zeros(3))


def test_params_are_nodes_and_gradients_are_made_for_what_depends_on_them():
    ctx = gc.init(1 << 20)
    w, x, c = rand(ctx, 4, 3), rand(ctx, 4, 5, seed=1), rand(ctx, 3, 5, seed=2)
    gc.set_param(ctx, w)
    y = gc.mul_mat(ctx, w, x)
    f = gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, c, y)))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, f)
    # as ggml's visit: a parameter has a gradient, so it is a node; x and c are leafs
    assert w in gf.nodes and x in gf.leafs and c in gf.leafs
    assert ops(gf) == ["NONE", "MUL_MAT", "SUB", "SQR", "SUM"]
    assert y.grad is None                             # made when the backward graph is built
    gb = gc.build_backward(ctx, gf, False)
    assert gb.grads is not None and gb.nodes[:gf.n_nodes] == gf.nodes
    for i, n in enumerate(gf.nodes):
        assert n.grad is not None and gf.grads[i] is not None and gf.grads[i].op == gc.OP_NONE
    assert x.grad is None and c.grad is None
    # ggml's rules, node for node: sum -> repeat, sqr -> mul, scale, sub -> neg, mul_mat -> out_prod
    assert ops(gb)[gf.n_nodes:] == ["REPEAT", "MUL", "SCALE", "NEG", "OUT_PROD"]
    assert w.grad is gb.nodes[-1]
    text = gc.graph_text(gb)
    assert "OUT_PROD" in text


def test_gradient_values_of_a_small_problem():
    ctx = gc.init(1 << 20)
    w, x, c = rand(ctx, 4, 3), rand(ctx, 4, 5, seed=1), rand(ctx, 3, 5, seed=2)
    gc.set_param(ctx, w)
    gc.set_param(ctx, x)
    f = gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, c, gc.mul_mat(ctx, w, x))))
    backward(ctx, f)
    W, X, C = (t.numpy().astype(np.float64) for t in (w, x, c))
    R = C - X @ W.T                                   # mul_mat(w, x)[n, m] = sum_k w[m, k] x[n, k]
    assert np.allclose(w.grad.numpy(), -2 * R.T @ X, atol=1e-5)
    assert np.allclose(x.grad.numpy(), -2 * R @ W, atol=1e-5)
    assert abs(gc.get_f32_1d(f, 0) - (R ** 2).sum()) < 1e-4


# -- accumulation --------------------------------------------------------------------------------------------
def test_a_parameter_used_twice_accumulates():
    ctx = gc.init(1 << 20)
    a = rand(ctx, 3, 4)
    b = rand(ctx, 3, 4, seed=1)
    gc.set_param(ctx, a)
    f = gc.sum(ctx, gc.add(ctx, gc.mul(ctx, a, a), gc.mul(ctx, a, b)))    # a^2 + a b
    backward(ctx, f)
    assert np.allclose(a.grad.numpy(), 2 * a.numpy() + b.numpy(), atol=1e-6)
    assert a.grad.op == gc.OP_ADD                     # later contributions are added to the first
    check_gradients(lambda c, a: gc.mul(c, a, gc.mul(c, a, b)), [a], 1e-3, 1e-3, np.inf)


def test_a_seeded_gradient_passed_on_unchanged_still_accumulates():
    """add passes the root's (seeded) gradient on as it is; the next contribution to the same
    tensor must be added to it (ggml takes any initial gradient for zero and drops it)."""
    ctx = gc.init(1 << 20)
    a = rand(ctx, 3, 4)
    gc.set_param(ctx, a)
    y = gc.add(ctx, gc.sqr(ctx, a), a)                 # a residual connection at the root
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, y)
    gb = gc.build_backward(ctx, gf, False)
    gc.graph_reset(gb)
    gc.set_f32(y.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    assert np.allclose(a.grad.numpy(), 2 * a.numpy() + 1, atol=1e-6)
    check_gradients(lambda c, a: gc.add(c, gc.sqr(c, a), a), [a], 1e-3, 1e-3, 2e-3)


def test_a_parameter_used_twice_in_one_node_and_through_broadcast():
    ctx = gc.init(1 << 20)
    a = rand(ctx, 3, 4)
    r = rand(ctx, 3, 1, seed=3)
    check_gradients(lambda c, a, r: gc.add(c, gc.mul(c, a, a), gc.mul(c, gc.repeat(c, r, a), r)), [a, r],
                    1e-3, 1e-3, 1e-3)
    check_gradients(lambda c, a: gc.mul_mat(c, a, a), [a], 1e-3, 1e-3, np.inf)


def test_params_reached_through_views_and_reshapes():
    ctx = gc.init(1 << 20)
    a = rand(ctx, 6, 4)

    def build(c, a):
        top = gc.view_2d(c, a, 6, 2, a.nb[1], 0)                  # rows 0, 1
        rows = gc.view_2d(c, a, 3, 3, a.nb[1], 2 * a.nb[0] + a.nb[1])   # 3 elements of rows 1..3
        t = gc.reshape_1d(c, gc.cont(c, gc.transpose(c, top)), 12)
        return gc.add(c, gc.sum_rows(c, gc.sqr(c, rows)), gc.sum(c, gc.mul(c, t, t)))

    check_gradients(build, [a], 1e-3, 1e-3, np.inf)


# -- keep, graph_reset ---------------------------------------------------------------------------------------
def _problem(ctx):
    a = rand(ctx, 5, 3)
    gc.set_param(ctx, a)
    f = gc.sum(ctx, gc.sqr(ctx, gc.mul(ctx, a, a)))       # sum a^4, gradient 4 a^3
    return a, f


def test_keep_true_starts_from_fresh_gradients_and_leaves_earlier_ones_alone():
    ctx = gc.init(1 << 20)
    a, f = _problem(ctx)
    want = 4 * a.numpy().astype(np.float64) ** 3
    gf = gc.new_graph_custom(ctx, 256, True)
    gc.build_forward_expand(gf, f)
    first_zero = a.grad
    gb1 = gc.build_backward(ctx, gf, True)
    g1, seed1 = a.grad, f.grad
    ia = gf.nodes.index(a)
    assert g1 is not first_zero and gf.grads[ia] is not first_zero   # keep: a fresh zero gradient
    gb2 = gc.build_backward(ctx, gf, True)
    g2, seed2 = a.grad, f.grad
    assert g2 is not g1 and seed2 is not seed1         # every gradient is fresh, the loss's too
    for gb, g, seed in ((gb1, g1, seed1), (gb2, g2, seed2), (gb1, g1, seed1)):
        gc.graph_reset(gb)
        gc.set_f32(seed, 1.0)
        gc.graph_compute_with_ctx(ctx, gb, 1)
        assert np.allclose(g.numpy(), want, rtol=1e-5)
    assert g1 not in gb2.nodes                         # the first backward graph survives untouched


def test_keep_false_builds_on_the_gradients_already_there():
    """ggml's semantics: without keep, the gradients in the tensors' grad fields are the starting
    point, so a second backward build adds to every node's old gradient expression: with
    f = sum(sqr(a*a)) each of the three levels doubles it (2 * 2 * (2a^3 + 2a^3) = 4 * 4a^3)."""
    ctx = gc.init(1 << 20)
    a, f = _problem(ctx)
    want = 4 * a.numpy().astype(np.float64) ** 3
    gf = gc.new_graph_custom(ctx, 256, True)
    gc.build_forward_expand(gf, f)
    zero = a.grad
    gb = gc.build_backward(ctx, gf, False)
    assert gf.grads[gf.nodes.index(a)] is zero         # no keep: the forward graph's gradient tensors are used
    gc.graph_reset(gb)
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    assert np.allclose(a.grad.numpy(), want, rtol=1e-5)
    gb2 = gc.build_backward(ctx, gf, False)
    gc.graph_reset(gb2)
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb2, 1)
    assert np.allclose(a.grad.numpy(), 4 * want, rtol=1e-5)


def test_graph_reset_zeroes_gradients_and_nothing_else():
    ctx = gc.init(1 << 20)
    a = rand(ctx, 6, 4)
    gc.set_param(ctx, a)
    v = gc.view_2d(ctx, a, 6, 2, a.nb[1], a.nb[1])      # its backward reads a zero gradient (acc)
    f = gc.sum(ctx, gc.sqr(ctx, v))
    gf, gb = backward(ctx, f)
    before = a.numpy().copy()
    fval = gc.get_f32_1d(f, 0)
    grads = [g for g in gb.grads if g is not None]
    assert grads and all(g.op == gc.OP_NONE for g in grads)
    for g in grads:
        gc.set_f32(g, np.nan)                          # garbage a reset must clear
    gc.graph_reset(gb)
    for g in grads:
        assert np.all(g.numpy() == 0)
    assert np.array_equal(a.numpy(), before) and gc.get_f32_1d(f, 0) == fval
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    want = np.zeros((4, 6))
    want[1:3] = 2 * before[1:3]
    assert np.allclose(a.grad.numpy(), want, atol=1e-6)
    with pytest.raises(gc.GraphError, match="graph_reset"):
        gc.graph_reset(gc.new_graph(ctx))


def test_same_bits_for_one_and_two_threads():
    ctx = gc.init(64 << 20)
    w = rand(ctx, 256, 96, seed=1)
    x = rand(ctx, 256, 200, seed=2)
    b = rand(ctx, 96, 1, seed=3)
    for t in (w, x, b):
        gc.set_param(ctx, t)
    h = gc.gelu(ctx, gc.add(ctx, gc.mul_mat(ctx, w, x), gc.repeat(ctx, b, gc.new_tensor_2d(ctx, gc.TYPE_F32, 96, 200))))
    f = gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, h, gc.mean(ctx, h))))
    gf = gc.new_graph_custom(ctx, 256, True)
    gc.build_forward_expand(gf, f)
    gb = gc.build_backward(ctx, gf, True)
    results = []
    for n_threads in (1, 2):
        gc.graph_reset(gb)
        gc.set_f32(f.grad, 1.0)
        plan = gc.graph_plan(gb, n_threads)
        if n_threads == 2:
            assert max(plan.n_tasks) == 2             # some nodes really are split
        gc.graph_compute_with_ctx(ctx, gb, n_threads)
        results.append([t.grad.numpy().copy() for t in (w, x, b)])
    for g1, g2 in zip(*results):
        assert np.array_equal(g1.view(np.uint32), g2.view(np.uint32))


# -- ops without a rule, non-differentiable ops, in-place ops ---------------------------------------------------
def test_an_op_without_a_rule_raises_only_when_a_gradient_must_pass(monkeypatch):
    ctx = gc.init(1 << 20)
    monkeypatch.setattr(gc.BY_NAME["SQR"], "backward", None)
    a, c = rand(ctx, 3), rand(ctx, 3, seed=1)
    gc.set_param(ctx, a)
    # sqr of a constant: nothing has to pass through it
    f = gc.sum(ctx, gc.add(ctx, a, gc.sqr(ctx, c)))
    backward(ctx, f)
    assert np.allclose(a.grad.numpy(), 1.0)
    # nor on a side branch that the loss does not depend on (here expanded before the loss)
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, gc.sqr(ctx, a))
    f = gc.sum(ctx, gc.scale(ctx, a, 2.0))
    gc.build_forward_expand(gf, f)
    gb = gc.build_backward(ctx, gf, True)
    gc.graph_reset(gb)
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    assert np.allclose(a.grad.numpy(), 2.0)
    # but through sqr to the loss it must pass
    f = gc.sum(ctx, gc.sqr(ctx, a))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, f)
    with pytest.raises(gc.GraphError, match="SQR"):
        gc.build_backward(ctx, gf, True)


# ops whose rule tests/test_gradients_core.py, tests/test_gradients_nn.py (and tests/test_flash_attn.py)
# check by finite differences
GRADIENT_TESTED = {
    "ADD", "SUB", "MUL", "DIV", "ADD1", "SCALE", "SQR", "SQRT", "LOG", "NEG", "ABS", "RELU", "GELU", "SILU",
    "GELU_BACK", "DUP", "CPY", "CONT", "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "SUM", "SUM_ROWS", "MEAN",
    "REPEAT", "REPEAT_BACK", "MUL_MAT", "OUT_PROD", "NORM", "RMS_NORM", "RMS_NORM_BACK", "DIAG_MASK_INF",
    "DIAG_MASK_ZERO", "SOFT_MAX", "SOFT_MAX_BACK", "ROPE", "ROPE_BACK", "GET_ROWS", "GET_ROWS_BACK", "DIAG",
    "SET", "ACC", "TANH", "ELU", "GELU_QUICK", "LEAKY_RELU", "CLAMP", "SILU_BACK", "CROSS_ENTROPY_LOSS",
    "FLASH_ATTN",
}


def test_every_rule_has_a_gradient_test():
    with_rule = {op.name for op in gc.OPS if callable(op.backward)}
    assert with_rule <= GRADIENT_TESTED, f"rules without a finite-difference test: {sorted(with_rule - GRADIENT_TESTED)}"


def test_every_op_decides_its_gradient():
    """Each op has a backward rule or is marked NOT_DIFFERENTIABLE; only these have none yet."""
    undecided = {op.name for op in gc.OPS if op.backward is None}
    assert undecided <= {"CROSS_ENTROPY_LOSS_BACK", "MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3",
                         "FLASH_ATTN_BACK"}, undecided
    for op in gc.OPS:
        assert op.backward in (None, gc.NOT_DIFFERENTIABLE, gc.ZERO_GRADIENT) or callable(op.backward), op.name


def test_non_differentiable_ops_pass_no_gradient():
    ctx = gc.init(1 << 20)
    a = rand(ctx, 4, 3)
    gc.set_param(ctx, a)
    idx = gc.argmax(ctx, a)                            # integer result: no gradient, no error
    s = gc.step(ctx, a)
    f = gc.sum(ctx, gc.add(ctx, gc.mul(ctx, s, a), gc.sgn(ctx, a)))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, f)
    gc.build_forward_expand(gf, idx)
    gb = gc.build_backward(ctx, gf, True)
    assert idx.grad is None and s.grad is not None      # step takes a gradient but passes zeros on
    gc.graph_reset(gb)
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    assert np.allclose(a.grad.numpy(), (a.numpy() > 0).astype(np.float32))
    assert gc.BY_NAME["ARGMAX"].backward is gc.NOT_DIFFERENTIABLE
    for op in ("SGN", "STEP"):
        assert gc.BY_NAME[op].backward is gc.ZERO_GRADIENT


def test_piecewise_constant_ops_give_a_zero_gradient():
    """A loss made only of sgn/step still has f.grad (ggml, PyTorch and JAX give zeros)."""
    ctx = gc.init(1 << 20)
    a = rand(ctx, 4, 3)
    gc.set_param(ctx, a)
    f = gc.sum(ctx, gc.add(ctx, gc.sgn(ctx, a), gc.step(ctx, a)))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, f)
    gb = gc.build_backward(ctx, gf, True)
    assert f.grad is not None and a.grad is not None
    a.grad.numpy()[...] = 7.0
    gc.graph_reset(gb)
    gc.set_f32(f.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    assert np.array_equal(a.grad.numpy(), np.zeros((3, 4), np.float32))


def test_in_place_ops():
    ctx = gc.init(1 << 20)
    a, b = rand(ctx, 4, 3), rand(ctx, 4, 3, seed=1)
    # add_inplace's gradient needs no overwritten value; relu_inplace's rule reads its result
    check_gradients(lambda c, a, b: gc.relu_inplace(c, gc.add_inplace(c, gc.sqr(c, a), b)), [a, b],
                    1e-3, 1e-3, np.inf)
    # mul_inplace overwrites x = sqr(a), which b's gradient needs
    gc.set_param(ctx, b)
    x = gc.sqr(ctx, a)
    f = gc.sum(ctx, gc.mul_inplace(ctx, x, b))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, f)
    with pytest.raises(gc.GraphError, match="MUL.*in-place|in-place.*MUL"):
        gc.build_backward(ctx, gf, True)


def test_bad_arguments():
    ctx = gc.init(1 << 20)
    with pytest.raises(gc.GraphError, match="no nodes"):
        gc.build_backward_expand(ctx, gc.new_graph_custom(ctx, 8, True), gc.new_graph_custom(ctx, 8, True), False)
    with pytest.raises(gc.GraphError):
        gc.build_backward(ctx, "not a graph", False)
    a = rand(ctx, 3, 3)
    gc.set_param(ctx, a)
    f = gc.sum(ctx, gc.mul_mat(ctx, a, a))
    gf = gc.new_graph_custom(ctx, 6, True)
    gc.build_forward_expand(gf, f)
    with pytest.raises(gc.GraphError, match="size"):
        gc.build_backward(ctx, gf, True)              # 3 forward + 5 backward nodes do not fit in 6


def test_check_gradients_reports_the_worst_element(monkeypatch):
    ctx = gc.init(1 << 20)
    a = rand(ctx, 3, 2)
    flags, grad = a.flags, a.grad
    before = a.numpy().copy()
    res = check_gradients(lambda c, a: gc.sqr(c, a), [a])
    assert res.ok and res.max_abs_err < 1e-3
    assert a.flags == flags and a.grad is grad and np.array_equal(a.numpy(), before)

    # a wrong rule: sqr's gradient without the factor 2
    def wrong(c, t, g, d):
        if d.needs(0):
            d.add(0, gc.mul(c, t.src[0], g))

    monkeypatch.setattr(gc.BY_NAME["SQR"], "backward", wrong)
    with pytest.raises(AssertionError, match="worst element: param 0") as e:
        check_gradients(lambda c, a: gc.sum(c, gc.sqr(c, a)), [a])
    assert "analytic" in str(e.value) and "numeric" in str(e.value)
    res = check_gradients(lambda c, a: gc.sum(c, gc.sqr(c, a)), [a], raise_on_failure=False)
    assert not res.ok and res.worst["abs_err"] == res.max_abs_err
    assert np.array_equal(a.numpy(), before)
