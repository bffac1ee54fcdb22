"""Benchmarks: graphcore against numpy (and PyTorch when installed), baselines measured in the same run.

    python -m tools.bench                 # every engine benchmark
    python -m tools.bench executor matmul scaling ops

Medians of repeated runs are printed (the machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import graphcore as gc


def median_time(fn, repeat=15, warmup=2, min_time=0.0):
    for _ in range(warmup):
        fn()
    ts = []
    t_end = time.perf_counter() + min_time
    while len(ts) < repeat or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def planned(g, n_threads):
    plan = gc.graph_plan(g, n_threads)
    if plan.work_size:
        plan.work_data = np.empty(plan.work_size, np.uint8)
    return lambda: gc.graph_compute(g, plan)


def row(*cols):
    print("  ".join(f"{c:>14}" if i else f"{c:<34}" for i, c in enumerate(cols)))


def machine():
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.processor())
    except OSError:
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def bench_executor(args):
    """(a) per-node overhead: a chain of 1000 adds of 16 floats."""
    print("\n(a) executor overhead: chain of 1000 ADD nodes on 16 floats")
    ctx = gc.init(8 << 20)
    x = gc.from_numpy(ctx, np.ones(16, np.float32))
    y = gc.from_numpy(ctx, np.full(16, 0.5, np.float32))
    t = x
    for _ in range(1000):
        t = gc.add(ctx, t, y)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, t)
    xn, yn = np.ones(16, np.float32), np.full(16, 0.5, np.float32)

    def numpy_chain():
        v = xn
        for _ in range(1000):
            v = v + yn
    t_np = median_time(numpy_chain)
    row("", "us/node", "vs numpy")
    row("numpy, one call per op", f"{t_np / 1000 * 1e6:.3f}", "1.00x")
    for nt in (1, 2):
        tg = median_time(planned(g, nt), repeat=50)
        row(f"graphcore, {nt} thread(s)", f"{tg / 1000 * 1e6:.3f}", f"{t_np / tg:.1f}x faster")
    # the planner keeps tiny nodes on one thread; forcing a split shows what a barrier costs
    plan = gc.graph_plan(g, 2)
    plan.n_tasks[:] = 2
    tg = median_time(lambda: gc.graph_compute(g, plan), repeat=50)
    row("graphcore, 2 threads, forced split", f"{tg / 1000 * 1e6:.3f}", f"{t_np / tg:.1f}x faster")


def bench_matmul(args):
    """(b) mul_mat F32 square products against numpy's @ (and torch.mm)."""
    print("\n(b) mul_mat F32, square N x N x N, GFLOP/s (ratio = graphcore / numpy)")
    try:
        import torch
    except ImportError:
        torch = None
    cols = ["numpy @", "graphcore 1t", "graphcore 2t", "ratio 2t/numpy"] + (["torch"] if torch else [])
    row("N", *cols)
    rng = np.random.default_rng(0)
    for n in (64, 256, 1024):
        A = rng.standard_normal((n, n)).astype(np.float32)
        B = rng.standard_normal((n, n)).astype(np.float32)
        ctx = gc.init(4 * n * n * 4 + (1 << 16))
        a, b = gc.from_numpy(ctx, A), gc.from_numpy(ctx, B)
        c = gc.mul_mat(ctx, a, b)
        g = gc.new_graph(ctx)
        gc.build_forward_expand(g, c)
        flop = 2.0 * n ** 3
        rep = 30 if n < 1024 else 10
        t_np = median_time(lambda: B @ A.T, repeat=rep)
        t1 = median_time(planned(g, 1), repeat=rep)
        t2 = median_time(planned(g, 2), repeat=rep)
        assert np.allclose(c.numpy(), B @ A.T, rtol=1e-3, atol=1e-3 * n)
        vals = [f"{flop / t_np / 1e9:.1f}", f"{flop / t1 / 1e9:.1f}", f"{flop / t2 / 1e9:.1f}", f"{t_np / t2:.2f}x"]
        if torch:
            torch.set_num_threads(2)
            At, Bt = torch.from_numpy(A), torch.from_numpy(B)
            vals.append(f"{flop / median_time(lambda: Bt @ At.T, repeat=rep) / 1e9:.1f}")
        row(str(n), *vals)


def bench_scaling(args):
    """(c) thread scaling on a large elementwise graph (40 nodes of 1M floats)."""
    print("\n(c) scaling: 20 x (add, mul) on 2^20 floats (4 MB per node)")
    n = 1 << 20
    rng = np.random.default_rng(0)
    An = rng.random(n, dtype=np.float32)
    Bn = rng.random(n, dtype=np.float32)
    ctx = gc.init(48 * n * 4)
    a, b = gc.from_numpy(ctx, An), gc.from_numpy(ctx, Bn)
    t = a
    for _ in range(20):
        t = gc.mul(ctx, gc.add(ctx, t, b), b)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, t)

    def numpy_chain():
        v = An
        for _ in range(20):
            v = (v + Bn) * Bn
    t_np = median_time(numpy_chain)
    t1 = median_time(planned(g, 1))
    t2 = median_time(planned(g, 2))
    row("", "ms", "vs 1 thread", "vs numpy")
    row("numpy", f"{t_np * 1e3:.2f}", "", "1.00x")
    row("graphcore, 1 thread", f"{t1 * 1e3:.2f}", "1.00x", f"{t_np / t1:.2f}x")
    row("graphcore, 2 threads", f"{t2 * 1e3:.2f}", f"{t1 / t2:.2f}x", f"{t_np / t2:.2f}x")


BENCHES = {"executor": bench_executor, "matmul": bench_matmul, "scaling": bench_scaling}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", choices=[[]] + list(BENCHES), help="benchmarks to run (default: all)")
    args = p.parse_args(argv)
    print(f"machine: {machine()}")
    for name in args.which or list(BENCHES):
        BENCHES[name](args)


if __name__ == "__main__":
    sys.exit(main())
