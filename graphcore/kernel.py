"""What a kernel sees: one node record (flat int64s) and helpers to read it as numba arrays.

A kernel is a plain Python function `kernel(rec, ith, nth, phase, wdata, wsize)` compiled lazily
with numba as a C function (see ops/registry.py). `rec` is the address of the node's record:

    [0] op code  [1] number of sources  [2] error code  [3] error argument  [4] node index
    [5] sgemm address (ops registered with uses_blas=True, else 0)
    slot s (0 = dst, 1 + j = src[j]) at 8 + 10*s: type, addr, ne0..ne3, nb0..nb3
    [80..87] op_params, 16 int32 (the bytes of tensor.op_params)

`ith/nth` are ggml's thread index and task count; `phase` runs 0..n_phases-1 with a barrier
between phases (ggml's INIT/COMPUTE/FINALIZE); `wdata/wsize` is the shared work buffer.
A kernel never raises: it reports a data-dependent failure with `fail(r, code, arg)`.
"""
from __future__ import annotations

import hashlib
import types

import numpy as np
from numba import njit

from ._inline_copy import install as _install_inline_copy
from .native import (f16_to_f32, f32_1d, f32_4d, f32_bits, f32_from_bits, f32_to_f16, f64_from_bits, fma_f32, fma_f64,
                     i32_1d, i32_4d, i64_1d, u16_4d)

REC_LEN = 88
R_OP, R_NSRC, R_ERR, R_ERRARG, R_NODE, R_BLAS = 0, 1, 2, 3, 4, 5
SLOT0, SLOT_LEN = 8, 10
P_BASE = 80

# error codes a kernel may report (executor turns them into exceptions)
ERR_INDEX = 1       # an index tensor holds a value out of range; arg = the value
ERR_CUSTOM = 2      # a map_custom function failed; arg = its id (ops/custom.py)
ERRORS = {ERR_INDEX: "index out of range", ERR_CUSTOM: "custom function failed"}
# computes running now: address of their node records -> the graph's nodes (Python custom
# functions build their arrays from the tensors, which keep the memory alive; see ops/custom.py)
RUNNING = {}
inline = njit(inline="always", cache=True, error_model="numpy")
_install_inline_copy()     # numba copies an inlined helper's IR in B x V steps; once is enough (see _inline_copy)


SPECIALISED = {}     # qualname -> the kernels specialise() made (found by name, as module-level ones are)


def specialise(template, name: str, **constants):
    """A copy of the module-level function `template` in which the global names `constants` have the
    given values (numba functions, numbers): numba freezes globals at compile time, so each copy
    compiles to its own kernel, e.g. one elementwise loop per scalar function. numba's disk cache
    keeps each copy under `name` plus a digest of the constants' code, so a changed scalar function
    (an op defined outside graphcore, say) gets a new entry. (A closure would be compiled again in
    every process: numba keys a closure by pickling its cells, and a numba function pickles
    differently in every process.)"""
    h = hashlib.sha256()
    for key, value in sorted(constants.items()):
        h.update(key.encode())
        _hash_code(h, getattr(getattr(value, "py_func", value), "__code__", None) or repr(value))
    fn = types.FunctionType(template.__code__, {**template.__globals__, **constants}, name,
                            template.__defaults__)
    fn.__qualname__ = f"{name}_{h.hexdigest()[:10]}"
    fn.__module__ = template.__module__
    fn.__doc__ = template.__doc__
    SPECIALISED[fn.__qualname__] = fn
    return fn


def _hash_code(h, code):
    """Feed h what a code object computes (bytecode, constants, names), nested code included."""
    if not isinstance(code, types.CodeType):
        h.update(str(code).encode())
        return
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        _hash_code(h, c) if isinstance(c, types.CodeType) else h.update(repr(c).encode())


@inline
def record(rec):
    return i64_1d(rec, (REC_LEN,), (8,))


@inline
def t_type(r, s):
    return r[SLOT0 + SLOT_LEN * s]


@inline
def t_addr(r, s):
    return r[SLOT0 + SLOT_LEN * s + 1]


@inline
def t_ne(r, s, d):
    return r[SLOT0 + SLOT_LEN * s + 2 + d]


@inline
def t_nb(r, s, d):
    return r[SLOT0 + SLOT_LEN * s + 6 + d]


@inline
def _shape(r, s):
    b = SLOT0 + SLOT_LEN * s
    return (r[b + 5], r[b + 4], r[b + 3], r[b + 2])


@inline
def _strides(r, s):
    b = SLOT0 + SLOT_LEN * s
    return (r[b + 9], r[b + 8], r[b + 7], r[b + 6])


@inline
def view_f32(r, s):
    """Slot s as a strided float32 array indexed [i3, i2, i1, i0]."""
    return f32_4d(t_addr(r, s), _shape(r, s), _strides(r, s))


@inline
def view_i32(r, s):
    return i32_4d(t_addr(r, s), _shape(r, s), _strides(r, s))


@inline
def view_u16(r, s):
    return u16_4d(t_addr(r, s), _shape(r, s), _strides(r, s))


@inline
def row_f32(r, s, i1, i2, i3):
    """Row (i1, i2, i3) of slot s as a contiguous float32 array; valid only when nb0 == 4."""
    b = SLOT0 + SLOT_LEN * s
    return f32_1d(r[b + 1] + i1 * r[b + 7] + i2 * r[b + 8] + i3 * r[b + 9], (r[b + 2],), (4,))


@inline
def rows_contiguous(r, s):
    return t_nb(r, s, 0) == 4


@inline
def param_i32(rec, k):
    return i32_1d(rec + P_BASE * 8, (16,), (4,))[k]


@inline
def param_f32(rec, k):
    return f32_1d(rec + P_BASE * 8, (16,), (4,))[k]


@inline
def work_f32(wdata, n):
    return f32_1d(wdata, (n,), (4,))


@inline
def split(n, ith, nth):
    """ggml's row split: thread ith of nth takes [lo, hi)."""
    per = (n + nth - 1) // nth
    lo = min(n, per * ith)
    return lo, min(n, lo + per)


@inline
def fail(r, code, arg):
    r[R_ERR] = code
    r[R_ERRARG] = arg


@inline
def fp16_to_fp32(h):
    """IEEE half bits -> float32 (exact): the hardware's conversion but for inf and NaN, whose payload
    bits are kept as they are (the hardware sets a signalling NaN's quiet bit)."""
    if (np.uint16(h) & np.uint16(0x7C00)) != np.uint16(0x7C00):
        return f16_to_f32(np.uint16(h))
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    e = (h >> np.uint32(10)) & np.uint32(0x1F)
    m = h & np.uint32(0x3FF)
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)  # subnormal: m * 2^-24, exact
        return -v if sign else v
    if e == 31:
        return f32_from_bits(sign | np.uint32(0x7F800000) | (m << np.uint32(13)))
    return f32_from_bits(sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13)))


@inline
def fp32_to_fp16(x):
    """float32 -> IEEE half bits, round to nearest even; overflow gives inf, NaN stays NaN (numpy's bits).
    All but NaN by the hardware (F16C: 3-6x faster than the bit manipulation, the same bits); the NaN
    test is on the bits, so that fastmath kernels cannot fold it away."""
    f = f32_bits(np.float32(x))
    if (f & np.uint32(0x7FFFFFFF)) <= np.uint32(0x7F800000):
        return f32_to_f16(np.float32(x))
    sgn = np.uint16((f & np.uint32(0x80000000)) >> np.uint32(16))
    fe = f & np.uint32(0x7F800000)
    if fe >= np.uint32(0x47800000):
        if fe == np.uint32(0x7F800000):
            sig = f & np.uint32(0x007FFFFF)
            if sig != 0:
                ret = np.uint32(0x7C00) + (sig >> np.uint32(13))
                if ret == np.uint32(0x7C00):
                    ret += np.uint32(1)
                return np.uint16(sgn + ret)
        return np.uint16(sgn + np.uint32(0x7C00))
    if fe <= np.uint32(0x38000000):
        if fe < np.uint32(0x33000000):
            return sgn
        e = fe >> np.uint32(23)
        sig = np.uint32(0x00800000) + (f & np.uint32(0x007FFFFF))
        lost = f & np.uint32(0x7FF)
        sig = sig >> (np.uint32(113) - e)
        if (sig & np.uint32(0x3FFF)) != np.uint32(0x1000) or lost != 0:
            sig += np.uint32(0x1000)
        return np.uint16(sgn + (sig >> np.uint32(13)))
    he = (fe - np.uint32(0x38000000)) >> np.uint32(13)
    sig = f & np.uint32(0x007FFFFF)
    if (sig & np.uint32(0x3FFF)) != np.uint32(0x1000):
        sig += np.uint32(0x1000)
    return np.uint16(sgn + ((sig >> np.uint32(13)) + he))


# -- fast paths: dense tensors, raw rows, a vectorisable exp -------------------------------------------
@inline
def is_dense(r, s, es):
    """Slot s's elements (es bytes each) lie back to back in ne0, ne1, ne2, ne3 order (dims of size 1
    may have any stride): the tensor can be walked as one flat array."""
    b = SLOT0 + SLOT_LEN * s
    want = es
    for d in range(4):
        ne = r[b + 2 + d]
        if ne != 1 and r[b + 6 + d] != want:
            return False
        want *= ne
    return True


@inline
def split_aligned(n, ith, nth):
    """split() of n elements with chunks rounded up to 16 (threads never share a cache line)."""
    per = ((n + nth - 1) // nth + 15) // 16 * 16
    lo = min(n, per * ith)
    return lo, min(n, lo + per)


@inline
def row_addr(r, s, i1, i2, i3):
    """Address of element (0, i1, i2, i3) of slot s."""
    b = SLOT0 + SLOT_LEN * s
    return r[b + 1] + i1 * r[b + 7] + i2 * r[b + 8] + i3 * r[b + 9]


@inline
def f32_at(addr, n):
    """n contiguous float32 at addr, as an array (0-based loops over it vectorise)."""
    return f32_1d(addr, (n,), (4,))


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01      # fdlibm's split of ln 2: n * _LN2_HI is exact for |n| < 2^21
_LN2_LO = 1.90821492927058770002e-10
_EXP_MAX = 709.782712893384               # log(DBL_MAX)
_EXP_MIN = -707.0                          # below: 0 (results < 1e-307 round to 0 in float32 anyway)


@inline
def exp_f64(x):
    """exp of a float64 within 1 ulp or so (max rel. error 5e-16), written without calls or
    branches (fused multiply-adds) so that loops over it vectorise (math.exp is a libm call per
    element). inf above
    log(DBL_MAX), 0 below -707, NaN stays NaN."""
    xc = x if x < _EXP_MAX else _EXP_MAX
    xc = xc if xc > _EXP_MIN else _EXP_MIN
    n = np.floor(xc * _LOG2E + 0.5)
    t = fma_f64(-n, _LN2_LO, xc - n * _LN2_HI)    # |t| <= ln2/2: Taylor to degree 12 is exact to 2e-16
    p = 1.0 / 479001600.0
    p = fma_f64(p, t, 1.0 / 39916800.0)
    p = fma_f64(p, t, 1.0 / 3628800.0)
    p = fma_f64(p, t, 1.0 / 362880.0)
    p = fma_f64(p, t, 1.0 / 40320.0)
    p = fma_f64(p, t, 1.0 / 5040.0)
    p = fma_f64(p, t, 1.0 / 720.0)
    p = fma_f64(p, t, 1.0 / 120.0)
    p = fma_f64(p, t, 1.0 / 24.0)
    p = fma_f64(p, t, 1.0 / 6.0)
    p = fma_f64(p, t, 0.5)
    p = fma_f64(p, t, 1.0)
    p = fma_f64(p, t, 1.0)
    y = p * f64_from_bits((np.int64(n) + 1022) << 52) * 2.0     # 2^(n-1) * 2: n = 1024 stays finite
    y = y if x <= _EXP_MAX else np.inf
    y = y if x >= _EXP_MIN else 0.0
    return y if x == x else x



F32 = np.float32
_EXPF_HI = F32(88.72283)                   # log(FLT_MAX): above, inf
_EXPF_LO = F32(-103.97208)                 # below, 0 (the last subnormal is exp(-103.28))


@inline
def _pow2_f32(n):
    """2^n for an int32 n in [-126, 127] (the exponent field built directly)."""
    return f32_from_bits(np.uint32((n + np.int32(127)) << np.int32(23)))


@inline
def exp_f32(x):
    """exp of a float32 in float32 within 2 ulp (Cephes' expf polynomial on fused multiply-adds),
    written without calls or branches so that loops over it vectorise 8 lanes wide (numpy's float32
    exp is SIMD too; libm's expf is a call per element). inf above log(FLT_MAX), 0 below -104
    (subnormal results are kept), NaN stays NaN."""
    xc = x if x < _EXPF_HI else _EXPF_HI
    xc = xc if xc > _EXPF_LO else _EXPF_LO
    n = np.floor(fma_f32(xc, F32(1.44269504088896341), F32(0.5)))
    t = fma_f32(n, F32(-0.693359375), xc)          # ln 2 split in two: n * hi exact
    t = fma_f32(n, F32(2.12194440e-4), t)
    p = F32(1.9875691500e-4)
    p = fma_f32(p, t, F32(1.3981999507e-3))
    p = fma_f32(p, t, F32(8.3334519073e-3))
    p = fma_f32(p, t, F32(4.1665795894e-2))
    p = fma_f32(p, t, F32(1.6666665459e-1))
    p = fma_f32(p, t, F32(5.0000001201e-1))
    p = fma_f32(p, t * t, t) + F32(1.0)
    k = np.int32(n)
    h = k >> np.int32(1)                            # 2^n as 2^h * 2^(n-h): each factor a normal float
    y = p * _pow2_f32(h) * _pow2_f32(k - h)
    y = y if x < _EXPF_HI else F32(np.inf)
    y = y if x > _EXPF_LO else F32(0.0)
    return y if x == x else x


@inline
def sum_f64_lanes(v, n):
    """sum(v[:n]) of float32 values in float64, in 8 lanes (v[i] in lane i % 8, lanes added pairwise,
    the tail last): independent accumulators vectorise where one in-order chain waits on each add,
    and the order depends on n alone (the same bits for any thread count or layout)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    i = 0
    while i + 8 <= n:
        s0 += np.float64(v[i])
        s1 += np.float64(v[i + 1])
        s2 += np.float64(v[i + 2])
        s3 += np.float64(v[i + 3])
        s4 += np.float64(v[i + 4])
        s5 += np.float64(v[i + 5])
        s6 += np.float64(v[i + 6])
        s7 += np.float64(v[i + 7])
        i += 8
    t = 0.0
    while i < n:
        t += np.float64(v[i])
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + t


@inline
def _max_nan(m, v):
    return v if v > m or v != v else m        # NaN wins


@inline
def max_f32_lanes(v, n):
    """The maximum of v[0..n) (float32) in 8 lanes; NaN wins (a NaN anywhere gives NaN); -inf for n = 0."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = F32(-np.inf)
    i = 0
    while i + 8 <= n:
        m0 = _max_nan(m0, v[i])
        m1 = _max_nan(m1, v[i + 1])
        m2 = _max_nan(m2, v[i + 2])
        m3 = _max_nan(m3, v[i + 3])
        m4 = _max_nan(m4, v[i + 4])
        m5 = _max_nan(m5, v[i + 5])
        m6 = _max_nan(m6, v[i + 6])
        m7 = _max_nan(m7, v[i + 7])
        i += 8
    while i < n:
        m0 = _max_nan(m0, v[i])
        i += 1
    return _max_nan(_max_nan(_max_nan(m0, m1), _max_nan(m2, m3)), _max_nan(_max_nan(m4, m5), _max_nan(m6, m7)))
