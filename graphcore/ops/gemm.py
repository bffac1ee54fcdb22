"""The product kernels' workhorse: C = A B on raw addresses with byte strides, through a streaming
matrix-vector loop (few columns), BLAS sgemm (scipy's, one thread per executor thread) or, for
tiny products and strides BLAS cannot take, vectorised tiles that sum in float64.
Used by mul_mat and out_prod (matmul.py) and by the quantized products (quantized.py)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..kernel import inline
from ..native import (f32_1d, gemm_tile_c4x1, gemm_tile_c4x4, gemm_tile_c8x1, gemm_tile_c8x4, gemm_tile_g4x1,
                      gemm_tile_g4x4, gemm_tile_g8x1, gemm_tile_g8x4, gemm_tile_r8x4, gemm_tile_r16x1, sgemm)

SMALL_GEMM = 8192      # below this many multiply-adds a plain loop beats a BLAS call
SMALL_GEMM_FLOPS_PER_TASK = 8192     # ... whose float64 sums run ~3 multiply-adds/ns: 2.5 us a task at least
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
    elif vl == 16:                              # rows contiguous in k (small_gemm's rows): one column
        gemm_tile_r16x1(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
    elif vl == 8 and nc == 4 and a_sk == 4 and K >= 8:
        gemm_tile_r8x4(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)
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
    M <= 4, 4) rows by 4 columns, each a vector loop over k (native.gemm_tile_*). Rows of A contiguous
    in k but not in m (K·Q and V·softmax of a KV cache) are loaded whole and transposed in registers
    (the r tiles, 16 rows for single columns) instead of gathered."""
    vl = 4 if M <= 4 else 8
    contiguous = a_sm == 4
    n4 = N - N % 4
    for m0 in range(0, M, vl):
        mb = min(vl, M - m0)
        for n0 in range(0, n4, 4):
            _tile(vl, 4, contiguous, a + m0 * a_sm, a_sm, a_sk, mb, K, b + n0 * b_sn, b_sk, b_sn,
                  c + n0 * c_sn + m0 * 4, c_sn)
    if vl == 8 and not contiguous and a_sk == 4 and K >= 8:
        vl = 16
    for m0 in range(0, M, vl):
        mb = min(vl, M - m0)
        for n0 in range(n4, N):
            _tile(vl, 1, contiguous, a + m0 * a_sm, a_sm, a_sk, mb, K, b + n0 * b_sn, b_sk, b_sn,
                  c + n0 * c_sn + m0 * 4, c_sn)
