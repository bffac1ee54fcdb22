"""Checks of the non-tensor arguments of op builders (ints, floats, byte strides), pure Python.

Each raises gc.GraphError naming the op, the argument and the value, so a kernel never sees a
value it cannot handle.
"""
from __future__ import annotations

import math

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..errors import GraphError
from .common import region_overlaps, shapes  # noqa: F401 (region_overlaps: used from here too)

INT32_MAX = 2**31 - 1


def integer(op: str, name: str, v, lo=None, hi=None) -> int:
    """v as an int (bool refused), checked against [lo, hi] and the int32 range of op_params."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise GraphError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise GraphError(f"{op}: {name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise GraphError(f"{op}: {name} must be <= {hi}, got {v}")
    if not -INT32_MAX - 1 <= v <= INT32_MAX:
        raise GraphError(f"{op}: {name} = {v} does not fit in an int32 op param")
    return v


def real(op: str, name: str, v, positive=False, finite=True) -> float:
    """v as a float (int or float accepted, bool refused); finite unless told, > 0 when positive."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GraphError(f"{op}: {name} must be a float, got {type(v).__name__} {v!r}")
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise GraphError(f"{op}: {name} must be a finite float, got {v}")
    if positive and not v > 0.0:
        raise GraphError(f"{op}: {name} must be > 0, got {v}")
    return v


def boolean(op: str, name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_, int, np.integer)) or int(v) not in (0, 1):
        raise GraphError(f"{op}: {name} must be a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def check_types(op: str, t, allowed, what: str = "src0", others=()):
    """t.type must be one of `allowed` (type codes)."""
    TN.check_tensor(op, t)
    if t.type not in allowed:
        names = " or ".join(T.type_name(x).upper() for x in allowed)
        raise GraphError(f"{op}: {what} must be {names}, got {shapes(t, *others)}")
