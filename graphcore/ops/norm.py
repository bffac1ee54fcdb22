"""Row normalisation: norm, rms_norm and rms_norm_back (ggml's definitions, any strides).

Each row of ne0 elements is reduced in float64, in order, as ggml does. rms_norm is ggml's arithmetic
bit for bit (float32 squares summed in order in float64, scale and product in float32). A sum in order
is a chain of dependent adds (4 cycles each), so dense rows are summed across a group of rows at once:
each row's sum is still its own chain, in its own order, and the chains run side by side (in vector
lanes for short rows, in the core's parallel adders for long ones). The order depends on ne0 only, so
results are the same bits for any thread count and layout. eps is stored as op_params[0] (float32
bits), as in ggml.
"""
from __future__ import annotations

import numpy as np

from ..kernel import f32_at, inline, is_dense, param_f32, row_addr, rows_contiguous, t_addr, view_f32
from ..native import STACK_N, stack_f64
from .args import real
from .common import check_f32, check_same_shape, inplace_doc, inplace_view, linear_in_dy, my_rows, next_row, row_index
from .elementwise import sub
from .reduce import mean
from .refs import f64
from .registry import new_node, reference_of, register, sample_of, tasks_by_rows
from .registry import param_f32 as param_f32_of
from .registry import rebuild_of


GROUP_FLOATS = 16384     # dense rows are summed in groups of about this many elements (64 KiB: in L2)


@inline
def _group_rows(ne0):
    """Rows per group: about GROUP_FLOATS elements, at least 8 (8 chains keep both adders busy)."""
    return min(STACK_N, max(8, GROUP_FLOATS // max(ne0, 1)))


@inline
def _row_dot(a, b, n):
    """sum(a * b) over a row in float64, in order: the group path's order, for strided rows."""
    s = 0.0
    for i in range(n):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


@inline
def _group_sums(xg, zg, n, ne0, sxx, sxz, forward):
    """Over n dense rows of ne0 elements (xg, zg: the rows' elements, back to back), each row in
    order, summed in float64: sxx[j] = sum(x^2), for rms_norm (forward) of ggml's float32 squares;
    for rms_norm_back of float64 squares, and sxz[j] = sum(x z). Short rows are taken across the
    group (the loop over rows vectorises); long ones eight chains at a time (_eight_chains)."""
    if ne0 > 64:
        j = 0
        step = 8 if forward else 4          # rms_norm_back has two sums a row: 8 chains either way
        while j + step <= n:
            _eight_chains(xg, zg, j * ne0, ne0, sxx, sxz, j, forward)
            j += step
        for k in range(j, n):
            sxx[k] = 0.0
            sxz[k] = 0.0
            for i0 in range(k * ne0, k * ne0 + ne0):
                _add_terms(xg, zg, i0, sxx, sxz, k, forward)
        return
    for j in range(n):
        sxx[j] = 0.0
        sxz[j] = 0.0
    for i0 in range(ne0):
        xc = xg[i0::ne0]
        zc = zg[i0::ne0]
        for j in range(n):
            _add_terms(xc, zc, j, sxx, sxz, j, forward)


@inline
def _add_terms(x, z, i, sxx, sxz, j, forward):
    if forward:
        sxx[j] += np.float64(x[i] * x[i])
    else:
        v = np.float64(x[i])
        sxx[j] += v * v
        sxz[j] += v * np.float64(z[i])


@inline
def _sq(x, i, forward):
    return np.float64(x[i] * x[i]) if forward else np.float64(x[i]) * np.float64(x[i])


@inline
def _eight_chains(xg, zg, o, ne0, sxx, sxz, j, forward):
    """Eight in-order sums side by side (an add takes 4 cycles and two run at once, so one chain
    uses an eighth of the adders): forward, sum(x^2) of rows j..j+7; else sum(x^2) and sum(x z) of
    rows j..j+3. Row k starts at xg[o + (k - j) ne0]."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    if forward:
        for i in range(o, o + ne0):
            a0 += _sq(xg, i, True)
            a1 += _sq(xg, i + ne0, True)
            a2 += _sq(xg, i + 2 * ne0, True)
            a3 += _sq(xg, i + 3 * ne0, True)
            a4 += _sq(xg, i + 4 * ne0, True)
            a5 += _sq(xg, i + 5 * ne0, True)
            a6 += _sq(xg, i + 6 * ne0, True)
            a7 += _sq(xg, i + 7 * ne0, True)
        sxx[j], sxx[j + 1], sxx[j + 2], sxx[j + 3] = a0, a1, a2, a3
        sxx[j + 4], sxx[j + 5], sxx[j + 6], sxx[j + 7] = a4, a5, a6, a7
        return
    for i in range(o, o + ne0):
        a0 += _sq(xg, i, False)
        a1 += np.float64(xg[i]) * np.float64(zg[i])
        a2 += _sq(xg, i + ne0, False)
        a3 += np.float64(xg[i + ne0]) * np.float64(zg[i + ne0])
        a4 += _sq(xg, i + 2 * ne0, False)
        a5 += np.float64(xg[i + 2 * ne0]) * np.float64(zg[i + 2 * ne0])
        a6 += _sq(xg, i + 3 * ne0, False)
        a7 += np.float64(xg[i + 3 * ne0]) * np.float64(zg[i + 3 * ne0])
    sxx[j], sxz[j], sxx[j + 1], sxz[j + 1] = a0, a1, a2, a3
    sxx[j + 2], sxz[j + 2], sxx[j + 3], sxz[j + 3] = a4, a5, a6, a7


@inline
def _row_setup(rec, ith, nth):
    """common.my_rows and eps (op_params[0])."""
    r, d, a, lo, hi = my_rows(rec, ith, nth)
    return r, d, a, np.float64(param_f32(rec, 0)), lo, hi


def _eps(op, eps):
    return real(op, "eps", eps, positive=True)


def _row_norm_builders(code, name, summary):
    """norm's and rms_norm's builders `name(ctx, a, eps)` and `name_inplace` (eps, a float > 0, in
    op_params[0]), with their sampler and graph-file rebuild."""
    def builder(label, inplace):
        def build(ctx, a, eps: float):
            check_f32(label, a)
            eps = _eps(label, eps)
            if inplace:
                return inplace_view(ctx, code, a, [a], [eps])
            return new_node(ctx, code, a.type, a.ne, [a], [eps])
        build.__name__ = build.__qualname__ = label
        build.__module__ = __name__
        return build

    build, build_inplace = builder(name, False), builder(name + "_inplace", True)
    build.__doc__ = f"{summary}\n\nF32 a [ne0, ne1, ne2, ne3] -> same shape; eps is a float > 0."
    build_inplace.__doc__ = inplace_doc(name, build.__doc__)

    def sample(d):
        a, eps = d.f32(), d.choice([1e-5, 1e-6, 1e-3, 0.5])
        return (build_inplace if d.inplace(a) else build)(d.ctx, a, eps)
    sample_of(code)(sample)
    rebuild_of(code)(lambda ctx, srcs, rec: (build_inplace if rec.inplace else build)(ctx, *srcs, rec.f32(0)))
    return build, build_inplace


# -- norm: (x - mean) / sqrt(var + eps) per row -------------------------------------------------------
def _norm_kernel(rec, ith, nth, phase, wdata, wsize):
    r, d, a, eps, lo, hi = _row_setup(rec, ith, nth)
    ne3, ne2, ne1, ne0 = a.shape
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        x = a[i3, i2, i1]
        y = d[i3, i2, i1]
        s = 0.0
        for i0 in range(ne0):
            s += np.float64(x[i0])
        mean = s / ne0
        s2 = 0.0
        for i0 in range(ne0):
            v = np.float64(x[i0]) - mean
            s2 += v * v
        rs = 1.0 / np.sqrt(s2 / ne0 + eps)
        for i0 in range(ne0):
            y[i0] = np.float32((np.float64(x[i0]) - mean) * rs)


def _center(ctx, x):
    return sub(ctx, x, mean(ctx, x))


def _norm_backward(ctx, t, g, d):
    # norm(x) = rms_norm(c(x)) with c(x) = x - mean(x), a symmetric projection:
    # dx = c(rms_norm_back(c(x), g))
    if d.needs(0):
        x = t.src[0]
        d.add(0, _center(ctx, rms_norm_back(ctx, _center(ctx, x), g, param_f32_of(t, 0))))


NORM = register("NORM", "norm(x)", _norm_kernel, n_tasks=tasks_by_rows, inplace=True, backward=_norm_backward)


norm, norm_inplace = _row_norm_builders(
    NORM, "norm", "Each row normalised to mean 0 and variance 1: (x - mean) / sqrt(var + eps) (ggml_norm).")


@reference_of(NORM)
def _norm_reference(node, srcs):
    x = f64(srcs[0])
    c = x - x.mean(axis=3, keepdims=True)
    return c / np.sqrt((c * c).mean(axis=3, keepdims=True) + param_f32_of(node, 0))


# -- rms_norm: x / sqrt(mean(x^2) + eps) per row -------------------------------------------------------
def _rms_norm_kernel(rec, ith, nth, phase, wdata, wsize):
    r, d, a, eps, lo, hi = _row_setup(rec, ith, nth)
    ne3, ne2, ne1, ne0 = a.shape
    if is_dense(r, 1, 4) and rows_contiguous(r, 0):
        # dense rows: the sums (same order) taken across a group of rows, then each row
        ss = stack_f64()
        i1, i2, i3 = row_index(lo, ne1, ne2)
        group = _group_rows(ne0)
        for g0 in range(lo, hi, group):
            g = min(group, hi - g0)
            xg = f32_at(t_addr(r, 1) + 4 * g0 * ne0, g * ne0)
            _group_sums(xg, xg, g, ne0, ss, ss, True)
            for j in range(g):
                x = xg[j * ne0:j * ne0 + ne0]
                y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
                rs = _rms_scale(ss[j], ne0, eps)
                for i0 in range(ne0):
                    y[i0] = x[i0] * rs
                i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1)
    i1, i2, i3 = row_index(lo, ne1, ne2)
    for _ in range(lo, hi):
        if not fast:
            _rms_norm_row(a[i3, i2, i1], d[i3, i2, i1], ne0, eps)
        elif row_addr(r, 0, i1, i2, i3) == row_addr(r, 1, i1, i2, i3):     # in place: one array, so the
            y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)                     # loop vectorises (unary_loop)
            _rms_norm_row(y, y, ne0, eps)
        else:
            _rms_norm_row(f32_at(row_addr(r, 1, i1, i2, i3), ne0), f32_at(row_addr(r, 0, i1, i2, i3), ne0), ne0, eps)
        i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)


@inline
def _rms_scale(sum_sq, n, eps):
    """ggml's rms_norm scale in its float32 arithmetic: 1 / sqrtf((float)(sum / n) + eps)."""
    mean = np.float32(sum_sq / n)
    return np.float32(1.0) / np.float32(np.sqrt(np.float32(mean + np.float32(eps))))


@inline
def _rms_norm_row(x, y, n, eps):
    # as ggml computes it, bit for bit: float32 squares summed in order in float64 (one chain: lanes would
    # change the sum's last bits, and now and then the float32 mean), x * scale in float32 (strided rows)
    s = 0.0
    for i0 in range(n):
        s += np.float64(x[i0] * x[i0])
    rs = _rms_scale(s, n, eps)
    for i0 in range(n):
        y[i0] = x[i0] * rs


def _rms_norm_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, rms_norm_back(ctx, t.src[0], g, param_f32_of(t, 0)))


RMS_NORM = register("RMS_NORM", "rms_norm(x)", _rms_norm_kernel, n_tasks=tasks_by_rows, inplace=True,
                    backward=_rms_norm_backward)


rms_norm, rms_norm_inplace = _row_norm_builders(
    RMS_NORM, "rms_norm", "Each row divided by its root mean square: x / sqrt(mean(x^2) + eps) (ggml_rms_norm).")


@reference_of(RMS_NORM)
def _rms_norm_reference(node, srcs):
    x = f64(srcs[0])
    return x / np.sqrt((x * x).mean(axis=3, keepdims=True) + param_f32_of(node, 0))


# -- rms_norm_back: gradient of rms_norm at x (src0) for the output gradient dz (src1) -----------------
def _rms_norm_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r, d, a, eps, lo, hi = _row_setup(rec, ith, nth)
    g = view_f32(r, 2)
    ne3, ne2, ne1, ne0 = a.shape
    if is_dense(r, 1, 4) and is_dense(r, 2, 4) and rows_contiguous(r, 0):
        # dense rows: both sums (same order) taken across a group of rows, then each row
        sxx = stack_f64()
        sxdz = stack_f64()
        i1, i2, i3 = row_index(lo, ne1, ne2)
        group = _group_rows(ne0)
        for g0 in range(lo, hi, group):
            n = min(group, hi - g0)
            xg = f32_at(t_addr(r, 1) + 4 * g0 * ne0, n * ne0)
            zg = f32_at(t_addr(r, 2) + 4 * g0 * ne0, n * ne0)
            _group_sums(xg, zg, n, ne0, sxx, sxdz, False)
            for j in range(n):
                _rms_norm_back_row(xg[j * ne0:j * ne0 + ne0], zg[j * ne0:j * ne0 + ne0],
                                   f32_at(row_addr(r, 0, i1, i2, i3), ne0), ne0, sxx[j], sxdz[j], eps)
                i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        x = a[i3, i2, i1]
        dz = g[i3, i2, i1]
        _rms_norm_back_row(x, dz, d[i3, i2, i1], ne0, _row_dot(x, x, ne0), _row_dot(x, dz, ne0), eps)


@inline
def _rms_norm_back_row(x, dz, y, n, sxx, sxdz, eps):
    """y = (dz + x c) / sqrt(sxx / n + eps), c = -sxdz / (sxx + n eps): the row's gradient given its
    sums sxx = sum(x^2) and sxdz = sum(x dz)."""
    rrms = 1.0 / np.sqrt(sxx / n + eps)
    c = -sxdz / (sxx + eps * n)
    for i0 in range(n):
        y[i0] = np.float32((np.float64(dz[i0]) + np.float64(x[i0]) * c) * rrms)


# rms_norm_back(x, dz) = J(x) dz with J, rms_norm's Jacobian, symmetric: linear in dz
RMS_NORM_BACK = register("RMS_NORM_BACK", "rms_norm_back(x)", _rms_norm_back_kernel, n_tasks=tasks_by_rows,
                         inplace=True, backward=linear_in_dy(
                             "rms_norm_back", "rms_norm",
                             lambda ctx, t, g: rms_norm_back(ctx, t.src[0], g, param_f32_of(t, 0))))


@reference_of(RMS_NORM_BACK)
def _rms_norm_back_reference(node, srcs):
    # y = x r, r = (mean(x^2) + eps)^-1/2:  dx = r dz - x r^3 sum(x dz) / n
    x, dz = f64(srcs[0]), f64(srcs[1])
    r = 1.0 / np.sqrt((x * x).mean(axis=3, keepdims=True) + param_f32_of(node, 0))
    return r * dz - x * r ** 3 * (x * dz).sum(axis=3, keepdims=True) / x.shape[3]


@sample_of(RMS_NORM_BACK)
def _rms_norm_back_sample(d):
    a = d.f32()
    return rms_norm_back(d.ctx, a, d.f32(a.ne), d.choice([1e-5, 1e-6, 1e-3, 0.5]))


def rms_norm_back(ctx, a, b, eps: float):
    """ggml_rms_norm_back: the gradient of rms_norm(a, eps) given b, the gradient of its output:
    (b - a * sum(a*b) / (sum(a^2) + n*eps)) / sqrt(mean(a^2) + eps), row by row."""
    check_f32("rms_norm_back", a, b)
    check_same_shape("rms_norm_back", a, b)
    eps = _eps("rms_norm_back", eps)
    return new_node(ctx, RMS_NORM_BACK, a.type, a.ne, [a, b], [eps])


@rebuild_of(RMS_NORM_BACK)
def _rms_norm_back_rebuild(ctx, srcs, rec):
    return rms_norm_back(ctx, *srcs, rec.f32(0))
