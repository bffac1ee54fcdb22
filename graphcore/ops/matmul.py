"""Matrix products: mul_mat and out_prod, through BLAS sgemm for all but tiny blocks.

Work is cut into fixed chunks that depend only on the shapes, never on the thread count, so the
result is the same bits for any number of threads; BLAS runs single-threaded inside each thread.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import tensor as TN
from .. import quant_rows as QR
from .. import quants as Q
from .. import types as T
from ..errors import GraphError
from ..kernel import F32, R_BLAS, fp16_to_fp32, param_i32, record, split, t_addr, t_ne, t_nb
from ..native import f32_1d, f32_2d_strided, fma_f32, stack_f32, u16_2d_strided
from .common import shapes
from .gemm import SMALL_GEMM, SMALL_GEMM_FLOPS_PER_TASK, gemm
from .layout import cont, cpy, transpose
from .quantized import MM_BLAS_ROWS, MM_DOT_FLOPS_PER_TASK, MM_ROWS, mul_mat_work, uses_block_dots
from .quantized import MUL_MAT as QUANT_MUL_MAT
from .refs import blocks, f64
from .registry import BLOCKS, MIN_FLOPS_PER_TASK, new_node, reference_of, register, sample_of
from .registry import rebuild_by, rebuild_of

CHUNK = 128


@njit(cache=True)
def _pieces(length):
    """How many pieces one dimension of a product is cut into: 1 below 2 CHUNK, 2 up to 8 CHUNK, then
    one per 4 CHUNK (pieces 512 to 1023 long) rounded down to an even number, so that two threads
    share them evenly. Each piece is one sgemm call, which packs both its operands again: 256 x 256
    pieces of a 1024^3 product ran at 71 GFLOP/s per core on the AMD EPYC of the README, 512 x 512
    ones at 77, the whole product in one call at 82."""
    n = max(length // (4 * CHUNK), 2 if length >= 2 * CHUNK else 1)
    return n - n % 2 if n > 1 else 1


@njit(cache=True)
def chunking(M, N):
    """(pieces along M, their height, pieces along N, their width): how one M x N product is cut into
    tasks, in both dimensions so that large products feed many threads. Shapes only, never the thread
    count: sgemm's bits depend on where a product is cut (README, issue 16 session 6), and results are
    the same for any thread count."""
    cm, cn = _pieces(M), _pieces(N)
    return cm, -(-M // cm), cn, -(-N // cn)


@njit(cache=True, nogil=True, error_model="numpy")     # not inlined: compiled once, shared by both products
def batched_gemm(r, ith, nth, M, N, K, a, a_sm, a_sk, a_s2, a_s3, b_sk, b_sn, c_sn):
    """Block-broadcast product over dims 2 and 3 of dst (src0 batch i2 // (ne2 / ne02)), each batch cut
    into chunking's pieces; thread ith takes units ith, ith + nth, ..."""
    ne2, ne3 = t_ne(r, 0, 2), t_ne(r, 0, 3)
    r2, r3 = ne2 // t_ne(r, 1, 2), ne3 // t_ne(r, 1, 3)
    cm, hm, cn, wn = chunking(M, N)
    count = cm * cn
    units = ne2 * ne3 * count
    ch, bt = ith % count, ith // count
    i2, i3 = bt % ne2, bt // ne2
    for u in range(ith, units, nth):
        ab = a + (i2 // r2) * a_s2 + (i3 // r3) * a_s3
        bb = t_addr(r, 2) + i2 * t_nb(r, 2, 2) + i3 * t_nb(r, 2, 3)
        cb = t_addr(r, 0) + i2 * t_nb(r, 0, 2) + i3 * t_nb(r, 0, 3)
        m0, n0 = (ch // cn) * hm, (ch % cn) * wn
        gemm(r[R_BLAS], min(hm, M - m0), min(wn, N - n0), K, ab + m0 * a_sm, a_sm, a_sk, bb + n0 * b_sn, b_sk, b_sn,
             cb + n0 * c_sn + m0 * 4, c_sn)
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
    if param_i32(rec, 0) != 0:
        _ggml_dots_f32(r, ith, nth, K, M, N, t_addr(r, 1), t_nb(r, 1, 1), t_nb(r, 1, 0), t_nb(r, 1, 2),
                       t_nb(r, 1, 3))
        return
    batched_gemm(r, ith, nth, M, N, K, t_addr(r, 1), t_nb(r, 1, 1), t_nb(r, 1, 0), t_nb(r, 1, 2),
                 t_nb(r, 1, 3), t_nb(r, 2, 0), t_nb(r, 2, 1), t_nb(r, 0, 1))


@njit(cache=True, nogil=True)
def _ggml_dots_f32(r, ith, nth, K, M, N, a, a_sm, a_sk, a_s2, a_s3):
    """mul_mat's ggml_dots option for F32 src0: each result is ggml_vec_dot_f32 (AVX2, 4480542) of a src0
    row and a src1 row, bit for bit: 32 float32 lanes of fused multiply-adds over the first K & ~31
    elements, reduced as GGML_F32x8_REDUCE does, then the rest added in float64 (ggml_vec_dot_f16 is the
    same arithmetic on fp16 values, whose products are exact). src0 at a with batched_gemm's strides."""
    ne2, ne3 = t_ne(r, 0, 2), t_ne(r, 0, 3)
    r2, r3 = ne2 // t_ne(r, 1, 2), ne3 // t_ne(r, 1, 3)      # src0's batches broadcast by blocks
    acc = stack_f32()
    np_ = K - K % 32
    lo, hi = split(M * ne2 * ne3, ith, nth)
    for u in range(lo, hi):
        m, i2, i3 = u % M, (u // M) % ne2, u // (M * ne2)
        x = f32_1d(a + m * a_sm + (i2 // r2) * a_s2 + (i3 // r3) * a_s3, (K,), (a_sk,))
        for n in range(N):
            y = f32_1d(t_addr(r, 2) + n * t_nb(r, 2, 1) + i2 * t_nb(r, 2, 2) + i3 * t_nb(r, 2, 3), (K,),
                       (t_nb(r, 2, 0),))
            for t in range(32):
                acc[t] = F32(0.0)
            for i in range(0, np_, 32):
                for t in range(32):
                    acc[t] = fma_f32(x[i + t], y[i + t], acc[t])
            for t in range(8):          # sum[0] += sum[2], sum[1] += sum[3]; sum[0] += sum[1]
                acc[t] = (acc[t] + acc[16 + t]) + (acc[8 + t] + acc[24 + t])
            sumf = np.float64(((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])))
            for i in range(np_, K):
                sumf += np.float64(x[i] * y[i])
            f32_1d(t_addr(r, 0) + m * 4 + n * t_nb(r, 0, 1) + i2 * t_nb(r, 0, 2) + i3 * t_nb(r, 0, 3), (1,),
                   (4,))[0] = F32(sumf)


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
    if param_i32(rec, 0) != 0:      # ggml_vec_dot_f16 (src1 F16-rounded by the caller, as ggml's vec_dot_type)
        _ggml_dots_f32(r, ith, nth, K, M, N, wdata, K * 4, 4, M * K * 4, M * K * 4 * ne02)
        return
    batched_gemm(r, ith, nth, M, N, K, wdata, K * 4, 4, M * K * 4, M * K * 4 * ne02,
                 t_nb(r, 2, 0), t_nb(r, 2, 1), t_nb(r, 0, 1))


def _mm_tasks(node, n_threads):
    # a task must cover MIN_FLOPS_PER_TASK multiply-adds of BLAS or the streaming mat-vec, fewer of the block
    # dots (a token's mat-vecs of quantized weights) and of small_gemm's float64 sums (K·Q of a KV cache),
    # which take several times longer per multiply-add: ggml splits those over its threads too
    if T.is_quantized(node.src[0].type):     # units of MM_ROWS (MM_BLAS_ROWS) rows of src0 per batch
        M, K = node.ne[0], node.src[0].ne[0]
        dots = uses_block_dots(node)
        units = -(-M // (MM_ROWS if dots else MM_BLAS_ROWS)) * node.ne[2] * node.ne[3]
        flops = M * node.ne[1] * K * node.ne[2] * node.ne[3]
        return max(1, min(n_threads, units, flops // (MM_DOT_FLOPS_PER_TASK if dots else MIN_FLOPS_PER_TASK)))
    M, N = node.ne[0], node.ne[1]
    cm, hm, cn, wn = chunking(M, N)
    units = cm * cn * node.ne[2] * node.ne[3]
    K = node.src[0].ne[0] if node.op == MUL_MAT else node.src[0].ne[1]
    flops = M * N * K * node.ne[2] * node.ne[3]
    small = hm * wn * K < SMALL_GEMM      # each piece through small_gemm (or ggml_dots' rows: as slow)
    return max(1, min(n_threads, units, flops // (SMALL_GEMM_FLOPS_PER_TASK if small else MIN_FLOPS_PER_TASK)))


def _mm_work(node, n_tasks):
    a, b = node.src
    if T.is_quantized(a.type):      # src1's rows quantized to the vec_dot partner type, and a tile a task
        return mul_mat_work(a, b, n_tasks, uses_block_dots(node))
    return 4 * TN.nelements(a) if a.type == T.TYPE_F16 else 0


def _mm_variant(node):
    a = node.src[0].type
    if T.is_quantized(a):
        return QUANT_MUL_MAT[a]
    return _mul_mat_f16_kernel if a == T.TYPE_F16 else _mul_mat_kernel


def _mul_mat_backward(ctx, t, g, d):
    # t[m, n] = sum_k a[k, m] b[k, n]; a's batch i2 // (ne12/ne02) serves t's batch i2 (blocks)
    a, b = t.src
    if T.is_quantized(a.type):
        if d.needs(0):
            raise GraphError(f"mul_mat: no gradient for a quantized src0: {shapes(a, b)}")
        a = cpy(ctx, a, TN.new_tensor_impl(ctx, T.TYPE_F32, a.ne, op="mul_mat backward"))   # dequantized
    if d.needs(0):      # da[k, m] = sum_n b[k, n] g[m, n], summed over each block of batches
        d.add(0, out_prod(ctx, b, g), reduce=BLOCKS)
    if d.needs(1):      # db[k, n] = sum_m a[k, m] g[m, n] (a broadcast by blocks, as forward)
        if a.type == T.TYPE_F32:
            d.add(1, out_prod(ctx, a, transpose(ctx, g)))
        else:
            d.add(1, mul_mat(ctx, cont(ctx, transpose(ctx, a)), g))


MUL_MAT = register("MUL_MAT", "X*Y", _mul_mat_kernel, n_tasks=_mm_tasks, work_size=_mm_work,
                   n_phases=lambda node: 2 if node.src[0].type != T.TYPE_F32 else 1, variant=_mm_variant,
                   backward=_mul_mat_backward, uses_blas=True)


@reference_of(MUL_MAT, nmse=1e-6)
def _mul_mat_reference(node, srcs):
    # dst[n, m] = sum_k a[m, k] b[n, k]; a's batches broadcast by blocks. A quantized a (its values
    # here) multiplies b as ggml does, b's rows first stored in a's vec_dot type (Q8_0, Q8_1, Q8_K, x86's): so
    # does the reference, leaving float32 rounding only (tests/test_ops_quant.py also checks the
    # plain product, within test-backend-ops' 5e-4)
    a, b = f64(srcs[0]), f64(srcs[1])
    vt = Q.VEC_DOT_TYPE.get(node.src[0].type)
    if vt is not None:
        b = f64(QR.dequantize(QR.quantize_src1(b.astype(np.float32), node.src[0].type), vt))
    return np.einsum("ijnk,ijmk->ijnm", b, blocks(a, b.shape[:2]))


@sample_of(MUL_MAT)
def _mul_mat_sample(d):
    not_transposed = lambda t: not TN.is_transposed(t)  # noqa: E731
    if not d.backward and d.coin(25):        # a quantized src0: rows of whole blocks, src1 rows contiguous
        t = d.quant_type(tuple(Q.VEC_DOT_TYPE))
        # a new leaf of finite blocks: a non-finite scale (a corrupt block to gguf_read) makes the dequantized
        # values NaN where level 0 meets an inf scale, while ggml's integer dots (and qdot's) give inf there
        a = d.tensor(t, [T.blck_size(t) * d.int(1, 2), d.side(), d.side(), 1], new=True,
                     accept=lambda a: bool(np.isfinite(QR.dequantize(a.numpy(), a.type)).all()))
        b = d.f32([a.ne[0], d.side(), a.ne[2] * d.int(1, 2), d.int(1, 2)], accept=lambda t: t.nb[0] == 4)
        return mul_mat(d.ctx, a, b, ggml_dots=d.coin(30))
    if d.coin():
        a = d.tensor(d.any_type((T.TYPE_F32, T.TYPE_F16)), accept=not_transposed)
        b = d.f32([a.ne[0], d.side(), a.ne[2] * d.int(1, 2), a.ne[3] * d.int(1, 2)])
    else:
        b = d.f32()
        ne = [b.ne[0], d.side(), *d.divisor(b.ne)[2:]]
        a = d.tensor(d.any_type((T.TYPE_F32, T.TYPE_F16)), ne, accept=not_transposed)
    return mul_mat(d.ctx, a, b)


def mul_mat(ctx, a, b, ggml_dots: bool = False):
    """ggml_mul_mat: a [K, M, ne02, ne03] (F32, F16 or quantized), b [K, N, ne12, ne13] F32 ->
    [M, N, ne12, ne13], dst[n, m] = sum_k a[m, k] * b[n, k]; a is broadcast over dims 2 and 3 by
    blocks. A quantized a is multiplied as ggml does: b's rows quantized to the vec_dot partner type
    (Q8_0, Q8_1 or Q8_K) in the work buffer, then integer dot products block by block for fewer than
    4 columns; from 4 columns on, dequantized tiles of a through BLAS (faster; other float roundings).
    ggml_dots (a graphcore option, op_params[0]) computes as ggml 4480542's CPU code does, for its
    results bit for bit (tests/test_ops_quant.py): a quantized a keeps the block dots (ggml's AVX2 order
    of sums) for any number of columns, an F32 a takes ggml_vec_dot_f32's order of sums instead of BLAS (also
    ggml_vec_dot_f16's on fp16 values: a cache of F16-rounded K/V), an F16 a ggml_vec_dot_f16's (b's
    values must be F16 values, as ggml rounds them; graphcore does not round b)."""
    TN.check_tensor("mul_mat", a, b)
    if (a.type not in (T.TYPE_F32, T.TYPE_F16) and a.type not in Q.VEC_DOT_TYPE) or b.type != T.TYPE_F32:
        raise GraphError(f"mul_mat: src0 must be F32, F16 or one of "
                         f"{', '.join(T.type_name(x).upper() for x in Q.VEC_DOT_TYPE)} (no vec_dot for Q8_1 or "
                         f"Q8_K as src0) and src1 F32, got {shapes(a, b)}")
    if T.is_quantized(a.type) and (b.nb[0] != 4 or a.nb[0] != T.type_size(a.type)):
        raise GraphError(f"mul_mat: a quantized src0 needs whole blocks along ne0 and src1's rows "
                         f"contiguous (nb10 == 4; use cont): {shapes(a, b)}")
    if a.ne[0] != b.ne[0] or b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
        raise GraphError(f"mul_mat: rows must have the same length (ne00 == ne10) and src1's dims 2, 3 "
                         f"must be multiples of src0's: {shapes(a, b)}")
    if TN.is_transposed(a):
        raise GraphError(f"mul_mat: src0 must not be transposed (use cont): {shapes(a, b)}")
    return new_node(ctx, MUL_MAT, T.TYPE_F32, [a.ne[1], b.ne[1], b.ne[2], b.ne[3]], [a, b],
                    [int(bool(ggml_dots))])


@rebuild_of(MUL_MAT)
def _mul_mat_rebuild(ctx, srcs, rec):
    return mul_mat(ctx, *srcs, ggml_dots=bool(rec.i32(0)))


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


OUT_PROD = register("OUT_PROD", "X×Y", _out_prod_kernel, n_tasks=_mm_tasks, backward=_out_prod_backward,
                    uses_blas=True)


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
