"""The executor: one compiled, nogil node loop run by every thread, with a native barrier.

Nodes with one task run on thread 0 alone and need no barrier; the others wait at the next
barrier (spinning briefly, then yielding the core). A barrier is placed before a multi-task
node only when a single-task node ran since the last one, and after each phase of a
multi-task node. Failures recorded by a kernel stop every thread at the next barrier.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from . import kernel as K
from .blas import set_thread_local_blas_threads
from .errors import ComputeError, GraphError
from .native import atomic_add, atomic_load, atomic_store, call_kernel, sched_yield
from .ops.registry import OPS
from .planner import CPlan, graph_plan, lowered

GGML_STATUS_SUCCESS = 0
STATUS_SUCCESS = 0

_COUNT, _GEN, _ABORT = 0, 8, 16     # slots of the sync array, a cache line apart
_SPINS_BEFORE_YIELD = 2000


@njit(inline="always", cache=True)
def _barrier(sync, nth):
    gen = atomic_load(sync, _GEN)
    if atomic_add(sync, _COUNT, 1) == nth - 1:
        atomic_store(sync, _COUNT, 0)
        atomic_add(sync, _GEN, 1)
    else:
        spins = 0
        while atomic_load(sync, _GEN) == gen:
            spins += 1
            if spins > _SPINS_BEFORE_YIELD:
                sched_yield()


@njit(nogil=True, cache=True)
def run_nodes(recs, fns, n_tasks, n_phases, ith, nth, sync, wdata, wsize):
    """Walk every node on thread `ith` of `nth`. Returns the index of a failed node, or -1."""
    base = recs.ctypes.data
    stride = recs.shape[1] * 8
    pending = False          # a single-task node ran since the last barrier
    for i in range(fns.shape[0]):
        fn = fns[i]
        if fn == 0:
            continue
        rec = base + i * stride
        nt = n_tasks[i]
        if nt == 1 or nth == 1:
            if ith == 0:
                for ph in range(n_phases[i]):
                    call_kernel(fn, rec, 0, 1, ph, wdata, wsize)
                if recs[i, K.R_ERR] != 0:
                    atomic_store(sync, _ABORT, i + 1)
                    if nth > 1:
                        _barrier(sync, nth)   # release the others waiting at their next barrier
                    return i
            pending = True
            continue
        if pending:
            _barrier(sync, nth)
            if atomic_load(sync, _ABORT) != 0:
                return atomic_load(sync, _ABORT) - 1
            pending = False
        for ph in range(n_phases[i]):
            if ith < nt:
                call_kernel(fn, rec, ith, nt, ph, wdata, wsize)
                if recs[i, K.R_ERR] != 0:
                    atomic_store(sync, _ABORT, i + 1)
            _barrier(sync, nth)
            if atomic_load(sync, _ABORT) != 0:
                return atomic_load(sync, _ABORT) - 1
    if nth > 1:
        _barrier(sync, nth)
        if atomic_load(sync, _ABORT) != 0:
            return atomic_load(sync, _ABORT) - 1
    return -1


class _Pool:
    """Worker threads kept between computes; thread 0 is always the caller."""

    def __init__(self):
        self.lock = threading.Lock()
        self.workers = []
        self.done = threading.Semaphore(0)
        self.job = None
        self.errors = []

    def _loop(self, start: threading.Semaphore, ith: int):
        set_thread_local_blas_threads(1)
        while True:
            start.acquire()
            try:
                self.job(ith)
            except BaseException as e:  # surfaced in the caller
                self.errors.append(e)
            finally:
                self.done.release()

    def run(self, n_threads: int, job):
        with self.lock:
            while len(self.workers) < n_threads - 1:
                sem = threading.Semaphore(0)
                th = threading.Thread(target=self._loop, args=(sem, len(self.workers) + 1),
                                      name=f"graphcore-worker-{len(self.workers) + 1}", daemon=True)
                th.start()
                self.workers.append(sem)
            self.job, self.errors = job, []
            for sem in self.workers[:n_threads - 1]:
                sem.release()
            try:
                job(0)
            finally:
                for _ in range(n_threads - 1):
                    self.done.acquire()
                self.job = None
            if self.errors:
                raise self.errors[0]


_pool = _Pool()


def _check_plan(g, cplan: CPlan):
    from .graph import Graph
    if not isinstance(g, Graph):
        raise GraphError(f"graph_compute: expected a Graph, got {type(g).__name__}")
    if not isinstance(cplan, CPlan):
        raise GraphError(f"graph_compute: expected a CPlan from graph_plan, got {type(cplan).__name__}")
    if cplan.graph is not g or cplan.version != g.version or cplan.n_nodes != g.n_nodes:
        raise GraphError("graph_compute: the graph changed since it was planned (or the plan is for "
                         "another graph); call graph_plan again")
    if cplan.work_size > 0:
        wd = cplan.work_data
        if wd is None:
            raise GraphError(f"graph_compute: the plan needs a work buffer of {cplan.work_size} bytes; "
                             f"set cplan.work_data = numpy.empty({cplan.work_size}, numpy.uint8)")
        if not isinstance(wd, np.ndarray) or not wd.flags.c_contiguous or not wd.flags.writeable:
            raise GraphError("graph_compute: cplan.work_data must be a writable contiguous numpy array")
        if wd.nbytes < cplan.work_size:
            raise GraphError(f"graph_compute: cplan.work_data holds {wd.nbytes} bytes, the plan needs "
                             f"{cplan.work_size}")


def graph_compute(g, cplan: CPlan) -> int:
    """Run every node of g on cplan.n_threads threads. Returns STATUS_SUCCESS or raises.

    Called thousands of times per training run, so the Python around the compiled loop is kept
    to a few checks: records stay clean (kernels write an error slot only on failure, and a
    failure cleans up before raising), the sync array lives with the plan."""
    _check_plan(g, cplan)
    if g.n_nodes == 0:
        return STATUS_SUCCESS
    recs, fns, n_tasks, n_phases, contexts, most_tasks = lowered(cplan)
    for ctx in contexts:
        if ctx.freed:
            raise GraphError("graph_compute: a tensor of the graph belongs to a freed context")
    nth = min(cplan.n_threads, most_tasks)   # no waking threads that would only wait
    sync = cplan.sync
    wd = cplan.work_data
    wdata, wsize = (wd.ctypes.data, wd.nbytes) if wd is not None and wd.nbytes else (0, 0)
    old = set_thread_local_blas_threads(1)
    try:
        if nth == 1:
            failed = run_nodes(recs, fns, n_tasks, n_phases, 0, 1, sync, wdata, wsize)
        else:
            result = [-1] * nth

            def job(ith):
                result[ith] = run_nodes(recs, fns, n_tasks, n_phases, ith, nth, sync, wdata, wsize)
            _pool.run(nth, job)
            failed = max(result)
    finally:
        if old > 0:
            set_thread_local_blas_threads(old)
    if failed >= 0:
        node = g.nodes[failed]
        code, arg = int(recs[failed, K.R_ERR]), int(recs[failed, K.R_ERRARG])
        recs[:, K.R_ERR] = 0
        sync[:] = 0
        raise K.compute_error(node, failed, code, arg)
    return STATUS_SUCCESS


def graph_compute_with_ctx(ctx, g, n_threads: int | None = None) -> int:
    """Plan and compute, with the work buffer kept by the context (reused between calls)."""
    cplan = graph_plan(g, n_threads)
    if cplan.work_size > 0:
        wb = ctx.work_buffer
        if wb is None or wb.nbytes < cplan.work_size:
            ctx.work_buffer = wb = np.empty(cplan.work_size, dtype=np.uint8)
        cplan.work_data = wb
    return graph_compute(g, cplan)
