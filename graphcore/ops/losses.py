"""Losses: cross_entropy_loss and its backward op, cross_entropy_loss_back.

    loss = -1/nr * sum_rows sum_i b_i * log(q_i),   q = (1 - eps) * softmax(a) + eps,   eps = 1e-9

over the nr rows (along ne0) of a (logits) and b (targets). The loss is reduced as the SUM op
does: per-row partial sums in float64 into the work buffer, then combined in row order, so the
result is the same bits for any thread count.

cross_entropy_loss_back(a, b, c) is the exact gradient of that loss with respect to a, times the
scalar c:  c/nr * (1 - eps) * (p_j * sum_i b_i p_i/q_i - b_j p_j/q_j)  with p = softmax(a). ggml
returns c/nr * (q_j - b_j), which is that gradient only when every target row sums to 1.
"""
from __future__ import annotations

import math

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import inline, record, split, view_f32
from ..native import f64_1d
from .common import check_f32, check_same_shape, row_index, shapes
from .attention import soft_max
from .elementwise import mul, scale
from .refs import f64
from .registry import MIN_ELEMENTS_PER_TASK, new_node, reference_of, register, sample_of
from .registry import rebuild_by, rebuild_of
from .reduce import add1
from .unary import log

CE_EPS = 1e-9


@inline
def _row_max(x, n):
    mx = -np.inf
    for i0 in range(n):
        v = np.float64(x[i0])
        if v > mx or v != v:        # NaN wins: a row of NaN gives NaN, not the "all -inf" case
            mx = v
    return mx


@inline
def _row_expsum(x, n, mx):
    s = 0.0
    for i0 in range(n):
        s += math.exp(np.float64(x[i0]) - mx)
    return s


def _ce_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    a = view_f32(r, 1)
    b = view_f32(r, 2)
    ne3, ne2, ne1, ne0 = a.shape
    nr = ne1 * ne2 * ne3
    part = f64_1d(wdata, (nr,), (8,))
    if phase == 0:
        lo, hi = split(nr, ith, nth)
        for ir in range(lo, hi):
            i1, i2, i3 = row_index(ir, ne1, ne2)
            x = a[i3, i2, i1]
            t = b[i3, i2, i1]
            mx = _row_max(x, ne0)
            s = 0.0
            if mx == -np.inf:                # softmax of an all -inf row: zeros, so q = eps
                for i0 in range(ne0):
                    s += np.float64(t[i0]) * math.log(CE_EPS)
            else:
                z = _row_expsum(x, ne0, mx)
                for i0 in range(ne0):
                    p = math.exp(np.float64(x[i0]) - mx) / z
                    s += np.float64(t[i0]) * math.log((1.0 - CE_EPS) * p + CE_EPS)
            part[ir] = s
    elif ith == 0:
        s = 0.0
        for ir in range(nr):
            s += part[ir]
        view_f32(r, 0)[0, 0, 0, 0] = np.float32(-s / nr)


def _ce_tasks(node, n_threads):
    a = node.src[0]
    return max(1, min(n_threads, TN.nrows(a), TN.nelements(a) // MIN_ELEMENTS_PER_TASK))


def _cross_entropy_loss_backward(ctx, t, g, d):
    a, b = t.src
    if d.needs(0):
        d.add(0, cross_entropy_loss_back(ctx, a, b, g))
    if d.needs(1):      # the targets: -g/nr * log(q), q = (1 - eps) softmax(a) + eps
        q = add1(ctx, scale(ctx, soft_max(ctx, a), 1.0 - CE_EPS), TN.new_f32(ctx, CE_EPS))
        d.add(1, scale(ctx, mul(ctx, log(ctx, q), g), -1.0 / TN.nrows(a)))


CROSS_ENTROPY_LOSS = register("CROSS_ENTROPY_LOSS", "cross_entropy_loss(x,y)", _ce_kernel, n_tasks=_ce_tasks,
                              work_size=lambda node, nt: 8 * TN.nrows(node.src[0]), n_phases=2,
                              backward=_cross_entropy_loss_backward)


def _ce_parts(a):
    """(p = softmax of each row of a, q = (1 - eps) p + eps); a row of -inf has p = 0."""
    x = f64(a)
    mx = x.max(axis=3, keepdims=True)
    dead = mx == -np.inf
    e = np.exp(x - np.where(dead, 0.0, mx))
    p = np.where(dead, 0.0, e / np.where(dead, 1.0, e.sum(axis=3, keepdims=True)))
    return p, (1.0 - CE_EPS) * p + CE_EPS


@reference_of(CROSS_ENTROPY_LOSS)
def _cross_entropy_loss_reference(node, srcs):
    _, q = _ce_parts(srcs[0])
    nr = q.size // q.shape[3]
    return np.array(-np.sum(f64(srcs[1]) * np.log(q)) / nr).reshape(1, 1, 1, 1)


@sample_of(CROSS_ENTROPY_LOSS)
def _cross_entropy_loss_sample(d):
    a = d.f32()
    return cross_entropy_loss(d.ctx, a, d.f32(a.ne, domain=d.choice(["any", "positive"])))


def cross_entropy_loss(ctx, a, b):
    """ggml_cross_entropy_loss: the mean over rows of -sum(b * log(softmax(a))) (softmax rescaled
    to [1e-9, 1] against log(0)), as a [1] F32 tensor. a: logits, b: targets, same shape."""
    check_f32("cross_entropy_loss", a, b)
    check_same_shape("cross_entropy_loss", a, b)
    return new_node(ctx, CROSS_ENTROPY_LOSS, T.TYPE_F32, [1], [a, b])


rebuild_of(CROSS_ENTROPY_LOSS)(rebuild_by(cross_entropy_loss))


def _ce_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    b = view_f32(r, 2)
    c = view_f32(r, 3)
    ne3, ne2, ne1, ne0 = a.shape
    nr = ne1 * ne2 * ne3
    g = np.float64(c[0, 0, 0, 0]) * (1.0 - CE_EPS) / nr
    lo, hi = split(nr, ith, nth)
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        x = a[i3, i2, i1]
        t = b[i3, i2, i1]
        y = d[i3, i2, i1]
        mx = _row_max(x, ne0)
        if mx == -np.inf:                    # p = 0 everywhere: no dependence on a
            for i0 in range(ne0):
                y[i0] = np.float32(0.0)
            continue
        z = _row_expsum(x, ne0, mx)
        tsum = 0.0                           # sum_i b_i p_i / q_i
        for i0 in range(ne0):
            p = math.exp(np.float64(x[i0]) - mx) / z
            tsum += np.float64(t[i0]) * p / ((1.0 - CE_EPS) * p + CE_EPS)
        for i0 in range(ne0):
            p = math.exp(np.float64(x[i0]) - mx) / z
            rq = p / ((1.0 - CE_EPS) * p + CE_EPS)
            y[i0] = np.float32(g * (p * tsum - np.float64(t[i0]) * rq))


def _rows_tasks(node, n_threads):
    return max(1, min(n_threads, TN.nrows(node), TN.nelements(node) // MIN_ELEMENTS_PER_TASK))


CROSS_ENTROPY_LOSS_BACK = register("CROSS_ENTROPY_LOSS_BACK", "cross_entropy_loss_back(x,y)", _ce_back_kernel,
                                   n_tasks=_rows_tasks)


@reference_of(CROSS_ENTROPY_LOSS_BACK)
def _cross_entropy_loss_back_reference(node, srcs):
    # L = -1/nr sum b log q:  dL/da_j = -(1 - eps)/nr (b_j p_j / q_j - p_j sum_i b_i p_i / q_i), times c
    # (a row of -inf has p = 0 whatever a does: a zero gradient, whatever the targets and c)
    p, q = _ce_parts(srcs[0])
    b = f64(srcs[1])
    nr = q.size // q.shape[3]
    dead = f64(srcs[0]).max(axis=3, keepdims=True) == -np.inf
    r = b * p / q
    g = f64(srcs[2]).reshape(-1)[0] * (1.0 - CE_EPS) / nr * (p * r.sum(axis=3, keepdims=True) - r)
    return np.where(dead, 0.0, g)


@sample_of(CROSS_ENTROPY_LOSS_BACK)
def _cross_entropy_loss_back_sample(d):
    a = d.f32()
    return cross_entropy_loss_back(d.ctx, a, d.f32(a.ne, domain=d.choice(["any", "positive"])), d.f32([1]))


def cross_entropy_loss_back(ctx, a, b, c):
    """ggml_cross_entropy_loss_back(a = logits, b = targets, c = gradient of the loss, a scalar):
    the gradient of cross_entropy_loss(a, b) with respect to a, scaled by c. Exact for any
    targets (ggml's is right only when each target row sums to 1)."""
    op = "cross_entropy_loss_back"
    check_f32(op, a, b, c)
    check_same_shape(op, a, b)
    if not TN.is_scalar(c):
        raise GraphError(f"{op}: src2 (the loss gradient) must be a scalar: {shapes(a, b, c)}")
    return new_node(ctx, CROSS_ENTROPY_LOSS_BACK, T.TYPE_F32, a.ne, [a, b, c])


rebuild_of(CROSS_ENTROPY_LOSS_BACK)(rebuild_by(cross_entropy_loss_back))
