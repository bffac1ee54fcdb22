"""Record the optimizers' exact results (tests/data/optim_bits.json) for tests/test_optim_bits.py:

    python -m graphcore_tools.record_optim_bits [-o FILE]

Each case runs Adam or L-BFGS (several line searches, a short history that wraps, resumed calls,
gradient accumulation, gradient clipping, weight decay, the delta test over past losses) on a small
problem drawn from a fixed seed, and a few baby-llama batches; it keeps the sha256 of every
parameter's bits after each optimizer call, the loss's bits, the result code and the evaluations made.
Recorded once from the optimizer as it was before its vector work was compiled into fewer calls, so
the test proves a faster optimizer takes bit for bit the same steps; with a fingerprint of the CPU's
arithmetic and of the graphs' (the test skips where either differs: another vector width or BLAS
kernel, or kernels changed since; record again then, from an optimizer checked against the old one).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np

import graphcore as gc
import graphcore_models.baby_llama as bl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(ROOT, "tests", "data", "optim_bits.json")


def _least_squares(ctx):
    """ggml's test-opt problem: sum((c - a b^T)^2) over a [4, 128] and b [4, 256]."""
    rng = np.random.default_rng(0)
    a = gc.set_param(ctx, gc.from_numpy(ctx, rng.uniform(-1, 1, (128, 4)).astype(np.float32)))
    b = gc.set_param(ctx, gc.from_numpy(ctx, rng.uniform(-1, 1, (256, 4)).astype(np.float32)))
    c = gc.from_numpy(ctx, rng.uniform(-1, 1, (256, 128)).astype(np.float32))
    return gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, c, gc.mul_mat(ctx, a, b)))), [a, b]


def _rosenbrock(ctx):
    """The Rosenbrock function of 6 variables from (-1.2, 1, -1.2, ...)."""
    n = 6
    x0 = np.full(n, -1.2, np.float32)
    x0[1::2] = 1.0
    x = gc.set_param(ctx, gc.from_numpy(ctx, x0))
    x1, x2 = gc.view_1d(ctx, x, n - 1, 0), gc.view_1d(ctx, x, n - 1, 4)
    ones = gc.from_numpy(ctx, np.ones(n - 1, np.float32))
    f = gc.sum(ctx, gc.add(ctx, gc.scale(ctx, gc.sqr(ctx, gc.sub(ctx, x2, gc.sqr(ctx, x1))), 100.0),
                           gc.sqr(ctx, gc.sub(ctx, ones, x1))))
    return f, [x]


def _lbfgs(linesearch, m=6, n_iter=12, past=0, max_no_improvement=0, accum=1):
    p = gc.opt_default_params(gc.OPT_LBFGS)
    p.lbfgs.linesearch, p.lbfgs.m, p.lbfgs.n_iter = linesearch, m, n_iter
    p.past, p.max_no_improvement, p.n_gradient_accumulation = past, max_no_improvement, accum
    return p


def _adam(n_iter=15, gclip=0.0, decay=0.0, past=0, accum=1):
    p = gc.opt_default_params(gc.OPT_ADAM)
    p.adam.n_iter, p.adam.gclip, p.adam.decay, p.adam.alpha = n_iter, gclip, decay, 0.01
    p.past, p.n_gradient_accumulation = past, accum
    return p


# name: (problem, params, optimizer calls resumed on one OptContext)
CASES = {
    "lbfgs_wolfe": (_least_squares, lambda: _lbfgs(gc.LINESEARCH_BACKTRACKING_WOLFE), 3),
    "lbfgs_armijo_m3": (_least_squares, lambda: _lbfgs(gc.LINESEARCH_BACKTRACKING_ARMIJO, m=3), 2),
    "lbfgs_strong_wolfe_past": (_least_squares, lambda: _lbfgs(gc.LINESEARCH_BACKTRACKING_STRONG_WOLFE, past=3,
                                                              max_no_improvement=4), 2),
    "lbfgs_accum2": (_least_squares, lambda: _lbfgs(gc.LINESEARCH_BACKTRACKING_WOLFE, accum=2, n_iter=6), 1),
    "lbfgs_rosenbrock": (_rosenbrock, lambda: _lbfgs(gc.LINESEARCH_BACKTRACKING_WOLFE, m=4, n_iter=40), 2),
    "adam": (_least_squares, lambda: _adam(), 2),
    "adamw_gclip_past": (_least_squares, lambda: _adam(gclip=1.0, decay=0.1, past=2), 2),
    "adam_accum2": (_least_squares, lambda: _adam(n_iter=5, accum=2), 1),
}


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    return h.hexdigest()


def _f32_bits(v) -> str:
    return f"{int(np.float32(v).view(np.uint32)):08x}"


def _problem_graphs(problem):
    """A problem in a new context: (ctx, f, its parameters, forward graph, backward graph)."""
    ctx = gc.init(64 << 20)
    f, params = problem(ctx)
    gf = gc.new_graph_custom(ctx, 2048, True)
    gc.build_forward_expand(gf, f)
    gb = gc.graph_dup(ctx, gf)
    gc.build_backward_expand(ctx, gf, gb, True)
    return ctx, f, params, gf, gb


def run_case(name):
    """[{result, loss_after bits, n_evals, params sha256}] after each optimizer call of the case."""
    problem, make_params, calls = CASES[name]
    ctx, f, params, gf, gb = _problem_graphs(problem)
    opt = gc.opt_init(ctx, gc.OptContext(), make_params(), 0)
    steps = []
    for _ in range(calls):
        n0 = opt.n_evals
        res = gc.opt_resume_g(ctx, opt, f, gf, gb)
        steps.append({"result": int(res), "loss_after": _f32_bits(opt.loss_after), "n_evals": opt.n_evals - n0,
                      "params": _digest([p.numpy() for p in params])})
    gc.free(ctx)
    return steps


def run_baby_llama(optimizer, examples=3):
    """The baby-llama program's first batches (its default model, 1 thread): the errors before and after
    each batch's optimisation and the weights at the end."""
    args = SimpleNamespace(**{**vars(bl.parser().parse_args([])), "optimizer": optimizer, "examples": examples,
                              "adam_iters": 8})
    model, kv = bl.new_model(args)
    history = []
    stats = bl.train(model, kv, args, out=open(os.devnull, "w"), history=history)
    return {"history": [[_f32_bits(a), _f32_bits(b)] for a, b in history], "n_evals": stats["n_evals"],
            "params": _digest([t.numpy() for t in model.tensors()])}


def _first_gradient(problem):
    """The gradient of a problem at its start (one compute of its backward graph), as a digest."""
    ctx, f, params, _, gb = _problem_graphs(problem)
    f.grad.numpy4d().reshape(-1)[0] = 1.0
    gc.graph_compute_with_ctx(ctx, gb, 1)
    out = _digest([p.grad.numpy() for p in params])
    gc.free(ctx)
    return out


def fingerprint():
    """What makes the recorded bits this machine's and this code's: the float64 lane order numba's
    vectorised _dot takes (the CPU's vector width), and the graphs' arithmetic (OpenBLAS's sgemm
    kernel, graphcore's kernels): each problem's first gradient and baby-llama's first batch."""
    from graphcore.optim import _dot
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((2, 1003)).astype(np.float32)
    out = {"dot": f"{int(np.float64(_dot(a, b)).view(np.uint64)):016x}",
           "gradients": [_first_gradient(p) for p in (_least_squares, _rosenbrock)]}
    args = SimpleNamespace(**{**vars(bl.parser().parse_args([])), "examples": 1})
    model, kv = bl.new_model(args)
    tg = bl.build_training_graphs(model, kv, args.n_batch)
    bl.get_example_targets_batch(tg.ctx0, 0, tg.tokens_input, tg.targets)
    tg.tokens.numpy()[:] = tg.tokens_input.numpy().reshape(-1)
    tg.error.grad.numpy4d().reshape(-1)[0] = 1.0
    gc.graph_compute_with_ctx(tg.ctx0, tg.gb, 1)
    out["gradients"].append(_digest([t.grad.numpy() for t in model.tensors()]))
    return out


def record():
    out = {name: run_case(name) for name in CASES}
    out["fingerprint"] = fingerprint()
    out["baby_llama_lbfgs"] = run_baby_llama("lbfgs")
    out["baby_llama_adam"] = run_baby_llama("adam")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT)
    a = p.parse_args(argv)
    with open(a.output, "w") as fh:
        json.dump(record(), fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
