"""Comparing graphcore results with numpy references, ggml test-backend-ops style.

- `nmse(actual, expected)`: normalised mean squared error, sum((a - e)^2) / sum(e^2), in float64
  (test-backend-ops' default tolerance is 1e-7; 5e-4 for matrix products).
- `assert_close_nmse(actual, expected, tol, what)`: also fails when NaN or inf appear in one
  array and not at the same place (with the same sign) in the other.
- Sentinel checks for out-of-bounds writes: `sentinel_context` fills a new context's arena with
  `SENTINEL` (NaN as F32 and as F16); `compute_guarded` computes a graph and fails if any byte
  of the arena outside the given outputs' elements changed.
"""
from __future__ import annotations

import numpy as np

from .. import context as C
from .. import tensor as TN
from .. import types as T
from ..executor import graph_compute_with_ctx
from ..graph import build_forward_expand, new_graph

__all__ = ["nmse", "assert_close_nmse", "assert_same_bits", "SENTINEL", "sentinel_context",
           "element_byte_offsets", "compute_guarded", "check_untouched"]

# 0x7FFF7FFF: NaN as float32, each half NaN as float16: a kernel that reads padding gets NaN.
SENTINEL = np.frombuffer(np.array([0x7FFF7FFF], dtype="<u4").tobytes(), dtype=np.uint8).copy()


def _as_f64(x):
    a = np.asarray(x)
    if a.dtype == np.uint16:          # F16 bits
        a = a.view(np.float16)
    return a.astype(np.float64)


def nmse(actual, expected) -> float:
    """ggml test-backend-ops' normalised MSE: sum((actual - expected)^2) / sum(expected^2), over the
    elements where both are finite. 0 when both are exactly zero everywhere, inf when only the
    expected values are all zero."""
    a, e = _as_f64(actual).ravel(), _as_f64(expected).ravel()
    if a.shape != e.shape:
        raise ValueError(f"nmse: {a.size} actual values against {e.size} expected")
    ok = np.isfinite(a) & np.isfinite(e)
    a, e = a[ok], e[ok]
    num = float(np.sum((a - e) ** 2))
    den = float(np.sum(e * e))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def assert_close_nmse(actual, expected, tol: float = 1e-7, what: str = "") -> float:
    """Assert nmse(actual, expected) <= tol, shapes equal, and NaN/inf in the same places (inf with
    the same sign). Returns the nmse."""
    a, e = _as_f64(actual), _as_f64(expected)
    tag = f"{what}: " if what else ""
    if a.shape != e.shape:
        raise AssertionError(f"{tag}shape {a.shape} != expected {e.shape}")
    an, en = np.isnan(a), np.isnan(e)
    if not np.array_equal(an, en):
        idx = tuple(int(i) for i in np.argwhere(an != en)[0])
        raise AssertionError(f"{tag}NaN mismatch at index {idx}: actual {a[idx]}, "
                             f"expected {e[idx]} ({int(an.sum())} NaN in actual, {int(en.sum())} expected)")
    ai, ei = np.isinf(a), np.isinf(e)
    bad = (ai != ei) | (ai & ei & (np.signbit(a) != np.signbit(e)))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{tag}inf mismatch at index {idx}: actual {a[idx]}, expected {e[idx]}")
    err = nmse(a, e)
    if not err <= tol:
        diff = np.where(np.isfinite(a) & np.isfinite(e), np.abs(a - e), 0.0)
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape)) if diff.size else ()
        raise AssertionError(f"{tag}NMSE {err:.3e} > {tol:.1e}; worst at index {idx}: actual "
                             f"{a[idx] if diff.size else None}, expected {e[idx] if diff.size else None}")
    return err


def assert_same_bits(actual, expected, what: str = ""):
    """Assert two arrays hold identical bytes (same dtype size and shape)."""
    a, e = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    tag = f"{what}: " if what else ""
    if a.shape != e.shape or a.dtype.itemsize != e.dtype.itemsize:
        raise AssertionError(f"{tag}{a.shape} {a.dtype} vs {e.shape} {e.dtype}")
    ua = a.view(f"u{a.dtype.itemsize}")
    ue = e.view(f"u{e.dtype.itemsize}")
    if not np.array_equal(ua, ue):
        idx = tuple(int(i) for i in np.argwhere(ua != ue)[0])
        raise AssertionError(f"{tag}bits differ at index {idx}: {a[idx]!r} (0x{int(ua[idx]):x}) vs "
                             f"{e[idx]!r} (0x{int(ue[idx]):x}); {int((ua != ue).sum())} of {ua.size} differ")


def sentinel_context(mem_size: int = 1 << 20):
    """A context whose whole arena is filled with the SENTINEL pattern (padding, view slack and
    not-yet-computed outputs all read as NaN)."""
    ctx = C.init(mem_size)
    n = ctx.arena.nbytes
    ctx.arena[:n // 4 * 4].view(np.uint32)[:] = SENTINEL.view("<u4")[0]
    ctx.arena[n // 4 * 4:] = SENTINEL[:n % 4]
    return ctx


def element_byte_offsets(t) -> np.ndarray:
    """Offsets, in t's arena, of every byte of t's elements (following its strides), in the
    elements' logical order (repeated where strides overlap)."""
    es = T.type_size(t.type)
    ne, nb = [t.ne[0] // T.blck_size(t.type), *t.ne[1:]], t.nb      # a quantized "element" is a block
    o = np.asarray(t._offs, dtype=np.int64)
    for d in range(4):
        shape = [1] * 5
        shape[3 - d] = ne[d]
        o = o + (np.arange(ne[d], dtype=np.int64) * nb[d]).reshape(shape[:4])
    return (o.reshape(-1, 1) + np.arange(es, dtype=np.int64)).ravel()


def check_untouched(ctx, before: np.ndarray, outputs, what: str = ""):
    """Fail if a byte of ctx's arena outside the elements of `outputs` differs from `before`."""
    now = ctx.arena
    changed = np.flatnonzero(now != before)
    if changed.size == 0:
        return
    allowed = np.zeros(now.nbytes, dtype=bool)
    for t in outputs:
        allowed[element_byte_offsets(t)] = True
    stray = changed[~allowed[changed]]
    if stray.size:
        spans = ", ".join(f"{TN.describe(t)} at bytes [{t._offs}, +{TN.nbytes(t)})" for t in outputs)
        raise AssertionError(f"{what + ': ' if what else ''}{stray.size} bytes written outside the outputs "
                             f"({spans}); first at arena byte {int(stray[0])}")


def compute_guarded(ctx, outputs, n_threads: int = 1, graph=None, what: str = ""):
    """Build a graph of `outputs` (a tensor or a list), compute it on n_threads, and check that no
    byte of ctx's arena outside the outputs' elements was written. Returns the graph."""
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    g = graph if graph is not None else new_graph(ctx)
    if graph is None:
        for t in outs:
            build_forward_expand(g, t)
    before = ctx.arena.copy()
    graph_compute_with_ctx(ctx, g, n_threads)
    check_untouched(ctx, before, outs, what)
    return g
