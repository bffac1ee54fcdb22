"""ggml's k-quants (llama.cpp 4480542, QK_K = 256): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (their vec_dot
partner Q8_K is in quants.py), one row at a time, as in quants.py (read its notes on float32 arithmetic first).

Byte layouts of one 256-element super-block (ggml-quants.h):
    Q2_K  84: scales[16] (4-bit scale | 4-bit min), qs[64] (2 bits), d, dmin (f16)
    Q3_K 110: hmask[32] (high bit), qs[64] (low 2 bits), scales[12] (16 6-bit scales), d (f16)
    Q4_K 144: d, dmin (f16), scales[12] (8 6-bit scales and 8 6-bit mins), qs[128] (nibbles)
    Q5_K 176: d, dmin, scales[12], qh[32] (fifth bits), qs[128]
    Q6_K 210: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16)
The quantizers are the reference ones (quantize_row_*_reference, which llama.cpp's quantize uses
without an importance matrix); the dots with Q8_K rows are in qdot.py.
"""
from __future__ import annotations

import numpy as np

from .native import stack_f32, stack_i8, stack_u8
from .quants import _F, _absmax, i8, inline, nearest_int, qjit, rd_f16, wr_f16


# -- helpers shared by the quantizers (ggml's make_*_quants) -------------------------------------------
@inline
def make_qkx2(n, nmax, x, xo, w, L, lo, Laux, rmin, rdelta, nstep, use_mad):
    """ggml's make_qkx2_quants: levels 0..nmax in L[lo:lo+n] for x[xo:xo+n] with a scale and a min
    fitted by weighted least squares over nstep+1 trial scales. Returns (scale, -min)."""
    mn = x[xo]
    mx = x[xo]
    sum_w = w[0]
    sum_x = np.float32(sum_w * x[xo])
    for i in range(1, n):
        v = x[xo + i]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
        sum_w = np.float32(sum_w + w[i])
        sum_x = np.float32(sum_x + np.float32(w[i] * v))
    if mn > 0:
        mn = _F(0)
    if mx == mn:
        for i in range(n):
            L[lo + i] = 0
        return _F(0), -mn
    iscale = np.float32(_F(nmax) / np.float32(mx - mn))
    scale = np.float32(_F(1) / iscale)
    best_mad = _F(0)
    for i in range(n):
        l = max(0, min(nmax, nearest_int(np.float32(iscale * np.float32(x[xo + i] - mn)))))
        L[lo + i] = l
        diff = np.float32(np.float32(np.float32(scale * _F(l)) + mn) - x[xo + i])
        diff = abs(diff) if use_mad else np.float32(diff * diff)
        best_mad = np.float32(best_mad + np.float32(w[i] * diff))
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        iscale = np.float32(np.float32(np.float32(rmin + np.float32(rdelta * _F(step))) + _F(nmax)) / np.float32(mx - mn))  # noqa: E501 (ggml's float rounding, step by step)
        sum_l, sum_l2, sum_xl = _F(0), _F(0), _F(0)
        for i in range(n):
            l = max(0, min(nmax, nearest_int(np.float32(iscale * np.float32(x[xo + i] - mn)))))
            Laux[i] = l
            wl = np.float32(w[i] * _F(l))
            sum_l = np.float32(sum_l + wl)
            sum_l2 = np.float32(sum_l2 + np.float32(wl * _F(l)))
            sum_xl = np.float32(sum_xl + np.float32(wl * x[xo + i]))
        D = np.float32(np.float32(sum_w * sum_l2) - np.float32(sum_l * sum_l))
        if D > 0:
            this_scale = np.float32(np.float32(np.float32(sum_w * sum_xl) - np.float32(sum_x * sum_l)) / D)
            this_min = np.float32(np.float32(np.float32(sum_l2 * sum_x) - np.float32(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = _F(0)
                this_scale = np.float32(sum_xl / sum_l2)
            mad = _F(0)
            for i in range(n):
                diff = np.float32(np.float32(np.float32(this_scale * _F(Laux[i])) + this_min) - x[xo + i])
                diff = abs(diff) if use_mad else np.float32(diff * diff)
                mad = np.float32(mad + np.float32(w[i] * diff))
            if mad < best_mad:
                for i in range(n):
                    L[lo + i] = Laux[i]
                best_mad = mad
                scale = this_scale
                mn = this_min
    return scale, -mn


@inline
def _sums(x, xo, n, iscale, nmax, L, lo, store):
    """Levels round(iscale * x) clamped to [-nmax, nmax-1], and the x^2-weighted sums of make_qx_quants."""
    sumlx, suml2 = _F(0), _F(0)
    for i in range(n):
        v = x[xo + i]
        l = max(-nmax, min(nmax - 1, nearest_int(np.float32(iscale * v))))
        if store:
            L[lo + i] = l + nmax
        w = np.float32(v * v)
        sumlx = np.float32(sumlx + np.float32(np.float32(w * v) * _F(l)))
        suml2 = np.float32(suml2 + np.float32(np.float32(w * _F(l)) * _F(l)))
    return sumlx, suml2


@inline
def make_qx(n, nmax, x, xo, L, lo):
    """ggml's make_qx_quants with rmse_type 1 and no weights (Q6_K's only use): levels L + nmax and
    the scale, the best of 19 trial scales."""
    mx, amax = _absmax(x, xo, n)
    if amax < _F(1e-30):
        for i in range(n):
            L[lo + i] = 0
        return _F(0)
    iscale = np.float32(_F(-nmax) / mx)
    sumlx, suml2 = _sums(x, xo, n, iscale, nmax, L, lo, True)
    scale = np.float32(sumlx / suml2)
    best = np.float32(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = np.float32(-np.float32(_F(nmax) + np.float32(_F(0.1) * _F(step))) / mx)
        sumlx, suml2 = _sums(x, xo, n, iscale, nmax, L, lo, False)
        if suml2 > 0 and np.float32(sumlx * sumlx) > np.float32(best * suml2):
            _sums(x, xo, n, iscale, nmax, L, lo, True)
            scale = np.float32(sumlx / suml2)
            best = np.float32(scale * sumlx)
    return scale


@inline
def make_q3(n, nmax, x, xo, L, lo):
    """ggml's make_q3_quants with do_rmse: levels in [-nmax, nmax) refined one at a time (5 passes)."""
    mx, amax = _absmax(x, xo, n)
    if amax == 0:
        for i in range(n):
            L[lo + i] = 0
        return _F(0)
    iscale = np.float32(_F(-nmax) / mx)
    sumlx, suml2 = _F(0), _F(0)
    for i in range(n):
        v = x[xo + i]
        l = max(-nmax, min(nmax - 1, nearest_int(np.float32(iscale * v))))
        L[lo + i] = l
        w = np.float32(v * v)
        sumlx = np.float32(sumlx + np.float32(np.float32(w * v) * _F(l)))
        suml2 = np.float32(suml2 + np.float32(np.float32(w * _F(l)) * _F(l)))
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            v = x[xo + i]
            w = np.float32(v * v)
            li = _F(L[lo + i])
            slx = np.float32(sumlx - np.float32(np.float32(w * v) * li))
            if slx > 0:
                sl2 = np.float32(suml2 - np.float32(np.float32(w * li) * li))
                new_l = max(-nmax, min(nmax - 1, nearest_int(np.float32(np.float32(v * sl2) / slx))))
                if new_l != L[lo + i]:
                    slx = np.float32(slx + np.float32(np.float32(w * v) * _F(new_l)))
                    sl2 = np.float32(sl2 + np.float32(np.float32(w * _F(new_l)) * _F(new_l)))
                    if sl2 > 0 and np.float32(np.float32(slx * slx) * suml2) > np.float32(np.float32(sumlx * sumlx) * sl2):  # noqa: E501
                        L[lo + i] = new_l
                        sumlx, suml2 = slx, sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[lo + i] += nmax
    return np.float32(sumlx / suml2)


@inline
def scale_min_k4(j, q, o):
    """ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 bytes at q[o]."""
    if j < 4:
        return np.int64(q[o + j]) & 63, np.int64(q[o + j + 4]) & 63
    return ((np.int64(q[o + j + 4]) & 0xF) | ((np.int64(q[o + j - 4]) >> 6) << 4),
            (np.int64(q[o + j + 4]) >> 4) | ((np.int64(q[o + j]) >> 6) << 4))


@inline
def _pack2(y, qo, L):
    """Q2_K/Q3_K's 2-bit packing: byte l of each 32 holds levels l, l+32, l+64, l+96 of 128."""
    for j in range(0, 256, 128):
        for l in range(32):
            y[qo + j // 4 + l] = np.uint8((L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                           | (L[j + l + 96] << 6)) & 255)


# -- Q2_K -----------------------------------------------------------------------------------------------
@qjit
def quantize_q2_k(x, y):
    L, Laux, w, sm = stack_u8(), stack_u8(), stack_f32(), stack_f32()     # sm: 16 scales, 16 mins
    for i in range(y.shape[0] // 84):
        o, xo = 84 * i, 256 * i
        max_scale, max_min = _F(0), _F(0)
        for j in range(16):
            for l in range(16):
                w[l] = abs(x[xo + 16 * j + l])
            sm[j], sm[16 + j] = make_qkx2(16, 3, x, xo + 16 * j, w, L, 16 * j, Laux, _F(-0.5), _F(0.1), 15, True)
            if sm[j] > max_scale:
                max_scale = sm[j]
            if sm[16 + j] > max_min:
                max_min = sm[16 + j]
        if max_scale > 0:
            iscale = np.float32(_F(15) / max_scale)
            for j in range(16):
                y[o + j] = np.uint8(nearest_int(np.float32(iscale * sm[j])) & 255)
            wr_f16(y, o + 80, np.float32(max_scale / _F(15)))
        else:
            for j in range(16):
                y[o + j] = 0
            wr_f16(y, o + 80, _F(0))
        if max_min > 0:
            iscale = np.float32(_F(15) / max_min)
            for j in range(16):
                y[o + j] |= np.uint8((nearest_int(np.float32(iscale * sm[16 + j])) << 4) & 255)
            wr_f16(y, o + 82, np.float32(max_min / _F(15)))
        else:
            wr_f16(y, o + 82, _F(0))
        for j in range(16):
            d = np.float32(rd_f16(y, o + 80) * _F(y[o + j] & 15))
            if d == 0:
                continue
            dm = np.float32(rd_f16(y, o + 82) * _F(y[o + j] >> 4))
            for ii in range(16):
                L[16 * j + ii] = max(0, min(3, nearest_int(np.float32(np.float32(x[xo + 16 * j + ii] + dm) / d))))
        _pack2(y, o + 16, L)


@qjit
def dequantize_q2_k(y, x):
    for i in range(y.shape[0] // 84):
        o = 84 * i
        d, mn = rd_f16(y, o + 80), rd_f16(y, o + 82)
        for p0 in range(0, 256, 16):      # groups of 16 with one 4-bit scale and min each
            n, j, half = p0 // 128, (p0 % 128) // 32, (p0 % 32) // 16
            sc = np.int64(y[o + p0 // 16])
            dl, ml = np.float32(d * _F(sc & 15)), np.float32(mn * _F(sc >> 4))
            for l in range(16):
                q = (np.int64(y[o + 16 + 32 * n + 16 * half + l]) >> (2 * j)) & 3
                x[256 * i + p0 + l] = np.float32(dl * _F(np.int32(q))) - ml


# -- Q3_K -----------------------------------------------------------------------------------------------
@inline
def _q3_scale(y, so, j):
    """The signed 6-bit scale of group j from Q3_K's 12 scale bytes at y[so]."""
    lo4 = (np.int64(y[so + j]) & 15) if j < 8 else (np.int64(y[so + j - 8]) >> 4)
    return (lo4 | (((np.int64(y[so + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32


@qjit
def quantize_q3_k(x, y):
    L, sc = stack_i8(), stack_f32()
    for i in range(y.shape[0] // 110):
        o, xo = 110 * i, 256 * i
        max_scale, amax = _F(0), _F(0)
        for j in range(16):
            sc[j] = make_q3(16, 4, x, xo + 16 * j, L, 16 * j)
            if abs(sc[j]) > amax:
                amax, max_scale = abs(sc[j]), sc[j]
        so = o + 96
        for j in range(12):
            y[so + j] = 0
        if max_scale != 0:
            iscale = np.float32(_F(-32) / max_scale)
            for j in range(16):
                l = max(-32, min(31, i8(nearest_int(np.float32(iscale * sc[j]))))) + 32
                if j < 8:
                    y[so + j] = np.uint8(l & 15)
                else:
                    y[so + j - 8] |= np.uint8((l & 15) << 4)
                y[so + 8 + j % 4] |= np.uint8(((l >> 4) << (2 * (j // 4))) & 255)
            wr_f16(y, o + 108, np.float32(_F(1) / iscale))
        else:
            wr_f16(y, o + 108, _F(0))
        for j in range(16):
            d = np.float32(rd_f16(y, o + 108) * _F(_q3_scale(y, so, j)))
            if d == 0:
                continue
            for ii in range(16):
                L[16 * j + ii] = max(-4, min(3, nearest_int(np.float32(x[xo + 16 * j + ii] / d)))) + 4
        for j in range(32):
            y[o + j] = 0
        for j in range(256):        # high bit of level j into hmask[j % 32], bit j // 32
            if L[j] > 3:
                y[o + j % 32] |= np.uint8(1 << (j // 32))
                L[j] -= 4
        _pack2(y, o + 32, L)


@qjit
def dequantize_q3_k(y, x):
    for i in range(y.shape[0] // 110):
        o = 110 * i
        d_all = rd_f16(y, o + 108)
        for g in range(16):
            n, j, half = g // 8, (g % 8) // 2, g % 2
            dl = np.float32(d_all * _F(_q3_scale(y, o + 96, g)))
            m = 1 << (4 * n + j)
            for l in range(16):
                q = (np.int64(y[o + 32 + 32 * n + 16 * half + l]) >> (2 * j)) & 3
                h = 0 if np.int64(y[o + 16 * half + l]) & m else 4
                x[256 * i + 16 * g + l] = np.float32(dl * _F(np.int32(q - h)))


# -- Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins --------------------------------------
@inline
def _quantize_k45(x, xo, y, o, L, Laux, w, sm, nmax, rmin, nstep):
    """The shared first half of Q4_K's and Q5_K's quantizers: scales, mins and the levels L."""
    max_scale, max_min = _F(0), _F(0)
    for j in range(8):
        sum_x2 = _F(0)
        for l in range(32):
            v = x[xo + 32 * j + l]
            sum_x2 = np.float32(sum_x2 + np.float32(v * v))
        av_x = np.sqrt(np.float32(sum_x2 / _F(32)))
        for l in range(32):
            w[l] = np.float32(av_x + abs(x[xo + 32 * j + l]))
        sm[j], sm[8 + j] = make_qkx2(32, nmax, x, xo + 32 * j, w, L, 32 * j, Laux, rmin, _F(0.1), nstep, False)
        if sm[j] > max_scale:
            max_scale = sm[j]
        if sm[8 + j] > max_min:
            max_min = sm[8 + j]
    inv_scale = np.float32(_F(63) / max_scale) if max_scale > 0 else _F(0)
    inv_min = np.float32(_F(63) / max_min) if max_min > 0 else _F(0)
    so = o + 4
    for j in range(8):
        ls = min(63, nearest_int(np.float32(inv_scale * sm[j])) & 255)
        lm = min(63, nearest_int(np.float32(inv_min * sm[8 + j])) & 255)
        if j < 4:
            y[so + j] = np.uint8(ls)
            y[so + j + 4] = np.uint8(lm)
        else:
            y[so + j + 4] = np.uint8((ls & 15) | ((lm & 15) << 4))
            y[so + j - 4] |= np.uint8((ls >> 4) << 6)
            y[so + j] |= np.uint8((lm >> 4) << 6)
    wr_f16(y, o, np.float32(max_scale / _F(63)))
    wr_f16(y, o + 2, np.float32(max_min / _F(63)))
    for j in range(8):
        sc, m = scale_min_k4(j, y, so)
        d = np.float32(rd_f16(y, o) * _F(sc))
        if d == 0:
            continue
        dm = np.float32(rd_f16(y, o + 2) * _F(m))
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, nearest_int(np.float32(np.float32(x[xo + 32 * j + ii] + dm) / d))))


@qjit
def quantize_q4_k(x, y):
    L, Laux, w, sm = stack_u8(), stack_u8(), stack_f32(), stack_f32()
    for i in range(y.shape[0] // 144):
        o = 144 * i
        _quantize_k45(x, 256 * i, y, o, L, Laux, w, sm, 15, _F(-1), 20)
        for j in range(0, 256, 64):
            for l in range(32):
                y[o + 16 + j // 2 + l] = np.uint8(L[j + l] | (L[j + l + 32] << 4))


@qjit
def quantize_q5_k(x, y):
    L, Laux, w, sm = stack_u8(), stack_u8(), stack_f32(), stack_f32()
    for i in range(y.shape[0] // 176):
        o = 176 * i
        _quantize_k45(x, 256 * i, y, o, L, Laux, w, sm, 31, _F(-0.5), 15)
        for j in range(32):
            y[o + 16 + j] = 0
        for n in range(0, 256, 64):
            m1 = 1 << (n // 32)
            for j in range(32):
                l1, l2 = np.int64(L[n + j]), np.int64(L[n + j + 32])
                if l1 > 15:
                    l1 -= 16
                    y[o + 16 + j] |= np.uint8(m1)
                if l2 > 15:
                    l2 -= 16
                    y[o + 16 + j] |= np.uint8(m1 << 1)
                y[o + 48 + n // 2 + j] = np.uint8(l1 | (l2 << 4))


@inline
def _dequantize_k45(y, o, qo, ho, x, xo):
    """Q4_K (ho < 0) or Q5_K (fifth bits at y[ho]): 8 sub-blocks, d * q - min each."""
    d, mn = rd_f16(y, o), rd_f16(y, o + 2)
    for s in range(8):
        sc, m = scale_min_k4(s, y, o + 4)
        d1, m1 = np.float32(d * _F(sc)), np.float32(mn * _F(m))
        shift = 4 * (s % 2)
        for l in range(32):
            q = (np.int64(y[qo + 32 * (s // 2) + l]) >> shift) & 15
            if ho >= 0 and np.int64(y[ho + l]) & (1 << s):
                q += 16
            x[xo + 32 * s + l] = np.float32(d1 * _F(np.int32(q))) - m1


@qjit
def dequantize_q4_k(y, x):
    for i in range(y.shape[0] // 144):
        _dequantize_k45(y, 144 * i, 144 * i + 16, -1, x, 256 * i)


@qjit
def dequantize_q5_k(y, x):
    for i in range(y.shape[0] // 176):
        _dequantize_k45(y, 176 * i, 176 * i + 48, 176 * i + 16, x, 256 * i)


# -- Q6_K: 16 groups of 16 with int8 scales, 6-bit levels - 32 ----------------------------------------
@inline
def _q6_where(g):
    """Group g's low nibble (byte offset, shift) in ql and its 2 high bits (offset, shift) in qh."""
    n, quarter, half = g // 8, (g % 8) // 2, g % 2
    return (64 * n + 32 * (quarter % 2) + 16 * half, 4 * (quarter // 2), 32 * n + 16 * half, 2 * quarter)



@qjit
def quantize_q6_k(x, y):
    L, sc = stack_i8(), stack_f32()
    for i in range(y.shape[0] // 210):
        o, xo = 210 * i, 256 * i
        max_scale, max_abs = _F(0), _F(0)
        for g in range(16):
            sc[g] = make_qx(16, 32, x, xo + 16 * g, L, 16 * g)
            if abs(sc[g]) > max_abs:
                max_abs, max_scale = abs(sc[g]), sc[g]
        if max_abs == 0:
            for j in range(210):
                y[o + j] = 0
            continue
        iscale = np.float32(_F(-128) / max_scale)
        wr_f16(y, o + 208, np.float32(_F(1) / iscale))
        for g in range(16):
            y[o + 192 + g] = np.uint8(min(127, nearest_int(np.float32(iscale * sc[g]))) & 255)
        for g in range(16):
            d = np.float32(rd_f16(y, o + 208) * _F(np.int8(y[o + 192 + g])))
            if d == 0:
                continue
            for ii in range(16):
                L[16 * g + ii] = max(-32, min(31, nearest_int(np.float32(x[xo + 16 * g + ii] / d)))) + 32
        for j in range(64):
            y[o + 128 + j] = 0
        for g in range(16):
            lo, ls, ho, hs = _q6_where(g)
            for l in range(16):
                q = np.int64(L[16 * g + l])
                if ls == 0:
                    y[o + lo + l] = np.uint8(q & 15)
                else:
                    y[o + lo + l] |= np.uint8((q & 15) << 4)
                y[o + 128 + ho + l] |= np.uint8((q >> 4) << hs)


@qjit
def dequantize_q6_k(y, x):
    for i in range(y.shape[0] // 210):
        o = 210 * i
        d = rd_f16(y, o + 208)
        for g in range(16):
            lo, ls, ho, hs = _q6_where(g)
            ds = np.float32(d * _F(np.int8(y[o + 192 + g])))
            for l in range(16):
                q = (((np.int64(y[o + lo + l]) >> ls) & 15) | (((np.int64(y[o + 128 + ho + l]) >> hs) & 3) << 4)) - 32
                x[256 * i + 16 * g + l] = np.float32(ds * _F(np.int32(q)))

