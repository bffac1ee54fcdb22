"""The executor: one compiled, nogil node loop run by every thread (graphcore.workers: the loop,
its barrier, the worker threads that live in compiled code).

Failures: a kernel that fails records it in its node record, and every thread leaves the loop at
the same barrier (see workers.py); graph_compute then raises the node's ComputeError, and the
graph can be computed again.

Debugging (`callback`, `check_finite`, `CPlan.abort_callback`) steps through the graph one node
at a time from Python; without them the compiled loop runs the whole graph in one call.
"""
from __future__ import annotations

import os

import numpy as np

from . import context as CTX
from . import kernel as K
from . import tensor as TN
from . import types as T
from . import workers as W
from .errors import ComputeError, GraphError, NonFiniteError
from .graph import Graph
from .ops.registry import OPS, op_name
from .planner import CPlan, graph_plan, lowered

_moves, _frees, RUNNING = TN._moves, CTX._frees, K.RUNNING     # read on every compute

GGML_STATUS_SUCCESS = 0
STATUS_SUCCESS = 0
STATUS_ABORTED = 1     # ggml's GGML_STATUS_ABORTED: a callback asked to stop

# GRAPHCORE_CHECK_FINITE=1 turns on check_finite for every compute (read once, at import)
CHECK_FINITE = os.environ.get("GRAPHCORE_CHECK_FINITE", "").strip().lower() not in ("", "0", "false", "no")

def _check_plan(g, cplan: CPlan):
    if not isinstance(g, Graph):
        raise GraphError(f"graph_compute: expected a Graph, got {type(g).__name__}")
    if not isinstance(cplan, CPlan):
        raise GraphError(f"graph_compute: expected a CPlan from graph_plan, got {type(cplan).__name__}")
    if cplan._graph is not g or cplan._version != g._version or cplan._n_nodes != len(g._nodes):
        raise GraphError("graph_compute: the graph changed since it was planned (or the plan is for "
                         "another graph); call graph_plan again")
    if cplan._work_size > 0:
        wd = cplan.work_data
        if wd is None:
            raise GraphError(f"graph_compute: the plan needs a work buffer of {cplan.work_size} bytes; "
                             f"set cplan.work_data = numpy.empty({cplan.work_size}, numpy.uint8)")
        if not isinstance(wd, np.ndarray) or not wd.flags.c_contiguous or not wd.flags.writeable:
            raise GraphError("graph_compute: cplan.work_data must be a writable contiguous numpy array")
        if wd.nbytes < cplan.work_size:
            raise GraphError(f"graph_compute: cplan.work_data holds {wd.nbytes} bytes, the plan needs "
                             f"{cplan.work_size}")


def graph_compute(g, cplan: CPlan, callback=None, check_finite: bool | None = None) -> int:
    """ggml_graph_compute: run every node of g on cplan.n_threads threads. Returns STATUS_SUCCESS,
    or STATUS_ABORTED when `callback` or cplan.abort_callback asked to stop; raises ComputeError
    when a kernel fails (every thread stops at the same node; the graph can be computed again).

    callback(node_index, tensor), called after each node, may inspect the node's values; returning
    True stops the compute (ggml's eval callback). check_finite (default: the environment variable
    GRAPHCORE_CHECK_FINITE) raises NonFiniteError at the first node whose result holds a NaN or an
    inf. Both step through the graph node by node (slower); without them the compiled loop runs the
    whole graph in one call, which training loops rely on.

    Thread safety: computes of one graph are serialized (a lock per graph); computes of different
    graphs may run at the same time from different Python threads, as long as they do not write
    the same tensors or share a work_data buffer you set yourself. A compute started from inside a
    custom function of a running compute runs on one thread, and raises GraphError if its graph is
    the one being computed."""
    try:
        kept, wd = cplan._ready, cplan.work_data
    except AttributeError:      # not a CPlan: _ready says so
        kept = wd = None
    if (kept is None or kept[0] is not g or kept[1] != g._version or kept[2] != _moves[0]
            or kept[3] != _frees[0] or kept[4] is not wd):
        kept = _ready(g, cplan)
    low, wdata, wsize, most, n = kept[5:]
    if n == 0:
        return STATUS_SUCCESS
    if check_finite is None:
        check_finite = CHECK_FINITE
    stepping = callback is not None or cplan.abort_callback is not None or check_finite
    local = W.local
    inside = local.inside
    lock = g._compute_lock
    if not lock.acquire(False):
        if inside:     # waiting here could wait for ourselves
            raise GraphError("graph_compute: the graph is already being computed (a compute started from a "
                             "custom function cannot compute the graph it belongs to, nor wait for another "
                             "thread's compute)")
        lock.acquire()
    # where Python runs during the compute (a custom function, a callback) it may start another compute:
    # that one then runs on one thread, and a Python custom function finds its tensors in RUNNING
    marks = stepping or low.python
    try:                    # from right after the acquire: a Ctrl-C anywhere below releases the lock
        nth = 1 if inside else most
        if marks:
            RUNNING[low.address] = g._nodes
            local.inside = True
        if not stepping:
            failed = W.pool.run(low.job_address, nth, wdata, wsize, 0, n)
            if failed >= 0:
                _raise_failure(low, g, failed)
            status = STATUS_SUCCESS
        else:
            status = _step(g, cplan, (low, wdata, wsize), nth, callback, check_finite)
        if status == STATUS_SUCCESS and g.computed_version != g._version:
            TN.mark_computed(g.nodes)        # once per graph version: reading a node never computed
            g.computed_version = g._version  # warns (gc.NotComputedWarning)
        return status
    finally:
        if marks:
            local.inside = inside
            RUNNING.pop(low.address, None)
        lock.release()


def _ready(g, cplan):
    """What graph_compute keeps on the plan once checked: (graph, its version, tensor.data_moves(),
    context.frees(), the work_data array; lowering, work buffer address and size, threads worth waking,
    nodes). Kept while none of the first five changes, so that a compute's own Python costs about a
    microsecond (numpy's .ctypes alone costs 1-2)."""
    _check_plan(g, cplan)
    wd = cplan.work_data
    low = lowered(cplan)
    for ctx in low.contexts:
        if ctx.freed:
            raise GraphError("graph_compute: a tensor of the graph belongs to a freed context")
    wdata, wsize = (wd.ctypes.data, wd.nbytes) if wd is not None and wd.nbytes else (0, 0)
    most = min(cplan._n_threads, low.most_tasks)         # no waking threads that would only wait
    cplan._ready = (g, g._version, TN.data_moves(), CTX.frees(), wd, low, wdata, wsize, most, len(g._nodes))
    return cplan._ready


def _raise_failure(low, g, failed):
    """Raise the ComputeError of failed node `failed` (the compiled loop's answer), its record cleared."""
    recs, sync = low.recs, low.sync
    node = g.nodes[failed]
    code, arg = int(recs[failed, K.R_ERR]), int(recs[failed, K.R_ERRARG])
    recs[:, K.R_ERR] = 0
    sync[W.ABORT_SLOTS] = 0
    err = compute_error(node, failed, code, arg)
    cause = err.__cause__
    if cause is not None and not isinstance(cause, Exception):
        raise cause          # KeyboardInterrupt, SystemExit in a Python custom function
    raise err


def _step(g, cplan, args, nth, callback, check_finite) -> int:
    """The debugging path: one node at a time (on as many threads as that node has tasks), then
    the finite check, the callback and the abort callback."""
    low, wdata, wsize = args
    abort = cplan.abort_callback
    for i, node in enumerate(g.nodes):
        failed = W.pool.run(low.job_address, min(nth, int(low.n_tasks[i])), wdata, wsize, i, i + 1)
        if failed >= 0:
            _raise_failure(low, g, failed)
        TN.mark_computed((node,))
        if check_finite:
            check_node_finite(i, node)
        if callback is not None and callback(i, node):
            return STATUS_ABORTED
        if abort is not None and (abort() if cplan.abort_callback_data is None
                                  else abort(cplan.abort_callback_data)):
            return STATUS_ABORTED
    return STATUS_SUCCESS


def compute_error(node, index, code, arg):
    """The gc.ComputeError for a failure a kernel recorded at graph node `index`, with the op's
    own explanation (OpDef.error_detail) when it has one."""
    msg, cause = f"{K.ERRORS.get(code, f'error {code}')}: {arg}", None
    hook = OPS[node.op].error_detail
    if hook is not None:
        detail = hook(node, code, arg)
        if detail is not None:
            msg, cause = detail
    err = ComputeError(f"{op_name(node.op)} (node {index} '{node.name}'): {msg}")
    if cause is not None:
        err.__cause__ = cause
    return err


def _first_bad(t):
    """(ggml index [i0, i1, i2, i3], value) of t's first NaN or inf in memory order, or None."""
    if t.type not in (T.TYPE_F32, T.TYPE_F16) or not t.has_data:
        return None
    a = t.numpy4d()
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    i3, i2, i1, i0 = (int(x) for x in np.argwhere(bad)[0])
    return [i0, i1, i2, i3], float(a[i3, i2, i1, i0])


def check_node_finite(i, node):
    """Raise NonFiniteError if graph node i's result holds a NaN or an inf."""
    bad = _first_bad(node)
    if bad is None:
        return
    where, value = bad
    srcs = []
    for j, s in enumerate(node.src):
        if s is not None:
            sb = _first_bad(s)
            state = "finite" if sb is None else f"already non-finite ({sb[1]} at {sb[0]})"
            srcs.append(f"src[{j}] {TN.describe(s)} ({op_name(s.op)}): {state}")
    raise NonFiniteError(f"check_finite: node {i} {TN.describe(node)} ({op_name(node.op)}) produced {value} at "
                         f"[i0, i1, i2, i3] = {where}; sources: " + ("; ".join(srcs) or "none"),
                         node_index=i, node=node, index=where)


def graph_compute_with_ctx(ctx, g, n_threads: int | None = None, callback=None,
                           check_finite: bool | None = None) -> int:
    """Plan and compute, with a work buffer kept by the context between calls (computes running at
    the same time from several Python threads each take their own)."""
    cplan = graph_plan(g, n_threads)
    if cplan.work_size <= 0:
        return graph_compute(g, cplan, callback, check_finite)
    spare = ctx.work_buffers
    try:
        wb = spare.pop()                   # atomic under the GIL: no two computes get the same buffer
    except IndexError:
        wb = None
    if wb is None or wb.nbytes < cplan.work_size:
        wb = np.empty(cplan.work_size, dtype=np.uint8)
    cplan.work_data = wb
    try:
        return graph_compute(g, cplan, callback, check_finite)
    finally:
        if not ctx.freed and len(spare) < 2:
            spare.append(wb)
