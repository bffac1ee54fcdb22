"""A small real demonstration: ggml's test-opt problem, loss = sum(sqr(c - mul_mat(a, b))), built as a
lazy graph, planned and computed on every core, and checked against numpy.

    python -m graphcore_models.demo [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import graphcore as gc


def build(ctx, rng):
    """a [4, 128] and b [4, 256] parameters, c [128, 256] the target (ggml ne order)."""
    a = gc.set_name(gc.from_numpy(ctx, rng.uniform(-1, 1, (128, 4)).astype(np.float32)), "a")
    b = gc.set_name(gc.from_numpy(ctx, rng.uniform(-1, 1, (256, 4)).astype(np.float32)), "b")
    c = gc.set_name(gc.from_numpy(ctx, rng.uniform(-1, 1, (256, 128)).astype(np.float32)), "c")
    ab = gc.set_name(gc.mul_mat(ctx, a, b), "ab")
    loss = gc.set_name(gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, c, ab))), "loss")
    return a, b, c, loss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=gc.default_n_threads())
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)

    with gc.init(16 * 1024 * 1024) as ctx:
        a, b, c, loss = build(ctx, np.random.default_rng(args.seed))
        gf = gc.new_graph(ctx)
        gc.build_forward_expand(gf, loss)
        gc.graph_print(gf)
        plan = gc.graph_plan(gf, args.threads)
        print(f"plan: {args.threads} threads, n_tasks per node {plan.n_tasks.tolist()}, work_size {plan.work_size} B")
        if plan.work_size:
            plan.work_data = np.empty(plan.work_size, np.uint8)
        t0 = time.perf_counter()
        gc.graph_compute(gf, plan)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(100):
            gc.graph_compute(gf, plan)
        warm = (time.perf_counter() - t0) / 100
        A, B, C = (x.numpy().astype(np.float64) for x in (a, b, c))
        want = float(((C - B @ A.T) ** 2).sum())
        got = gc.get_f32_1d(loss, 0)
        print(f"loss = {got:.4f}   (numpy float64: {want:.4f}, relative error {abs(got - want) / want:.1e})")
        print(f"compute: first call {first * 1e3:.1f} ms (includes loading compiled kernels), "
              f"then {warm * 1e6:.0f} us per call")
        return 0 if abs(got - want) <= 1e-4 * want else 1


if __name__ == "__main__":
    sys.exit(main())
