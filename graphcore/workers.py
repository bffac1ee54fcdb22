"""The executor's threads: one compiled node loop (run_nodes) run by the caller and by worker
threads that live in compiled code, and the barrier between them.

Workers. A worker thread enters `worker_loop` once and stays there without the GIL: it polls the
job word of a shared control array (a few polls with the CPU's pause hint, then yielding the core
between polls), runs its share of a posted job by calling run_nodes directly, adds one to the done
counter and polls again; after SPIN_US of nothing it parks on a futex (Linux; elsewhere it naps
50 us at a time) until the next post wakes it. A
compute is one compiled call (`run_job`): post the job, wake parked workers, run thread 0's share,
wait for the workers. Waking a worker that still polls costs a cache-line transfer, where the
Python semaphore it replaces cost about 0.1 ms per compute (as much as half a 256^3 product).

The job word is generation * 2^16 + nth: a worker reads nth with the generation, so a worker not
needed by a job (ith >= nth) never reads the job's other fields, which the next post may rewrite.
A worker that is needed claims the job (a compare-and-swap of its claim line to the generation)
before reading them; thread 0 may claim it first (minus the generation) when the worker is late,
and then runs the worker's tasks itself (see _barrier).

Barrier. Thread i stores barrier number e + 1 in a cache line of its own and polls the others'
lines until each holds at least e + 1: one store and nth - 1 loads per thread, no contended
read-modify-write. The numbers only grow (sync[_EPOCH] carries the count from one compute to the
next, written by thread 0 after the last barrier, when every thread has read it), so nothing is
ever reset, and a thread that sat out some computes (fewer threads) is simply behind.

Failures: a kernel that fails records it in its node record; the thread then stamps the sync
array's abort slot with the number of the barrier it will reach next. After every barrier each
thread asks "was a failure stamped for this barrier or an earlier one?", so all threads leave at
the same barrier whatever the timing (a fast thread failing in the next node stamps a later
number, which a slow thread leaving the previous barrier ignores).
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

import numpy as np
from numba import njit

from . import kernel as K
from .blas import set_thread_local_blas_threads, thread_local_blas_setter
from .native import (FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE, atomic_add, atomic_cas, atomic_load, atomic_store,
                     atomic_store_release, call_i32, call_kernel, cpu_relax, futex, i64_1d, i64_2d, monotonic_ns,
                     sched_yield)

LINE = 8                # int64 slots per cache line
MAX_THREADS = 512       # ggml's GGML_MAX_N_THREADS
# the sync array (one per lowered graph): the failure stamp, the barrier count, a flag line per thread
_ABORT, _NODE, _EPOCH, _FLAGS = 0, 1, 8, 16
ABORT_SLOTS = slice(_ABORT, _NODE + 1)     # cleared by the executor once it has read a failure
# a job record (one per lowered graph): where the node loop's arrays are
_RECS, _ROWS, _COLS, _FNS, _NTASKS, _NPHASES, _SYNC, _SYNCLEN = range(8)
JOB_LEN = 8
# the control array (one per process): job word, parked workers, done counter, the posted job
# and a claim line per worker: the generation of the last job it started, or minus that of the
# last one thread 0 took over from it (a compare-and-swap decides which came first)
_JOB, _SLEEPERS, _DONE, _QUIT, _POSTED = 0, 8, 16, 24, 32
_WDATA, _WSIZE, _LO, _HI = range(_POSTED + JOB_LEN, _POSTED + JOB_LEN + 4)
_CLAIM = _POSTED + 16
CTL_LEN = _CLAIM + LINE * MAX_THREADS
NTH_BITS = 16
# a waiting thread polls this many times (each poll a pause hint, ~25 ns on the AMD EPYC of the
# README), then yields the core between polls: on a busy machine the thread it waits for may be
# queued behind it on the same core (a longer spin cost 15 us a barrier there), and on an idle
# one sched_yield returns at once
_SPINS_BEFORE_YIELD = 40
# how long thread 0 waits at a job's first barrier for a worker that has not started the job
# before running its share itself: longer than a parked worker takes to wake on a quiet machine
# (so a long job keeps its threads), far shorter than the time slice a busy machine may keep a
# runnable worker waiting (GRAPHCORE_TAKE_OVER_US)
_TAKE_OVER_NS = 1000 * int(os.environ.get("GRAPHCORE_TAKE_OVER_US", "50"))
# how long an idle worker polls before it parks (GRAPHCORE_SPIN_US): back-to-back computes (a
# training loop, a benchmark) find it polling; a process that stops computing gets its core back
SPIN_US = int(os.environ.get("GRAPHCORE_SPIN_US", "200"))
_FUTEX_WORD = 0 if sys.byteorder == "little" else 4    # the job word's low 32 bits


def sync_array(n_threads: int) -> np.ndarray:
    """A zeroed sync array for up to n_threads threads, starting on a cache line."""
    return aligned_zeros(_FLAGS + LINE * max(1, n_threads))


def job_record(recs, fns, n_tasks, n_phases, sync) -> np.ndarray:
    """The job record of a lowered graph: its arrays' addresses and sizes, for run_job."""
    return np.array([recs.ctypes.data, recs.shape[0], recs.shape[1], fns.ctypes.data, n_tasks.ctypes.data,
                     n_phases.ctypes.data, sync.ctypes.data, sync.shape[0]], dtype=np.int64)


def aligned_zeros(n: int) -> np.ndarray:
    raw = np.zeros(n + LINE, dtype=np.int64)
    skip = (-raw.__array_interface__["data"][0]) % 64 // 8
    return raw[skip:skip + n]


@njit(inline="always", cache=True)
def _record_failure(sync, i, e):
    # stamped with the number of the barrier this thread reaches next (it cannot complete without
    # this thread), so only threads leaving that barrier or a later one see the failure
    atomic_store(sync, _NODE, i + 1)
    atomic_store(sync, _ABORT, e + 1)


@njit(cache=True)
def _take_over(ctl, gen, j):
    """Thread 0 takes worker j's share of job `gen` if j has not started it (a parked worker still
    waking, a worker the OS has not scheduled): True if it did, and then j skips the job."""
    c = atomic_load(ctl, _CLAIM + LINE * j)
    return c != gen and atomic_cas(ctl, _CLAIM + LINE * j, c, -gen)


@njit(inline="always", cache=True)
def _barrier(sync, ith, nth, e, ctl, gen, mine, i, fn, rec, nt, ph, wdata, wsize):
    """Barrier number e: wait until all nth threads arrive. Returns (the failed node's index if a
    failure was stamped for this barrier or an earlier one, else -1; mine).

    `mine` is thread 0's mask of the shares it runs (bit 0: its own; bit j: it took worker j's
    over); 0 on workers. Only thread 0 of a job (gen != 0) takes over, and only workers that have not started the
    job: then no barrier of the job has completed, so this is its first one, and what j owes before
    it is its task of phase ph of node i (fn, rec, nt; fn == 0 when only single-task nodes ran)."""
    atomic_store_release(sync, _FLAGS + LINE * ith, e + 1)
    for j in range(1, min(nth, 64) if mine > 1 else 1):     # the shares thread 0 took over arrive with it
        if mine >> j & 1:
            atomic_store_release(sync, _FLAGS + LINE * j, e + 1)
    for j in range(nth):
        if j == ith or (j < 64 and mine >> j & 1):     # itself, or a share it runs
            continue
        spins = t0 = 0
        while atomic_load(sync, _FLAGS + LINE * j) <= e:
            spins += 1
            if spins < _SPINS_BEFORE_YIELD:
                cpu_relax()
                continue
            if gen != 0 and j < 64:
                t = monotonic_ns()
                t0 = t if t0 == 0 else t0
                if t - t0 > _TAKE_OVER_NS and _take_over(ctl, gen, j):
                    mine |= 1 << j
                    if fn != 0 and j < nt:
                        call_kernel(fn, rec, j, nt, ph, wdata, wsize)
                        if K.record(rec)[K.R_ERR] != 0:
                            _record_failure(sync, i, e)
                    atomic_store_release(sync, _FLAGS + LINE * j, e + 1)
                    continue
            sched_yield()
    a = atomic_load(sync, _ABORT)
    if a != 0 and a - 1 <= e:
        return atomic_load(sync, _NODE) - 1, mine
    return -1, mine


@njit(nogil=True, cache=True)
def run_nodes(recs, fns, n_tasks, n_phases, ith, nth, sync, wdata, wsize, lo, hi, ctl, gen):
    """Walk nodes lo..hi-1 on thread `ith` of `nth`. Returns the index of a failed node, or -1;
    every thread returns the same value. On thread 0, gen != 0 (the job's generation) lets it
    take over the share of workers that have not started (see _barrier); results are the same
    bits, since the kernels split work by (ith, nth) alone.

    Nodes with one task run on thread 0 alone and need no barrier; the others wait at the next
    barrier. A barrier is placed before a multi-task node only when a single-task node ran since
    the last one, after each phase of a multi-task node, and at the end only when a single-task
    node ran since the last one (a product alone in its graph: one barrier, not two)."""
    base = recs.ctypes.data
    stride = recs.shape[1] * 8
    e = atomic_load(sync, _EPOCH)
    pending = False          # a single-task node ran since the last barrier
    failed = -1
    mine = 1 if ith == 0 else 0
    for i in range(lo, hi):
        fn = fns[i]
        if fn == 0:
            continue
        rec = base + i * stride
        nt = n_tasks[i]
        if nt == 1 or nth == 1:
            if ith == 0:
                for ph in range(n_phases[i]):
                    call_kernel(fn, rec, 0, 1, ph, wdata, wsize)
            pending = True
            if ith == 0 and recs[i, K.R_ERR] != 0:
                if nth == 1:
                    return i
                _record_failure(sync, i, e)
                break                # the others wait at their next barrier: meet them there, leave together
            continue
        if pending:
            failed, mine = _barrier(sync, ith, nth, e, ctl, gen, mine, i, 0, 0, 0, 0, wdata, wsize)
            e += 1
            if failed != -1:
                break
            pending = False
        for ph in range(n_phases[i]):
            if ith < nt:
                call_kernel(fn, rec, ith, nt, ph, wdata, wsize)
            if mine > 1:            # thread 0 runs the tasks of the workers it took over too
                for t in range(1, min(nt, 64)):
                    if mine >> t & 1:
                        call_kernel(fn, rec, t, nt, ph, wdata, wsize)
            if recs[i, K.R_ERR] != 0:
                _record_failure(sync, i, e)
            failed, mine = _barrier(sync, ith, nth, e, ctl, gen, mine, i, fn, rec, nt, ph, wdata, wsize)
            e += 1
            if failed != -1:
                break
        if failed != -1:
            break
    if nth > 1 and pending and failed == -1:      # single-task nodes ran since the last barrier
        failed, mine = _barrier(sync, ith, nth, e, ctl, gen, mine, hi, 0, 0, 0, 0, wdata, wsize)
        e += 1
    if ith == 0:
        atomic_store(sync, _EPOCH, e)
    return failed


@njit(nogil=True, cache=True)
def _next_job(ctl, seen, spin_ns):
    """Poll the job word until it differs from `seen` (spinning, then yielding between polls); park
    on it after spin_ns of polling."""
    t0 = monotonic_ns()
    spins = 0
    while True:
        word = atomic_load(ctl, _JOB)
        if word != seen:
            return word
        spins += 1
        if spins < _SPINS_BEFORE_YIELD:
            cpu_relax()
            continue
        if monotonic_ns() - t0 < spin_ns:
            sched_yield()           # a busy machine's other work runs; an idle core comes right back
            continue
        # parking: announce it first, then look once more; the poster bumps the word, then reads
        # the announcement (both seq_cst), so one of the two sees the other, and the kernel's
        # compare in FUTEX_WAIT catches a bump between the look and the sleep
        atomic_add(ctl, _SLEEPERS, 1)
        if atomic_load(ctl, _JOB) == seen:
            futex(FUTEX_WAIT_PRIVATE, ctl.ctypes.data + _JOB * 8 + _FUTEX_WORD, seen & 0xFFFFFFFF)
        atomic_add(ctl, _SLEEPERS, -1)


@njit(cache=True)
def _share(job, ith, nth, wdata, wsize, lo, hi, ctl, gen):
    """Thread ith's share of a job (run_nodes on the arrays of a job record)."""
    n, cols = job[_ROWS], job[_COLS]
    return run_nodes(i64_2d(job[_RECS], (n, cols), (cols * 8, 8)), i64_1d(job[_FNS], (n,), (8,)),
                     i64_1d(job[_NTASKS], (n,), (8,)), i64_1d(job[_NPHASES], (n,), (8,)), ith, nth,
                     i64_1d(job[_SYNC], (job[_SYNCLEN],), (8,)), wdata, wsize, lo, hi, ctl, gen)


@njit(nogil=True, cache=True)
def worker_loop(ctl, ith, seen, spin_ns):
    """A worker thread's life: run its share of every job that needs it, until told to quit."""
    while True:
        word = _next_job(ctl, seen, spin_ns)
        seen = word
        if atomic_load(ctl, _QUIT) != 0:
            return
        nth = word & ((1 << NTH_BITS) - 1)
        if ith >= nth:
            continue                # not needed: the job's fields are none of our business
        gen = word >> NTH_BITS
        c = atomic_load(ctl, _CLAIM + LINE * ith)
        if c == -gen or not atomic_cas(ctl, _CLAIM + LINE * ith, c, gen):
            continue                # thread 0 took our share over: the job may be done already
        _share(ctl[_POSTED:_POSTED + JOB_LEN], ith, nth, ctl[_WDATA], ctl[_WSIZE], ctl[_LO], ctl[_HI], ctl, 0)
        atomic_add(ctl, _DONE, 1)


@njit(nogil=True, cache=True)
def _post(ctl, nth):
    """Publish the job (its fields already written) to workers 1..nth-1, waking parked ones; returns
    its generation."""
    atomic_store(ctl, _DONE, 0)
    gen = (atomic_load(ctl, _JOB) >> NTH_BITS) + 1
    atomic_store(ctl, _JOB, gen << NTH_BITS | nth)
    if atomic_load(ctl, _SLEEPERS) > 0:
        futex(FUTEX_WAKE_PRIVATE, ctl.ctypes.data + _JOB * 8 + _FUTEX_WORD, 1 << 30)
    return gen


@njit(nogil=True, cache=True)
def run_job(ctl_addr, job_addr, nth, wdata, wsize, lo, hi, blas_setter):
    """Nodes lo..hi-1 of a job record on the calling thread (thread 0) and workers 1..nth-1; BLAS
    held to one thread on the caller meanwhile (blas_setter: openblas_set_num_threads_local, or 0).
    Addresses, not arrays: numba unboxes an int several times faster than an array."""
    ctl = i64_1d(ctl_addr, (CTL_LEN,), (8,))
    job = i64_1d(job_addr, (JOB_LEN,), (8,))
    old = call_i32(blas_setter, 1) if blas_setter != 0 else 0
    gen = 0
    if nth > 1:
        ctl[_POSTED:_POSTED + JOB_LEN] = job
        ctl[_WDATA], ctl[_WSIZE], ctl[_LO], ctl[_HI] = wdata, wsize, lo, hi
        gen = _post(ctl, nth)
    failed = _share(job, 0, nth, wdata, wsize, lo, hi, ctl, gen)
    started = 0             # the workers that ran their share (the others', thread 0 ran)
    for j in range(1, nth):
        started += atomic_load(ctl, _CLAIM + LINE * j) == gen
    spins = 0
    while atomic_load(ctl, _DONE) < started:     # they are past the last barrier: a few loads at most
        spins += 1
        if spins < _SPINS_BEFORE_YIELD:
            cpu_relax()
        else:
            sched_yield()
    if blas_setter != 0 and old > 0:
        call_i32(blas_setter, old)
    return failed


@njit(cache=True)
def _quit(ctl):
    atomic_store(ctl, _QUIT, 1)
    _post(ctl, 1)            # any nth: every worker reads _QUIT first


class _Workers:
    """The worker threads (1, 2, ...; thread 0 is always the caller), started when a compute first
    needs them and kept for the process's life; one multi-threaded compute at a time uses them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ctl = aligned_zeros(CTL_LEN)
        self.address = self.ctl.ctypes.data
        self.threads = []

    def _start(self):
        ith = len(self.threads) + 1
        ready, failed = threading.Event(), []
        th = threading.Thread(target=self._main, args=(ith, int(self.ctl[_JOB]), ready, failed),
                              name=f"graphcore-worker-{ith}", daemon=True)
        th.start()
        ready.wait()
        if failed:
            raise failed[0]
        self.threads.append(th)

    def _main(self, ith, seen, ready, failed):
        try:
            set_thread_local_blas_threads(1)
            local.inside = True      # a compute from a custom function on this thread runs on one thread
        except BaseException as e:   # noqa: BLE001 - raised in the thread that started us
            failed.append(e)
            return
        finally:
            ready.set()
        worker_loop(self.ctl, ith, seen, SPIN_US * 1000)

    def run(self, job_address, nth, wdata, wsize, lo, hi):
        """run_job on nth threads; returns the failed node's index or -1."""
        if nth == 1:
            return run_job(self.address, job_address, 1, wdata, wsize, lo, hi, thread_local_blas_setter())
        with self.lock:
            while len(self.threads) < nth - 1:
                self._start()
            return run_job(self.address, job_address, nth, wdata, wsize, lo, hi, thread_local_blas_setter())

    def close(self, timeout=2.0):
        """Tell the workers to leave their loop and wait for them (at interpreter exit)."""
        lock = self.lock
        if self.threads and lock.acquire(timeout=timeout):     # not while a compute runs
            try:
                _quit(self.ctl)
                for th in self.threads:
                    th.join(timeout)
                self.__init__()      # a compute after this (a late atexit hook) starts new workers
            finally:
                lock.release()


class _Local(threading.local):
    inside = False          # this thread runs a compute (a worker, or a caller mid-compute)


local = _Local()            # (a class default: reading an attribute never set costs an AttributeError)
pool = _Workers()


atexit.register(pool.close)
os.register_at_fork(after_in_child=pool.__init__)     # the parent's workers do not exist in a child
