"""The baby-llama program: options, checks, the model as main() builds it, the loss plot, main()."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import graphcore as gc
from graphcore.cli_support import (CliError, add_common_arguments, check_output_file, check_output_folder,
                                   setup_logging)
from graphcore.files import drop_stdout
from graphcore_models import mpi

from .data import print_matrix
from .generate import generate
from .model import (LlamaKVCache, LlamaModel, LlamaModelLora, baby_hparams, get_n_ff, init_kv_cache, init_model,
                    init_model_lora, set_param_model, set_param_model_lora)
from .rng import randomize_model, randomize_model_lora
from .train import train


# =============================================================================================
# the program
# =============================================================================================
def parser():
    p = argparse.ArgumentParser(
        prog="baby-llama",
        description="llama.cpp's baby-llama over graphcore: train a tiny llama on sine-wave tokens "
                    "with L-BFGS, then generate. With no options it does what the original does.")
    p.add_argument("--examples", type=int, default=256, help="training batches (default 256)")
    p.add_argument("--threads", type=int, default=1, help="threads for every graph (default 1, as the original)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the weights' random stream (default 1337)")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    p.add_argument("--lbfgs-iters", type=int, default=16, help="L-BFGS iterations per batch (default 16)")
    p.add_argument("--adam-iters", type=int, default=64, help="Adam iterations per batch (default 64)")
    p.add_argument("--loss", choices=("square", "cross-entropy"), default="square")
    p.add_argument("--lora", action="store_true", help="train and generate with the LoRA model")
    p.add_argument("--n-lora", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--n-gen", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--progress", action="store_true",
                   help="a progress bar on stderr: batches, last error, evaluations per second")
    p.add_argument("--dump-graphs", metavar="DIR",
                   help="write the forward, backward and generation graphs to DIR: text, Graphviz dot and "
                        "graph files (.gcg, for graphcore-dump and gc.graph_import)")
    p.add_argument("--plot-loss", metavar="FILE.png",
                   help="draw the errors before and after each batch (needs matplotlib: pip install "
                        "'graphcore-engine[plot]'); any format matplotlib writes (.png, .svg, .pdf)")
    g = p.add_argument_group("model sizes")
    g.add_argument("--n-vocab", type=int, default=8)
    g.add_argument("--n-ctx", type=int, default=8)
    g.add_argument("--n-embd", type=int, default=32)
    g.add_argument("--n-head", type=int, default=8)
    g.add_argument("--n-layer", type=int, default=1)
    g.add_argument("--n-mult", type=int, default=2)
    g.add_argument("--n-batch", type=int, default=8)
    add_common_arguments(p)
    mpi.add_arguments(p)
    return p


def check_args(a) -> str | None:
    """What is wrong with the options `a` (a parsed namespace of this program's options), or None."""
    for name in ("examples", "n_gen"):
        if getattr(a, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0"
    for name in ("threads", "lbfgs_iters", "adam_iters", "n_lora", "n_vocab", "n_ctx", "n_embd", "n_head",
                 "n_layer", "n_mult", "n_batch"):
        if getattr(a, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    if a.n_vocab < 2:
        return "--n-vocab must be >= 2"
    if a.n_ctx < 2:
        return "--n-ctx must be >= 2"
    if a.n_embd % a.n_head:
        return f"--n-embd ({a.n_embd}) must be a multiple of --n-head ({a.n_head})"
    if (a.n_embd // a.n_head) % 2:
        return f"n_embd / n_head ({a.n_embd} / {a.n_head}) must be even (rope rotates pairs)"
    return None


def build_model(args):
    """init model / set_param / randomize as the original's main."""
    lcsize = 2 * 1024 * 1024
    if args.lora:
        hp = baby_hparams(args.n_vocab, args.n_ctx, args.n_embd, args.n_mult, args.n_head, args.n_layer, args.n_lora)
        model = LlamaModelLora(hparams=hp)
    else:
        hp = baby_hparams(args.n_vocab, args.n_ctx, args.n_embd, args.n_mult, args.n_head, args.n_layer)
        model = LlamaModel(hparams=hp)
    n_ff = get_n_ff(hp)
    n_weights = 3 * hp.n_embd * hp.n_vocab + hp.n_layer * (6 * hp.n_embd * hp.n_embd + 3 * hp.n_embd * n_ff)
    n_cache = 2 * hp.n_embd * hp.n_layer * hp.n_ctx * args.n_batch
    # weights and their gradient tensors, the cache, the generation prompt: room for all with slack
    model.ctx = gc.init(lcsize + 8 * 4 * (n_weights + n_cache + 4 * hp.n_vocab * hp.n_ctx))
    return model


def new_model(args, out=None):
    """The model (init, set_param, randomize with args.seed) and its KV cache, as the original's
    main does; `out` gets its two progress lines."""
    model = build_model(args)
    if out is not None:
        out.write("init model\n")
    if args.lora:
        init_model_lora(model)
        set_param_model_lora(model)
        randomize_model_lora(model, args.seed, 0.0, 1.0, -1.0, +1.0)
    else:
        init_model(model)
        set_param_model(model)
        randomize_model(model, args.seed, 0.0, 1.0, -1.0, +1.0)
    kv_self = LlamaKVCache()
    if out is not None:
        out.write("init_kv_cache\n")
    kv_self.ctx = model.ctx
    init_kv_cache(kv_self, model, args.n_batch)
    return model, kv_self


def plot_loss(path, history, title="baby-llama training", xlabel="batch"):
    """The errors before and after each batch's optimisation (history: pairs; or one loss per step,
    a flat list), drawn with matplotlib (an optional extra) with axes, labels and a legend, to any
    file format matplotlib writes."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot-loss needs matplotlib: pip install 'graphcore-engine[plot]' (or pip install "
                       "matplotlib)") from None
    h = np.asarray(history, np.float64)
    h = h.reshape(-1, 2) if h.ndim > 1 or h.size == 0 else h[:, None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    batches = np.arange(1, len(h) + 1)
    if h.shape[1] == 2:
        ax.plot(batches, h[:, 0], color="0.6", lw=1, label="error before the batch's optimisation")
    ax.plot(batches, h[:, -1], color="tab:blue", lw=1.5, label="error after" if h.shape[1] == 2 else "loss")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("error (loss)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as e:
        raise CliError(f"--plot-loss {path}: {e}") from None
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    problem = check_args(args)
    if problem:
        p.error(problem)
    setup_logging(args.verbose)
    try:
        # outputs are checked before training, not after it
        if args.plot_loss:
            check_output_file(args.plot_loss, "--plot-loss")
            import importlib.util
            if importlib.util.find_spec("matplotlib") is None:
                raise CliError("--plot-loss needs matplotlib: pip install 'graphcore-engine[plot]' (or pip "
                               "install matplotlib)")
        if args.dump_graphs:
            check_output_folder(args.dump_graphs, "--dump-graphs")
        world = mpi.start(args)
        if world is None:
            return _run(args)
        try:
            return _run(args, world)
        except (Exception, KeyboardInterrupt) as e:
            return world.fail("baby-llama", e)     # one message for the job, or the whole job ended
    except CliError as e:
        print(f"baby-llama: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:         # the reader of our output went away (| head): not an error
        drop_stdout()
        return 0
    except MemoryError as e:
        print(f"baby-llama: not enough memory for these model sizes ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    except OSError as e:
        if e.filename is None:      # not a named file: standard output failed (a full disk)
            drop_stdout()
            e = f"cannot write to standard output: {e.strerror or e}"
        print(f"baby-llama: {e}", file=sys.stderr)
        return 1


def train_model(args, world=None, out=sys.stdout):
    """A new model trained as the original's main does: (model, kv_self, history, stats). With
    `world` (graphcore.distributed) data-parallel: the ranks first compare their options and shapes
    and take rank 0's weights, and at the end check their weights are still the same."""
    model, kv_self = new_model(args, out)
    params = [t.numpy() for t in model.tensors()]
    if world is not None:
        facts = {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items())
                 if k not in ("progress", "plot_loss", "dump_graphs", "verbose", "distributed")}
        world.agree(dict(facts, shapes=[p.shape for p in params]))
        world.broadcast(params)
    history = []
    stats = train(model, kv_self, args, out, history, world)
    if world is not None:
        world.check_in_sync(params, "after training")
    return model, kv_self, history, stats


def _run(args, world=None) -> int:
    out = mpi.rank_output(world, sys.stdout)
    t0 = time.perf_counter()
    model, kv_self, history, stats = train_model(args, world, out)
    if world is not None and world.rank != 0:
        return 0
    generate(model, kv_self, args, out)
    print_matrix(model.tok_embeddings, file=out)
    out.write("done\n")
    out.flush()
    if args.plot_loss:
        plot_loss(args.plot_loss, history)
    if args.progress:
        sys.stderr.write(f"{args.examples} batches, {stats['n_evals']} forward+backward evaluations, "
                         f"training {stats['seconds']:.2f} s, whole program {time.perf_counter() - t0:.2f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
