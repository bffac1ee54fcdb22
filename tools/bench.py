"""Benchmarks: graphcore against numpy (and PyTorch when installed), baselines measured in the same run.

    python -m graphcore_tools.bench                 # the engine benchmarks: executor matmul scaling ops
    python -m graphcore_tools.bench executor matmul scaling ops
    python -m graphcore_tools.bench baby-llama [--ggml-bin PATH] [--threads N]
    python -m graphcore_tools.bench alloc           # memory planning: the graph allocator
    python -m graphcore_tools.bench quant [--llama-cpp DIR] [--all-types]  # quantized mul_mat against F32, numpy, ggml

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

from .bench_quant import bench_quant


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
        tg = median_time(gc.graph_compile(g, nt), repeat=50)
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
    sizes, runs = (64, 256, 1024), {}
    # every graphcore timing before any numpy one: numpy's multithreaded OpenBLAS (another library
    # than the scipy BLAS graphcore calls) leaves its pool spinning after a call, which takes the
    # second core from graphcore's threads for a while (see the README, Benchmarks)
    for n in sizes:
        A = rng.standard_normal((n, n)).astype(np.float32)
        B = rng.standard_normal((n, n)).astype(np.float32)
        ctx = gc.init(4 * n * n * 4 + (1 << 16))
        c = gc.mul_mat(ctx, gc.from_numpy(ctx, A), gc.from_numpy(ctx, B))
        g = gc.build_forward(c)
        rep = 30 if n < 1024 else 10
        runs[n] = (A, B, c, rep, median_time(gc.graph_compile(g, 1), repeat=rep),
                   median_time(gc.graph_compile(g, 2), repeat=rep))
    for n in sizes:
        A, B, c, rep, t1, t2 = runs[n]
        flop = 2.0 * n ** 3
        t_np = median_time(lambda: B @ A.T, repeat=rep)
        assert np.allclose(c.numpy(), B @ A.T, rtol=1e-3, atol=1e-3 * n)
        vals = [f"{flop / t_np / 1e9:.1f}", f"{flop / t1 / 1e9:.1f}", f"{flop / t2 / 1e9:.1f}", f"{t_np / t2:.2f}x"]
        if torch:
            torch.set_num_threads(2)
            At, Bt = torch.from_numpy(A), torch.from_numpy(B)
            vals.append(f"{flop / median_time(lambda: Bt @ At.T, repeat=rep) / 1e9:.1f}")
        row(str(n), *vals)


def add_mul_chain(ctx, a, b, n=20):
    """The graph of n x (t = (t + b) * b) from t = a, and its result."""
    t = a
    for _ in range(n):
        t = gc.mul(ctx, gc.add(ctx, t, b), b)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, t)
    return g, t


def bench_scaling(args):
    """(c) thread scaling on a large elementwise graph (40 nodes of 1M floats)."""
    print("\n(c) scaling: 20 x (add, mul) on 2^20 floats (4 MB per node)")
    n = 1 << 20
    rng = np.random.default_rng(0)
    An = rng.random(n, dtype=np.float32)
    Bn = rng.random(n, dtype=np.float32)
    ctx = gc.init(48 * n * 4)
    g, t = add_mul_chain(ctx, gc.from_numpy(ctx, An), gc.from_numpy(ctx, Bn))

    def numpy_chain():
        v = An
        for _ in range(20):
            v = (v + Bn) * Bn
    t_np = median_time(numpy_chain)
    t1 = median_time(gc.graph_compile(g, 1))
    t2 = median_time(gc.graph_compile(g, 2))
    row("", "ms", "vs 1 thread", "vs numpy")
    row("numpy", f"{t_np * 1e3:.2f}", "", "1.00x")
    row("graphcore, 1 thread", f"{t1 * 1e3:.2f}", "1.00x", f"{t_np / t1:.2f}x")
    row("graphcore, 2 threads", f"{t2 * 1e3:.2f}", f"{t1 / t2:.2f}x", f"{t_np / t2:.2f}x")


def _np_rope0(x, pos, n_dims, base=10000.0):
    """rope mode 0 in numpy: adjacent pairs of the first n_dims of each row rotated by pos * base^(-2i/n_dims)."""
    theta = pos[:, None, None].astype(np.float64) * base ** (-np.arange(0, n_dims, 2) / n_dims)
    c, s_ = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    out = x.copy()
    x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
    out[..., 0:n_dims:2] = x0 * c - x1 * s_
    out[..., 1:n_dims:2] = x0 * s_ + x1 * c
    return out


def bench_ops(args):
    """tanh, gelu, silu, silu_back, soft_max, rms_norm and rope throughput against numpy equivalents."""
    print("\n(d) activations, normalisation and attention ops, million elements per second (numpy: vectorised "
          "equivalent)")
    rng = np.random.default_rng(0)
    ctx = gc.init(256 << 20)
    rows, cols = 1024, 1024
    X = rng.standard_normal((rows, cols)).astype(np.float32)
    R = rng.standard_normal((256, 32, 128)).astype(np.float32)     # tokens, heads, head dim
    pos = np.arange(256, dtype=np.int32)
    x = gc.from_numpy(ctx, X)
    r = gc.from_numpy(ctx, R)
    p = gc.from_numpy(ctx, pos)
    D = rng.standard_normal((rows, cols)).astype(np.float32)
    dy = gc.from_numpy(ctx, D)
    c = np.float32(0.7978845608028654)

    def silu_back_ref():
        s = 1 / (1 + np.exp(-X))
        return D * s * (1 + X * (1 - s))
    cases = [
        ("tanh [1024 x 1024]", gc.tanh(ctx, x), X.size, lambda: np.tanh(X)),
        ("gelu [1024 x 1024]", gc.gelu(ctx, x), X.size,
         lambda: 0.5 * X * (1 + np.tanh(c * X * (1 + np.float32(0.044715) * X * X)))),
        ("silu [1024 x 1024]", gc.silu(ctx, x), X.size, lambda: X / (1 + np.exp(-X))),
        ("silu_back [1024 x 1024]", gc.silu_back(ctx, x, dy), X.size, silu_back_ref),
        ("soft_max [1024 x 1024]", gc.soft_max(ctx, x), X.size,
         lambda: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(X - X.max(-1, keepdims=True)))),
        ("rms_norm [1024 x 1024]", gc.rms_norm(ctx, x, 1e-6), X.size,
         lambda: X / np.sqrt((X * X).mean(-1, keepdims=True) + 1e-6)),
        ("rope mode 0 [128 x 32 x 256]", gc.rope(ctx, r, p, 128, 0, 0), R.size,
         lambda: _np_rope0(R, pos, 128)),
    ]
    row("", "numpy", "graphcore 1t", "graphcore 2t", "2t / numpy")
    for name, node, n, ref in cases:
        g = gc.new_graph(ctx)
        gc.build_forward_expand(g, node)
        t_np = median_time(ref)
        t1 = median_time(gc.graph_compile(g, 1))
        t2 = median_time(gc.graph_compile(g, 2))
        assert np.allclose(node.numpy(), ref(), rtol=1e-4, atol=1e-4), name
        row(name, f"{n / t_np / 1e6:.0f}", f"{n / t1 / 1e6:.0f}", f"{n / t2 / 1e6:.0f}", f"{t_np / t2:.2f}x")


ORIGINAL_WALL_S = 2.7          # the C original, whole default run, 1 thread, first machine (BABY_LLAMA.md)
ORIGINAL_EVALS = 5068


def _timed_run(cmd, extra_env=None):
    """(wall s, CPU s of the child (user + system), its stdout, its stderr) of one whole process."""
    import resource
    import subprocess
    env = dict(os.environ, **(extra_env or {}))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), out.stdout, out.stderr


def _run_baby_llama(extra_env=None, threads=1):
    import re
    cmd = [sys.executable, "-m", "graphcore_models.baby_llama", "--progress", "--threads", str(threads)]
    wall, cpu, stdout, stderr = _timed_run(cmd, extra_env)
    m = re.search(r"(\d+) forward\+backward evaluations, training ([\d.]+) s", stderr)
    return wall, cpu, int(m.group(1)), float(m.group(2)), stdout


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def bench_baby_llama(args):
    """The full default baby-llama run, cold (empty numba cache) and warm, against the original binary
    (--ggml-bin), the two runs alternated --repeat times (a shared machine's load hits both alike)."""
    import tempfile
    print(f"\nbaby-llama, full default run (256 batches, L-BFGS), {args.threads} thread(s), whole processes; "
          f"Python bytecode {'not written (PYTHONDONTWRITEBYTECODE)' if sys.dont_write_bytecode else 'cached'}")
    row("", "wall s", "CPU s", "evals", "evals/s", "wall vs orig.", "CPU vs orig.")
    if not args.no_cold:
        with tempfile.TemporaryDirectory() as cache:
            wall, cpu, evals, train_s, _ = _run_baby_llama({"GRAPHCORE_CACHE_DIR": cache}, args.threads)
        row("graphcore, cold (empty kernel cache)", f"{wall:.2f}", f"{cpu:.2f}", evals, f"{evals / train_s:.0f}")
    _run_baby_llama(None, args.threads)           # the kernel cache filled, the files in the page cache
    load_before = _load()
    ours, orig, stdouts = [], [], set()
    for _ in range(args.repeat):
        wall, cpu, evals, train_s, stdout = _run_baby_llama(None, args.threads)
        ours.append((wall, cpu, evals, train_s))
        stdouts.add(stdout)
        if args.ggml_bin:
            wall, cpu, _, _ = _timed_run([args.ggml_bin])
            orig.append((wall, cpu))
    load_after = _load()
    wall, cpu = (statistics.median(x[i] for x in ours) for i in (0, 1))
    evals, train_s = ours[0][2], statistics.median(x[3] for x in ours)
    ratios = ["", ""]
    if orig:
        o_wall, o_cpu = (statistics.median(x[i] for x in orig) for i in (0, 1))
        ratios = [f"{wall / o_wall:.2f}x", f"{cpu / o_cpu:.2f}x"]
    row(f"graphcore, warm (median of {args.repeat})", f"{wall:.2f}", f"{cpu:.2f}", evals, f"{evals / train_s:.0f}",
        *ratios)
    if orig:
        row(f"original binary (median of {args.repeat})", f"{o_wall:.2f}", f"{o_cpu:.2f}", "", "", "1.00x", "1.00x")
        print("  runs alternated; each run's wall / CPU s: graphcore " +
              ", ".join(f"{w:.2f}/{c:.2f}" for w, c, _, _ in ours) + "; original " +
              ", ".join(f"{w:.2f}/{c:.2f}" for w, c in orig))
    else:
        row("original (BABY_LLAMA.md figure)", f"{ORIGINAL_WALL_S:.2f}", "", ORIGINAL_EVALS, "",
            f"{wall / ORIGINAL_WALL_S:.2f}x")
    print(f"  load average (1/5/15 min) before {load_before}, after {load_after}; graphcore's stdout "
          f"{'the same bytes in every run' if len(stdouts) == 1 else 'DIFFERED between runs'}")
    if not args.no_torch:
        bench_llama_torch(args)


def bench_llama_torch(args):
    """A larger model (n_embd 256, 4 layers, n_ctx 64, batch 8): one forward+backward evaluation,
    graphcore against the same model in PyTorch at the same thread count."""
    from types import SimpleNamespace
    import graphcore_models.baby_llama as bl
    cfg = SimpleNamespace(n_vocab=8, n_ctx=64, n_embd=256, n_mult=2, n_head=8, n_layer=4, n_batch=8, lora=False,
                          seed=1337)
    model, kv = bl.new_model(cfg)
    tg = bl.build_training_graphs(model, kv, cfg.n_batch)
    bl.get_example_targets_batch(tg.ctx0, 0, tg.tokens_input, tg.targets)
    tg.tokens.numpy()[:] = tg.tokens_input.numpy().reshape(-1)
    print(f"\nlarger model: n_embd 256, n_layer 4, n_ctx 64, n_batch 8 ({tg.gb.n_nodes} backward-graph nodes), "
          f"one forward+backward evaluation, ms")
    import importlib.util
    make_step = None
    if importlib.util.find_spec("torch") is not None:
        from graphcore_tools.torch_llama import make_step
    row("threads", "graphcore", "torch" if make_step else "(torch not installed)", "torch / graphcore")
    for nt in sorted({1, args.threads, 2}):
        seed = tg.error.grad.numpy4d().reshape(-1)

        def step():
            seed[0] = 1.0
            run()
        run = gc.graph_compile(tg.gb, nt)
        t_gc = median_time(step, repeat=10)
        cols = [f"{t_gc * 1e3:.1f}"]
        if make_step:
            t_t = median_time(make_step(model.hparams, cfg.n_batch, nt), repeat=10)
            cols += [f"{t_t * 1e3:.1f}", f"{t_t / t_gc:.2f}x"]
        row(str(nt), *cols)


def paired_medians(fns, repeat=15, warmup=2):
    """Median time of each function, their runs interleaved (a shared machine's load hits all alike)."""
    for f in fns:
        for _ in range(warmup):
            f()
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for f, t in zip(fns, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def _training_graphs(cfg, **kw):
    import graphcore_models.baby_llama as bl
    model, kv = bl.new_model(cfg)
    tg = bl.build_training_graphs(model, kv, cfg.n_batch, **kw)
    bl.get_example_targets_batch(tg.ctx0, 0, tg.tokens_input, tg.targets)
    tg.tokens.numpy()[:] = tg.tokens_input.numpy().reshape(-1)
    return tg


def _evaluation(tg, n_threads):
    """One forward+backward evaluation of a training graph, as the optimizer runs it."""
    run = gc.graph_compile(tg.gb, n_threads)
    seed = tg.error.grad.numpy4d().reshape(-1)

    def step():
        seed[0] = 1.0
        run()
    return step


def bench_alloc(args):
    """(f) memory planning: the graph allocator's buffer against the lower bound and the no-reuse sum,
    a long elementwise chain in reused bytes, and baby-llama's evaluation with and without it."""
    from types import SimpleNamespace
    from graphcore.alloc import graph_live_peak, graph_nbytes_no_reuse
    base = dict(n_vocab=8, n_mult=2, n_head=8, lora=False, seed=1337, n_batch=8)
    models = [("baby-llama (32/1 layer/ctx 8/batch 8)", SimpleNamespace(n_ctx=8, n_embd=32, n_layer=1, **base)),
              ("larger (256/4 layers/ctx 64/batch 8)", SimpleNamespace(n_ctx=64, n_embd=256, n_layer=4, **base))]
    print("\n(f) memory planning: backward graphs' compute buffer, MB (lower bound: the largest live set "
          "over the execution order)")
    row("graph", "nodes", "no reuse", "lower bound", "buffer", "buf / bound", "buf / no reuse")
    for label, cfg in models:
        for ckpt in (False, True):
            tg = _training_graphs(cfg, checkpointing=ckpt)
            size = gc.gallocr_get_buffer_size(tg.galloc)
            peak, nr = graph_live_peak(tg.gb, tg.galloc), graph_nbytes_no_reuse(tg.gb, tg.galloc)
            row(label + (", checkpointing" if ckpt else ""), tg.gb.n_nodes, f"{nr / 1e6:.2f}", f"{peak / 1e6:.2f}",
                f"{size / 1e6:.2f}", f"{size / peak:.3f}x", f"{size / nr:.3f}x")

    print("\n    20 x (add, mul) on 2^20 floats, 1 thread, ms")
    n = 1 << 20
    rng = np.random.default_rng(0)
    An, Bn = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    graphs = {}
    for alloc in (False, True):
        ctx = gc.init(48 * n * 4 if not alloc else 1 << 20, no_alloc=alloc)
        c = gc.init(3 * n * 4)
        g, t = add_mul_chain(ctx, gc.from_numpy(c, An), gc.from_numpy(c, Bn))
        if alloc:
            galloc = gc.gallocr_new()
            gc.gallocr_alloc_graph(galloc, g)
        graphs[alloc] = (g, t, ctx, c)
    out = np.empty_like(An)

    def numpy_reused():
        np.add(An, Bn, out=out)
        np.multiply(out, Bn, out=out)
        for _ in range(19):
            np.add(out, Bn, out=out)
            np.multiply(out, Bn, out=out)

    def numpy_fresh():
        v = An
        for _ in range(20):
            v = (v + Bn) * Bn
    t_reuse, t_fresh, t_arena, t_alloc = paired_medians(
        [numpy_reused, numpy_fresh, gc.graph_compile(graphs[False][0], 1), gc.graph_compile(graphs[True][0], 1)],
        repeat=31)
    numpy_reused()
    assert np.array_equal(graphs[True][1].numpy(), out) and np.array_equal(graphs[False][1].numpy(), out)
    row("", "ms", "vs numpy (reused)", "buffer MB")
    row("numpy, out= buffers reused", f"{t_reuse * 1e3:.2f}", "1.00x", f"{n * 4 / 1e6:.1f}")
    row("numpy, new arrays", f"{t_fresh * 1e3:.2f}", f"{t_reuse / t_fresh:.2f}x", "")
    row("graphcore, one arena (no reuse)", f"{t_arena * 1e3:.2f}", f"{t_reuse / t_arena:.2f}x",
        f"{40 * n * 4 / 1e6:.1f}")
    row("graphcore, graph allocator", f"{t_alloc * 1e3:.2f}", f"{t_reuse / t_alloc:.2f}x",
        f"{gc.gallocr_get_buffer_size(galloc) / 1e6:.1f}")

    print("\n    baby-llama, one forward+backward evaluation (what L-BFGS repeats 5,000 times), 1 thread, us")
    row("", "us", "vs arena")
    t_arena, t_alloc = paired_medians([_evaluation(_training_graphs(models[0][1], allocator=False), 1),
                                       _evaluation(_training_graphs(models[0][1]), 1)], repeat=2000)
    row("arena (every tensor its own bytes)", f"{t_arena * 1e6:.1f}", "1.00x")
    row("graph allocator", f"{t_alloc * 1e6:.1f}", f"{t_arena / t_alloc:.2f}x")


BENCHES = {"executor": bench_executor, "matmul": bench_matmul, "scaling": bench_scaling, "ops": bench_ops,
           "baby-llama": bench_baby_llama, "alloc": bench_alloc, "quant": bench_quant}
ENGINE = ["executor", "matmul", "scaling", "ops"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", choices=[[]] + list(BENCHES),
                   help="benchmarks to run (default: the engine ones, " + " ".join(ENGINE) + ")")
    p.add_argument("--threads", type=int, default=1, help="baby-llama, quant: threads (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="baby-llama: warm runs (median)")
    p.add_argument("--ggml-bin", metavar="PATH", help="baby-llama: also time an original baby-llama binary")
    p.add_argument("--no-cold", action="store_true", help="baby-llama: skip the cold run (minutes)")
    p.add_argument("--no-torch", action="store_true", help="baby-llama: skip the larger model against PyTorch")
    p.add_argument("--llama-cpp", metavar="DIR", help="quant: also time ggml's C (DIR/libllama.so, `make libllama.so`)")
    p.add_argument("--all-types", action="store_true", help="quant: every quantized type, not only Q8_0 Q4_0 Q4_K")
    args = p.parse_args(argv)
    print(f"machine: {machine()}")
    for name in args.which or ENGINE:
        BENCHES[name](args)


if __name__ == "__main__":
    sys.exit(main())
