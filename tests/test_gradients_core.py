"""Gradients of the core ops (elementwise, layout, reductions, matrix products) against central
finite differences, through gc.testing.check_gradients: 1-4 dims, sizes including 1, inputs
laid out contiguous, permuted, transposed or as strided views (the parameter is the tensor
owning the data, so the view op's gradient is checked too), broadcast operands.

Tolerances (atol, rtol) are at least as strict as ggml's test-grad0 table (BABY_LLAMA.md); with
check_gradients' random output weights in [0.5, 1.5], gradients stay away from zero, so the
relative test is meaningful where the table has one. The step eps is test-grad0's 1e-3, or 1e-2
for functions of degree <= 2 in each input element (add, sub, mul, add1, mul_mat, out_prod, repeat),
whose central differences are exact: the larger step only shrinks float32 rounding noise, which
grows with the number of broadcast tiles a gradient sums.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc
from graphcore.testing import (broadcastable_pairs, check_gradients, layouts, make_tensor, matmul_pairs,
                               random_values, seeds, shapes)

INF = math.inf


# -- inputs: a parameter owning the data, and the op that lays it out as the test's layout ----------------------
def param_input(ctx, ne, layout, values):
    """(leaf tensor to use as the parameter, fn(ctx, leaf) -> the laid-out tensor of shape ne)."""
    t = make_tensor(ctx, ne, layout, values)
    if t.op == gc.OP_NONE:
        return t, lambda c, p: p
    leaf = t.src[0]
    if t.op == gc.OP_PERMUTE:
        axes = [int(x) for x in t.op_params[:4]]
        return leaf, lambda c, p: gc.permute(c, p, *axes)
    if t.op == gc.OP_TRANSPOSE:
        return leaf, lambda c, p: gc.transpose(c, p)
    assert t.op == gc.OP_VIEW
    ne4, nb, offs = list(t.ne), list(t.nb), int(t.op_params[0])
    return leaf, lambda c, p: gc.view_4d(c, p, *ne4, nb[1], nb[2], nb[3], offs)


def away_from_zero(x, margin=0.05):
    """x pushed away from 0 (where abs, relu, sgn, step have no derivative)."""
    return (np.sign(x) + (x == 0)) * (np.abs(x) + margin)


# -- unary functions: name -> (build(ctx, x), value range, eps, atol, rtol, push away from 0) -------------------
UNARY = {
    # test-grad0: sqr 1e-3/1e-3/inf, sqrt 1e-3/2e-2/0.1, log 1e-3/inf/0.1, neg/sgn/step 1e-3/1e-3/1e-3,
    # relu 1e-3/1e-3/inf, silu 1e-3/0.5/inf; abs, gelu never ran there
    "sqr": (gc.sqr, (-1, 1), 1e-3, 1e-3, INF, False),
    "sqrt": (gc.sqrt, (0.1, 1), 1e-3, 1e-3, 1e-2, False),
    "log": (gc.log, (0.1, 1), 1e-3, 1e-3, 1e-2, False),
    "neg": (gc.neg, (-1, 1), 1e-3, 1e-3, 1e-3, False),
    "abs": (gc.abs, (-1, 1), 1e-3, 1e-3, 1e-3, True),
    "sgn": (gc.sgn, (-1, 1), 1e-3, 1e-3, 1e-3, True),
    "step": (gc.step, (-1, 1), 1e-3, 1e-3, 1e-3, True),
    "relu": (gc.relu, (-1, 1), 1e-3, 1e-3, INF, True),
    "gelu": (gc.gelu, (-3, 3), 1e-3, 1e-3, INF, False),
    "silu": (gc.silu, (-3, 3), 1e-3, 1e-3, INF, False),
    "scale": (lambda c, x: gc.scale(c, x, -1.7), (-1, 1), 1e-3, 1e-3, 1e-3, False),
    "cont": (gc.cont, (-1, 1), 1e-3, 1e-3, 1e-3, False),
    "dup": (gc.dup, (-1, 1), 1e-3, 1e-3, 1e-3, False),
    "sum_rows": (gc.sum_rows, (-1, 1), 1e-3, 1e-3, 1e-3, False),
    "mean": (gc.mean, (-1, 1), 1e-3, 1e-3, 1e-3, False),
    "transpose": (gc.transpose, (-1, 1), 1e-3, 1e-3, 1e-3, False),
}


@pytest.mark.parametrize("name", list(UNARY))
@given(ne=shapes(max_side=4), layout=layouts(), seed=seeds())
def test_unary(name, ne, layout, seed):
    fn, (lo, hi), eps, atol, rtol, kink = UNARY[name]
    ctx = gc.init(1 << 20)
    x = random_values(ne, seed, lo, hi)
    if kink:
        x = away_from_zero(x)
    p, lay = param_input(ctx, ne, layout, x)
    res = check_gradients(lambda c, p: fn(c, lay(c, p)), [p], eps, atol, rtol)
    if name in ("sgn", "step"):            # not differentiable: no gradient flows, and none is needed
        assert np.all(res.analytic[0] == 0) and np.all(np.abs(res.numeric[0]) < 1e-3)


@given(ne=shapes(max_side=4), layout=layouts(), seed=seeds())
def test_sum(ne, layout, seed):
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, random_values(ne, seed))
    check_gradients(lambda c, p: gc.sum(c, lay(c, p)), [p], 1e-3, 1e-3, 1e-3)


@given(ne=shapes(max_side=4), seed=seeds(), perm=st.permutations([0, 1, 2, 3]))
def test_reshape_permute(ne, seed, perm):
    ctx = gc.init(1 << 20)
    p = gc.from_numpy(ctx, random_values(ne, seed))
    n = gc.nelements(p)

    def build(c, p):
        r = gc.reshape_4d(c, p, *(list(reversed(p.ne))))      # same count, other shape
        q = gc.permute(c, r, *perm)
        return gc.reshape_1d(c, gc.cont(c, q), n)              # reshape of a contiguous copy

    check_gradients(build, [p], 1e-3, 1e-3, 1e-3)


@given(ne=shapes(max_side=4), layout=layouts(), seed=seeds())
def test_cpy_into_other_shape(ne, layout, seed):
    """cpy copies in row-major order into a differently shaped destination; the destination,
    overwritten, gets no gradient."""
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, random_values(ne, seed))
    n = int(np.prod(ne))
    dst = gc.from_numpy(ctx, random_values([n], seed + 1))
    check_gradients(lambda c, p: gc.cpy(c, lay(c, p), gc.reshape_2d(c, dst, 1, n)), [p], 1e-3, 1e-3, 1e-3)
    res = check_gradients(lambda c, d: gc.cpy(c, lay(c, p), d), [dst], 1e-3, 1e-3, 1e-3)
    assert np.all(res.analytic[0] == 0)


# -- binary ops with src1 tiled over src0 (ggml aborts on these) ------------------------------------------------
BINARY = {
    # test-grad0: add 1e-3/2e-3/2e-3, sub 1e-3/1e-3/1e-3, mul 1e-3/1e-3/inf, div 1e-3/0.1/0.1 (inputs 0.5-1)
    "add": (gc.add, (-1, 1), 1e-2, 1e-3, 2e-3),
    "sub": (gc.sub, (-1, 1), 1e-2, 1e-3, 1e-3),
    "mul": (gc.mul, (-1, 1), 1e-2, 1e-3, INF),
    "div": (gc.div, (0.5, 1), 1e-3, 1e-3, 1e-2),
}


@pytest.mark.parametrize("name", list(BINARY))
@given(pair=broadcastable_pairs(max_side=4), la=layouts(), lb=layouts(), seed=seeds())
def test_binary_broadcast(name, pair, la, lb, seed):
    fn, (lo, hi), eps, atol, rtol = BINARY[name]
    ne_a, ne_b = pair
    if name == "div":
        # b's gradient sums one term per tile, each with the same-signed truncation error of
        # 1/b's central difference: atol grows with the tiles (at most 81 here: 0.081 < ggml's 0.1)
        atol *= int(np.prod(ne_a)) // int(np.prod(ne_b))
    ctx = gc.init(1 << 20)
    a, lay_a = param_input(ctx, ne_a, la, random_values(ne_a, seed, lo, hi))
    b, lay_b = param_input(ctx, ne_b, lb, random_values(ne_b, seed + 1, lo, hi))
    check_gradients(lambda c, a, b: fn(c, lay_a(c, a), lay_b(c, b)), [a, b], eps, atol, rtol)


@given(ne=shapes(max_side=4), seed=seeds())
def test_add1_takes_the_sum(ne, seed):
    """add1's gradient for b is the sum of the output gradient (ggml takes the mean)."""
    ctx = gc.init(1 << 20)
    a = gc.from_numpy(ctx, random_values(ne, seed))
    b = gc.from_numpy(ctx, random_values([1], seed + 1))
    res = check_gradients(lambda c, a, b: gc.add1(c, a, b), [a, b], 1e-2, 1e-3, 2e-3)
    assert abs(res.analytic[1].sum() - res.numeric[1].sum()) < 1e-3


@given(pair=broadcastable_pairs(max_side=3), layout=layouts(), seed=seeds())
def test_repeat(pair, layout, seed):
    ne_big, ne = pair
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, random_values(ne, seed))
    shape = gc.new_tensor(ctx, gc.TYPE_F32, ne_big)
    check_gradients(lambda c, p: gc.repeat(c, lay(c, p), shape), [p], 1e-2, 1e-3, INF)


# -- matrix products, src0 broadcast over src1's batches by blocks ---------------------------------------------
def _layout_ok(layout, ne):
    return not layout.transposes(ne)        # mul_mat refuses a transposed src0


@given(pair=matmul_pairs("mul_mat", max_k=6, max_m=5, max_n=5), la=layouts(), lb=layouts(), seed=seeds())
def test_mul_mat(pair, la, lb, seed):
    ne_a, ne_b = pair
    if not _layout_ok(la, ne_a):
        la = la.__class__()
    ctx = gc.init(1 << 20)
    a, lay_a = param_input(ctx, ne_a, la, random_values(ne_a, seed))
    b, lay_b = param_input(ctx, ne_b, lb, random_values(ne_b, seed + 1))
    check_gradients(lambda c, a, b: gc.mul_mat(c, lay_a(c, a), lay_b(c, b)), [a, b], 1e-2, 1e-3, INF)


@given(pair=matmul_pairs("out_prod", max_k=6, max_m=5, max_n=5), la=layouts(), lb=layouts(), seed=seeds())
def test_out_prod(pair, la, lb, seed):
    ne_a, ne_b = pair
    ctx = gc.init(1 << 20)
    a, lay_a = param_input(ctx, ne_a, la, random_values(ne_a, seed))
    b, lay_b = param_input(ctx, ne_b, lb, random_values(ne_b, seed + 1))
    check_gradients(lambda c, a, b: gc.out_prod(c, lay_a(c, a), lay_b(c, b)), [a, b], 1e-2, 1e-3, INF)


def test_mul_mat_broadcast_is_by_blocks():
    """ne12 = 3 * ne02: src0's batch j serves src1's batches 3j..3j+2 (not j, j+2, j+4 as tiling would)."""
    ctx = gc.init(1 << 20)
    rng = np.random.default_rng(1)
    a = gc.from_numpy(ctx, rng.uniform(-1, 1, (2, 3, 4)).astype(np.float32))      # [K=4, M=3, 2]
    b = gc.from_numpy(ctx, rng.uniform(-1, 1, (6, 5, 4)).astype(np.float32))      # [K=4, N=5, 6]
    res = check_gradients(lambda c, a, b: gc.mul_mat(c, a, b), [a, b], 1e-3, 1e-3, INF)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    w = np.random.default_rng(0).uniform(0.5, 1.5, size=(6, 5, 3))                 # check_gradients' weights
    da = np.zeros_like(an)
    for i2 in range(6):
        da[i2 // 3] += w[i2].T @ bn[i2]
    assert np.abs(res.analytic[0] - da.reshape(res.analytic[0].shape)).max() < 1e-4


@given(ne=shapes(min_dims=2, max_side=4), seed=seeds())
def test_mul_mat_f16_src0(ne, seed):
    """An F16 weight: src1's gradient goes through mul_mat (out_prod takes F32 only)."""
    ctx = gc.init(1 << 20)
    w16 = gc.new_tensor(ctx, gc.TYPE_F16, [ne[0], 3])
    w16.numpy()[...] = random_values([ne[0], 3], seed).astype(np.float16)
    x = gc.from_numpy(ctx, random_values(ne, seed + 1))
    check_gradients(lambda c, x: gc.mul_mat(c, w16, x), [x], 1e-3, 1e-3, INF)
