"""The kernels of the quantized variants of mul_mat (matmul.py), get_rows (indexing.py) and
dup/cpy/cont (layout.py); those modules hold the ops' builders, type rules, references and samplers
(they import this module; it needs nothing of theirs).

One kernel per type, each a line calling a shared body with that type's row functions from
graphcore.quants / kquants: numba compiles a body once per function it is given, so a graph pays
only for the types it uses (a k-quant quantizer takes seconds to compile the first time, then
loads from numba's disk cache).
"""
from __future__ import annotations

from numba import njit  # noqa: F401 (unused since qdot took fdot; marks numba code for graphcore._cache)

from .. import kquants as KQ
from .. import qdot as D
from .. import quants as Q
from .. import types as T
from ..kernel import R_BLAS, param_i32, record, specialise, split, t_addr, t_nb, t_ne, t_type, view_i32
from ..native import f32_1d, stack_f32, u8_1d
from .common import check_indices, next_row
from .gemm import gemm

QK, QK_K = T.QK, T.QK_K


# -- element walks shared by the copies --------------------------------------------------------------------
@Q.inline
def _addr_of(r, s, k, bs):
    """Address of element k (row-major) of slot s, a block start when bs > 1 (k % bs == 0)."""
    n0, n1, n2 = t_ne(r, s, 0), t_ne(r, s, 1), t_ne(r, s, 2)
    i0, i1, i2, i3 = k % n0, (k // n0) % n1, (k // (n0 * n1)) % n2, k // (n0 * n1 * n2)
    return t_addr(r, s) + (i0 // bs) * t_nb(r, s, 0) + i1 * t_nb(r, s, 1) + i2 * t_nb(r, s, 2) + i3 * t_nb(r, s, 3)


@Q.inline
def _n_blocks(r, s, bs):
    return t_ne(r, s, 0) // bs * t_ne(r, s, 1) * t_ne(r, s, 2) * t_ne(r, s, 3)


@Q.inline
def _f32_elems(r, s, k, buf, n, store):
    """buf[:n] <- elements k..k+n of F32 slot s (store=False), or the reverse (store=True)."""
    if t_nb(r, s, 0) == 4 and k % t_ne(r, s, 0) + n <= t_ne(r, s, 0):     # within one contiguous row
        p = f32_1d(_addr_of(r, s, k, 1), (n,), (4,))
        for j in range(n):
            if store:
                p[j] = buf[j]
            else:
                buf[j] = p[j]
        return
    for j in range(n):
        p = f32_1d(_addr_of(r, s, k + j, 1), (1,), (4,))
        if store:
            p[0] = buf[j]
        else:
            buf[j] = p[0]


@Q.inline
def copy_to_quant(rec, ith, nth, quantize, bs, ts):
    """dup/cpy/cont from F32 (any layout) into a quantized tensor: block by block in element order."""
    r = record(rec)
    buf = stack_f32()
    lo, hi = split(_n_blocks(r, 0, bs), ith, nth)
    for b in range(lo, hi):
        _f32_elems(r, 1, b * bs, buf, bs, False)
        quantize(buf, u8_1d(_addr_of(r, 0, b * bs, bs), (ts,), (1,)))


@Q.inline
def copy_from_quant(rec, ith, nth, dequantize, bs, ts):
    """dup/cpy/cont of a quantized tensor into F32, or get_rows of its rows (dequantized)."""
    r = record(rec)
    buf = stack_f32()
    if t_type(r, 2) == T.TYPE_I32:      # get_rows (src1: the row indices); cpy/dup write F32
        if not check_indices(r):
            return
        ne0, idx = t_ne(r, 1, 0), view_i32(r, 2)
        b2, b1, b0 = idx.shape[1], idx.shape[2], idx.shape[3]
        lo, hi = split(b0 * b1 * b2, ith, nth)
        j2, j1, j0 = lo // (b1 * b0), (lo // b0) % b1, lo % b0
        for _ in range(lo, hi):
            src = t_addr(r, 1) + idx[0, j2, j1, j0] * t_nb(r, 1, 1) + j1 * t_nb(r, 1, 2) + j2 * t_nb(r, 1, 3)
            dst = t_addr(r, 0) + j0 * t_nb(r, 0, 1) + j1 * t_nb(r, 0, 2) + j2 * t_nb(r, 0, 3)
            # (get_rows' result is a new tensor: its rows are contiguous)
            dequantize(u8_1d(src, (ne0 // bs * ts,), (1,)), f32_1d(dst, (ne0,), (4,)))
            j0, j1, j2 = next_row(j0, j1, j2, b0, b1)
        return
    lo, hi = split(_n_blocks(r, 1, bs), ith, nth)
    for b in range(lo, hi):
        dequantize(u8_1d(_addr_of(r, 1, b * bs, bs), (ts,), (1,)), buf)
        _f32_elems(r, 0, b * bs, buf, bs, True)


def copy_quant_same(rec, ith, nth, phase, wdata, wsize):
    """dup/cpy/cont between tensors of the same quantized type: whole blocks, in element order."""
    r = record(rec)
    ts = t_nb(r, 1, 0)
    bs = QK_K if T.TYPE_Q2_K <= t_type(r, 1) <= T.TYPE_Q8_K else QK
    lo, hi = split(_n_blocks(r, 1, bs), ith, nth)
    for b in range(lo, hi):
        s = u8_1d(_addr_of(r, 1, b * bs, bs), (ts,), (1,))
        d = u8_1d(_addr_of(r, 0, b * bs, bs), (ts,), (1,))
        for j in range(ts):
            d[j] = s[j]


# -- mul_mat: phase 0 quantizes src1's rows into the work buffer, phase 1 multiplies ---------------------
MM_ROWS = 32        # src0 rows per work unit, fewer than MM_BLAS_N columns (units depend only on the shapes:
MM_BLAS_ROWS = 128  # ... same bits for any thread count); src0 rows per BLAS tile
MM_BLAS_N = 4       # from this many src1 columns on, BLAS sgemm multiplies dequantized tiles
MM_DOT_FLOPS_PER_TASK = 1 << 15   # block dots run ~10 multiply-adds/ns: a task of 3 us at least (a 256 x 256
                                  # mat-vec splits in two), against about 0.5 us per barrier at 2 threads


def uses_block_dots(node) -> bool:
    """Whether mul_mat's node (a quantized src0) multiplies with the block dots: fewer than MM_BLAS_N
    columns, or its ggml_dots option (op_params[0])."""
    return node.ne[1] < MM_BLAS_N or bool(node.op_params[0])


def mul_mat_work(a, b, n_tasks, dots) -> int:
    """Work bytes of mul_mat(a quantized, b): b's rows in the vec_dot type, the same values as float32,
    and per task a tile of MM_BLAS_ROWS dequantized rows of a (the last two without block dots)."""
    K, rows = b.ne[0], b.ne[1] * b.ne[2] * b.ne[3]
    work = T.row_size(Q.VEC_DOT_TYPE[a.type], K) * rows + 64
    return work if dots else work + 4 * K * rows + n_tasks * MM_BLAS_ROWS * K * 4


@Q.inline
def mul_mat_quant(rec, ith, nth, phase, wdata, dequantize, vquantize, vdequantize, vdot, bs, ts, vts):
    """dst[n, m] = sum_k a[m, k] b[n, k] with b's rows first quantized to the vec_dot type, as ggml
    (its from_float: on x86, quantize_row_q8_0/q8_1's AVX2 code; Q8_K's reference quantizer). Fewer than
    MM_BLAS_N columns (token generation): ggml's integer block dots (graphcore.qdot: vdot, ggml's AVX2 code
    itself on AVX2 CPUs, else a portable loop summing the blocks in one running sum); with the node's
    ggml_dots option, for any number of columns, ggml's AVX2 dots bit for bit (xdot). Else the blocks'
    values dequantized (the terms of those dots, each exact in float32 but for one rounding) and
    multiplied by BLAS sgemm in tiles."""
    r = record(rec)
    K, M, N = t_ne(r, 1, 0), t_ne(r, 1, 1), t_ne(r, 2, 1)
    ne2, ne3 = t_ne(r, 0, 2), t_ne(r, 0, 3)
    vrow = K // bs * vts
    rows = N * ne2 * ne3
    exact = param_i32(rec, 0) != 0
    dots = N < MM_BLAS_N or exact
    yf = (wdata + rows * vrow + 63) // 64 * 64           # b's rows as float32, 64-byte aligned (BLAS)
    if phase == 0:
        lo, hi = split(rows, ith, nth)
        for ir in range(lo, hi):
            i1, i2, i3 = ir % N, (ir // N) % ne2, ir // (N * ne2)
            x = f32_1d(t_addr(r, 2) + i1 * t_nb(r, 2, 1) + i2 * t_nb(r, 2, 2) + i3 * t_nb(r, 2, 3), (K,), (4,))
            q = u8_1d(wdata + ir * vrow, (vrow,), (1,))
            vquantize(x, q)
            if not dots:
                vdequantize(q, f32_1d(yf + ir * K * 4, (K,), (4,)))
        return
    r2, r3 = ne2 // t_ne(r, 1, 2), ne3 // t_ne(r, 1, 3)
    tr = MM_ROWS if dots else MM_BLAS_ROWS
    chunks = (M + tr - 1) // tr
    tile = yf + rows * K * 4 + ith * MM_BLAS_ROWS * K * 4
    xrow = K // bs * ts
    for u in range(ith, chunks * ne2 * ne3, nth):
        c, i2, i3 = u % chunks, (u // chunks) % ne2, u // (chunks * ne2)
        a = t_addr(r, 1) + (i2 // r2) * t_nb(r, 1, 2) + (i3 // r3) * t_nb(r, 1, 3)
        m0, m1 = c * tr, min(M, (c + 1) * tr)
        d = t_addr(r, 0) + m0 * 4 + i2 * t_nb(r, 0, 2) + i3 * t_nb(r, 0, 3)
        if dots:
            yq = wdata + (i2 + i3 * ne2) * N * vrow
            for m in range(m1 - m0):
                x = u8_1d(a + (m0 + m) * t_nb(r, 1, 1), (xrow,), (1,))
                for n in range(N):
                    y = u8_1d(yq + n * vrow, (vrow,), (1,))
                    f32_1d(d + m * 4 + n * t_nb(r, 0, 1), (1,), (4,))[0] = (D.xdot(x, y, K // bs, t_type(r, 1))
                                                                             if exact else vdot(x, y, K // bs))
            continue
        for m in range(m0, m1):
            dequantize(u8_1d(a + m * t_nb(r, 1, 1), (xrow,), (1,)), f32_1d(tile + (m - m0) * K * 4, (K,), (4,)))
        y = yf + (i2 + i3 * ne2) * N * K * 4
        gemm(r[R_BLAS], m1 - m0, N, K, tile, K * 4, 4, y, 4, K * 4, d, t_nb(r, 0, 1))


# -- one kernel per type: three templates, specialised to each type's functions (kernel.specialise) ------------
QUANTIZE = DEQUANTIZE = VQUANTIZE = VDEQUANTIZE = VDOT = None      # set in each copy
BS = TS = VTS = 0


def _to_quant(rec, ith, nth, phase, wdata, wsize):
    copy_to_quant(rec, ith, nth, QUANTIZE, BS, TS)


def _from_quant(rec, ith, nth, phase, wdata, wsize):
    copy_from_quant(rec, ith, nth, DEQUANTIZE, BS, TS)


def _mul_mat(rec, ith, nth, phase, wdata, wsize):
    mul_mat_quant(rec, ith, nth, phase, wdata, DEQUANTIZE, VQUANTIZE, VDEQUANTIZE, VDOT, BS, TS, VTS)


# src1's type for each vec_dot (ggml's vec_dot_type): its quantizer (ggml's x86 one), dequantizer, block bytes
_Q8_0 = (Q.quantize_q8_0_x86, Q.dequantize_q8_0, T.type_size(T.TYPE_Q8_0))
_Q8_1 = (Q.quantize_q8_1_x86, Q.dequantize_q8_1, T.type_size(T.TYPE_Q8_1))
_Q8_K = (Q.quantize_q8_k, Q.dequantize_q8_k, T.type_size(T.TYPE_Q8_K))
# type -> (the module with its quantize_<name> and dequantize_<name>, its vec_dot partner: None, no mul_mat);
# its vec_dot is qdot.vdot_<name>
_FORMATS = {T.TYPE_Q4_0: (Q, _Q8_0), T.TYPE_Q4_1: (Q, _Q8_1), T.TYPE_Q5_0: (Q, _Q8_0), T.TYPE_Q5_1: (Q, _Q8_1),
            T.TYPE_Q8_0: (Q, _Q8_0), T.TYPE_Q8_1: (Q, None), T.TYPE_Q2_K: (KQ, _Q8_K), T.TYPE_Q3_K: (KQ, _Q8_K),
            T.TYPE_Q4_K: (KQ, _Q8_K), T.TYPE_Q5_K: (KQ, _Q8_K), T.TYPE_Q6_K: (KQ, _Q8_K), T.TYPE_Q8_K: (Q, None)}


def _kernels(template, prefix, constants):
    """{type: template specialised to constants(quantize, dequantize, partner, vec_dot) of the type},
    for the types where that is not None."""
    out = {}
    for t, (module, partner) in _FORMATS.items():
        name = T.type_name(t).lower()
        values = constants(getattr(module, f"quantize_{name}"), getattr(module, f"dequantize_{name}"), partner,
                           getattr(D, f"vdot_{name}", None))
        if values is not None:
            out[t] = specialise(template, f"{prefix}_{name}", BS=T.blck_size(t), TS=T.type_size(t), **values)
    return out


TO_QUANT = _kernels(_to_quant, "_to", lambda q, dq, partner, dot: dict(QUANTIZE=q))
FROM_QUANT = _kernels(_from_quant, "_from", lambda q, dq, partner, dot: dict(DEQUANTIZE=dq))
MUL_MAT = _kernels(_mul_mat, "_mm", lambda q, dq, partner, dot: partner and dict(
    DEQUANTIZE=dq, VQUANTIZE=partner[0], VDEQUANTIZE=partner[1], VTS=partner[2], VDOT=dot))
