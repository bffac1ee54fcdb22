"""Optimizers as in ggml_opt (llama.cpp 4480542): Adam/AdamW and L-BFGS with backtracking line searches.

The optimizer works on one flat float32 vector x holding every parameter (nodes of the forward
graph flagged as parameters, in graph order); parameters and gradients move between the graph
and x one tensor at a time with numpy, never element by element. Scalars follow ggml's float
arithmetic; dot products accumulate in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Optional

import numpy as np

from . import autodiff
from . import tensor as TN
from . import types as T
from .dump import graph_print
from .errors import GraphError
from .compiled import graph_compile
from .graph import build_forward_expand, graph_dup, new_graph_custom
from .optim_kernels import (GATHER_ADD, GATHER_FIRST, GATHER_SET, _adam_update, _dot, _gather, _lbfgs_direction,
                            _norm, _norms, _scatter, _step_scatter)

class OptType(IntEnum):
    """ggml_opt_type: which optimizer opt_default_params sets up."""
    ADAM = 0
    LBFGS = 1

    def __repr__(self):
        return f"OPT_{self.name}"


class LineSearch(IntEnum):
    """ggml_linesearch: the L-BFGS line search's stopping condition."""
    BACKTRACKING_ARMIJO = 0
    BACKTRACKING_WOLFE = 1
    BACKTRACKING_STRONG_WOLFE = 2

    def __repr__(self):
        return f"LINESEARCH_{self.name}"


class OptResult(IntEnum):
    """ggml_opt_result: what opt / opt_resume return. Prints as its name (OPT_OK, ...), compares
    equal to ggml's integer codes."""
    OK = 0
    DID_NOT_CONVERGE = 1
    NO_CONTEXT = 2
    INVALID_WOLFE = 3
    FAIL = 4
    CANCEL = 5
    LINESEARCH_FAIL = -128
    LINESEARCH_MINIMUM_STEP = -127
    LINESEARCH_MAXIMUM_STEP = -126
    LINESEARCH_MAXIMUM_ITERATIONS = -125
    LINESEARCH_INVALID_PARAMETERS = -124

    def __repr__(self):
        return self.name if self.name.startswith("LINESEARCH_") else f"OPT_{self.name}"

    __str__ = __repr__


OPT_ADAM, OPT_LBFGS = OptType.ADAM, OptType.LBFGS

LINESEARCH_BACKTRACKING_ARMIJO = LineSearch.BACKTRACKING_ARMIJO
LINESEARCH_BACKTRACKING_WOLFE = LineSearch.BACKTRACKING_WOLFE
LINESEARCH_BACKTRACKING_STRONG_WOLFE = LineSearch.BACKTRACKING_STRONG_WOLFE
LINESEARCH_DEFAULT = LINESEARCH_BACKTRACKING_WOLFE

OPT_OK = OptResult.OK
OPT_DID_NOT_CONVERGE = OptResult.DID_NOT_CONVERGE
OPT_NO_CONTEXT = OptResult.NO_CONTEXT
OPT_INVALID_WOLFE = OptResult.INVALID_WOLFE
OPT_FAIL = OptResult.FAIL
OPT_CANCEL = OptResult.CANCEL
LINESEARCH_FAIL = OptResult.LINESEARCH_FAIL
LINESEARCH_MINIMUM_STEP = OptResult.LINESEARCH_MINIMUM_STEP
LINESEARCH_MAXIMUM_STEP = OptResult.LINESEARCH_MAXIMUM_STEP
LINESEARCH_MAXIMUM_ITERATIONS = OptResult.LINESEARCH_MAXIMUM_ITERATIONS
LINESEARCH_INVALID_PARAMETERS = OptResult.LINESEARCH_INVALID_PARAMETERS

RESULT_NAMES = {r.value: r.name for r in OptResult}

_F = np.float32


@dataclass
class AdamParams:
    """ggml_opt_params.adam: Adam (AdamW with decay > 0) settings; `OptParams.adam`."""
    n_iter: int = 10000
    sched: float = 1.0          # learning-rate schedule factor (a callback may change it)
    decay: float = 0.0          # weight decay (AdamW) for tensors with >= decay_min_ndim dims
    decay_min_ndim: int = 2
    alpha: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_f: float = 1e-5         # stop when |f - f_prev| / f < eps_f
    eps_g: float = 1e-3         # kept for ggml compatibility (ggml does not use it either)
    gclip: float = 0.0          # clip the gradient's norm to gclip when > 0


@dataclass
class LBFGSParams:
    """ggml_opt_params.lbfgs: L-BFGS settings (history m, line search); `OptParams.lbfgs`."""
    m: int = 6
    n_iter: int = 100
    max_linesearch: int = 20
    eps: float = 1e-5           # stop when ||g|| / max(||x||, 1) <= eps
    ftol: float = 1e-4          # sufficient-decrease (Armijo) constant
    wolfe: float = 0.9          # curvature constant
    min_step: float = 1e-20
    max_step: float = 1e20
    linesearch: int = LINESEARCH_DEFAULT


@dataclass
class OptParams:
    """ggml_opt_params: the optimizer (type OPT_ADAM or OPT_LBFGS), its stopping rules and settings.
    Start from opt_default_params(type)."""
    type: int = OPT_ADAM
    graph_size: int = 2048
    n_threads: int = 1
    past: int = 0               # delta-based test over the last `past` values of f (0: off)
    delta: float = 1e-5
    max_no_improvement: int = 100
    print_forward_graph: bool = False    # ggml defaults these to true and writes .dot files
    print_backward_graph: bool = False
    n_gradient_accumulation: int = 1
    adam: AdamParams = field(default_factory=AdamParams)
    lbfgs: LBFGSParams = field(default_factory=LBFGSParams)


def opt_default_params(type: int) -> OptParams:
    """ggml_opt_default_params(GGML_OPT_ADAM | GGML_OPT_LBFGS)."""
    if type == OPT_ADAM:
        return OptParams(type=OPT_ADAM, max_no_improvement=100)
    if type == OPT_LBFGS:
        return OptParams(type=OPT_LBFGS, max_no_improvement=0)
    raise GraphError(f"opt_default_params: unknown optimizer type {type!r} (OPT_ADAM=0, OPT_LBFGS=1)")


@dataclass
class OptContext:
    """ggml_opt_context: the optimizer's state, kept across opt_resume calls."""
    ctx: object = None
    params: Optional[OptParams] = None
    iter: int = 0
    nx: int = 0
    just_initialized: bool = True
    loss_before: float = 0.0
    loss_after: float = 0.0
    # Adam
    g: Optional[np.ndarray] = None
    m: Optional[np.ndarray] = None
    v: Optional[np.ndarray] = None
    pf: Optional[np.ndarray] = None
    fx_best: float = 0.0
    fx_prev: float = 0.0
    n_no_improvement: int = 0
    # L-BFGS
    x: Optional[np.ndarray] = None
    xp: Optional[np.ndarray] = None
    gp: Optional[np.ndarray] = None
    d: Optional[np.ndarray] = None
    lmal: Optional[np.ndarray] = None
    lmys: Optional[np.ndarray] = None
    lms: Optional[np.ndarray] = None
    lmy: Optional[np.ndarray] = None
    step: float = 0.0
    j: int = 0
    k: int = 1
    end: int = 0
    n_evals: int = 0            # forward+backward evaluations made (not in ggml; for reports)


def opt_init(ctx, opt: OptContext, params: OptParams, nx: int) -> OptContext:
    """ggml_opt_init: (re)initialise opt's state for nx parameters."""
    if not isinstance(params, OptParams):
        raise GraphError(f"opt_init: params must come from opt_default_params, got {type(params).__name__}")
    opt.ctx, opt.params, opt.iter, opt.nx, opt.just_initialized = ctx, params, 0, nx, True
    z = lambda n: np.zeros(n, dtype=_F)  # noqa: E731
    opt.pf = z(params.past) if params.past > 0 else None
    if params.type == OPT_ADAM:
        opt.g, opt.m, opt.v = z(nx), z(nx), z(nx)
    elif params.type == OPT_LBFGS:
        mm = params.lbfgs.m
        opt.x, opt.xp, opt.g, opt.gp, opt.d = z(nx), z(nx), z(nx), z(nx), z(nx)
        opt.lmal, opt.lmys = z(mm), z(mm)
        opt.lms, opt.lmy = np.zeros((mm, nx), _F), np.zeros((mm, nx), _F)
    else:
        raise GraphError(f"opt_init: unknown optimizer type {params.type!r}")
    return opt


def _compiled(g, n_threads):
    """g's CompiledGraph for n_threads, made once and kept on g: a training loop calls the optimizer per
    batch on the same graphs, and planning them anew each time cost as much as a batch's arithmetic
    (the CompiledGraph re-plans by itself when g has changed since)."""
    c = g._compiled.get(n_threads)
    if c is None:
        c = g._compiled[n_threads] = graph_compile(g, n_threads)
    return c


class _Problem:
    """The parameters of a forward graph, a planned backward graph, and one evaluation f(x), g(x)."""

    def __init__(self, f, gf, gb, params: OptParams, reduce=None):
        if not isinstance(f, TN.Tensor) or not TN.is_scalar(f):
            raise GraphError(f"opt: f must be a scalar tensor, got {TN.describe(f)}")
        if f.grad is None:
            raise GraphError("opt: f has no gradient; mark parameters with set_param before building f, "
                             "then build the backward graph")
        self.ps = [n for n in gf.nodes if n.flags & TN.FLAG_PARAM]
        for p in self.ps:
            if p.type != T.TYPE_F32:
                raise GraphError(f"opt: parameters must be F32, got {TN.describe(p)}")
            if p.grad is None:
                raise GraphError(f"opt: parameter {TN.describe(p)} has no gradient in the backward graph")
            if not (TN.is_contiguous(p) and TN.is_contiguous(p.grad) and p.grad.type == T.TYPE_F32):
                raise GraphError(f"opt: parameter {TN.describe(p)} and its gradient "
                                 f"{TN.describe(p.grad)} must be contiguous F32 tensors")
            for t, what in ((p, "parameter"), (p.grad, "gradient of parameter")):
                # the optimizer moves values by address: a tensor without memory must stop here
                if t.ctx.freed:
                    raise GraphError(f"opt: {what} {TN.describe(p)}: the context was freed")
                if not t.has_data:
                    raise GraphError(f"opt: {what} {TN.describe(p)} has no data (its context is no_alloc "
                                     f"and it was never allocated)")
        self.offs = np.array([0] + [TN.nelements(p) for p in self.ps], dtype=np.int64).cumsum()
        self.nx = int(self.offs[-1])
        self.f, self.gb = f, gb
        self.compute_gb = _compiled(gb, params.n_threads)
        self.n_accum = max(1, params.n_gradient_accumulation)
        # data addresses: parameters and gradients move with one compiled call each way
        self.p_addrs = np.array([p.data for p in self.ps], dtype=np.int64)
        self.g_addrs = np.array([p.grad.data for p in self.ps], dtype=np.int64)
        self.f_value = f.numpy4d().reshape(-1)
        self.f_seed = f.grad.numpy4d().reshape(-1)
        self.reduce = reduce

    def get_params(self, x):
        _gather(x, self.p_addrs, self.offs, 1.0, GATHER_SET)

    def set_params(self, x):
        _scatter(x, self.p_addrs, self.offs)

    def evaluate(self, opt, g, callback, sched_box):
        """f at the parameters now in the graph, its gradient accumulated into g (zeroed first).
        Returns f, or None when the callback cancelled."""
        norm = _F(1.0) / _F(self.n_accum)
        fx = _F(0.0)
        for accum_step in range(self.n_accum):
            if callback is not None:
                if callback(accum_step, sched_box):
                    if accum_step == 0:
                        g[:] = 0
                    return None
            self.f_seed[0] = 1.0
            self.compute_gb()
            opt.n_evals += 1
            _gather(g, self.g_addrs, self.offs, norm, GATHER_ADD if accum_step else GATHER_FIRST)
            fx += self.f_value[0]
        fx = _F(fx * norm)
        # data-parallel training: every rank's loss and gradient combined here, so all take one step
        return fx if self.reduce is None else _F(self.reduce(fx, g))


class _Sched:
    """A mutable learning-rate schedule factor handed to callbacks (ggml passes `float * sched`)."""

    def __init__(self, value):
        self.value = value


def _adam(opt: OptContext, params: OptParams, prob: _Problem, callback) -> int:
    if opt.params.type != params.type or opt.nx != prob.nx or opt.params.past != params.past:
        it = opt.iter
        opt_init(opt.ctx, opt, params, prob.nx)
        opt.iter = it
    a = params.adam
    sched = _Sched(a.sched)
    alpha, beta1, beta2, eps, gclip = _F(a.alpha), _F(a.beta1), _F(a.beta2), _F(a.eps), a.gclip
    decay = _F(a.decay) * alpha
    g, m, v, pf = opt.g, opt.m, opt.v, opt.pf
    x = np.empty(prob.nx, _F)
    decay_flags = np.array([TN.n_dims(p) >= a.decay_min_ndim for p in prob.ps], dtype=np.bool_)

    fx = prob.evaluate(opt, g, callback, sched)
    if fx is None:
        return OPT_CANCEL
    opt.fx_prev = opt.fx_best = fx
    if pf is not None:
        pf[opt.iter % params.past] = fx
    opt.loss_before = opt.loss_after = fx
    if opt.just_initialized:
        opt.n_no_improvement = 0
        opt.just_initialized = False

    iter0 = opt.iter
    for t in range(a.n_iter):
        opt.iter = iter0 + t + 1
        gnorm = _F(1.0)
        if gclip > 0:
            norm = _norm(g)
            if norm > gclip:
                gnorm = _F(gclip / norm)
        beta1h = _F(alpha * _F(sched.value) / (_F(1.0) - _F(beta1 ** opt.iter)))
        beta2h = _F(_F(1.0) / (_F(1.0) - _F(beta2 ** opt.iter)))
        prob.get_params(x)
        _adam_update(x, g, m, v, prob.offs, decay_flags, _F(gnorm), beta1, beta2, beta1h, beta2h, eps,
                     _F(decay * _F(sched.value)))
        prob.set_params(x)

        fx = prob.evaluate(opt, g, callback, sched)
        if fx is None:
            return OPT_CANCEL
        opt.loss_after = fx
        if not np.isfinite(fx):
            return OPT_FAIL
        if abs(fx - opt.fx_prev) / fx < a.eps_f:
            return OPT_OK
        if pf is not None:
            if params.past <= iter0 + t:
                rate = (pf[(iter0 + t) % params.past] - fx) / fx
                if abs(rate) < params.delta:
                    return OPT_OK
            pf[(iter0 + t) % params.past] = fx
        if params.max_no_improvement > 0:
            if opt.fx_best > fx:
                opt.fx_best = fx
                opt.n_no_improvement = 0
            else:
                opt.n_no_improvement += 1
                if opt.n_no_improvement >= params.max_no_improvement:
                    return OPT_OK
        opt.fx_prev = fx
    return OPT_DID_NOT_CONVERGE


def _linesearch_backtracking(params: OptParams, x, fx, g, d, step, xp, prob: _Problem, opt, callback):
    """Returns (result, fx, step): result is the number of evaluations, or a negative LINESEARCH_
    code, or OPT_CANCEL (as ggml, signalled separately through `cancelled`)."""
    lb = params.lbfgs
    dec, inc = _F(0.5), _F(2.1)
    if step <= 0:
        return LINESEARCH_INVALID_PARAMETERS, fx, step, False
    dginit = _F(_dot(g, d))
    if dginit > 0:                                  # not a descent direction
        return LINESEARCH_FAIL, fx, step, False
    finit = fx
    dgtest = _F(_F(lb.ftol) * dginit)
    count = 0
    sched = _Sched(0.0)                             # L-BFGS ignores the learning-rate schedule
    while True:
        _step_scatter(x, xp, d, step, prob.p_addrs, prob.offs)
        fx = prob.evaluate(opt, g, callback, sched)
        if fx is None:
            return OPT_CANCEL, finit, step, True
        count += 1
        if not np.isfinite(fx):
            width = dec                             # a NaN/inf trial point: step back (ggml would not)
        elif fx > finit + _F(step) * dgtest:
            width = dec
        else:
            if lb.linesearch == LINESEARCH_BACKTRACKING_ARMIJO:
                return count, fx, step, False
            dg = _F(_dot(g, d))
            if dg < _F(lb.wolfe) * dginit:
                width = inc
            else:
                if lb.linesearch == LINESEARCH_BACKTRACKING_WOLFE:
                    return count, fx, step, False
                if dg > -_F(lb.wolfe) * dginit:
                    width = dec
                else:
                    return count, fx, step, False     # strong Wolfe
        if step < lb.min_step:
            return LINESEARCH_MINIMUM_STEP, fx, step, False
        if step > lb.max_step:
            return LINESEARCH_MAXIMUM_STEP, fx, step, False
        if lb.max_linesearch <= count:
            return LINESEARCH_MAXIMUM_ITERATIONS, fx, step, False
        step = float(_F(step) * width)


def _lbfgs(opt: OptContext, params: OptParams, prob: _Problem, callback) -> int:
    lb = params.lbfgs
    if lb.linesearch in (LINESEARCH_BACKTRACKING_WOLFE, LINESEARCH_BACKTRACKING_STRONG_WOLFE):
        if lb.wolfe <= lb.ftol or 1.0 <= lb.wolfe:
            return OPT_INVALID_WOLFE
    if lb.m <= 0:
        raise GraphError(f"opt: lbfgs.m must be positive, got {lb.m}")
    if lb.linesearch not in (LINESEARCH_BACKTRACKING_ARMIJO, LINESEARCH_BACKTRACKING_WOLFE,
                             LINESEARCH_BACKTRACKING_STRONG_WOLFE):
        raise GraphError(f"opt: lbfgs.linesearch must be LINESEARCH_BACKTRACKING_ARMIJO "
                         f"({LINESEARCH_BACKTRACKING_ARMIJO}), _WOLFE ({LINESEARCH_BACKTRACKING_WOLFE}) or "
                         f"_STRONG_WOLFE ({LINESEARCH_BACKTRACKING_STRONG_WOLFE}), got {lb.linesearch!r}")
    if (opt.params.type != params.type or opt.nx != prob.nx or opt.params.past != params.past
            or opt.params.lbfgs.m != lb.m):
        it = opt.iter
        opt_init(opt.ctx, opt, params, prob.nx)
        opt.iter = it
    mm = lb.m
    x, xp, g, gp, d, pf = opt.x, opt.xp, opt.g, opt.gp, opt.d, opt.pf
    lm_alpha, lm_ys, lm_s, lm_y = opt.lmal, opt.lmys, opt.lms, opt.lmy

    prob.get_params(x)
    prob.set_params(x)
    fx = prob.evaluate(opt, g, callback, _Sched(0.0))
    if fx is None:
        return OPT_CANCEL
    opt.loss_before = opt.loss_after = fx
    if not np.isfinite(fx):
        return OPT_FAIL
    d[:] = -g
    xnorm, gnorm = max(_norm(x), 1.0), _norm(g)
    if gnorm / xnorm <= lb.eps:
        return OPT_OK                               # already optimal
    if opt.just_initialized:
        if pf is not None:
            pf[0] = fx
        opt.fx_best = fx
        opt.step = 1.0 / _norm(d)                   # first step 1/||d||
        opt.j, opt.k, opt.end, opt.n_no_improvement = 0, 1, 0, 0
        opt.just_initialized = False

    xp[:] = x
    gp[:] = g
    it = 0
    while True:
        try:
            ls, fx, opt.step, cancelled = _linesearch_backtracking(params, x, fx, g, d, opt.step, xp, prob, opt,
                                                                  callback)
        except BaseException:
            # a callback (or a compute) raised mid line search: leave the parameters where they were
            x[:] = xp
            g[:] = gp
            prob.set_params(x)
            raise
        if cancelled:
            return OPT_CANCEL
        if ls < 0:
            # the line search failed: go back to the previous point (in the graph too; ggml leaves
            # the graph at the last trial point)
            x[:] = xp
            g[:] = gp
            prob.set_params(x)
            return ls
        opt.loss_after = fx
        xnorm, gnorm = _norms(x, g)
        if gnorm / max(xnorm, 1.0) <= lb.eps:
            return OPT_OK
        if pf is not None:
            if params.past <= opt.k:
                rate = (pf[opt.k % params.past] - fx) / fx
                if abs(rate) < params.delta:
                    return OPT_OK
            pf[opt.k % params.past] = fx
        if params.max_no_improvement > 0:
            if fx < opt.fx_best:
                opt.fx_best = fx
                opt.n_no_improvement = 0
            else:
                opt.n_no_improvement += 1
                if opt.n_no_improvement >= params.max_no_improvement:
                    return OPT_OK
        if lb.n_iter != 0 and lb.n_iter < it + 1:
            return OPT_DID_NOT_CONVERGE

        # new curvature pair (s = x - xp, y = g - gp), the two-loop recursion for the new direction,
        # and xp, gp = x, g: one compiled call
        bound = mm if mm <= opt.k else opt.k
        opt.j = _lbfgs_direction(x, xp, g, gp, d, lm_s, lm_y, lm_ys, lm_alpha, opt.end, bound)
        opt.k += 1
        it += 1
        opt.end = (opt.end + 1) % mm
        opt.step = 1.0


def _wrap_callback(callback, callback_data):
    """ggml's callback(data, accum_step, &sched, &cancel) as Python: callback(data, accum_step, sched)
    where sched is a mutable object with `.value`; returning True cancels."""
    if callback is None:
        return None

    def cb(accum_step, sched_box):
        return bool(callback(callback_data, accum_step, sched_box))
    return cb


def opt_resume_g(ctx, opt: OptContext, f, gf, gb, callback: Optional[Callable] = None, callback_data=None,
                 reduce: Optional[Callable] = None) -> int:
    """Run the optimizer on graphs the caller built (gf forward, gb backward of f).

    reduce(fx, g) -> fx, when given, is called after every evaluation (each Adam step, each L-BFGS
    line-search trial) with the loss and the flat float32 gradient, which it may change in place; the
    optimizer goes on with what it returns (graphcore.distributed sums the ranks' shares here)."""
    if not isinstance(opt, OptContext) or opt.params is None:
        raise GraphError("opt_resume_g: opt must be initialised with opt_init")
    prob = _Problem(f, gf, gb, opt.params, reduce)
    cb = _wrap_callback(callback, callback_data)
    if opt.params.type == OPT_ADAM:
        result = _adam(opt, opt.params, prob, cb)
    else:
        result = _lbfgs(opt, opt.params, prob, cb)
    if opt.params.print_forward_graph:
        graph_print(gf)
    if opt.params.print_backward_graph:
        graph_print(gb)
    return OptResult(result)


def opt_resume(ctx, opt: OptContext, f) -> int:
    """Build the forward and backward graphs of f in ctx, then run the optimizer (ggml_opt_resume)."""
    gf = new_graph_custom(ctx, opt.params.graph_size, True)
    build_forward_expand(gf, f)
    gb = graph_dup(ctx, gf)
    autodiff.build_backward_expand(ctx, gf, gb, True)
    return opt_resume_g(ctx, opt, f, gf, gb)


def opt(ctx, params: OptParams, f) -> int:
    """ggml_opt: minimise the scalar f over every parameter it depends on. Returns an OPT_ code."""
    if not isinstance(params, OptParams):
        raise GraphError(f"opt: params must come from opt_default_params, got {type(params).__name__}")
    o = opt_init(ctx, OptContext(), params, 0)
    return opt_resume(ctx, o, f)
