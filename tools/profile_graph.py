"""Per-node and per-op profile of any graph: time, share, GFLOP/s or GB/s.

    python -m graphcore_tools.profile_graph                                  # baby-llama's backward graph
    python -m graphcore_tools.profile_graph graph.gcg --threads 2 --by-op --top 20
    python -m graphcore_tools.profile_graph --from mypkg.models:build --format json -o profile.json
    graphcore-dump graph.gcg --profile                             # the same, from graphcore-dump

Sources as graphcore-dump's: a graph file, --model baby-llama --graph forward|backward|generation,
or --from package.module:function. The whole graph is computed once (so every tensor holds real
values) and timed; then each node is timed alone: a graph whose node list is that node repeated
as many times as fill about 2 ms (at most --copies) is planned for --threads and computed --repeat
times, and the median (or, with --stat min, the least disturbed) time divided by the copies is the
node's time (the executor's
per-node cost is included; graph_compute's Python overhead is amortised over the copies). A node
that writes into its own source (an in-place result, whose repeats would compound) runs one copy
per compute, with graph_compute's measured overhead subtracted. A node timed alone finds its
data in cache, so the whole graph takes somewhat longer than the sum of its nodes.

GFLOP/s is given for matrix products (2 multiply-adds per output element and inner index), GB/s
(bytes of the sources read plus the result written, over the time) for every node.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field


import graphcore as gc
from graphcore.cli_support import (CliError, add_common_arguments, check_output_file, setup_logging, write_output,
                                   write_stdout)
from graphcore.graph import Graph
from graphcore.ops.registry import OPS
from graphcore_tools import graph_sources


@dataclass
class NodeTime:
    index: int
    name: str
    op: str
    n_tasks: int
    seconds: float
    flops: int
    bytes: int
    ne: list
    srcs: list


@dataclass
class Profile:
    n_threads: int
    n_nodes: int
    graph_seconds: float        # the whole graph, computed as it is
    overhead_seconds: float     # graph_compute's own cost (one tiny node)
    nodes: list = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(r.seconds for r in self.nodes)

    def by_op(self) -> list:
        """[(op, nodes, seconds, flops, bytes)], slowest first."""
        acc = {}
        for r in self.nodes:
            n, s, f, b = acc.get(r.op, (0, 0.0, 0, 0))
            acc[r.op] = (n + 1, s + r.seconds, f + r.flops, b + r.bytes)
        return sorted(((op, *v) for op, v in acc.items()), key=lambda x: -x[2])


def flops_of(node) -> int:
    """Multiply-adds x 2 of matrix products (0 for other ops)."""
    name = OPS[node.op].name
    if name == "MUL_MAT":                       # dst [M, N, ...] = src0 [K, M, ...] . src1 [K, N, ...]
        return 2 * int(node.src[0].ne[0]) * gc.nelements(node)
    if name == "OUT_PROD":                      # dst [M, N] = sum over K of src0 [M, K] x src1 [N, K]
        return 2 * int(node.src[0].ne[1]) * gc.nelements(node)
    return 0


def bytes_of(node) -> int:
    return gc.nbytes(node) + sum(gc.nbytes(s) for s in node.src if s is not None)


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
    return any(s is not None and (s is owner or s.view_src is owner) for s in node.src)


def _shape(t) -> list:
    return [int(x) for x in t.ne[:max(1, gc.n_dims(t))]]


def compute_overhead(n_threads, repeat, stat=statistics.median):
    """graph_compute's own cost (checks, lowering reuse, thread start): one tiny SCALE node."""
    ctx = gc.init(1 << 20)
    x = gc.new_tensor_1d(ctx, gc.TYPE_F32, 1)
    tg = gc.build_forward(gc.scale(ctx, x, 1.0))
    return timed(gc.graph_compile(tg, n_threads), max(repeat, 200), stat)


COMPUTE_TARGET_S = 2e-3      # a timed compute of a node's copies lasts about this long


def _copies_for(node, n_threads, most):
    """Copies of a node per timed compute: enough for about COMPUTE_TARGET_S (a tiny node's time is
    then far above graph_compute's own), at most `most` (a slow node gets one or a few, so a large
    graph's profile takes seconds, not hours)."""
    one = timed(gc.graph_compile(_repeated(node, 1), n_threads), 3, min, warmup=1)
    return max(1, min(most, int(COMPUTE_TARGET_S / max(one, 1e-9))))


def profile_graph(g, n_threads: int = 1, copies: int = 200, repeat: int = 21, stat=statistics.median) -> Profile:
    """Time g whole and each of its computing nodes alone (see the module's docs)."""
    full = gc.graph_compile(g, n_threads)
    whole = timed(full, max(repeat, 11), stat)
    overhead = compute_overhead(n_threads, repeat, stat)
    prof = Profile(n_threads, g.n_nodes, whole, overhead)
    for i, node in enumerate(g.nodes):
        if OPS[node.op].kernel is None:
            continue
        full()                               # fresh values for every node's inputs
        single = _writes_own_source(node)
        n = 1 if single else _copies_for(node, n_threads, copies)
        rg = _repeated(node, n)
        repeated = gc.graph_compile(rg, n_threads)
        t = timed(repeated, repeat, stat)
        per = max(t - overhead, 0.0) if single else t / n
        prof.nodes.append(NodeTime(i, node.name, OPS[node.op].name, int(repeated.plan.n_tasks[0]), per, flops_of(node),
                                   bytes_of(node), _shape(node), [_shape(s) for s in node.src if s is not None]))
    full()
    return prof


def _rates(seconds, flops, nbytes) -> tuple:
    if seconds <= 0:
        return None, None
    return (flops / seconds / 1e9 if flops else None), nbytes / seconds / 1e9


def profile_text(prof: Profile, top: int = 0, by_op: bool = True) -> str:
    total = prof.total or 1e-30
    lines = [f"{prof.n_nodes} nodes, {prof.n_threads} thread(s): the whole graph {prof.graph_seconds * 1e6:.1f} us, "
             f"the sum of the nodes timed alone {prof.total * 1e6:.1f} us; graph_compute overhead "
             f"{prof.overhead_seconds * 1e6:.1f} us", "",
             f"{'us':>9} {'%':>5}  {'node':>4} {'op':<16} {'tasks':>5} {'GFLOP/s':>8} {'GB/s':>7}  "
             f"{'shape':<16} {'sources':<30} name"]
    rows = sorted(prof.nodes, key=lambda r: -r.seconds)
    for r in rows[:top] if top else rows:
        gf, gb = _rates(r.seconds, r.flops, r.bytes)
        shape = "x".join(map(str, r.ne))
        srcs = ",".join("x".join(map(str, s)) for s in r.srcs)
        lines.append(f"{r.seconds * 1e6:9.2f} {100 * r.seconds / total:5.1f}  {r.index:4d} {r.op:<16} {r.n_tasks:5d} "
                     f"{(f'{gf:8.1f}' if gf else '       -')} {(f'{gb:7.2f}' if gb else '      -')}  "
                     f"{shape:<16} {srcs:<30} {r.name}")
    if by_op:
        lines += ["", f"{'op':<16} {'nodes':>5} {'us':>10} {'%':>5} {'GFLOP/s':>8} {'GB/s':>7}"]
        for op, n, s, f, b in prof.by_op():
            gf, gb = _rates(s, f, b)
            lines.append(f"{op:<16} {n:5d} {s * 1e6:10.2f} {100 * s / total:5.1f} "
                         f"{(f'{gf:8.1f}' if gf else '       -')} {(f'{gb:7.2f}' if gb else '      -')}")
    return "\n".join(lines) + "\n"


def profile_json(prof: Profile) -> str:
    total = prof.total or 1e-30

    def rates(s, f, b):
        gf, gb = _rates(s, f, b)
        return {"gflops": gf, "gbytes_per_s": gb}
    out = {"format": "graphcore.profile+json", "version": 1, "n_threads": prof.n_threads, "n_nodes": prof.n_nodes,
           "graph_us": prof.graph_seconds * 1e6, "sum_of_nodes_us": prof.total * 1e6,
           "overhead_us": prof.overhead_seconds * 1e6,
           "nodes": [{"index": r.index, "name": r.name, "op": r.op, "n_tasks": r.n_tasks, "us": r.seconds * 1e6,
                      "share": r.seconds / total, "flops": r.flops, "bytes": r.bytes, "ne": r.ne, "srcs": r.srcs,
                      **rates(r.seconds, r.flops, r.bytes)} for r in prof.nodes],
           "ops": [{"op": op, "nodes": n, "us": s * 1e6, "share": s / total, **rates(s, f, b)}
                   for op, n, s, f, b in prof.by_op()]}
    return json.dumps(out, indent=1) + "\n"


def add_profile_arguments(p) -> None:
    g = p.add_argument_group("profile")
    g.add_argument("--copies", type=int, default=200,
                   help="at most this many copies of a node per timed compute (default 200; fewer for a slow "
                        "node: each timed compute lasts about 2 ms)")
    g.add_argument("--repeat", type=int, default=21, help="timed computes per node (default 21)")
    g.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the timed computes (default median; min is steadier on a busy machine)")
    g.add_argument("--top", type=int, default=0, help="print only the N slowest nodes (default: all)")
    g.add_argument("--by-op", action="store_true", help="also print totals per op (text; json always has them)")


def check_profile_arguments(args) -> None:
    if args.copies < 1 or args.repeat < 1 or args.top < 0:
        raise CliError("--copies and --repeat must be >= 1, --top >= 0")


def run_profile(g, args) -> bytes:
    stat = min if args.stat == "min" else statistics.median
    prof = profile_graph(g, args.threads, args.copies, args.repeat, stat)
    if args.format == "json":
        return profile_json(prof).encode()
    return profile_text(prof, args.top, args.by_op).encode()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="profile_graph", description=__doc__.split("\n\n")[0])
    graph_sources.add_source_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="threads for every graph (default 1)")
    p.add_argument("--format", "-f", choices=("text", "json"), default="text")
    p.add_argument("--output", "-o", metavar="PATH", help="write here instead of standard output")
    add_profile_arguments(p)
    add_common_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.threads < 1:
            raise CliError("--threads must be >= 1")
        check_profile_arguments(args)
        graph_sources.check_source(args, default_model_graph="backward")
        if args.output:
            check_output_file(args.output, "--output")
        g, _ = graph_sources.load(args)
        data = run_profile(g, args)
        if args.output:
            write_output(args.output, data)
        else:
            write_stdout(data)
    except CliError as e:
        print(f"profile_graph: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
