"""ggml's quantized block formats (llama.cpp 4480542, ggml-quants.c): the 32-element blocks Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, Q8_1 and the shared parts; the k-quants (256-element super-blocks) are in kquants.py.

Every function here is one row: `quantize_X(x, y)` writes the blocks of the float32 row x into the
bytes y (ggml's quantize_row_X_reference, bit for bit), `dequantize_X(y, x)` reads them back
(dequantize_row_X). They are numba functions over byte arrays so that the kernels (ops/quantized.py)
and the numpy-side `quantize` / `dequantize` (quant_rows.py) run the same code; a row is as many blocks
as y holds (x may be longer: the kernels' scratch). The dot products with the Q8 rows are in qdot.py.

Arithmetic is float32 as in C: int operands are converted with np.float32 first (numba would widen
int * float32 to float64), and C's float -> int8 casts are x86's (cvttss2si: NaN or out of range
gives INT_MIN, whose low byte is 0).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import types as T
from .kernel import fp16_to_fp32, fp32_to_fp16, inline
from .native import f32_bits, f32_from_bits

_F = np.float32
qjit = njit(cache=True, nogil=True, error_model="numpy")


# -- scalars in a block's bytes (little-endian, as on x86) --------------------------------------------
@inline
def rd_f16(y, o):
    return fp16_to_fp32(np.uint16(y[o]) | (np.uint16(y[o + 1]) << np.uint16(8)))


@inline
def wr_f16(y, o, v):
    h = fp32_to_fp16(v)
    y[o] = np.uint8(h & np.uint16(0xFF))
    y[o + 1] = np.uint8(h >> np.uint16(8))


@inline
def rd_f32(y, o):
    b = (np.uint32(y[o]) | (np.uint32(y[o + 1]) << np.uint32(8)) | (np.uint32(y[o + 2]) << np.uint32(16))
         | (np.uint32(y[o + 3]) << np.uint32(24)))
    return f32_from_bits(b)


@inline
def wr_f32(y, o, v):
    b = f32_bits(np.float32(v))
    for i in range(4):
        y[o + i] = np.uint8((b >> np.uint32(8 * i)) & np.uint32(0xFF))


@inline
def rd_u32(y, o):
    return (np.uint32(y[o]) | (np.uint32(y[o + 1]) << np.uint32(8)) | (np.uint32(y[o + 2]) << np.uint32(16))
            | (np.uint32(y[o + 3]) << np.uint32(24)))


@inline
def i8(v):
    """C's conversion of an int to int8_t (wraps)."""
    return ((np.int64(v) + 128) & 255) - 128


@inline
def c_int(f):
    """C's (int) cast of a float on x86: truncation; NaN and out of range give INT_MIN."""
    if not (-2147483648.0 <= f < 2147483648.0):
        return np.int64(-2147483648)
    return np.int64(f)


@inline
def roundf(f):
    """C's roundf (half away from zero), as float64 (exact for float32 input)."""
    d = np.float64(f)
    t = math.trunc(d) if math.isfinite(d) else d
    if abs(d - t) >= 0.5:
        t += math.copysign(1.0, d)
    return t


@inline
def nearest_int(f):
    """ggml's nearest_int: round half to even through the float32 sum with 1.5 * 2^23 (bit trick kept
    for any input, as the C does with asserts off)."""
    v = np.float32(np.float32(f) + _F(12582912.0))
    i = np.int64(f32_bits(v))
    return (i & 0x007FFFFF) - 0x00400000


@inline
def _absmax(x, xo, n):
    """The value of largest magnitude (the first one) and that magnitude."""
    mx, amax = _F(0), _F(0)
    for i in range(n):
        ax = abs(x[xo + i])
        if ax > amax:
            amax, mx = ax, x[xo + i]
    return mx, amax


# -- Q4_0: d (f16), 16 bytes of nibbles; value = (q - 8) * d ------------------------------------------
@qjit
def quantize_q4_0(x, y):
    for i in range(y.shape[0] // 18):
        o, xo = 18 * i, 32 * i
        mx, _ = _absmax(x, xo, 32)
        d = np.float32(mx / _F(-8))
        idd = np.float32(_F(1) / d) if d != 0 else _F(0)
        wr_f16(y, o, d)
        for j in range(16):
            x0 = np.float32(x[xo + j] * idd)
            x1 = np.float32(x[xo + 16 + j] * idd)
            q0 = min(15, i8(c_int(np.float32(x0 + _F(8.5)))))
            q1 = min(15, i8(c_int(np.float32(x1 + _F(8.5)))))
            y[o + 2 + j] = np.uint8((q0 & 255) | ((q1 << 4) & 255))


@qjit
def dequantize_q4_0(y, x):
    for i in range(y.shape[0] // 18):
        o, xo = 18 * i, 32 * i
        d = rd_f16(y, o)
        for j in range(16):
            b = np.int64(y[o + 2 + j])
            x[xo + j] = _F(np.int32((b & 15) - 8)) * d
            x[xo + 16 + j] = _F(np.int32((b >> 4) - 8)) * d


# -- Q4_1: d, m (f16), nibbles; value = q * d + m ------------------------------------------------------
@inline
def _min_max(x, xo):
    mn, mx = _F(3.4028234663852886e38), _F(-3.4028234663852886e38)    # FLT_MAX, as the C starts
    for j in range(32):
        v = x[xo + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


@qjit
def quantize_q4_1(x, y):
    for i in range(y.shape[0] // 20):
        o, xo = 20 * i, 32 * i
        mn, mx = _min_max(x, xo)
        d = np.float32(np.float32(mx - mn) / _F(15))
        idd = np.float32(_F(1) / d) if d != 0 else _F(0)
        wr_f16(y, o, d)
        wr_f16(y, o + 2, mn)
        for j in range(16):
            x0 = np.float32(np.float32(x[xo + j] - mn) * idd)
            x1 = np.float32(np.float32(x[xo + 16 + j] - mn) * idd)
            q0 = min(15, i8(c_int(np.float32(x0 + _F(0.5)))))
            q1 = min(15, i8(c_int(np.float32(x1 + _F(0.5)))))
            y[o + 4 + j] = np.uint8((q0 & 255) | ((q1 << 4) & 255))


@qjit
def dequantize_q4_1(y, x):
    for i in range(y.shape[0] // 20):
        o, xo = 20 * i, 32 * i
        d, m = rd_f16(y, o), rd_f16(y, o + 2)
        for j in range(16):
            b = np.int64(y[o + 4 + j])
            x[xo + j] = np.float32(_F(np.int32(b & 15)) * d) + m
            x[xo + 16 + j] = np.float32(_F(np.int32(b >> 4)) * d) + m


# -- Q5_0: d (f16), qh (32 fifth bits), nibbles; value = (q - 16) * d ---------------------------------
@inline
def _pack5(y, o, j, q0, q1, qh):
    y[o + j] = np.uint8((q0 & 15) | ((q1 & 15) << 4))
    qh |= np.uint32((q0 & 0x10) >> 4) << np.uint32(j)
    qh |= np.uint32((q1 & 0x10) >> 4) << np.uint32(j + 16)
    return qh


@inline
def _wr_u32(y, o, v):
    for k in range(4):
        y[o + k] = np.uint8((v >> np.uint32(8 * k)) & np.uint32(0xFF))


@qjit
def quantize_q5_0(x, y):
    for i in range(y.shape[0] // 22):
        o, xo = 22 * i, 32 * i
        mx, _ = _absmax(x, xo, 32)
        d = np.float32(mx / _F(-16))
        idd = np.float32(_F(1) / d) if d != 0 else _F(0)
        wr_f16(y, o, d)
        qh = np.uint32(0)
        for j in range(16):
            x0 = np.float32(x[xo + j] * idd)
            x1 = np.float32(x[xo + 16 + j] * idd)
            q0 = min(31, i8(c_int(np.float32(x0 + _F(16.5))))) & 255
            q1 = min(31, i8(c_int(np.float32(x1 + _F(16.5))))) & 255
            qh = _pack5(y, o + 6, j, q0, q1, qh)
        _wr_u32(y, o + 2, qh)


@inline
def _fifth(qh, j):
    return np.int64((qh >> np.uint32(j)) << np.uint32(4)) & 0x10, np.int64(qh >> np.uint32(j + 12)) & 0x10


@qjit
def dequantize_q5_0(y, x):
    for i in range(y.shape[0] // 22):
        o, xo = 22 * i, 32 * i
        d = rd_f16(y, o)
        qh = rd_u32(y, o + 2)
        for j in range(16):
            h0, h1 = _fifth(qh, j)
            b = np.int64(y[o + 6 + j])
            x[xo + j] = _F(np.int32(((b & 15) | h0) - 16)) * d
            x[xo + 16 + j] = _F(np.int32(((b >> 4) | h1) - 16)) * d


# -- Q5_1: d, m (f16), qh, nibbles; value = q * d + m -------------------------------------------------
@qjit
def quantize_q5_1(x, y):
    for i in range(y.shape[0] // 24):
        o, xo = 24 * i, 32 * i
        mn, mx = _min_max(x, xo)
        d = np.float32(np.float32(mx - mn) / _F(31))
        idd = np.float32(_F(1) / d) if d != 0 else _F(0)
        wr_f16(y, o, d)
        wr_f16(y, o + 2, mn)
        qh = np.uint32(0)
        for j in range(16):
            x0 = np.float32(np.float32(x[xo + j] - mn) * idd)
            x1 = np.float32(np.float32(x[xo + 16 + j] - mn) * idd)
            q0 = c_int(np.float32(x0 + _F(0.5))) & 255      # (uint8_t) cast, no clamp in the C
            q1 = c_int(np.float32(x1 + _F(0.5))) & 255
            qh = _pack5(y, o + 8, j, q0, q1, qh)
        _wr_u32(y, o + 4, qh)


@qjit
def dequantize_q5_1(y, x):
    for i in range(y.shape[0] // 24):
        o, xo = 24 * i, 32 * i
        d, m = rd_f16(y, o), rd_f16(y, o + 2)
        qh = rd_u32(y, o + 4)
        for j in range(16):
            h0, h1 = _fifth(qh, j)
            b = np.int64(y[o + 8 + j])
            x[xo + j] = np.float32(_F(np.int32((b & 15) | h0)) * d) + m
            x[xo + 16 + j] = np.float32(_F(np.int32((b >> 4) | h1)) * d) + m


# -- Q8_0: d (f16), 32 int8; value = q * d.  Q8_1: d, s = d * sum(q) (float32), 32 int8 --------------
@inline
def _amax(x, xo, n):
    amax = _F(0)
    for j in range(n):
        amax = max(amax, abs(x[xo + j]))      # C's MAX(a, b): a > b ? a : b
    return amax


@inline
def _q8_block(x, xo, y, qo, x86):
    """The 32 int8 levels of a Q8_0/Q8_1 block at y[qo]; returns d and the levels' sum. The reference
    quantizer (x86 = False) rounds x / d half away from zero; ggml's quantize_row_q8_0/q8_1 on x86 (AVX2),
    mul_mat's from_float for src1, rounds x * (127 / amax) half to even (saturated to int8)."""
    amax = _amax(x, xo, 32)
    d = np.float32(amax / _F(127))
    if x86:
        idd = np.float32(_F(127) / amax) if amax != 0 else _F(0)
    else:
        idd = np.float32(_F(1) / d) if d != 0 else _F(0)
    s = 0
    for j in range(32):
        v = np.float32(x[xo + j] * idd)
        if x86:
            r = np.rint(v)
            q = max(-128, min(127, np.int64(r))) if -2147483648.0 <= r < 2147483648.0 else -128
        else:
            q = i8(c_int(roundf(v)))
        y[qo + j] = np.uint8(q & 255)
        s += q
    return d, s


@inline
def _quantize_q8(x, y, x86, bs):
    """Rows of Q8_0 (bs = 34: fp16 d) or Q8_1 (bs = 40: float d and d * sum of the levels)."""
    for i in range(y.shape[0] // bs):
        d, s = _q8_block(x, 32 * i, y, bs * i + bs - 32, x86)
        if bs == 34:
            wr_f16(y, 34 * i, d)
        else:
            wr_f32(y, 40 * i, d)
            wr_f32(y, 40 * i + 4, np.float32(_F(s) * d))


@qjit
def quantize_q8_0(x, y):
    _quantize_q8(x, y, False, 34)


@qjit
def quantize_q8_0_x86(x, y):
    _quantize_q8(x, y, True, 34)


@qjit
def dequantize_q8_0(y, x):
    for i in range(y.shape[0] // 34):
        o, xo = 34 * i, 32 * i
        d = rd_f16(y, o)
        for j in range(32):
            x[xo + j] = _F(np.int8(y[o + 2 + j])) * d


@qjit
def quantize_q8_1(x, y):
    _quantize_q8(x, y, False, 40)


@qjit
def quantize_q8_1_x86(x, y):
    _quantize_q8(x, y, True, 40)


@qjit
def dequantize_q8_1(y, x):
    # ggml has no dequantize_row_q8_1 (it is only a vec_dot partner); this reads q * d the same way
    for i in range(y.shape[0] // 40):
        o, xo = 40 * i, 32 * i
        d = rd_f32(y, o)
        for j in range(32):
            x[xo + j] = _F(np.int8(y[o + 8 + j])) * d


# -- Q8_K: the k-quants' vec_dot partner ----------------------------------------------------------------
@qjit
def quantize_q8_k(x, y):
    for i in range(y.shape[0] // 292):
        o, xo = 292 * i, 256 * i
        mx, amax = _absmax(x, xo, 256)
        if amax == 0:       # the C leaves bsums as they were; zeros here, so the bytes are defined
            for j in range(292):
                y[o + j] = 0
            continue
        iscale = np.float32(_F(-127) / mx)
        for j in range(256):
            y[o + 4 + j] = np.uint8(i8(min(127, nearest_int(np.float32(iscale * x[xo + j])))) & 255)
        for j in range(16):
            s = 0
            for ii in range(16):
                s += np.int64(np.int8(y[o + 4 + 16 * j + ii]))
            y[o + 260 + 2 * j] = np.uint8(s & 255)
            y[o + 261 + 2 * j] = np.uint8((s >> 8) & 255)
        wr_f32(y, o, np.float32(_F(1) / iscale))


@qjit
def dequantize_q8_k(y, x):
    for i in range(y.shape[0] // 292):
        d = rd_f32(y, 292 * i)
        for j in range(256):
            x[256 * i + j] = np.float32(d * _F(np.int8(y[292 * i + 4 + j])))


# ggml's vec_dot_type: what mul_mat quantizes src1 to for each src0 type (Q8_1 and Q8_K have no vec_dot)
VEC_DOT_TYPE = {T.TYPE_Q4_0: T.TYPE_Q8_0, T.TYPE_Q4_1: T.TYPE_Q8_1, T.TYPE_Q5_0: T.TYPE_Q8_0,
                T.TYPE_Q5_1: T.TYPE_Q8_1, T.TYPE_Q8_0: T.TYPE_Q8_0, T.TYPE_Q2_K: T.TYPE_Q8_K,
                T.TYPE_Q3_K: T.TYPE_Q8_K, T.TYPE_Q4_K: T.TYPE_Q8_K, T.TYPE_Q5_K: T.TYPE_Q8_K,
                T.TYPE_Q6_K: T.TYPE_Q8_K}
