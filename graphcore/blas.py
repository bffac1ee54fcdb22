"""The BLAS numba reaches (scipy's cython_blas) and keeping it single-threaded inside executor threads.

On 2 cores, two executor threads each calling a multi-threaded BLAS oversubscribe the machine
(49 GFLOP/s in a probe, against 152 with BLAS held to one thread per executor thread), so each
executor thread sets OpenBLAS's thread-local thread count to 1 while it computes.

numba imports scipy.linalg.cython_blas the first time it loads any compiled function (to offer
np.dot), and that import runs scipy.linalg's __init__ first: 0.15-0.3 s of scipy's linear algebra and
array-API modules that nothing here uses, a tenth of a whole baby-llama run. `preload_cython_blas`,
called when graphcore is imported, loads the extension module alone (3 ms) under its full name, so
numba's import finds it in sys.modules; `import scipy.linalg` still works as before afterwards.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import importlib.util
import os
import sys

from numba.core.extending import get_cython_function_address

_sgemm = 0
_set_local = None
_searched = False
_setter = None


CYTHON_BLAS = "scipy.linalg.cython_blas"


def preload_cython_blas() -> bool:
    """Load scipy.linalg.cython_blas without scipy.linalg's __init__ (see above); True when it is loaded
    now or was before. Anything unexpected leaves it to the ordinary import."""
    if CYTHON_BLAS in sys.modules or "scipy.linalg" in sys.modules:
        return CYTHON_BLAS in sys.modules
    try:
        scipy_spec = importlib.util.find_spec("scipy")
        if scipy_spec is None or not scipy_spec.submodule_search_locations:
            return False
        dirs = [os.path.join(d, "linalg") for d in scipy_spec.submodule_search_locations]
        spec = importlib.machinery.PathFinder.find_spec(CYTHON_BLAS, dirs)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return False
        module = importlib.util.module_from_spec(spec)
        sys.modules[CYTHON_BLAS] = module
        spec.loader.exec_module(module)
    except Exception:           # the ordinary import will say what is wrong, if anything is
        sys.modules.pop(CYTHON_BLAS, None)
        return False
    return True


def sgemm_address() -> int:
    global _sgemm
    if not _sgemm:
        _sgemm = get_cython_function_address("scipy.linalg.cython_blas", "sgemm")
    return _sgemm


def _find_set_local():
    global _set_local, _searched
    if _searched:
        return _set_local
    _searched = True
    import scipy
    libdir = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    macos_dir = os.path.join(os.path.dirname(scipy.__file__), ".dylibs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")) + glob.glob(os.path.join(macos_dir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fn = getattr(lib, "openblas_set_num_threads_local", None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            _set_local = fn
            break
    return _set_local


def thread_local_blas_setter() -> int:
    """The address of openblas_set_num_threads_local (int(int)), for compiled code; 0 when unknown."""
    global _setter
    if _setter is None:
        fn = _find_set_local()
        _setter = 0 if fn is None else ctypes.cast(fn, ctypes.c_void_p).value
    return _setter


def set_thread_local_blas_threads(n: int) -> int:
    """Set this thread's OpenBLAS thread count; returns the previous one (or -1 when unknown)."""
    fn = _find_set_local()
    if fn is None:
        return -1
    return fn(n)
