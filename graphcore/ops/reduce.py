"""Reductions and tiling: sum sum_rows mean argmax repeat.

Sums accumulate in float64, row by row in a fixed order, so results are the same bits for any
thread count.
"""
from __future__ import annotations

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import f32_at, inline, record, row_addr, rows_contiguous, split, view_f32, view_i32
from ..native import f64_1d as _f64
from .common import (check_f32, elementwise_node, inplace_of, my_rows, next_row, row_index, shapes, tasks_by_segments,
                     unary_loop)
from .elementwise import scale
from .refs import f64, shape4, tile
from .registry import NOT_DIFFERENTIABLE, TILES, new_node, register, MIN_ELEMENTS_PER_TASK
from .registry import reference_of, sample_of
from .registry import rebuild_by, rebuild_of


@inline
def _row_sum(a, i3, i2, i1):
    s = 0.0
    for i0 in range(a.shape[3]):
        s += a[i3, i2, i1, i0]
    return s


# -- sum: all elements into a one-element tensor ---------------------------------------------------------
def _sum_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    a = view_f32(r, 1)
    ne3, ne2, ne1 = a.shape[0], a.shape[1], a.shape[2]
    nr = ne1 * ne2 * ne3
    if phase == 0:              # per-row partial sums into the work buffer
        part = _f64(wdata, (nr,), (8,))
        lo, hi = split(nr, ith, nth)
        for ir in range(lo, hi):
            part[ir] = _row_sum(a, ir // (ne2 * ne1), (ir // ne1) % ne2, ir % ne1)
    elif ith == 0:              # combine in row order
        part = _f64(wdata, (nr,), (8,))
        s = 0.0
        for ir in range(nr):
            s += part[ir]
        view_f32(r, 0)[0, 0, 0, 0] = np.float32(s)


def _sum_tasks(node, n_threads):
    a = node.src[0]
    return max(1, min(n_threads, TN.nrows(a), TN.nelements(a) // MIN_ELEMENTS_PER_TASK))


def _sum_backward(ctx, t, g, d):
    if d.needs(0):      # g (one element) added to every element
        d.add1(0, g)


SUM = register("SUM", "Σx", _sum_kernel, n_tasks=_sum_tasks,
               work_size=lambda node, nt: 8 * TN.nrows(node.src[0]), n_phases=2, backward=_sum_backward)


@reference_of(SUM)
def _sum_reference(node, srcs):
    return np.sum(f64(srcs[0])).reshape(1, 1, 1, 1)


@sample_of(SUM)
def _sum_sample(d):
    return sum(d.ctx, d.f32())


def sum(ctx, a):
    """The sum of all elements of F32 a, as an F32 [1] tensor (ggml_sum); accumulated in float64."""
    check_f32("sum", a)
    return new_node(ctx, SUM, T.TYPE_F32, [1], [a])


rebuild_of(SUM)(rebuild_by(sum))


# -- sum_rows / mean: one value per row --------------------------------------------------------------------
@inline
def _row_sums(rec, ith, nth, mean):
    r = record(rec)
    a = view_f32(r, 1)
    d = view_f32(r, 0)
    ne3, ne2, ne1, ne0 = a.shape
    scale = 1.0 / ne0 if mean else 1.0
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        d[i3, i2, i1, 0] = np.float32(_row_sum(a, i3, i2, i1) * scale)


def _sum_rows_kernel(rec, ith, nth, phase, wdata, wsize):
    _row_sums(rec, ith, nth, False)


def _mean_kernel(rec, ith, nth, phase, wdata, wsize):
    _row_sums(rec, ith, nth, True)


def _rows_of_src(node, n_threads):
    a = node.src[0]
    return max(1, min(n_threads, TN.nrows(a), TN.nelements(a) // MIN_ELEMENTS_PER_TASK))


def _sum_rows_backward(ctx, t, g, d):
    if d.needs(0):      # each row's gradient spread over the row
        d.add(0, repeat(ctx, g, t.src[0]))


def _mean_backward(ctx, t, g, d):
    if d.needs(0):      # g / ne0 spread over the row
        a = t.src[0]
        d.add(0, repeat(ctx, scale(ctx, g, 1.0 / a.ne[0]), a))


SUM_ROWS = register("SUM_ROWS", "Σx_k", _sum_rows_kernel, n_tasks=_rows_of_src, backward=_sum_rows_backward)
MEAN = register("MEAN", "Σx/n", _mean_kernel, n_tasks=_rows_of_src, backward=_mean_backward)


@reference_of(SUM_ROWS)
def _sum_rows_reference(node, srcs):
    return np.sum(f64(srcs[0]), axis=3, keepdims=True)


@reference_of(MEAN)
def _mean_reference(node, srcs):
    return np.mean(f64(srcs[0]), axis=3, keepdims=True)


@sample_of(SUM_ROWS)
def _sum_rows_sample(d):
    return sum_rows(d.ctx, d.f32())


@sample_of(MEAN)
def _mean_sample(d):
    return mean(d.ctx, d.f32())


def sum_rows(ctx, a):
    """Row sums (ggml_sum_rows): F32 [ne0, ne1, ne2, ne3] -> [1, ne1, ne2, ne3]."""
    check_f32("sum_rows", a)
    return new_node(ctx, SUM_ROWS, T.TYPE_F32, [1, *a.ne[1:]], [a])


rebuild_of(SUM_ROWS)(rebuild_by(sum_rows))


def mean(ctx, a):
    """Row means (ggml_mean): F32 [ne0, ne1, ne2, ne3] -> [1, ne1, ne2, ne3]."""
    check_f32("mean", a)
    return new_node(ctx, MEAN, T.TYPE_F32, [1, *a.ne[1:]], [a])


rebuild_of(MEAN)(rebuild_by(mean))


# -- argmax: index of the largest element of each row of a matrix -------------------------------------------
def _argmax_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    a = view_f32(r, 1)
    d = view_i32(r, 0)
    ne1, ne0 = a.shape[2], a.shape[3]
    lo, hi = split(ne1, ith, nth)
    for i1 in range(lo, hi):
        best, idx = a[0, 0, i1, 0], 0
        for i0 in range(1, ne0):
            v = a[0, 0, i1, i0]
            if v > best or (best != best and v == v):   # first maximum; NaN never wins
                best, idx = v, i0
        d[0, 0, 0, i1] = idx


# an index: piecewise constant in the values, and an integer result
ARGMAX = register("ARGMAX", "argmax(x)", _argmax_kernel, n_tasks=_rows_of_src, backward=NOT_DIFFERENTIABLE)


@reference_of(ARGMAX)
def _argmax_reference(node, srcs):
    # per row: the index of the first largest value; NaN never wins (0 for a row of NaN)
    x = f64(srcs[0])[0, 0]
    out = np.zeros(x.shape[0], dtype=np.int32)
    for i1, row in enumerate(x):
        ok = ~np.isnan(row)
        if ok.any():
            out[i1] = int(np.flatnonzero(ok & (row == row[ok].max()))[0])
    return out.reshape(1, 1, 1, -1)


@sample_of(ARGMAX)
def _argmax_sample(d):
    return argmax(d.ctx, d.f32(accept=lambda t: t.ne[2] == 1 and t.ne[3] == 1, max_dims=2))


def argmax(ctx, a):
    """For each row of an F32 matrix [ne0, ne1], the index of its largest element (the first;
    NaN never wins) as I32 [ne1] (ggml_argmax). GraphError when ne2 or ne3 > 1."""
    check_f32("argmax", a)
    if a.ne[2] != 1 or a.ne[3] != 1:
        raise GraphError(f"argmax: src0 must be a matrix (ne2 == ne3 == 1), got {shapes(a)}")
    return new_node(ctx, ARGMAX, T.TYPE_I32, [a.ne[1]], [a])


rebuild_of(ARGMAX)(rebuild_by(argmax))


# -- repeat: tile a to b's shape ---------------------------------------------------------------------------
def _repeat_kernel(rec, ith, nth, phase, wdata, wsize):
    r, d, a, lo, hi = my_rows(rec, ith, nth)
    ne3, ne2, ne1, ne0 = d.shape
    a3, a2, a1, a0 = a.shape
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1)
    if fast:                                 # raw rows, counters instead of divisions
        i1, i2, i3 = row_index(lo, ne1, ne2)
        j3, j2, j1 = i3 % a3, i2 % a2, i1 % a1
        for _ in range(lo, hi):
            dr = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
            ar = f32_at(row_addr(r, 1, j1, j2, j3), a0)
            if a0 == ne0:
                for i0 in range(ne0):
                    dr[i0] = ar[i0]
            elif a0 == 1:
                v = ar[0]
                for i0 in range(ne0):
                    dr[i0] = v
            else:
                for k in range(0, ne0, a0):
                    seg = dr[k:k + a0]
                    for i0 in range(a0):
                        seg[i0] = ar[i0]
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
            j3, j2, j1 = i3 % a3, i2 % a2, i1 % a1
        return
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        j3, j2, j1 = i3 % a3, i2 % a2, i1 % a1
        for i0 in range(ne0):
            d[i3, i2, i1, i0] = a[j3, j2, j1, i0 % a0]


def _repeat_backward(ctx, t, g, d):
    if d.needs(0):      # summed over the tiles (repeat_back)
        d.add(0, g, reduce=TILES)


REPEAT = register("REPEAT", "repeat(x)", _repeat_kernel, backward=_repeat_backward)


@reference_of(REPEAT)
def _repeat_reference(node, srcs):
    return tile(f64(srcs[0]), shape4(node))


@sample_of(REPEAT)
def _repeat_sample(d):
    a = d.f32()
    return repeat(d.ctx, a, d.tensor(d.any_type(), d.multiple(a.ne)))


def repeat(ctx, a, b):
    """F32 a tiled to b's shape (ggml_repeat); only b.ne is used. Each b.ne[i] must be a multiple of
    a.ne[i] (ggml_can_repeat): GraphError otherwise."""
    check_f32("repeat", a)
    TN.check_tensor("repeat", b)
    if not TN.can_repeat(a, b):
        raise GraphError(f"repeat: src0 cannot be tiled to src1's shape: {shapes(a, b)}")
    return new_node(ctx, REPEAT, a.type, b.ne, [a])


rebuild_of(REPEAT)(rebuild_by(repeat, shaped=True))


# -- repeat_back: the sum of a's tiles, a [k*ne] -> [ne] (undoes repeat's i % ne tiling) ---------------------
def _repeat_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r, d, a, lo, hi = my_rows(rec, ith, nth)
    ne3, ne2, ne1, ne0 = d.shape
    a3, a2, a1, a0 = a.shape
    n3, n2, n1, n0 = a3 // ne3, a2 // ne2, a1 // ne1, a0 // ne0
    acc = _f64(wdata + ith * _repeat_back_row_bytes(ne0), (ne0,), (8,))
    fast = rows_contiguous(r, 1)
    for ir in range(lo, hi):
        k1, k2, k3 = row_index(ir, ne1, ne2)
        for k0 in range(ne0):
            acc[k0] = 0.0
        for t3 in range(n3):                 # tiles in a fixed order: the same bits for any split
            for t2 in range(n2):
                for t1 in range(n1):
                    if fast:                 # raw row, 0-based loops: vectorises
                        srow = f32_at(row_addr(r, 1, t1 * ne1 + k1, t2 * ne2 + k2, t3 * ne3 + k3), a0)
                        for t0 in range(n0):
                            seg = srow[t0 * ne0:t0 * ne0 + ne0]
                            for k0 in range(ne0):
                                acc[k0] += seg[k0]
                    else:
                        src = a[t3 * ne3 + k3, t2 * ne2 + k2, t1 * ne1 + k1]
                        for t0 in range(n0):
                            for k0 in range(ne0):
                                acc[k0] += src[t0 * ne0 + k0]
        dst = d[k3, k2, k1]
        for k0 in range(ne0):
            dst[k0] = np.float32(acc[k0])


@inline
def _repeat_back_row_bytes(ne0):
    return ((ne0 * 8 + 63) // 64) * 64


def _repeat_back_tasks(node, n_threads):
    a = node.src[0]
    return max(1, min(n_threads, TN.nrows(node), TN.nelements(a) // MIN_ELEMENTS_PER_TASK))


def _repeat_back_backward(ctx, t, g, d):
    if d.needs(0):      # linear: the gradient tiled back (ggml's rule)
        d.add(0, repeat(ctx, g, t.src[0]))


REPEAT_BACK = register("REPEAT_BACK", "repeat_back(x)", _repeat_back_kernel, n_tasks=_repeat_back_tasks,
                       work_size=lambda node, nt: nt * (((node.ne[0] * 8 + 63) // 64) * 64),
                       backward=_repeat_back_backward)


@reference_of(REPEAT_BACK)
def _repeat_back_reference(node, srcs):
    # the sum over tiles: src0's index i = tile * ne + k along each dim
    x = f64(srcs[0])
    n = shape4(node)
    split = []
    for size, m in zip(x.shape, n):
        split += [size // m, m]
    return x.reshape(split).sum(axis=(0, 2, 4, 6))


@sample_of(REPEAT_BACK)
def _repeat_back_sample(d):
    a = d.f32()
    return repeat_back(d.ctx, a, d.tensor(d.any_type(), d.divisor(a.ne)))


def repeat_back(ctx, a, b):
    """ggml_repeat_back: a summed down to b's shape (each a.ne[i] a multiple of b.ne[i]), the
    gradient of repeat. Unlike ggml, a new node even when the shapes are equal."""
    check_f32("repeat_back", a)
    TN.check_tensor("repeat_back", b)
    if not TN.can_repeat(b, a):
        raise GraphError(f"repeat_back: src0 cannot be summed down to src1's shape (each src0 dim must "
                         f"be a multiple of src1's): {shapes(a, b)}")
    return new_node(ctx, REPEAT_BACK, a.type, b.ne, [a])


rebuild_of(REPEAT_BACK)(rebuild_by(repeat_back, shaped=True))


# -- add1: a + b[0] for a scalar b (here because its gradient for b is a sum) ----------------------------
@inline
def _add1_f(x, b):
    return x + b


def _add1_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    b = view_f32(r, 2)
    unary_loop(rec, ith, nth, _add1_f, b[0, 0, 0, 0])


def _add1_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, g)
    if d.needs(1):      # b was added to every element: the sum of g (ggml takes the mean, a known bug)
        d.add(1, sum(ctx, g))


ADD1 = register("ADD1", "x+1", _add1_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_add1_backward)


@reference_of(ADD1)
def _add1_reference(node, srcs):
    return f64(srcs[0]) + f64(srcs[1]).reshape(-1)[0]


@sample_of(ADD1)
def _add1_sample(d):
    a, b = d.f32(), d.f32([1])
    return add1_inplace(d.ctx, a, b) if d.inplace(a, b) else add1(d.ctx, a, b)


def _add1(ctx, a, b, inplace, name):
    check_f32(name, a, b)
    if not TN.is_scalar(b):
        raise GraphError(f"{name}: src1 must be a scalar (one element), got {shapes(a, b)}")
    return elementwise_node(ctx, ADD1, a, [a, b], inplace=inplace)


def add1(ctx, a, b):
    """a + b[0] for a one-element b (ggml_add1): F32 a [ne0, ne1, ne2, ne3], F32 b of one element -> a's
    shape.

    GraphError when b has more than one element. The gradient of b is the sum of the output
    gradient (ggml takes its mean)."""
    return _add1(ctx, a, b, False, "add1")


@inplace_of(add1)
def add1_inplace(ctx, a, b):
    return _add1(ctx, a, b, True, "add1_inplace")


rebuild_of(ADD1)(rebuild_by(add1, add1_inplace))
