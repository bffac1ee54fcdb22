"""Flash attention: flash_attn and its gradient flash_attn_back (ggml 4480542's semantics).

    q [D, N, ne2, ne3], k [D, M, nek2, ne3], v [M, D, nev2, ne3] (v transposed), M = P + N, P >= 0
    out[:, i, h] = sum_j softmax_j(scale * k[:, j, h % nek2] . q[:, i, h]) v[j, :, h % nev2]

with scale = 1/sqrt(D); `masked` drops keys j > P + i (causal over the last N of M positions). The
N x M score matrix is never stored: each row of scores lives in a small work buffer. Scores,
softmax and sums are float64 and rounded once, so the bits do not depend on the thread count (rows
of q are split across threads). A row whose keys are all -inf gives zeros, as soft_max does.

flash_attn_back(q, k, v, d, masked) is the gradient for d = d(loss)/d(out): one flat F32 tensor
holding grad q, grad k and grad v back to back (each contiguous in its source's shape, each
start padded to 16 bytes), which flash_attn's backward rule views and reshapes. Work is split by
(k head, batch) blocks, so no two threads write the same gradient. (ggml's kernel lays grad k and
grad v out with q's head count in its batch stride, which overflows when nek2 < ne2 and ne3 > 1;
here both have their sources' shapes.)
"""
from __future__ import annotations

import numpy as np

from .. import tensor as TN
from ..kernel import exp_f64, inline, param_i32, record, split, t_addr, t_ne, view_f32
from ..native import f32_1d, f64_1d
from .args import boolean
from ..errors import GraphError
from .common import check_f32, shapes
from .layout import reshape, view_1d
from .refs import f64
from .registry import MIN_FLOPS_PER_TASK, new_node, reference_of, register, sample_of
from .registry import param_i32 as param_i32_of
from .registry import rebuild_of

ALIGN = 16      # ggml's GGML_MEM_ALIGN: each gradient of flash_attn_back starts at a multiple of it


def _scale(D):
    return float(np.float32(1.0) / np.sqrt(np.float32(D)))     # ggml: 1.0f/sqrtf(D)


def _check(op, q, k, v, d=None):
    check_f32(op, q, k, v, *([d] if d is not None else []))
    D, N, ne2, ne3 = q.ne
    M = k.ne[1]
    ok = (k.ne[0] == D and M >= N and v.ne[0] == M and v.ne[1] == D and k.ne[3] == ne3 and v.ne[3] == ne3
          and ne2 % k.ne[2] == 0 and ne2 % v.ne[2] == 0)
    if d is not None:
        ok = ok and list(d.ne) == list(q.ne) and v.ne[2] == k.ne[2]
    if not ok:
        raise GraphError(f"{op}: needs q [D, N, h, b], k [D, M >= N, hk, b], v [M, D, hv, b] with h a multiple "
                         f"of hk and hv{' (hv = hk)' if d is not None else ''}"
                         f"{', d shaped like q' if d is not None else ''}; got "
                         f"{shapes(q, k, v, *([d] if d is not None else []))}")


# -- one row of attention weights, shared by both kernels ---------------------------------------------
@inline
def _row_weights(q, k, s, iq1, iq2, iq3, ik2, mb, scale):
    """s[:mb] = softmax over j < mb of scale * k[:, j] . q[:, iq1] (float64); returns nothing.
    A row that is all -inf gives zeros; NaN propagates."""
    D = q.shape[3]
    mx = -np.inf
    for j in range(mb):
        acc = 0.0
        for i0 in range(D):
            acc += np.float64(k[iq3, ik2, j, i0]) * np.float64(q[iq3, iq2, iq1, i0])
        w = acc * scale
        s[j] = w
        if w > mx or w != w:
            mx = w
    if mx == -np.inf:
        for j in range(mb):
            s[j] = 0.0
        return
    tot = 0.0
    for j in range(mb):
        e = exp_f64(s[j] - mx)
        s[j] = e
        tot += e
    r = 1.0 / tot
    for j in range(mb):
        s[j] *= r


@inline
def _operands(rec):
    """Both kernels' q, k, v, masked flag and scale (ggml's 1.0f/sqrtf(D))."""
    r = record(rec)
    q, k, v = view_f32(r, 1), view_f32(r, 2), view_f32(r, 3)
    scale = np.float64(np.float32(1.0) / np.sqrt(np.float32(q.shape[3])))
    return r, q, k, v, param_i32(rec, 0) != 0, scale


def _fa_kernel(rec, ith, nth, phase, wdata, wsize):
    r, q, k, v, masked, scale = _operands(rec)
    o = view_f32(r, 0)
    ne3, ne2, N, D = q.shape
    nek2, M = k.shape[1], k.shape[2]
    nev2 = v.shape[1]
    P = M - N
    s = f64_1d(wdata + ith * (8 * M + 64), (M,), (8,))
    lo, hi = split(N * ne2 * ne3, ith, nth)
    for ir in range(lo, hi):
        iq3, iq2, iq1 = ir // (ne2 * N), (ir // N) % ne2, ir % N
        mb = P + iq1 + 1 if masked else M
        _row_weights(q, k, s, iq1, iq2, iq3, iq2 % nek2, mb, scale)
        iv2 = iq2 % nev2
        for ic in range(D):
            acc = 0.0
            for j in range(mb):
                acc += np.float64(v[iq3, iv2, ic, j]) * s[j]
            o[iq3, iq2, iq1, ic] = np.float32(acc)


def _offsets(q, k, v):
    """Byte offsets of grad q, grad k, grad v in flash_attn_back's result, and its element count."""
    oq = 0
    ok = oq + -(-TN.nelements(q) * 4 // ALIGN) * ALIGN
    ov = ok + -(-TN.nelements(k) * 4 // ALIGN) * ALIGN
    end = ov + -(-TN.nelements(v) * 4 // ALIGN) * ALIGN
    return oq, ok, ov, end // 4


def _fab_kernel(rec, ith, nth, phase, wdata, wsize):
    r, q, k, v, masked, scale = _operands(rec)
    dd = view_f32(r, 4)
    ne3, ne2, N, D = q.shape
    nek2, M = k.shape[1], k.shape[2]
    P = M - N
    n_out = t_ne(r, 0, 0)
    if phase == 0:                      # zero the result (padding included)
        lo, hi = split(n_out, ith, nth)
        out = f32_1d(t_addr(r, 0), (n_out,), (4,))
        for i in range(lo, hi):
            out[i] = np.float32(0.0)
        return
    eq, ek = N * D * ne2 * ne3, D * M * nek2 * ne3
    oq = 0
    ok = oq + (eq * 4 + 15) // 16 * 16
    ov = ok + (ek * 4 + 15) // 16 * 16
    gq = f32_1d(t_addr(r, 0) + oq, (eq,), (4,))
    gk = f32_1d(t_addr(r, 0) + ok, (ek,), (4,))
    gv = f32_1d(t_addr(r, 0) + ov, (ek,), (4,))
    per = 3 * M + 2 * D * M + 8
    w = f64_1d(wdata + ith * 8 * per, (per,), (8,))
    s, gs, acc_k, acc_v = w[0:M], w[M:2 * M], w[2 * M:2 * M + D * M], w[2 * M + D * M:2 * M + 2 * D * M]
    lo, hi = split(nek2 * ne3, ith, nth)
    for blk in range(lo, hi):
        ik3, ik2 = blk // nek2, blk % nek2
        for i in range(D * M):
            acc_k[i] = 0.0
            acc_v[i] = 0.0
        for iq2 in range(ik2, ne2, nek2):
            for iq1 in range(N):
                mb = P + iq1 + 1 if masked else M
                _row_weights(q, k, s, iq1, iq2, ik3, ik2, mb, scale)
                dot = 0.0
                for j in range(mb):                 # grad of the weights: d . v[j]
                    a = 0.0
                    for ic in range(D):
                        a += np.float64(dd[ik3, iq2, iq1, ic]) * np.float64(v[ik3, ik2, ic, j])
                    gs[j] = a
                    dot += s[j] * a
                for j in range(mb):                 # through softmax and the scale
                    gs[j] = s[j] * (gs[j] - dot) * scale
                qb = ((ik3 * ne2 + iq2) * N + iq1) * D
                for i0 in range(D):
                    a = 0.0
                    for j in range(mb):
                        a += gs[j] * np.float64(k[ik3, ik2, j, i0])
                    gq[qb + i0] = np.float32(a)
                for j in range(mb):
                    for i0 in range(D):
                        acc_k[j * D + i0] += gs[j] * np.float64(q[ik3, iq2, iq1, i0])
                        acc_v[i0 * M + j] += np.float64(dd[ik3, iq2, iq1, i0]) * s[j]
        kb = (ik3 * nek2 + ik2) * M * D
        for i in range(D * M):
            gk[kb + i] = np.float32(acc_k[i])
            gv[kb + i] = np.float32(acc_v[i])


def _fa_tasks(node, n_threads):
    q, k = node.src[0], node.src[1]
    rows = TN.nrows(q)
    return max(1, min(n_threads, rows, rows * k.ne[1] * q.ne[0] * 2 // MIN_FLOPS_PER_TASK))


def _fa_work(node, n_tasks):
    return (8 * node.src[1].ne[1] + 64) * n_tasks


def _fab_tasks(node, n_threads):
    q, k = node.src[0], node.src[1]
    blocks = k.ne[2] * k.ne[3]
    return max(1, min(n_threads, blocks, TN.nrows(q) * k.ne[1] * q.ne[0] * 6 // MIN_FLOPS_PER_TASK))


def _fab_work(node, n_tasks):
    D, M = node.src[0].ne[0], node.src[1].ne[1]
    return 8 * (3 * M + 2 * D * M + 8) * n_tasks


def _fa_backward(ctx, t, g, d):
    q, k, v = t.src[:3]
    if not (d.needs(0) or d.needs(1) or d.needs(2)):
        return
    fb = flash_attn_back(ctx, q, k, v, g, bool(param_i32_of(t, 0)))
    offs = _offsets(q, k, v)
    for i, src in enumerate((q, k, v)):
        if d.needs(i):
            d.add(i, reshape(ctx, view_1d(ctx, fb, TN.nelements(src), offs[i]), src))


FLASH_ATTN = register("FLASH_ATTN", "flash_attn(x)", _fa_kernel, n_tasks=_fa_tasks, work_size=_fa_work,
                      backward=_fa_backward)
FLASH_ATTN_BACK = register("FLASH_ATTN_BACK", "flash_attn_back(x)", _fab_kernel, n_tasks=_fab_tasks,
                           work_size=_fab_work, n_phases=2)


def flash_attn(ctx, q, k, v, masked: bool):
    """ggml_flash_attn: softmax(k^T q / sqrt(D)) applied to v, without storing the scores; see the
    module's docstring for the shapes. Returns F32 [D, N, ne2, ne3]."""
    _check("flash_attn", q, k, v)
    masked = boolean("flash_attn", "masked", masked)
    return new_node(ctx, FLASH_ATTN, q.type, q.ne, [q, k, v], [int(masked)])


def flash_attn_back(ctx, q, k, v, d, masked: bool):
    """ggml_flash_attn_back: the gradients of flash_attn(q, k, v, masked) for the output gradient d,
    as one flat F32 tensor: grad q, grad k, grad v, each contiguous, each start padded to 16 bytes."""
    _check("flash_attn_back", q, k, v, d)
    masked = boolean("flash_attn_back", "masked", masked)
    return new_node(ctx, FLASH_ATTN_BACK, q.type, [_offsets(q, k, v)[3]], [q, k, v, d], [int(masked)])


@rebuild_of(FLASH_ATTN, FLASH_ATTN_BACK)
def _rebuild(ctx, srcs, rec):
    build = flash_attn if rec.op == FLASH_ATTN else flash_attn_back
    return build(ctx, *srcs, bool(rec.i32(0)))


# -- numpy references and samplers ---------------------------------------------------------------------
def _weights(q, k, masked):
    """The attention weights [ne3, ne2, N, M] in float64 (masked keys 0, all -inf rows 0)."""
    N, M = q.shape[2], k.shape[2]
    kk = _tile_heads(k, q.shape[1])
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.einsum("bhid,bhjd->bhij", q, kk) * _scale(q.shape[3])
    keep = np.ones((N, M), bool) if not masked else np.arange(M)[None, :] <= (M - N) + np.arange(N)[:, None]
    s = np.where(keep, s, -np.inf)
    mx = s.max(axis=3, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.where(mx == -np.inf, 0.0, np.exp(s - np.where(mx == -np.inf, 0.0, mx)))
        tot = e.sum(axis=3, keepdims=True)
        return np.where(mx == -np.inf, 0.0, e / np.where(tot == 0, 1.0, tot)), keep


def _tile_heads(x, h):
    return np.tile(x, (1, h // x.shape[1], 1, 1))


def _masked_matmul(w, keep, vt):
    """sum over unmasked j of w[..., i, j] * vt[..., j, c] (masked keys never touch vt: NaN stays out)."""
    out = np.zeros(w.shape[:3] + (vt.shape[3],))
    for i in range(w.shape[2]):
        js = np.flatnonzero(keep[i])
        with np.errstate(invalid="ignore", over="ignore"):
            out[:, :, i, :] = np.einsum("bhj,bhjc->bhc", w[:, :, i, js], vt[:, :, js, :])
    return out


@reference_of(FLASH_ATTN, nmse=1e-6)
def _fa_reference(node, srcs):
    q, k, v = (f64(x) for x in srcs[:3])
    w, keep = _weights(q, k, bool(param_i32_of(node, 0)))
    vt = _tile_heads(np.swapaxes(v, 2, 3), q.shape[1])          # [b, h, M, D]
    return _masked_matmul(w, keep, vt)


@reference_of(FLASH_ATTN_BACK, nmse=1e-6)
def _fab_reference(node, srcs):
    """Row by row over the unmasked keys only (as the kernel: masked keys never touch a value)."""
    q, k, v, d = (f64(x) for x in srcs[:4])
    h, hk = q.shape[1], k.shape[1]
    w, keep = _weights(q, k, bool(param_i32_of(node, 0)))
    kt, vt = _tile_heads(k, h), _tile_heads(np.swapaxes(v, 2, 3), h)         # [b, h, M, D]
    gq, gk, gv = np.zeros(q.shape), np.zeros(kt.shape), np.zeros(vt.shape)
    scale = _scale(q.shape[3])
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(q.shape[2]):
            js = np.flatnonzero(keep[i])
            wi = w[:, :, i, js]
            gw = np.einsum("bhc,bhjc->bhj", d[:, :, i], vt[:, :, js])
            gs = wi * (gw - (wi * gw).sum(axis=2, keepdims=True)) * scale
            gq[:, :, i] = np.einsum("bhj,bhjd->bhd", gs, kt[:, :, js])
            gk[:, :, js] += np.einsum("bhj,bhd->bhjd", gs, q[:, :, i])
            gv[:, :, js] += np.einsum("bhj,bhc->bhjc", wi, d[:, :, i])
    fold = lambda x: x.reshape(x.shape[0], h // hk, hk, *x.shape[2:]).sum(axis=1)   # noqa: E731
    out = np.zeros(node.ne[0])
    oq, ok, ov, _ = _offsets(*node.src[:3])
    for o, g in ((oq, gq), (ok, fold(gk)), (ov, np.swapaxes(fold(gv), 2, 3))):
        out[o // 4:o // 4 + g.size] = g.ravel()
    return out.reshape(1, 1, 1, -1)


def _sample_qkv(d):
    D, N, P = d.int(1, 6), d.int(1, 5), d.int(0, 3)
    ne2, ne3 = d.int(1, 4), d.int(1, 2)
    hk = d.choice([x for x in range(1, ne2 + 1) if ne2 % x == 0])
    q = d.f32([D, N, ne2, ne3])
    k = d.f32([D, N + P, hk, ne3])
    v = d.f32([N + P, D, hk, ne3])
    return q, k, v, d.coin()


@sample_of(FLASH_ATTN)
def _fa_sample(d):
    q, k, v, masked = _sample_qkv(d)
    return flash_attn(d.ctx, q, k, v, masked)


@sample_of(FLASH_ATTN_BACK)
def _fab_sample(d):
    q, k, v, masked = _sample_qkv(d)
    return flash_attn_back(d.ctx, q, k, v, d.f32(list(q.ne)), masked)
