"""ggml's integer block dots (ggml_vec_dot_X_q8_Y, llama.cpp 4480542) for mul_mat's one-token path:
`vdot_X(x, y, nb)` is the dot product of the nb blocks of the quantized row x (bytes) with the row y
(bytes) that mul_mat quantized to x's vec_dot type (Q8_0, Q8_1 or Q8_K).

Each block's levels times y's int8 levels are summed in int32 (exact), then scaled by the two block
scales in float32, as ggml does. On a CPU with AVX2 (FMA, F16C), vdot_X is adot_X for every type but
Q2_K and Q3_K: ggml's AVX2 instruction sequence itself (graphcore.simd, LLVM IR), so its results are
ggml's and xdot's bit for bit. Elsewhere (also with GRAPHCORE_PORTABLE_DOTS set, and for Q2_K/Q3_K)
vdot_X is pdot_X, a portable loop whose float32 sum over blocks runs in another order than ggml's AVX2
lanes (one running sum; a few ulp apart). All are tested against `xdot(x, y, nb, type)` (below), ggml's
AVX2 code in scalar numba, bit for bit: the same integer products summed in its 8 lanes, each lane
accumulated with a fused multiply-add and the lanes added as hsum_float_8 does (mul_mat's ggml_dots
option); it is several times slower than the portable loops (scalar lane sums).

The portable loops are written for LLVM's loop vectoriser: the inner loops run over a block's elements
with a trip count it cannot see (native.opaque: with a constant 16 or 32 it unrolls the loop into
scalar code instead), two streams of levels per loop where a format packs two into the same bytes, and
every intermediate cast back to int32 (numba would widen int32 products to int64, which AVX2 cannot
multiply in vectors). They compile to vpmovsxbw/vpmaddwd on AVX2 (16 pairs an instruction, where
ggml's vpmaddubsw takes 32; seen with inspect_asm on a copy compiled without cache=True: numba shows
no assembly for cached code).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import simd
from . import types as T
from .kernel import specialise
from .kquants import scale_min_k4
from .native import f16_to_f32, fma_f32, opaque, stack_f32, stack_i32
from .quants import _F, inline, rd_f32, rd_u32
from .quants import rd_f16 as quants_rd_f16

I32 = np.int32
vjit = njit(cache=True, nogil=True, error_model="numpy")


@inline
def _rd_f16_f16c(y, o):
    """The fp16 at y[o] as float32 (quants.rd_f16, without its branches: one vcvtph2ps)."""
    return f16_to_f32(np.uint16(y[o]) | (np.uint16(y[o + 1]) << np.uint16(8)))


def _has_f16c() -> bool:
    """Whether this x86 CPU converts fp16 in hardware (elsewhere LLVM would call a runtime helper that
    numba's JIT need not provide: quants.rd_f16's bit arithmetic is used instead)."""
    try:
        with open("/proc/cpuinfo") as f:
            return " f16c" in f.read()
    except OSError:
        return False


rd_f16 = _rd_f16_f16c if _has_f16c() else quants_rd_f16


@inline
def _i8(v):
    return I32(np.int8(v))


@inline
def _lvl(b, s, m):
    return I32(I32(I32(b) >> s) & m)


@inline
def _gdot2(x, qo, s1, s2, qm, ho, hs1, hs2, hm, hsh, off, y, y1, y2, n):
    """Two int32 sums over l < n of level(l) * y[y1 + l] and level'(l) * y[y2 + l] (int8), with
    level = ((x[qo + l] >> s1) & qm) | (((x[ho + l] >> hs1) & hm) << hsh) - off (level': s2, hs2):
    every format's levels but Q5_0/Q5_1's (hm = 0: no high bits)."""
    a, b = I32(0), I32(0)
    for l in range(n):
        q, h = x[qo + l], x[ho + l]
        va = _i8(I32(_lvl(q, s1, qm) | I32(_lvl(h, hs1, hm) << hsh)) - off)     # int8: pmaddwd
        vb = _i8(I32(_lvl(q, s2, qm) | I32(_lvl(h, hs2, hm) << hsh)) - off)
        a = I32(a + I32(I32(va) * _i8(y[y1 + l])))
        b = I32(b + I32(I32(vb) * _i8(y[y2 + l])))
    return a, b


@inline
def _gdot2s(x, qo, s1, s2, qm, ho, hs1, hs2, hm, hsh, off, y, y1, y2, a0, a1, b0, b1, n):
    """_gdot2 over two 16-element groups at once (n = 32), each level times its group's scale
    (a0, a1 for the first stream, b0, b1 for the second): one int32 sum (Q6_K: 7x faster than
    _gdot2 on each group, measured; Q2_K and Q3_K are faster with _gdot2)."""
    s = I32(0)
    for l in range(n):
        q, h = x[qo + l], x[ho + l]
        va = _i8(I32(_lvl(q, s1, qm) | I32(_lvl(h, hs1, hm) << hsh)) - off)
        vb = _i8(I32(_lvl(q, s2, qm) | I32(_lvl(h, hs2, hm) << hsh)) - off)
        sa, sb = (a0, b0) if l < 16 else (a1, b1)
        s = I32(s + I32(I32(va * _i8(y[y1 + l])) * sa) + I32(I32(vb * _i8(y[y2 + l])) * sb))
    return s


@inline
def _q5dot(x, qo, qh, off, y, yo, n):
    """Q5_0/Q5_1's block: nibbles of x[qo:qo + 16], fifth bits in the 32-bit qh (bit l, then l + 16)."""
    s = I32(0)
    for l in range(n):
        q = x[qo + l]
        va = _i8(I32(_lvl(q, 0, 15) | I32(I32(I32(qh >> np.uint32(l)) & 1) << 4)) - off)
        vb = _i8(I32(_lvl(q, 4, 15) | I32(I32(I32(qh >> np.uint32(l + 16)) & 1) << 4)) - off)
        s = I32(s + I32(I32(va) * _i8(y[yo + l])) + I32(I32(vb) * _i8(y[yo + 16 + l])))
    return s


@inline
def _bsum(y, p, j):
    return I32(np.int16(np.uint16(y[p + 260 + 2 * j]) | (np.uint16(y[p + 261 + 2 * j]) << np.uint16(8))))


# -- 32-element blocks ------------------------------------------------------------------------------------
@vjit
def pdot_q4_0(x, y, nb):
    n, sumf = opaque(16), _F(0)
    for i in range(nb):
        o, p = 18 * i, 34 * i
        a, b = _gdot2(x, o + 2, 0, 4, 15, o + 2, 0, 0, 0, 0, 8, y, p + 2, p + 18, n)
        sumf += np.float32(rd_f16(x, o) * rd_f16(y, p)) * _F(I32(a + b))
    return sumf


@vjit
def pdot_q4_1(x, y, nb):
    n, sumf = opaque(16), _F(0)
    for i in range(nb):
        o, p = 20 * i, 40 * i
        a, b = _gdot2(x, o + 4, 0, 4, 15, o + 4, 0, 0, 0, 0, 0, y, p + 8, p + 24, n)
        m = np.float32(rd_f16(x, o + 2) * rd_f32(y, p + 4))       # the block's min times y's d * sum
        sumf += np.float32(rd_f16(x, o) * rd_f32(y, p)) * _F(I32(a + b)) + m
    return sumf


@vjit
def pdot_q5_0(x, y, nb):
    n, sumf = opaque(16), _F(0)
    for i in range(nb):
        o, p = 22 * i, 34 * i
        s = _q5dot(x, o + 6, rd_u32(x, o + 2), 16, y, p + 2, n)
        sumf += np.float32(rd_f16(x, o) * rd_f16(y, p)) * _F(s)
    return sumf


@vjit
def pdot_q5_1(x, y, nb):
    n, sumf = opaque(16), _F(0)
    for i in range(nb):
        o, p = 24 * i, 40 * i
        s = _q5dot(x, o + 8, rd_u32(x, o + 4), 0, y, p + 8, n)
        sumf += np.float32(rd_f16(x, o) * rd_f32(y, p)) * _F(s) + np.float32(rd_f16(x, o + 2) * rd_f32(y, p + 4))
    return sumf


@vjit
def pdot_q8_0(x, y, nb):
    n, sumf = opaque(32), _F(0)
    for i in range(nb):
        o = 34 * i
        s = I32(0)
        for l in range(n):
            s = I32(s + I32(_i8(x[o + 2 + l]) * _i8(y[o + 2 + l])))
        sumf += np.float32(rd_f16(x, o) * rd_f16(y, o)) * _F(s)
    return sumf


# -- k-quants (y: Q8_K, d f32 at 0, 256 int8 at 4, 16 int16 group sums at 260) ------------------------
@vjit
def pdot_q2_k(x, y, nb):
    n, sumf = opaque(16), _F(0)
    for i in range(nb):
        o, p = 84 * i, 292 * i
        isum, msum = 0, 0
        for g in range(16):
            msum += _bsum(y, p, g) * I32(x[o + g] >> 4)
        for g in (0, 1, 8, 9):      # groups g, g + 2, g + 4, g + 6 share their bytes (2 bits each)
            qo, yo = o + 16 + 32 * (g // 8) + 16 * (g % 2), p + 4 + 16 * g
            for j in range(0, 4, 2):
                a, b = _gdot2(x, qo, 2 * j, 2 * j + 2, 3, qo, 0, 0, 0, 0, 0, y, yo + 32 * j, yo + 32 * j + 32, n)
                isum += I32(x[o + g + 2 * j] & 15) * a + I32(x[o + g + 2 * j + 2] & 15) * b
        yd = rd_f32(y, p)
        sumf += np.float32(yd * rd_f16(x, o + 80)) * _F(isum) - np.float32(yd * rd_f16(x, o + 82)) * _F(msum)
    return sumf


@inline
def _q3_scale(x, so, j):
    lo4 = (I32(x[so + j]) & 15) if j < 8 else (I32(x[so + j - 8]) >> 4)
    return I32(lo4 | (((I32(x[so + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32


@vjit
def pdot_q3_k(x, y, nb):
    n, sumf = opaque(16), _F(0)
    for i in range(nb):
        o, p = 110 * i, 292 * i
        isum = 0
        for g in (0, 1, 8, 9):      # as Q2_K, and level = low 2 bits - 4 unless the hmask bit is set
            nn, half = g // 8, g % 2
            qo, yo = o + 32 + 32 * nn + 16 * half, p + 4 + 16 * g
            for j in range(0, 4, 2):
                a, b = _gdot2(x, qo, 2 * j, 2 * j + 2, 3, o + 16 * half, 4 * nn + j, 4 * nn + j + 1, 1, 2, 4,
                              y, yo + 32 * j, yo + 32 * j + 32, n)
                isum += _q3_scale(x, o + 96, g + 2 * j) * a + _q3_scale(x, o + 96, g + 2 * j + 2) * b
        sumf += np.float32(rd_f16(x, o + 108) * rd_f32(y, p)) * _F(isum)
    return sumf


@inline
def _dot_k45(x, o, qo, ho, hm, y, p, n):
    """d * sum(scale * q . y) - dmin * sum(min * bsums) of one Q4_K (hm = 0) or Q5_K super-block."""
    isum, msum = 0, 0
    for s in range(0, 8, 2):        # sub-blocks s, s + 1: low and high nibbles of the same 32 bytes
        sc, m = scale_min_k4(s, x, o + 4)
        sc1, m1 = scale_min_k4(s + 1, x, o + 4)
        msum += I32(m) * (_bsum(y, p, 2 * s) + _bsum(y, p, 2 * s + 1))
        msum += I32(m1) * (_bsum(y, p, 2 * s + 2) + _bsum(y, p, 2 * s + 3))
        a, b = _gdot2(x, qo + 16 * s, 0, 4, 15, ho, s, s + 1, hm, 4, 0, y, p + 4 + 32 * s, p + 36 + 32 * s, n)
        isum += I32(sc) * a + I32(sc1) * b
    yd = rd_f32(y, p)
    return np.float32(rd_f16(x, o) * yd) * _F(isum) - np.float32(rd_f16(x, o + 2) * yd) * _F(msum)


@vjit
def pdot_q4_k(x, y, nb):
    n, sumf = opaque(32), _F(0)
    for i in range(nb):
        sumf += _dot_k45(x, 144 * i, 144 * i + 16, 144 * i + 16, 0, y, 292 * i, n)
    return sumf


@vjit
def pdot_q5_k(x, y, nb):
    n, sumf = opaque(32), _F(0)
    for i in range(nb):
        sumf += _dot_k45(x, 176 * i, 176 * i + 48, 176 * i + 16, 1, y, 292 * i, n)
    return sumf


@vjit
def pdot_q6_k(x, y, nb):
    n, sumf = opaque(32), _F(0)
    for i in range(nb):
        o, p = 210 * i, 292 * i
        isum = 0
        for g in (0, 2, 8, 10):     # groups g, g + 1 (low nibbles of 32 bytes) and g + 4, g + 5 (high)
            nn, quarter = g // 8, (g % 8) // 2
            qo, ho, sc = o + 64 * nn + 32 * quarter, o + 128 + 32 * nn, o + 192 + g
            isum += _gdot2s(x, qo, 0, 4, 15, ho, 2 * quarter, 2 * quarter + 4, 3, 4, 32, y,
                            p + 4 + 16 * g, p + 68 + 16 * g, _i8(x[sc]), _i8(x[sc + 1]), _i8(x[sc + 4]),
                            _i8(x[sc + 5]), n)
        sumf += np.float32(rd_f16(x, o + 208) * rd_f32(y, p)) * _F(isum)
    return sumf


# -- ggml's AVX2 instruction sequence (graphcore.simd), where the CPU has it ---------------------------------
def _adot(x, y, nb):
    return DOT(x, y, nb)        # noqa: F821 (a global of each specialised copy)


# adot_X: simd.dot_X in a numba function (intrinsics are called from compiled code only), inlined into the
# product's row loop: a call per row (arrays passed as their fields) cost 2-3 ns of a 256-element row's 16
AVX2 = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k")
globals().update({f"adot_{n}": inline(specialise(_adot, f"adot_{n}", DOT=getattr(simd, f"dot_{n}"))) for n in AVX2})
# mul_mat's vec_dot vdot_X: ggml's AVX2 dots (xdot's bits) where the CPU has AVX2/FMA/F16C and
# GRAPHCORE_PORTABLE_DOTS is not set, else (and for Q2_K, Q3_K) the portable loop pdot_X
globals().update({f"vdot_{n}": globals()[f"{'a' if simd.AVAILABLE and n in AVX2 else 'p'}dot_{n}"]
                  for n in AVX2 + ("q2_k", "q3_k")})


# -- 32-element blocks: ggml's AVX2 dots, bit for bit ----------------------------------------------------
# Each block's 32 products level * y (int32) are summed in 8 lanes of 4 consecutive elements (vpmaddubsw +
# vpmaddwd), converted to float and accumulated per lane with one fused multiply-add by the block's
# float32 d = dx * dy; the 8 lanes are then added as hsum_float_8 does. Q4_1/Q5_1 add the sum over
# blocks of min * y's s (float32) at the end.
@inline
def _nibble_lanes(x, qo, qh, hb, off, y, yo, acc, d):
    """One block's 8 lanes into acc: lane j < 4 the levels of elements 4j..4j+3 (low nibbles of
    x[qo + 4j..]), lane j + 4 those of elements 16 + 4j.. (high nibbles), each with bit e of qh as a fifth
    bit when hb = 1, minus off, times y's levels; acc[j] = fma(d, lane j, acc[j])."""
    for j in range(4):
        a, b = I32(0), I32(0)
        for t in range(4):
            e = 4 * j + t
            q = I32(x[qo + e])
            va = I32(I32(q & 15) | I32(I32(I32(qh >> np.uint32(e)) & hb) << 4)) - off
            vb = I32(I32(q >> 4) | I32(I32(I32(qh >> np.uint32(e + 16)) & hb) << 4)) - off
            a = I32(a + I32(va * _i8(y[yo + e])))
            b = I32(b + I32(vb * _i8(y[yo + 16 + e])))
        acc[j] = fma_f32(d, _F(a), acc[j])
        acc[j + 4] = fma_f32(d, _F(b), acc[j + 4])


@inline
def _fma_lanes(acc, d, p, chunks):
    """acc[l] = fma(d, lane l, acc[l]), lane l the int32 sum of p[32c + 4l .. 32c + 4l + 3] over c < chunks."""
    for j in range(8):
        s = I32(0)
        for c in range(chunks):
            b = 32 * c + 4 * j
            s = I32(s + I32(I32(p[b] + p[b + 1]) + I32(p[b + 2] + p[b + 3])))
        acc[j] = fma_f32(d, _F(s), acc[j])


@inline
def _hsum8(acc):
    """hsum_float_8: the upper 4 lanes onto the lower, then (0 + 2) + (1 + 3)."""
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))


@inline
def _dot32(x, y, nb, xs, ys, qo, ho, off, hb, minus):
    """The dot of nb blocks of a 32-element type (block xs bytes: fp16 d at 0, fp16 min at 2 when minus,
    the 32 fifth bits at ho when hb, nibbles at qo) with Q8_0 (ys = 34) or Q8_1 (ys = 40: f32 d, s) rows."""
    acc = stack_f32()
    for j in range(8):
        acc[j] = _F(0)
    summs = _F(0)
    for i in range(nb):
        o, q = xs * i, ys * i
        dy = rd_f16(y, q) if ys == 34 else rd_f32(y, q)
        qh = rd_u32(x, o + ho) if hb else np.uint32(0)
        _nibble_lanes(x, o + qo, qh, hb, off, y, q + ys - 32, acc, np.float32(rd_f16(x, o) * dy))
        if minus:
            summs += np.float32(rd_f16(x, o + 2) * rd_f32(y, q + 4))
    return _hsum8(acc) + summs if minus else _hsum8(acc)


@inline
def _dot_q8_0(x, y, nb):
    acc = stack_f32()
    for j in range(8):
        acc[j] = _F(0)
    for i in range(nb):
        o = 34 * i
        d = np.float32(rd_f16(x, o) * rd_f16(y, o))
        for j in range(8):
            s = I32(0)
            for t in range(4):
                s = I32(s + I32(_i8(x[o + 2 + 4 * j + t]) * _i8(y[o + 2 + 4 * j + t])))
            acc[j] = fma_f32(d, _F(s), acc[j])
    return _hsum8(acc)


# -- k-quants: ggml's AVX2 dots ------------------------------------------------------------------------
# Per super-block, the products scale * level * y of its 256 elements are summed (int32, exact) in the
# same 8 lanes (element e in lane e % 32 // 4), then acc = fma(d, lane, acc) with d = y.d * x.d; the
# mins' part (Q2_K, Q4_K, Q5_K) as each of ggml's functions adds it.
@inline
def _y8(y, p, e):
    return _i8(y[p + 4 + e])


@inline
def _k_products(x, o, y, p, kind, pr):
    """pr[e] = scale(e) * level(e) * y's level e for the 256 elements of the super-block at x[o]."""
    n = opaque(32)
    for c in range(8):              # 32 elements a step: level from byte qo + t, bit shift sh
        if kind == 2 or kind == 3:  # Q2_K/Q3_K: 2-bit levels, byte t of each 32 holds elements t + 32k
            j, k = c // 4, c % 4
            qo, sh = o + (16 if kind == 2 else 32) + 32 * j, 2 * k
        elif kind == 6:             # Q6_K: nibbles of ql (64 bytes a half) and 2 bits of qh
            j, k = c // 4, c % 4
            qo, sh = o + 64 * j + 32 * (k % 2), 4 * (k // 2)
        else:                       # Q4_K/Q5_K: nibbles, sub-block c = low (even c) or high (odd) of 32 bytes
            qo, sh = o + (16 if kind == 4 else 48) + 32 * (c // 2), 4 * (c % 2)
        for t in range(n):
            e = 32 * c + t
            q = I32(x[qo + t])
            if kind == 2:
                v = I32(I32(q >> sh) & 3) * I32(x[o + e // 16] & 15)
            elif kind == 3:
                hb = I32(I32(x[o + t]) >> (4 * j + k)) & 1
                v = I32(I32(I32(q >> sh) & 3) - 4 * (1 - hb)) * _q3_scale(x, o + 96, e // 16)
            elif kind == 6:
                hb = I32(I32(x[o + 128 + 32 * j + t]) >> (2 * k)) & 3
                v = I32(I32(I32(q >> sh) & 15) | (hb << 4)) - 32
                v = v * _i8(x[o + 192 + e // 16])
            else:
                hb = (I32(I32(x[o + 16 + t]) >> c) & 1) if kind == 5 else 0
                sc, _ = scale_min_k4(c, x, o + 4)
                v = I32(I32(I32(q >> sh) & 15) | (hb << 4)) * I32(sc)
            pr[e] = I32(v * _y8(y, p, e))


@inline
def _mins(x, o, y, p, kind, pm):
    """Q2_K: pm[l] = m[2l] * bsum[2l] + m[2l + 1] * bsum[2l + 1] (16 groups); Q4_K/Q5_K: the same over
    the 8 sub-blocks' mins and group-pair sums (4 lanes)."""
    for l in range(8 if kind == 2 else 4):
        a, b = 2 * l, 2 * l + 1
        if kind == 2:
            pm[l] = I32(I32(x[o + a] >> 4) * _bsum(y, p, a) + I32(x[o + b] >> 4) * _bsum(y, p, b))
        else:
            _, ma = scale_min_k4(a, x, o + 4)
            _, mb = scale_min_k4(b, x, o + 4)
            pm[l] = I32(I32(ma) * I32(_bsum(y, p, 2 * a) + _bsum(y, p, 2 * a + 1))
                        + I32(mb) * I32(_bsum(y, p, 2 * b) + _bsum(y, p, 2 * b + 1)))


@inline
def _kdot(x, y, nb, kind, xs, do):
    """ggml_vec_dot_qK_q8_K (AVX2) over nb super-blocks of xs bytes, fp16 d at do (dmin at do + 2)."""
    acc, pr, pm = stack_f32(), stack_i32(), stack_i32()
    acc_m = stack_f32()
    for j in range(8):
        acc[j] = _F(0)
        acc_m[j] = _F(0)
    summs = _F(0)
    for i in range(nb):
        o, p = xs * i, 292 * i
        yd = rd_f32(y, p)
        d = np.float32(yd * rd_f16(x, o + do))
        if kind == 2 or kind == 4 or kind == 5:
            dmin = np.float32(-yd * rd_f16(x, o + do + 2))
            _mins(x, o, y, p, kind, pm)
            if kind == 2:               # into the same lanes, before the scales' part
                for j in range(8):
                    acc[j] = fma_f32(dmin, _F(pm[j]), acc[j])
            elif kind == 4:             # a 4-lane accumulator of its own
                for j in range(4):
                    acc_m[j] = fma_f32(dmin, _F(pm[j]), acc_m[j])
            else:                       # a float sum of the whole super-block's integer
                summs += dmin * _F(I32(I32(pm[0] + pm[1]) + I32(pm[2] + pm[3])))
        _k_products(x, o, y, p, kind, pr)
        _fma_lanes(acc, d, pr, 8)
    if kind == 4:
        return _hsum8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
    return _hsum8(acc) + summs


@vjit
def xdot(x, y, nb, t):
    """ggml's AVX2 ggml_vec_dot_X_q8_Y for a row x of nb blocks of type t (a ggml type id), bit for bit: one
    function for all types (mul_mat's ggml_dots option; compiled once, on its first use)."""
    if t == T.TYPE_Q4_0:
        return _dot32(x, y, nb, 18, 34, 2, 0, 8, 0, False)
    if t == T.TYPE_Q4_1:
        return _dot32(x, y, nb, 20, 40, 4, 0, 0, 0, True)
    if t == T.TYPE_Q5_0:
        return _dot32(x, y, nb, 22, 34, 6, 2, 16, 1, False)
    if t == T.TYPE_Q5_1:
        return _dot32(x, y, nb, 24, 40, 8, 4, 0, 1, True)
    if t == T.TYPE_Q8_0:
        return _dot_q8_0(x, y, nb)
    if t == T.TYPE_Q2_K:
        return _kdot(x, y, nb, 2, 84, 80)
    if t == T.TYPE_Q3_K:
        return _kdot(x, y, nb, 3, 110, 108)
    if t == T.TYPE_Q4_K:
        return _kdot(x, y, nb, 4, 144, 0)
    if t == T.TYPE_Q5_K:
        return _kdot(x, y, nb, 5, 176, 0)
    return _kdot(x, y, nb, 6, 210, 208)        # Q6_K
