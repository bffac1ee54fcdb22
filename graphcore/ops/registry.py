"""The op registry: each op is one record (name, dot symbol, kernel, planner rule, backward rule).

Op modules call `register(...)` next to the op's builder and kernel, so an op's whole story
sits in one place; dispatch tables, docs and dot symbols are derived from OPS.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from numba import cfunc, types

from ..errors import GraphError
from .. import tensor as TN

KERNEL_SIG = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

# Planner granularity: a task should cover at least this much work (elements touched, or
# multiply-adds for matrix products). Below it, splitting costs more in synchronisation
# (about 0.5 us per barrier at 2 threads here) than it saves, so the node runs on one thread.
MIN_ELEMENTS_PER_TASK = 16384
MIN_FLOPS_PER_TASK = 1 << 17

NOT_DIFFERENTIABLE = "not differentiable"   # no gradient at all (integer results: argmax; leafs)
# piecewise constant (sgn, step): the node takes a gradient like any other, but passes zeros to its
# sources, as in ggml, PyTorch and JAX, so a loss made of such ops still has f.grad
ZERO_GRADIENT = "zero gradient"
# how a backward rule's gradient for a broadcast source is summed back to the source's shape
# (graphcore.autodiff.Grads): TILES for ggml's tiling (i % ne: add, mul, repeat), BLOCKS for
# mul_mat's blocks (i // (ne12/ne02))
TILES = "tiles"
BLOCKS = "blocks"


@dataclass
class OpDef:
    """One op's record in the registry (OPS[code], BY_NAME[name]): its ggml name and symbol, kernel,
    planner rules, backward rule, numpy reference, sampler and graph-file rebuild."""
    name: str                                   # ggml's name, e.g. "ADD"
    symbol: str                                 # ggml's symbol as text, e.g. "x->y" (the dot writer escapes it)
    code: int
    kernel: Optional[Callable]                  # python source of the numba kernel; None = no compute (views)
    n_tasks: Callable                           # (node, n_threads) -> tasks
    work_size: Callable                         # (node, n_tasks) -> bytes of shared work buffer
    backward: object                            # a rule building gradient nodes, NOT_DIFFERENTIABLE, ZERO_GRADIENT
    inplace: bool                               # the kernel may run with dst aliasing src0
    n_phases: object = 1                         # int, or (node) -> int
    # numpy reference (node, srcs) -> array, for graphcore.testing (attached with @reference_of)
    reference: Optional[Callable] = field(default=None, repr=False)
    reference_nmse: float = 1e-7                 # tolerance of the kernel against the reference
    # draws a random node of this op for graphcore.testing.graphs (@sample_of)
    sample: Optional[Callable] = field(default=None, repr=False)
    # rebuilds a node of this op from a graph file through the op's builder (@rebuild_of; see graphcore.graphfile)
    rebuild: Optional[Callable] = field(default=None, repr=False)
    not_exportable: Optional[str] = field(default=None, repr=False)   # why a graph file cannot hold this op
    # (node, code, arg) -> (message, cause) or None: what a kernel's failure means (@error_detail_of)
    error_detail: Optional[Callable] = field(default=None, repr=False)
    # (node) -> the kernel function for this node, when an op has several (one per type pair, say):
    # only the variants a graph uses get compiled (ops/compiling.py), which keeps a cold start short
    variant: Optional[Callable] = field(default=None, repr=False)
    uses_blas: bool = False                      # the kernel reads BLAS sgemm's address from its record (R_BLAS)
    calls_python: bool = False                   # the kernel may call Python (a custom function): see executor
    _addresses: dict = field(default_factory=dict, repr=False)

    def kernel_function(self, node=None):
        """The Python function of node's kernel (the op's variant for node's types), or None for views."""
        if self.kernel is None:
            return None
        return self.variant(node) if self.variant is not None and node is not None else self.kernel

    def kernel_address(self, node=None) -> int:
        """Compile the node's kernel (once; cached on disk by numba) and return its C address;
        0 for ops that compute nothing (views)."""
        fn = self.kernel_function(node)
        if fn is None:
            return 0
        address = self._addresses.get(fn)
        if address is None:
            with _compile_lock:
                address = self._addresses.get(fn)
                if address is None:
                    t0 = time.perf_counter()
                    compiled = compile_cfunc(fn)
                    _keep_alive.append(compiled)
                    address = self._addresses[fn] = compiled.address
                    dt = time.perf_counter() - t0
                    missed = compiled.cache_hits == 0     # compiled now, not loaded from numba's disk cache
                    if missed:
                        _compiled_now.add(fn)
                    _log.log(logging.INFO if missed else logging.DEBUG,
                             "kernel %s (%s): %s in %.2f s", self.name, fn.__name__,
                             "compiled (cached on disk for the next run)" if missed else "loaded", dt)
        return address


def compile_cfunc(fn):
    """numba's C function of kernel `fn`, compiled, or loaded from numba's disk cache (cache=True)."""
    return cfunc(KERNEL_SIG, cache=True, error_model="numpy")(fn)


OPS: list[OpDef] = []
BY_NAME: dict[str, OpDef] = {}
_compile_lock = threading.Lock()
_log = logging.getLogger("graphcore.kernels")
_keep_alive = []
_compiled_now = set()      # kernel functions this process compiled (numba's disk cache had none)


# -- planner rules -----------------------------------------------------------------------------------
def tasks_one(node, n_threads):
    return 1


def tasks_by_rows(node, n_threads):
    """Row-parallel ops: one task per MIN_ELEMENTS_PER_TASK elements, at most one per row."""
    n = TN.nelements(node)
    return max(1, min(n_threads, TN.nrows(node), n // MIN_ELEMENTS_PER_TASK))


def no_work(node, n_tasks):
    return 0


def register(name, symbol, kernel=None, n_tasks=tasks_by_rows, work_size=no_work, backward=None,
             inplace=False, n_phases=1, variant=None, uses_blas=False, calls_python=False) -> int:
    if name in BY_NAME:
        raise RuntimeError(f"op {name} registered twice")
    op = OpDef(name, symbol, len(OPS), kernel, n_tasks if kernel is not None else tasks_one,
               work_size, backward, inplace, n_phases, variant=variant, uses_blas=uses_blas,
               calls_python=calls_python)
    OPS.append(op)
    BY_NAME[name] = op
    TN.OP_NAMES.append(name)
    return op.code


OP_NONE = register("NONE", "none", backward=NOT_DIFFERENTIABLE)


# -- testing parts, kept beside each op's kernel (graphcore.testing uses them) ------------------------------
def _attach(codes, field_name):
    """A decorator setting OpDef.<field_name> of the ops `codes` to the function it decorates."""
    def deco(fn):
        for c in codes:
            setattr(OPS[c], field_name, fn)
        return fn
    return deco


def error_detail_of(*codes):
    """Attach `fn(node, code, arg) -> (message, cause) or None` explaining a failure the ops'
    kernels record (an index out of range, a custom function raising) in the ComputeError."""
    return _attach(codes, "error_detail")


def reference_of(*codes, nmse: float | None = None):
    """Decorator: `fn(node, srcs) -> array` is the numpy reference of the ops `codes`. srcs are the
    sources' logical values, 4-D (ne3, ne2, ne1, ne0), as float32 / float16 / int32 copies (None for
    a missing source); fn computes in float64 and returns node's 4-D shape (the caller rounds to the
    node's type). `nmse`: the kernel's tolerance against it (default 1e-7, test-backend-ops')."""
    for c in codes:
        if nmse is not None:
            OPS[c].reference_nmse = float(nmse)
    return _attach(codes, "reference")


def sample_of(*codes):
    """Decorator: `fn(d) -> Tensor` draws the inputs the ops `codes` accept and builds one node, using
    the drawing helper `d` that graphcore.testing.graphs passes (d.f32(...), d.int(...), ...).
    It may raise GraphError to reject a draw."""
    return _attach(codes, "sample")


def rebuild_of(*codes, not_exportable: str | None = None):
    """Decorator: `fn(ctx, srcs, rec) -> Tensor` rebuilds a node of the ops `codes` read from a graph
    file (graphcore.graphfile) by calling the op's public builder with the imported sources `srcs` (the
    node's src list, None where it has none) and the parameters in `rec`: rec.op_params (int32 slots),
    rec.f32(i) / rec.i32(i), rec.ne, rec.nb, rec.type, rec.inplace (the file says the result is a view
    of a source's bytes: use the _inplace form) and rec.like() (a data-less tensor of the node's shape,
    for builders that take a shape from a tensor). The importer then checks the result's type, ne, nb,
    op_params, sources and view equal the file's, so the op's shape rule guards every imported node.
    `not_exportable`: why graph_export must refuse the op (the adapter is then never called)."""
    for c in codes:
        OPS[c].not_exportable = not_exportable
    return _attach(codes, "rebuild")


def rebuild_by(build, build_inplace=None, *, shaped: bool = False):
    """The rebuild adapter of an op whose builder takes (ctx, *srcs), or with `shaped` (ctx, *srcs,
    a tensor of the result's shape): build_inplace when the file says the node's result is a view
    of its source (an _inplace form), build otherwise."""
    def rebuild(ctx, srcs, rec):
        extra = (rec.like(),) if shaped else ()
        return (build_inplace if rec.inplace and build_inplace is not None else build)(ctx, *srcs, *extra)
    return rebuild


def op_name(code: int) -> str:
    """The op's name, e.g. "MUL_MAT" for OP_MUL_MAT (ggml_op_name); "<op N>" for an unknown code."""
    return TN.op_name_of(code)


def op_symbol(code: int) -> str:
    """The op's symbol in graph pictures, e.g. "x*y" for OP_MUL (ggml_op_symbol); "?" for an unknown code."""
    return OPS[code].symbol if 0 <= code < len(OPS) else "?"


# -- building nodes ------------------------------------------------------------------------------------
def new_node(ctx, op: int, type_: int, ne, srcs, params=None, view_of=None, view_offs=0,
             name: str | None = None, nb=None):
    """A tensor computed by `op` from `srcs`. With `view_of`, the result shares that tensor's data
    (in-place ops and view ops); `params` go to op_params (ints, or floats stored as their bits)."""
    t = TN.new_tensor_impl(ctx, type_, ne, view_of, view_offs, op=OPS[op].name.lower(), nb=nb)
    t._op = op
    t._src = TN.ReadOnlyList(srcs)
    # read-only bytes (kernels trust them: addresses, sizes), replaced whole by set_op_params only
    t._op_params = _NO_PARAMS if not params else _frozen(_param_words(op, params))
    if view_of is not None:
        t.name = f"{view_of.name} ({name or 'view'})"[:TN.MAX_NAME - 1] if view_of.name else ""
    return t


def _param_words(op: int, params) -> list:
    """params (ints, or floats stored as their float32 bits) as int32 words."""
    if len(params) > TN.MAX_OP_PARAMS:
        raise GraphError(f"{op_name(op)}: too many op params ({len(params)})")
    words = []
    for i, p in enumerate(params):
        if isinstance(p, (float, np.floating)):
            try:
                words.append(_F32_AS_I32.unpack(_F32_AS_I32_SRC.pack(p))[0])
            except OverflowError:       # beyond float32: inf, as numpy converts it
                words.append(int(np.array([p], dtype=np.float32).view(np.int32)[0]))
        else:
            if not -2**31 <= int(p) < 2**31:
                raise GraphError(f"{op_name(op)}: op param {i} = {int(p)} does not fit in int32")
            words.append(int(p))
    return words


def _frozen(words) -> np.ndarray:
    # over immutable bytes: not even flags.writeable = True can reopen them
    return np.frombuffer(_PARAMS.pack(*words, *(0,) * (TN.MAX_OP_PARAMS - len(words))), dtype=np.int32)


_F32_AS_I32, _F32_AS_I32_SRC = struct.Struct("<i"), struct.Struct("<f")
_PARAMS = struct.Struct(f"<{TN.MAX_OP_PARAMS}i")
_NO_PARAMS = _frozen([])


def set_op_params(t, params):
    """Store params (ints or floats; floats as float32 bits) in the op_params slots."""
    w = t.op_params.tolist()        # op_params are read-only once built: replace them whole
    words = _param_words(t.op, params)
    w[:len(words)] = words
    if t.op_params.flags.writeable:
        t._op_params = np.array(w, dtype=np.int32)
    else:
        t._op_params = _frozen(w)


def param_f32(t, i) -> float:
    return float(t.op_params[i:i + 1].view(np.float32)[0])


def param_i32(t, i) -> int:
    return int(t.op_params[i])


def i64_params(v: int) -> list:
    """An int64 as the two int32 op_params slots ggml would memcpy it into (byte offsets past 2 GiB)."""
    return [int(x) for x in np.array([v], dtype=np.int64).view(np.int32)]


def param_i64(t, i) -> int:
    """The int64 stored by i64_params in slots i, i+1 of t.op_params (t: a tensor or a file record)."""
    return int(np.asarray(t.op_params[i:i + 2], dtype=np.int32).view(np.int64)[0])


@reference_of(OP_NONE)
def _none_reference(node, srcs):
    """A leaf or parameter: its value is what its memory holds (None tells the interpreter so)."""
    return None


@rebuild_of(OP_NONE)
def _none_rebuild(ctx, srcs, rec):
    """A leaf or parameter: a new tensor of the record's type, shape and strides (the importer fills
    in its bytes, or makes it a view of the tensor whose bytes it shares)."""
    return TN.new_tensor_impl(ctx, rec.type, rec.ne, op="graph_import", nb=rec.nb)
