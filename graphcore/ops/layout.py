"""Copies and views: dup cpy cont (kernels) and reshape view permute transpose (no compute)."""
from __future__ import annotations

import itertools

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import (f32_at, fp16_to_fp32, fp32_to_fp16, inline, is_dense, record, row_addr, specialise, split,
                      split_aligned, t_addr, t_nb, t_ne, view_f32, view_i32, view_u16)
from ..native import f32_1d, i32_1d, u16_1d
from . import quantized as QK
from .common import (byte_range, inplace_of, inplace_view, next_row, refuse_overlap, row_index, same, same_view,
                     shapes)
from .refs import convert, shape4
from .registry import MIN_ELEMENTS_PER_TASK, new_node, reference_of, register, sample_of
from .registry import i64_params, param_i64, rebuild_by, rebuild_of

_F32, _F16, _I32 = T.TYPE_F32, T.TYPE_F16, T.TYPE_I32


# -- dup / cpy / cont: copy elements in row-major order, converting types --------------------------------
@inline
def _copy_loop(r, ith, nth, src, dst, conv, sflat, dflat):
    """dst's element k (row-major) = conv(src's element k); src and dst may differ in shape and strides.
    sflat, dflat: the same tensors as flat arrays, used when both are dense."""
    s3, s2, s1, s0 = src.shape
    d3, d2, d1, d0 = dst.shape
    if is_dense(r, 1, src.itemsize) and is_dense(r, 0, dst.itemsize):    # element k is flat index k
        lo, hi = split_aligned(s0 * s1 * s2 * s3, ith, nth)
        sf, df = sflat[lo:hi], dflat[lo:hi]
        for k in range(hi - lo):            # 0-based: no negative-index checks, so it vectorises
            df[k] = conv(sf[k])
        return
    lo, hi = split(s1 * s2 * s3, ith, nth)
    if s0 == d0 and s1 == d1 and s2 == d2 and s3 == d3:                   # same shape: row by row
        i1, i2, i3 = row_index(lo, s1, s2)
        for _ in range(lo, hi):
            x = src[i3, i2, i1]
            y = dst[i3, i2, i1]
            for i0 in range(s0):
                y[i0] = conv(x[i0])
            i1, i2, i3 = next_row(i1, i2, i3, s1, s2)
        return
    for ir in range(lo, hi):
        i1, i2, i3 = row_index(ir, s1, s2)
        k = ir * s0                       # linear index of the row's first element
        j0, j1, j2, j3 = k % d0, (k // d0) % d1, (k // (d0 * d1)) % d2, k // (d0 * d1 * d2)
        for i0 in range(s0):
            dst[j3, j2, j1, j0] = conv(src[i3, i2, i1, i0])
            j0 += 1
            if j0 == d0:
                j0 = 0
                j1, j2, j3 = next_row(j1, j2, j3, d1, d2)


@inline
def _to_f32(x):
    return np.float32(x)


@inline
def _to_i32(x):
    return np.int32(x)


@inline
def _f16_to_i32(h):
    return np.int32(fp16_to_fp32(h))


@inline
def _i32_to_f16(x):
    return fp32_to_fp16(np.float32(x))


@inline
def _n_elements(r, s):
    return t_ne(r, s, 0) * t_ne(r, s, 1) * t_ne(r, s, 2) * t_ne(r, s, 3)


@inline
def _flat_f32(r, s):
    return f32_1d(t_addr(r, s), (_n_elements(r, s),), (4,))


@inline
def _flat_i32(r, s):
    return i32_1d(t_addr(r, s), (_n_elements(r, s),), (4,))


@inline
def _flat_u16(r, s):
    return u16_1d(t_addr(r, s), (_n_elements(r, s),), (2,))


@inline
def _same_shape(r):
    return (t_ne(r, 0, 0) == t_ne(r, 1, 0) and t_ne(r, 0, 1) == t_ne(r, 1, 1) and t_ne(r, 0, 2) == t_ne(r, 1, 2)
            and t_ne(r, 0, 3) == t_ne(r, 1, 3))


@inline
def _copy_rows_f32(r, ith, nth):
    """F32 to F32, same shape, rows contiguous in both but not dense: raw rows, counters."""
    ne0, ne1, ne2, ne3 = t_ne(r, 1, 0), t_ne(r, 1, 1), t_ne(r, 1, 2), t_ne(r, 1, 3)
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    i1, i2, i3 = row_index(lo, ne1, ne2)
    for _ in range(lo, hi):
        x = f32_at(row_addr(r, 1, i1, i2, i3), ne0)
        y = f32_at(row_addr(r, 0, i1, i2, i3), ne0)
        for i0 in range(ne0):
            y[i0] = x[i0]
        i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)


# one kernel per (source type, destination type): only the pairs a graph uses get compiled
def _copy_f32_f32(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    if t_nb(r, 0, 0) == 4 and t_nb(r, 1, 0) == 4 and _same_shape(r) and not (
            is_dense(r, 0, 4) and is_dense(r, 1, 4)):
        _copy_rows_f32(r, ith, nth)
    else:
        _copy_loop(r, ith, nth, view_f32(r, 1), view_f32(r, 0), same, _flat_f32(r, 1), _flat_f32(r, 0))


SRC_VIEW = DST_VIEW = SRC_FLAT = DST_FLAT = CONVERT = None     # set in each copy of _copy_kernel


def _copy_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    _copy_loop(r, ith, nth, SRC_VIEW(r, 1), DST_VIEW(r, 0), CONVERT, SRC_FLAT(r, 1), DST_FLAT(r, 0))


# the other pairs: _copy_kernel specialised to the pair's views and conversion (kernel.specialise)
_STORAGE = {_F32: ("f32", view_f32, _flat_f32), _F16: ("f16", view_u16, _flat_u16),
            _I32: ("i32", view_i32, _flat_i32)}
_CONVERT = {(_F32, _F16): fp32_to_fp16, (_F32, _I32): _to_i32, (_F16, _F32): fp16_to_fp32, (_F16, _I32): _f16_to_i32,
            (_I32, _F32): _to_f32, (_I32, _F16): _i32_to_f16}
_COPY_KERNELS = {(a, b): specialise(_copy_kernel, f"_copy_{_STORAGE[a][0]}_{_STORAGE[b][0]}",
                                    SRC_VIEW=_STORAGE[a][1], SRC_FLAT=_STORAGE[a][2], DST_VIEW=_STORAGE[b][1],
                                    DST_FLAT=_STORAGE[b][2], CONVERT=_CONVERT.get((a, b), same))
                 for a in _STORAGE for b in _STORAGE}
_COPY_KERNELS[_F32, _F32] = _copy_f32_f32


def _copy_variant(node):
    a, t = node.src[0].type, node.type
    if a == t and T.is_quantized(a):
        return QK.copy_quant_same
    if T.is_quantized(t):
        return QK.TO_QUANT[t]          # F32 -> blocks: ggml's quantize_row_*_reference
    if T.is_quantized(a):
        return QK.FROM_QUANT[a]        # blocks -> F32: dequantize_row_*
    return _COPY_KERNELS[(a, t)]


def _tasks_by_src_rows(node, n_threads):
    # the copy loop splits src0's rows
    s = node.src[0]
    return max(1, min(n_threads, TN.nrows(s), TN.nelements(s) // MIN_ELEMENTS_PER_TASK))


_COPY_TYPES = (_F32, _F16, _I32)


def _check_ints(op, vals, a):
    """Sizes and axes must be ints: a float (2.5) would otherwise be truncated into a wrong shape."""
    if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in vals):
        raise GraphError(f"{op}: sizes and axes must be ints, got {list(vals)} for {shapes(a)}")


def _check_copy(op, a, b=None):
    TN.check_tensor(op, a, *( [b] if b is not None else []))
    for t in (a, b):
        if t is not None and t.type not in _COPY_TYPES + T.QUANTIZED:
            raise GraphError(f"{op}: unsupported type: {shapes(a, b) if b is not None else shapes(a)}")
    # quantized data converts only to and from F32 (block by block), or copies to its own type
    if b is not None and a.type != b.type and (T.is_quantized(a.type) or T.is_quantized(b.type)) \
            and _F32 not in (a.type, b.type):
        raise GraphError(f"{op}: quantized tensors convert only to or from F32: {shapes(a, b)}")


def _as_shape_of(ctx, g, a):
    """g's elements in row-major order, shaped like a (g itself when the shapes agree)."""
    if TN.are_same_shape(g, a):
        return g
    return reshape_4d(ctx, g if TN.is_contiguous(g) else cont(ctx, g), *a.ne)


def _copy_backward(ctx, t, g, d):
    # dup, cont and cpy copy src0's elements in row-major order: the gradient goes back the same
    # way; cpy's destination (src1) is overwritten, so it takes no gradient
    if d.needs(0):
        d.add(0, _as_shape_of(ctx, g, t.src[0]))


DUP = register("DUP", "x", _copy_f32_f32, n_tasks=_tasks_by_src_rows, inplace=True, backward=_copy_backward,
               variant=_copy_variant)
CPY = register("CPY", "x->y", _copy_f32_f32, n_tasks=_tasks_by_src_rows, backward=_copy_backward,
               variant=_copy_variant)
CONT = register("CONT", "cont(x)", _copy_f32_f32, n_tasks=_tasks_by_src_rows, backward=_copy_backward,
                variant=_copy_variant)


@reference_of(DUP, CPY, CONT)
def _copy_reference(node, srcs):
    # src0's elements in row-major order, converted to the node's type, in the node's shape (cpy's
    # src1 only gives the destination)
    return convert(np.asarray(srcs[0]).reshape(-1), node.type).reshape(shape4(node))


def _quant_pair(d):
    """cpy's operands with a quantized side: F32 into blocks, or blocks into F32."""
    t = d.quant_type()
    ne = [T.blck_size(t) * d.int(1, 2), d.side(), d.side(), 1]
    if d.coin():
        a = d.f32(ne)
        return a, d.tensor(t, d.reshaped(TN.nelements(a)) if ne[0] == T.blck_size(t) else ne, new=True)
    a = d.tensor(t, ne)
    return a, d.tensor(_F32, d.reshaped(TN.nelements(a)), new=True)


@sample_of(DUP)
def _dup_sample(d):
    # (no quantized dup here: the interpreter models blocks by their values, and re-quantizing a
    # block's values need not give its bytes back; tests/test_ops_quant.py checks those copies)
    a = d.tensor(d.any_type())
    return dup_inplace(d.ctx, a) if d.inplace(a) else dup(d.ctx, a)


@sample_of(CPY)
def _cpy_sample(d):
    if not d.backward and d.coin(20):
        return cpy(d.ctx, *_quant_pair(d))
    a = d.tensor(d.any_type())
    if d.backward:      # cpy writes over b: a new leaf that nothing else reads
        b = d.tensor(T.TYPE_F32, d.reshaped(TN.nelements(a)), new=True, param=False, shared=False)
    else:
        b = d.tensor(d.any_type(), d.reshaped(TN.nelements(a)))
        if d.shares_bytes(a, b) or not d.writable(b):
            b = d.tensor(b.type, b.ne, new=True)
    return cpy(d.ctx, a, b)


@sample_of(CONT)
def _cont_sample(d):
    a = d.tensor(d.any_type())
    if d.coin():
        return cont(d.ctx, a)
    ne = d.reshaped(TN.nelements(a))
    k = d.int(max(i + 1 for i in range(4) if ne[i] > 1 or i == 0), 4)
    return [cont_1d, cont_2d, cont_3d, cont_4d][k - 1](d.ctx, a, *ne[:k])


def dup(ctx, a):
    """A contiguous copy of a (ggml_dup): a [ne0, ne1, ne2, ne3], any strides -> same type and shape.

    F32, F16 or I32; GraphError for other types."""
    _check_copy("dup", a)
    return new_node(ctx, DUP, a.type, a.ne, [a])


@inplace_of(dup)
def dup_inplace(ctx, a):
    _check_copy("dup_inplace", a)
    return inplace_view(ctx, DUP, a, [a])


rebuild_of(DUP)(rebuild_by(dup, dup_inplace))


def cpy(ctx, a, b):
    """Copy a's elements into b in row-major order, converting types (ggml_cpy); returns a view of b.

    a and b (F32, F16 or I32, any strides) may differ in shape but must hold as many elements:
    GraphError otherwise. b's data is overwritten when the graph is computed; b takes no gradient."""
    TN.check_tensor("cpy", a, b)
    _check_copy("cpy", a, b)
    if TN.nelements(a) != TN.nelements(b):
        raise GraphError(f"cpy: element counts differ ({TN.nelements(a)} vs {TN.nelements(b)}): {shapes(a, b)}")
    if not same_view(a, b):       # a copy of a tensor onto itself is harmless
        refuse_overlap("cpy", byte_range(b), [(0, a)], "src1 (the destination)")
    t = new_node(ctx, CPY, b.type, b.ne, [a, b], view_of=b, nb=b.nb)
    if b.name:
        t.name = f"{b.name} (copy of {a.name})"[:TN.MAX_NAME - 1]
    return t


rebuild_of(CPY)(rebuild_by(cpy))


def cont(ctx, a):
    """A contiguous copy of a, same type and shape (ggml_cont); any strides, F32, F16 or I32."""
    _check_copy("cont", a)
    return new_node(ctx, CONT, a.type, a.ne, [a])


def cont_4d(ctx, a, ne0, ne1, ne2, ne3):
    """A contiguous copy of a's elements (row-major order) with shape [ne0, ne1, ne2, ne3] (ggml_cont_4d).

    The sizes are positive ints whose product is nelements(a): GraphError otherwise."""
    _check_copy("cont_4d", a)
    _check_ints("cont_4d", (ne0, ne1, ne2, ne3), a)
    if min(ne0, ne1, ne2, ne3) <= 0 or ne0 * ne1 * ne2 * ne3 != TN.nelements(a):
        raise GraphError(f"cont_4d: [{ne0}, {ne1}, {ne2}, {ne3}] does not hold {TN.nelements(a)} elements: {shapes(a)}")
    return new_node(ctx, CONT, a.type, [ne0, ne1, ne2, ne3], [a])


def cont_1d(ctx, a, ne0):
    """cont_4d with shape [ne0, 1, 1, 1] (ggml_cont_1d)."""
    return cont_4d(ctx, a, ne0, 1, 1, 1)


def cont_2d(ctx, a, ne0, ne1):
    """cont_4d with shape [ne0, ne1, 1, 1] (ggml_cont_2d)."""
    return cont_4d(ctx, a, ne0, ne1, 1, 1)


def cont_3d(ctx, a, ne0, ne1, ne2):
    """cont_4d with shape [ne0, ne1, ne2, 1] (ggml_cont_3d)."""
    return cont_4d(ctx, a, ne0, ne1, ne2, 1)


@rebuild_of(CONT)
def _cont_rebuild(ctx, srcs, rec):
    return cont_4d(ctx, *srcs, *rec.ne)


# -- reshape: a contiguous tensor seen with another shape ------------------------------------------------
def _reshape_backward(ctx, t, g, d):
    if d.needs(0):
        a = t.src[0]
        d.add(0, reshape_4d(ctx, g if TN.is_contiguous(g) else cont(ctx, g), *a.ne))


RESHAPE = register("RESHAPE", "reshape(x)", backward=_reshape_backward)


@reference_of(RESHAPE)
def _reshape_reference(node, srcs):
    return np.asarray(srcs[0]).reshape(shape4(node))


@sample_of(RESHAPE)
def _reshape_sample(d):
    a = d.tensor(d.any_type(), contiguous=True)
    ne = d.reshaped(TN.nelements(a))
    if d.coin(25):
        return reshape(d.ctx, a, d.tensor(d.any_type(), ne))
    k = d.int(max(i + 1 for i in range(4) if ne[i] > 1 or i == 0), 4)
    return [reshape_1d, reshape_2d, reshape_3d, reshape_4d][k - 1](d.ctx, a, *ne[:k])


def _reshape(ctx, a, ne, op):
    TN.check_tensor(op, a)
    _check_ints(op, ne, a)
    if not TN.is_contiguous(a):
        raise GraphError(f"{op}: src0 must be contiguous (use cont first): {shapes(a)}")
    n = 1
    for x in ne:
        n *= x
    if any(x <= 0 for x in ne) or n != TN.nelements(a):
        raise GraphError(f"{op}: new shape {list(ne)} does not hold the {TN.nelements(a)} elements of {shapes(a)}")
    return new_node(ctx, RESHAPE, a.type, ne, [a], view_of=a, name="reshaped")


def reshape(ctx, a, b):
    """a's data seen with b's shape, no copy (ggml_reshape); only b.ne is used.

    a must be contiguous (cont it first) and hold as many elements as b: GraphError otherwise."""
    TN.check_tensor("reshape", b)
    return _reshape(ctx, a, list(b.ne), "reshape")


def reshape_1d(ctx, a, ne0):
    """a's data seen as a 1-D tensor [ne0], no copy (ggml_reshape_1d); rules as reshape_4d."""
    return _reshape(ctx, a, [ne0], "reshape_1d")


def reshape_2d(ctx, a, ne0, ne1):
    """a's data seen as a 2-D tensor [ne0, ne1], no copy (ggml_reshape_2d); rules as reshape_4d."""
    return _reshape(ctx, a, [ne0, ne1], "reshape_2d")


def reshape_3d(ctx, a, ne0, ne1, ne2):
    """a's data seen as a 3-D tensor [ne0, ne1, ne2], no copy (ggml_reshape_3d); rules as reshape_4d."""
    return _reshape(ctx, a, [ne0, ne1, ne2], "reshape_3d")


def reshape_4d(ctx, a, ne0, ne1, ne2, ne3):
    """a's data seen with shape [ne0, ne1, ne2, ne3], no copy (ggml_reshape_4d).

    a must be contiguous (cont it first); the sizes are positive ints whose product is
    nelements(a): GraphError otherwise."""
    return _reshape(ctx, a, [ne0, ne1, ne2, ne3], "reshape_4d")


@rebuild_of(RESHAPE)
def _reshape_rebuild(ctx, srcs, rec):
    return reshape_4d(ctx, *srcs, *rec.ne)


# -- view: any ne/nb/offset inside the source's bytes -------------------------------------------------------
def _view_backward(ctx, t, g, d):
    # the view's elements sit at byte offset + i.nb inside src0: add g into those places of
    # src0's (F32, contiguous) gradient
    if not d.needs(0):
        return
    a = t.src[0]
    if not TN.is_contiguous(a):
        raise GraphError(f"view: no gradient through a view of a non-contiguous tensor (cont it first): "
                         f"{shapes(a)}")
    es, offset = T.type_size(a.type), param_i64(t, 0)
    nbs = [t.nb[1], t.nb[2], t.nb[3], offset]
    if any(x % es for x in nbs):
        raise GraphError(f"view: strides {t.nb} / offset {offset} are not whole elements of {shapes(a)}")
    nb1, nb2, nb3, offset = (x // es * 4 for x in nbs)
    d.acc(0, g, nb1, nb2, nb3, offset)


VIEW = register("VIEW", "view(x)", backward=_view_backward)


def _element_addresses(ne, nb):
    """Byte address (from element 0) of each element of a tensor with ne/nb, as a 4-D array."""
    g = np.zeros((1, 1, 1, 1), dtype=np.int64)
    for i in range(4):
        shape = [1, 1, 1, 1]
        shape[3 - i] = int(ne[i])
        g = g + (np.arange(int(ne[i]), dtype=np.int64) * int(nb[i])).reshape(shape)
    return g


@reference_of(VIEW)
def _view_reference(node, srcs):
    # the view's element at byte offset + sum(i_k nb_k) from src0's first element is the src0 element
    # stored there; None (unknown from src0's values) when some view element lands off src0's elements
    a = node.src[0]
    src_addr = _element_addresses(a.ne, a.nb).reshape(-1)
    order = np.argsort(src_addr, kind="stable")
    srt = src_addr[order]
    want = (param_i64(node, 0) + _element_addresses(node.ne, node.nb)).reshape(-1)
    pos = np.minimum(np.searchsorted(srt, want), srt.size - 1)
    if not np.array_equal(srt[pos], want):
        return None
    return np.asarray(srcs[0]).reshape(-1)[order[pos]].reshape(shape4(node))


@sample_of(VIEW)
def _view_sample(d):
    a = d.tensor(d.any_type(), contiguous=d.backward)
    es, n = T.type_size(a.type), TN.nelements(a)
    if TN.is_contiguous(a) and d.coin(40):
        # a reinterpretation of the bytes: rows of ne0 elements nb1 apart (overlapping unless d.backward)
        ne0 = d.int(1, n)
        step = d.int(ne0 if d.backward else 1, max(ne0, n))
        ne1 = d.int(1, (n - ne0) // step + 1)
        off = d.int(0, n - ne0 - (ne1 - 1) * step)
        if ne1 == 1 and d.coin():
            return view_1d(d.ctx, a, ne0, off * es)
        return view_2d(d.ctx, a, ne0, ne1, step * es, off * es)
    ne = [d.int(1, x) for x in a.ne]
    off = sum(d.int(0, x - y) * nb for x, y, nb in zip(a.ne, ne, a.nb))
    if ne[3] == 1 and ne[2] == 1 and d.coin():
        return view_2d(d.ctx, a, ne[0], ne[1], a.nb[1], off)
    if ne[3] == 1 and d.coin():
        return view_3d(d.ctx, a, ne[0], ne[1], ne[2], a.nb[1], a.nb[2], off)
    return view_4d(d.ctx, a, *ne, a.nb[1], a.nb[2], a.nb[3], off)


def _view(ctx, a, ne, nbs, offset, op):
    TN.check_tensor(op, a)
    if any(not isinstance(x, (int, np.integer)) for x in (*ne, *nbs, offset)):
        raise GraphError(f"{op}: sizes, strides and offset must be ints")
    if any(x <= 0 for x in ne) or any(x <= 0 for x in nbs) or offset < 0:
        raise GraphError(f"{op}: sizes and strides must be positive and offset >= 0, got ne={list(ne)} "
                         f"nb={list(nbs)} offset={offset} on {shapes(a)}")
    ne4 = list(ne) + [1] * (4 - len(ne))
    es = T.type_size(a.type)
    nb = [es, *nbs]
    for i in range(len(nb), 4):
        nb.append(nb[i - 1] * ne4[i - 1])
    span = es + sum((ne4[i] - 1) * nb[i] for i in range(4))
    if offset + span > TN.nbytes(a):
        raise GraphError(f"{op}: view of ne={list(ne)} nb={nb} at offset {offset} spans {span} bytes, "
                         f"beyond the {TN.nbytes(a)} bytes of {shapes(a)}")
    return new_node(ctx, VIEW, a.type, ne4, [a], i64_params(offset), view_of=a, view_offs=offset, name="view", nb=nb)


def view_1d(ctx, a, ne0, offset):
    """ne0 elements of a's data from byte `offset` on, no copy (ggml_view_1d); rules as view_4d."""
    return _view(ctx, a, [ne0], [], offset, "view_1d")


def view_2d(ctx, a, ne0, ne1, nb1, offset):
    """A [ne0, ne1] view of a's data: rows nb1 bytes apart from byte `offset` on (ggml_view_2d); rules as
    view_4d."""
    return _view(ctx, a, [ne0, ne1], [nb1], offset, "view_2d")


def view_3d(ctx, a, ne0, ne1, ne2, nb1, nb2, offset):
    """A [ne0, ne1, ne2] view of a's data with byte strides nb1, nb2 from byte `offset` on
    (ggml_view_3d); rules as view_4d."""
    return _view(ctx, a, [ne0, ne1, ne2], [nb1, nb2], offset, "view_3d")


def view_4d(ctx, a, ne0, ne1, ne2, ne3, nb1, nb2, nb3, offset):
    """A [ne0, ne1, ne2, ne3] view of a's data with byte strides nb1, nb2, nb3 (nb0 is the element
    size), starting `offset` bytes after a's first element; no copy (ggml_view_4d).

    Sizes and strides are positive ints, offset >= 0, and the view must lie within a's bytes:
    GraphError otherwise. Views may overlap themselves; the gradient flows back only through
    views of contiguous tensors."""
    return _view(ctx, a, [ne0, ne1, ne2, ne3], [nb1, nb2, nb3], offset, "view_4d")


@rebuild_of(VIEW)
def _view_rebuild(ctx, srcs, rec):
    return view_4d(ctx, *srcs, *rec.ne, *rec.nb[1:], param_i64(rec, 0))


# -- permute / transpose: the same bytes with axes reordered ------------------------------------------------
def _permute_backward(ctx, t, g, d):
    if d.needs(0):      # the inverse permutation: result dim axes[i] goes back to dim i
        inv = [0] * 4
        for i in range(4):
            inv[int(t.op_params[i])] = i
        d.add(0, permute(ctx, g, *inv))


def _transpose_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, transpose(ctx, g))


PERMUTE = register("PERMUTE", "permute(x)", backward=_permute_backward)
TRANSPOSE = register("TRANSPOSE", "transpose(x)", backward=_transpose_backward)


@reference_of(PERMUTE)
def _permute_reference(node, srcs):
    # source dim i becomes dim axes[i]; numpy axis j is ggml dim 3 - j
    axes = [int(node.op_params[i]) for i in range(4)]
    inv = [0] * 4
    for i, ax in enumerate(axes):
        inv[ax] = i
    return np.transpose(np.asarray(srcs[0]), [3 - inv[3 - j] for j in range(4)])


@reference_of(TRANSPOSE)
def _transpose_reference(node, srcs):
    return np.swapaxes(np.asarray(srcs[0]), 2, 3)


@sample_of(PERMUTE)
def _permute_sample(d):
    return permute(d.ctx, d.tensor(d.any_type()), *d.choice(list(itertools.permutations(range(4)))))


@sample_of(TRANSPOSE)
def _transpose_sample(d):
    return transpose(d.ctx, d.tensor(d.any_type()))


def permute(ctx, a, axis0, axis1, axis2, axis3):
    """a's dims reordered, no copy (ggml_permute): source dim i becomes result dim axis_i, so
    result.ne[axis_i] = a.ne[i] (and nb likewise).

    The axes are a permutation of 0..3: GraphError otherwise."""
    TN.check_tensor("permute", a)
    axes = [axis0, axis1, axis2, axis3]
    _check_ints("permute", axes, a)
    if sorted(axes) != [0, 1, 2, 3]:
        raise GraphError(f"permute: axes {axes} are not a permutation of 0..3 ({shapes(a)})")
    ne, nb = [0] * 4, [0] * 4
    for i, ax in enumerate(axes):
        ne[ax], nb[ax] = a.ne[i], a.nb[i]
    return new_node(ctx, PERMUTE, a.type, ne, [a], axes, view_of=a, name="permuted", nb=nb)


@rebuild_of(PERMUTE)
def _permute_rebuild(ctx, srcs, rec):
    return permute(ctx, *srcs, *(rec.i32(i) for i in range(4)))


def transpose(ctx, a):
    """a with dims 0 and 1 swapped, no copy (ggml_transpose): [ne0, ne1, ne2, ne3] -> [ne1, ne0, ne2, ne3]."""
    TN.check_tensor("transpose", a)
    ne = [a.ne[1], a.ne[0], a.ne[2], a.ne[3]]
    return new_node(ctx, TRANSPOSE, a.type, ne, [a], view_of=a, name="transposed",
                    nb=[a.nb[1], a.nb[0], a.nb[2], a.nb[3]])


rebuild_of(TRANSPOSE)(rebuild_by(transpose))
