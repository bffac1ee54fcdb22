"""Contexts: one memory arena each; tensors are views at aligned offsets into it."""
from __future__ import annotations

import numpy as np

from .errors import GraphError, OutOfMemoryError

MEM_ALIGN = 16  # ggml's GGML_MEM_ALIGN


class Context:
    """A memory arena (a numpy uint8 buffer) and the tensors placed in it (ggml_context). Use `gc.init`."""

    def __init__(self, mem_size: int, mem_buffer=None, no_alloc: bool = False):
        if isinstance(mem_size, (bool, np.bool_)) or not isinstance(mem_size, (int, np.integer)) or mem_size < 0:
            raise GraphError(f"init: mem_size must be a non-negative int, got {mem_size!r}")
        if mem_buffer is None:
            # over-allocate so the arena's base is 64-byte aligned (a cache line, as malloc'd ggml arenas are)
            raw = np.zeros(int(mem_size) + 64, dtype=np.uint8)
            start = (-raw.ctypes.data) % 64
            self.arena = raw[start:start + int(mem_size)]
        else:
            arena = mem_buffer if isinstance(mem_buffer, np.ndarray) else np.frombuffer(mem_buffer, dtype=np.uint8)
            if arena.dtype != np.uint8 or arena.ndim != 1 or not arena.flags.c_contiguous or not arena.flags.writeable:
                raise GraphError("init: mem_buffer must be a writable, contiguous 1-D uint8 buffer, got "
                                 f"dtype={arena.dtype} shape={arena.shape}")
            if mem_size > arena.nbytes:
                raise GraphError(f"init: mem_size {mem_size} exceeds mem_buffer's {arena.nbytes} bytes")
            arena = arena[:mem_size] if mem_size else arena
            # tensors start MEM_ALIGN-aligned in memory, not just in offset: skip to the first aligned byte
            self.arena = arena[min(arena.nbytes, (-arena.ctypes.data) % MEM_ALIGN):]
        self.mem_size = int(self.arena.nbytes)
        self.base = int(self.arena.ctypes.data)
        self.no_alloc = bool(no_alloc)
        self.offs = 0             # first free byte of the arena
        self.n_objects = 0        # tensors created (ggml counts objects too)
        self.freed = False
        self.work_buffers = []    # graph_compute_with_ctx keeps its work buffers here, outside the arena
        self.no_data = []         # tensors created without data, in order (alloc_ctx_tensors gives them bytes)

    def alloc(self, nbytes: int) -> int:
        """Reserve `nbytes` at an aligned offset; returns the offset."""
        self.check_alive("alloc")
        start = (self.offs + MEM_ALIGN - 1) // MEM_ALIGN * MEM_ALIGN
        if start + nbytes > self.mem_size:
            left = max(0, self.mem_size - start)
            raise OutOfMemoryError(f"context arena out of memory: asked for {nbytes} bytes, "
                                   f"{left} left of {self.mem_size}")
        self.offs = start + nbytes
        return start

    def check_alive(self, what: str):
        if self.freed:
            raise GraphError(f"{what}: the context was freed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        free(self)
        return False

    def __repr__(self):
        return f"<graphcore.Context used={self.offs} of {self.mem_size} bytes, {self.n_objects} tensors>"


def init(mem_size: int = 16 * 1024 * 1024, mem_buffer=None, no_alloc: bool = False) -> Context:
    """ggml_init: a context whose arena holds `mem_size` bytes (or lives in the caller's `mem_buffer`;
    its first bytes up to a 16-byte boundary are then left unused, so every tensor is aligned)."""
    return Context(mem_size, mem_buffer, no_alloc)


_frees = [0]


def frees() -> int:
    """How many contexts were freed so far (the executor re-checks a kept plan when this changes)."""
    return _frees[0]


def free(ctx: Context) -> None:
    """ggml_free: release the arena. Tensors of a freed context can no longer be computed or read."""
    if not isinstance(ctx, Context):
        raise GraphError(f"free: expected a Context, got {type(ctx).__name__}")
    ctx.freed = True
    _frees[0] += 1
    ctx.arena = None
    ctx.work_buffers = []
    ctx.no_data = []


def used_mem(ctx: Context) -> int:
    """Bytes of ctx's arena taken so far (ggml_used_mem)."""
    if not isinstance(ctx, Context):
        raise GraphError(f"used_mem: expected a Context, got {type(ctx).__name__}")
    return ctx.offs


def get_no_alloc(ctx: Context) -> bool:
    """Whether new tensors of ctx get no data (ggml_get_no_alloc)."""
    return ctx.no_alloc


def set_no_alloc(ctx: Context, no_alloc: bool) -> None:
    """Make ctx create the next tensors without data (True) or in its arena (False) (ggml_set_no_alloc)."""
    ctx.no_alloc = bool(no_alloc)


def get_mem_size(ctx: Context) -> int:
    """Size of ctx's arena in bytes (ggml_get_mem_size)."""
    return ctx.mem_size
