"""check_gradients: a graph's backward gradients against central finite differences.

    def build(ctx, w, x):
        return gc.sum(ctx, gc.sqr(ctx, gc.mul_mat(ctx, w, x)))

    gc.testing.check_gradients(build, [w, x], eps=1e-3, atol=1e-3, rtol=math.inf)

`build_fn(ctx, *params)` builds the loss from the parameter tensors (which live in the caller's
context and hold the point to check at). A one-element result is the loss itself (its gradient
is seeded with 1, as ggml_opt does). Any other result y stands for the loss sum(w * y) with fixed
random weights w in [0.5, 1.5]: y's gradient is seeded with w, which catches transposed or
permuted gradients that a plain sum hides, while keeping each gradient away from zero.

The numeric side evaluates the forward graph in float32 with each parameter element moved to
x0 +- eps (as float32 values) and differences in float64: the loss is summed in float64 from
its float32 elements (y's elements, or the input of a final `sum`), and the step is the exact
distance between the two float32 points. Tolerances follow ggml's test-grad0: an element fails
when |numeric - analytic| > atol or, for a nonzero numeric value, |numeric - analytic| /
|numeric| > rtol (rtol=math.inf switches the relative test off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..autodiff import build_backward, graph_reset, set_param
from ..context import init
from ..errors import GraphError
from ..compiled import graph_compile
from ..graph import Graph, build_forward_expand
from ..ops.registry import BY_NAME

__all__ = ["check_gradients", "GradCheckResult"]


@dataclass
class GradCheckResult:
    """What check_gradients compared: per parameter, the analytic and numeric gradients (float64,
    numpy order: shape ne reversed, 4-D) and the worst element over all of them."""
    analytic: list = field(default_factory=list)
    numeric: list = field(default_factory=list)
    checked: list = field(default_factory=list)        # per parameter: flat indices compared (all by default)
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    worst: dict | None = None
    ok: bool = True

    def __str__(self):
        w = self.worst
        head = (f"gradient check {'passed' if self.ok else 'FAILED'}: max abs err {self.max_abs_err:.3g}, "
                f"max rel err {self.max_rel_err:.3g}")
        if not w:
            return head
        return (f"{head}; worst element: param {w['param']} '{w['name']}' ne={w['ne']} at (i0, i1, i2, i3)="
                f"{w['index']}, x0={w['x0']:.6g}: analytic {w['analytic']:.9g}, numeric {w['numeric']:.9g}, "
                f"abs err {w['abs_err']:.3g}, rel err {w['rel_err']:.3g} (eps {w['eps']:g}, atol {w['atol']:g}, "
                f"rtol {w['rtol']:g})")


def check_gradients(build_fn, params, eps: float = 1e-3, atol: float = 1e-3, rtol: float = math.inf,
                    n_threads: int = 1, *, seed: int = 0, max_elements: int | None = None,
                    mem_size: int = 64 << 20, graph_size: int = 8192, raise_on_failure: bool = True
                    ) -> GradCheckResult:
    """Compare the backward graph's gradients of the loss built by `build_fn(ctx, *params)` with
    central finite differences, for every element of every parameter (or `max_elements` random
    ones per parameter). Returns a GradCheckResult; on failure raises AssertionError naming the
    worst element (or returns the result with ok=False when raise_on_failure is false).

    The parameters are marked with set_param for the check and get their flags and gradient
    back afterwards; their values are restored. Graph nodes are built in a scratch context of
    `mem_size` bytes; both graphs run on `n_threads` threads."""
    if isinstance(params, TN.Tensor):
        params = [params]
    params = list(params)
    if not params:
        raise GraphError("check_gradients: no parameters given")
    for p in params:
        TN.check_tensor("check_gradients", p)
        if p.type != T.TYPE_F32 or not p.has_data:
            raise GraphError(f"check_gradients: parameters must be F32 tensors with data, got {TN.describe(p)}")
    if not eps > 0:
        raise GraphError(f"check_gradients: eps must be > 0, got {eps}")
    saved = [(p.flags, p.grad) for p in params]
    values = [p.numpy4d().copy() for p in params]
    ctx = init(mem_size)
    try:
        for p in params:
            p.grad = None
            p.flags &= ~TN.FLAG_PARAM
            set_param(ctx, p)
        y = build_fn(ctx, *params)
        TN.check_tensor("check_gradients: build_fn's result", y)
        if y.type != T.TYPE_F32:
            raise GraphError(f"check_gradients: the loss must be F32, got {TN.describe(y)}")
        gf = Graph(graph_size, True)
        build_forward_expand(gf, y)
        gb = build_backward(ctx, gf, keep=False)
        scalar = TN.is_scalar(y)
        weights = None
        if not scalar:
            rng = np.random.default_rng(seed)
            weights = rng.uniform(0.5, 1.5, size=tuple(y.ne[::-1])).astype(np.float32)
        forward, backward = graph_compile(gf, n_threads), graph_compile(gb, n_threads)

        # analytic: the backward graph with y's gradient seeded
        graph_reset(gb)
        if y.grad is not None:
            y.grad.numpy4d()[...] = 1.0 if weights is None else weights
        backward()
        analytic = [np.array(p.grad.numpy4d(), dtype=np.float64) if p.grad is not None
                    else np.zeros(tuple(p.ne[::-1])) for p in params]

        # numeric: central differences of the forward graph, the loss summed in float64
        src = y.src[0] if scalar and y.op == BY_NAME["SUM"].code and y.src[0].type == T.TYPE_F32 else None

        def loss() -> float:
            forward()
            if weights is not None:
                return float(np.sum(weights.astype(np.float64) * y.numpy4d().astype(np.float64)))
            if src is not None:
                return float(np.sum(src.numpy4d().astype(np.float64)))
            return float(y.numpy4d().reshape(-1)[0])

        rng = np.random.default_rng(seed + 1)
        result = GradCheckResult(analytic=analytic)
        worst_score = -1.0
        for pi, p in enumerate(params):
            a4 = p.numpy4d()
            n = a4.size
            idx = np.arange(n)
            if max_elements is not None and n > max_elements:
                idx = np.sort(rng.choice(n, size=max_elements, replace=False))
            num = np.full(a4.shape, np.nan)
            for k in idx:
                pos = np.unravel_index(int(k), a4.shape)
                x0 = a4[pos]
                xp, xm = np.float32(x0 + np.float32(eps)), np.float32(x0 - np.float32(eps))
                a4[pos] = xp
                fp = loss()
                a4[pos] = xm
                fm = loss()
                a4[pos] = x0
                g0 = (fp - fm) / (np.float64(xp) - np.float64(xm))
                g1 = float(analytic[pi][pos])
                num[pos] = g0
                err = abs(g0 - g1) if not (math.isnan(g0) or math.isnan(g1)) else math.inf
                rel = err / abs(g0) if g0 != 0 else 0.0
                result.max_abs_err = max(result.max_abs_err, err)
                result.max_rel_err = max(result.max_rel_err, rel)
                bad = err > atol or rel > rtol
                score = max(err / atol if atol > 0 else (math.inf if err else 0.0),
                            rel / rtol if rtol > 0 else (math.inf if rel else 0.0))
                if bad:
                    result.ok = False
                if score > worst_score:
                    worst_score = score
                    result.worst = dict(param=pi, name=p.name, ne=list(p.ne), index=tuple(int(i) for i in pos[::-1]),
                                        x0=float(x0), analytic=g1, numeric=float(g0), abs_err=err, rel_err=rel,
                                        eps=eps, atol=atol, rtol=rtol)
            result.numeric.append(num)
            result.checked.append(idx)
        if not result.ok and raise_on_failure:
            raise AssertionError(str(result))
        return result
    finally:
        for p, (flags, grad), v in zip(params, saved, values):
            p.flags, p.grad = flags, grad
            p.numpy4d()[...] = v
