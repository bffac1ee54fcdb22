"""Shared pieces of op builders and kernels: argument checks and the elementwise loops."""
from __future__ import annotations

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import inline, record, row_f32, rows_contiguous, split, view_f32
from .registry import MIN_ELEMENTS_PER_TASK, new_node


def shapes(*ts) -> str:
    return ", ".join(TN.describe(t) for t in ts)


def check_f32(op: str, *ts):
    TN.check_tensor(op, *ts)
    for t in ts:
        if t.type != T.TYPE_F32:
            raise GraphError(f"{op}: expects F32 tensors, got {shapes(*ts)}")


def check_same_shape(op: str, a, b):
    if not TN.are_same_shape(a, b):
        raise GraphError(f"{op}: shapes differ: {shapes(a, b)}")


def inplace_view(ctx, op: int, a, srcs, params=None):
    """The result of an _inplace op: a view of a (same ne and nb) computed by op."""
    return new_node(ctx, op, a.type, a.ne, srcs, params, view_of=a, name="inplace", nb=a.nb)


def elementwise_node(ctx, op: int, a, srcs, params=None, inplace=False):
    if inplace:
        return inplace_view(ctx, op, a, srcs, params)
    return new_node(ctx, op, a.type, a.ne, srcs, params)


SEG = 4096   # elementwise work is cut into row segments of this many elements (see tasks_by_segments)


@inline
def unary_loop(rec, ith, nth, f, p):
    """dst = f(src0, p) elementwise; work units are row segments, split across threads; any strides."""
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    ne3, ne2, ne1, ne0 = d.shape
    nseg = (ne0 + SEG - 1) // SEG
    lo, hi = split(ne1 * ne2 * ne3 * nseg, ith, nth)
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1)
    for u in range(lo, hi):
        ir, s0 = u // nseg, (u % nseg) * SEG
        s1 = min(ne0, s0 + SEG)
        i3, i2, i1 = ir // (ne2 * ne1), (ir // ne1) % ne2, ir % ne1
        if fast:   # sliced, 0-based loops over contiguous rows vectorize
            dr = row_f32(r, 0, i1, i2, i3)[s0:s1]
            ar = row_f32(r, 1, i1, i2, i3)[s0:s1]
            for i0 in range(s1 - s0):
                dr[i0] = f(ar[i0], p)
        else:
            for i0 in range(s0, s1):
                d[i3, i2, i1, i0] = f(a[i3, i2, i1, i0], p)


@inline
def binary_loop(rec, ith, nth, f):
    """dst = f(src0, src1) with src1 tiled over src0 (ggml's can_repeat broadcast); any strides."""
    r = record(rec)
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    b = view_f32(r, 2)
    ne3, ne2, ne1, ne0 = d.shape
    nb3, nb2, nb1, nb0 = b.shape
    nseg = (ne0 + SEG - 1) // SEG
    lo, hi = split(ne1 * ne2 * ne3 * nseg, ith, nth)
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1) and rows_contiguous(r, 2)
    for u in range(lo, hi):
        ir, s0 = u // nseg, (u % nseg) * SEG
        s1 = min(ne0, s0 + SEG)
        i3, i2, i1 = ir // (ne2 * ne1), (ir // ne1) % ne2, ir % ne1
        j3, j2, j1 = i3 % nb3, i2 % nb2, i1 % nb1
        if fast and nb0 == ne0:
            dr = row_f32(r, 0, i1, i2, i3)[s0:s1]
            ar = row_f32(r, 1, i1, i2, i3)[s0:s1]
            br = row_f32(r, 2, j1, j2, j3)[s0:s1]
            for i0 in range(s1 - s0):
                dr[i0] = f(ar[i0], br[i0])
        else:
            for i0 in range(s0, s1):
                d[i3, i2, i1, i0] = f(a[i3, i2, i1, i0], b[j3, j2, j1, i0 % nb0])


def tasks_by_segments(node, n_threads):
    """Planner rule of the elementwise loops: one task per MIN_ELEMENTS_PER_TASK elements."""
    units = TN.nrows(node) * -(-node.ne[0] // SEG)
    return max(1, min(n_threads, units, TN.nelements(node) // MIN_ELEMENTS_PER_TASK))
