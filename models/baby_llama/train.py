"""Training: the losses, the training graphs (built once, planned once) and the loop over batches,
as the original's main() runs it."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import graphcore as gc
from graphcore.cli_support import Progress
from graphcore.files import write_bytes
from graphcore.optim import RESULT_NAMES

from .data import get_example_targets_batch, print_tokens, sample_softmax_batch
from .model import LLAMA_TRAIN_MAX_NODES, LlamaModelLora, forward_batch, forward_batch_lora, get_n_ff


# =============================================================================================
# losses
# =============================================================================================
def square_error_loss(ctx, a, b):
    """sum((a - b)^2)."""
    return gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, a, b)))


def cross_entropy_loss(ctx, a, b):
    """The original's composition: sum(-sum_rows(soft_max(a) * log(soft_max(b) + 1e-3)))."""
    eps = 1e-3
    return gc.sum(ctx, gc.neg(ctx, gc.sum_rows(ctx, gc.mul(ctx, gc.soft_max(ctx, a),
                                                           gc.log(ctx, gc.add1(ctx, gc.soft_max(ctx, b),
                                                                               gc.new_f32(ctx, eps)))))))



def _result_name(code) -> str:
    return RESULT_NAMES.get(code, str(code))


def _opt_params(args):
    if args.optimizer == "adam":
        params = gc.opt_default_params(gc.OPT_ADAM)
        params.adam.n_iter = args.adam_iters
    else:
        params = gc.opt_default_params(gc.OPT_LBFGS)
        params.lbfgs.n_iter = args.lbfgs_iters
    params.print_forward_graph = False
    params.print_backward_graph = False
    params.n_threads = args.threads
    return params


def dump_graphs(dirname, name, g, gf=None):
    """g as text, Graphviz dot and a graph file in dirname, each written whole (graphcore.files)."""
    os.makedirs(dirname, exist_ok=True)
    write_bytes(os.path.join(dirname, name + ".txt"), gc.graph_text(g).encode("utf-8"))
    gc.graph_dump_dot(g, gf, os.path.join(dirname, name + ".dot"))
    gc.graph_export(g, os.path.join(dirname, name + ".gcg"), gf)     # graphcore-dump reads it back


def compute_size(hp, n_batch, kv_self, nodes_per_layer):
    """Arena bytes for a graph's tensors: a bound on the largest tensor times a bound on their
    number (the forward, the gradients and the backward nodes), plus slack. The arena is
    zero-filled lazily by the OS, so unused bytes cost no memory. (The original takes 1 GiB.)"""
    rows = hp.n_ctx * n_batch
    largest = max(get_n_ff(hp) * rows, hp.n_ctx * hp.n_ctx * hp.n_head * n_batch, gc.nelements(kv_self.k),
                  hp.n_embd * max(get_n_ff(hp), hp.n_vocab, hp.n_embd), hp.n_vocab * rows)
    return 16 * 1024 * 1024 + 4 * largest * (nodes_per_layer * hp.n_layer + 100)


@dataclass
class TrainingGraphs:
    ctx0: object
    gf: object              # forward graph, loss included
    gb: object              # backward graph (gf's nodes, then the gradients)
    error: object           # the loss
    logits: object
    tokens_input: object    # I32 [n_ctx, n_batch]: write a batch's tokens here ...
    targets: object         # F32 [n_vocab, n_ctx, n_batch]: ... and its targets here
    tokens: object          # the graph's flat view of tokens_input's values
    galloc: object = None   # the graph allocator holding gb's tensors (gf's are among them)


def build_training_graphs(model, kv_self, n_batch: int, loss_name: str = "square", checkpointing: bool = False,
                          allocator: bool = True) -> TrainingGraphs:
    """The batched forward graph with its loss, and the backward graph (ggml_opt's gf and gb). Their
    tensors are placed by the graph allocator (allocator=False: each in the arena, as before); with
    checkpointing the backward recomputes the forward from train-text-from-scratch's checkpoints
    (the inputs, the embeddings, each layer's output, the logits)."""
    hp = model.hparams
    lora = isinstance(model, LlamaModelLora)
    n_tokens, n_vocab = hp.n_ctx, hp.n_vocab
    ctx0 = gc.init(compute_size(hp, n_batch, kv_self, nodes_per_layer=200), no_alloc=allocator)
    tokens_input = gc.set_name(gc.new_tensor_2d(ctx0, gc.TYPE_I32, n_tokens, n_batch), "tokens_input")
    targets = gc.set_name(gc.new_tensor_3d(ctx0, gc.TYPE_F32, n_vocab, n_tokens, n_batch), "targets")
    gf = gc.new_graph_custom(ctx0, LLAMA_TRAIN_MAX_NODES, True)
    fwd = forward_batch_lora if lora else forward_batch
    logits = fwd(model, kv_self, ctx0, gf, tokens_input, n_tokens, 0, n_batch)
    loss = cross_entropy_loss if loss_name == "cross-entropy" else square_error_loss
    e = gc.set_name(loss(ctx0, targets, logits), "error")
    gc.build_forward_expand(gf, e)
    if checkpointing:
        names = ["tokens", "inp_embd"] + [f"layers.{il}.out" for il in range(hp.n_layer)]
        checkpoints = [tokens_input, targets] + [gc.graph_get_tensor(gf, n) for n in names] + [logits, e]
        gb = gc.new_graph_custom(ctx0, LLAMA_TRAIN_MAX_NODES, True)
        gb_tmp = gc.new_graph_custom(ctx0, LLAMA_TRAIN_MAX_NODES, True)
        gc.build_backward_gradient_checkpointing(ctx0, gf, gb, gb_tmp, [t for t in checkpoints if t is not None])
    else:
        gb = gc.graph_dup(ctx0, gf)
        gc.build_backward_expand(ctx0, gf, gb, True)
    galloc = None
    if allocator:   # the graphs' tensors share one buffer (ggml-alloc); what is read after a compute stays put
        for t in [e, logits] + [n.grad for n in gf.nodes if n.flags & gc.FLAG_PARAM]:
            gc.set_output(t)
        galloc = gc.gallocr_new()
        gc.gallocr_alloc_graph(galloc, gb)
        gc.set_no_alloc(ctx0, False)    # tensors made later (samples, probabilities) get arena bytes
    return TrainingGraphs(ctx0, gf, gb, e, logits, tokens_input, targets, gc.graph_get_tensor(gf, "tokens"),
                          galloc)


def train(model, kv_self, args, out=sys.stdout, history=None, world=None):
    """The original's training loop, with the graphs built once.

    The original builds a new context, forward graph and loss per batch, and ggml_opt builds its
    own forward and backward graphs again on every call. The graphs are the same every time:
    only the data of two leafs (the token ids and the targets) change. Building and planning a
    146-node backward graph in Python costs milliseconds, as much as the whole optimisation of a
    batch in the original, so here they are built once: per batch the new tokens and targets are
    written into the leafs' data, and the optimizer is re-initialised (opt_init, as ggml_opt
    does on every call) and run on the prebuilt graphs with opt_resume_g.

    With `world` (graphcore.distributed) data-parallel: each rank computes its rows of every batch
    of args.n_batch sequences; the losses are sums, so the ranks' shares are summed."""
    hp = model.hparams
    n_tokens, n_vocab = hp.n_ctx, hp.n_vocab
    lo, hi = (0, args.n_batch) if world is None else world.shard(args.n_batch, "batch (--n-batch)")
    n_batch = hi - lo
    params = _opt_params(args)
    tg = build_training_graphs(model, kv_self, n_batch, args.loss)
    ctx0, gf, gb, e, logits = tg.ctx0, tg.gf, tg.gb, tg.error, tg.logits
    tokens_input, targets, tokens = tg.tokens_input, tg.targets, tg.tokens
    after_opt_best_samples = gc.new_tensor_2d(ctx0, gc.TYPE_I32, n_tokens, n_batch)
    after_opt_probs = gc.new_tensor_3d(ctx0, gc.TYPE_F32, n_vocab, n_tokens, n_batch)
    if args.dump_graphs and (world is None or world.rank == 0):
        dump_graphs(args.dump_graphs, "forward", gf)
        dump_graphs(args.dump_graphs, "backward", gb, gf)
    gc.graph_compile(gb, args.threads)    # compiles gb's kernels, gf's among them: a cold start does all at once
    compute_gf = gc.graph_compile(gf, args.threads)
    reducer, loss_sum = (None, None) if world is None else (world.reducer(1.0), world.reducer(1.0))

    def loss():     # the batch's loss (the sum of the ranks' shares)
        compute_gf()
        return gc.get_f32_1d(e, 0) if loss_sum is None else loss_sum(gc.get_f32_1d(e, 0), np.empty(0, np.float32))

    n_evals = 0
    t_start = time.perf_counter()
    progress = Progress(args.examples, "batches ") if args.progress and (world is None or world.rank == 0) else None
    for ex in range(args.examples):
        get_example_targets_batch(ctx0, 64 * ex + 0, tokens_input, targets, lo, args.n_batch)
        tokens.numpy()[:] = tokens_input.numpy().reshape(-1)

        # the optimizer's first evaluation is the forward graph's compute at these weights (gb holds gf's
        # nodes), and when it stops with OK or DID_NOT_CONVERGE its last one was at the weights it leaves
        # (logits included): their losses are the original's error_before/after_opt, bit for bit, without
        # two more computes of gf per batch. Data-parallel, gf's loss is summed over the ranks apart.
        error_before_opt = loss() if world is not None else None

        opt = gc.opt_init(ctx0, gc.OptContext(), params, 0)
        result = gc.opt_resume_g(ctx0, opt, e, gf, gb, reduce=reducer)
        n_evals += opt.n_evals

        if world is None:
            error_before_opt = float(opt.loss_before)
        if world is None and result in (gc.OPT_OK, gc.OPT_DID_NOT_CONVERGE):
            error_after_opt = float(opt.loss_after)
        else:
            error_after_opt = loss()
        if history is not None:
            history.append((error_before_opt, error_after_opt))

        if ex % 8 == 0:
            out.write(f"Example {ex + 1}\n")
            out.write("error_before_opt: %.2f\n" % error_before_opt)
            out.write("error_after_opt:  %.2f\n" % error_after_opt)
        if ex % 64 == 0:
            sample_softmax_batch(ctx0, logits, after_opt_probs, after_opt_best_samples)
            out.write("best samples after optimization:\n")
            print_tokens(after_opt_best_samples, n_vocab, file=out)
        if progress is not None:
            rate = n_evals / max(time.perf_counter() - t_start, 1e-9)
            progress.update(ex + 1, f"error {error_after_opt:9.2f}  {rate:7.0f} evals/s  {_result_name(result)}")
        out.flush()
    return dict(n_evals=n_evals, seconds=time.perf_counter() - t_start, ctx0_used=gc.used_mem(ctx0))
