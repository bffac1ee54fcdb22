"""Row normalisation: norm, rms_norm and rms_norm_back (ggml's definitions, any strides).

Each row of ne0 elements is reduced in float64. rms_norm is ggml's arithmetic bit for bit (float32
squares summed in order in float64, scale and product in float32; short rows, ne0 <= ACROSS, summed
across a group of rows at once). rms_norm_back: short rows in order, taken across a group of rows,
longer ones in 8 fixed lanes (kernel.dot_f64_lanes: the sums vectorise); norm: in order. The order
depends on ne0 only, so results are the same bits for any thread count and layout. eps is stored as
op_params[0] (float32 bits), as in ggml.
"""
from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..kernel import (dot_f64_lanes, f32_at, inline, is_dense, param_f32, record, row_addr, rows_contiguous, split,
                      t_addr, view_f32)
from ..native import STACK_N, stack_f64
from .args import real
from .common import check_f32, check_same_shape, inplace_of, inplace_view, next_row, row_index, shapes
from .elementwise import sub
from .reduce import mean
from .refs import f64
from .registry import new_node, reference_of, register, sample_of, tasks_by_rows
from .registry import param_f32 as param_f32_of
from .registry import rebuild_of


ACROSS = 64     # rows up to this long, when dense, are summed across a group of rows (vectorises)


@inline
def _row_dot(a, b, n):
    """sum(a * b) over a row in float64 in the order the short-row path uses (in order up to
    ACROSS elements), or in lanes for longer rows."""
    if n > ACROSS:
        return dot_f64_lanes(a, b, n)
    s = 0.0
    for i in range(n):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


def _eps(op, eps):
    return real(op, "eps", eps, positive=True)


# -- norm: (x - mean) / sqrt(var + eps) per row -------------------------------------------------------
def _norm_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    eps = np.float64(param_f32(rec, 0))
    ne3, ne2, ne1, ne0 = a.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
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


@reference_of(NORM)
def _norm_reference(node, srcs):
    x = f64(srcs[0])
    c = x - x.mean(axis=3, keepdims=True)
    return c / np.sqrt((c * c).mean(axis=3, keepdims=True) + param_f32_of(node, 0))


@sample_of(NORM)
def _norm_sample(d):
    a, eps = d.f32(), d.choice([1e-5, 1e-6, 1e-3, 0.5])
    return norm_inplace(d.ctx, a, eps) if d.inplace(a) else norm(d.ctx, a, eps)


def _row_norm(ctx, code, a, eps, inplace, op):
    """The builder shared by norm and rms_norm: a row-wise op of a with eps in op_params[0]."""
    check_f32(op, a)
    eps = _eps(op, eps)
    if inplace:
        return inplace_view(ctx, code, a, [a], [eps])
    return new_node(ctx, code, a.type, a.ne, [a], [eps])


def norm(ctx, a, eps: float):
    """Each row normalised to mean 0 and variance 1: (x - mean) / sqrt(var + eps) (ggml_norm).

    F32 a [ne0, ne1, ne2, ne3] -> same shape; eps is a float > 0."""
    return _row_norm(ctx, NORM, a, eps, False, "norm")


@inplace_of(norm)
def norm_inplace(ctx, a, eps: float):
    return _row_norm(ctx, NORM, a, eps, True, "norm_inplace")


@rebuild_of(NORM)
def _norm_rebuild(ctx, srcs, rec):
    return (norm_inplace if rec.inplace else norm)(ctx, *srcs, rec.f32(0))


# -- rms_norm: x / sqrt(mean(x^2) + eps) per row -------------------------------------------------------
def _rms_norm_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    eps = np.float64(param_f32(rec, 0))
    ne3, ne2, ne1, ne0 = a.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    if ne0 <= ACROSS and is_dense(r, 1, 4) and rows_contiguous(r, 0):
        # short dense rows: the sums (same order) taken across a group of rows, then each row
        ss = stack_f64()
        i1, i2, i3 = row_index(lo, ne1, ne2)
        for g0 in range(lo, hi, STACK_N):
            g = min(STACK_N, hi - g0)
            xg = f32_at(t_addr(r, 1) + 4 * g0 * ne0, g * ne0)
            for j in range(g):
                ss[j] = 0.0
            for i0 in range(ne0):
                xc = xg[i0::ne0]
                for j in range(g):
                    ss[j] += np.float64(xc[j] * xc[j])
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
    # change the sum's last bits, and now and then the float32 mean), x * scale in float32
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


@reference_of(RMS_NORM)
def _rms_norm_reference(node, srcs):
    x = f64(srcs[0])
    return x / np.sqrt((x * x).mean(axis=3, keepdims=True) + param_f32_of(node, 0))


@sample_of(RMS_NORM)
def _rms_norm_sample(d):
    a, eps = d.f32(), d.choice([1e-5, 1e-6, 1e-3, 0.5])
    return rms_norm_inplace(d.ctx, a, eps) if d.inplace(a) else rms_norm(d.ctx, a, eps)


def rms_norm(ctx, a, eps: float):
    """Each row divided by its root mean square: x / sqrt(mean(x^2) + eps) (ggml_rms_norm).

    F32 a [ne0, ne1, ne2, ne3] -> same shape; eps is a float > 0."""
    return _row_norm(ctx, RMS_NORM, a, eps, False, "rms_norm")


@inplace_of(rms_norm)
def rms_norm_inplace(ctx, a, eps: float):
    return _row_norm(ctx, RMS_NORM, a, eps, True, "rms_norm_inplace")


@rebuild_of(RMS_NORM)
def _rms_norm_rebuild(ctx, srcs, rec):
    return (rms_norm_inplace if rec.inplace else rms_norm)(ctx, *srcs, rec.f32(0))


# -- rms_norm_back: gradient of rms_norm at x (src0) for the output gradient dz (src1) -----------------
def _rms_norm_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    g = view_f32(r, 2)
    eps = np.float64(param_f32(rec, 0))
    ne3, ne2, ne1, ne0 = a.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    if ne0 <= ACROSS and is_dense(r, 1, 4) and is_dense(r, 2, 4) and rows_contiguous(r, 0):
        # short dense rows: both sums (same order) taken across a group of rows, then each row
        sxx = stack_f64()
        sxdz = stack_f64()
        i1, i2, i3 = row_index(lo, ne1, ne2)
        for g0 in range(lo, hi, STACK_N):
            n = min(STACK_N, hi - g0)
            xg = f32_at(t_addr(r, 1) + 4 * g0 * ne0, n * ne0)
            zg = f32_at(t_addr(r, 2) + 4 * g0 * ne0, n * ne0)
            for j in range(n):
                sxx[j] = 0.0
                sxdz[j] = 0.0
            for i0 in range(ne0):
                xc = xg[i0::ne0]
                zc = zg[i0::ne0]
                for j in range(n):
                    v = np.float64(xc[j])
                    sxx[j] += v * v
                    sxdz[j] += v * np.float64(zc[j])
            for j in range(n):
                x = xg[j * ne0:j * ne0 + ne0]
                dz = zg[j * ne0:j * ne0 + ne0]
                y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
                rrms = 1.0 / np.sqrt(sxx[j] / ne0 + eps)
                c = -sxdz[j] / (sxx[j] + eps * ne0)
                for i0 in range(ne0):
                    y[i0] = np.float32((np.float64(dz[i0]) + np.float64(x[i0]) * c) * rrms)
                i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
        return
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        x = a[i3, i2, i1]
        dz = g[i3, i2, i1]
        y = d[i3, i2, i1]
        sxx = _row_dot(x, x, ne0)
        sxdz = _row_dot(x, dz, ne0)
        rrms = 1.0 / np.sqrt(sxx / ne0 + eps)
        c = -sxdz / (sxx + eps * ne0)
        for i0 in range(ne0):
            y[i0] = np.float32((np.float64(dz[i0]) + np.float64(x[i0]) * c) * rrms)


def _rms_norm_back_backward(ctx, t, g, d):
    # rms_norm_back(x, dz) = J(x) dz with J, rms_norm's Jacobian, symmetric: linear in dz
    if d.needs(0):
        raise GraphError(f"rms_norm_back: no rule for the gradient with respect to x (rms_norm's second "
                         f"derivative), needed for {shapes(t.src[0])}")
    if d.needs(1):
        d.add(1, rms_norm_back(ctx, t.src[0], g, param_f32_of(t, 0)))


RMS_NORM_BACK = register("RMS_NORM_BACK", "rms_norm_back(x)", _rms_norm_back_kernel, n_tasks=tasks_by_rows,
                         inplace=True, backward=_rms_norm_back_backward)


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
