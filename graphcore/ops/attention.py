"""Attention pieces: diag_mask_inf, diag_mask_zero, soft_max (and soft_max_ext), soft_max_back,
rope (modes 0 and 2, rope_custom's YaRN and xPos parameters) and rope_back.

Rows are processed independently in float64 and rounded once, so the bits do not depend on the
thread count. Any strides are accepted (ggml asks for contiguous rows).
"""
from __future__ import annotations

import math

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import (R_NSRC, exp_f64, f32_at, inline, is_dense, param_f32, param_i32, record, row_addr, rows_contiguous, split,
                      t_addr, t_nb, t_ne, view_f32, view_i32)
from ..native import STACK_N, f64_1d, stack_f64
from .args import boolean, check_types, integer, real
from .common import check_f32, check_same_shape, inplace_of, inplace_view, next_row, shapes
from .elementwise import mul, scale, sub
from .refs import f64, tile
from .registry import new_node, reference_of, register, sample_of, tasks_by_rows
from .registry import TILES, param_f32 as param_f32_of, param_i32 as param_i32_of
from .registry import rebuild_by, rebuild_of
from .reduce import sum_rows


def _node(ctx, op, a, srcs, params, inplace):
    if inplace:
        return inplace_view(ctx, op, a, srcs, params)
    return new_node(ctx, op, a.type, a.ne, srcs, params)


# -- diag_mask_inf / diag_mask_zero: element i0 of row i1 replaced when i0 > n_past + i1 ----------------------
@inline
def _diag_mask_loop(rec, ith, nth, value):
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    n_past = param_i32(rec, 0)
    ne3, ne2, ne1, ne0 = a.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    if rows_contiguous(r, 0) and rows_contiguous(r, 1):     # raw rows, no divisions per row
        i3, i2, i1 = lo // (ne2 * ne1), (lo // ne1) % ne2, lo % ne1
        for _ in range(lo, hi):
            x = f32_at(row_addr(r, 1, i1, i2, i3), ne0)
            y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
            lim = n_past + i1
            for i0 in range(ne0):
                y[i0] = value if i0 > lim else x[i0]
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    for ir in range(lo, hi):
        i3, i2, i1 = ir // (ne2 * ne1), (ir // ne1) % ne2, ir % ne1
        x = a[i3, i2, i1]
        y = d[i3, i2, i1]
        lim = n_past + i1
        for i0 in range(ne0):
            y[i0] = value if i0 > lim else x[i0]


def _diag_mask_inf_kernel(rec, ith, nth, phase, wdata, wsize):
    _diag_mask_loop(rec, ith, nth, np.float32(-np.inf))


def _diag_mask_zero_kernel(rec, ith, nth, phase, wdata, wsize):
    _diag_mask_loop(rec, ith, nth, np.float32(0.0))


def _diag_mask_backward(ctx, t, g, d):
    if d.needs(0):      # the masked elements do not depend on x
        d.add(0, diag_mask_zero(ctx, g, param_i32_of(t, 0)))


DIAG_MASK_INF = register("DIAG_MASK_INF", "diag_mask_inf(x)", _diag_mask_inf_kernel, n_tasks=tasks_by_rows,
                         inplace=True, backward=_diag_mask_backward)
DIAG_MASK_ZERO = register("DIAG_MASK_ZERO", "diag_mask_zero(x)", _diag_mask_zero_kernel, n_tasks=tasks_by_rows,
                          inplace=True, backward=_diag_mask_backward)


@reference_of(DIAG_MASK_INF, DIAG_MASK_ZERO)
def _diag_mask_reference(node, srcs):
    x = f64(srcs[0])
    i1 = np.arange(x.shape[2]).reshape(-1, 1)
    i0 = np.arange(x.shape[3]).reshape(1, -1)
    value = -np.inf if node.op == DIAG_MASK_INF else 0.0
    return np.where(i0 > param_i32_of(node, 0) + i1, value, x)


@sample_of(DIAG_MASK_INF, DIAG_MASK_ZERO)
def _diag_mask_sample(d):
    a, n_past = d.f32(), d.int(0, 3)
    zero = d.op == DIAG_MASK_ZERO
    if d.inplace(a):
        t = (diag_mask_zero_inplace if zero else diag_mask_inf_inplace)(d.ctx, a, n_past)
    else:
        t = (diag_mask_zero if zero else diag_mask_inf)(d.ctx, a, n_past)
    # a loss over -inf is no use to a gradient check: differentiate the masked softmax instead
    return soft_max(d.ctx, t) if d.backward and not zero else t


def _diag_mask(ctx, op, a, n_past, inplace, name):
    check_f32(name, a)
    n_past = integer(name, "n_past", n_past, lo=0)
    return _node(ctx, op, a, [a], [n_past], inplace)


def diag_mask_inf(ctx, a, n_past: int):
    """The causal attention mask (ggml_diag_mask_inf): a copy of F32 a [ne0, ne1, ne2, ne3] whose
    elements i0 > n_past + i1 are -inf. n_past is an int >= 0."""
    return _diag_mask(ctx, DIAG_MASK_INF, a, n_past, False, "diag_mask_inf")


@inplace_of(diag_mask_inf)
def diag_mask_inf_inplace(ctx, a, n_past: int):
    return _diag_mask(ctx, DIAG_MASK_INF, a, n_past, True, "diag_mask_inf_inplace")


def diag_mask_zero(ctx, a, n_past: int):
    """A copy of F32 a [ne0, ne1, ne2, ne3] whose elements i0 > n_past + i1 are 0 (ggml_diag_mask_zero).
    n_past is an int >= 0."""
    return _diag_mask(ctx, DIAG_MASK_ZERO, a, n_past, False, "diag_mask_zero")


@inplace_of(diag_mask_zero)
def diag_mask_zero_inplace(ctx, a, n_past: int):
    return _diag_mask(ctx, DIAG_MASK_ZERO, a, n_past, True, "diag_mask_zero_inplace")


@rebuild_of(DIAG_MASK_INF, DIAG_MASK_ZERO)
def _diag_mask_rebuild(ctx, srcs, rec):
    name = "diag_mask_inf" if rec.op == DIAG_MASK_INF else "diag_mask_zero"
    return _diag_mask(ctx, rec.op, *srcs, rec.i32(0), rec.inplace, name)


# -- soft_max: softmax(x * scale + mask + alibi) over each row; op_params = {scale, max_bias} -----------------
@inline
def _alibi_slope(h, n_head, max_bias):
    if max_bias <= 0.0:
        return 0.0
    nl2 = 1
    while nl2 * 2 <= n_head:
        nl2 *= 2
    if h < nl2:
        return (2.0 ** (-max_bias / nl2)) ** (h + 1)
    return (2.0 ** (-(max_bias / 2.0) / nl2)) ** (2 * (h - nl2) + 1)


@inline
def _soft_max_w(x, mrow, prow, i0, scale, slope, has_mask, has_pos):
    w = np.float64(x[i0]) * scale
    if has_mask:
        w += np.float64(mrow[i0])
    if has_pos:
        w += slope * np.float64(prow[i0])
    return w


SOFT_MAX_GROUPED = STACK_N    # rows up to this long are staged a group of rows at a time


@inline
def _soft_max_fast(r, lo, hi, scale, max_bias, has_mask, has_pos):
    """Rows lo..hi, each row contiguous: the strided loop's arithmetic (w = x * scale (+ mask)
    (+ slope * pos), its maximum, v = exp(w - max) in float64 (exp_f64, which vectorises), the sum of v
    in row order, y = float32(v) * (1 / sum)), so its bits. Short rows are staged a group at a time
    in a stack buffer so that the exps of the whole group are one vectorised loop; long rows go one
    at a time, exp in blocks. A row with no maximum (all -inf) gives zeros."""
    ne0, ne1, ne2 = t_ne(r, 1, 0), t_ne(r, 1, 1), t_ne(r, 1, 2)
    m1 = t_ne(r, 2, 1) if has_mask else 1
    wb = stack_f64()        # w, then exp(w - max), of a group of rows (or a block of a long row)
    i3, i2, i1 = lo // (ne2 * ne1), (lo // ne1) % ne2, lo % ne1
    if ne0 > SOFT_MAX_GROUPED:
        for _ in range(lo, hi):
            x = f32_at(row_addr(r, 1, i1, i2, i3), ne0)
            y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
            mrow = f32_at(row_addr(r, 2, i1 % m1, 0, 0), ne0) if has_mask else x
            prow = f32_at(t_addr(r, 3), ne0) if has_pos else x
            slope = _alibi_slope(i2, ne2, max_bias) if has_pos else 0.0
            mx = -np.inf
            for i0 in range(ne0):
                w = _soft_max_w(x, mrow, prow, i0, scale, slope, has_mask, has_pos)
                if w > mx or w != w:        # NaN wins: a row of NaN is NaN, not "all masked"
                    mx = w
            if mx == -np.inf:
                for i0 in range(ne0):
                    y[i0] = np.float32(0.0)
            else:
                s = 0.0
                for b0 in range(0, ne0, STACK_N):
                    n = min(STACK_N, ne0 - b0)
                    xb, yb, mbk, pbk = x[b0:b0 + n], y[b0:b0 + n], mrow[b0:b0 + n], prow[b0:b0 + n]
                    for k in range(n):
                        v = exp_f64(_soft_max_w(xb, mbk, pbk, k, scale, slope, has_mask, has_pos) - mx)
                        wb[k] = v
                        yb[k] = np.float32(v)
                    for k in range(n):
                        s += wb[k]
                rs = 1.0 / s
                for i0 in range(ne0):
                    y[i0] = np.float32(np.float64(y[i0]) * rs)
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    mxs = stack_f64()       # each row's maximum
    group = STACK_N // ne0
    dense = is_dense(r, 0, 4) and is_dense(r, 1, 4) and not has_mask and not has_pos
    for g0 in range(lo, hi, group):
        g = min(group, hi - g0)
        n = g * ne0
        c1, c2, c3 = i1, i2, i3
        if dense:                                   # w of the group's rows, back to back in wb
            xg = f32_at(t_addr(r, 1) + 4 * g0 * ne0, n)
            for k in range(n):
                wb[k] = np.float64(xg[k]) * scale
        else:
            for j in range(g):
                x = f32_at(row_addr(r, 1, i1, i2, i3), ne0)
                mrow = f32_at(row_addr(r, 2, i1 % m1, 0, 0), ne0) if has_mask else x
                prow = f32_at(t_addr(r, 3), ne0) if has_pos else x
                slope = _alibi_slope(i2, ne2, max_bias) if has_pos else 0.0
                w = wb[j * ne0:j * ne0 + ne0]
                for i0 in range(ne0):
                    w[i0] = _soft_max_w(x, mrow, prow, i0, scale, slope, has_mask, has_pos)
                i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        for j in range(g):                          # each row's maximum, subtracted
            w = wb[j * ne0:j * ne0 + ne0]
            mx = -np.inf
            for i0 in range(ne0):
                if w[i0] > mx or w[i0] != w[i0]:    # NaN wins: a row of NaN is NaN, not "all masked"
                    mx = w[i0]
            mxs[j] = mx
            m = mx if mx != -np.inf else 0.0
            for i0 in range(ne0):
                w[i0] = w[i0] - m
        for k in range(n):                          # the group's exps: one flat loop
            wb[k] = exp_f64(wb[k])
        i1, i2, i3 = c1, c2, c3
        for j in range(g):                          # each row's sum; rows out
            w = wb[j * ne0:j * ne0 + ne0]
            y = f32_at(t_addr(r, 0) + 4 * (g0 + j) * ne0 if dense else row_addr(r, 0, i1, i2, i3), ne0)
            if mxs[j] == -np.inf:                   # no maximum (all -inf): zeros, not 0/0
                for i0 in range(ne0):
                    y[i0] = np.float32(0.0)
            else:
                s = 0.0
                for i0 in range(ne0):
                    s += w[i0]
                rs = 1.0 / s
                for i0 in range(ne0):
                    y[i0] = np.float32(np.float64(np.float32(w[i0])) * rs)
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)


def _soft_max_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    nsrc = r[R_NSRC]
    has_mask = nsrc > 1 and t_addr(r, 2) != 0
    # pos only counts with ALiBi (max_bias > 0): its slope is 0 otherwise, and 0 * inf would be NaN
    has_pos = nsrc > 2 and t_addr(r, 3) != 0 and param_f32(rec, 1) > 0.0
    if (rows_contiguous(r, 0) and rows_contiguous(r, 1) and (not has_mask or rows_contiguous(r, 2))
            and (not has_pos or rows_contiguous(r, 3))):
        lo, hi = split(t_ne(r, 1, 1) * t_ne(r, 1, 2) * t_ne(r, 1, 3), ith, nth)
        _soft_max_fast(r, lo, hi, np.float64(param_f32(rec, 0)), np.float64(param_f32(rec, 1)), has_mask, has_pos)
        return
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    m = view_f32(r, 2)
    pp = view_f32(r, 3)
    nsrc = r[R_NSRC]
    has_mask = nsrc > 1 and t_addr(r, 2) != 0
    has_pos = nsrc > 2 and t_addr(r, 3) != 0 and param_f32(rec, 1) > 0.0
    scale = np.float64(param_f32(rec, 0))
    max_bias = np.float64(param_f32(rec, 1))
    ne3, ne2, ne1, ne0 = a.shape
    m1 = m.shape[2] if has_mask else 1
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    for ir in range(lo, hi):
        i3, i2, i1 = ir // (ne2 * ne1), (ir // ne1) % ne2, ir % ne1
        x = a[i3, i2, i1]
        y = d[i3, i2, i1]
        j1 = i1 % m1
        slope = _alibi_slope(i2, ne2, max_bias) if has_pos else 0.0
        mx = -np.inf
        for i0 in range(ne0):
            w = np.float64(x[i0]) * scale
            if has_mask:
                w += np.float64(m[0, 0, j1, i0])
            if has_pos:
                w += slope * np.float64(pp[0, 0, 0, i0])
            if w > mx or w != w:           # NaN wins: a row of NaN is NaN, not "all masked"
                mx = w
        if mx == -np.inf:              # every element masked: zeros, not 0/0
            for i0 in range(ne0):
                y[i0] = np.float32(0.0)
            continue
        s = 0.0
        for i0 in range(ne0):                # exp once, kept in dst as float32; the sum in float64
            w = np.float64(x[i0]) * scale
            if has_mask:
                w += np.float64(m[0, 0, j1, i0])
            if has_pos:
                w += slope * np.float64(pp[0, 0, 0, i0])
            v = exp_f64(w - mx)
            y[i0] = np.float32(v)
            s += v
        rs = 1.0 / s
        for i0 in range(ne0):
            y[i0] = np.float32(np.float64(y[i0]) * rs)


def _soft_max_backward(ctx, t, g, d):
    # y = softmax(x * scale + mask + slope * pos): dz = soft_max_back(g, y) is the gradient of the sum
    # z; x gets scale * dz, the mask (tiled over the rows) the sum of dz over its tiles
    if not (d.needs(0) or d.needs(1) or d.needs(2)):
        return
    dz = soft_max_back(ctx, g, t)
    if d.needs(0):
        s = param_f32_of(t, 0)
        if s != 1.0:
            d.add(0, scale(ctx, dz, s))
        else:
            d.add(0, dz)
    if d.needs(1):
        d.add(1, dz, reduce=TILES)
    if d.needs(2) and param_f32_of(t, 1) > 0.0:    # with max_bias 0, pos has no effect
        raise GraphError(f"soft_max_ext: no rule for the gradient with respect to pos (ALiBi positions), "
                         f"needed for {shapes(t.src[2])}")


SOFT_MAX = register("SOFT_MAX", "soft_max(x)", _soft_max_kernel, n_tasks=tasks_by_rows, inplace=True,
                    backward=_soft_max_backward)


@reference_of(SOFT_MAX)
def _soft_max_reference(node, srcs):
    # softmax(x * scale + mask + slope_h * pos) per row; slope_h (ALiBi) for head h = i2 of ne2
    x = f64(srcs[0]) * param_f32_of(node, 0)
    mask = srcs[1] if len(srcs) > 1 else None
    pos = srcs[2] if len(srcs) > 2 else None
    if mask is not None:
        x = x + tile(f64(mask), (1, 1, x.shape[2], x.shape[3]))
    max_bias = param_f32_of(node, 1)
    if pos is not None and max_bias > 0.0:
        n_head = x.shape[1]
        n2 = 2 ** int(np.floor(np.log2(n_head)))
        m0, m1 = 2.0 ** (-max_bias / n2), 2.0 ** (-max_bias / 2.0 / n2)
        h = np.arange(n_head)
        slope = np.where(h < n2, m0 ** (h + 1), m1 ** (2 * (h - n2) + 1))
        x = x + slope.reshape(1, -1, 1, 1) * f64(pos).reshape(1, 1, 1, -1)
    mx = x.max(axis=3, keepdims=True)
    dead = mx == -np.inf                       # a row masked everywhere gives zeros
    e = np.exp(x - np.where(dead, 0.0, mx))
    return np.where(dead, 0.0, e / np.where(dead, 1.0, e.sum(axis=3, keepdims=True)))


@sample_of(SOFT_MAX)
def _soft_max_sample(d):
    a = d.f32()
    if d.coin(40):
        return soft_max_inplace(d.ctx, a) if d.inplace(a) else soft_max(d.ctx, a)
    mask = d.f32([a.ne[0], d.choice(_divisors(a.ne[1]))], domain="mask") if d.coin(70) else None
    pos = d.f32([a.ne[0]], new=True, param=False) if d.coin(40) else None
    max_bias = d.choice([0.0, 8.0, 0.5]) if pos is not None else 0.0
    return soft_max_ext(d.ctx, a, mask, pos, d.choice([1.0, 0.125, -2.0]), max_bias)


def _divisors(n):
    return [k for k in range(1, n + 1) if n % k == 0]


def _soft_max(ctx, a, mask, pos, scale, max_bias, inplace, op):
    check_f32(op, a)
    scale = real(op, "scale", scale)
    max_bias = real(op, "max_bias", max_bias)
    if mask is not None:
        check_f32(op, mask)
        if mask.ne[2] != 1 or mask.ne[3] != 1 or not TN.can_repeat_rows(mask, a):
            raise GraphError(f"{op}: mask must be a matrix [ne0, n] with ne0 == src0's ne0 and n dividing "
                             f"src0's ne1: {shapes(a, mask)}")
    if pos is not None:
        check_f32(op, pos)
        if pos.ne[1] != 1 or pos.ne[2] != 1 or pos.ne[3] != 1 or pos.ne[0] != a.ne[0]:
            raise GraphError(f"{op}: pos must be a vector of src0's ne0 elements: {shapes(a, pos)}")
    if max_bias > 0.0 and pos is None:
        raise GraphError(f"{op}: max_bias > 0 (ALiBi) needs a pos tensor")
    if mask is None and pos is None:
        srcs = [a]
    else:
        srcs = [a, mask, pos]
    return _node(ctx, SOFT_MAX, a, srcs, [scale, max_bias], inplace)


def soft_max(ctx, a):
    """Softmax of each row, along ne0 (ggml_soft_max): F32 a [ne0, ne1, ne2, ne3] -> same shape.

    A row that is -inf everywhere gives zeros (not NaN)."""
    return _soft_max(ctx, a, None, None, 1.0, 0.0, False, "soft_max")


@inplace_of(soft_max)
def soft_max_inplace(ctx, a):
    return _soft_max(ctx, a, None, None, 1.0, 0.0, True, "soft_max_inplace")


def soft_max_ext(ctx, a, mask, pos, scale: float, max_bias: float):
    """ggml_soft_max_ext: softmax(a * scale + mask + slope_h * pos) per row; mask (optional) is a
    matrix tiled over the rows, pos (optional, needed when max_bias > 0) a vector of positions,
    slope_h ALiBi's slope of head h = the row's ne2 index. F32 a [ne0, ne1, ne2, ne3] -> same shape.

    GraphError when mask is not [ne0, n] with n dividing ne1, pos not [ne0], or max_bias > 0
    without pos."""
    return _soft_max(ctx, a, mask, pos, scale, max_bias, False, "soft_max_ext")


@rebuild_of(SOFT_MAX)
def _soft_max_rebuild(ctx, srcs, rec):
    a, mask, pos = (list(srcs) + [None, None])[:3]
    return _soft_max(ctx, a, mask, pos, rec.f32(0), rec.f32(1), rec.inplace, "soft_max")


# -- soft_max_back: gradient of softmax given dy (src0) and y = softmax(x) (src1) ------------------------------
def _soft_max_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    d = view_f32(r, 0)
    g = view_f32(r, 1)
    yv = view_f32(r, 2)
    ne3, ne2, ne1, ne0 = g.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    if rows_contiguous(r, 0) and rows_contiguous(r, 1) and rows_contiguous(r, 2):   # raw rows
        i3, i2, i1 = lo // (ne2 * ne1), (lo // ne1) % ne2, lo % ne1
        for _ in range(lo, hi):
            dy = f32_at(row_addr(r, 1, i1, i2, i3), ne0)
            y = f32_at(row_addr(r, 2, i1, i2, i3), ne0)
            dx = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
            dot = 0.0
            for i0 in range(ne0):
                dot += np.float64(y[i0]) * np.float64(dy[i0])
            for i0 in range(ne0):
                dx[i0] = np.float32(np.float64(y[i0]) * (np.float64(dy[i0]) - dot))
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    for ir in range(lo, hi):
        i3, i2, i1 = ir // (ne2 * ne1), (ir // ne1) % ne2, ir % ne1
        dy = g[i3, i2, i1]
        y = yv[i3, i2, i1]
        dx = d[i3, i2, i1]
        dot = 0.0
        for i0 in range(ne0):
            dot += np.float64(y[i0]) * np.float64(dy[i0])
        for i0 in range(ne0):
            dx[i0] = np.float32(np.float64(y[i0]) * (np.float64(dy[i0]) - dot))


def _soft_max_back_backward(ctx, t, g, d):
    # dx = y * (dy - <y, dy>) per row. Its Jacobian in dy is symmetric: d(dy) = soft_max_back(g, y);
    # in y: d(y) = g * (dy - <y, dy>) - dy * <g, y>
    dy, y = t.src
    if d.needs(0):
        d.add(0, soft_max_back(ctx, g, y))
    if d.needs(1):
        d.add(1, sub(ctx, mul(ctx, g, sub(ctx, dy, sum_rows(ctx, mul(ctx, y, dy)))),
                     mul(ctx, dy, sum_rows(ctx, mul(ctx, g, y)))))


SOFT_MAX_BACK = register("SOFT_MAX_BACK", "soft_max_back(x)", _soft_max_back_kernel, n_tasks=tasks_by_rows,
                         inplace=True, backward=_soft_max_back_backward)


@reference_of(SOFT_MAX_BACK)
def _soft_max_back_reference(node, srcs):
    dy, y = f64(srcs[0]), f64(srcs[1])
    return y * (dy - (y * dy).sum(axis=3, keepdims=True))


@sample_of(SOFT_MAX_BACK)
def _soft_max_back_sample(d):
    a = d.f32()
    b = d.f32(a.ne)
    return soft_max_back_inplace(d.ctx, a, b) if d.inplace(a, b) else soft_max_back(d.ctx, a, b)


def _soft_max_back(ctx, a, b, inplace, op):
    check_f32(op, a, b)
    check_same_shape(op, a, b)
    return _node(ctx, SOFT_MAX_BACK, a, [a, b], None, inplace)


def soft_max_back(ctx, a, b):
    """ggml_soft_max_back(a = dy, b = y): y * (dy - dot(y, dy)) per row, the gradient of softmax.
    F32 a and b of the same shape -> that shape."""
    return _soft_max_back(ctx, a, b, False, "soft_max_back")


@inplace_of(soft_max_back)
def soft_max_back_inplace(ctx, a, b):
    return _soft_max_back(ctx, a, b, True, "soft_max_back_inplace")


rebuild_of(SOFT_MAX_BACK)(rebuild_by(soft_max_back, soft_max_back_inplace))


# -- rope ----------------------------------------------------------------------------------------------------
# op_params (ggml's layout): [0] n_past (0) [1] n_dims [2] mode [3] n_ctx [4] n_orig_ctx,
# floats [5] freq_base [6] freq_scale [7] ext_factor [8] attn_factor [9] beta_fast [10] beta_slow
# [11] xpos_base, [12] xpos_down.
# mode 0: pairs (x[2k], x[2k+1]) for 2k < n_dims; mode 2 (NeoX): pairs (x[k], x[k + n_dims/2]).
# theta_k = pos * base^(-2k/n_dims) (scaled by freq_scale, mixed with YaRN's ramp when ext_factor != 0).
# Elements from n_dims on pass through in both modes (ggml at this commit rotates them in mode 0).
ROPE_MODES = (0, 2)


def _cache_bytes_py(n_dims):
    """Bytes of one thread's cos/sin cache (n_dims float64), padded to whole cache lines."""
    return ((n_dims * 8 + 63) // 64 + 1) * 64


_cache_bytes = inline(_cache_bytes_py)


@inline
def _yarn_corr_dim(n_dims, n_orig_ctx, n_rot, base):
    return n_dims * math.log(n_orig_ctx / (n_rot * 2.0 * math.pi)) / (2.0 * math.log(base))


@inline
def _rope_loop(rec, ith, nth, wdata, sin_sign):
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    pos = view_i32(r, 2)
    n_dims = np.int64(param_i32(rec, 1))
    neox = param_i32(rec, 2) == 2
    n_orig_ctx = param_i32(rec, 4)
    base = np.float64(param_f32(rec, 5))
    freq_scale = np.float64(param_f32(rec, 6))
    ext_factor = np.float64(param_f32(rec, 7))
    attn_factor = np.float64(param_f32(rec, 8))
    beta_fast = np.float64(param_f32(rec, 9))
    beta_slow = np.float64(param_f32(rec, 10))
    xpos_base = np.float64(param_f32(rec, 11))
    xpos_down = param_i32(rec, 12) != 0
    ne3, ne2, ne1, ne0 = a.shape
    half = n_dims // 2
    cache = f64_1d(wdata + ith * _cache_bytes(n_dims), (n_dims,), (8,))
    corr0, corr1 = 0.0, 0.0
    mscale = attn_factor
    if ext_factor != 0.0:
        start = math.floor(_yarn_corr_dim(n_dims, n_orig_ctx, beta_fast, base))
        end = math.ceil(_yarn_corr_dim(n_dims, n_orig_ctx, beta_slow, base))
        corr0 = max(0.0, start)
        corr1 = min(n_dims - 1.0, end)
        mscale = attn_factor * (1.0 + 0.1 * math.log(1.0 / freq_scale))
    # rows taken position-major (i2, then i3, then i1), so cos/sin are computed once per position
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1)
    # mode 0 rotating whole rows that lie back to back along dim 1 (in src and dst): the ne1 rows of
    # one (i2, i3) are one loop over ne1 * half adjacent pairs, with cos/sin expanded per pair
    blocks = (fast and not neox and n_dims == ne0 and ne1 * half <= STACK_N
              and t_nb(r, 0, 1) == 4 * ne0 and t_nb(r, 1, 1) == 4 * ne0)
    cp = stack_f64()                        # cos of pair q of a block (q = i1 * half + k)
    sp = stack_f64()                        # sin of pair q
    npair = ne1 * half
    fk = stack_f64()                        # base^(-2k/n_dims), the same for every position
    if half <= STACK_N:
        for k in range(half):
            fk[k] = base ** (-2.0 * k / n_dims)
    i2, i3, i1 = lo // (ne3 * ne1), (lo // ne1) % ne3, lo % ne1
    last = -1
    u = lo
    while u < hi:
        if i2 != last:                      # cos/sin depend on the position (dim 2) only
            last = i2
            p = np.float64(pos[0, 0, 0, i2])
            for k in range(half):
                theta_extrap = p * (fk[k] if half <= STACK_N else base ** (-2.0 * k / n_dims))
                theta = freq_scale * theta_extrap
                if ext_factor != 0.0:
                    y = (k - corr0) / max(0.001, corr1 - corr0)
                    ramp = (1.0 - min(1.0, max(0.0, y))) * ext_factor
                    theta = theta * (1.0 - ramp) + theta_extrap * ramp
                c = math.cos(theta) * mscale
                s = math.sin(theta) * mscale
                if xpos_base != 0.0 and not neox:
                    zeta = ((2 * k + 0.4 * ne0) / (1.4 * ne0)) ** (p / xpos_base)
                    if xpos_down:
                        zeta = 1.0 / zeta
                    c *= zeta
                    s *= zeta
                cache[2 * k] = c
                cache[2 * k + 1] = s * sin_sign
            if blocks:
                for q in range(npair):
                    k = q % half
                    cp[q] = cache[2 * k]
                    sp[q] = cache[2 * k + 1]
        if blocks and i1 == 0 and u + ne1 <= hi:
            x = f32_at(row_addr(r, 1, 0, i2, i3), ne1 * ne0)
            y = f32_at(row_addr(r, 0, 0, i2, i3), ne1 * ne0)
            for q in range(npair):          # the strided loop's arithmetic, pairs interleaved
                c, sn = cp[q], sp[q]
                x0, x1 = np.float64(x[2 * q]), np.float64(x[2 * q + 1])
                y[2 * q] = np.float32(x0 * c - x1 * sn)
                y[2 * q + 1] = np.float32(x0 * sn + x1 * c)
            u += ne1
            i3 += 1
            if i3 == ne3:
                i3 = 0
                i2 += 1
            continue
        if fast:
            _rope_row(f32_at(row_addr(r, 1, i1, i2, i3), ne0), f32_at(row_addr(r, 0, i1, i2, i3), ne0), cache,
                      half, n_dims, ne0, neox)
        else:
            _rope_row(a[i3, i2, i1], d[i3, i2, i1], cache, half, n_dims, ne0, neox)
        u += 1
        i1 += 1
        if i1 == ne1:
            i1 = 0
            i3 += 1
            if i3 == ne3:
                i3 = 0
                i2 += 1


@inline
def _rope_row(x, dst, cache, half, n_dims, ne0, neox):
    if neox:
        for k in range(half):
            c, s = cache[2 * k], cache[2 * k + 1]
            x0, x1 = np.float64(x[k]), np.float64(x[k + half])
            dst[k] = np.float32(x0 * c - x1 * s)
            dst[k + half] = np.float32(x0 * s + x1 * c)
    else:
        for k in range(half):
            c, s = cache[2 * k], cache[2 * k + 1]
            x0, x1 = np.float64(x[2 * k]), np.float64(x[2 * k + 1])
            dst[2 * k] = np.float32(x0 * c - x1 * s)
            dst[2 * k + 1] = np.float32(x0 * s + x1 * c)
    for i0 in range(n_dims, ne0):
        dst[i0] = x[i0]


def _rope_kernel(rec, ith, nth, phase, wdata, wsize):
    _rope_loop(rec, ith, nth, wdata, 1.0)


def _rope_back_kernel(rec, ith, nth, phase, wdata, wsize):
    _rope_loop(rec, ith, nth, wdata, -1.0)


def _rope_work(node, n_tasks):
    return n_tasks * _cache_bytes_py(int(node.op_params[1]))


def _rope_params(t):
    p = [int(t.op_params[i]) for i in range(5)] + [param_f32_of(t, i) for i in range(5, 12)]
    return p[1:] + [bool(t.op_params[12])]


def _rope_backward(ctx, t, g, d):
    if d.needs(0):      # the transposed rotation (positions, src1, are integers)
        d.add(0, _rope_impl(ctx, ROPE_BACK, "rope_back", g, t.src[1], *_rope_params(t)))


def _rope_back_backward(ctx, t, g, d):
    if d.needs(0):      # rope_back is linear: its gradient is the forward rotation
        d.add(0, _rope_impl(ctx, ROPE, "rope", g, t.src[1], *_rope_params(t)))


ROPE = register("ROPE", "rope(x)", _rope_kernel, n_tasks=tasks_by_rows, work_size=_rope_work, inplace=True,
                backward=_rope_backward)
ROPE_BACK = register("ROPE_BACK", "rope_back(x)", _rope_back_kernel, n_tasks=tasks_by_rows, work_size=_rope_work,
                     backward=_rope_back_backward)


@reference_of(ROPE, ROPE_BACK)
def _rope_reference(node, srcs):
    # ggml's rope_yarn: theta_k = p base^(-2k/n_dims), scaled by freq_scale and mixed with the
    # unscaled angle by YaRN's ramp; cos/sin times mscale (and xPos' zeta); rope_back rotates back
    x = f64(srcs[0])
    pos = f64(srcs[1]).reshape(-1)
    n_dims, mode, n_orig_ctx = param_i32_of(node, 1), param_i32_of(node, 2), param_i32_of(node, 4)
    base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow, xpos_base = (
        param_f32_of(node, i) for i in range(5, 12))
    xpos_down = param_i32_of(node, 12) != 0
    ne0, half = x.shape[3], n_dims // 2
    k = np.arange(half, dtype=np.float64)
    p = pos.reshape(1, -1, 1, 1)                                     # position per i2
    theta_extrap = p * base ** (-2.0 * k / n_dims)
    theta = freq_scale * theta_extrap
    mscale = attn_factor
    if ext_factor != 0.0:
        def corr_dim(n_rot):
            return n_dims * np.log(n_orig_ctx / (n_rot * 2.0 * np.pi)) / (2.0 * np.log(base))
        lo = max(0.0, np.floor(corr_dim(beta_fast)))
        hi = min(n_dims - 1.0, np.ceil(corr_dim(beta_slow)))
        ramp = (1.0 - np.clip((k - lo) / max(0.001, hi - lo), 0.0, 1.0)) * ext_factor
        theta = theta * (1.0 - ramp) + theta_extrap * ramp
        mscale *= 1.0 + 0.1 * np.log(1.0 / freq_scale)
    cos, sin = np.cos(theta) * mscale, np.sin(theta) * mscale
    if xpos_base != 0.0 and mode == 0:
        zeta = ((2.0 * k + 0.4 * ne0) / (1.4 * ne0)) ** (p / xpos_base)
        if xpos_down:
            zeta = 1.0 / zeta
        cos, sin = cos * zeta, sin * zeta
    if node.op == ROPE_BACK:
        sin = -sin
    out = x.copy()
    i = np.arange(half)
    i0, i1 = (i, i + half) if mode == 2 else (2 * i, 2 * i + 1)
    x0, x1 = x[..., i0], x[..., i1]
    out[..., i0] = x0 * cos - x1 * sin
    out[..., i1] = x0 * sin + x1 * cos
    return out


def _rope_sample_args(d, a):
    n_dims = 2 * d.int(1, a.ne[0] // 2)
    mode = d.choice(ROPE_MODES)
    b = d.i32([a.ne[2]], 0, 40)
    custom = {}
    if d.coin():
        custom = dict(freq_base=d.choice([10000.0, 100.0]), freq_scale=d.choice([1.0, 0.5, 0.25]),
                      attn_factor=d.choice([1.0, 0.75]))
        if d.coin():
            custom.update(n_orig_ctx=d.choice([16, 64]), ext_factor=d.choice([1.0, 0.5]), beta_fast=32.0,
                          beta_slow=1.0)
    return b, n_dims, mode, custom


@sample_of(ROPE)
def _rope_sample(d):
    a = d.f32(accept=lambda t: t.ne[0] >= 2)
    b, n_dims, mode, custom = _rope_sample_args(d, a)
    if mode == 0 and d.coin(20) and d.inplace(a, b):
        return rope_xpos_inplace(d.ctx, a, b, n_dims, d.choice([64.0, 512.0]), d.coin())
    if custom:
        build = rope_custom_inplace if d.inplace(a, b) else rope_custom
        return build(d.ctx, a, b, n_dims, mode, 0, **custom)
    return (rope_inplace if d.inplace(a, b) else rope)(d.ctx, a, b, n_dims, mode, 0)


@sample_of(ROPE_BACK)
def _rope_back_sample(d):
    a = d.f32(accept=lambda t: t.ne[0] >= 2)
    b, n_dims, mode, custom = _rope_sample_args(d, a)
    if mode == 0 and d.coin(20):
        custom.update(xpos_base=d.choice([64.0, 512.0]), xpos_down=d.coin())
    return rope_back(d.ctx, a, b, n_dims, mode, 0, **custom)


def _rope_impl(ctx, op_code, op, a, b, n_dims, mode, n_ctx, n_orig_ctx=0, freq_base=10000.0, freq_scale=1.0,
               ext_factor=0.0, attn_factor=1.0, beta_fast=0.0, beta_slow=0.0, xpos_base=0.0, xpos_down=False,
               inplace=False):
    check_f32(op, a)
    check_types(op, b, (T.TYPE_I32,), "src1 (positions)", (a,))
    if b.ne[1] != 1 or b.ne[2] != 1 or b.ne[3] != 1 or b.ne[0] != a.ne[2]:
        raise GraphError(f"{op}: positions must be an I32 vector with one entry per src0 ne2 "
                         f"(b.ne0 == a.ne2): {shapes(a, b)}")
    n_dims = integer(op, "n_dims", n_dims)
    if n_dims < 2 or n_dims % 2 or n_dims > a.ne[0]:
        raise GraphError(f"{op}: n_dims must be even, >= 2 and <= ne0 = {a.ne[0]}, got {n_dims}: {shapes(a, b)}")
    mode = integer(op, "mode", mode)
    if mode not in ROPE_MODES:
        raise GraphError(f"{op}: mode must be 0 (adjacent pairs) or 2 (NeoX halves), got {mode}"
                         + (" (mode 4, ChatGLM, is not supported)" if mode & 4 else ""))
    n_ctx = integer(op, "n_ctx", n_ctx, lo=0)
    n_orig_ctx = integer(op, "n_orig_ctx", n_orig_ctx, lo=0)
    freq_base = real(op, "freq_base", freq_base, positive=True)
    freq_scale = real(op, "freq_scale", freq_scale, positive=True)
    ext_factor = real(op, "ext_factor", ext_factor)
    attn_factor = real(op, "attn_factor", attn_factor)
    beta_fast = real(op, "beta_fast", beta_fast)
    beta_slow = real(op, "beta_slow", beta_slow)
    xpos_base = real(op, "xpos_base", xpos_base)
    xpos_down = boolean(op, "xpos_down", xpos_down)
    if ext_factor != 0.0 and (n_orig_ctx <= 0 or beta_fast <= 0.0 or beta_slow <= 0.0):
        raise GraphError(f"{op}: ext_factor != 0 (YaRN) needs n_orig_ctx > 0 and beta_fast, beta_slow > 0, "
                         f"got n_orig_ctx={n_orig_ctx} beta_fast={beta_fast} beta_slow={beta_slow}")
    if xpos_base != 0.0 and mode != 0:
        raise GraphError(f"{op}: xpos_base is defined for mode 0 only, got mode {mode}")
    params = [0, n_dims, mode, n_ctx, n_orig_ctx, freq_base, freq_scale, ext_factor, attn_factor,
              beta_fast, beta_slow, xpos_base, int(xpos_down)]
    return _node(ctx, op_code, a, [a, b], params, inplace)


def rope(ctx, a, b, n_dims: int, mode: int, n_ctx: int):
    """Rotary position embedding of the first n_dims elements of each row (ggml_rope): F32 a
    [ne0, ne1, ne2, ne3] -> same shape; b is an I32 vector [ne2] of positions.

    mode 0 rotates adjacent pairs, mode 2 (NeoX) pairs (k, k + n_dims/2); elements from n_dims
    on are copied (ggml at this commit rotates them too in mode 0). n_dims is even, 2..ne0;
    other modes are a GraphError. n_ctx (int >= 0) is recorded but unused (ggml reads it in the
    ChatGLM mode 4 only)."""
    return _rope_impl(ctx, ROPE, "rope", a, b, n_dims, mode, n_ctx)


@inplace_of(rope)
def rope_inplace(ctx, a, b, n_dims: int, mode: int, n_ctx: int):
    return _rope_impl(ctx, ROPE, "rope_inplace", a, b, n_dims, mode, n_ctx, inplace=True)


def rope_custom(ctx, a, b, n_dims: int, mode: int, n_ctx: int, n_orig_ctx: int = 0, freq_base: float = 10000.0,
                freq_scale: float = 1.0, ext_factor: float = 0.0, attn_factor: float = 1.0,
                beta_fast: float = 0.0, beta_slow: float = 0.0):
    """rope with theta_k = freq_scale * pos * freq_base^(-2k/n_dims), and YaRN (ext_factor,
    n_orig_ctx, beta_fast, beta_slow) and magnitude scaling (attn_factor) as ggml defines them
    (ggml_rope_custom). Shapes and rules as rope; freq_base and freq_scale must be > 0."""
    return _rope_impl(ctx, ROPE, "rope_custom", a, b, n_dims, mode, n_ctx, n_orig_ctx, freq_base, freq_scale,
                      ext_factor, attn_factor, beta_fast, beta_slow)


@inplace_of(rope_custom)
def rope_custom_inplace(ctx, a, b, n_dims: int, mode: int, n_ctx: int, n_orig_ctx: int = 0,
                        freq_base: float = 10000.0, freq_scale: float = 1.0, ext_factor: float = 0.0,
                        attn_factor: float = 1.0, beta_fast: float = 0.0, beta_slow: float = 0.0):
    return _rope_impl(ctx, ROPE, "rope_custom_inplace", a, b, n_dims, mode, n_ctx, n_orig_ctx, freq_base,
                      freq_scale, ext_factor, attn_factor, beta_fast, beta_slow, inplace=True)


def rope_xpos_inplace(ctx, a, b, n_dims: int, base: float, down: bool):
    """rope mode 0 with xPos scaling zeta = ((2k + 0.4 ne0) / (1.4 ne0))^(pos / base) (inverted when down),
    in place (ggml_rope_xpos_inplace): the result is a view of a. Shapes and rules as rope."""
    return _rope_impl(ctx, ROPE, "rope_xpos_inplace", a, b, n_dims, 0, 0, xpos_base=base, xpos_down=down,
                      inplace=True)


def rope_back(ctx, a, b, n_dims: int, mode: int, n_ctx: int, n_orig_ctx: int = 0, freq_base: float = 10000.0,
              freq_scale: float = 1.0, ext_factor: float = 0.0, attn_factor: float = 1.0, beta_fast: float = 0.0,
              beta_slow: float = 0.0, xpos_base: float = 0.0, xpos_down: bool = False):
    """ggml_rope_back: the gradient of rope for an output gradient a (the transposed rotation:
    sin's sign flipped, scale factors kept); same parameters as the forward op."""
    return _rope_impl(ctx, ROPE_BACK, "rope_back", a, b, n_dims, mode, n_ctx, n_orig_ctx, freq_base, freq_scale,
                      ext_factor, attn_factor, beta_fast, beta_slow, xpos_base, xpos_down)


@rebuild_of(ROPE, ROPE_BACK)
def _rope_rebuild(ctx, srcs, rec):
    name = "rope" if rec.op == ROPE else "rope_back"
    return _rope_impl(ctx, rec.op, name, *srcs, *_rope_params(rec), inplace=rec.inplace)
