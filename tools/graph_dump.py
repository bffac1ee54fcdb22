"""graphcore-dump: look at, filter, measure and save graphs.

    graphcore-dump graph.gcg                                   # ggml_graph_print's table (text)
    graphcore-dump --model baby-llama --graph backward --format svg -o backward.svg
    graphcore-dump --from mypkg.models:build_graph --format json -o g.json
    graphcore-dump graph.gcg --format dot --around layers.0.KQ_soft_max --depth 2
    graphcore-dump --model baby-llama --graph forward --stats --threads 2
    graphcore-dump --model baby-llama --graph backward --save backward.gcg

Sources (one): a graph file written by gc.graph_export (or --save); --model baby-llama with
--graph forward|backward|generation and the model-size options, built in-process as
models/baby_llama builds it; or --from package.module:function, a function taking no arguments
that returns a Graph, a (graph, forward_graph) pair, or a tensor (its forward graph is built).

Formats: text (the default), dot, svg and png (rendered by Graphviz's dot program), json (see
graphcore.dump.GRAPH_JSON_SCHEMA). Filters: --op, --around/--depth, --max-nodes. --stats prints
nodes and bytes by op, parameters and the plan for --threads (text, or json with --format json);
--profile times every node and op (tools/profile_graph.py). Also `python -m graphcore_tools.graph_dump`.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from collections import deque

from graphcore.cli_support import (CliError, add_common_arguments, check_output_file, setup_logging, write_output,
                                   write_stdout)
from graphcore_tools import graph_sources, profile_graph

FORMATS = ("text", "dot", "svg", "png", "json")
BINARY_FORMATS = ("png",)
log = logging.getLogger("graphcore.dump")


# -- filters -----------------------------------------------------------------------------------------------
def find_tensor(g, spec: str):
    """A node by index ("12"), a leaf by "leaf:3", or any tensor by name."""
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if not -g.n_nodes <= i < g.n_nodes:
            raise CliError(f"--around {spec}: the graph has {g.n_nodes} nodes")
        return g.nodes[i]
    if spec.startswith("leaf:") and spec[5:].isdigit():
        i = int(spec[5:])
        if i >= g.n_leafs:
            raise CliError(f"--around {spec}: the graph has {g.n_leafs} leafs")
        return g.leafs[i]
    for t in list(g.nodes) + list(g.leafs):
        if t.name == spec:
            return t
    near = [t.name for t in list(g.nodes) + list(g.leafs) if spec.lower() in t.name.lower()][:8]
    raise CliError(f"--around {spec}: no node or leaf of that index or name"
                   + (f" (names containing it: {', '.join(near)})" if near else ""))


def neighbourhood(g, center, depth: int) -> set:
    """ids of the graph's tensors within `depth` source edges of center (either direction)."""
    members = {id(t): t for t in list(g.nodes) + list(g.leafs)}
    users = {}
    for n in g.nodes:
        for s in n.src:
            if s is not None:
                users.setdefault(id(s), []).append(n)
    seen = {id(center)}
    todo = deque([(center, 0)])
    while todo:
        t, d = todo.popleft()
        if d == depth:
            continue
        for x in [s for s in t.src if s is not None] + users.get(id(t), []):
            if id(x) in members and id(x) not in seen:
                seen.add(id(x))
                todo.append((x, d + 1))
    return seen


def select(g, args):
    """(ids of the tensors to show or None for all, a caption saying what the filters kept)."""
    from graphcore.ops.registry import BY_NAME
    sel = None
    notes = []
    if args.op:
        names = {x.strip().upper() for spec in args.op for x in spec.split(",") if x.strip()}
        unknown = sorted(n for n in names if n not in BY_NAME)
        if unknown:
            raise CliError(f"--op: unknown op {', '.join(unknown)} (known: {', '.join(sorted(BY_NAME))})")
        sel = {id(n) for n in g.nodes if _name(n.op) in names}
        notes.append(f"op {', '.join(sorted(names))}")
    if args.around is not None:
        center = find_tensor(g, args.around)
        near = neighbourhood(g, center, args.depth)
        sel = near if sel is None else sel & near
        notes.append(f"within {args.depth} of '{center.name}'")
    if args.max_nodes is not None:
        kept, n = set(), 0
        for t in g.nodes:
            if sel is None or id(t) in sel:
                if n < args.max_nodes:
                    kept.add(id(t))
                n += 1
        keep_leafs = {id(s) for t in g.nodes if id(t) in kept for s in t.src if s is not None}
        for t in g.leafs:
            if (sel is None or id(t) in sel) and id(t) in keep_leafs:
                kept.add(id(t))
        if n > args.max_nodes:
            notes.append(f"the first {args.max_nodes}")
        sel = kept
    if sel is None:
        return None, None
    shown = sum(1 for t in g.nodes if id(t) in sel)
    return sel, f"{shown} of {g.n_nodes} nodes" + (": " + "; ".join(notes) if notes else "")


def _name(code):
    from graphcore.ops.registry import op_name
    return op_name(code)


# -- output ------------------------------------------------------------------------------------------------
def render(dot_text: str, fmt: str) -> bytes:
    prog = shutil.which("dot")
    if prog is None:
        raise CliError(f"--format {fmt} needs Graphviz's `dot` program, which is not installed (not on PATH); "
                       f"install Graphviz (apt-get install graphviz, brew install graphviz), or write "
                       f"--format dot and render it elsewhere")
    log.info("rendering %s with %s (%d bytes of dot; large graphs take a while)", fmt, prog, len(dot_text))
    try:
        r = subprocess.run([prog, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CliError(f"running {prog} -T{fmt} failed: {e}") from None
    if r.returncode != 0:
        raise CliError(f"{prog} -T{fmt} failed (exit {r.returncode}): "
                       f"{r.stderr.decode('utf-8', 'replace').strip()[:2000]}")
    return r.stdout


def produce(g, gf, args) -> bytes:
    from graphcore import dump
    if args.profile:
        if args.format not in ("text", "json"):
            raise CliError("--profile prints text or json (--format text|json)")
        return profile_graph.run_profile(g, args)
    if args.stats:
        if args.format not in ("text", "json"):
            raise CliError("--stats prints text or json (--format text|json)")
        s = dump.graph_stats(g, args.threads)
        if args.format == "json":
            return dump.json_text(s).encode("utf-8")
        return dump.stats_text(s).encode()
    sel, caption = select(g, args)
    if args.format == "text":
        text = dump.graph_text(g, sel)
        return ((f"# {caption}\n" if caption else "") + text).encode()
    if args.format == "json":
        return dump.json_text(dump.graph_json(g, gf, sel)).encode("utf-8")
    dot_text = dump.graph_dot(g, gf, sel, title=caption)
    if args.format == "dot":
        return dot_text.encode("utf-8")
    return render(dot_text, args.format)


def parser():
    p = argparse.ArgumentParser(
        prog="graphcore-dump",
        description="Print, draw, filter, measure, profile and save graphcore graphs.",
        epilog="Examples: graphcore-dump g.gcg; graphcore-dump --model baby-llama --graph backward --format svg "
               "-o b.svg; graphcore-dump g.gcg --format dot --op MUL_MAT; graphcore-dump g.gcg --stats --threads 2; "
               "graphcore-dump g.gcg --profile --by-op")
    graph_sources.add_source_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--format", "-f", choices=FORMATS, help="default text")
    out.add_argument("--output", "-o", metavar="PATH", help="write here instead of standard output")
    out.add_argument("--save", metavar="FILE.gcg", help="also save the whole graph as a graph file "
                                                        "(gc.graph_import reads it)")
    out.add_argument("--stats", action="store_true",
                     help="nodes and bytes by op, parameters, and the plan for --threads")
    out.add_argument("--profile", action="store_true",
                     help="time every node and op (text or json; see the profile options)")
    out.add_argument("--threads", type=int, default=1, help="threads of the plan --stats shows and --profile "
                                                            "uses (default 1)")
    flt = p.add_argument_group("filters (text, dot, svg, png, json)")
    flt.add_argument("--op", action="append", metavar="NAME[,NAME]", help="only nodes of these ops")
    flt.add_argument("--around", metavar="NODE", help="only tensors near NODE: a node index, leaf:INDEX, or a name")
    flt.add_argument("--depth", type=int, default=2, help="how many source edges from --around (default 2)")
    flt.add_argument("--max-nodes", type=int, metavar="N", help="at most N nodes (the first ones)")
    profile_graph.add_profile_arguments(p)
    add_common_arguments(p)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.threads < 1:
            raise CliError("--threads must be >= 1")
        if args.depth < 0:
            raise CliError("--depth must be >= 0")
        if args.max_nodes is not None and args.max_nodes < 0:
            raise CliError("--max-nodes must be >= 0")
        profile_graph.check_profile_arguments(args)
        graph_sources.check_source(args)
        if args.stats and args.profile:
            raise CliError("--stats and --profile: give one")
        wants_output = args.format is not None
        args.format = args.format or "text"
        for path, option in ((args.output, "--output"), (args.save, "--save")):
            if path:
                check_output_file(path, option)
        if not args.output and args.format in BINARY_FORMATS and sys.stdout.isatty():
            raise CliError(f"--format {args.format} is binary: give -o FILE (or redirect the output)")
        import graphcore as gc
        g, gf = graph_sources.load(args)
        if args.save:
            try:
                gc.graph_export(g, args.save, gf)
            except (gc.GraphError, OSError) as e:
                raise CliError(f"--save {args.save}: {e}") from None
            if not (args.output or args.stats or args.profile or wants_output):
                print(f"saved {g.n_nodes} nodes and {g.n_leafs} leafs to {args.save}", file=sys.stderr)
                return 0
        data = produce(g, gf, args)
        if args.output:
            write_output(args.output, data)
        else:
            write_stdout(data, args.format if args.format in BINARY_FORMATS else None)
    except CliError as e:
        print(f"graphcore-dump: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(f"graphcore-dump: not enough memory for this graph ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
