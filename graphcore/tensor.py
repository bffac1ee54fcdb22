"""Tensors in ggml's layout: ne[0] innermost, nb[i] byte strides, data in a context's arena."""
from __future__ import annotations

import warnings
import weakref
from operator import attrgetter

import numpy as np

from . import types as T
from .context import Context
from .errors import GraphError, NotComputedWarning

MAX_DIMS = 4
MAX_NAME = 64
MAX_OP_PARAMS = 16   # int32 slots (ggml: 64 bytes)
MAX_SRC = 6

FLAG_INPUT = 1
FLAG_OUTPUT = 2
FLAG_PARAM = 4


# op names by code, for messages and reprs: filled by graphcore.ops.registry.register (the registry
# sits above tensors, so tensors know ops only through this table)
OP_NAMES: list = []


def op_name_of(code: int) -> str:
    return OP_NAMES[code] if 0 <= code < len(OP_NAMES) else f"<op {code}>"


# results produced by a successful graph_compute (the executor marks a graph's nodes once per
# graph version), so that reading a node never computed can say so instead of returning zeros
_COMPUTED = weakref.WeakSet()


def mark_computed(nodes) -> None:
    _COMPUTED.update(nodes)


def is_computed(t) -> bool:
    """Whether t's values are meaningful: a leaf (op NONE, values set by the user), a node a
    graph_compute produced, or a view of either."""
    if t.op == 0 or t in _COMPUTED:
        return True
    owner = t.view_src
    return owner is not None and (owner.op == 0 or owner in _COMPUTED)


def _warn_not_computed(t) -> None:
    if not is_computed(t):
        warnings.warn(f"tensor '{t.name}' ({op_name_of(t.op)} {t.ne}) has not been computed: its values are "
                      f"whatever its bytes held (zeros in a fresh context); add it to a graph "
                      f"(build_forward_expand) and graph_compute it first", NotComputedWarning, stacklevel=3)


class ReadOnlyList(list):
    """A list that refuses changes: the shapes, strides and sources the planner and the kernels trust
    (editing them could make a kernel reach outside the arena). It compares equal to a plain list."""

    __slots__ = ()

    def _refuse(self, *args, **kwargs):
        raise TypeError("this list is read-only (it describes a built tensor or graph; build a new one instead)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse


def read_only(attr: str, doc: str) -> property:
    """A property reading the private attribute `attr`, with no setter."""
    return property(attrgetter(attr), doc=doc)


class Tensor:
    """A tensor: metadata plus (unless the context is no_alloc) a place in its context's arena.
    What kernels rely on (ne, nb, type, op, src, op_params, the view) is read-only once built."""

    __slots__ = ("ctx", "_type", "_ne", "_nb", "_op", "_op_params", "flags", "_src", "grad", "name",
                 "_view_src", "_view_offs", "_buf", "_offs", "_base", "_nbytes", "__weakref__")

    def __init__(self, ctx, type_, ne, nb, buf, offs, view_src=None, view_offs=0, base=None, nbytes=None):
        self.ctx = ctx
        self._type = type_
        self._ne = ReadOnlyList(ne)     # 4 ints
        self._nb = ReadOnlyList(nb)     # 4 ints, bytes
        self._op = 0                    # OP_NONE
        self._op_params = np.zeros(MAX_OP_PARAMS, dtype=np.int32)   # read-only in nodes (registry.new_node)
        self.flags = 0
        self._src = ReadOnlyList()
        self.grad = None
        self.name = ""
        self._view_src = view_src
        self._view_offs = view_offs
        self._buf = buf         # the arena array (kept alive as long as the tensor is)
        self._offs = offs       # byte offset of element 0 in _buf, or -1 when there is no data
        self._base = _address(buf) if base is None else base    # _buf's address (numpy's .ctypes: microseconds)
        self._nbytes = _span(type_, ne, nb) if nbytes is None else nbytes     # (ne, nb and type never change)

    type = read_only("_type", "type code (TYPE_F32, ...)")
    ne = read_only("_ne", "elements per dimension, ne[0] innermost (read-only list of 4)")
    nb = read_only("_nb", "byte strides per dimension (read-only list of 4)")
    op = read_only("_op", "op code computing this tensor (OP_NONE for leafs)")
    src = read_only("_src", "source tensors (read-only list)")
    op_params = read_only("_op_params", "the op's parameters, 16 int32 (read-only in nodes)")
    view_src = read_only("_view_src", "the tensor whose bytes this one shares, or None")
    view_offs = read_only("_view_offs", "byte offset into view_src")

    # -- data ---------------------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        return self._offs >= 0 and self._buf is not None

    @property
    def data(self) -> int:
        """Address of element 0 (as ggml's `data` pointer); 0 when there is none."""
        if self._offs < 0 or self._buf is None:
            return 0
        return self._base + self._offs

    def numpy(self) -> np.ndarray:
        """Zero-copy writable view: shape is ne reversed and cut to n_dims; strides from nb. Warns
        (gc.NotComputedWarning) when t is an op's result that no graph_compute has produced yet."""
        if not self.has_data:
            raise GraphError(f"numpy: tensor '{self.name}' {self.ne} has no data (no_alloc context)")
        self.ctx.check_alive("numpy")
        _warn_not_computed(self)
        shape, strides = _np_layout(self, n_dims(self))
        return np.ndarray(shape=shape, dtype=T.traits(self.type).dtype,
                          buffer=self._buf, offset=self._offs, strides=strides)

    def numpy4d(self) -> np.ndarray:
        """Like numpy() but always 4-D, in (ne3, ne2, ne1, ne0) order, and without numpy()'s
        warning for a node not computed yet (the raw bytes, e.g. to fill an output first)."""
        if not self.has_data:
            raise GraphError(f"numpy: tensor '{self.name}' {self.ne} has no data (no_alloc context)")
        self.ctx.check_alive("numpy")
        shape, strides = _np_layout(self, MAX_DIMS)
        return np.ndarray(shape=shape, dtype=T.traits(self.type).dtype,
                          buffer=self._buf, offset=self._offs, strides=strides)

    def __repr__(self):
        """Name, type, ne and op; the values too (numpy's summarised print) once there are any."""
        head = (f"Tensor('{self.name}', {T.type_name(self.type)}, ne={list(self.ne[:max(1, n_dims(self))])}, "
                f"op={op_name_of(self.op)}")
        if not self.has_data:
            return head + ", no data)"
        if self.ctx.freed or not is_computed(self):
            return head + (", context freed)" if self.ctx.freed else ", not computed)")
        nd = n_dims(self)
        shape, strides = _np_layout(self, nd)
        values = np.ndarray(shape=shape, dtype=T.traits(self.type).dtype, buffer=self._buf,
                            offset=self._offs, strides=strides)
        if self.type == T.TYPE_F16:
            values = T.fp16_to_fp32(values)
        text = np.array2string(values, threshold=64, edgeitems=3, precision=5, separator=", ",
                               prefix="       values=")
        return f"{head},\n       values={text})"

    # numpy interop: np.asarray(t) gives the zero-copy view
    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)


def _np_layout(t, nd):
    """numpy shape and strides of t's first nd dims, reversed; a quantized tensor is seen as its
    bytes: each row is row_size(ne0) uint8s (the blocks, as gguf arrays them)."""
    ne, nb = list(t.ne[:nd]), list(t.nb[:nd])
    if T.is_quantized(t.type):
        ne[0], nb[0] = T.row_size(t.type, ne[0]), 1
    return tuple(ne[::-1]), tuple(nb[::-1])


def describe(t) -> str:
    """`name[ne] type` for error messages."""
    if not isinstance(t, Tensor):
        return f"<{type(t).__name__}, not a tensor>"
    nm = f"'{t.name}'" if t.name else "tensor"
    return f"{nm} ne={list(t.ne)} {T.type_name(t.type)}"


def check_tensor(op: str, *ts):
    for t in ts:
        if not isinstance(t, Tensor):
            raise GraphError(f"{op}: expected a graphcore Tensor, got {type(t).__name__}"
                             + (f" with shape {t.shape}" if hasattr(t, "shape") else ""))


def _check_ctx(op, ctx):
    if not isinstance(ctx, Context):
        raise GraphError(f"{op}: expected a Context as first argument, got {type(ctx).__name__}")
    ctx.check_alive(op)


def _contiguous_nb(type_, ne):
    ts, bs = T.type_size(type_), T.blck_size(type_)
    nb = [ts, ts * (ne[0] // bs), 0, 0]
    nb[2] = nb[1] * ne[1]
    nb[3] = nb[2] * ne[2]
    return nb


def _address(buf) -> int:
    return 0 if buf is None else int(buf.ctypes.data)


def _norm_ne(op, ne):
    if isinstance(ne, (list, tuple)) and 0 < len(ne) <= MAX_DIMS and all(type(x) is int and x > 0 for x in ne):
        return [*ne, *(1,) * (MAX_DIMS - len(ne))]      # the common case, checked at once
    try:
        ne = list(ne)
    except TypeError:
        raise GraphError(f"{op}: ne must be a sequence of ints, got {ne!r}") from None
    for x in ne:       # no silent truncation of 2.7, "3" or True
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise GraphError(f"{op}: sizes must be ints, got {type(x).__name__} {x!r} in ne={ne!r}")
    ne = [int(x) for x in ne]
    if not 1 <= len(ne) <= MAX_DIMS:
        raise GraphError(f"{op}: tensors have 1 to {MAX_DIMS} dims, got ne={ne}")
    if any(x <= 0 for x in ne):
        raise GraphError(f"{op}: every dimension must be >= 1, got ne={ne}")
    return ne + [1] * (MAX_DIMS - len(ne))


def new_tensor_impl(ctx: Context, type_: int, ne, view_src: Tensor | None = None, view_offs: int = 0,
                    op: str = "new_tensor", nb=None) -> Tensor:
    """Create a tensor; with view_src it shares that tensor's bytes (nb: its strides, default contiguous)."""
    _check_ctx(op, ctx)
    tt = T.traits(type_)
    ne = _norm_ne(op, ne)
    if ne[0] % tt.blck_size:
        raise GraphError(f"{op}: ne={ne}: ne[0]={ne[0]} is not a multiple of {tt.name}'s "
                         f"block size {tt.blck_size}")
    nb = _contiguous_nb(type_, ne) if nb is None else [int(x) for x in nb]
    nbytes = _span(type_, ne, nb)
    base = 0
    if view_src is not None:
        view_src.ctx.check_alive(op)
        if view_src.view_src is not None:       # always point at the tensor that owns the data
            view_offs += view_src.view_offs
            view_src = view_src.view_src
        if view_offs < 0 or view_offs + nbytes > view_src._nbytes:
            raise GraphError(f"{op}: view of {nbytes} bytes at offset {view_offs} reaches outside "
                             f"{describe(view_src)} ({nbytes_of(view_src)} bytes)")
        buf, offs, base = view_src._buf, (view_src._offs + view_offs if view_src._offs >= 0 else -1), view_src._base
    elif ctx.no_alloc:
        buf, offs = None, -1
    else:
        buf, offs, base = ctx.arena, ctx.alloc(nbytes), ctx.base
    ctx.n_objects += 1
    t = Tensor(ctx, type_, ne, nb, buf, offs, view_src, view_offs, base, nbytes)
    if offs < 0:
        ctx.no_data.append(t)
    return t


# -- placing data later (graphcore.alloc) -------------------------------------------------------------
_moves = [0]    # bumped whenever a tensor that had data gets other bytes: lowered graphs are then stale


def place(t: Tensor, buf, offs: int) -> None:
    """Give t bytes at `offs` of the uint8 array `buf` (None, -1: no data); views of t follow with
    refresh_view. Used by the graph allocator; tensors created with data are never placed."""
    if t.has_data and (t._buf is not buf or t._offs != offs):
        _moves[0] += 1
    if buf is not t._buf:
        t._base = _address(buf)
    t._buf, t._offs = buf, int(offs)


def refresh_view(t: Tensor) -> None:
    """A view's data follows its source's (placed or moved by the allocator)."""
    s = t.view_src
    place(t, s._buf, s._offs + t.view_offs if s.has_data else -1)


def set_src(t: Tensor, srcs) -> None:
    """Rewire t's sources (gradient checkpointing points backward nodes at recomputed tensors)."""
    t._src = ReadOnlyList(srcs)


def data_moves() -> int:
    """How many times tensors that had data were given other bytes (planner: cached lowerings are stale)."""
    return _moves[0]


def _span(type_, ne, nb):
    tt = T.traits(type_)
    return (tt.type_size + (ne[0] // tt.blck_size - 1) * nb[0] + (ne[1] - 1) * nb[1] + (ne[2] - 1) * nb[2]
            + (ne[3] - 1) * nb[3])


# -- constructors (ggml_new_tensor_*) --------------------------------------------------------------
def new_tensor(ctx, type, ne) -> Tensor:
    """A new contiguous tensor of `type` (TYPE_F32, TYPE_F16, TYPE_I32) and shape ne (1 to 4 sizes,
    ne[0] innermost) in ctx's arena (ggml_new_tensor); its values are what the arena held (zeros
    in a fresh one).

    GraphError for a bad type or sizes < 1; OutOfMemoryError when the arena is full. In a
    no_alloc context the tensor has no data."""
    return new_tensor_impl(ctx, type, ne)


def new_tensor_1d(ctx, type, ne0) -> Tensor:
    """A new tensor [ne0] (ggml_new_tensor_1d); see new_tensor."""
    return new_tensor_impl(ctx, type, [ne0], op="new_tensor_1d")


def new_tensor_2d(ctx, type, ne0, ne1) -> Tensor:
    """A new tensor [ne0, ne1]: ne1 rows of ne0 elements (ggml_new_tensor_2d); see new_tensor."""
    return new_tensor_impl(ctx, type, [ne0, ne1], op="new_tensor_2d")


def new_tensor_3d(ctx, type, ne0, ne1, ne2) -> Tensor:
    """A new tensor [ne0, ne1, ne2] (ggml_new_tensor_3d); see new_tensor."""
    return new_tensor_impl(ctx, type, [ne0, ne1, ne2], op="new_tensor_3d")


def new_tensor_4d(ctx, type, ne0, ne1, ne2, ne3) -> Tensor:
    """A new tensor [ne0, ne1, ne2, ne3] (ggml_new_tensor_4d); see new_tensor."""
    return new_tensor_impl(ctx, type, [ne0, ne1, ne2, ne3], op="new_tensor_4d")


def new_f32(ctx, value: float) -> Tensor:
    """A new F32 [1] tensor holding value (ggml_new_f32)."""
    t = new_tensor_impl(ctx, T.TYPE_F32, [1], op="new_f32")
    set_f32(t, value)
    return t


def new_i32(ctx, value: int) -> Tensor:
    """A new I32 [1] tensor holding value (ggml_new_i32)."""
    t = new_tensor_impl(ctx, T.TYPE_I32, [1], op="new_i32")
    set_i32(t, value)
    return t


def dup_tensor(ctx, src: Tensor) -> Tensor:
    """A new contiguous tensor with src's type and shape, not its data (ggml_dup_tensor)."""
    check_tensor("dup_tensor", src)
    return new_tensor_impl(ctx, src.type, src.ne, op="dup_tensor")


def view_tensor(ctx, src: Tensor) -> Tensor:
    """A tensor sharing src's data, type, shape and strides; its op stays NONE (ggml_view_tensor)."""
    check_tensor("view_tensor", src)
    t = new_tensor_impl(ctx, src.type, src.ne, src, 0, op="view_tensor", nb=src.nb)
    t.name = f"{src.name} (view)"[:MAX_NAME - 1]
    return t


def from_numpy(ctx, arr, type=None) -> Tensor:
    """Copy a numpy array into a new tensor (shape reversed into ne). float64 becomes F32,
    integer arrays become I32 when every value fits."""
    _check_ctx("from_numpy", ctx)
    a = np.asarray(arr)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim > MAX_DIMS:
        raise GraphError(f"from_numpy: at most {MAX_DIMS} dims, got shape {a.shape}")
    if type is None:
        if a.dtype == np.float64:
            type = T.TYPE_F32
        elif a.dtype.kind in "iub" and a.dtype != np.int32:
            if a.size and (a.min() < -2**31 or a.max() >= 2**31):
                raise GraphError(f"from_numpy: {a.dtype} values outside int32 range")
            type = T.TYPE_I32
        else:
            type = T.type_from_dtype(a.dtype)
    t = new_tensor_impl(ctx, type, list(a.shape[::-1]) or [1], op="from_numpy")
    if t.has_data:
        t.numpy()[...] = a.reshape(t.numpy().shape).astype(T.traits(type).dtype)
    return t


# -- properties (ggml_nelements, ...) -------------------------------------------------------------
def nelements(t) -> int:
    """Number of elements, ne0 * ne1 * ne2 * ne3 (ggml_nelements)."""
    return t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]


def nrows(t) -> int:
    """Number of rows, ne1 * ne2 * ne3 (ggml_nrows)."""
    return t.ne[1] * t.ne[2] * t.ne[3]


def nbytes_of(t) -> int:
    """ggml_nbytes: bytes spanned from the first to one past the last element."""
    return t._nbytes


nbytes = nbytes_of


def element_size(t) -> int:
    """Bytes of one element of t's type (ggml_element_size)."""
    return T.type_size(t.type)


def n_dims(t) -> int:
    """Number of dimensions: 1 + the index of the last ne[i] > 1, at least 1 (ggml_n_dims)."""
    for i in range(MAX_DIMS - 1, 0, -1):
        if t.ne[i] > 1:
            return i + 1
    return 1


def is_contiguous(t) -> bool:
    """Whether t's elements are packed in row-major order with no gaps (ggml_is_contiguous)."""
    return t.nb[0] == T.type_size(t.type) and all(
        t.nb[i] == t.nb[i - 1] * (t.ne[i - 1] // (T.blck_size(t.type) if i == 1 else 1)) for i in range(1, MAX_DIMS))


def is_transposed(t) -> bool:
    """Whether nb[0] > nb[1] (ggml_is_transposed)."""
    return t.nb[0] > t.nb[1]


def is_permuted(t) -> bool:
    """Whether the byte strides are not increasing: nb[i] > nb[i+1] for some i (ggml_is_permuted)."""
    return t.nb[0] > t.nb[1] or t.nb[1] > t.nb[2] or t.nb[2] > t.nb[3]


def is_scalar(t) -> bool:
    """Whether t has exactly one element (ggml_is_scalar)."""
    return nelements(t) == 1


def are_same_shape(a, b) -> bool:
    """Whether a.ne == b.ne (ggml_are_same_shape)."""
    return list(a.ne) == list(b.ne)


def can_repeat(a, b) -> bool:
    """ggml_can_repeat: a can be tiled to b's shape (every b.ne[i] a multiple of a.ne[i])."""
    return all(b.ne[i] % a.ne[i] == 0 for i in range(MAX_DIMS))


def can_repeat_rows(a, b) -> bool:
    """can_repeat(a, b) with equal rows, a.ne[0] == b.ne[0] (ggml_can_repeat_rows)."""
    return a.ne[0] == b.ne[0] and can_repeat(a, b)


# -- names ----------------------------------------------------------------------------------------
def set_name(t, name: str) -> Tensor:
    """Name t (cut to MAX_NAME - 1 characters, as ggml_set_name); returns t."""
    check_tensor("set_name", t)
    t.name = str(name)[:MAX_NAME - 1]
    return t


def get_name(t) -> str:
    """t's name (ggml_get_name)."""
    return t.name


def format_name(t, fmt: str, *args) -> Tensor:
    """Name t with `fmt % args` (ggml_format_name, printf-style); returns t."""
    return set_name(t, fmt % args if args else fmt)


def set_input(t):
    """Mark t as a graph input: set FLAG_INPUT in t.flags (ggml_set_input)."""
    t.flags |= FLAG_INPUT


def set_output(t):
    """Mark t as a graph output: set FLAG_OUTPUT in t.flags (ggml_set_output)."""
    t.flags |= FLAG_OUTPUT


# -- element access (work on every type and on non-contiguous views) -------------------------------
def unravel_index(t, i: int):
    """(i0, i1, i2, i3) of t's element i in row-major order (ggml_unravel_index); IndexError when i is
    outside 0..nelements(t)-1."""
    n = nelements(t)
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for {describe(t)} with {n} elements")
    i0 = i % t.ne[0]
    i1 = (i // t.ne[0]) % t.ne[1]
    i2 = (i // (t.ne[0] * t.ne[1])) % t.ne[2]
    i3 = i // (t.ne[0] * t.ne[1] * t.ne[2])
    return i0, i1, i2, i3


def _nd(t):
    if T.is_quantized(t.type):     # as ggml_get_f32_1d, which aborts on these
        raise GraphError(f"element access: {describe(t)} is quantized; dequantize it first "
                         f"(gc.dequantize, or cpy into an F32 tensor)")
    return t.numpy4d()


def _store(t, index, value):
    """Write with C-cast semantics: F16 overflows to inf quietly, I32 truncates toward zero."""
    with np.errstate(over="ignore", invalid="ignore"):
        _nd(t)[index] = int(value) if t.type == T.TYPE_I32 else value


def get_f32_1d(t, i: int) -> float:
    """Element i (row-major order, any type and strides) as a float (ggml_get_f32_1d); IndexError when out
    of range."""
    i0, i1, i2, i3 = unravel_index(t, i)
    return float(_nd(t)[i3, i2, i1, i0])


def get_i32_1d(t, i: int) -> int:
    """Element i (row-major order, any type and strides) as an int, truncated toward zero
    (ggml_get_i32_1d); IndexError when out of range."""
    i0, i1, i2, i3 = unravel_index(t, i)
    return int(_nd(t)[i3, i2, i1, i0])


def set_f32_1d(t, i: int, value: float) -> None:
    """Write value into element i (row-major order, any type and strides), as a C cast would
    (ggml_set_f32_1d); IndexError when out of range."""
    i0, i1, i2, i3 = unravel_index(t, i)
    _store(t, (i3, i2, i1, i0), value)


def set_i32_1d(t, i: int, value: int) -> None:
    """Write the int value into element i (row-major order, any type and strides) (ggml_set_i32_1d);
    IndexError when out of range."""
    i0, i1, i2, i3 = unravel_index(t, i)
    _store(t, (i3, i2, i1, i0), int(value))


def get_f32_nd(t, i0, i1=0, i2=0, i3=0) -> float:
    """Element [i0, i1, i2, i3] as a float (ggml_get_f32_nd)."""
    return float(_nd(t)[i3, i2, i1, i0])


def set_f32_nd(t, i0, i1, i2, i3, value) -> None:
    """Write value into element [i0, i1, i2, i3] (ggml_set_f32_nd)."""
    _store(t, (i3, i2, i1, i0), value)


def get_i32_nd(t, i0, i1=0, i2=0, i3=0) -> int:
    """Element [i0, i1, i2, i3] as an int (ggml_get_i32_nd)."""
    return int(_nd(t)[i3, i2, i1, i0])


def set_i32_nd(t, i0, i1, i2, i3, value) -> None:
    """Write the int value into element [i0, i1, i2, i3] (ggml_set_i32_nd)."""
    _store(t, (i3, i2, i1, i0), int(value))


def set_f32(t, value: float) -> Tensor:
    """Fill every element with value (ggml_set_f32); any type and strides. Returns t."""
    check_tensor("set_f32", t)
    _store(t, Ellipsis, value)
    return t


def set_i32(t, value: int) -> Tensor:
    """Fill every element with the int value (ggml_set_i32); any type and strides. Returns t."""
    check_tensor("set_i32", t)
    _store(t, Ellipsis, int(value))
    return t


def set_zero(t) -> Tensor:
    """Set every element to 0 (ggml_set_zero). Returns t."""
    check_tensor("set_zero", t)
    _nd(t)[...] = 0
    return t
