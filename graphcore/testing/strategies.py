"""Hypothesis strategies for graphcore tests: shapes in ggml order, memory layouts, operand pairs.

Shapes are lists in ggml's `ne` order (`ne[0]` innermost), 1 to 4 entries, sizes including 1.
A `Layout` says how a tensor's elements sit in memory; `make_tensor` builds a tensor with that
layout whose logical values are a given numpy array::

    @given(ne=shapes(), layout=layouts(), seed=seeds())
    def test_neg(ne, layout, seed):
        ctx = sentinel_context(1 << 20)
        x = random_values(ne, seed)
        a = make_tensor(ctx, ne, layout, x)          # maybe a permuted / strided view node
        out = gc.neg(ctx, a)
        ...

Non-contiguous tensors are built as view nodes (PERMUTE, TRANSPOSE, VIEW) over a leaf that
owns the data; such nodes have no kernel and may be the input of any op.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from .. import tensor as TN
from ..quant_rows import quantize
from .. import types as T
from ..ops.layout import permute, transpose, view_4d

__all__ = ["Layout", "CONTIGUOUS", "LAYOUT_KINDS", "shapes", "layouts", "seeds", "random_values",
           "make_tensor", "logical_4d", "broadcastable_pairs", "matmul_pairs", "ne4", "types", "tensors"]

LAYOUT_KINDS = ("contiguous", "permuted", "transposed", "strided")


def ne4(ne) -> list:
    """ne padded with 1s to 4 entries."""
    ne = [int(x) for x in ne]
    return ne + [1] * (4 - len(ne))


def logical_4d(values, ne) -> np.ndarray:
    """values (numpy order: ne reversed, any number of leading dims dropped) seen as 4-D (ne3, ne2, ne1, ne0)."""
    return np.asarray(values).reshape(ne4(ne)[::-1])


@dataclass(frozen=True)
class Layout:
    """How a tensor's elements are placed in memory.

    kind:  'contiguous'  a plain tensor;
           'transposed'  transpose() of a contiguous [ne1, ne0, ne2, ne3] tensor;
           'permuted'    permute(parent, *axes) of a contiguous tensor (source dim i -> result dim axes[i]);
           'strided'     view_4d into a larger contiguous tensor padded by `pad` elements per dim,
                         starting `start` elements into each dim (rows and planes are spaced out).
    """
    kind: str = "contiguous"
    axes: tuple = (0, 1, 2, 3)
    pad: tuple = (0, 0, 0, 0)
    start: tuple = (0, 0, 0, 0)

    def __post_init__(self):
        if self.kind not in LAYOUT_KINDS:
            raise ValueError(f"Layout: kind must be one of {LAYOUT_KINDS}, got {self.kind!r}")
        if sorted(self.axes) != [0, 1, 2, 3]:
            raise ValueError(f"Layout: axes {self.axes} are not a permutation of 0..3")
        if any(s > p for s, p in zip(self.start, self.pad)):
            raise ValueError(f"Layout: start {self.start} beyond pad {self.pad}")

    def transposes(self, ne) -> bool:
        """Whether the built tensor of shape ne has nb0 > nb1 (ggml_is_transposed)."""
        ne = ne4(ne)
        if self.kind == "transposed":
            return ne[1] > 1
        if self.kind == "permuted":
            src = {ax: i for i, ax in enumerate(self.axes)}     # result dim -> source dim
            pne = [ne[self.axes[i]] for i in range(4)]
            nb = [int(np.prod(pne[:i])) for i in range(4)]
            return nb[src[0]] > nb[src[1]]
        return False


CONTIGUOUS = Layout()


@st.composite
def shapes(draw, min_dims: int = 1, max_dims: int = 4, min_side: int = 1, max_side: int = 5):
    """A ggml shape (ne order) of min_dims..max_dims entries, each in [min_side, max_side]."""
    n = draw(st.integers(min_dims, max_dims))
    return [draw(st.integers(min_side, max_side)) for _ in range(n)]


@st.composite
def layouts(draw, kinds=LAYOUT_KINDS, max_pad: int = 2):
    """A Layout of one of `kinds` (contiguous, permuted, transposed, strided)."""
    kind = draw(st.sampled_from(tuple(kinds)))
    if kind == "permuted":
        axes = tuple(draw(st.permutations([0, 1, 2, 3])))
        return Layout(kind, axes=axes)
    if kind == "strided":
        pad = tuple(draw(st.integers(0, max_pad)) for _ in range(4))
        if not any(pad):
            pad = (1, 0, 0, 0)
        start = tuple(draw(st.integers(0, p)) for p in pad)
        return Layout(kind, pad=pad, start=start)
    return Layout(kind)


def seeds():
    """A seed for numpy's random generator (values are drawn from it, not element by element)."""
    return st.integers(0, 2**32 - 1)


def random_values(ne, seed, low=-1.0, high=1.0, dtype=np.float32) -> np.ndarray:
    """Uniform values in [low, high) with numpy shape ne reversed (as t.numpy() shows a tensor)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(x) for x in ne)[::-1]
    if np.dtype(dtype).kind in "iu":
        return rng.integers(int(low), int(high), size=shape, dtype=np.int64).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def _new(ctx, type_, ne):
    return TN.new_tensor_impl(ctx, type_, ne, op="make_tensor")


def make_tensor(ctx, ne, layout: Layout = CONTIGUOUS, values=None, type=T.TYPE_F32, name: str = ""):
    """A tensor of shape ne laid out as `layout`, whose logical values are `values` (numpy order,
    shape ne reversed; converted to the type's numpy dtype). Non-contiguous layouts give a
    view node (PERMUTE, TRANSPOSE or VIEW) over a leaf owning the data; bytes of the leaf outside
    the view keep whatever they held (a sentinel, in a `sentinel_context`)."""
    type_ = type
    ne = ne4(ne)
    if layout.kind == "contiguous":
        t = _new(ctx, type_, ne)
    elif layout.kind == "transposed":
        parent = _new(ctx, type_, [ne[1], ne[0], ne[2], ne[3]])
        t = transpose(ctx, parent)
    elif layout.kind == "permuted":
        parent = _new(ctx, type_, [ne[layout.axes[i]] for i in range(4)])
        t = permute(ctx, parent, *layout.axes)
    else:
        pne = [n + p for n, p in zip(ne, layout.pad)]
        parent = _new(ctx, type_, pne)
        offset = sum(s * nb for s, nb in zip(layout.start, parent.nb))
        t = view_4d(ctx, parent, *ne, parent.nb[1], parent.nb[2], parent.nb[3], offset)
    assert list(t.ne) == ne, (t.ne, ne, layout)
    if name:
        TN.set_name(t, name)
    if values is not None:
        v = logical_4d(values, ne)
        if T.is_quantized(type_):       # the rows' blocks (layouts of quantized tensors keep whole rows)
            t.numpy4d()[...] = quantize(v.astype(np.float32), type_)
        else:
            t.numpy4d()[...] = v.astype(T.traits(type_).dtype)
    return t


@st.composite
def broadcastable_pairs(draw, min_dims: int = 1, max_dims: int = 4, max_side: int = 4, max_repeat: int = 3):
    """(ne_a, ne_b): ggml shapes where b can be tiled over a (every a.ne[i] a multiple of b.ne[i])."""
    ne_b = draw(shapes(min_dims, max_dims, max_side=max_side))
    n = len(ne_b)
    reps = [draw(st.integers(1, max_repeat)) for _ in range(n)]
    ne_a = [b * r for b, r in zip(ne_b, reps)]
    return ne_a, ne_b


@st.composite
def matmul_pairs(draw, op: str = "mul_mat", max_k: int = 24, max_m: int = 24, max_n: int = 24,
                 max_batch: int = 2, max_bcast: int = 3):
    """(ne_a, ne_b) for mul_mat (a [K, M, ne02, ne03], b [K, N, ne12, ne13]) or out_prod
    (a [M, K, ne02, ne03], b [N, K, ne12, ne13]), with ne12 = r2 * ne02 and ne13 = r3 * ne03."""
    K = draw(st.integers(1, max_k))
    M = draw(st.integers(1, max_m))
    N = draw(st.integers(1, max_n))
    b2, b3 = draw(st.integers(1, max_batch)), draw(st.integers(1, max_batch))
    r2, r3 = draw(st.integers(1, max_bcast)), draw(st.integers(1, max_bcast))
    if op == "mul_mat":
        return [K, M, b2, b3], [K, N, b2 * r2, b3 * r3]
    if op == "out_prod":
        return [M, K, b2, b3], [N, K, b2 * r2, b3 * r3]
    raise ValueError(f"matmul_pairs: op must be 'mul_mat' or 'out_prod', got {op!r}")


def types(allowed=(T.TYPE_F32, T.TYPE_F16, T.TYPE_I32)):
    """A tensor type code (gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32)."""
    return st.sampled_from(tuple(allowed))


@st.composite
def tensors(draw, ctx, type=None, shape=None, layout=None, low=-1.0, high=1.0):
    """A tensor in ctx with random values: `type`, `shape` (ggml ne) and `layout` are fixed values
    or strategies (default: types(), shapes(), layouts()). Float values are uniform in [low, high),
    I32 values integers in [low, high) (non-contiguous layouts give view nodes; see make_tensor)."""
    def pick(v, default):
        v = default if v is None else v
        return draw(v) if isinstance(v, st.SearchStrategy) else v
    type_ = pick(type, types())
    ne = pick(shape, shapes())
    lay = pick(layout, layouts())
    dtype = T.traits(type_).dtype
    values = random_values(ne, draw(seeds()), low, high, dtype=np.float64 if dtype.kind == "f" else np.int32)
    return make_tensor(ctx, ne, lay, values.astype(dtype), type=type_)

