"""Quantizing and dequantizing whole numpy arrays of rows (gc.quantize, gc.dequantize): each type's
row functions (quants.py for the 32-element blocks and Q8_K, kquants.py for the k-quants) applied
to every row."""
from __future__ import annotations

import numpy as np
from numba import njit

from . import kquants as K
from . import types as T
from .errors import GraphError
from .quants import (VEC_DOT_TYPE, dequantize_q4_0, dequantize_q4_1, dequantize_q5_0, dequantize_q5_1,
                     dequantize_q8_0, dequantize_q8_1, dequantize_q8_k, quantize_q4_0, quantize_q4_1,
                     quantize_q5_0, quantize_q5_1, quantize_q8_0, quantize_q8_0_x86, quantize_q8_1,
                     quantize_q8_1_x86, quantize_q8_k)


# -- rows of a whole array (the numpy-side API) ------------------------------------------------------
@njit(nogil=True)     # not cached: numba cannot keep a cache index keyed by another function's type
def _rows(fn, src, dst):
    for r in range(src.shape[0]):
        fn(src[r], dst[r])


def _formats():
    return {
        T.TYPE_Q4_0: (quantize_q4_0, dequantize_q4_0), T.TYPE_Q4_1: (quantize_q4_1, dequantize_q4_1),
        T.TYPE_Q5_0: (quantize_q5_0, dequantize_q5_0), T.TYPE_Q5_1: (quantize_q5_1, dequantize_q5_1),
        T.TYPE_Q8_0: (quantize_q8_0, dequantize_q8_0), T.TYPE_Q8_1: (quantize_q8_1, dequantize_q8_1),
        T.TYPE_Q2_K: (K.quantize_q2_k, K.dequantize_q2_k), T.TYPE_Q3_K: (K.quantize_q3_k, K.dequantize_q3_k),
        T.TYPE_Q4_K: (K.quantize_q4_k, K.dequantize_q4_k), T.TYPE_Q5_K: (K.quantize_q5_k, K.dequantize_q5_k),
        T.TYPE_Q6_K: (K.quantize_q6_k, K.dequantize_q6_k), T.TYPE_Q8_K: (quantize_q8_k, dequantize_q8_k),
    }


def _format(type_, op):
    if not T.is_quantized(type_):
        raise GraphError(f"{op}: {T.type_name(type_)} is not a quantized type")
    return _formats()[type_]


def quantize(x, type_) -> np.ndarray:
    """The blocks of float32 rows x [..., n] in `type_` (ggml's reference quantizer, bit for bit) as
    uint8 [..., row_size(type_, n)]; n must be a whole number of blocks."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    q, _ = _format(type_, "quantize")
    n = x.shape[-1] if x.ndim else 1
    out = np.zeros(x.shape[:-1] + (T.row_size(type_, n, "quantize"),), dtype=np.uint8)
    _rows(q, x.reshape(-1, n), out.reshape(-1, out.shape[-1]))
    return out


def quantize_src1(x, type_) -> np.ndarray:
    """x's rows as mul_mat stores src1 for a `type_` src0 (in its vec_dot type): ggml's from_float, which
    on x86 is quantize_row_q8_0/q8_1's AVX2 code (127 / amax, ties to even), not the reference; Q8_K's is
    the reference."""
    vt = VEC_DOT_TYPE[type_]
    if vt == T.TYPE_Q8_K:
        return quantize(x, vt)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1] if x.ndim else 1
    out = np.zeros(x.shape[:-1] + (T.row_size(vt, n, "quantize"),), dtype=np.uint8)
    _rows(quantize_q8_0_x86 if vt == T.TYPE_Q8_0 else quantize_q8_1_x86, x.reshape(-1, n),
          out.reshape(-1, out.shape[-1]))
    return out


def dequantize(q, type_) -> np.ndarray:
    """float32 rows [..., n] from the blocks q (uint8 [..., row bytes]) of `type_`."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    _, dq = _format(type_, "dequantize")
    tt = T.traits(type_)
    if q.ndim == 0 or q.shape[-1] % tt.type_size:
        raise GraphError(f"dequantize: rows of {q.shape[-1] if q.ndim else 0} bytes are not whole "
                         f"{tt.name} blocks ({tt.type_size} bytes each)")
    n = q.shape[-1] // tt.type_size * tt.blck_size
    out = np.empty(q.shape[:-1] + (n,), dtype=np.float32)
    _rows(dq, q.reshape(-1, q.shape[-1]), out.reshape(-1, n))
    return out
