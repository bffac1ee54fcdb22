"""graph_plan: threads per node, one work buffer, and the graph lowered to flat arrays."""
from __future__ import annotations

import os

import numpy as np

from . import kernel as K
from . import tensor as TN
from .errors import GraphError
from .ops.registry import OPS
from .blas import sgemm_address

CACHE_LINE = 64


def default_n_threads() -> int:
    return max(1, os.cpu_count() or 1)


class CPlan:
    """ggml_cplan: `n_threads`, `work_size`, per-node `n_tasks`, and `work_data` (set by the caller
    to a buffer of at least work_size bytes before graph_compute, as in ggml)."""

    def __init__(self, graph, n_threads, n_tasks, work_size):
        self.graph = graph
        self.n_threads = n_threads
        self.n_tasks = n_tasks
        self.work_size = work_size
        self.work_data = None
        self.abort_callback = None
        self.version = graph.version
        self.n_nodes = graph.n_nodes
        self.lowered = None       # (recs, fns, n_tasks, n_phases, contexts, most tasks), on first compute
        self.lowered_moves = -1   # tensor.data_moves() when lowered (the allocator may move tensors)
        self.sync = np.zeros(24, dtype=np.int64)   # the executor's barrier and abort flag

    def __repr__(self):
        return f"<graphcore.CPlan {self.n_nodes} nodes, {self.n_threads} threads, work_size={self.work_size}>"


def graph_plan(g, n_threads: int | None = None) -> CPlan:
    from .graph import Graph
    if not isinstance(g, Graph):
        raise GraphError(f"graph_plan: expected a Graph, got {type(g).__name__}")
    if n_threads is None or n_threads <= 0:
        n_threads = default_n_threads()
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


def _slot(node, what):
    if not node.has_data:
        raise GraphError(f"graph_compute: {what} {TN.describe(node)} has no data (its context is no_alloc): "
                         f"give the graph's tensors bytes with gallocr_alloc_graph(galloc, graph), and "
                         f"parameters and inputs with alloc_ctx_tensors(ctx)")
    if node.ctx.freed:
        raise GraphError(f"graph_compute: {what} {TN.describe(node)} belongs to a freed context")
    return [node.type, node.data, *node.ne, *node.nb]


def lower(plan: CPlan):
    """Flat arrays the compiled node loop walks: one int64 record per node (see kernel.py).
    The records depend only on the graph (its version) and n_tasks, so they are cached on the
    graph: re-planning an unchanged graph (an optimizer call per training example) costs no lowering."""
    g = plan.graph
    n = g.n_nodes
    key = (g.version, TN.data_moves())
    cached = g.lowered_cache
    if cached is not None and cached[0] == key and np.array_equal(cached[1][2][:n], plan.n_tasks):
        plan.lowered = cached[1]
        plan.lowered_moves = key[1]
        return plan.lowered
    recs = np.zeros((max(n, 1), K.REC_LEN), dtype=np.int64)
    fns = np.zeros(max(n, 1), dtype=np.int64)
    phases = np.ones(max(n, 1), dtype=np.int64)
    blas = sgemm_address()
    for i, node in enumerate(g.nodes):
        op = OPS[node.op]
        fns[i] = op.kernel_address(node)
        phases[i] = op.n_phases(node) if callable(op.n_phases) else op.n_phases
        r = recs[i]
        r[K.R_OP], r[K.R_NSRC], r[K.R_NODE] = node.op, len(node.src), i
        r[K.SLOT0:K.SLOT0 + K.SLOT_LEN] = _slot(node, f"node {i} ({op.name})")
        if fns[i] == 0:
            continue
        for j, s in enumerate(node.src):
            if s is not None:
                b = K.SLOT0 + K.SLOT_LEN * (j + 1)
                r[b:b + K.SLOT_LEN] = _slot(s, f"src[{j}] of node {i} ({op.name})")
        r[K.P_BASE:K.P_BASE + 8] = node.op_params.view(np.int64)
        r[K.R_BLAS] = blas
    contexts = {id(t.ctx): t.ctx for node in g.nodes for t in (node, *node.src) if t is not None}
    n_tasks = plan.n_tasks.copy() if n else np.ones(1, np.int64)
    plan.lowered = (recs, fns, n_tasks, phases, list(contexts.values()), int(n_tasks.max()))
    g.lowered_cache = (key, plan.lowered)
    plan.lowered_moves = key[1]
    return plan.lowered


def lowered(plan: CPlan):
    """The plan's flat arrays, lowered again when the allocator moved tensors since (their addresses
    are in the records)."""
    if plan.lowered is not None and plan.lowered_moves == TN.data_moves():
        return plan.lowered
    return lower(plan)
