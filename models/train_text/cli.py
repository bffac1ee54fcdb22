"""graphcore-train-text: train-text-from-scratch's options (names, meanings and defaults of llama.cpp
4480542's examples/train-text-from-scratch and common/train.cpp), checks, and main()."""
from __future__ import annotations

import argparse
import sys

from graphcore.cli_support import CliError
from graphcore.gguf_io import GGUFError
from graphcore_models import mpi
from graphcore_models.baby_llama.cli import plot_loss
from graphcore_models.llama.tokenizer import TokenizerError

from .data import DataError
from .train import LLAMA_DEFAULT_SEED, run


class _Parser(argparse.ArgumentParser):
    def error(self, message):           # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphcore-train-text", description="Train a llama on a text file (llama.cpp's "
                "train-text-from-scratch over graphcore).")
    f = p.add_argument
    f("--vocab-model", default="ggml-vic7b-uncensored-q4_0.bin", help="model path from which to load vocab")
    f("--model-out", default="ggml-checkpoint-f32.bin", help="path to save ggml model")
    f("--only-write-model", action="store_true", help="only save llama model, don't do any training")
    f("--embd", type=int, default=256, help="embedding size used for new models")
    f("--ff", type=int, default=768, help="feedforward size used for new models")
    f("--head", type=int, default=8, help="number of heads for new models")
    f("--layer", type=int, default=16, help="number of layers for new models")
    f("--norm-rms-eps", type=float, default=1e-5, help="RMS-Norm epsilon value")
    f("--rope-freq-base", type=float, default=10000.0, help="frequency base for ROPE")
    f("--rope-freq-scale", type=float, default=1.0, help="frequency scale for ROPE")
    f("--train-data", default="shakespeare.txt", help="path from which to load training data")
    f("--checkpoint-in", default="checkpoint.gguf", help="path from which to load training checkpoint")
    f("--checkpoint-out", default="checkpoint-ITERATION.gguf", help="path to save training checkpoint")
    f("--pattern-fn-it", default="ITERATION", help="pattern in output filenames replaced by the iteration")
    f("--fn-latest", default="LATEST", help="string used for the latest output's filename")
    f("--save-every", type=int, default=10, help="save checkpoint and model every N iterations (0: never)")
    f("-s", "--seed", type=int, default=-1, help="RNG seed (-1: random)")
    f("-c", "--ctx", type=int, default=None, help="context size used during training (default 128)")
    f("-t", "--threads", type=int, default=6, help="number of threads")
    f("-b", "--batch", type=int, default=8, help="parallel batch size")
    f("--grad-acc", type=int, default=1, help="number of gradient accumulation steps")
    f("--sample-start", default="", help="sets the starting point for samples after the specified pattern")
    f("--include-sample-start", action="store_true", help="include the sample start in the samples")
    f("--escape", action="store_true", help="process sample start escapes sequences (\\n, \\r, \\t, ...)")
    f("--overlapping-samples", action="store_true", help="samples may overlap (with --sample-start)")
    f("--fill-with-next-samples", action="store_true", help="samples shorter than the context are followed by "
      "the next ones")
    for name, default in (("eos", False), ("bos", True)):
        f(f"--separate-with-{name}", dest=f"separate_with_{name}", action="store_true", default=default,
          help=f"when fill-with-next-samples, insert {name} token between samples")
        f(f"--no-separate-with-{name}", dest=f"separate_with_{name}", action="store_false")
    f("--sample-random-offsets", action="store_true", help="use samples beginning at random offsets")
    f("--force-reshuffle", action="store_true", help="force a reshuffling of data at program start")
    f("--use-flash", dest="use_flash", action="store_true", default=True, help="use flash attention (default)")
    f("--no-flash", dest="use_flash", action="store_false", help="don't use flash attention")
    f("--use-checkpointing", dest="use_checkpointing", action="store_true", default=True,
      help="use gradient checkpointing (default)")
    f("--no-checkpointing", dest="use_checkpointing", action="store_false", help="don't use gradient checkpointing")
    f("--warmup", type=int, default=100, help="only for Adam optimizer: number of warmup steps")
    f("--cos-decay-steps", type=int, default=1000, help="only for Adam: number of cosine decay steps")
    f("--cos-decay-restart", type=float, default=1.1, help="only for Adam: increase of cosine decay steps "
      "after restart")
    f("--cos-decay-min", type=float, default=0.1, help="only for Adam: cosine decay minimum")
    f("--enable-restart", dest="enable_restart", action="store_true", default=False,
      help="only for Adam: enable restarts of cos-decay")
    f("--disable-restart", dest="enable_restart", action="store_false")
    f("--opt-past", type=int, default=0, help="number of optimization iterations to track for delta "
      "convergence test (0: disabled)")
    f("--opt-delta", type=float, default=1e-5, help="maximum delta for delta convergence test")
    f("--opt-max-no-improvement", type=int, default=0, help="maximum number of iterations without improvement")
    f("--epochs", type=int, default=-1, help="only for Adam: number of epochs (-1: no limit)")
    f("--adam-iter", type=int, default=256, help="maximum number of Adam optimization iterations")
    f("--adam-alpha", type=float, default=1e-3, help="Adam learning rate alpha")
    f("--adam-min-alpha", type=float, default=0.0, help="Adam minimum learning rate alpha")
    f("--adam-decay", type=float, default=1e-1, help="AdamW weight decay")
    f("--adam-decay-min-ndim", type=int, default=2, help="minimum number of tensor dimensions to apply "
      "weight decay")
    f("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    f("--adam-beta2", type=float, default=0.999, help="AdamW beta2")
    f("--adam-gclip", type=float, default=1.0, help="AdamW gradient clipping (0: disabled)")
    f("--adam-epsf", type=float, default=0.0, help="AdamW epsilon for convergence test (0: disabled)")
    f("--progress", action="store_true", help="show a progress bar on stderr")
    f("--plot-loss", metavar="FILE.png", help="draw the loss per iteration (needs matplotlib)")
    mpi.add_arguments(p)
    return p


def _escapes(s: str) -> str:
    """process_escapes: \\n \\r \\t \\' \\" \\\\ (others kept as written)."""
    out, i = [], 0
    table = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in table:
            out.append(table[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_args(argv):
    """The options, with '_' in long names read as '-' (as the C program does) and checked."""
    argv = [x.replace("_", "-") if x.startswith("--") and "=" not in x else x for x in argv]
    a = parser().parse_args(argv)
    a.custom_n_ctx = a.ctx is not None
    a.ctx = 128 if a.ctx is None else a.ctx
    a.grad_acc = max(1, a.grad_acc)
    if a.escape:
        a.sample_start = _escapes(a.sample_start)
    for name in ("ctx", "embd", "ff", "head", "layer", "batch", "threads"):
        if getattr(a, name) <= 0:
            raise CliError(f"--{name} must be positive, got {getattr(a, name)}")
    if a.embd % a.head or (a.embd // a.head) % 2:
        raise CliError(f"--embd ({a.embd}) must be a multiple of --head ({a.head}) with an even quotient")
    if a.adam_iter < 0:
        raise CliError(f"--adam-iter must be >= 0, got {a.adam_iter}")
    if a.seed < -1 or a.seed > LLAMA_DEFAULT_SEED:
        raise CliError(f"--seed must be -1 or in [0, 2^32), got {a.seed}")
    return a


def main(argv=None) -> int:
    prog = "graphcore-train-text"
    world = None
    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
        world = mpi.start(a)
        r = run(a, mpi.rank_output(world, sys.stdout), world)
        if a.plot_loss and (world is None or world.rank == 0):
            plot_loss(a.plot_loss, r.get("history", []), "train-text training", "iteration")
    except Exception as e:
        if world is not None:       # one message for the job, or the whole job ended (graphcore.distributed)
            return world.fail(prog, e)
        if not isinstance(e, (CliError, DataError, GGUFError, TokenizerError, ValueError)):
            raise
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 1
    except KeyboardInterrupt as e:
        if world is not None:
            return world.fail(prog, e)
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    return 130 if r.get("interrupted") else 0
