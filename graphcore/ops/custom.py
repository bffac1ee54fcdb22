"""Custom ops: map_custom1, map_custom2, map_custom3 (and their _inplace forms).

    gc.map_custom1(ctx, a, fun, n_tasks, userdata=None)
    gc.map_custom2(ctx, a, b, fun, n_tasks, userdata=None)
    gc.map_custom3(ctx, a, b, c, fun, n_tasks, userdata=None)

The result has a's type and shape (a view of a for the _inplace forms). `fun` is called by the
executor like any kernel, on n_tasks threads (gc.N_TASKS_MAX: as many as the plan has), as

    fun(dst, a, [b, c,] ith, nth)          or, with userdata, fun(dst, a, [b, c,] ith, nth, userdata)

with ggml's ith/nth: thread ith of nth does its share (the tasks run at the same time). dst, a,
b, c are 4-D numpy arrays indexed [i3, i2, i1, i0] over the tensors' memory (any strides), as
Tensor.numpy4d() shows them; F32 as float32, I32 as int32, F16 as uint16 bits in compiled code
(float16 in Python).

`fun` must be a numba-jitted function (@numba.njit): it is compiled for those array types when
the node is built (a typing error is a gc.GraphError then) and called from compiled code with the
GIL released. userdata, for a jitted fun, must be an int, float, bool or a tuple of them (it is
compiled in as a constant). An exception raised inside fun makes graph_compute raise
gc.ComputeError.

A plain Python function is refused unless `allow_python=True`: it is then called from the
executor's threads through a C callback that takes the GIL (so the tasks run one at a time); any
userdata is passed through, and an exception it raises becomes the cause of the ComputeError.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np
from numba import cfunc
from numba.core.registry import CPUDispatcher

from .. import kernel as K
from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from ..kernel import ERR_CUSTOM, P_BASE, R_ERR, R_ERRARG, fail, record, view_f32, view_i32, view_u16
from ..native import call_kernel
from .args import boolean, integer
from .common import inplace_of, inplace_view, row_index
from .refs import shape4
from .registry import KERNEL_SIG, error_detail_of, new_node, reference_of, register, sample_of, set_op_params
from .registry import rebuild_of

N_TASKS_MAX = -1     # ggml's GGML_N_TASKS_MAX: one task per thread of the plan

_TYPES = (T.TYPE_F32, T.TYPE_F16, T.TYPE_I32)
# op_params: [0..1] address of the C function running fun (int64), [2] n_tasks, [3] the function's id


# -- the kernel of all three ops: call the per-function wrapper whose address is in op_params -----------------
def _custom_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    call_kernel(r[P_BASE], rec, ith, nth, phase, wdata, wsize)


def _custom_tasks(node, n_threads):
    n = int(node.op_params[2])
    return n_threads if n == N_TASKS_MAX else max(1, min(n, n_threads))


MAP_CUSTOM1 = register("MAP_CUSTOM1", "custom(x)", _custom_kernel, n_tasks=_custom_tasks, inplace=True,
                       calls_python=True)
MAP_CUSTOM2 = register("MAP_CUSTOM2", "custom(x,y)", _custom_kernel, n_tasks=_custom_tasks, inplace=True,
                       calls_python=True)
MAP_CUSTOM3 = register("MAP_CUSTOM3", "custom(x,y,z)", _custom_kernel, n_tasks=_custom_tasks, inplace=True,
                       calls_python=True)


@reference_of(MAP_CUSTOM1, MAP_CUSTOM2, MAP_CUSTOM3)
def _custom_reference(node, srcs):
    # the user's own function called directly on numpy arrays (a jitted one through its dispatcher,
    # so with numba's arithmetic), as one task (ith 0 of nth 1): a result that depends on the split is
    # the function's bug. dst starts as src0's values in place, as zeros otherwise (a function must
    # write every element). What this checks is the op's plumbing: views, strides, tasks, aliasing.
    w = _by_ident[int(node.op_params[3])]
    fun = w.fun
    arrays = [np.array(s) for s in srcs]
    if not w.python:            # compiled code sees F16 as uint16 bits
        arrays = [x.view(np.uint16) if x.dtype == np.float16 else x for x in arrays]
    if node.view_src is not None:       # the _inplace forms: dst is src0's memory
        dst = arrays[0]
    else:
        dst = np.zeros(shape4(node), dtype=arrays[0].dtype)
    extra = () if w.keep[1] is None else (w.keep[1],)
    fun(dst, *arrays, 0, 1, *extra)
    return dst.view(np.float16) if dst.dtype == np.uint16 else dst


def _affine_rows(dst, a, ith, nth):
    """dst = 2 a + 1, rows split between the tasks (a map_custom1 function, Python or jitted)."""
    ne3, ne2, ne1 = dst.shape[0], dst.shape[1], dst.shape[2]
    for r in range(ith, ne3 * ne2 * ne1, nth):
        i1, i2, i3 = row_index(r, ne1, ne2)
        for i0 in range(dst.shape[3]):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0] * 2 + 1


def _copy_all(dst, a, ith, nth):
    """dst = a for any type, on task 0 only."""
    if ith == 0:
        dst[...] = a


def _mul_rows(dst, a, b, ith, nth):
    ne3, ne2, ne1 = dst.shape[0], dst.shape[1], dst.shape[2]
    for r in range(ith, ne3 * ne2 * ne1, nth):
        i1, i2, i3 = row_index(r, ne1, ne2)
        dst[i3, i2, i1] = a[i3, i2, i1] * b[i3, i2, i1]


def _fma_rows(dst, a, b, c, ith, nth, k):
    ne3, ne2, ne1 = dst.shape[0], dst.shape[1], dst.shape[2]
    for r in range(ith, ne3 * ne2 * ne1, nth):
        i1, i2, i3 = row_index(r, ne1, ne2)
        dst[i3, i2, i1] = a[i3, i2, i1] + k * b[i3, i2, i1] * c[i3, i2, i1]


_jitted = {}


def _sample_fun(d, fun):
    """fun as a plain Python function (allow_python) or, sometimes, jitted (compiled once per process)."""
    if d.coin(25):
        if fun not in _jitted:
            from numba import njit
            _jitted[fun] = njit(cache=True)(fun)
        return _jitted[fun], {}
    return fun, {"allow_python": True}


@sample_of(MAP_CUSTOM1)
def _map_custom1_sample(d):
    n_tasks = d.choice([1, 2, N_TASKS_MAX])
    if d.coin(30):
        a = d.tensor(d.any_type())
        fun, kw = _copy_all, {"allow_python": True}
    else:
        a = d.f32()
        fun, kw = _sample_fun(d, _affine_rows)
    if d.inplace(a):
        return map_custom1_inplace(d.ctx, a, fun, n_tasks, **kw)
    return map_custom1(d.ctx, a, fun, n_tasks, **kw)


@sample_of(MAP_CUSTOM2)
def _map_custom2_sample(d):
    a = d.f32()
    b = d.f32(a.ne)
    fun, kw = _sample_fun(d, _mul_rows)
    build = map_custom2_inplace if d.inplace(a, b) else map_custom2
    return build(d.ctx, a, b, fun, d.choice([1, 2, N_TASKS_MAX]), **kw)


@sample_of(MAP_CUSTOM3)
def _map_custom3_sample(d):
    a = d.f32()
    b, c = d.f32(a.ne), d.f32(a.ne)
    fun, kw = _sample_fun(d, _fma_rows)
    build = map_custom3_inplace if d.inplace(a, b, c) else map_custom3
    return build(d.ctx, a, b, c, fun, d.choice([1, 2, N_TASKS_MAX]), d.choice([0.5, -2.0]), **kw)


# -- wrappers: one compiled C function per (fun, operand types, userdata) ----------------------------------------
class _Wrapper:
    __slots__ = ("ident", "address", "keep", "fun", "python")

    def __init__(self, ident, address, keep, fun, python):
        self.ident, self.address, self.keep, self.fun, self.python = ident, address, keep, fun, python


_lock = threading.Lock()
_wrappers: dict = {}            # key -> _Wrapper (kept for the life of the process: nodes hold raw addresses)
_by_ident: list = []            # ident -> _Wrapper
_failures: dict = {}            # ident -> the exception a Python fun raised last

_VIEW = {T.TYPE_F32: view_f32, T.TYPE_F16: view_u16, T.TYPE_I32: view_i32}


def _fun_name(fun):
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


def _jit_wrapper(op, fun, types_, userdata, ident):
    """A cfunc with the kernel signature that builds the 4-D views and calls the jitted fun."""
    n = len(types_)
    views = ", ".join(f"v{s}(r, {s})" for s in range(n))
    extra = ", ud" if userdata is not None else ""
    src = (f"def make(fun, {', '.join(f'v{s}' for s in range(n))}, ud, fail, record, ERR, IDENT):\n"
           f"    def wrapper(rec, ith, nth, phase, wdata, wsize):\n"
           f"        r = record(rec)\n"
           f"        try:\n"
           f"            fun({views}, ith, nth{extra})\n"
           f"        except Exception:\n"
           f"            fail(r, ERR, IDENT)\n"
           f"    return wrapper\n")
    ns: dict = {}
    exec(compile(src, f"<graphcore map_custom wrapper for {_fun_name(fun)}>", "exec"), ns)
    py = ns["make"](fun, *[_VIEW[t] for t in types_], userdata, fail, record, ERR_CUSTOM, ident)
    try:
        compiled = cfunc(KERNEL_SIG, error_model="numpy")(py)
    except Exception as e:  # typing errors in the user's function, unsupported userdata, ...
        tnames = ", ".join(T.type_name(t).upper() for t in types_)
        raise GraphError(f"{op}: could not compile {_fun_name(fun)} for 4-D arrays of types ({tnames}) "
                         f"called as fun(dst, {', '.join('abc'[:n - 1])}, ith, nth{extra}): "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    return compiled.address, compiled


_CB_TYPE = ctypes.CFUNCTYPE(None, *([ctypes.c_int64] * 6))


def _arrays_of(rec, r, n):
    """The node's dst and sources as numpy arrays ([i3, i2, i1, i0]) made from the tensors
    themselves, so an array kept past the compute keeps the arena alive (never released memory)."""
    i = int(r[K.R_NODE])
    nodes = K.RUNNING[rec - i * K.REC_LEN * 8]       # the running compute's graph (executor)
    node = nodes[i]
    return [t.numpy4d() for t in (node, *node.src[:n - 1])]


def _python_wrapper(fun, n, userdata, ident):
    """A C callback (ctypes, takes the GIL) with the kernel signature that calls a Python fun."""
    args_extra = () if userdata is None else (userdata,)

    def trampoline(rec, ith, nth, phase, wdata, wsize):
        r = np.ctypeslib.as_array((ctypes.c_int64 * K.REC_LEN).from_address(rec))
        try:
            fun(*_arrays_of(rec, r, n), ith, nth, *args_extra)
        except BaseException as e:  # noqa: BLE001 - reported through the executor (KeyboardInterrupt re-raised)
            _failures[ident] = e
            r[R_ERRARG] = ident
            r[R_ERR] = ERR_CUSTOM

    cb = _CB_TYPE(trampoline)
    return ctypes.cast(cb, ctypes.c_void_p).value, cb


def _userdata_ok_for_jit(u):
    if isinstance(u, (bool, int, float, np.integer, np.floating)):
        return True
    return isinstance(u, tuple) and all(_userdata_ok_for_jit(x) for x in u)


def _wrapper(op, fun, srcs_types, userdata, allow_python):
    jit = isinstance(fun, CPUDispatcher)
    if not jit:
        if not callable(fun):
            raise GraphError(f"{op}: fun must be a numba-jitted function, got {type(fun).__name__} {fun!r}")
        if not allow_python:
            raise GraphError(f"{op}: fun {_fun_name(fun)} is a plain Python function; decorate it with "
                             f"@numba.njit so the executor can run it without the GIL, or pass "
                             f"allow_python=True to call it from Python under the GIL (its tasks then run "
                             f"one at a time)")
    elif userdata is not None and not _userdata_ok_for_jit(userdata):
        raise GraphError(f"{op}: userdata for a jitted fun must be an int, float, bool or a tuple of them "
                         f"(it is compiled in as a constant), got {type(userdata).__name__}; close over "
                         f"arrays in your own jitted function, or use allow_python=True")
    try:
        ud_key = ("ud", userdata) if userdata is None or jit else ("id", id(userdata))
        hash(ud_key)
    except TypeError:
        ud_key = ("id", id(userdata))
    key = (jit, fun, tuple(srcs_types) if jit else len(srcs_types), ud_key)
    with _lock:
        w = _wrappers.get(key)
        if w is not None:
            return w
        ident = len(_by_ident)
        if jit:
            address, keep = _jit_wrapper(op, fun, srcs_types, userdata, ident)
        else:
            address, keep = _python_wrapper(fun, len(srcs_types), userdata, ident)
        w = _Wrapper(ident, address, (keep, userdata), fun, not jit)
        _wrappers[key] = w
        _by_ident.append(w)
        return w


@error_detail_of(MAP_CUSTOM1, MAP_CUSTOM2, MAP_CUSTOM3)
def _describe_failure(node, code, arg):
    if code != ERR_CUSTOM or not 0 <= arg < len(_by_ident):
        return None
    w = _by_ident[arg]
    if w.python:
        e = _failures.pop(arg, None)
        what = f"{type(e).__name__}: {e}" if e is not None else "an exception"
        return f"custom function {_fun_name(w.fun)} raised {what}", e
    return (f"custom function {_fun_name(w.fun)} raised an exception in compiled code (numba does not "
            f"keep its message; call it from Python, or build the node with a plain Python function and "
            f"allow_python=True, to see it)", None)



def _map_custom(ctx, op_code, op, srcs, fun, n_tasks, userdata, inplace, allow_python):
    TN.check_tensor(op, *srcs)
    for s in srcs:
        if s.type not in _TYPES:
            raise GraphError(f"{op}: unsupported type {T.type_name(s.type)} for {TN.describe(s)}")
    n_tasks = integer(op, "n_tasks", n_tasks)
    if n_tasks != N_TASKS_MAX and n_tasks <= 0:
        raise GraphError(f"{op}: n_tasks must be > 0 or gc.N_TASKS_MAX (-1), got {n_tasks}")
    allow_python = boolean(op, "allow_python", allow_python)
    a = srcs[0]
    TN._check_ctx(op, ctx)
    w = _wrapper(op, fun, [a.type] + [s.type for s in srcs], userdata, allow_python)
    if inplace:
        t = inplace_view(ctx, op_code, a, srcs)
    else:
        t = new_node(ctx, op_code, a.type, a.ne, srcs)
    set_op_params(t, [*np.array([w.address], dtype=np.int64).view(np.int32), n_tasks, w.ident])
    return t


def map_custom1(ctx, a, fun, n_tasks: int = N_TASKS_MAX, userdata=None, *, allow_python: bool = False):
    """ggml_map_custom1: a node computed by fun(dst, a, ith, nth) (see the module's docs)."""
    return _map_custom(ctx, MAP_CUSTOM1, "map_custom1", [a], fun, n_tasks, userdata, False, allow_python)


@inplace_of(map_custom1)
def map_custom1_inplace(ctx, a, fun, n_tasks: int = N_TASKS_MAX, userdata=None, *, allow_python: bool = False):
    return _map_custom(ctx, MAP_CUSTOM1, "map_custom1_inplace", [a], fun, n_tasks, userdata, True, allow_python)


def map_custom2(ctx, a, b, fun, n_tasks: int = N_TASKS_MAX, userdata=None, *, allow_python: bool = False):
    """ggml_map_custom2: a node computed by fun(dst, a, b, ith, nth)."""
    return _map_custom(ctx, MAP_CUSTOM2, "map_custom2", [a, b], fun, n_tasks, userdata, False, allow_python)


@inplace_of(map_custom2)
def map_custom2_inplace(ctx, a, b, fun, n_tasks: int = N_TASKS_MAX, userdata=None, *,
                        allow_python: bool = False):
    return _map_custom(ctx, MAP_CUSTOM2, "map_custom2_inplace", [a, b], fun, n_tasks, userdata, True,
                       allow_python)


def map_custom3(ctx, a, b, c, fun, n_tasks: int = N_TASKS_MAX, userdata=None, *, allow_python: bool = False):
    """ggml_map_custom3: a node computed by fun(dst, a, b, c, ith, nth)."""
    return _map_custom(ctx, MAP_CUSTOM3, "map_custom3", [a, b, c], fun, n_tasks, userdata, False, allow_python)


@inplace_of(map_custom3)
def map_custom3_inplace(ctx, a, b, c, fun, n_tasks: int = N_TASKS_MAX, userdata=None, *,
                        allow_python: bool = False):
    return _map_custom(ctx, MAP_CUSTOM3, "map_custom3_inplace", [a, b, c], fun, n_tasks, userdata, True,
                       allow_python)


@rebuild_of(MAP_CUSTOM1, MAP_CUSTOM2, MAP_CUSTOM3, not_exportable="its result is computed by a user "
            "function (numba or Python), which a graph file cannot hold")
def _custom_rebuild(ctx, srcs, rec):
    raise GraphError("map_custom: a custom op cannot be read from a graph file (it calls a user function)")
