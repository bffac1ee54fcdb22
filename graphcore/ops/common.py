"""Shared pieces of op builders and kernels: argument checks and the elementwise loops."""
from __future__ import annotations

import functools
import inspect
import sys


from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import (ERR_INDEX, f32_at, fail, inline, is_dense, record, row_addr, rows_contiguous, specialise,
                      split, split_aligned, t_addr, t_ne, view_f32, view_i32)
from .refs import f64, sample_binary, sample_unary, tile
from .registry import (MIN_ELEMENTS_PER_TASK, new_node, op_name, rebuild_by, rebuild_of, reference_of, register,
                       sample_of)


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


def region_overlaps(ne, strides, es) -> bool:
    """Whether a strided region (ne[i] elements at byte stride strides[i], elements es bytes wide)
    might map two different indices to the same bytes. Dims of size 1 never count. Sufficient
    test: sorted by stride, each stride must step over everything the smaller ones span."""
    dims = sorted((s, n) for n, s in zip(ne, strides) if n > 1)
    span = es
    for s, n in dims:
        if s < span:
            return True
        span = s * (n - 1) + span
    return False


def byte_range(t):
    """(the tensor owning t's bytes, first byte, one past the last) for overlap checks."""
    owner = t.view_src if t.view_src is not None else t
    start = t.view_offs if t.view_src is not None else 0
    return owner, start, start + TN.nbytes(t)


def refuse_overlap(op: str, written, srcs, what: str):
    """Refuse (GraphError) a node that writes the bytes `written` (owner, first, end) while reading a
    source among `srcs` that shares some of them: the result would depend on the order in which
    elements are written, so on the thread count. One rule for in-place ops, cpy, set and acc."""
    owner, lo, hi = written
    for j, s in srcs:
        so, slo, shi = byte_range(s)
        if so is owner and slo < hi and lo < shi:
            raise GraphError(f"{op}: src{j} {TN.describe(s)} (bytes {slo}..{shi}) shares bytes with {what} "
                             f"(bytes {lo}..{hi} of the same buffer), which the op writes while reading it; "
                             f"use the out-of-place form or a copy")


def same_view(s, a) -> bool:
    """s and a are the same elements of the same bytes."""
    return byte_range(s) == byte_range(a) and list(s.nb) == list(a.nb) and s.type == a.type


def inplace_view(ctx, op: int, a, srcs, params=None, checked=False):
    """The result of an _inplace op: a view of a (same ne and nb) computed by op. A source that
    partly overlaps a (anything but a itself, element for element) is refused, and so is an a whose
    elements overlap each other; `checked`: the builder compared the sources with the region it
    writes itself (set, acc)."""
    name = f"{op_name(op).lower()}_inplace"
    if region_overlaps(a.ne, a.nb, T.type_size(a.type)):
        raise GraphError(f"{name}: the destination {TN.describe(a)} nb={list(a.nb)} has elements sharing bytes "
                         f"(a view with overlapping strides cannot be written in place)")
    if not checked:
        refuse_overlap(name, byte_range(a), [(j, s) for j, s in enumerate(srcs)
                                             if s is not None and not same_view(s, a)], "src0 (written in place)")
    return new_node(ctx, op, a.type, a.ne, srcs, params, view_of=a, name="inplace", nb=a.nb)


def elementwise_node(ctx, op: int, a, srcs, params=None, inplace=False):
    if inplace:
        return inplace_view(ctx, op, a, srcs, params)
    return new_node(ctx, op, a.type, a.ne, srcs, params)


# -- docstrings of generated builders and _inplace forms ------------------------------------------------
def inplace_doc(name: str, base_doc: str | None = None, ggml: str | None = None) -> str:
    """The docstring of op `name`'s _inplace form (base_doc: the out-of-place builder's docstring;
    ggml: the ggml function, when not ggml_<name>_inplace)."""
    first = inspect.cleandoc(base_doc or "").split("\n\n")[0]     # the summary paragraph
    return (f"`{name}` computed in place ({ggml or f'ggml_{name}_inplace'}): the result is a view of a\n"
            f"(same ne and nb) whose compute writes over a's data. Arguments, shapes and checks as `{name}`"
            + (f":\n\n{first}" if first else "."))


def inplace_of(base, ggml: str | None = None):
    """Decorator giving an op's _inplace form its docstring from the out-of-place builder `base`."""
    def deco(fn):
        fn.__doc__ = inplace_doc(base.__name__, base.__doc__, ggml)
        return fn
    return deco


def unary_builders(op: int, name: str, formula: str, note: str = "", module: str | None = None):
    """The builders `name(ctx, a)` and `name_inplace(ctx, a)` of a unary F32 op computing `formula`
    of each element x, with their names and docstrings (note: a sentence added to the docstring)."""
    def build(ctx, a):
        check_f32(name, a)
        return elementwise_node(ctx, op, a, [a])

    def build_inplace(ctx, a):
        check_f32(name + "_inplace", a)
        return elementwise_node(ctx, op, a, [a], inplace=True)

    module = module or sys._getframe(1).f_globals["__name__"]    # the op's module, as namedtuple does
    for f, fname in ((build, name), (build_inplace, name + "_inplace")):
        f.__name__ = f.__qualname__ = fname
        f.__module__ = module
    build.__doc__ = (f"Elementwise {formula} (ggml_{name}): F32 a [ne0, ne1, ne2, ne3] -> F32, same shape.\n\n"
                     f"{note + chr(10) if note else ''}Any strides (views, permuted tensors); GraphError for "
                     f"a non-F32 a.")
    build_inplace.__doc__ = inplace_doc(name, build.__doc__)
    return build, build_inplace


def grad_x(grad):
    """The backward rule of a unary op whose source's gradient is grad(ctx, node, g)."""
    def backward(ctx, t, g, d):
        if d.needs(0):
            d.add(0, grad(ctx, t, g))
    return backward


def linear_in_dy(op: str, forward: str, back):
    """The backward rule of an op `op`(x, dy) that is `forward`'s gradient at x for the output
    gradient dy: linear in dy, so dy's gradient is back(ctx, node, g) (the op again, with g for dy);
    x's would need `forward`'s second derivative, which graphcore does not have (GraphError)."""
    def backward(ctx, t, g, d):
        if d.needs(0):
            raise GraphError(f"{op}: no rule for the gradient with respect to x ({forward}'s second "
                             f"derivative), needed for {shapes(t.src[0])}")
        if d.needs(1):
            d.add(1, back(ctx, t, g))
    return backward


SEG = 4096   # elementwise work is cut into row segments of this many elements (see tasks_by_segments)


@inline
def row_index(ir, ne1, ne2):
    """(i1, i2, i3) of flat row ir, rows in ne1, ne2, ne3 order (i1 fastest)."""
    return ir % ne1, (ir // ne1) % ne2, ir // (ne2 * ne1)


@inline
def my_rows(rec, ith, nth):
    """How a row kernel starts: its record, dst and src0 as F32 arrays, and this thread's share
    [lo, hi) of dst's rows."""
    r = record(rec)
    d = view_f32(r, 0)
    ne3, ne2, ne1, ne0 = d.shape
    lo, hi = split(ne1 * ne2 * ne3, ith, nth)
    return r, d, view_f32(r, 1), lo, hi


@inline
def same(x):
    return x


@inline
def next_row(i1, i2, i3, ne1, ne2):
    """(i1, i2, i3) of the row after (i1, i2, i3), rows in ne1, ne2, ne3 order."""
    i1 += 1
    if i1 == ne1:
        i1 = 0
        i2 += 1
        if i2 == ne2:
            i2 = 0
            i3 += 1
    return i1, i2, i3


@inline
def unary_loop(rec, ith, nth, f, p):
    """dst = f(src0, p) elementwise; any strides. Dense tensors are walked as one flat array cut
    across threads; otherwise work units are row segments, split across threads."""
    r = record(rec)
    ne0, ne1, ne2, ne3 = t_ne(r, 0, 0), t_ne(r, 0, 1), t_ne(r, 0, 2), t_ne(r, 0, 3)
    if is_dense(r, 0, 4) and is_dense(r, 1, 4):     # one flat, 0-based loop: vectorises
        lo, hi = split_aligned(ne0 * ne1 * ne2 * ne3, ith, nth)
        dr = f32_at(t_addr(r, 0) + 4 * lo, hi - lo)
        if t_addr(r, 0) == t_addr(r, 1):    # in place (the allocator's reuse): one array, so LLVM's
            for i in range(hi - lo):        # overlap check cannot send the loop down its scalar path
                dr[i] = f(dr[i], p)
            return
        ar = f32_at(t_addr(r, 1) + 4 * lo, hi - lo)
        for i in range(hi - lo):
            dr[i] = f(ar[i], p)
        return
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    nseg = (ne0 + SEG - 1) // SEG
    lo, hi = split(ne1 * ne2 * ne3 * nseg, ith, nth)
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1)
    ir, sg = lo // nseg, lo % nseg
    i1, i2, i3 = row_index(ir, ne1, ne2)
    for u in range(lo, hi):
        s0 = sg * SEG
        s1 = min(ne0, s0 + SEG)
        if fast:   # sliced, 0-based loops over contiguous rows vectorize
            dr = f32_at(row_addr(r, 0, i1, i2, i3) + 4 * s0, s1 - s0)
            ar = f32_at(row_addr(r, 1, i1, i2, i3) + 4 * s0, s1 - s0)
            for i0 in range(s1 - s0):
                dr[i0] = f(ar[i0], p)
        else:
            for i0 in range(s0, s1):
                d[i3, i2, i1, i0] = f(a[i3, i2, i1, i0], p)
        sg += 1
        if sg == nseg:
            sg = 0
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)


@inline
def binary_loop(rec, ith, nth, f):
    """dst = f(src0, src1) with src1 tiled over src0 (ggml's can_repeat broadcast); any strides."""
    r = record(rec)
    ne0, ne1, ne2, ne3 = t_ne(r, 0, 0), t_ne(r, 0, 1), t_ne(r, 0, 2), t_ne(r, 0, 3)
    nb0, nb1, nb2, nb3 = t_ne(r, 2, 0), t_ne(r, 2, 1), t_ne(r, 2, 2), t_ne(r, 2, 3)
    if (nb0 == ne0 and nb1 == ne1 and nb2 == ne2 and nb3 == ne3
            and is_dense(r, 0, 4) and is_dense(r, 1, 4) and is_dense(r, 2, 4)):
        lo, hi = split_aligned(ne0 * ne1 * ne2 * ne3, ith, nth)
        dr = f32_at(t_addr(r, 0) + 4 * lo, hi - lo)
        br = f32_at(t_addr(r, 2) + 4 * lo, hi - lo)
        if t_addr(r, 0) == t_addr(r, 1):    # in place: see unary_loop
            for i in range(hi - lo):
                dr[i] = f(dr[i], br[i])
            return
        ar = f32_at(t_addr(r, 1) + 4 * lo, hi - lo)
        for i in range(hi - lo):
            dr[i] = f(ar[i], br[i])
        return
    d = view_f32(r, 0)
    a = view_f32(r, 1)
    b = view_f32(r, 2)
    nseg = (ne0 + SEG - 1) // SEG
    lo, hi = split(ne1 * ne2 * ne3 * nseg, ith, nth)
    fast = rows_contiguous(r, 0) and rows_contiguous(r, 1) and rows_contiguous(r, 2) and nb0 == ne0
    ir, sg = lo // nseg, lo % nseg
    i1, i2, i3 = row_index(ir, ne1, ne2)
    j3, j2, j1 = i3 % nb3, i2 % nb2, i1 % nb1
    for u in range(lo, hi):
        s0 = sg * SEG
        s1 = min(ne0, s0 + SEG)
        if fast:
            dr = f32_at(row_addr(r, 0, i1, i2, i3) + 4 * s0, s1 - s0)
            ar = f32_at(row_addr(r, 1, i1, i2, i3) + 4 * s0, s1 - s0)
            br = f32_at(row_addr(r, 2, j1, j2, j3) + 4 * s0, s1 - s0)
            for i0 in range(s1 - s0):
                dr[i0] = f(ar[i0], br[i0])
        else:
            for i0 in range(s0, s1):
                d[i3, i2, i1, i0] = f(a[i3, i2, i1, i0], b[j3, j2, j1, i0 % nb0])
        sg += 1
        if sg == nseg:
            sg = 0
            i1, i2, i3 = next_row(i1, i2, i3, ne1, ne2)
            j1, j2, j3 = i1 % nb1, i2 % nb2, i3 % nb3


def tasks_by_segments(node, n_threads):
    """Planner rule of the elementwise loops: one task per MIN_ELEMENTS_PER_TASK elements."""
    units = TN.nrows(node) * -(-node.ne[0] // SEG)
    return max(1, min(n_threads, units, TN.nelements(node) // MIN_ELEMENTS_PER_TASK))


ELEMENT = None      # the scalar function of one elementwise kernel: each copy of the templates sets its own


def _unary_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, ELEMENT, 0.0)


def _binary_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, ELEMENT)


def unary_kernel(name: str, element):
    """The kernel dst = element(src0, 0.0) elementwise (unary_loop), compiled for `element` (an @inline
    scalar function) and cached by numba under `name`."""
    return specialise(_unary_kernel, name, ELEMENT=element)


def binary_kernel(name: str, element):
    """The kernel dst = element(src0, src1), src1 tiled over src0 (binary_loop), compiled for `element`
    and cached by numba under `name`."""
    return specialise(_binary_kernel, name, ELEMENT=element)


def define_unary(name: str, symbol: str, element, *, backward, formula: str, reference=None, note: str = "",
                 domain: str = "any"):
    """One unary F32 op, declared once: registers the kernel applying `element(x, p)` (an @inline
    scalar function; p is unused) over row segments (may run in place) with its `backward` rule,
    attaches the numpy `reference` (a function of the float64 input array; by default `element`
    itself applied to the array) and a sampler for the testing kit, and returns (op code,
    builder, in-place builder) named after the op, documented with `formula` and `note`,
    rebuildable from graph files. `domain` is where the sampler draws inputs ("positive" for sqrt
    and log)."""
    code = register(name, symbol, unary_kernel(f"_{name.lower()}_kernel", element), n_tasks=tasks_by_segments,
                    inplace=True, backward=backward)
    if reference is None:
        reference = functools.partial(element.py_func, p=None)
    module = sys._getframe(1).f_globals["__name__"]
    build, build_inplace = unary_builders(code, name.lower(), formula, note, module=module)
    reference_of(code)(lambda node, srcs: reference(f64(srcs[0])))

    def sample(d):
        return sample_unary(d, build, build_inplace, domain=domain)
    sample.__module__ = module           # family_ops() finds an op's family by its sampler's module
    sample_of(code)(sample)
    rebuild_of(code)(rebuild_by(build, build_inplace))
    return code, build, build_inplace


def define_binary(name: str, symbol: str, element, backward, *, symbol_op: str, reference=None, note: str = "",
                  domain_b: str = "any"):
    """One binary F32 op whose src1 is tiled over src0 (ggml's can_repeat), declared once: registers
    the kernel applying `element(x, y)` (an @inline scalar function) over row segments (may run in
    place) with its `backward` rule, attaches the numpy `reference(a, b)` (float64, b already tiled
    to a's shape; by default `element` itself) and a sampler, and returns (op code, builder,
    in-place builder) named and documented after the op, rebuildable from graph files. `domain_b`
    is where the sampler draws src1 ("nonzero" for div)."""
    code = register(name, symbol, binary_kernel(f"_{name.lower()}_kernel", element), n_tasks=tasks_by_segments,
                    inplace=True, backward=backward)
    reference = reference or element.py_func
    module = sys._getframe(1).f_globals["__name__"]
    lname = name.lower()

    def builder(inplace):
        label = lname + ("_inplace" if inplace else "")

        def build(ctx, a, b):
            check_f32(label, a, b)
            if not TN.can_repeat(b, a):
                raise GraphError(f"{label}: src1 cannot be broadcast to src0 (each src0 dim must be a multiple "
                                 f"of src1's): {shapes(a, b)}")
            return elementwise_node(ctx, code, a, [a, b], inplace=inplace)
        build.__name__ = build.__qualname__ = label
        build.__module__ = module
        return build

    build, build_inplace = builder(False), builder(True)
    build.__doc__ = (f"Elementwise a {symbol_op} b, b tiled over a (ggml_{lname}).\n\n"
                     f"F32 a [ne0, ne1, ne2, ne3] and F32 b whose every ne[i] divides a's (ggml_can_repeat(b, a)) "
                     f"-> a's shape; any strides. GraphError otherwise." + (f" {note}" if note else ""))
    build_inplace.__doc__ = inplace_doc(lname, build.__doc__)
    reference_of(code)(lambda node, srcs: reference(f64(srcs[0]), tile(f64(srcs[1]), srcs[0].shape)))

    def sample(d):
        return sample_binary(d, build, build_inplace, domain_b=domain_b)
    sample.__module__ = module
    sample_of(code)(sample)
    rebuild_of(code)(rebuild_by(build, build_inplace))
    return code, build, build_inplace


@inline
def check_indices(r):
    """Every thread checks every index first, in order: the same error for any thread count, and
    nothing read through a bad index. False (the error recorded) when one is out of range."""
    idx = view_i32(r, 2)
    n_rows = t_ne(r, 1, 1)
    for j2 in range(idx.shape[1]):
        for j1 in range(idx.shape[2]):
            for j0 in range(idx.shape[3]):
                v = idx[0, j2, j1, j0]
                if v < 0 or v >= n_rows:
                    fail(r, ERR_INDEX, v)
                    return False
    return True
