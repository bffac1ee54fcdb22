"""(q) quantized mul_mat, src0 4096 x 4096, against F32 mul_mat, numpy and (with --llama-cpp DIR)
ggml's own C on the same bytes in the same run: `python -m graphcore_tools.bench quant [--llama-cpp DIR]`.

The runs are interleaved (one of each per round) so that the other jobs on a shared machine load
every variant alike. Medians are printed, and the least time (a run of a few ms on a loaded machine
either runs whole or waits for a core: the medians swing with the load, the least times much less).
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import graphcore as gc

from . import ggml_c

# Q6_K: the output weights of every quantized llama file (its generation's largest product)
TYPES = (gc.TYPE_F32, gc.TYPE_Q8_0, gc.TYPE_Q4_0, gc.TYPE_Q4_K, gc.TYPE_Q6_K)
ALL_TYPES = TYPES + (gc.TYPE_Q4_1, gc.TYPE_Q5_0, gc.TYPE_Q5_1, gc.TYPE_Q2_K, gc.TYPE_Q3_K, gc.TYPE_Q5_K)


def _graphcore(t, rows, X, n_threads):
    K, M = X.shape[1], rows.shape[0]
    ctx = gc.init(rows.nbytes + X.nbytes + 4 * M * X.shape[0] + (16 << 20))
    a = gc.new_tensor_2d(ctx, t, K, M)
    a.numpy()[...] = rows
    c = gc.mul_mat(ctx, a, gc.from_numpy(ctx, X))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, c)
    return gc.graph_compile(g, n_threads), (lambda: c.numpy().copy()), a


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_quant(args):
    n_threads = args.threads
    try:
        lib = ggml_c.load(args.llama_cpp) if args.llama_cpp else None
    except OSError as e:            # no libllama.so there, or one that does not load
        sys.exit(f"bench quant: --llama-cpp {args.llama_cpp}: {e}")
    types = ALL_TYPES if args.all_types else TYPES
    print(f"\n(q) mul_mat, src0 4096 x 4096, src1 4096 x N, {n_threads} thread(s); medians of {args.repeat * 5} "
          "interleaved rounds and the least; GB/s of src0 read; 'x F32' = graphcore F32 time / this time" +
          ("; 'ggml' = ggml's C (libllama.so of --llama-cpp) on the same bytes" if lib else ""))
    cols = ["src0 type, N", "ms", "GB/s", "x F32", "least ms", "x F32"]
    cols += ["ggml ms", "this / ggml", "ggml least", "this / ggml"] if lib else []
    print("  ".join(f"{c:>11}" if i else f"{c:<16}" for i, c in enumerate(cols)))
    rng = np.random.default_rng(0)
    K = M = 4096
    W = rng.standard_normal((M, K)).astype(np.float32)
    same = []          # products whose every bit is ggml's
    for N in (1, 64):
        X = rng.standard_normal((N, K)).astype(np.float32)
        runs = {"numpy": (lambda: X @ W.T)}
        for t in types:
            rows = W if t == gc.TYPE_F32 else gc.quantize(W, t)
            run, result, a = _graphcore(t, rows, X, n_threads)
            run()
            wd = W if t == gc.TYPE_F32 else gc.dequantize(rows, t)
            ref = X @ wd.T
            err = np.linalg.norm(result() - ref) / np.linalg.norm(ref)
            assert err < 2e-2, (gc.type_name(t), err)       # src1 is quantized too (Q8)
            runs[t] = run
            if lib:
                mm = ggml_c.MulMat(lib, t, rows, X, n_threads)
                mm.run()
                diff = np.linalg.norm(mm.result() - result()) / np.linalg.norm(ref)
                # the same src1 levels; the float sums may run in another order (BLAS, the portable dots' running sum)
                # (the AVX2 dots of graphcore.simd and mul_mat's ggml_dots option: ggml's bits)
                assert diff < 1e-5, (gc.type_name(t), "graphcore and ggml differ", diff)
                if np.array_equal(mm.result().ravel().view(np.uint32), result().ravel().view(np.uint32)):
                    same.append(f"{gc.type_name(t)} N={N}")
                runs[("ggml", t)] = mm.run
        times = {k: [] for k in runs}
        for _ in range(args.repeat * 5):
            for k, fn in runs.items():
                times[k].append(_timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        least = {k: min(v) for k, v in times.items()}
        for t in types:
            dt, lt = med[t], least[t]
            wbytes = gc.row_size(t, K) * M
            cells = [f"{gc.type_name(t)}, N={N}", f"{dt * 1e3:.2f}", f"{wbytes / dt / 1e9:.2f}",
                     f"{med[gc.TYPE_F32] / dt:.2f}x", f"{lt * 1e3:.2f}", f"{least[gc.TYPE_F32] / lt:.2f}x"]
            if lib:
                g, gl = med[("ggml", t)], least[("ggml", t)]
                cells += [f"{g * 1e3:.2f}", f"{dt / g:.2f}x", f"{gl * 1e3:.2f}", f"{lt / gl:.2f}x"]
            print("  ".join(f"{c:>11}" if i else f"{c:<16}" for i, c in enumerate(cells)))
        print(f"{'numpy, N=' + str(N):<16}  {med['numpy'] * 1e3:>11.2f}  {'':>11}  {'':>11}  "
              f"{least['numpy'] * 1e3:>11.2f}")
    if lib:
        print("the same bits as ggml's C: " + (", ".join(same) or "none"))
