"""graph_compile: a graph planned once, with a work buffer of its own, computed as often as needed.

What every loop that recomputes a graph needs (the optimizer, the checkers, the models, the tools):
ggml's graph_plan + a work buffer + graph_compute in one object, re-planned only when the graph
changed since. Its kernels are compiled (or loaded from the disk cache) when it is made, all at once;
its lowered node records are made on the first compute and kept (planner.Lowered).
"""
from __future__ import annotations

import numpy as np

from .executor import graph_compute
from .ops.compiling import compile_kernels
from .planner import CPlan, graph_plan


class CompiledGraph:
    """`graph` planned for `n_threads` (None: one per core) with a work buffer it owns.

    `compute()` (or calling the object) runs the graph and returns graph_compute's status; it
    re-plans first when the graph changed since (the work buffer grows when it must). `plan`
    is the CPlan: its n_tasks may be edited before the first compute, as with graph_plan."""

    def __init__(self, graph, n_threads: int | None = None):
        self.graph = graph
        self.n_threads = n_threads
        self.work_data = None
        self.plan: CPlan = self._replan()
        compile_kernels(graph.nodes)        # now, all at once (in parallel on a cold start)

    def _replan(self) -> CPlan:
        plan = graph_plan(self.graph, self.n_threads)
        need = plan.work_size
        if need and (self.work_data is None or self.work_data.nbytes < need):
            self.work_data = np.empty(need, np.uint8)
        plan.work_data = self.work_data if need else None
        return plan

    @property
    def work_size(self) -> int:
        """Bytes of work buffer the plan needs."""
        return self.plan.work_size

    def compute(self, callback=None, check_finite: bool | None = None) -> int:
        """graph_compute(graph, plan, callback, check_finite), re-planned if the graph changed."""
        plan = self.plan
        if plan._version != self.graph._version:
            plan = self.plan = self._replan()
        return graph_compute(self.graph, plan, callback, check_finite)

    __call__ = compute

    def __repr__(self):
        return (f"<graphcore.CompiledGraph {self.graph.n_nodes} nodes, {self.plan.n_threads} threads, "
                f"work_size={self.plan.work_size}>")


def graph_compile(graph, n_threads: int | None = None) -> CompiledGraph:
    """Plan `graph` on n_threads threads, compile its kernels and give it a work buffer: a CompiledGraph
    whose compute() runs it again and again (graph_plan + work buffer + graph_compute, the plan and
    its lowering made once)."""
    return CompiledGraph(graph, n_threads)
