"""Matrix products: mul_mat and out_prod, through BLAS sgemm for all but tiny blocks.

Work is cut into fixed chunks that depend only on the shapes, never on the thread count, so the
result is the same bits for any number of threads; BLAS runs single-threaded inside each thread.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import fp16_to_fp32, inline, record, split, t_addr, t_ne, t_nb
from ..native import (f32_2d_strided, gemm_tile_c4x1, gemm_tile_c4x4, gemm_tile_c8x1, gemm_tile_c8x4, gemm_tile_g4x1,
                      gemm_tile_g4x4, gemm_tile_g8x1, gemm_tile_g8x4, sgemm, u16_2d_strided)
from .common import shapes
from .layout import cont, transpose
from .refs import blocks, f64
from ..native import f32_1d
from .registry import BLOCKS, MIN_FLOPS_PER_TASK, new_node, reference_of, register, sample_of
from .registry import rebuild_by, rebuild_of

SMALL_GEMM = 8192      # below this many multiply-adds a plain loop beats a BLAS call
CHUNK = 64
MATVEC_N = 4           # up to this many src1 columns a streaming dot-product loop beats BLAS sgemm


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def matvec(M, N, K, a, a_sm, b, b_sn, c, c_sn):
    """C[m, n] = A[m, :] · B[:, n] for rows of A and columns of B contiguous in k: float32 products summed
    in float32 lanes (LLVM vectorises the loop; ggml's vec_dot_f32 works the same way). A single pass
    over A at memory speed, where BLAS sgemm with N = 1 is several times slower (one-token decoding)."""
    for m in range(M):
        w = f32_1d(a + m * a_sm, (K,), (4,))
        for n in range(N):
            x = f32_1d(b + n * b_sn, (K,), (4,))
            acc = np.float32(0.0)
            for k in range(K):
                acc += w[k] * x[k]
            f32_1d(c + n * c_sn + m * 4, (1,), (4,))[0] = acc


@njit(cache=True)
def chunking(M, N):
    """(along_n, chunk, count): how one M x N product is cut into tasks. Shapes only."""
    if N >= 2 * CHUNK:
        size = max(2 * CHUNK, -(-N // 4))
        return True, size, -(-N // size)
    size = max(2 * CHUNK, -(-M // 4))
    return False, size, -(-M // size)


@inline
def _ld(stride, need, other_dim):
    """A BLAS leading dimension for byte stride `stride`, or -1 when BLAS cannot use it."""
    if other_dim == 1:
        return max(need, 1)
    if stride % 4 != 0 or stride // 4 < max(need, 1):
        return -1
    return stride // 4


@inline
def gemm(blas, M, N, K, a, a_sm, a_sk, b, b_sk, b_sn, c, c_sn):
    """C[m, n] = sum_k A[m, k] * B[k, n]; A, B, C addresses with byte strides (C's m stride is 4)."""
    if M * N * K >= SMALL_GEMM and N <= MATVEC_N and a_sk == 4 and b_sk == 4:
        matvec(M, N, K, a, a_sm, b, b_sn, c, c_sn)
        return
    if M * N * K >= SMALL_GEMM and blas != 0:
        ta, lda = -1, -1
        if a_sk == 4 or K == 1:
            ta, lda = 84, _ld(a_sm, K, M)            # 'T': A stored as K x M column-major
        if lda < 0 and (a_sm == 4 or M == 1):
            ta, lda = 78, _ld(a_sk, M, K)            # 'N'
        tb, ldb = -1, -1
        if b_sk == 4 or K == 1:
            tb, ldb = 78, _ld(b_sn, K, N)
        if ldb < 0 and (b_sn == 4 or N == 1):
            tb, ldb = 84, _ld(b_sk, N, K)
        ldc = _ld(c_sn, M, N)
        if lda > 0 and ldb > 0 and ldc > 0:
            sgemm(blas, ta, tb, M, N, K, np.float32(1.0), a, lda, b, ldb, np.float32(0.0), c, ldc)
            return
    small_gemm(M, N, K, a, a_sm, a_sk, b, b_sk, b_sn, c, c_sn)


@inline
def _tile(vl, nc, contiguous, a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn):
    if contiguous:
        if vl == 8:
            if nc == 4:
                gemm_tile_c8x4(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
            else:
                gemm_tile_c8x1(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
        elif nc == 4:
            gemm_tile_c4x4(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
        else:
            gemm_tile_c4x1(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
    elif vl == 8:
        if nc == 4:
            gemm_tile_g8x4(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
        else:
            gemm_tile_g8x1(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
    elif nc == 4:
        gemm_tile_g4x4(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
    else:
        gemm_tile_g4x1(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)


@inline
def small_gemm(M, N, K, a, a_sm, a_sk, b, b_sk, b_sn, c, c_sn):
    """C[m, n] = sum_k A[m, k] * B[k, n] without BLAS, for any strides: each float32 product added in
    k order into a float64, rounded once (the plain triple loop's bits), in tiles of 8 (or, for
    M <= 4, 4) rows by 4 columns, each a vector loop over k (native.gemm_tile_*)."""
    vl = 4 if M <= 4 else 8
    contiguous = a_sm == 4
    for m0 in range(0, M, vl):
        mb = min(vl, M - m0)
        am = a + m0 * a_sm
        n0 = 0
        while n0 + 4 <= N:
            _tile(vl, 4, contiguous, am, a_sm, a_sk, mb, K, b + n0 * b_sn, b_sk, b_sn, c + n0 * c_sn + m0 * 4, c_sn)
            n0 += 4
        while n0 < N:
            _tile(vl, 1, contiguous, am, a_sm, a_sk, mb, K, b + n0 * b_sn, b_sk, b_sn, c + n0 * c_sn + m0 * 4, c_sn)
            n0 += 1


@njit(cache=True, nogil=True, error_model="numpy")     # not inlined: compiled once, shared by both products
def batched_gemm(r, ith, nth, M, N, K, a, a_sm, a_sk, a_s2, a_s3, b_sk, b_sn, c_sn):
    """Block-broadcast product over dims 2 and 3 of dst: src0 batch i2 // (ne2 / ne02)."""
    ne2, ne3 = t_ne(r, 0, 2), t_ne(r, 0, 3)
    r2, r3 = ne2 // t_ne(r, 1, 2), ne3 // t_ne(r, 1, 3)
    along_n, size, count = chunking(M, N)
    units = ne2 * ne3 * count
    ch, bt = ith % count, ith // count
    i2, i3 = bt % ne2, bt // ne2
    for u in range(ith, units, nth):
        ab = a + (i2 // r2) * a_s2 + (i3 // r3) * a_s3
        bb = t_addr(r, 2) + i2 * t_nb(r, 2, 2) + i3 * t_nb(r, 2, 3)
        cb = t_addr(r, 0) + i2 * t_nb(r, 0, 2) + i3 * t_nb(r, 0, 3)
        lo = ch * size
        if along_n:
            n = min(size, N - lo)
            gemm(r[5], M, n, K, ab, a_sm, a_sk, bb + lo * b_sn, b_sk, b_sn, cb + lo * c_sn, c_sn)
        else:
            m = min(size, M - lo)
            gemm(r[5], m, N, K, ab + lo * a_sm, a_sm, a_sk, bb, b_sk, b_sn, cb + lo * 4, c_sn)
        ch += nth                   # the next unit, u + nth, without divisions
        while ch >= count:
            ch -= count
            i2 += 1
            if i2 == ne2:
                i2 = 0
                i3 += 1


# -- mul_mat: dst[M=ne01, N=ne11] = src1 · src0ᵀ, rows of both are K = ne00 long --------------------------
def _mul_mat_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    K, M, N = t_ne(r, 1, 0), t_ne(r, 1, 1), t_ne(r, 2, 1)
    batched_gemm(r, ith, nth, M, N, K, t_addr(r, 1), t_nb(r, 1, 1), t_nb(r, 1, 0), t_nb(r, 1, 2),
                 t_nb(r, 1, 3), t_nb(r, 2, 0), t_nb(r, 2, 1), t_nb(r, 0, 1))


def _mul_mat_f16_kernel(rec, ith, nth, phase, wdata, wsize):
    """F16 src0: phase 0 widens it into the work buffer, phase 1 multiplies."""
    r = record(rec)
    K, M, N = t_ne(r, 1, 0), t_ne(r, 1, 1), t_ne(r, 2, 1)
    ne02, ne03 = t_ne(r, 1, 2), t_ne(r, 1, 3)
    if phase == 0:
        W = f32_2d_strided(wdata, (M * ne02 * ne03, K), (K * 4, 4))
        rows = M * ne02 * ne03
        lo, hi = split(rows, ith, nth)
        for ir in range(lo, hi):
            i1, i2, i3 = ir % M, (ir // M) % ne02, ir // (M * ne02)
            src = u16_2d_strided(t_addr(r, 1) + i1 * t_nb(r, 1, 1) + i2 * t_nb(r, 1, 2) + i3 * t_nb(r, 1, 3),
                                 (1, K), (0, t_nb(r, 1, 0)))
            for k in range(K):
                W[ir, k] = fp16_to_fp32(src[0, k])
        return
    batched_gemm(r, ith, nth, M, N, K, wdata, K * 4, 4, M * K * 4, M * K * 4 * ne02,
                 t_nb(r, 2, 0), t_nb(r, 2, 1), t_nb(r, 0, 1))


def _mm_tasks(node, n_threads):
    M, N = node.ne[0], node.ne[1]
    _, _, count = chunking(M, N)
    units = count * node.ne[2] * node.ne[3]
    K = node.src[0].ne[0] if node.op == MUL_MAT else node.src[0].ne[1]
    flops = M * N * K * node.ne[2] * node.ne[3]
    return max(1, min(n_threads, units, flops // MIN_FLOPS_PER_TASK))


def _mm_work(node, n_tasks):
    a = node.src[0]
    return 4 * TN.nelements(a) if a.type == T.TYPE_F16 else 0


def _mul_mat_backward(ctx, t, g, d):
    # t[m, n] = sum_k a[k, m] b[k, n]; a's batch i2 // (ne12/ne02) serves t's batch i2 (blocks)
    a, b = t.src
    if d.needs(0):      # da[k, m] = sum_n b[k, n] g[m, n], summed over each block of batches
        d.add(0, out_prod(ctx, b, g), reduce=BLOCKS)
    if d.needs(1):      # db[k, n] = sum_m a[k, m] g[m, n] (a broadcast by blocks, as forward)
        if a.type == T.TYPE_F32:
            d.add(1, out_prod(ctx, a, transpose(ctx, g)))
        else:
            d.add(1, mul_mat(ctx, cont(ctx, transpose(ctx, a)), g))


MUL_MAT = register("MUL_MAT", "X*Y", _mul_mat_kernel, n_tasks=_mm_tasks, work_size=_mm_work,
                   n_phases=lambda node: 2 if node.src[0].type == T.TYPE_F16 else 1,
                   variant=lambda node: _mul_mat_f16_kernel if node.src[0].type == T.TYPE_F16 else _mul_mat_kernel,
                   backward=_mul_mat_backward)


@reference_of(MUL_MAT, nmse=1e-6)
def _mul_mat_reference(node, srcs):
    # dst[n, m] = sum_k a[m, k] b[n, k]; a's batches broadcast by blocks
    a, b = f64(srcs[0]), f64(srcs[1])
    return np.einsum("ijnk,ijmk->ijnm", b, blocks(a, b.shape[:2]))


@sample_of(MUL_MAT)
def _mul_mat_sample(d):
    not_transposed = lambda t: not TN.is_transposed(t)  # noqa: E731
    if d.coin():
        a = d.tensor(d.any_type((T.TYPE_F32, T.TYPE_F16)), accept=not_transposed)
        b = d.f32([a.ne[0], d.side(), a.ne[2] * d.int(1, 2), a.ne[3] * d.int(1, 2)])
    else:
        b = d.f32()
        ne = [b.ne[0], d.side(), *d.divisor(b.ne)[2:]]
        a = d.tensor(d.any_type((T.TYPE_F32, T.TYPE_F16)), ne, accept=not_transposed)
    return mul_mat(d.ctx, a, b)


def mul_mat(ctx, a, b):
    """ggml_mul_mat: a [K, M, ne02, ne03] (F32 or F16), b [K, N, ne12, ne13] F32 -> [M, N, ne12, ne13],
    dst[n, m] = sum_k a[m, k] * b[n, k]; a is broadcast over dims 2 and 3 by blocks."""
    TN.check_tensor("mul_mat", a, b)
    if a.type not in (T.TYPE_F32, T.TYPE_F16) or b.type != T.TYPE_F32:
        raise GraphError(f"mul_mat: src0 must be F32 or F16 and src1 F32, got {shapes(a, b)}")
    if a.ne[0] != b.ne[0] or b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
        raise GraphError(f"mul_mat: rows must have the same length (ne00 == ne10) and src1's dims 2, 3 "
                         f"must be multiples of src0's: {shapes(a, b)}")
    if TN.is_transposed(a):
        raise GraphError(f"mul_mat: src0 must not be transposed (use cont): {shapes(a, b)}")
    return new_node(ctx, MUL_MAT, T.TYPE_F32, [a.ne[1], b.ne[1], b.ne[2], b.ne[3]], [a, b])


rebuild_of(MUL_MAT)(rebuild_by(mul_mat))


# -- out_prod: dst[i0, i1] = sum_k a[i0, k] * b[i1, k] (k runs over ne01 == ne11) ---------------------------
def _out_prod_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    M, N, K = t_ne(r, 0, 0), t_ne(r, 0, 1), t_ne(r, 1, 1)
    batched_gemm(r, ith, nth, M, N, K, t_addr(r, 1), t_nb(r, 1, 0), t_nb(r, 1, 1), t_nb(r, 1, 2),
                 t_nb(r, 1, 3), t_nb(r, 2, 1), t_nb(r, 2, 0), t_nb(r, 0, 1))


def _out_prod_backward(ctx, t, g, d):
    # t[i0, i1] = sum_k a[i0, k] b[i1, k]; a's batches broadcast by blocks, as in mul_mat
    a, b = t.src
    if d.needs(0):      # da[i0, k] = sum_i1 g[i0, i1] b[i1, k], summed over each block of batches
        d.add(0, out_prod(ctx, g, transpose(ctx, b)), reduce=BLOCKS)
    if d.needs(1):      # db[i1, k] = sum_i0 g[i0, i1] a[i0, k]
        a2 = cont(ctx, a) if TN.is_transposed(a) else a
        d.add(1, transpose(ctx, mul_mat(ctx, a2, g)))


OUT_PROD = register("OUT_PROD", "X×Y", _out_prod_kernel, n_tasks=_mm_tasks, backward=_out_prod_backward)


@reference_of(OUT_PROD, nmse=1e-6)
def _out_prod_reference(node, srcs):
    # dst[i1, i0] = sum_k a[k, i0] b[k, i1]; a's batches broadcast by blocks
    a, b = f64(srcs[0]), f64(srcs[1])
    return np.einsum("ijkq,ijkp->ijpq", blocks(a, b.shape[:2]), b)


@sample_of(OUT_PROD)
def _out_prod_sample(d):
    if d.coin():
        a = d.f32()
        b = d.f32([d.side(), a.ne[1], a.ne[2] * d.int(1, 2), a.ne[3] * d.int(1, 2)])
    else:
        b = d.f32()
        a = d.f32([d.side(), b.ne[1], *d.divisor(b.ne)[2:]])
    return out_prod(d.ctx, a, b)


def out_prod(ctx, a, b):
    """ggml_out_prod: a [ne00, K, ne02, ne03], b [ne10, K, ne12, ne13] -> [ne00, ne10, ne12, ne13],
    dst[i0, i1] = sum_k a[i0, k] * b[i1, k] (ne order); F32; a is broadcast over dims 2 and 3 by
    blocks, as in mul_mat. GraphError when the K differ or ne12, ne13 are not multiples of a's."""
    TN.check_tensor("out_prod", a, b)
    if a.type != T.TYPE_F32 or b.type != T.TYPE_F32:
        raise GraphError(f"out_prod: expects F32 tensors, got {shapes(a, b)}")
    if a.ne[1] != b.ne[1] or b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
        raise GraphError(f"out_prod: ne01 must equal ne11 and src1's dims 2, 3 must be multiples of "
                         f"src0's: {shapes(a, b)}")
    return new_node(ctx, OUT_PROD, T.TYPE_F32, [a.ne[0], b.ne[0], b.ne[2], b.ne[3]], [a, b])


rebuild_of(OUT_PROD)(rebuild_by(out_prod))
