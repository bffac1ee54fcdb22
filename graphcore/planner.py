"""graph_plan: threads per node, one work buffer, and the graph lowered to flat arrays."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import kernel as K
from . import tensor as TN
from .errors import GraphError
from .graph import Graph
from .ops.compiling import compile_kernels
from .ops.registry import OPS
from .blas import sgemm_address
from .workers import MAX_THREADS, job_record, sync_array

CACHE_LINE = 64


def default_n_threads() -> int:
    """Threads graph_plan uses when given none: the number of CPUs (os.cpu_count()), at least 1
    (ggml's GGML_DEFAULT_N_THREADS is a fixed 4)."""
    return max(1, os.cpu_count() or 1)


class CPlan:
    """ggml_cplan: `n_threads`, `work_size`, per-node `n_tasks`, and `work_data` (set by the caller
    to a buffer of at least work_size bytes before graph_compute, as in ggml). `abort_callback`
    (a callable; given `abort_callback_data` when that is not None) is called after each node and
    stops the compute when it returns True (graph_compute then returns STATUS_ABORTED).

    What the plan decided is read-only; `n_tasks` may be edited before the first compute (the
    executor checks the edit then: 1..n_threads tasks per node, within work_size) and is frozen
    from then on."""

    def __init__(self, graph, n_threads, n_tasks, work_size):
        self._graph = graph
        self._n_threads = n_threads
        self._n_tasks = n_tasks
        self._work_size = work_size
        self.work_data = None
        self.abort_callback = None
        self.abort_callback_data = None
        self._version = graph.version
        self._n_nodes = graph.n_nodes
        self._planned = n_tasks.copy()   # what graph_plan chose (work_size fits it): edits are checked
        self._lowered = None       # a Lowered, on first compute (again when the allocator moved tensors)
        self._ready = None         # what the executor checked, kept while nothing changes (executor._ready)

    graph = TN.read_only("_graph", "the graph this plan is for")
    n_threads = TN.read_only("_n_threads", "threads the compute may use")
    n_tasks = TN.read_only("_n_tasks", "tasks (threads) per node, numpy int64")
    work_size = TN.read_only("_work_size", "bytes of work buffer the compute needs")
    version = TN.read_only("_version", "the graph's version when planned")
    n_nodes = TN.read_only("_n_nodes", "the graph's node count when planned")

    def __repr__(self):
        return f"<graphcore.CPlan {self.n_nodes} nodes, {self.n_threads} threads, work_size={self.work_size}>"


def _threads(n_threads) -> int:
    """n_threads as a positive int (None or <= 0: one per core, as ggml's default)."""
    if n_threads is None:
        return default_n_threads()
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)):
        raise GraphError(f"graph_plan: n_threads must be an int (or None for one per core), got "
                         f"{type(n_threads).__name__} {n_threads!r}")
    n = int(n_threads)
    if n > MAX_THREADS:
        raise GraphError(f"graph_plan: n_threads = {n} is more than the {MAX_THREADS} supported")
    return n if n > 0 else default_n_threads()


def graph_plan(g, n_threads: int | None = None) -> CPlan:
    """Plan g's compute on n_threads threads (ggml_graph_plan): a CPlan with n_tasks per node and the
    work_size in bytes of the work buffer to set as cplan.work_data before graph_compute.

    n_threads None or <= 0 means default_n_threads(). GraphError when g is not a Graph. A plan is
    for the graph as it is: graph_compute refuses it once g has changed."""
    if not isinstance(g, Graph):
        raise GraphError(f"graph_plan: expected a Graph, got {type(g).__name__}")
    n_threads = _threads(n_threads)
    n_tasks = np.ones(g.n_nodes, dtype=np.int64)
    work = 0
    for i, node in enumerate(g.nodes):
        op = OPS[node.op]
        nt = max(1, min(n_threads, int(op.n_tasks(node, n_threads))))
        n_tasks[i] = nt
        work = max(work, int(op.work_size(node, nt)))
    if work > 0:
        work += CACHE_LINE * (n_threads - 1)
    return CPlan(g, n_threads, n_tasks, work)


def _slot(node, i, op, j=-1):
    """node's record slot; it is node i itself (j < 0) or that node's src[j], as the errors say."""
    if not node.has_data or node.ctx.freed:
        what = f"node {i} ({op.name})" if j < 0 else f"src[{j}] of node {i} ({op.name})"
        if not node.has_data:
            raise GraphError(f"graph_compute: {what} {TN.describe(node)} has no data (its context is no_alloc): "
                             f"give the graph's tensors bytes with gallocr_alloc_graph(galloc, graph), and "
                             f"parameters and inputs with alloc_ctx_tensors(ctx)")
        raise GraphError(f"graph_compute: {what} {TN.describe(node)} belongs to a freed context")
    return [node.type, node.data, *node.ne, *node.nb]


_NO_SLOT = [0] * K.SLOT_LEN


@dataclass(frozen=True, eq=False)
class Lowered:
    """A plan lowered to the flat arrays the compiled node loop walks (see kernel.py's record layout)."""
    recs: np.ndarray        # one int64 record per node
    fns: np.ndarray         # each node's kernel address; 0 for nodes that compute nothing (views)
    n_tasks: np.ndarray     # tasks per node (the plan's, frozen)
    n_phases: np.ndarray    # kernel phases per node, a barrier between them
    contexts: tuple         # the contexts of the graph's tensors: none may be freed when it runs
    most_tasks: int         # threads worth waking
    sync: np.ndarray        # the executor's barrier slots (the graph's computes are serialized)
    key: tuple              # (graph version, tensor.data_moves()) it was lowered for
    address: int            # recs' address (kept: numpy's .ctypes costs microseconds a call)
    job: np.ndarray         # the arrays' addresses for the executor's threads (workers.job_record)
    job_address: int
    python: bool            # a kernel may call Python, which may start another compute (executor)


def lower(plan: CPlan) -> Lowered:
    """Lower the plan: one int64 record per node (see kernel.py). The records depend only on the
    graph (its version, where its tensors live) and n_tasks, so the last lowering is kept on the
    graph: re-planning an unchanged graph (graph_compute_with_ctx in a loop) costs no lowering."""
    g = plan.graph
    n = g.n_nodes
    key = (g.version, TN.data_moves())
    plan.n_tasks.flags.writeable = False       # frozen from the first compute on: later edits raise
    cached = g._lowered_cache
    if cached is not None and cached.key == key and np.array_equal(cached.n_tasks[:n], plan.n_tasks):
        plan._lowered = cached                 # same tasks as a lowering already checked
        return cached
    _check_tasks(plan)
    fns, phases, rows = [0] * max(n, 1), [1] * max(n, 1), []
    slots = {}          # id -> a tensor's slot, made once however many nodes read it

    def slot(t, i, op, j=-1):
        s = slots.get(id(t))
        if s is None:
            s = slots[id(t)] = _slot(t, i, op, j)
        return s
    blas = sgemm_address()
    compile_kernels(g.nodes)                   # all at once, with progress on stderr when compiling
    for i, node in enumerate(g.nodes):        # each record built as a list, then one array of them all
        op = OPS[node.op]
        fns[i] = fn = op.kernel_address(node)
        phases[i] = op.n_phases(node) if callable(op.n_phases) else op.n_phases
        r = [0] * K.SLOT0
        r[K.R_OP], r[K.R_NSRC], r[K.R_NODE] = node.op, len(node.src), i
        r += slot(node, i, op)
        if fn != 0:
            for j, s in enumerate(node.src):
                r += _NO_SLOT if s is None else slot(s, i, op, j)
            r += [0] * (K.P_BASE - len(r))
            r += node.op_params.view(np.int64).tolist()
            if op.uses_blas:
                r[K.R_BLAS] = blas
        rows.append(r + [0] * (K.REC_LEN - len(r)))
    recs = np.array(rows, dtype=np.int64) if n else np.zeros((1, K.REC_LEN), dtype=np.int64)
    fns, phases = np.array(fns, dtype=np.int64), np.array(phases, dtype=np.int64)
    contexts = {id(t.ctx): t.ctx for node in g.nodes for t in (node, *node.src) if t is not None}
    n_tasks = plan.n_tasks.copy() if n else np.ones(1, np.int64)
    most = int(n_tasks.max())
    sync = cached.sync if cached is not None and cached.most_tasks >= most else sync_array(most)
    job = job_record(recs, fns, n_tasks, phases, sync)
    python = any(OPS[node.op].calls_python for node in g.nodes)
    plan._lowered = g._lowered_cache = Lowered(recs, fns, n_tasks, phases, tuple(contexts.values()),
                                               most, sync, key, recs.ctypes.data, job, job.ctypes.data, python)
    return plan._lowered


def lowered(plan: CPlan) -> Lowered:
    """The plan's flat arrays, lowered again when the allocator moved tensors since (their addresses
    are in the records)."""
    if plan._lowered is not None and plan._lowered.key[1] == TN.data_moves():
        return plan._lowered
    return lower(plan)


def _check_tasks(plan):
    """Edits of plan.n_tasks (allowed before the first compute) must stay within the plan."""
    nt = plan.n_tasks
    if nt.shape != (plan.n_nodes,) or (plan.n_nodes and (nt.min() < 1 or nt.max() > plan.n_threads)):
        raise GraphError(f"graph_compute: cplan.n_tasks must hold {plan.n_nodes} values in 1..{plan.n_threads} "
                         f"(n_threads), got {nt.tolist()[:16]}")
    if np.array_equal(nt, plan._planned):
        return
    for i, node in enumerate(plan.graph.nodes):
        need = int(OPS[node.op].work_size(node, int(nt[i])))
        if need > plan.work_size:
            raise GraphError(f"graph_compute: node {i} ({OPS[node.op].name}) on {int(nt[i])} tasks needs "
                             f"{need} bytes of work buffer, the plan has work_size={plan.work_size}")
