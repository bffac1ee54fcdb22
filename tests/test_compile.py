"""How kernels get compiled on a cold start (graphcore/ops/compiling.py, graphcore/_inline_copy.py):
numba's inliner patched to copy a callee once gives the same machine code; kernels the disk cache
lacks compile in worker processes that fill the same cache; a worker that fails hands its kernel
back. Each case runs in a child process with a cache folder of its own and a timeout."""
import os
import subprocess
import sys

import pytest

import graphcore as gc
from graphcore.ops import compiling

_CODE = """
import hashlib, sys
import graphcore as gc
from graphcore import _inline_copy
from graphcore.ops.registry import KERNEL_SIG
from numba import cfunc
if sys.argv[1] == "plain":
    _inline_copy.uninstall()
c = cfunc(KERNEL_SIG, cache=False, error_model="numpy")(gc.BY_NAME["NEG"].kernel)
print(hashlib.sha256(c.inspect_llvm().encode()).hexdigest(), hashlib.sha256(c._library.get_asm_str().encode()).hexdigest())
"""

# three kernels: neg, scale, sum; prints the result and how many this process compiled itself
_GRAPH = """
import numpy as np, graphcore as gc
from graphcore.ops import compiling, registry
{setup}
ctx = gc.init(1 << 16)
x = gc.from_numpy(ctx, np.arange(6, dtype=np.float32))
y = gc.sum(ctx, gc.scale(ctx, gc.neg(ctx, x), 0.5))
gc.graph_compute_with_ctx(ctx, gc.build_forward(y), 1)
print(y.numpy().tolist(), len(registry._compiled_now))
"""


def _env(cache, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "GRAPHCORE_QUIET",
                                                             "GRAPHCORE_COMPILE_JOBS")}
    env["GRAPHCORE_CACHE_DIR"] = str(cache)
    env.update(kw)
    return env


def _run(code, env, *args):
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_inline_copy_gives_the_same_code(tmp_path):
    """neg's kernel inlines a helper of many blocks (unary_loop): with numba's own copy and with
    the patched one, the LLVM IR and the machine code are the same bytes."""
    procs = [subprocess.Popen([sys.executable, "-c", _CODE, mode], env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for mode in ("plain", "patched")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    plain, patched = (o.split() for o, _ in outs)
    assert len(plain) == 2 and plain == patched


def test_inline_copy_is_installed():
    """graphcore.kernel installs it (numba's inliner still copies blocks through its `copy` module)."""
    from numba.core import inline_closurecall
    assert inline_closurecall.copy is not __import__("copy")


def test_parallel_cold_start(tmp_path):
    """Two processes compile the three kernels into one cache: the result is right, the message says
    so, and a second run loads all three (nothing compiled, nothing printed)."""
    env = _env(tmp_path, GRAPHCORE_COMPILE_JOBS="2")
    cold = _run(_GRAPH.format(setup=""), env)
    assert cold.stdout.split("]")[0] + "]" == "[-7.5]"
    assert "graphcore: compiling 3 kernels (numba, 2 processes" in cold.stderr, cold.stderr
    assert "[3/3]" in cold.stderr and "kernels ready" in cold.stderr
    warm = _run(_GRAPH.format(setup=""), env)
    assert warm.stdout.split() == ["[-7.5]", "0"] and "graphcore:" not in warm.stderr


def test_worker_that_fails_hands_back(tmp_path):
    """Workers that cannot start (here: a Python that exits at once) leave every kernel to this process,
    which compiles them all and gets the same result."""
    setup = ("compiling._Worker.__init__ = lambda self: setattr(self, 'proc', __import__('subprocess').Popen("
             "[__import__('sys').executable, '-c', 'raise SystemExit(1)'], stdin=-1, stdout=-1, text=True))")
    r = _run(_GRAPH.format(setup=setup), _env(tmp_path, GRAPHCORE_COMPILE_JOBS="3"))
    assert r.stdout.split() == ["[-7.5]", "3"] and "[3/3]" in r.stderr, r.stderr


def test_worker_protocol(tmp_path):
    """A worker compiles a kernel into the cache it was given and answers ok; a name it cannot find is
    an error answer, and the worker goes on."""
    worker = compiling._Worker(str(tmp_path))
    try:
        assert worker.ask("") == "ready"
        assert worker.ask("graphcore.ops.no_such_module _kernel").startswith("error ")
        assert worker.ask("no-space-here").startswith("error ")
        assert worker.ask("graphcore.ops.elementwise _scale_kernel").startswith("ok ")     # module-level
        neg = gc.BY_NAME["NEG"].kernel          # kernel.specialise's copy of the unary loop
        assert compiling.importable(neg)
        assert worker.ask(f"{neg.__module__} {neg.__qualname__}").startswith("ok ")
    finally:
        worker.close()
    assert worker.proc.returncode == 0
    files = [name for _, _, names in os.walk(tmp_path) for name in names]
    assert any(name.startswith("elementwise._scale_kernel") for name in files)
    assert any(name.startswith(f"common.{neg.__qualname__}") for name in files)


@pytest.mark.parametrize("value, jobs", [("1", 1), ("4", 4), ("64", compiling.MAX_JOBS)])
def test_jobs_for(monkeypatch, value, jobs):
    monkeypatch.setenv("GRAPHCORE_COMPILE_JOBS", value)
    assert compiling.jobs_for(100) == jobs
    assert compiling.jobs_for(1) == 1


@pytest.mark.parametrize("load, jobs", [(0.2, 4), (1.1, 4), (1.6, 3), (3.9, 1), (9.0, 1)])
def test_jobs_for_idle_cores(monkeypatch, load, jobs):
    """Without GRAPHCORE_COMPILE_JOBS: this process and one per idle core (4 cores here, less the load
    this process does not make)."""
    monkeypatch.delenv("GRAPHCORE_COMPILE_JOBS", raising=False)
    monkeypatch.delitem(sys.modules, "mpi4py", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert compiling.jobs_for(100) == jobs


def test_jobs_for_bad_value(monkeypatch):
    monkeypatch.setenv("GRAPHCORE_COMPILE_JOBS", "many")
    with pytest.raises(ValueError, match="GRAPHCORE_COMPILE_JOBS"):
        compiling.jobs_for(4)
