"""Compiling the kernels a graph needs: those numba's disk cache lacks, in several processes at once.

A kernel takes numba seconds to compile and milliseconds to load from its disk cache. When a graph
needs several kernels the cache lacks (a cold start), `compile_kernels` compiles them in this
process and, at the same time, in worker processes (`python -c "...compiling import serve..."`,
one per idle core: see jobs_for) that each take the next kernel from a shared list and write it into the same
cache; this process then loads theirs from the cache. numba's cache keeps one index file per
function and writes each file whole (a temporary file, then a rename), so processes compiling
different kernels never touch the same file, and two compiling the same helper write the same
bytes. A worker that fails or dies hands its kernel back to this process, which compiles it itself
(and raises its error, if it has one). GRAPHCORE_COMPILE_JOBS=1 compiles in this process alone.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time

import numba
from numba.core.caching import FunctionCache
from numba.core.registry import cpu_target

from ..interrupts import held as sigint_held
from ..kernel import SPECIALISED
from .registry import KERNEL_SIG, OPS, _compiled_now, compile_cfunc

MAX_JOBS = 8       # processes compiling at once (this one included), whatever the core count


def in_disk_cache(fn) -> bool | None:
    """Whether numba's disk cache holds kernel `fn` compiled for this machine and these sources (its
    index lists the key numba would look up), without loading it; None when numba's cache cannot be
    asked this way (another numba version): the caller then cannot tell ahead of compiling."""
    try:
        with sigint_held:       # a Ctrl-C inside llvmlite's string handling frees a string twice (interrupts.py)
            cache = FunctionCache(fn)
            key = cache._index_key(KERNEL_SIG, cpu_target.target_context.codegen())
            return key in cache._cache_file._load_index()
    except Exception:      # noqa: BLE001 (numba's private cache layout moved: only parallelism is lost)
        return None


def jobs_for(n_kernels: int) -> int:
    """How many processes should compile n_kernels at once: GRAPHCORE_COMPILE_JOBS if set; else this
    one plus one per idle core (the cores this process may use less the load average, to which this
    busy process adds about 1: on a machine whose cores are all busy a second compiling process only
    takes turns with the first); one under MPI (every rank is a process already)."""
    env = os.environ.get("GRAPHCORE_COMPILE_JOBS", "").strip()
    if env:
        if not env.isdigit():
            raise ValueError(f"GRAPHCORE_COMPILE_JOBS must be a whole number of processes, got {env!r}")
        jobs = int(env)
    elif "mpi4py" in sys.modules:
        jobs = 1
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        jobs = cores + 1 - round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else cores
        jobs = min(jobs, cores)
    return max(1, min(jobs, MAX_JOBS, n_kernels))


def find_kernel(module: str, name: str):
    """The kernel function named `name` in `module` (a module-level function), or kernel.specialise's
    copy of that name (graphcore's are all made when graphcore is imported)."""
    return SPECIALISED.get(name) or getattr(importlib.import_module(module), name)


def importable(fn) -> bool:
    """Whether a worker (a process that imported graphcore) finds fn by its module and name."""
    try:
        return find_kernel(fn.__module__, fn.__qualname__) is fn
    except (ImportError, AttributeError):
        return False


class _Progress:
    """The lines on stderr: "compiling N kernels ...", one per kernel compiled, "kernels ready"."""

    def __init__(self, n: int, jobs: int):
        self.n, self.jobs, self.k, self.lock = n, jobs, 0, threading.Lock()
        self.quiet = os.environ.get("GRAPHCORE_QUIET", "").strip() not in ("", "0")
        self.t_start = time.perf_counter()
        self.reported = set()

    def report(self, fn, name: str, seconds: float):
        with self.lock:
            self.reported.add(fn)
            self.k += 1
            if self.quiet:
                return
            if self.k == 1:
                many = "s" if self.n > 1 else ""
                where = f", {self.jobs} processes" if self.jobs > 1 else ""
                print(f"graphcore: compiling {self.n} kernel{many} (numba{where}: this once, they are cached on "
                      f"disk) ...", file=sys.stderr, flush=True)
            print(f"graphcore:   [{self.k}/{max(self.n, self.k)}] {name} {seconds:.1f} s", file=sys.stderr, flush=True)

    def finish(self):
        if self.k and not self.quiet:
            print(f"graphcore: kernels ready in {time.perf_counter() - self.t_start:.1f} s", file=sys.stderr,
                  flush=True)


class _Worker:
    """A compiling process: reads "module qualname" lines, compiles each kernel into the disk cache
    and answers "ok SECONDS" (or "error ..."); its stdout carries nothing else."""

    def __init__(self, cache_dir: str | None = None):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir or numba.config.CACHE_DIR, GRAPHCORE_COMPILE_JOBS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, "-c", "from graphcore.ops.compiling import serve; serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def ask(self, line: str) -> str:
        """Send a line, return the answer ('' when the worker is gone)."""
        try:
            if line:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            return self.proc.stdout.readline().strip()
        except (OSError, ValueError):
            return ""

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve():
    """A worker's loop (see _Worker): this process imported graphcore, so every op is registered."""
    out, sys.stdout = sys.stdout, sys.stderr       # whatever else prints must not reach the answers
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        try:
            module, name = line.split()
            compile_cfunc(find_kernel(module, name))
        except Exception as e:      # noqa: BLE001 (the parent compiles it again and raises it)
            print(f"error {type(e).__name__}", file=out, flush=True)
            continue
        print(f"ok {time.perf_counter() - t0:.3f}", file=out, flush=True)


def _compile_parallel(todo: dict, missing: list, jobs: int, progress: _Progress):
    """Compile `missing` (kernel functions, keys of todo) here and in jobs - 1 workers at once."""
    local = [fn for fn in missing if not importable(fn)]      # a worker could not find these
    queue = [fn for fn in reversed(missing) if fn not in local]
    lock = threading.Lock()

    def take():
        with lock:
            return queue.pop() if queue else None

    def feed(worker):
        try:
            if worker.ask("") != "ready":
                return
            while (fn := take()) is not None:
                answer = worker.ask(f"{fn.__module__} {fn.__qualname__}")
                if not answer.startswith("ok "):
                    with lock:
                        queue.append(fn)       # this process compiles it (and raises its error)
                    return
                progress.report(fn, todo[fn][0].name, float(answer[3:]))
        finally:
            worker.close()

    threads = []
    for _ in range(jobs - 1):
        try:
            worker = _Worker()
        except OSError:
            break
        threads.append(threading.Thread(target=feed, args=(worker,), daemon=True))
        threads[-1].start()

    def here(fn):
        op, node = todo[fn]
        t0 = time.perf_counter()
        op.kernel_address(node)
        progress.report(fn, op.name, time.perf_counter() - t0)

    try:
        for fn in local:
            here(fn)
        while (fn := take()) is not None:
            here(fn)
    finally:              # (a kernel that fails to compile here: the workers stop after their current one)
        with lock:
            queue.clear()
        for t in threads:
            t.join()


def compile_kernels(nodes):
    """Compile (or load from numba's disk cache) the kernels `nodes` need that this process has not
    loaded yet. Those the cache lacks are compiled in several processes at once (see the module's
    docstring), with progress on stderr ("compiling N kernels ...", one line per kernel, numbered
    among the N) so that a cold start never looks hung; GRAPHCORE_QUIET=1 silences it."""
    todo = {}
    for node in nodes:
        op = OPS[node.op]
        fn = op.kernel_function(node)
        if fn is not None and fn not in op._addresses and fn not in todo:
            todo[fn] = (op, node)
    if not todo:
        return
    cached = {fn: in_disk_cache(fn) for fn in todo}
    missing = [fn for fn, hit in cached.items() if hit is False]
    unknown = sum(hit is None for hit in cached.values())
    jobs = jobs_for(len(missing))
    progress = _Progress(len(missing) + unknown, jobs)
    if jobs > 1:
        _compile_parallel(todo, missing, jobs, progress)
    for fn, (op, node) in todo.items():       # load the rest (or compile: a cache numba could not be asked about)
        t0 = time.perf_counter()
        op.kernel_address(node)
        if fn in _compiled_now and fn not in progress.reported:
            progress.report(fn, op.name, time.perf_counter() - t0)
    progress.finish()
