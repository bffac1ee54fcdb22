"""Where the graph tools get a graph: a graph file, a model built in-process (--model baby-llama),
or a user's function (--from package.module:function). Shared by graphcore-dump and the profiler."""
from __future__ import annotations

import importlib
import os
import sys

import graphcore as gc
from graphcore.cli_support import CliError
from graphcore_models import baby_llama as bl

MODEL_GRAPHS = ("forward", "backward", "generation")


def add_source_arguments(p) -> None:
    src = p.add_argument_group("source (one)")
    src.add_argument("file", nargs="?", help="a graph file written by gc.graph_export or --save")
    src.add_argument("--model", choices=("baby-llama",), help="build a model's graph in-process")
    src.add_argument("--graph", choices=MODEL_GRAPHS, default=None,
                     help="which graph of the model (default forward)")
    src.add_argument("--from", dest="from_", metavar="MODULE:FUNCTION",
                     help="call package.module:function(), which returns a Graph, (graph, forward graph) "
                          "or a tensor")
    m = p.add_argument_group("model sizes (--model baby-llama)")
    for name, default in (("n-vocab", 8), ("n-ctx", 8), ("n-embd", 32), ("n-head", 8), ("n-layer", 1),
                          ("n-mult", 2), ("n-batch", 8), ("n-lora", 8), ("seed", 1337)):
        m.add_argument(f"--{name}", type=int, default=default)
    m.add_argument("--lora", action="store_true", help="the LoRA model")
    m.add_argument("--loss", choices=("square", "cross-entropy"), default="square")


def baby_llama_graph(which: str, args):
    """(graph, forward graph or None) of baby-llama, built as models/baby_llama builds it:
    training's forward graph with its loss, its backward graph (the loss's gradient seeded with 1,
    a batch of tokens and targets in place), or the generation graph."""
    argv = ["--n-vocab", str(args.n_vocab), "--n-ctx", str(args.n_ctx), "--n-embd", str(args.n_embd),
            "--n-head", str(args.n_head), "--n-layer", str(args.n_layer), "--n-mult", str(args.n_mult),
            "--n-batch", str(args.n_batch), "--n-lora", str(args.n_lora), "--loss", args.loss,
            "--seed", str(args.seed)] + (["--lora"] if args.lora else [])
    margs = bl.parser().parse_args(argv)
    problem = bl.check_args(margs)
    if problem:
        raise CliError(f"--model baby-llama: {problem}")
    model, kv = bl.new_model(margs)
    hp = model.hparams
    if which == "generation":
        n_tokens, n_vocab = hp.n_ctx, hp.n_vocab
        sample_ctx = n_tokens - n_tokens // 8
        tokens_input = gc.new_tensor_1d(model.ctx, gc.TYPE_I32, n_tokens)
        targets = gc.new_tensor_2d(model.ctx, gc.TYPE_F32, n_vocab, n_tokens)
        bl.get_example_targets(137, tokens_input, targets)
        ctx0 = gc.init(bl.compute_size(hp, 1, kv, nodes_per_layer=60))
        gf = gc.new_graph_custom(ctx0, bl.LLAMA_TRAIN_MAX_NODES, True)
        fwd = bl.forward_lora if margs.lora else bl.forward
        logits = fwd(model, kv, ctx0, gf, tokens_input, sample_ctx, 0)
        gc.build_forward_expand(gf, logits)
        return gf, None
    # allocator=False: every node keeps its bytes, so a dump shows all values and a node timed
    # alone (tools.profile_graph) finds its sources' values, not bytes reused since
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
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise CliError(f"--from wants package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CliError(f"--from {spec}: cannot import {mod_name}: {e}") from None
    except Exception as e:                      # the module itself raised while importing
        raise CliError(f"--from {spec}: importing {mod_name} raised {type(e).__name__}: {e}") from None
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise CliError(f"--from {spec}: {mod_name} has no attribute {fn_name!r}")
    if not callable(fn):
        raise CliError(f"--from {spec}: {fn_name} is not callable")
    try:
        out = fn()
    except Exception as e:
        raise CliError(f"--from {spec}: the function raised {type(e).__name__}: {e}") from None
    gf = None
    if isinstance(out, tuple) and len(out) == 2:
        out, gf = out
    if isinstance(out, gc.Tensor):
        out = gc.build_forward(out)
    if not isinstance(out, gc.Graph) or (gf is not None and not isinstance(gf, gc.Graph)):
        raise CliError(f"--from {spec}: the function must return a Graph, a (graph, forward graph) pair or "
                       f"a tensor; it returned {type(out).__name__}")
    return out, gf


def check_source(args, default_model_graph: str | None = None) -> None:
    """One source given (or, with default_model_graph, baby-llama's graph of that name when none is)."""
    given = [x for x in (args.file, args.model, args.from_) if x]
    if not given and default_model_graph:
        args.model, args.graph = "baby-llama", args.graph or default_model_graph
        return
    if len(given) != 1:
        raise CliError("give one source: a graph file, --model baby-llama, or --from package.module:function")
    if args.graph is not None and not args.model:
        raise CliError("--graph goes with --model")


def load(args):
    """(graph, forward graph or None) from the source the options name."""
    if args.file:
        try:
            return gc.graph_import(args.file, with_forward=True)
        except OSError as e:
            raise CliError(f"cannot read {args.file}: {e.strerror or e}") from None
        except gc.GraphError as e:
            raise CliError(str(e)) from None
    if args.model:
        try:
            return baby_llama_graph(args.graph or "forward", args)
        except MemoryError as e:
            raise CliError(f"--model baby-llama: these sizes need more memory than is available ({e})") from None
    return graph_from_function(args.from_)
