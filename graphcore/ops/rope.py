"""Rotary position embeddings: rope (modes 0 and 2, rope_custom's YaRN and xPos parameters) and
rope_back, its gradient (the inverse rotation).

Rows are processed independently in float64 and rounded once, so the bits do not depend on the
thread count. Any strides are accepted (ggml asks for contiguous rows).
"""
from __future__ import annotations

import math

import numpy as np

from .. import types as T
from ..errors import GraphError
from ..kernel import (f32_at, inline, param_f32, param_i32, record, row_addr, rows_contiguous, split,
                      t_nb, view_f32, view_i32)
from ..native import STACK_N, f64_1d, stack_f64
from .args import boolean, check_types, integer, real
from .common import check_f32, inplace_of, inplace_view, next_row, shapes
from .refs import f64
from .registry import new_node, reference_of, register, sample_of, tasks_by_rows
from .registry import param_f32 as param_f32_of, param_i32 as param_i32_of
from .registry import rebuild_of


def _node(ctx, op, a, srcs, params, inplace):
    if inplace:
        return inplace_view(ctx, op, a, srcs, params)
    return new_node(ctx, op, a.type, a.ne, srcs, params)


# -- rope ----------------------------------------------------------------------------------------------------
# op_params (ggml's layout): [0] n_past (0) [1] n_dims [2] mode [3] n_ctx [4] n_orig_ctx,
# floats [5] freq_base [6] freq_scale [7] ext_factor [8] attn_factor [9] beta_fast [10] beta_slow
# [11] xpos_base, [12] xpos_down, and graphcore's [13] ggml_f32 (ggml's float32 arithmetic, mode 0 only).
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
    g32 = param_i32(rec, 13) != 0
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
            if g32:
                _ggml_cos_sin(cache, half, p, base, freq_scale, mscale, sin_sign)
            for k in range(half if not g32 else 0):
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
                y[2 * q], y[2 * q + 1] = _rot(x[2 * q], x[2 * q + 1], c, sn, g32)
            u += ne1
            i3 += 1
            if i3 == ne3:
                i3 = 0
                i2 += 1
            continue
        if fast:
            _rope_row(f32_at(row_addr(r, 1, i1, i2, i3), ne0), f32_at(row_addr(r, 0, i1, i2, i3), ne0), cache,
                      half, n_dims, ne0, neox, g32)
        else:
            _rope_row(a[i3, i2, i1], d[i3, i2, i1], cache, half, n_dims, ne0, neox, g32)
        u += 1
        i1, i3, i2 = next_row(i1, i3, i2, ne1, ne3)     # rows in ne1, ne3, ne2 order (see above)


@inline
def _ggml_cos_sin(cache, half, p, base, freq_scale, mscale, sin_sign):
    """ggml_rope_cache_init's float32 arithmetic: theta from float(p), times powf(base, -2/n_dims) per
    pair; cosf, sinf of freq_scale * theta, times mscale."""
    theta = np.float32(p)
    step = np.float32(np.float32(base) ** np.float32(np.float32(-2.0) / np.float32(2 * half)))
    for k in range(half):
        th = np.float32(np.float32(freq_scale) * theta)
        cache[2 * k] = np.float32(math.cos(th)) * np.float32(mscale)
        cache[2 * k + 1] = np.float32(np.float32(math.sin(th)) * np.float32(mscale)) * sin_sign
        theta = np.float32(theta * step)


@inline
def _rot(x0, x1, c, s, g32):
    """(x0 c - x1 s, x0 s + x1 c) in float64 rounded once, or (g32) in ggml's float32: each product
    rounded, then the sum."""
    if g32:
        c32, s32 = np.float32(c), np.float32(s)
        return x0 * c32 - x1 * s32, x0 * s32 + x1 * c32
    x0, x1 = np.float64(x0), np.float64(x1)
    return np.float32(x0 * c - x1 * s), np.float32(x0 * s + x1 * c)


@inline
def _rope_row(x, dst, cache, half, n_dims, ne0, neox, g32):
    if neox:
        for k in range(half):
            dst[k], dst[k + half] = _rot(x[k], x[k + half], cache[2 * k], cache[2 * k + 1], g32)
    else:
        for k in range(half):
            dst[2 * k], dst[2 * k + 1] = _rot(x[2 * k], x[2 * k + 1], cache[2 * k], cache[2 * k + 1], g32)
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
    return p[1:] + [bool(t.op_params[12]), bool(t.op_params[13])]


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
    if param_i32_of(node, 13):          # ggml's float32 angles: p times powf(base, -2/n_dims) k times
        step = np.float32(base) ** np.float32(np.float32(-2.0) / np.float32(n_dims))
        theta_extrap = np.cumprod(np.broadcast_to(step, (half,)), dtype=np.float32) / step * p.astype(np.float32)
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
               ggml_f32=False, inplace=False):
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
    ggml_f32 = boolean(op, "ggml_f32", ggml_f32)
    if ggml_f32 and (mode != 0 or ext_factor != 0.0 or xpos_base != 0.0):
        raise GraphError(f"{op}: ggml_f32 is ggml's arithmetic of mode 0 without YaRN or xPos, got mode {mode} "
                         f"ext_factor={ext_factor} xpos_base={xpos_base}")
    params = [0, n_dims, mode, n_ctx, n_orig_ctx, freq_base, freq_scale, ext_factor, attn_factor,
              beta_fast, beta_slow, xpos_base, int(xpos_down), int(ggml_f32)]
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
                beta_fast: float = 0.0, beta_slow: float = 0.0, ggml_f32: bool = False):
    """rope with theta_k = freq_scale * pos * freq_base^(-2k/n_dims), and YaRN (ext_factor,
    n_orig_ctx, beta_fast, beta_slow) and magnitude scaling (attn_factor) as ggml defines them
    (ggml_rope_custom). Shapes and rules as rope; freq_base and freq_scale must be > 0.

    ggml_f32 (a graphcore option, mode 0 without YaRN or xPos) computes as ggml 4480542's CPU code
    does, bit for bit: theta_k by repeated float32 multiplication with powf(base, -2/n_dims) (its
    error grows with k, up to about 1e-5 relative), cosf/sinf, the rotation in float32; off, theta_k
    and the rotation are float64, rounded once."""
    return _rope_impl(ctx, ROPE, "rope_custom", a, b, n_dims, mode, n_ctx, n_orig_ctx, freq_base, freq_scale,
                      ext_factor, attn_factor, beta_fast, beta_slow, ggml_f32=ggml_f32)


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
