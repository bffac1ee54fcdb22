"""Indexing and writing into tensors: get_rows, get_rows_back, diag, set (set_1d, set_2d) and acc.

get_rows checks every index before copying anything: an index outside [0, rows) makes the
executor raise gc.ComputeError naming the index and the bound, and nothing is read outside
the tensor. set and acc address a region of their destination with ggml's byte strides
(nb1, nb2, nb3) and byte offset, checked at build time to lie inside it.
"""
from __future__ import annotations

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import (ERR_INDEX, f32_at, fail, fp16_to_fp32, inline, is_dense, param_i32, record, row_addr,
                      rows_contiguous, split, split_aligned, t_addr, t_ne, t_type, view_f32, view_i32, view_u16)
from ..native import f32_4d, i32_1d, i32_4d, u16_1d, u16_4d
from .args import check_types, integer, region_overlaps
from .common import (byte_range, check_f32, check_indices, inplace_of, inplace_view, my_rows, next_row,
                     refuse_overlap, row_index, same, shapes)
from .layout import cont, reshape_4d, view_4d
from .quantized import FROM_QUANT
from .refs import f64
from .registry import MIN_ELEMENTS_PER_TASK, error_detail_of, new_node, reference_of, register, sample_of, tasks_by_rows
from .registry import rebuild_by, rebuild_of
from .unary import neg

_F32, _F16, _I32 = T.TYPE_F32, T.TYPE_F16, T.TYPE_I32


# -- get_rows: dst[:, i10, i11, i12] = a[:, b[i10, i11, i12], i11, i12] ---------------------------------------
@inline
def _gather_rows(a, d, idx, lo, hi, b0, b1, convert):
    """Rows lo..hi-1 of d from the rows of a that idx picks, through any strides."""
    for ir in range(lo, hi):
        j0, j1, j2 = row_index(ir, b0, b1)
        src = a[j2, j1, idx[0, j2, j1, j0]]
        dst = d[j2, j1, j0]
        for i0 in range(src.shape[0]):
            dst[i0] = convert(src[i0])


def _get_rows_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    if not check_indices(r):
        return
    idx = view_i32(r, 2)
    b2, b1, b0 = idx.shape[1], idx.shape[2], idx.shape[3]
    st = t_type(r, 1)
    nr = b0 * b1 * b2
    lo, hi = split(nr, ith, nth)
    if st == _F32 and rows_contiguous(r, 0) and rows_contiguous(r, 1):     # raw rows, counters
        ne0 = t_ne(r, 1, 0)
        j0, j1, j2 = row_index(lo, b0, b1)
        for _ in range(lo, hi):
            src = f32_at(row_addr(r, 1, idx[0, j2, j1, j0], j1, j2), ne0)
            dst = f32_at(row_addr(r, 0, j0, j1, j2), ne0)
            for i0 in range(ne0):
                dst[i0] = src[i0]
            j0, j1, j2 = next_row(j0, j1, j2, b0, b1)
    elif st == _F32:
        _gather_rows(view_f32(r, 1), view_f32(r, 0), idx, lo, hi, b0, b1, same)
    elif st == _F16:
        _gather_rows(view_u16(r, 1), view_f32(r, 0), idx, lo, hi, b0, b1, fp16_to_fp32)
    else:
        _gather_rows(view_i32(r, 1), view_i32(r, 0), idx, lo, hi, b0, b1, same)


def _get_rows_backward(ctx, t, g, d):
    a, b = t.src
    if d.needs(0):      # each picked row's gradient added back to the row it came from
        if a.ne[2] != 1 or a.ne[3] != 1:
            raise GraphError(f"get_rows: no gradient for a batched src0 (get_rows_back takes matrices): "
                             f"{shapes(a, b)}")
        d.add(0, get_rows_back(ctx, g, b, a))


def _get_rows_variant(node):
    """Quantized rows are dequantized by their type's kernel (ops/quantized.py)."""
    if T.is_quantized(node.src[0].type):
        return FROM_QUANT[node.src[0].type]
    return _get_rows_kernel


GET_ROWS = register("GET_ROWS", "get_rows(x)", _get_rows_kernel, n_tasks=tasks_by_rows, backward=_get_rows_backward,
                    variant=_get_rows_variant)


@reference_of(GET_ROWS)
def _get_rows_reference(node, srcs):
    # dst[:, i10, i11, i12] = a[:, b[i10, i11, i12], i11, i12]
    a, b = np.asarray(srcs[0]), np.asarray(srcs[1]).astype(np.int64)[0]
    if b.size and (b.min() < 0 or b.max() >= a.shape[2]):
        raise IndexError(f"get_rows: index out of range 0..{a.shape[2] - 1}: {b.ravel().tolist()}")
    j2, j1 = np.meshgrid(np.arange(b.shape[0]), np.arange(b.shape[1]), indexing="ij")
    out = a[j2[..., None], j1[..., None], b]                   # (b2, b1, b0, ne0)
    return out if a.dtype == np.int32 else f64(out)


@sample_of(GET_ROWS)
def _get_rows_sample(d):
    if d.backward:          # no gradient for a batched src0 (get_rows_back takes matrices)
        a = d.tensor(d.any_type(), accept=lambda t: t.ne[2] == 1 and t.ne[3] == 1, max_dims=2)
    elif d.coin(20):        # quantized rows, dequantized
        t = d.quant_type()
        a = d.tensor(t, [T.blck_size(t), d.side(), d.side(), d.side()])
    else:
        a = d.tensor(d.any_type())
    b = d.i32([d.int(1, 5), a.ne[2], a.ne[3]], 0, a.ne[1] - 1)
    return get_rows(d.ctx, a, b)


def get_rows(ctx, a, b):
    """ggml_get_rows: rows of a picked by the I32 indices b. a [ne0, n_rows, ne2, ne3] (F32, F16,
    I32 or quantized), b [n, ne2, ne3] -> [ne0, n, ne2, ne3]; batch (i2, i3) of b indexes batch
    (i2, i3) of a. F16 and quantized rows come back as F32 (dequantized), I32 rows as I32."""
    op = "get_rows"
    check_types(op, a, (_F32, _F16, _I32) + T.QUANTIZED, "src0", ())
    check_types(op, b, (_I32,), "src1 (indices)", (a,))
    if b.ne[3] != 1 or a.ne[2] != b.ne[1] or a.ne[3] != b.ne[2]:
        raise GraphError(f"{op}: indices [n, ne2, ne3] must match src0's batch dims (b.ne1 == a.ne2, "
                         f"b.ne2 == a.ne3, b.ne3 == 1): {shapes(a, b)}")
    out_type = _I32 if a.type == _I32 else _F32
    return new_node(ctx, GET_ROWS, out_type, [a.ne[0], b.ne[0], b.ne[1], b.ne[2]], [a, b])


rebuild_of(GET_ROWS)(rebuild_by(get_rows))





# -- get_rows_back: dst[:, b[i]] += a[:, i], dst zeroed first; dst has c's shape ----------------------------
def _get_rows_back_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    idx = view_i32(r, 2)
    n = idx.shape[3]
    n_rows = t_ne(r, 0, 1)
    for i in range(n):
        v = idx[0, 0, 0, i]
        if v < 0 or v >= n_rows:
            fail(r, ERR_INDEX, v)
            return
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    ne0 = d.shape[3]
    lo, hi = split(n_rows, ith, nth)        # each thread owns a block of dst rows
    for i1 in range(lo, hi):
        dst = d[0, 0, i1]
        for i0 in range(ne0):
            dst[i0] = np.float32(0.0)
    for i in range(n):                      # rows added in index order: the same bits for any split
        v = idx[0, 0, 0, i]
        if lo <= v < hi:
            dst = d[0, 0, v]
            src = a[0, 0, i]
            for i0 in range(ne0):
                dst[i0] += src[i0]


def _get_rows_back_tasks(node, n_threads):
    return max(1, min(n_threads, node.ne[1], TN.nelements(node.src[0]) // MIN_ELEMENTS_PER_TASK))


def _get_rows_back_backward(ctx, t, g, d):
    if d.needs(0):      # linear in src0: pick the rows again
        d.add(0, get_rows(ctx, g, t.src[1]))


GET_ROWS_BACK = register("GET_ROWS_BACK", "get_rows_back(x)", _get_rows_back_kernel, n_tasks=_get_rows_back_tasks,
                         backward=_get_rows_back_backward)


@reference_of(GET_ROWS_BACK)
def _get_rows_back_reference(node, srcs):
    a, b = f64(srcs[0])[0, 0], np.asarray(srcs[1]).astype(np.int64).reshape(-1)
    out = np.zeros((node.ne[1], node.ne[0]))
    if b.size and (b.min() < 0 or b.max() >= node.ne[1]):
        raise IndexError(f"get_rows_back: index out of range 0..{node.ne[1] - 1}: {b.tolist()}")
    np.add.at(out, b, a)
    return out.reshape(1, 1, node.ne[1], node.ne[0])


@sample_of(GET_ROWS_BACK)
def _get_rows_back_sample(d):
    a = d.f32(accept=lambda t: t.ne[2] == 1 and t.ne[3] == 1, max_dims=2)
    rows = d.int(1, 5)
    c = d.tensor(d.any_type(), [a.ne[0], rows])
    return get_rows_back(d.ctx, a, d.i32([a.ne[1]], 0, rows - 1), c)


@error_detail_of(GET_ROWS, GET_ROWS_BACK)
def _describe_index_error(node, code, arg):
    if code != ERR_INDEX:
        return None
    if node.op == GET_ROWS:     # indices of src0's rows
        where, n = f"src0 {TN.describe(node.src[0])}", node.src[0].ne[1]
    else:                       # indices of the result's rows
        where, n = f"the result {node.ne[:2]}", node.ne[1]
    return f"index {arg} out of range: {where} has {n} rows (valid indices are 0..{n - 1})", None



def get_rows_back(ctx, a, b, c):
    """ggml_get_rows_back(a = gradient of get_rows' output [ne0, n], b = the I32 indices [n],
    c = get_rows' src0 [ne0, n_rows], used for its shape): [ne0, n_rows], row b[i] accumulating
    a's row i (the gradient of get_rows for its src0). As in ggml, c is not a source of the node."""
    op = "get_rows_back"
    check_f32(op, a)
    check_types(op, b, (_I32,), "src1 (indices)", (a,))
    TN.check_tensor(op, c)
    if a.ne[2] != 1 or a.ne[3] != 1 or c.ne[2] != 1 or c.ne[3] != 1:
        raise GraphError(f"{op}: src0 and c must be matrices: {shapes(a, b, c)}")
    if b.ne[1] != 1 or b.ne[2] != 1 or b.ne[3] != 1 or b.ne[0] != a.ne[1]:
        raise GraphError(f"{op}: indices must be a vector with one entry per src0 row: {shapes(a, b, c)}")
    if a.ne[0] != c.ne[0]:
        raise GraphError(f"{op}: src0 and c rows differ in length: {shapes(a, b, c)}")
    return new_node(ctx, GET_ROWS_BACK, _F32, [c.ne[0], c.ne[1]], [a, b])


rebuild_of(GET_ROWS_BACK)(rebuild_by(get_rows_back, shaped=True))


# -- diag: a [ne0, 1, ne2, ne3] -> [ne0, ne0, ne2, ne3] with a's row on the diagonal --------------------------
def _diag_kernel(rec, ith, nth, phase, wdata, wsize):
    r, d, a, lo, hi = my_rows(rec, ith, nth)
    ne3, ne2, ne1, ne0 = d.shape
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, ne1, ne2)
        dst = d[i3, i2, i1]
        for i0 in range(ne0):
            dst[i0] = np.float32(0.0)
        dst[i1] = a[i3, i2, 0, i1]


def _diag_backward(ctx, t, g, d):
    if d.needs(0):      # the diagonal of g: elements (i, i), nb0 + nb1 bytes apart
        ne0, ne2, ne3 = t.ne[0], t.ne[2], t.ne[3]
        dg = view_4d(ctx, g, 1, ne0, ne2, ne3, g.nb[0] + g.nb[1], g.nb[2], g.nb[3], 0)
        d.add(0, reshape_4d(ctx, cont(ctx, dg), ne0, 1, ne2, ne3))


DIAG = register("DIAG", "diag(x)", _diag_kernel, n_tasks=tasks_by_rows, backward=_diag_backward)


@reference_of(DIAG)
def _diag_reference(node, srcs):
    x = f64(srcs[0])                                   # (ne3, ne2, 1, ne0)
    return np.where(np.eye(x.shape[3], dtype=bool), x, 0.0)     # row i1 keeps element i1


@sample_of(DIAG)
def _diag_sample(d):
    return diag(d.ctx, d.f32(accept=lambda t: t.ne[1] == 1 and TN.nelements(t) * t.ne[0] <= 4 * d.max_elements))


def diag(ctx, a):
    """A diagonal matrix per (i2, i3) from the row vector a (ggml_diag): F32 [ne0, 1, ne2, ne3] ->
    [ne0, ne0, ne2, ne3]. GraphError when ne1 != 1."""
    check_f32("diag", a)
    if a.ne[1] != 1:
        raise GraphError(f"diag: src0 must be a row vector per batch (ne1 == 1): {shapes(a)}")
    return new_node(ctx, DIAG, a.type, [a.ne[0], a.ne[0], a.ne[2], a.ne[3]], [a])


rebuild_of(DIAG)(rebuild_by(diag))


# -- set / acc: dst = a, then dst's region (b's shape at byte strides nb1..nb3 from byte offset) = b,
# or += b. op_params = {nb1, nb2, nb3, offset, inplace} as ggml. Phase 0 copies a into dst (skipped
# in place); phase 1 writes the region. a is contiguous, so a region means the same bytes in a and dst.
@inline
def _region_shape(r):
    return (t_ne(r, 2, 3), t_ne(r, 2, 2), t_ne(r, 2, 1), t_ne(r, 2, 0))


@inline
def _region_strides(rec, es):
    return (np.int64(param_i32(rec, 2)), np.int64(param_i32(rec, 1)), np.int64(param_i32(rec, 0)), np.int64(es))


@inline
def _region_base(r, rec):
    return t_addr(r, 0) + np.int64(param_i32(rec, 3))


@inline
def _region_apply(reg, b, ith, nth, accumulate):
    """set's and acc's second phase: b's rows written into (or added to) the region's rows."""
    ne3, ne2, ne1, ne0 = b.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    i1, i2, i3 = row_index(lo, ne1, ne2)
    for _ in range(lo, hi):
        x = b[i3, i2, i1]
        y = reg[i3, i2, i1]
        if accumulate:
            for i0 in range(ne0):
                y[i0] = y[i0] + x[i0]
        else:
            for i0 in range(ne0):
                y[i0] = x[i0]
        i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)


@inline
def _copy_all(src, dst, ith, nth, r, es):
    ne3, ne2, ne1, ne0 = src.shape
    if is_dense(r, 1, es) and is_dense(r, 0, es):    # one flat copy, as 4-byte words when it can
        nbytes = ne0 * ne1 * ne2 * ne3 * es
        if nbytes % 4 == 0:
            lo, hi = split_aligned(nbytes // 4, ith, nth)
            sw = i32_1d(t_addr(r, 1) + 4 * lo, (hi - lo,), (4,))
            dw = i32_1d(t_addr(r, 0) + 4 * lo, (hi - lo,), (4,))
            for k in range(hi - lo):
                dw[k] = sw[k]
        else:
            lo, hi = split_aligned(nbytes // 2, ith, nth)
            sh = u16_1d(t_addr(r, 1) + 2 * lo, (hi - lo,), (2,))
            dh = u16_1d(t_addr(r, 0) + 2 * lo, (hi - lo,), (2,))
            for k in range(hi - lo):
                dh[k] = sh[k]
        return
    _region_apply(dst, src, ith, nth, False)


def _set_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    half = t_type(r, 0) == _F16
    if phase == 0:
        if param_i32(rec, 4) == 0:
            if half:
                _copy_all(view_u16(r, 1), view_u16(r, 0), ith, nth, r, 2)
            else:                                   # F32 and I32: 4-byte words copied as they are
                _copy_all(view_i32(r, 1), view_i32(r, 0), ith, nth, r, 4)
        return
    if half:
        _region_apply(u16_4d(_region_base(r, rec), _region_shape(r), _region_strides(rec, 2)), view_u16(r, 2),
                      ith, nth, False)
    else:
        _region_apply(i32_4d(_region_base(r, rec), _region_shape(r), _region_strides(rec, 4)), view_i32(r, 2),
                      ith, nth, False)


def _acc_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    if phase == 0:
        if param_i32(rec, 4) == 0:
            _copy_all(view_f32(r, 1), view_f32(r, 0), ith, nth, r, 4)
        return
    _region_apply(f32_4d(_region_base(r, rec), _region_shape(r), _region_strides(rec, 4)), view_f32(r, 2), ith, nth,
                  True)


def _region_of_grad(ctx, t, g):
    """(g contiguous, its view over the region t's src1 went to, the region's F32 strides and offset)."""
    es = T.type_size(t.src[0].type)
    nb1, nb2, nb3, offset = (int(t.op_params[i]) // es * 4 for i in range(4))     # F32 gradient bytes
    if not TN.is_contiguous(g):
        g = cont(ctx, g)
    return g, view_4d(ctx, g, *t.src[1].ne, nb1, nb2, nb3, offset), (nb1, nb2, nb3, offset)


def _set_backward(ctx, t, g, d):
    # src0 gets g outside the region (the region was overwritten), src1 gets g's region
    if not (d.needs(0) or d.needs(1)):
        return
    g, gv, region = _region_of_grad(ctx, t, g)
    if d.needs(0):
        d.add(0, acc(ctx, g, neg(ctx, gv), *region))
    if d.needs(1):
        d.add(1, reshape_4d(ctx, cont(ctx, gv), *t.src[1].ne))


def _acc_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, g)
    if d.needs(1):
        _, gv, _ = _region_of_grad(ctx, t, g)
        d.add(1, reshape_4d(ctx, cont(ctx, gv), *t.src[1].ne))


def _set_tasks(node, n_threads):
    """set/acc: phase 0 copies src0 whole (split by elements when dense, so a 1-D result of a view's
    gradient splits too), phase 1 splits src1's rows: one task per MIN_ELEMENTS_PER_TASK elements."""
    return max(1, min(n_threads, TN.nelements(node) // MIN_ELEMENTS_PER_TASK))


SET = register("SET", "y->view(x)", _set_kernel, n_tasks=_set_tasks, n_phases=2, inplace=True,
               backward=_set_backward)
ACC = register("ACC", "view(x,nb,offset)+=y->x", _acc_kernel, n_tasks=_set_tasks, n_phases=2, inplace=True,
               backward=_acc_backward)


def _region_index(node):
    """Flat element indices (into src0's elements) of the region src1 goes to, in src1's 4-D shape."""
    es = T.type_size(node.src[0].type)
    nb1, nb2, nb3, offset = (int(node.op_params[i]) // es for i in range(4))
    ne = node.src[1].ne
    return (offset + np.arange(ne[3]).reshape(-1, 1, 1, 1) * nb3 + np.arange(ne[2]).reshape(1, -1, 1, 1) * nb2
            + np.arange(ne[1]).reshape(1, 1, -1, 1) * nb1 + np.arange(ne[0]).reshape(1, 1, 1, -1))


@reference_of(SET)
def _set_reference(node, srcs):
    out = np.array(srcs[0]).reshape(-1)                # a copy in src0's type (set keeps the bits)
    out[_region_index(node)] = np.asarray(srcs[1]).astype(out.dtype)
    return out.reshape(srcs[0].shape)


@reference_of(ACC)
def _acc_reference(node, srcs):
    out = f64(srcs[0]).reshape(-1).copy()
    out[_region_index(node)] += f64(srcs[1])
    return out.reshape(srcs[0].shape)


def _sample_region(d, a):
    """(b's shape, nb1, nb2, nb3, offset, form): a region of contiguous a, as set/acc take it."""
    es, n = T.type_size(a.type), TN.nelements(a)
    form = d.choice(["box", "1d", "2d"])
    if form == "1d":
        m = d.int(1, n)
        return [m], a.nb[1], a.nb[2], a.nb[3], d.int(0, n - m) * es, form
    if form == "2d":
        ne0 = d.int(1, n)
        step = d.int(ne0, max(ne0, n))
        ne1 = d.int(1, (n - ne0) // step + 1)
        return [ne0, ne1], step * es, a.nb[2], a.nb[3], d.int(0, n - ne0 - (ne1 - 1) * step) * es, form
    ne = [d.int(1, x) for x in a.ne]
    off = sum(d.int(0, x - y) * nb for x, y, nb in zip(a.ne, ne, a.nb))
    return ne, a.nb[1], a.nb[2], a.nb[3], off, form


@sample_of(SET)
def _set_sample(d):
    a = d.tensor(d.any_type(), contiguous=True)
    ne, nb1, nb2, nb3, off, form = _sample_region(d, a)
    b = d.tensor(a.type, ne)
    inplace = d.inplace(a, b)
    if form == "1d":
        return (set_1d_inplace if inplace else set_1d)(d.ctx, a, b, off)
    if form == "2d":
        return (set_2d_inplace if inplace else set_2d)(d.ctx, a, b, nb1, off)
    return (set_inplace if inplace else set)(d.ctx, a, b, nb1, nb2, nb3, off)


@sample_of(ACC)
def _acc_sample(d):
    a = d.f32(contiguous=True)
    ne, nb1, nb2, nb3, off, _ = _sample_region(d, a)
    b = d.f32(ne)
    return (acc_inplace if d.inplace(a, b) else acc)(d.ctx, a, b, nb1, nb2, nb3, off)


def _set_impl(ctx, op_code, op, a, b, nb1, nb2, nb3, offset, inplace, types):
    check_types(op, a, types, "src0 (destination)", (b,))
    TN.check_tensor(op, b)
    if b.type != a.type:
        raise GraphError(f"{op}: src1 must have src0's type: {shapes(a, b)}")
    if not TN.is_contiguous(a):
        raise GraphError(f"{op}: src0 must be contiguous (the byte strides are taken from its start): "
                         f"{shapes(a, b)}")
    if TN.nelements(b) > TN.nelements(a):
        raise GraphError(f"{op}: src1 has more elements than src0: {shapes(a, b)}")
    es = T.type_size(a.type)
    nb1, nb2, nb3 = (integer(op, n, v, lo=0) for n, v in (("nb1", nb1), ("nb2", nb2), ("nb3", nb3)))
    offset = integer(op, "offset", offset, lo=0)
    for n, v in (("nb1", nb1), ("nb2", nb2), ("nb3", nb3), ("offset", offset)):
        if v % es:
            raise GraphError(f"{op}: {n} = {v} is not a multiple of the element size {es}: {shapes(a, b)}")
    strides = [es, nb1, nb2, nb3]
    end = offset + es + sum((b.ne[i] - 1) * strides[i] for i in range(4))
    where = f"region of ne={list(b.ne)} nb={strides} at offset {offset}"
    if end > TN.nbytes(a):
        raise GraphError(f"{op}: {where} ends at byte {end}, beyond the {TN.nbytes(a)} bytes of src0: "
                         f"{shapes(a, b)}")
    if region_overlaps(b.ne, strides, es):
        raise GraphError(f"{op}: {where} overlaps itself (two elements of src1 would go to the same place): "
                         f"{shapes(a, b)}")
    params = [nb1, nb2, nb3, offset, 1 if inplace else 0]
    if inplace:
        oa, sa, _ = byte_range(a)
        refuse_overlap(op, (oa, sa + offset, sa + end), [(1, b)], f"the {where} of src0 (written in place)")
        return inplace_view(ctx, op_code, a, [a, b], params, checked=True)
    return new_node(ctx, op_code, a.type, a.ne, [a, b], params)


_SET_TYPES = (_F32, _I32, _F16)


def set(ctx, a, b, nb1: int, nb2: int, nb3: int, offset: int):
    """ggml_set: a copy of a whose region (b's shape, byte strides nb1, nb2, nb3 and byte offset
    from a's start, elements adjacent along ne0) holds b. a must be contiguous; F32, I32 or F16."""
    return _set_impl(ctx, SET, "set", a, b, nb1, nb2, nb3, offset, False, _SET_TYPES)


@inplace_of(set)
def set_inplace(ctx, a, b, nb1: int, nb2: int, nb3: int, offset: int):
    return _set_impl(ctx, SET, "set_inplace", a, b, nb1, nb2, nb3, offset, True, _SET_TYPES)


def set_1d(ctx, a, b, offset: int):
    """set with a's own strides nb1, nb2, nb3 (ggml_set_1d): b's elements written from byte offset on."""
    TN.check_tensor("set_1d", a)
    return _set_impl(ctx, SET, "set_1d", a, b, a.nb[1], a.nb[2], a.nb[3], offset, False, _SET_TYPES)


@inplace_of(set_1d)
def set_1d_inplace(ctx, a, b, offset: int):
    TN.check_tensor("set_1d_inplace", a)
    return _set_impl(ctx, SET, "set_1d_inplace", a, b, a.nb[1], a.nb[2], a.nb[3], offset, True, _SET_TYPES)


def set_2d(ctx, a, b, nb1: int, offset: int):
    """set with rows nb1 bytes apart, dims 2 and 3 at a's strides (ggml_set_2d)."""
    TN.check_tensor("set_2d", a)
    return _set_impl(ctx, SET, "set_2d", a, b, nb1, a.nb[2], a.nb[3], offset, False, _SET_TYPES)


@inplace_of(set_2d)
def set_2d_inplace(ctx, a, b, nb1: int, offset: int):
    TN.check_tensor("set_2d_inplace", a)
    return _set_impl(ctx, SET, "set_2d_inplace", a, b, nb1, a.nb[2], a.nb[3], offset, True, _SET_TYPES)


def acc(ctx, a, b, nb1: int, nb2: int, nb3: int, offset: int):
    """ggml_acc: a copy of a with b added to the region given by byte strides and offset (as set).
    F32 only; other rules as set."""
    return _set_impl(ctx, ACC, "acc", a, b, nb1, nb2, nb3, offset, False, (_F32,))


@inplace_of(acc)
def acc_inplace(ctx, a, b, nb1: int, nb2: int, nb3: int, offset: int):
    return _set_impl(ctx, ACC, "acc_inplace", a, b, nb1, nb2, nb3, offset, True, (_F32,))


@rebuild_of(SET, ACC)
def _set_rebuild(ctx, srcs, rec):
    if rec.op == SET:
        build = set_inplace if rec.inplace else set
    else:
        build = acc_inplace if rec.inplace else acc
    return build(ctx, *srcs, *(rec.i32(i) for i in range(4)))
