"""Helpers for the numpy references kept beside each op (see registry.reference_of).

A reference is `fn(node, srcs) -> array`: srcs are the sources' logical values, 4-D in
(ne3, ne2, ne1, ne0) order; fn computes in float64 and returns an array of the node's 4-D shape.
graphcore.testing.reference runs them (its interpreter rounds the result to the node's type).
Pure numpy: nothing here touches the numba kernels.
"""
from __future__ import annotations

import numpy as np

from .. import types as T

INT32_MIN = -2**31


def f64(x) -> np.ndarray:
    """Values as float64 (float16, float32, int32 and float64 alike)."""
    return np.asarray(x, dtype=np.float64)


def shape4(node) -> tuple:
    """The node's 4-D numpy shape (ne3, ne2, ne1, ne0)."""
    return tuple(int(x) for x in node.ne[::-1])


def tile(x, shape) -> np.ndarray:
    """x tiled to `shape` the way ggml broadcasts src1 over src0 and repeat tiles (index i % ne)."""
    x = np.asarray(x)
    return np.tile(x, [int(s) // int(n) for s, n in zip(shape, x.shape)])


def blocks(x, shape) -> np.ndarray:
    """x broadcast over dims 2, 3 to `shape` by blocks, as mul_mat does (batch i uses i // (ne/ne0))."""
    x = np.asarray(x)
    x = np.repeat(x, int(shape[0]) // x.shape[0], axis=0)
    return np.repeat(x, int(shape[1]) // x.shape[1], axis=1)


def float_to_i32(x) -> np.ndarray:
    """C's (int32_t) cast as the kernels do it on x86: toward zero; NaN and out-of-range values give
    INT32_MIN."""
    x = f64(x)
    ok = np.isfinite(x) & (x > -2147483649.0) & (x < 2147483648.0)
    out = np.full(x.shape, INT32_MIN, dtype=np.int64)
    out[ok] = np.trunc(x[ok]).astype(np.int64)
    return out.astype(np.int32)


def convert(x, dst_type: int, keep_f32_precision: bool = True) -> np.ndarray:
    """Logical values x (any numpy dtype) converted to dst_type as the copy kernels do: F32 -> F16
    rounds to nearest even (via float32), anything -> I32 truncates toward zero (float_to_i32),
    I32 -> F16 goes through float32 (two roundings, as ggml). F32 results stay float64 when x is
    float64 (the interpreter rounds them; its float64 mode keeps them)."""
    x = np.asarray(x)
    if T.is_quantized(dst_type):     # float32; the interpreter stores them in blocks (testing.reference)
        return x.astype(np.float32)
    if dst_type == T.TYPE_I32:
        if x.dtype.kind in "iu":
            return x.astype(np.int32)
        return float_to_i32(x)
    if dst_type == T.TYPE_F16:
        return x.astype(np.float32).astype(np.float16)
    if x.dtype == np.float64 and keep_f32_precision:
        return x
    return x.astype(np.float32) if x.dtype.kind in "iu" else f64(x)


def rows_apply(x, fn) -> np.ndarray:
    """fn applied to each row (along ne0) of the 4-D array x; fn maps a 2-D (rows, ne0) array to the
    same shape."""
    x = np.asarray(x)
    return fn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


# -- samplers (see registry.sample_of): shared shapes of a random node's draw ---------------------------
def sample_unary(d, build, build_inplace=None, domain="any"):
    """build(ctx, a) (or build_inplace, when d allows it) on a drawn F32 tensor."""
    a = d.f32(domain=domain)
    if build_inplace is not None and d.inplace(a):
        return build_inplace(d.ctx, a)
    return build(d.ctx, a)


def sample_binary(d, build, build_inplace=None, domain_b="any", same_shape=False):
    """build(ctx, a, b) with b tiled over a (or of a's shape)."""
    a = d.f32()
    b = d.f32(list(a.ne) if same_shape else d.divisor(a.ne), domain=domain_b)
    if build_inplace is not None and d.inplace(a, b):
        return build_inplace(d.ctx, a, b)
    return build(d.ctx, a, b)
