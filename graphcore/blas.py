"""The BLAS numba reaches (scipy's cython_blas) and keeping it single-threaded inside executor threads.

On 2 cores, two executor threads each calling a multi-threaded BLAS oversubscribe the machine
(49 GFLOP/s in a probe, against 152 with BLAS held to one thread per executor thread), so each
executor thread sets OpenBLAS's thread-local thread count to 1 while it computes.
"""
from __future__ import annotations

import ctypes
import glob
import os

from numba.core.extending import get_cython_function_address

_sgemm = 0
_set_local = None
_searched = False
_setter = None


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
