"""train-text-from-scratch's model: my_llama_hparams, my_llama_model (init_model, randomize_model) and
the training graphs (llama_build_train_graphs), as examples/train-text-from-scratch at llama.cpp 4480542."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import graphcore as gc
from graphcore_models.baby_llama.model import LAYER_TENSORS, LlamaHparams, LlamaLayer, LlamaModel
from graphcore_models.baby_llama.rng import RandomNormalDistribution, randomize_tensor_normal

LLAMA_TRAIN_MAX_NODES = 16384   # common/train.h

# the GGUF names (LLM_TENSOR_*, each with ".weight") of a layer's tensors, in baby-llama's LAYER_TENSORS
# order (attention_norm wq wk wv wo ffn_norm w1 w2 w3): w1 is ffn_gate, w2 ffn_down, w3 ffn_up
LAYER_GGUF_NAMES = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down",
                    "ffn_up")


@dataclass
class TrainHparams(LlamaHparams):
    """my_llama_hparams: baby-llama's llama_hparams (n_vocab n_ctx n_embd n_head n_layer n_rot with the
    same defaults; n_mult unused) plus the feed-forward width and the norm and rope settings. main()
    takes n_vocab from the vocabulary and the rest from the options, with n_rot = n_embd / n_head."""
    n_ff: int = 11008
    f_norm_rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    rope_freq_scale: float = 1.0

    def check(self):
        """The shapes the graph needs, as a one-line ValueError (the C program asserts instead)."""
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "n_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train-text: {name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"train-text: n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_rot % 2:
            raise ValueError(f"train-text: n_embd / n_head ({self.n_rot}) must be even for rope")


class TrainModel(LlamaModel):
    """my_llama_model: baby-llama's model (the same tensors, w1/w2/w3 being ffn_gate/ffn_down/ffn_up)
    with TrainHparams; its tensors live in `ctx`, allocated in one buffer, every one a parameter.
    `tensors()` gives them in the C program's order (randomize_model, the optimizer, the files)."""

    def named_tensors(self):
        """(GGUF name, tensor) pairs in file order."""
        out = [("token_embd.weight", self.tok_embeddings), ("output_norm.weight", self.norm),
               ("output.weight", self.output)]
        for i, layer in enumerate(self.layers):
            out += [(f"blk.{i}.{n}.weight", getattr(layer, a)) for a, n in zip(LAYER_TENSORS, LAYER_GGUF_NAMES)]
        return out

    def parameter_count(self) -> int:
        return sum(gc.nelements(t) for t in self.tensors())

    def nbytes(self) -> int:
        return sum(gc.nbytes(t) for t in self.tensors())


def init_model(hp: TrainHparams) -> TrainModel:
    """init_model: the tensors (F32, named as in the GGUF), marked as parameters and allocated."""
    hp.check()
    ctx = gc.init(mem_size=1 << 20, no_alloc=True)
    e, v, f = hp.n_embd, hp.n_vocab, hp.n_ff
    m = TrainModel(ctx=ctx, hparams=hp)
    m.tok_embeddings = gc.new_tensor_2d(ctx, gc.TYPE_F32, e, v)
    m.norm = gc.new_tensor_1d(ctx, gc.TYPE_F32, e)
    m.output = gc.new_tensor_2d(ctx, gc.TYPE_F32, e, v)
    for _ in range(hp.n_layer):
        m.layers.append(LlamaLayer(
            gc.new_tensor_1d(ctx, gc.TYPE_F32, e),
            *(gc.new_tensor_2d(ctx, gc.TYPE_F32, e, e) for _ in range(4)),
            gc.new_tensor_1d(ctx, gc.TYPE_F32, e),
            gc.new_tensor_2d(ctx, gc.TYPE_F32, e, f), gc.new_tensor_2d(ctx, gc.TYPE_F32, f, e),   # w1 w2
            gc.new_tensor_2d(ctx, gc.TYPE_F32, e, f)))                                             # w3
    for name, t in m.named_tensors():
        gc.set_name(t, name)
        gc.set_param(ctx, t)
    gc.alloc_ctx_tensors(ctx)
    return m


def randomize_model(model: TrainModel, seed: int, mean=0.0, std=1.0, min=-1.0, max=1.0, fma: bool = True) -> None:
    """randomize_model: one random_normal_distribution(seed) over every tensor in order (Xavier-scaled).
    fma: the polar method's x*x + y*y as one fused multiply-add, as llama.cpp's default build
    (g++ -O3 -march=native, which contracts it on a CPU with FMA) computes it; fma=False gives a
    build without contraction. Either way the weights equal that build's bit for bit."""
    rnd = RandomNormalDistribution(seed, mean, std, min, max, fma=fma)
    for t in model.tensors():
        randomize_tensor_normal(t, rnd)


@dataclass
class TrainGraphs:
    ctx: object
    gf: object
    gb: object
    loss: object            # t36: the cross-entropy loss over the batch
    logits: object          # t35: [n_vocab, n_ctx, n_batch]
    tokens_input: object    # I32 [n_ctx, n_batch]
    target_probs: object    # F32 [n_vocab, n_ctx, n_batch]
    kq_pos: object          # I32 [n_ctx]: the positions 0..n_ctx-1
    galloc: object
    compute_size: int       # bytes of the allocator's buffer


def _attention(ctx, t13, t14, t15, n_embd, n_head, use_flash):
    if use_flash:
        return gc.flash_attn(ctx, t13, t14, t15, True)
    kv_scale = 1.0 / math.sqrt(float(n_embd) / n_head)
    t16_0 = gc.mul_mat(ctx, t14, t13)
    t16_1 = gc.scale_inplace(ctx, t16_0, kv_scale)
    t16_2 = gc.diag_mask_inf_inplace(ctx, t16_1, 0)
    t16_3 = gc.soft_max_inplace(ctx, t16_2)
    return gc.mul_mat(ctx, t15, t16_3)


def _forward(model: TrainModel, ctx, tokens_input, targets, kq_pos, n_batch, use_flash):
    """The forward of llama_build_train_graphs, t00..t36 named as the C program names them; returns
    (loss, logits, checkpoints)."""
    hp = model.hparams
    N, n_embd, n_head, eps = hp.n_ctx, hp.n_embd, hp.n_head, hp.f_norm_rms_eps
    hd = n_embd // n_head

    def rope(t):
        return gc.rope_custom(ctx, t, kq_pos, hp.n_rot, 0, N, 0, hp.rope_freq_base, hp.rope_freq_scale,
                              0.0, 1.0, 0.0, 0.0)

    def name(t, n):
        return gc.set_name(t, n)

    t00 = name(gc.reshape_1d(ctx, tokens_input, N * n_batch), "t00")
    t01 = name(gc.get_rows(ctx, model.tok_embeddings, t00), "t01")
    cur = t01
    checkpoints = [tokens_input, targets, t00, t01]
    for il, layer in enumerate(model.layers):
        p = f"layers.{il}."
        t02 = gc.rms_norm(ctx, cur, eps)
        t04 = gc.mul(ctx, gc.repeat(ctx, layer.attention_norm, t02), t02)
        t07 = rope(gc.reshape_4d(ctx, gc.mul_mat(ctx, layer.wq, t04), hd, n_head, N, n_batch))
        t10 = rope(gc.reshape_4d(ctx, gc.mul_mat(ctx, layer.wk, t04), hd, n_head, N, n_batch))
        t12 = gc.reshape_4d(ctx, gc.mul_mat(ctx, t04, layer.wv), N, n_batch, hd, n_head)
        t13 = gc.permute(ctx, t07, 0, 2, 1, 3)
        t14 = gc.permute(ctx, t10, 0, 2, 1, 3)
        t15 = gc.permute(ctx, t12, 0, 3, 1, 2)
        t16 = name(_attention(ctx, t13, t14, t15, n_embd, n_head, use_flash), p + "t16")
        t18 = gc.cont(ctx, gc.permute(ctx, t16, 0, 2, 1, 3))
        t19 = gc.reshape_2d(ctx, t18, n_embd, N * n_batch)
        t21 = name(gc.add(ctx, gc.mul_mat(ctx, layer.wo, t19), cur), p + "t21")
        t22 = gc.rms_norm(ctx, t21, eps)
        t24 = gc.mul(ctx, gc.repeat(ctx, layer.ffn_norm, t22), t22)
        t25 = gc.mul_mat(ctx, layer.w3, t24)
        t27 = gc.silu(ctx, gc.mul_mat(ctx, layer.w1, t24))
        t29 = gc.mul_mat(ctx, layer.w2, gc.mul(ctx, t27, t25))
        cur = name(gc.add(ctx, t29, t21), p + "t30")
        checkpoints.append(cur)
    t31 = name(gc.rms_norm(ctx, cur, eps), "t31")
    t32 = name(gc.repeat(ctx, model.norm, t31), "t32")
    t33 = name(gc.mul(ctx, t32, t31), "t33")
    t34 = name(gc.mul_mat(ctx, model.output, t33), "t34")
    t35 = name(gc.reshape_3d(ctx, t34, hp.n_vocab, N, n_batch), "t35")
    t36 = name(gc.cross_entropy_loss(ctx, t35, targets), "t36")
    checkpoints += [t31, t32, t33, t34, t35, t36]
    return t36, t35, checkpoints


def build_train_graphs(model: TrainModel, n_batch: int, use_flash: bool = True,
                       use_checkpointing: bool = True) -> TrainGraphs:
    """llama_build_train_graphs followed by the allocation main() does: the forward graph gf, the
    backward gb (plain, or recomputing the forward from the checkpoints), every tensor placed by the
    graph allocator. The inputs, the loss, the logits, the loss's gradient seed and the parameters'
    gradients are kept out of reuse (the C program protects them with extra scale_inplace nodes)."""
    hp = model.hparams
    if n_batch <= 0:
        raise ValueError(f"train-text: n_batch must be positive, got {n_batch}")
    N = hp.n_ctx
    ctx = gc.init(mem_size=256 << 20, no_alloc=True)
    tokens_input = gc.set_name(gc.new_tensor_2d(ctx, gc.TYPE_I32, N, n_batch), "tokens_input")
    target_probs = gc.set_name(gc.new_tensor_3d(ctx, gc.TYPE_F32, hp.n_vocab, N, n_batch), "targets")
    kq_pos = gc.set_name(gc.new_tensor_1d(ctx, gc.TYPE_I32, N), "KQ_pos")
    for t in (tokens_input, target_probs, kq_pos):
        gc.set_input(t)
    gc.alloc_ctx_tensors(ctx)       # the C program's input buffer (input_size), KQ_pos with them
    kq_pos.numpy()[:] = np.arange(N, dtype=np.int32)

    gf = gc.new_graph_custom(ctx, LLAMA_TRAIN_MAX_NODES, True)
    loss, logits, checkpoints = _forward(model, ctx, tokens_input, target_probs, kq_pos, n_batch, use_flash)
    gc.build_forward_expand(gf, loss)
    gb = gc.new_graph_custom(ctx, LLAMA_TRAIN_MAX_NODES, True)
    if use_checkpointing:
        gb_tmp = gc.new_graph_custom(ctx, LLAMA_TRAIN_MAX_NODES, True)
        gc.build_backward_gradient_checkpointing(ctx, gf, gb, gb_tmp, checkpoints)
    else:
        gc.graph_cpy(gf, gb)
        gc.build_backward_expand(ctx, gf, gb, True)
    for t in [loss, logits] + [p.grad for p in model.tensors()]:
        gc.set_output(t)
    gc.set_input(loss.grad)
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, gb)
    return TrainGraphs(ctx, gf, gb, loss, logits, tokens_input, target_probs, kq_pos, galloc,
                       gc.gallocr_get_buffer_size(galloc))
