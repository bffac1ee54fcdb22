"""Where numba keeps graphcore's compiled kernels.

numba caches a function beside its source file and checks only that file's timestamp, so a kernel
that inlines a helper from another module (kernel.py, ops/common.py, native.py) would keep running
the old helper after that module changed: an edit, or an upgrade in place. graphcore's kernels are
therefore cached in a folder named after a hash of graphcore's compiled code (every source file
that defines numba functions: editing the others keeps the cache), under
$GRAPHCORE_CACHE_DIR (default ~/.cache/graphcore, or $XDG_CACHE_HOME/graphcore); a NUMBA_CACHE_DIR
you set yourself wins. Imported first by graphcore/__init__.py: numba picks the folder when a
cached function is defined.
"""
from __future__ import annotations

import hashlib
import os
import pathlib

import numba


_NUMBA_MARKERS = (b"njit", b"cfunc", b"intrinsic", b"@inline", b"inline(", b"qjit")


def sources_digest() -> str:
    """A hash of the graphcore source files that hold numba code (names and bytes): 16 hex digits."""
    root = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        data = path.read_bytes()
        if any(m in data for m in _NUMBA_MARKERS):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(data)
    return h.hexdigest()[:16]


def cache_dir() -> str:
    base = os.environ.get("GRAPHCORE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "graphcore")
    return os.path.join(base, f"numba-{sources_digest()}")


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = cache_dir()
