"""Attention pieces: diag_mask_inf, diag_mask_zero, soft_max (and soft_max_ext), soft_max_back
(rope is in rope.py).

Rows are processed independently (soft_max in float32 with float64 sums, as ggml computes it in
float32), so the bits do not depend on the thread count. Any strides are accepted (ggml asks for contiguous rows).
"""
from __future__ import annotations


import numpy as np

from .. import tensor as TN
from ..errors import GraphError
from ..kernel import (F32, R_NSRC, exp_f32, f32_at, fp16_to_fp32, fp32_to_fp16, inline, is_dense, max_f32_lanes,
                      param_f32, param_i32, record, row_addr, rows_contiguous, split, sum_f64_lanes, t_addr, t_ne,
                      view_f32)
from .args import integer, real
from .common import check_f32, check_same_shape, inplace_of, inplace_view, my_rows, next_row, row_index, shapes
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
    r, d, a, lo, hi = my_rows(rec, ith, nth)
    n_past = param_i32(rec, 0)
    ne3, ne2, ne1, ne0 = a.shape
    if rows_contiguous(r, 0) and rows_contiguous(r, 1):     # raw rows, no divisions per row
        i1, i2, i3 = row_index(lo, ne1, ne2)
        for _ in range(lo, hi):
            _diag_mask_row(f32_at(row_addr(r, 1, i1, i2, i3), ne0), f32_at(row_addr(r, 0, i1, i2, i3), ne0),
                           n_past + i1, value, ne0)
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        _diag_mask_row(a[i3, i2, i1], d[i3, i2, i1], n_past + i1, value, ne0)


@inline
def _diag_mask_row(x, y, lim, value, n):
    for i0 in range(n):
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


# -- soft_max: softmax(x * scale + mask + alibi) over each row; op_params = {scale, max_bias, exp_f16} --------
# ggml 4480542's table of exp over every fp16 value (ggml_table_exp_f16: fp16(expf(fp16 value))), which its
# soft_max reads at fp16(w - max) (exp_f16 = 1); float64 exp rounded to float32 is expf's result
_H = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
with np.errstate(over="ignore", invalid="ignore"):
    EXP_F16 = np.exp(_H.astype(np.float64)).astype(np.float32).astype(np.float16).view(np.uint16)
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
def _soft_max_row(x, mrow, prow, y, n, scale, slope, has_mask, has_pos, exp_f16):
    """One row in float32, as ggml does: w = x * scale (+ mask) (+ slope * pos) (kept in y), its
    maximum, y = exp(w - max) (exp_f32: 8 lanes a step; with exp_f16 ggml's table, EXP_F16[fp16(w - max)]),
    their sum in float64 lanes (exact for fp16 values in any order), y * (1 / sum).
    Each pass is a flat loop over an L1-resident row that vectorises; the order of every sum depends
    on n only, so the bits do not depend on the thread count or the layout. A row with no maximum
    (all -inf) gives zeros; a NaN gives NaN."""
    src = x
    if has_mask or has_pos or scale != F32(1.0):     # x * 1 is x: the unscaled row is read directly
        for i in range(n):
            w = x[i] * scale
            if has_mask:
                w += mrow[i]
            if has_pos:
                w += slope * prow[i]
            y[i] = w
        src = y
    mx = max_f32_lanes(src, n)
    if mx == F32(-np.inf):
        for i in range(n):
            y[i] = F32(0.0)
        return
    if exp_f16:
        for i in range(n):
            y[i] = fp16_to_fp32(EXP_F16[fp32_to_fp16(src[i] - mx)])
    else:
        for i in range(n):
            y[i] = exp_f32(src[i] - mx)
    rs = F32(1.0 / sum_f64_lanes(y, n))
    for i in range(n):
        y[i] *= rs


SOFT_MAX_BLOCK = 4096      # elements in a block of rows of _soft_max_dense: its three passes stay in L1


@inline
def _soft_max_dense(xa, ya, n_rows, n):
    """_soft_max_row (without scale, mask, ALiBi or exp_f16) over n_rows back-to-back rows of n at xa, into
    ya, a block of rows at a time: each row's w - max, then exp over the whole block in one flat loop (8
    lanes a step even when rows are shorter than that: 512 rows of 8 went 5x faster), then each row's sum
    and scaling. The same operations on the same values as row by row, so the same bits."""
    if n == 0:
        return
    per = max(1, SOFT_MAX_BLOCK // n)
    for k0 in range(0, n_rows, per):
        k1 = min(n_rows, k0 + per)
        for k in range(k0, k1):
            x, y = f32_at(xa + k * n * 4, n), f32_at(ya + k * n * 4, n)
            mx = max_f32_lanes(x, n)
            if mx == F32(-np.inf):          # no maximum: exp(-inf) writes the row's zeros
                for i in range(n):
                    y[i] = F32(-np.inf)
            else:
                for i in range(n):
                    y[i] = x[i] - mx
        yb = f32_at(ya + k0 * n * 4, (k1 - k0) * n)
        for i in range((k1 - k0) * n):
            yb[i] = exp_f32(yb[i])
        for k in range(k0, k1):
            y = f32_at(ya + k * n * 4, n)
            s = sum_f64_lanes(y, n)
            if s != 0.0:                    # 0 only for a row of zeros (no maximum); exp(0) = 1 otherwise
                rs = F32(1.0 / s)
                for i in range(n):
                    y[i] *= rs


def _soft_max_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    nsrc = r[R_NSRC]
    has_mask = nsrc > 1 and t_addr(r, 2) != 0
    # pos only counts with ALiBi (max_bias > 0): its slope is 0 otherwise, and 0 * inf would be NaN
    has_pos = nsrc > 2 and t_addr(r, 3) != 0 and param_f32(rec, 1) > 0.0
    scale, max_bias = param_f32(rec, 0), np.float64(param_f32(rec, 1))
    exp_f16 = param_i32(rec, 2) != 0
    ne0, ne1, ne2 = t_ne(r, 1, 0), t_ne(r, 1, 1), t_ne(r, 1, 2)
    m1 = t_ne(r, 2, 1) if has_mask else 1
    lo, hi = split(ne1 * ne2 * t_ne(r, 1, 3), ith, nth)
    if (not has_mask and not has_pos and scale == F32(1.0) and not exp_f16 and is_dense(r, 0, 4)
            and is_dense(r, 1, 4)):
        _soft_max_dense(t_addr(r, 1) + lo * ne0 * 4, t_addr(r, 0) + lo * ne0 * 4, hi - lo, ne0)
        return
    i1, i2, i3 = row_index(lo, ne1, ne2)
    if (rows_contiguous(r, 0) and rows_contiguous(r, 1) and (not has_mask or rows_contiguous(r, 2))
            and (not has_pos or rows_contiguous(r, 3))):     # raw rows: loops LLVM vectorises
        for _ in range(lo, hi):
            x = f32_at(row_addr(r, 1, i1, i2, i3), ne0)
            y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
            mrow = f32_at(row_addr(r, 2, i1 % m1, 0, 0), ne0) if has_mask else x
            prow = f32_at(t_addr(r, 3), ne0) if has_pos else x
            slope = F32(_alibi_slope(i2, ne2, max_bias)) if has_pos else F32(0.0)
            # (in place, x is y: one instantiation only, each costs seconds of a cold start)
            _soft_max_row(x, mrow, prow, y, ne0, scale, slope, has_mask, has_pos, exp_f16)
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    d, a, m, pp = view_f32(r, 0), view_f32(r, 1), view_f32(r, 2), view_f32(r, 3)
    for _ in range(lo, hi):
        x = a[i3, i2, i1]
        slope = F32(_alibi_slope(i2, ne2, max_bias)) if has_pos else F32(0.0)
        _soft_max_row(x, m[0, 0, i1 % m1] if has_mask else x, pp[0, 0, 0] if has_pos else x, d[i3, i2, i1], ne0,
                      scale, slope, has_mask, has_pos, exp_f16)
        i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)


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
    if param_i32_of(node, 2):               # ggml's fp16 exp table, read at fp16(w - max) of float32 w
        x = x.astype(np.float32)
    mx = x.max(axis=3, keepdims=True)
    dead = mx == -np.inf                       # a row masked everywhere gives zeros
    if param_i32_of(node, 2):
        with np.errstate(invalid="ignore"):
            e = EXP_F16[(x - np.where(dead, 0, mx)).astype(np.float16).view(np.uint16)].view(np.float16)
        e = e.astype(np.float64)
    else:
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
    exp_f16 = not d.backward and d.coin(30)         # a step function of its input: no gradient to check
    return soft_max_ext(d.ctx, a, mask, pos, d.choice([1.0, 0.125, -2.0]), max_bias, exp_f16=exp_f16)


def _divisors(n):
    return [k for k in range(1, n + 1) if n % k == 0]


def _soft_max(ctx, a, mask, pos, scale, max_bias, inplace, op, exp_f16=False):
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
    return _node(ctx, SOFT_MAX, a, srcs, [scale, max_bias, int(bool(exp_f16))], inplace)


def soft_max(ctx, a):
    """Softmax of each row, along ne0 (ggml_soft_max): F32 a [ne0, ne1, ne2, ne3] -> same shape.

    A row that is -inf everywhere gives zeros (not NaN)."""
    return _soft_max(ctx, a, None, None, 1.0, 0.0, False, "soft_max")


@inplace_of(soft_max)
def soft_max_inplace(ctx, a):
    return _soft_max(ctx, a, None, None, 1.0, 0.0, True, "soft_max_inplace")


def soft_max_ext(ctx, a, mask, pos, scale: float, max_bias: float, exp_f16: bool = False):
    """ggml_soft_max_ext: softmax(a * scale + mask + slope_h * pos) per row; mask (optional) is a
    matrix tiled over the rows, pos (optional, needed when max_bias > 0) a vector of positions,
    slope_h ALiBi's slope of head h = the row's ne2 index. F32 a [ne0, ne1, ne2, ne3] -> same shape.

    exp_f16 (a graphcore option, off by default) takes exp as ggml 4480542's CPU soft_max does: from
    its table of fp16 values, fp16(expf(fp16(w - max))) (about 1e-3 relative error per value), for
    results bit-identical to llama.cpp's; off, exp is float32 to 2 ulp.

    GraphError when mask is not [ne0, n] with n dividing ne1, pos not [ne0], or max_bias > 0
    without pos."""
    return _soft_max(ctx, a, mask, pos, scale, max_bias, False, "soft_max_ext", exp_f16)


@rebuild_of(SOFT_MAX)
def _soft_max_rebuild(ctx, srcs, rec):
    a, mask, pos = (list(srcs) + [None, None])[:3]
    return _soft_max(ctx, a, mask, pos, rec.f32(0), rec.f32(1), rec.inplace, "soft_max", rec.i32(2))


# -- soft_max_back: gradient of softmax given dy (src0) and y = softmax(x) (src1) ------------------------------
def _soft_max_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    d = view_f32(r, 0)
    g = view_f32(r, 1)
    yv = view_f32(r, 2)
    ne3, ne2, ne1, ne0 = g.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    if rows_contiguous(r, 0) and rows_contiguous(r, 1) and rows_contiguous(r, 2):   # raw rows
        i1, i2, i3 = row_index(lo, ne1, ne2)
        for _ in range(lo, hi):
            _soft_max_back_row(f32_at(row_addr(r, 1, i1, i2, i3), ne0), f32_at(row_addr(r, 2, i1, i2, i3), ne0),
                               f32_at(row_addr(r, 0, i1, i2, i3), ne0), ne0)
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        _soft_max_back_row(g[i3, i2, i1], yv[i3, i2, i1], d[i3, i2, i1], ne0)


@inline
def _soft_max_back_row(dy, y, dx, n):
    """dx = y * (dy - sum(y * dy)), in float64."""
    dot = 0.0
    for i0 in range(n):
        dot += np.float64(y[i0]) * np.float64(dy[i0])
    for i0 in range(n):
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
