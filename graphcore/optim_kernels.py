"""The optimizers' vector kernels, compiled (graphcore.optim's arithmetic on the flat float32 vectors).

A training step of a small model makes thousands of them, so each must cost microseconds (numpy's
float64 BLAS dot may even wake a second thread for 13k elements), and L-BFGS's work between two
evaluations is one or two calls. Reductions accumulate in float64 in a fixed (vectorised) order.
Parameters and gradients move between x and the graph's tensors by address (f32_1d).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .native import f32_1d


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _dot(a, b):
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


@njit(cache=True, nogil=True)
def _norm(a):
    return np.sqrt(_dot(a, a))


@njit(cache=True, nogil=True)
def _step_from(x, xp, d, step):
    """x = xp + step * d"""
    st = np.float32(step)
    for i in range(x.shape[0]):
        x[i] = xp[i] + d[i] * st


@njit(cache=True, nogil=True)
def _two_loop(d, g, lm_s, lm_y, lm_ys, lm_alpha, end, bound, ys_over_yy):
    """L-BFGS two-loop recursion: d = -H g from the last `bound` pairs; returns the final j."""
    m = lm_s.shape[0]
    for i in range(d.shape[0]):
        d[i] = -g[i]
    j = end
    for _ in range(bound):
        j = (j + m - 1) % m
        lm_alpha[j] = np.float32(_dot(lm_s[j], d)) / lm_ys[j]
        a = lm_alpha[j]
        for i in range(d.shape[0]):
            d[i] -= lm_y[j, i] * a
    c = np.float32(ys_over_yy)
    for i in range(d.shape[0]):
        d[i] *= c
    for _ in range(bound):
        beta = np.float32(_dot(lm_y[j], d)) / lm_ys[j]
        c = np.float32(lm_alpha[j] - beta)
        for i in range(d.shape[0]):
            d[i] += lm_s[j, i] * c
        j = (j + 1) % m
    return j


@njit(cache=True, nogil=True)
def _lbfgs_direction(x, xp, g, gp, d, lm_s, lm_y, lm_ys, lm_alpha, e, bound):
    """After a line search: the curvature pair s = x - xp, y = g - gp into slot e, then the new
    direction d by the two-loop recursion over the last `bound` pairs, and xp, gp = x, g for the
    next line search. Returns the two-loop's final j."""
    s, y = lm_s[e], lm_y[e]
    for i in range(x.shape[0]):
        s[i] = x[i] - xp[i]
        y[i] = g[i] - gp[i]
    ys, yy = np.float32(_dot(y, s)), np.float32(_dot(y, y))
    lm_ys[e] = ys
    j = _two_loop(d, g, lm_s, lm_y, lm_ys, lm_alpha, (e + 1) % lm_s.shape[0], bound, ys / yy)
    for i in range(x.shape[0]):         # a loop: numba's slice assignment is a generic strided copy, 3x slower
        xp[i] = x[i]
        gp[i] = g[i]
    return j


@njit(cache=True, nogil=True)
def _norms(x, g):
    return _norm(x), _norm(g)


@njit(cache=True, nogil=True)
def _adam_update(x, g, m, v, offs, decay_flags, gnorm, beta1, beta2, beta1h, beta2h, eps, p_decay):
    """One Adam(W) step over x in place, in ggml's float32 operation order, without temporaries;
    parameter p decays by p_decay when decay_flags[p] (it has >= decay_min_ndim dims)."""
    omb1, omb2 = np.float32(1.0) - beta1, np.float32(1.0) - beta2
    for p in range(offs.shape[0] - 1):
        keep = np.float32(1.0) - (p_decay if decay_flags[p] else np.float32(0.0))
        for i in range(offs[p], offs[p + 1]):
            gi = g[i] * gnorm
            m[i] = m[i] * beta1 + gi * omb1
            v[i] = v[i] * beta2 + gi * gi * omb2
            vh = np.sqrt(v[i] * beta2h) + eps
            x[i] = x[i] * keep - (m[i] * beta1h) / vh


@njit(cache=True, nogil=True)
def _scatter(x, addrs, offs):
    """Copy x's slices into the contiguous float32 tensors at addrs (x -> parameters)."""
    for p in range(addrs.shape[0]):
        n = offs[p + 1] - offs[p]
        t = f32_1d(addrs[p], (n,), (4,))
        for i in range(n):
            t[i] = x[offs[p] + i]


@njit(cache=True, nogil=True)
def _step_scatter(x, xp, d, step, addrs, offs):
    """A line search's trial point: x = xp + step * d, written into the parameters too."""
    _step_from(x, xp, d, step)
    _scatter(x, addrs, offs)


GATHER_SET, GATHER_ADD, GATHER_FIRST = 0, 1, 2


@njit(cache=True, nogil=True)
def _gather(x, addrs, offs, scale, mode):
    """x's slices = scale * the tensors at addrs (parameters or gradients -> x); GATHER_ADD adds to
    x, GATHER_FIRST adds to zero (what zeroing x then adding gives, -0.0 included, in one pass)."""
    sc = np.float32(scale)
    for p in range(addrs.shape[0]):
        n = offs[p + 1] - offs[p]
        t = f32_1d(addrs[p], (n,), (4,))
        o = offs[p]
        if mode == GATHER_ADD:
            for i in range(n):
                x[o + i] += t[i] * sc
        elif mode == GATHER_FIRST:
            for i in range(n):
                x[o + i] = np.float32(0.0) + t[i] * sc
        else:
            for i in range(n):
                x[o + i] = t[i] * sc
