"""A pure-numpy interpreter of graphcore graphs, independent of the numba kernels.

Every op keeps a numpy reference beside its kernel (`@reference_of(OP)` in its module; see
graphcore.ops.registry). The interpreter walks a graph's nodes in execution order and runs each
node's reference on its sources' values. Backward graphs are ordinary nodes, so it evaluates
them too.

Two models of what a tensor's value is:

- ``mode="memory"`` (default): the graph's memory, byte for byte. The interpreter copies every
  arena the graph touches into a shadow arena and reads and writes each tensor through its own
  ne/nb/offset there, exactly where the executor would. View ops (RESHAPE, VIEW, PERMUTE,
  TRANSPOSE) compute nothing: they see the bytes of their source, as in the engine. In-place ops
  and cpy write into the bytes of the tensor they alias, so a later reader of those bytes sees
  the new values in both worlds. Results are rounded to the node's type (F32, F16, I32) when they
  are stored, as the kernels store them. This is sound for any graph the executor runs.
- ``mode="float64"``: values, not bytes. Every node keeps its exact float64 result (no rounding
  to float32); views are computed from their source's values by their references. Used for
  finite differences (graphcore.testing.assert_gradients_close). It refuses graphs where a node
  writes into bytes that something read later sees through another tensor (in-place ops and cpy
  whose aliasing matters), since values cannot model that.

    ev = evaluate(graph)                  # or evaluate([t1, t2]): the tensors and their ancestors
    ev[node]                              # the node's value right after it was computed (4-D)
    ev.final(t)                           # what t's memory holds at the end (memory mode)
"""
from __future__ import annotations

import numpy as np

from .. import quant_rows as QR
from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..graph import Graph, post_order
from ..ops.refs import float_to_i32
from ..ops.registry import OP_NONE, OPS

__all__ = ["evaluate", "Evaluation", "Interpreter", "reference_value", "to_type", "is_view_op", "writes_alias",
           "byte_region", "overlaps"]


def is_view_op(node) -> bool:
    """A node that computes nothing: a leaf or parameter (NONE) or a view op."""
    return OPS[node.op].kernel is None


def writes_alias(node) -> bool:
    """A node whose kernel writes into another tensor's bytes (in-place ops, cpy)."""
    return node.view_src is not None and OPS[node.op].kernel is not None


def byte_region(t):
    """(id of the tensor owning t's bytes, first byte, one past the last)."""
    if t.view_src is not None:
        return id(t.view_src), t.view_offs, t.view_offs + TN.nbytes(t)
    return id(t), 0, TN.nbytes(t)


def overlaps(a, b) -> bool:
    oa, sa, ea = byte_region(a)
    ob, sb, eb = byte_region(b)
    return oa == ob and sa < eb and sb < ea


def to_type(values, type_: int) -> np.ndarray:
    """Logical values stored as type_ the way kernels store them (float64 -> float32 rounds to
    nearest, float -> I32 truncates; see graphcore.ops.refs.convert)."""
    v = np.asarray(values)
    with np.errstate(all="ignore"):
        if T.is_quantized(type_):     # what the blocks hold: blck_size consecutive elements a block
            return values4d_of(type_, QR.quantize(v.astype(np.float32).reshape(v.shape[:-1] + (-1, T.blck_size(type_))),
                                                  type_).reshape(v.shape[:-1] + (-1,)))
        if type_ == T.TYPE_F32:
            return v.astype(np.float32)
        if type_ == T.TYPE_F16:
            return v.astype(np.float16)
        if type_ == T.TYPE_I32:
            return v.astype(np.int32) if v.dtype.kind in "iu" else float_to_i32(v)
    raise GraphError(f"reference: no numpy model for type {T.type_name(type_)}")


def values4d_of(type_: int, raw) -> np.ndarray:
    """Logical values of a tensor's 4-D numpy view `raw`: itself, or for a quantized type its rows of
    blocks (bytes) dequantized to float32."""
    return QR.dequantize(raw, type_) if T.is_quantized(type_) else raw


def values4d(t) -> np.ndarray:
    """t's logical values, 4-D (ne3, ne2, ne1, ne0): numpy4d(), dequantized for a quantized type."""
    return values4d_of(t.type, t.numpy4d())


def reference_value(node, srcs, round: bool = True):
    """Run node's op reference on source values `srcs` (4-D arrays, None for a missing source).
    Returns the node's 4-D value, rounded to its type unless round=False, or None when the op's
    value is not a function of its sources' values (a leaf, or a view that reaches outside its
    source's elements)."""
    op = OPS[node.op]
    if op.reference is None:
        raise NotImplementedError(f"op {op.name} has no numpy reference (see graphcore.ops.registry.reference_of)")
    with np.errstate(all="ignore"):
        r = op.reference(node, srcs)
    if r is None:
        return None
    r = np.asarray(r)
    shape = tuple(int(x) for x in node.ne[::-1])
    if r.shape != shape:
        raise AssertionError(f"the reference of {op.name} returned shape {r.shape} for node '{node.name}' "
                             f"ne={list(node.ne)} (expected {shape})")
    return to_type(r, node.type) if round else r


def _visit_order(roots):
    """(nodes, leafs) reachable from roots, in ggml's visit order (depth first, src[0] first), as
    build_forward_expand orders them, without touching the tensors."""
    nodes, leafs = [], []
    for t in post_order(roots, set()):
        (leafs if t.op == OP_NONE and t.grad is None else nodes).append(t)
    return nodes, leafs


class _Memory:
    """Shadow copies of the arenas some tensors live in."""

    def __init__(self):
        self._arenas = {}       # id(arena array) -> (arena, shadow copy)

    def add(self, t):
        if not t.has_data:
            raise GraphError(f"reference: {TN.describe(t)} has no data (no_alloc context)")
        key = id(t._buf)
        if key not in self._arenas:
            self._arenas[key] = (t._buf, t._buf.copy())

    def view(self, t) -> np.ndarray:
        self.add(t)
        buf = self._arenas[id(t._buf)][1]
        shape, strides = TN._np_layout(t, TN.MAX_DIMS)
        return np.ndarray(shape=shape, dtype=T.traits(t.type).dtype, buffer=buf, offset=t._offs, strides=strides)

    def read(self, t) -> np.ndarray:
        """t's logical values in the shadow memory (a copy)."""
        return np.array(values4d_of(t.type, self.view(t)))

    def write(self, t, r):
        """Store a node's reference value r (unrounded for a quantized node: the blocks are made here)."""
        if T.is_quantized(t.type):
            r = np.asarray(r, dtype=np.float32)
            self.view(t)[...] = QR.quantize(r.reshape(r.shape[:-1] + (-1, T.blck_size(t.type))), t.type).reshape(
                self.view(t).shape)
        else:
            self.view(t)[...] = r


class Evaluation:
    """The result of evaluate(): per node, its value right after it was computed."""

    def __init__(self, mode, nodes, leafs, values, memory=None, initial=None):
        self.mode = mode
        self.nodes, self.leafs = nodes, leafs
        self._values = values               # id(node) -> 4-D array
        self._memory = memory
        self._initial = initial or {}

    def __getitem__(self, t) -> np.ndarray:
        v = self._values.get(id(t))
        if v is None:
            v = self._initial.get(id(t))
        if v is None:
            if self._memory is None:
                raise KeyError(f"{TN.describe(t)} is not part of this evaluation")
            v = self._memory.read(t)
        return v

    def final(self, t) -> np.ndarray:
        """What t's bytes hold at the end (memory mode), as t's 4-D array."""
        if self._memory is None:
            return self[t]
        return self._memory.read(t)


class Interpreter:
    """A graph (or the ancestors of some tensors) prepared for repeated evaluation."""

    def __init__(self, g, mode: str = "memory"):
        if mode not in ("memory", "float64"):
            raise ValueError(f"reference: mode must be 'memory' or 'float64', got {mode!r}")
        self.mode = mode
        if isinstance(g, Graph):
            self.nodes, self.leafs, self.roots = list(g.nodes), list(g.leafs), list(g.nodes[-1:])
        else:
            roots = [g] if isinstance(g, TN.Tensor) else list(g)
            for r in roots:
                TN.check_tensor("reference.evaluate", r)
            self.roots = roots
            self.nodes, self.leafs = _visit_order(roots)
        if mode == "float64":
            self._check_values_model()

    def _check_values_model(self):
        """float64 mode holds values, not bytes: refuse a graph where a tensor is read after a node
        wrote over its bytes through another tensor (its bytes then differ from its value)."""
        pos = {id(n): i for i, n in enumerate(self.nodes)}
        writers = [(i, n) for i, n in enumerate(self.nodes) if writes_alias(n)]
        if not writers:
            return
        reads = [(p, s) for p, n in enumerate(self.nodes) for s in n.src if s is not None]
        reads += [(len(self.nodes), r) for r in self.roots]
        for p, s in reads:
            ps = pos.get(id(s), -1)
            for w, n in writers:
                if ps < w < p and overlaps(s, n):
                    raise GraphError(f"reference (float64 mode): {TN.describe(s)} is read after node {w} "
                                     f"({OPS[n.op].name} '{n.name}') wrote over its bytes; evaluate this graph "
                                     f"in memory mode")

    def run(self, values=None) -> Evaluation:
        """Evaluate. `values` ({tensor: array}) replaces the values of leaves, parameters or nodes
        (a node given a value is not computed): float64 mode only, numpy order (ne reversed)."""
        if self.mode == "memory":
            if values:
                raise ValueError("reference: values= overrides need mode='float64'")
            return self._run_memory()
        return self._run_float64(values or {})

    def _run_memory(self) -> Evaluation:
        mem = _Memory()
        for t in self.leafs + self.nodes:
            mem.add(t)
        out = {}
        for node in self.nodes:
            if not is_view_op(node):
                srcs = [None if s is None else mem.read(s) for s in node.src]
                mem.write(node, reference_value(node, srcs, round=not T.is_quantized(node.type)))
            out[id(node)] = mem.read(node)
        return Evaluation("memory", self.nodes, self.leafs, out, memory=mem)

    @staticmethod
    def _leaf_value(t, values):
        v = values.get(t)
        if v is None:
            v = values4d(t)
        v = np.asarray(v).reshape(tuple(t.ne[::-1]))
        return v.astype(np.int64) if v.dtype.kind in "iu" else v.astype(np.float64)

    def _run_float64(self, values) -> Evaluation:
        vals = {}
        initial = {}
        for t in self.leafs:
            initial[id(t)] = vals[id(t)] = self._leaf_value(t, values)
        for node in self.nodes:
            if node.op == OP_NONE or node in values:
                initial[id(node)] = vals[id(node)] = self._leaf_value(node, values)
                continue
            srcs = [None if s is None else vals[id(s)] for s in node.src]
            r = reference_value(node, srcs, round=False)
            if r is None:
                raise GraphError(f"reference (float64 mode): the value of {OPS[node.op].name} node '{node.name}' "
                                 f"is not a function of its source's values (a view reaching outside its "
                                 f"source's elements); evaluate this graph in memory mode")
            if node.type == T.TYPE_I32:
                vals[id(node)] = np.asarray(r).astype(np.int64)
            else:
                vals[id(node)] = np.asarray(r, dtype=np.float64)
        return Evaluation("float64", self.nodes, self.leafs, vals, initial=initial)


def evaluate(g, mode: str = "memory", values=None) -> Evaluation:
    """Evaluate a Graph, or a tensor (or list of tensors) with its ancestors, with the numpy
    references: see the module's docs for the two modes. The graph's own memory is not touched."""
    return Interpreter(g, mode).run(values)
