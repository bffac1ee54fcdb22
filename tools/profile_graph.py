"""Per-node profile of baby-llama's training graphs (forward + backward), one node at a time.

    python -m tools.profile_graph                      # 1 thread, table of every node by time
    python -m tools.profile_graph --threads 2 --by-op  # totals per op too
    python -m tools.profile_graph --graph forward --top 20

The graphs are models/baby_llama.py's training graphs (build_training_graphs: forward_batch, the
loss, build_backward_expand with keep) with the first batch's data, computed once so every tensor
holds realistic values. Each node is then timed alone: a graph whose node list is that one node
repeated --copies times is planned for --threads and computed --repeat times; the median (or, with
--stat min, the least disturbed) time divided by the copies is the node's time (the executor's
per-node cost, ~0.05 us, is included; graph_compute's Python overhead is amortised over the
copies). Nodes that are views of their own source (in-place results, whose repeats would
compound) run one copy per compute, and their time has graph_compute's measured overhead
subtracted. A node timed alone finds its data in cache: the whole graph takes somewhat longer
than the sum of its nodes.

Also printed: the whole forward and backward graphs' times, and the sum of the nodes'.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import graphcore as gc
from graphcore import tensor as TN
from graphcore.graph import Graph
from graphcore.ops.registry import OPS


def build_training_graphs(args):
    """(gf, gb, loss) for baby-llama's training step: the model as the program's main() makes it,
    the graphs from models.baby_llama.build_training_graphs (as train() builds them), the first
    batch's tokens and targets in place."""
    from models import baby_llama as bl
    margs = bl._parser().parse_args([
        "--n-batch", str(args.n_batch), "--n-embd", str(args.n_embd), "--n-head", str(args.n_head),
        "--n-layer", str(args.n_layer), "--n-ctx", str(args.n_ctx), "--n-vocab", str(args.n_vocab),
        "--loss", args.loss, "--threads", str(args.threads)] + (["--lora"] if args.lora else []))
    model, kv = bl.new_model(margs)
    # allocator=False: a node timed alone must find its sources' values, not bytes reused since
    tg = bl.build_training_graphs(model, kv, margs.n_batch, margs.loss, allocator=False)
    bl.get_example_targets_batch(tg.ctx0, 0, tg.tokens_input, tg.targets)
    tg.tokens.numpy()[:] = tg.tokens_input.numpy().reshape(-1)
    return tg.gf, tg.gb, tg.error


def _planned(g, n_threads):
    plan = gc.graph_plan(g, n_threads)
    if plan.work_size:
        plan.work_data = np.empty(plan.work_size, np.uint8)
    return plan


def timed(fn, repeat, stat=statistics.median, warmup=3):
    """stat (median, or min on a busy machine) of `repeat` timed calls of fn, after warmup calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return stat(ts)


def _repeated(node, copies):
    g = Graph(max(1, copies), False)
    g.nodes = [node] * copies
    g.visited = {id(node)}
    return g


def _writes_own_source(node):
    """A view of one of its sources (in place): repeating it would compound."""
    if node.view_src is None:
        return False
    owner = node.view_src
    for s in node.src:
        if s is not None and (s is owner or s.view_src is owner):
            return True
    return False


def _describe(node):
    ne = "x".join(str(int(x)) for x in node.ne[:max(1, gc.n_dims(node))])
    srcs = ",".join("x".join(str(int(x)) for x in s.ne[:max(1, gc.n_dims(s))]) for s in node.src if s is not None)
    return ne, srcs


def profile(g, args, overhead, stat=statistics.median):
    """[(seconds per node, index, node, n_tasks)] for every computed node of g."""
    full = _planned(g, args.threads)
    rows = []
    for i, node in enumerate(g.nodes):
        op = OPS[node.op]
        if op.kernel is None:
            continue
        gc.graph_compute(g, full)            # fresh values for every node's inputs
        single = _writes_own_source(node)
        copies = 1 if single else args.copies
        rg = _repeated(node, copies)
        plan = _planned(rg, args.threads)
        t = timed(lambda: gc.graph_compute(rg, plan), args.repeat, stat)
        per = (t - overhead) / copies if single else t / copies
        rows.append((per, i, node, int(plan.n_tasks[0])))
    gc.graph_compute(g, full)
    return rows


def compute_overhead(args, stat=statistics.median):
    """graph_compute's own cost (checks, lowering reuse, thread start): one tiny SCALE node."""
    ctx = gc.init(1 << 20)
    x = gc.new_tensor_1d(ctx, gc.TYPE_F32, 1)
    t = gc.scale(ctx, x, 1.0)
    tg = gc.build_forward(t)
    plan = _planned(tg, args.threads)
    return timed(lambda: gc.graph_compute(tg, plan), max(args.repeat, 200), stat)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="profile_graph", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="threads for every graph (default 1)")
    p.add_argument("--graph", choices=("forward", "backward"), default="backward",
                   help="which graph's nodes to time (backward, the default, holds the forward's too)")
    p.add_argument("--copies", type=int, default=200, help="copies of a node per timed compute (default 200)")
    p.add_argument("--repeat", type=int, default=21, help="timed computes per node (default 21)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the timed computes (default median; min is steadier on a busy machine)")
    p.add_argument("--top", type=int, default=0, help="print only the N slowest nodes (default: all)")
    p.add_argument("--by-op", action="store_true", help="also print totals per op")
    p.add_argument("--loss", choices=("square", "cross-entropy"), default="square")
    p.add_argument("--lora", action="store_true")
    for name, default in (("n-batch", 8), ("n-embd", 32), ("n-head", 8), ("n-layer", 1), ("n-ctx", 8),
                          ("n-vocab", 8)):
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args(argv)
    if args.threads < 1 or args.copies < 1 or args.repeat < 1:
        p.error("--threads, --copies and --repeat must be >= 1")

    stat = min if args.stat == "min" else statistics.median
    gf, gb, loss = build_training_graphs(args)
    TN.set_f32(loss.grad, 1.0)
    pf, pb = _planned(gf, args.threads), _planned(gb, args.threads)
    t_gf = timed(lambda: gc.graph_compute(gf, pf), max(args.repeat, 101), stat)
    t_gb = timed(lambda: gc.graph_compute(gb, pb), max(args.repeat, 101), stat)
    overhead = compute_overhead(args, stat)
    g = gf if args.graph == "forward" else gb
    rows = profile(g, args, overhead, stat)
    total = sum(r[0] for r in rows)

    print(f"baby-llama training graphs, {args.threads} thread(s): forward {gf.n_nodes} nodes "
          f"{t_gf * 1e6:.1f} us, backward {gb.n_nodes} nodes {t_gb * 1e6:.1f} us ({args.stat}s); "
          f"graph_compute overhead {overhead * 1e6:.1f} us")
    print(f"{args.graph} graph: sum of the nodes timed alone {total * 1e6:.1f} us")
    print()
    print(f"{'us':>8} {'%':>5}  {'node':>4} {'op':<14} {'tasks':>5}  {'shape':<14} {'sources':<28} name")
    shown = sorted(rows, key=lambda r: -r[0])
    if args.top:
        shown = shown[:args.top]
    for per, i, node, nt in shown:
        ne, srcs = _describe(node)
        print(f"{per * 1e6:8.2f} {100 * per / total:5.1f}  {i:4d} {OPS[node.op].name:<14} {nt:5d}  "
              f"{ne:<14} {srcs:<28} {node.name}")
    if args.by_op:
        by = {}
        for per, _, node, _ in rows:
            n, s = by.get(OPS[node.op].name, (0, 0.0))
            by[OPS[node.op].name] = (n + 1, s + per)
        print()
        print(f"{'op':<14} {'nodes':>5} {'us':>9} {'%':>5}")
        for name, (n, s) in sorted(by.items(), key=lambda kv: -kv[1][1]):
            print(f"{name:<14} {n:5d} {s * 1e6:9.2f} {100 * s / total:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
