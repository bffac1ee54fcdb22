"""Greedy generation from example 137's prompt, as the original does it."""
from __future__ import annotations

import sys


import graphcore as gc

from .data import get_example_targets, lshift_examples, print_token, sample_softmax
from .model import LLAMA_TRAIN_MAX_NODES, LlamaModelLora, forward, forward_lora
from .train import compute_size, dump_graphs


def generate(model, kv_self, args, out=sys.stdout):
    """Greedy generation from example 137's prompt: sample_ctx = n_tokens - n_tokens/8 tokens go
    in, the last one's argmax comes out, and the window shifts left by one. The original builds a
    new forward graph per token; the graph is the same each time, so it is built once here and
    only its "tokens" leaf is rewritten."""
    hp = model.hparams
    lora = isinstance(model, LlamaModelLora)
    n_tokens, n_vocab = hp.n_ctx, hp.n_vocab
    sample_ctx = n_tokens - n_tokens // 8
    out.write(f"Generating {args.n_gen} tokens.\n")

    tokens_input = gc.new_tensor_1d(model.ctx, gc.TYPE_I32, n_tokens)
    targets = gc.new_tensor_2d(model.ctx, gc.TYPE_F32, n_vocab, n_tokens)
    get_example_targets(137, tokens_input, targets)
    tok = tokens_input.numpy()
    tok[sample_ctx:] = n_vocab // 2
    for i in range(sample_ctx - 1):
        print_token(int(tok[i]), n_vocab, file=out)
    out.write("---\n")

    ctx0 = gc.init(compute_size(hp, 1, kv_self, nodes_per_layer=60), no_alloc=True)
    gf = gc.new_graph_custom(ctx0, LLAMA_TRAIN_MAX_NODES, True)
    fwd = forward_lora if lora else forward
    logits = fwd(model, kv_self, ctx0, gf, tokens_input, sample_ctx, 0)
    gc.build_forward_expand(gf, logits)
    gc.set_output(logits)
    galloc = gc.gallocr_new()           # the graph's tensors in one reused buffer (ggml-alloc)
    gc.gallocr_alloc_graph(galloc, gf)
    gc.set_no_alloc(ctx0, False)
    tokens = gc.graph_get_tensor(gf, "tokens")
    if args.dump_graphs:
        dump_graphs(args.dump_graphs, "generation", gf)
    compute = gc.graph_compile(gf, args.threads)
    best_samples = gc.new_tensor_1d(ctx0, gc.TYPE_I32, sample_ctx)
    probs = gc.new_tensor_2d(ctx0, gc.TYPE_F32, n_vocab, sample_ctx)
    generated = []
    for _ in range(args.n_gen):
        tokens.numpy()[:] = tok[:sample_ctx]
        compute()
        sample_softmax(logits, probs, best_samples)
        token = int(best_samples.numpy()[sample_ctx - 1])
        print_token(token, n_vocab, file=out)
        generated.append(token)
        lshift_examples(tokens_input, targets, 1)
        tok[0] = 0
        tok[sample_ctx - 1] = token
    out.flush()
    return generated
