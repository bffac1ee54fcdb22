"""graphcore-dump: look at, filter, measure and save graphs.

    graphcore-dump graph.gcg                                   # ggml_graph_print's table (text)
    graphcore-dump --model baby-llama --graph backward --format svg -o backward.svg
    graphcore-dump --from mypkg.models:build_graph --format json -o g.json
    graphcore-dump graph.gcg --format dot --around layers.0.KQ_soft_max --depth 2
    graphcore-dump --model baby-llama --graph forward --stats --threads 2
    graphcore-dump --model baby-llama --graph backward --save backward.gcg

Sources (one): a graph file written by gc.graph_export (or --save); --model baby-llama with
--graph forward|backward|generation and the model-size options, built in-process as
models/baby_llama.py builds it; or --from package.module:function, a function taking no arguments
that returns a Graph, a (graph, forward_graph) pair, or a tensor (its forward graph is built).

Formats: text (the default), dot, svg and png (rendered by Graphviz's dot program), json (see
graphcore.dump.GRAPH_JSON_SCHEMA). Filters: --op, --around/--depth, --max-nodes. --stats prints
nodes and bytes by op, parameters and the plan for --threads (text, or json with --format json).
Also `python -m tools.graph_dump`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from collections import deque

FORMATS = ("text", "dot", "svg", "png", "json")
MODEL_GRAPHS = ("forward", "backward", "generation")


class CliError(Exception):
    """A problem to report in one line (exit status 1)."""


# -- sources -----------------------------------------------------------------------------------------------
def baby_llama_graph(which: str, args):
    """(graph, forward graph or None) of baby-llama, built as models/baby_llama.py builds it:
    training's forward graph with its loss, its backward graph (the loss's gradient seeded with 1,
    a batch of tokens and targets in place), or the generation graph."""
    import graphcore as gc
    from models import baby_llama as bl
    argv = ["--n-vocab", str(args.n_vocab), "--n-ctx", str(args.n_ctx), "--n-embd", str(args.n_embd),
            "--n-head", str(args.n_head), "--n-layer", str(args.n_layer), "--n-mult", str(args.n_mult),
            "--n-batch", str(args.n_batch), "--n-lora", str(args.n_lora), "--loss", args.loss,
            "--seed", str(args.seed)] + (["--lora"] if args.lora else [])
    p = bl._parser()
    margs = p.parse_args(argv)
    try:
        bl._check_args(p, margs)
    except SystemExit:
        raise CliError("invalid model sizes (see the message above)") from None
    model, kv = bl.new_model(margs)
    hp = model.hparams
    if which == "generation":
        n_tokens, n_vocab = hp.n_ctx, hp.n_vocab
        sample_ctx = n_tokens - n_tokens // 8
        tokens_input = gc.new_tensor_1d(model.ctx, gc.TYPE_I32, n_tokens)
        targets = gc.new_tensor_2d(model.ctx, gc.TYPE_F32, n_vocab, n_tokens)
        bl.get_example_targets(137, tokens_input, targets)
        ctx0 = gc.init(bl._compute_size(hp, 1, kv, nodes_per_layer=60))
        gf = gc.new_graph_custom(ctx0, bl.LLAMA_TRAIN_MAX_NODES, True)
        fwd = bl.forward_lora if margs.lora else bl.forward
        logits = fwd(model, kv, ctx0, gf, tokens_input, sample_ctx, 0)
        gc.build_forward_expand(gf, logits)
        return gf, None
    # every node keeps its bytes (no allocator): a dumped or exported graph shows all its values
    tg = bl.build_training_graphs(model, kv, margs.n_batch, margs.loss, allocator=False)
    bl.get_example_targets_batch(tg.ctx0, 0, tg.tokens_input, tg.targets)
    tg.tokens.numpy()[:] = tg.tokens_input.numpy().reshape(-1)
    if which == "forward":
        return tg.gf, None
    gc.graph_reset(tg.gb)
    gc.set_f32(tg.error.grad, 1.0)
    return tg.gb, tg.gf


def graph_from_function(spec: str):
    """(graph, forward graph or None) from `package.module:function`."""
    import graphcore as gc
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise CliError(f"--from wants package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CliError(f"--from {spec}: cannot import {mod_name}: {e}") from None
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise CliError(f"--from {spec}: {mod_name} has no attribute {fn_name!r}")
    if not callable(fn):
        raise CliError(f"--from {spec}: {fn_name} is not callable")
    out = fn()
    gf = None
    if isinstance(out, tuple) and len(out) == 2:
        out, gf = out
    if isinstance(out, gc.Tensor):
        out = gc.build_forward(out)
    if not isinstance(out, gc.Graph) or (gf is not None and not isinstance(gf, gc.Graph)):
        raise CliError(f"--from {spec}: the function must return a Graph, a (graph, forward graph) pair or "
                       f"a tensor; it returned {type(out).__name__}")
    return out, gf


def load(args):
    import graphcore as gc
    given = [x for x in (args.file, args.model, args.from_) if x]
    if len(given) != 1:
        raise CliError("give one source: a graph file, --model baby-llama, or --from package.module:function")
    if args.file:
        try:
            return gc.graph_import(args.file, with_forward=True)
        except OSError as e:
            raise CliError(f"cannot read {args.file}: {e.strerror or e}") from None
        except gc.GraphError as e:
            raise CliError(str(e)) from None
    if args.model:
        return baby_llama_graph(args.graph, args)
    return graph_from_function(args.from_)


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
        description="Print, draw, filter, measure and save graphcore graphs.",
        epilog="Examples: graphcore-dump g.gcg; graphcore-dump --model baby-llama --graph backward --format svg "
               "-o b.svg; graphcore-dump g.gcg --format dot --op MUL_MAT; graphcore-dump g.gcg --stats --threads 2")
    src = p.add_argument_group("source (one)")
    src.add_argument("file", nargs="?", help="a graph file written by gc.graph_export or --save")
    src.add_argument("--model", choices=("baby-llama",), help="build a model's graph in-process")
    src.add_argument("--graph", choices=MODEL_GRAPHS, default="forward",
                     help="which graph of the model (default forward)")
    src.add_argument("--from", dest="from_", metavar="MODULE:FUNCTION",
                     help="call package.module:function(), which returns a Graph, (graph, forward graph) "
                          "or a tensor")
    out = p.add_argument_group("output")
    out.add_argument("--format", "-f", choices=FORMATS, help="default text")
    out.add_argument("--output", "-o", metavar="PATH", help="write here instead of standard output")
    out.add_argument("--save", metavar="FILE.gcg", help="also save the whole graph as a graph file "
                                                        "(gc.graph_import reads it)")
    out.add_argument("--stats", action="store_true",
                     help="nodes and bytes by op, parameters, and the plan for --threads")
    out.add_argument("--threads", type=int, default=1, help="threads of the plan --stats shows (default 1)")
    flt = p.add_argument_group("filters (text, dot, svg, png, json)")
    flt.add_argument("--op", action="append", metavar="NAME[,NAME]", help="only nodes of these ops")
    flt.add_argument("--around", metavar="NODE", help="only tensors near NODE: a node index, leaf:INDEX, or a name")
    flt.add_argument("--depth", type=int, default=2, help="how many source edges from --around (default 2)")
    flt.add_argument("--max-nodes", type=int, metavar="N", help="at most N nodes (the first ones)")
    m = p.add_argument_group("model sizes (--model baby-llama)")
    m.add_argument("--n-vocab", type=int, default=8)
    m.add_argument("--n-ctx", type=int, default=8)
    m.add_argument("--n-embd", type=int, default=32)
    m.add_argument("--n-head", type=int, default=8)
    m.add_argument("--n-layer", type=int, default=1)
    m.add_argument("--n-mult", type=int, default=2)
    m.add_argument("--n-batch", type=int, default=8)
    m.add_argument("--lora", action="store_true", help="the LoRA model")
    m.add_argument("--n-lora", type=int, default=8)
    m.add_argument("--loss", choices=("square", "cross-entropy"), default="square")
    m.add_argument("--seed", type=int, default=1337)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.depth < 0:
        p.error("--depth must be >= 0")
    if args.max_nodes is not None and args.max_nodes < 0:
        p.error("--max-nodes must be >= 0")
    if args.graph != "forward" and not args.model:
        p.error("--graph goes with --model")
    try:
        import graphcore as gc
        g, gf = load(args)
        wants_output = args.format is not None
        args.format = args.format or "text"
        if args.save:
            try:
                gc.graph_export(g, args.save, gf)
            except (gc.GraphError, OSError) as e:
                raise CliError(f"--save {args.save}: {e}") from None
            if not (args.output or args.stats or wants_output):
                print(f"saved {g.n_nodes} nodes and {g.n_leafs} leafs to {args.save}", file=sys.stderr)
                return 0
        data = produce(g, gf, args)
    except CliError as e:
        print(f"graphcore-dump: {e}", file=sys.stderr)
        return 1
    if args.output:
        try:
            with open(args.output, "wb") as f:
                f.write(data)
        except OSError as e:
            print(f"graphcore-dump: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return 1
    else:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except BrokenPipeError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
