"""numba's inlining of `inline="always"` functions, made cheaper: the same IR, copied once.

graphcore's kernels are built from small helpers that numba inlines into the kernel's IR
(graphcore.kernel.inline). numba copies a callee's IR for each call site (`InlineWorker.inline_ir`,
numba/core/inline_closurecall.py) by deep-copying its blocks one at a time, each with a memo of its
own; every block refers to the function's scope, which holds all its variables, so each block copies
all of them again: a callee of B blocks and V variables costs B x V objects, twice per call site. In
the kernels here that was about 40% of a cold compile (SOFT_MAX: 8 s of CPU).

`install()` gives the blocks of one copy one memo (the block copies share one copy of the scope, as a
single deepcopy of all the blocks would), and the copy is all that changes: the IR, the LLVM IR and
the machine code come out byte for byte the same (tests/test_compile.py compares them). It only
replaces the `copy` module that inline_closurecall uses, and does nothing when numba's inliner is
not written that way (another numba version): inlining then costs what it did.
"""
from __future__ import annotations

import copy
import types

from numba.core import inline_closurecall, ir

_last = [None, None]       # (the scope of the IR being copied, the memo its blocks share)


def _deepcopy(x, memo=None):
    if memo is not None or not isinstance(x, ir.Block):
        return copy.deepcopy(x, memo)
    scope, shared = _last
    # a block of another IR, or one this memo has copied already (the same IR copied again): a new copy
    if x.scope is not scope or id(x) in shared:
        shared = {}
        _last[0], _last[1] = x.scope, shared
    return copy.deepcopy(x, shared)


def install() -> bool:
    """Make numba's inliner copy a callee's blocks with one memo; True if it is (or already was) in place."""
    mod = inline_closurecall.__dict__.get("copy")
    if isinstance(mod, types.SimpleNamespace) and mod.deepcopy is _deepcopy:
        return True
    if mod is not copy:
        return False
    inline_closurecall.copy = types.SimpleNamespace(deepcopy=_deepcopy, copy=copy.copy)
    return True


def uninstall() -> None:
    """Give numba's inliner back the copy module (tests compare the code both ways)."""
    if isinstance(inline_closurecall.__dict__.get("copy"), types.SimpleNamespace):
        inline_closurecall.copy = copy
        _last[0] = _last[1] = None
