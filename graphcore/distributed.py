"""Data-parallel training over MPI (mpi4py), in Horovod's model: every rank holds the whole model and
the optimizer state, computes the loss and gradient of its share of the global batch, and one
allreduce over one flat buffer per evaluation sums the shares, so every rank takes the same step.

Importing this module starts MPI (mpi4py's MPI_Init), so nothing in graphcore imports it: the
programs do when they run under mpiexec or with --distributed (pip install 'graphcore-engine[mpi]').

- `World()`: the ranks of MPI_COMM_WORLD, with a watchdog: a collective that waits longer than
  `timeout` seconds (a rank died, hangs or left early) ends the whole job with MPI_Abort and a message.
- `agree(facts)`: every rank's facts (options, model shapes, data hash, ...) compared, and the setup
  errors of any rank (`setup_failed`) delivered to all; one `DistributedError`, the same on all ranks.
- `broadcast(arrays)`: rank 0's values (initial parameters, optimizer state) to all, in one call.
- `reducer(scale)`: the optimizer's hook (`gc.opt_resume_g(..., reduce=)`): gradient, loss and a stop
  flag summed by one Allreduce of one float32 buffer, then scaled (1/size for a mean loss).
- `check_in_sync(arrays)`: a hash of the parameters compared across ranks (they must never drift).
- `shard(n)`: the rows [lo, hi) of a global batch of n that this rank computes: rank r takes the r-th
  of `size` equal blocks, so 2 ranks x n/2 rows see the rows 1 process x n sees, in the same order.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import traceback

import numpy as np
from mpi4py import MPI

DEFAULT_TIMEOUT = 300.0     # seconds one collective may wait for the other ranks
_F = np.float32


class DistributedError(RuntimeError):
    """Ranks that disagree, a rank's setup error, or ranks whose parameters drifted apart. Raised on
    every rank alike, so all of them stop together; rank 0 reports it."""


class World:
    """The ranks of a communicator (MPI_COMM_WORLD), with a watchdog on every collective."""

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT):
        if not timeout > 0:
            raise ValueError(f"distributed: timeout must be positive, got {timeout}")
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size, self.timeout = self.comm.Get_rank(), self.comm.Get_size(), float(timeout)
        self.agreed = False         # after agree(): errors abort the job instead of being exchanged
        self._deadline, self._what = None, ""
        threading.Thread(target=self._watch, name="graphcore-mpi-watchdog", daemon=True).start()
        # rank 0's clock, the same on every rank (time-based seeds); the one collective before agree()
        self.start_time = self.bcast(int(time.time()), "the start")

    # ------------------------------------------------------------------------------------------
    # bounded waiting
    # ------------------------------------------------------------------------------------------
    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                self.abort(f"rank {self.rank}: no answer from the other ranks within {self.timeout:g} s in "
                           f"{self._what} (a rank died, hangs or stopped early): ending the job")

    def _collective(self, what, fn, *args):
        # blocking MPI calls cannot be interrupted: the watchdog thread aborts the job instead
        self._what, self._deadline = what, time.monotonic() + self.timeout
        try:
            return fn(*args)
        finally:
            self._deadline = None

    def abort(self, message: str, code: int = 1):
        """Print message on stderr and end every rank of the job (MPI_Abort); does not return."""
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
        time.sleep(0.2)     # MPI_Abort tears down mpiexec's output forwarding: let the line reach it first
        self.comm.Abort(code)
        os._exit(code)

    # ------------------------------------------------------------------------------------------
    # collectives
    # ------------------------------------------------------------------------------------------
    def allreduce(self, buf: np.ndarray, what: str = "allreduce") -> np.ndarray:
        """buf summed over the ranks, in place (a contiguous float32/float64 array)."""
        return self._collective(what, self.comm.Allreduce, MPI.IN_PLACE, buf, MPI.SUM) or buf

    def allgather(self, obj, what: str = "allgather") -> list:
        return self._collective(what, self.comm.allgather, obj)

    def bcast(self, obj, what: str = "broadcast"):
        """A Python object from rank 0 to all."""
        return self._collective(what, self.comm.bcast, obj, 0)

    def broadcast(self, arrays, what: str = "broadcast of the parameters"):
        """Rank 0's values of the float32 arrays, written into every rank's arrays: one flat buffer."""
        arrays = [a for a in arrays if a is not None and a.size]
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError(f"distributed: broadcast needs contiguous arrays, got strides {a.strides}")
        flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(_F, copy=False) if arrays else np.empty(0, _F)
        self._collective(what, self.comm.Bcast, flat, 0)
        o = 0
        for a in arrays:
            a.reshape(-1)[:] = flat[o:o + a.size]
            o += a.size

    # ------------------------------------------------------------------------------------------
    # start-up: one answer for all ranks
    # ------------------------------------------------------------------------------------------
    def agree(self, facts: dict, what: str = "the start-up check"):
        """Compare facts (name -> value, values compared with ==) across ranks; raise one
        DistributedError on every rank if they differ or a rank reported a setup error."""
        got = self.allgather(("ok", facts), what)
        self._judge(got)
        self.agreed = True

    def setup_failed(self, message: str):
        """This rank could not set up: tell the ranks waiting in agree(); raises their common error."""
        self._judge(self.allgather(("error", message), "the start-up check"))
        raise AssertionError("unreachable")     # _judge always raises when a rank failed

    def _judge(self, got):
        errors = [(r, m) for r, (kind, m) in enumerate(got) if kind == "error"]
        if errors:
            msgs = {m for _, m in errors}
            if len(errors) == self.size and len(msgs) == 1:
                raise DistributedError(f"every rank: {errors[0][1]}")
            raise DistributedError("; ".join(f"rank {r}: {m}" for r, m in errors))
        facts = [f for _, f in got]
        keys = sorted(set().union(*facts), key=str)
        differ = [k for k in keys if any(f.get(k) != facts[0].get(k) for f in facts[1:])]
        if differ:
            parts = []
            for k in differ[:4]:
                vals = ", ".join(f"rank {r}: {_short(f.get(k))}" for r, f in enumerate(facts))
                parts.append(f"{k} ({vals})")
            more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
            raise DistributedError(f"the {self.size} ranks disagree on {'; '.join(parts)}{more}: start every rank "
                                   f"with the same options, files and checkpoint")

    def check_in_sync(self, arrays, when: str):
        """Every rank's arrays (the parameters) must be bit-identical; a DistributedError on all ranks if not."""
        h = hashlib.blake2b(digest_size=16)
        for a in arrays:
            h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1))
        got = self.allgather(h.hexdigest(), f"the parameter check ({when})")
        if len(set(got)) > 1:
            bad = [r for r, x in enumerate(got) if x != got[0]]
            raise DistributedError(f"the parameters of rank(s) {bad} differ from rank 0's {when}: the ranks drifted "
                                   f"apart (an allreduce that is not bitwise the same on every rank?)")

    # ------------------------------------------------------------------------------------------
    # data parallelism
    # ------------------------------------------------------------------------------------------
    def shard(self, n: int, what: str = "batch") -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch of n rows (n must split evenly)."""
        if n % self.size:
            raise ValueError(f"distributed: the global {what} ({n}) must be a multiple of the number of ranks "
                             f"({self.size})")
        k = n // self.size
        return self.rank * k, (self.rank + 1) * k

    def reducer(self, scale: float = 1.0, on_stop=None) -> "Reducer":
        return Reducer(self, scale, on_stop)

    # ------------------------------------------------------------------------------------------
    # errors in a program
    # ------------------------------------------------------------------------------------------
    def fail(self, prog: str, exc: BaseException) -> int:
        """What a program does with an exception under MPI: before agree() every rank exchanges its
        error and rank 0 prints one message (exit status 1); a DistributedError is the same on every
        rank (rank 0 prints it); after agree() any other error ends the whole job (MPI_Abort)."""
        if not isinstance(exc, DistributedError) and not self.agreed:
            try:
                self.setup_failed(_describe(exc))
            except DistributedError as e:
                exc = e
        if isinstance(exc, DistributedError):
            if self.rank == 0:
                sys.stderr.write(f"{prog}: error: {exc}\n")
            return 1
        if not isinstance(exc, (KeyboardInterrupt, ValueError, OSError)):
            traceback.print_exception(exc)
        self.abort(f"{prog}: rank {self.rank}: error: {_describe(exc)}")


class Reducer:
    """gc.opt_resume_g's reduce hook: after each evaluation the ranks' gradients, losses and stop
    requests are summed by one Allreduce of one float32 buffer [g, f, stop], and g and f scaled.
    With scale 1/2 on 2 ranks the result is bitwise what one process gets with two accumulation
    steps of the two halves (x/2 is exact). `stop_requested` (set by a signal handler) reaches every
    rank with the same evaluation: on_stop() is called on all ranks after it."""

    def __init__(self, world: World, scale: float, on_stop=None):
        self.world, self.scale, self.on_stop = world, _F(scale), on_stop
        self.stop_requested = False
        self.buf = np.empty(0, _F)
        self.calls, self.seconds, self.bytes = 0, 0.0, 0

    def __call__(self, fx, g: np.ndarray):
        n = g.shape[0]
        if self.buf.shape[0] != n + 2:
            self.buf = np.empty(n + 2, _F)
        buf = self.buf
        buf[:n] = g
        buf[n], buf[n + 1] = fx, 1.0 if self.stop_requested else 0.0
        t0 = time.perf_counter()
        self.world.allreduce(buf, "the gradient allreduce")
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.bytes += buf.nbytes
        np.multiply(buf[:n], self.scale, out=g)
        if buf[n + 1] > 0 and self.on_stop is not None:
            self.on_stop()
        return _F(buf[n] * self.scale)


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) or type(exc).__name__
