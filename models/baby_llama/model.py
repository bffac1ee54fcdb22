"""baby-llama's model: hyper-parameters, weights (plain and LoRA), KV cache and the forward graphs
(forward for generation, forward_batch for training, and their LoRA twins)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

import graphcore as gc


# llama.cpp's LLAMA_DEFAULT_RMS_EPS is not defined for this example, so 5e-6 (baby-llama.cpp)
RMS_NORM_EPS = 5e-6
LLAMA_TRAIN_MAX_NODES = 16384   # common/train.h

_F32 = np.float32


# =============================================================================================
# hyper-parameters
# =============================================================================================
@dataclass
class LlamaHparams:
    """llama_hparams (the C++ defaults; main() sets the baby sizes)."""
    n_vocab: int = 32000
    n_ctx: int = 512
    n_embd: int = 4096
    n_mult: int = 4
    n_head: int = 32
    n_layer: int = 32
    n_rot: int = 64


@dataclass
class LlamaHparamsLora(LlamaHparams):
    """llama_hparams_lora: the same plus the rank of the A·B factors."""
    n_lora: int = 64


def get_n_ff(hparams: LlamaHparams) -> int:
    """Feed-forward width: ((2*(4*n_embd)/3 + n_mult - 1)/n_mult)*n_mult in unsigned integer arithmetic."""
    n_embd, n_mult = hparams.n_embd, hparams.n_mult
    return ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult


def baby_hparams(n_vocab=8, n_ctx=8, n_embd=32, n_mult=2, n_head=8, n_layer=1, n_lora=None):
    """The sizes main() uses; n_rot = min(16, n_embd/n_head). With n_lora, LoRA hyper-parameters."""
    kw = dict(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_mult=n_mult, n_head=n_head, n_layer=n_layer,
              n_rot=min(16, n_embd // n_head))
    if n_lora is None:
        return LlamaHparams(**kw)
    return LlamaHparamsLora(n_lora=n_lora, **kw)


# =============================================================================================
# model and KV cache
# =============================================================================================
@dataclass
class LlamaLayer:
    attention_norm: gc.Tensor = None
    wq: gc.Tensor = None
    wk: gc.Tensor = None
    wv: gc.Tensor = None
    wo: gc.Tensor = None
    ffn_norm: gc.Tensor = None
    w1: gc.Tensor = None
    w2: gc.Tensor = None
    w3: gc.Tensor = None


@dataclass
class LlamaLayerLora:
    attention_norm: gc.Tensor = None
    wqa: gc.Tensor = None
    wqb: gc.Tensor = None
    wka: gc.Tensor = None
    wkb: gc.Tensor = None
    wva: gc.Tensor = None
    wvb: gc.Tensor = None
    woa: gc.Tensor = None
    wob: gc.Tensor = None
    ffn_norm: gc.Tensor = None
    w1: gc.Tensor = None
    w2: gc.Tensor = None
    w3: gc.Tensor = None


# the order in which set_param_model / randomize_model walk a layer (the random stream depends on it)
LAYER_TENSORS = ("attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")
LAYER_TENSORS_LORA = ("attention_norm", "wqa", "wqb", "wka", "wkb", "wva", "wvb", "woa", "wob",
                      "ffn_norm", "w1", "w2", "w3")


@dataclass
class LlamaModel:
    ctx: Optional[gc.Context] = None
    hparams: LlamaHparams = field(default_factory=LlamaHparams)
    tok_embeddings: gc.Tensor = None
    norm: gc.Tensor = None
    output: gc.Tensor = None
    layers: List[LlamaLayer] = field(default_factory=list)

    def tensors(self):
        """The 3 + 9*n_layer weights in set_param/randomize order."""
        out = [self.tok_embeddings, self.norm, self.output]
        for layer in self.layers:
            out += [getattr(layer, n) for n in LAYER_TENSORS]
        return out


@dataclass
class LlamaModelLora:
    ctx: Optional[gc.Context] = None
    hparams: LlamaHparamsLora = field(default_factory=LlamaHparamsLora)
    tok_embeddings: gc.Tensor = None
    norm: gc.Tensor = None
    outputa: gc.Tensor = None
    outputb: gc.Tensor = None
    layers: List[LlamaLayerLora] = field(default_factory=list)

    def tensors(self):
        out = [self.tok_embeddings, self.norm, self.outputa, self.outputb]
        for layer in self.layers:
            out += [getattr(layer, n) for n in LAYER_TENSORS_LORA]
        return out


@dataclass
class LlamaKVCache:
    """Two flat F32 tensors of n_embd*n_layer*n_ctx*n_batch elements. The forward graphs write
    them with set ops that stay in the graph (results are new tensors), so the cache tensors
    themselves are only read."""
    ctx: Optional[gc.Context] = None
    k: gc.Tensor = None
    v: gc.Tensor = None
    n: int = 0


def _w(ctx, name, *ne):
    t = gc.new_tensor(ctx, gc.TYPE_F32, list(ne))
    return gc.set_name(t, name)


def init_model(model: LlamaModel) -> None:
    """Create the weights in model.ctx (ggml ne order: [in, out] for matrices)."""
    hp = model.hparams
    n_embd, n_vocab, n_ff = hp.n_embd, hp.n_vocab, get_n_ff(hp)
    ctx = model.ctx
    model.tok_embeddings = _w(ctx, "tok_embeddings.weight", n_embd, n_vocab)
    model.norm = _w(ctx, "norm.weight", n_embd)
    model.output = _w(ctx, "output.weight", n_embd, n_vocab)
    model.layers = []
    for i in range(hp.n_layer):
        p = f"layers.{i}."
        model.layers.append(LlamaLayer(
            attention_norm=_w(ctx, p + "attention_norm.weight", n_embd),
            wq=_w(ctx, p + "attention.wq.weight", n_embd, n_embd),
            wk=_w(ctx, p + "attention.wk.weight", n_embd, n_embd),
            wv=_w(ctx, p + "attention.wv.weight", n_embd, n_embd),
            wo=_w(ctx, p + "attention.wo.weight", n_embd, n_embd),
            ffn_norm=_w(ctx, p + "ffn_norm.weight", n_embd),
            w1=_w(ctx, p + "feed_forward.w1.weight", n_embd, n_ff),
            w2=_w(ctx, p + "feed_forward.w2.weight", n_ff, n_embd),
            w3=_w(ctx, p + "feed_forward.w3.weight", n_embd, n_ff)))


def init_model_lora(model: LlamaModelLora) -> None:
    """Like init_model with wq wk wv wo and output factored as A [n_lora, out] · B [in, n_lora]."""
    hp = model.hparams
    n_embd, n_vocab, n_lora, n_ff = hp.n_embd, hp.n_vocab, hp.n_lora, get_n_ff(hp)
    ctx = model.ctx
    model.tok_embeddings = _w(ctx, "tok_embeddings.weight", n_embd, n_vocab)
    model.norm = _w(ctx, "norm.weight", n_embd)
    model.outputa = _w(ctx, "output.weight.a", n_lora, n_vocab)
    model.outputb = _w(ctx, "output.weight.b", n_embd, n_lora)
    model.layers = []
    for i in range(hp.n_layer):
        p = f"layers.{i}."
        kw = {"attention_norm": _w(ctx, p + "attention_norm.weight", n_embd)}
        for x in "qkvo":
            kw[f"w{x}a"] = _w(ctx, p + f"attention.w{x}.weight.a", n_lora, n_embd)
            kw[f"w{x}b"] = _w(ctx, p + f"attention.w{x}.weight.b", n_embd, n_lora)
        kw.update(ffn_norm=_w(ctx, p + "ffn_norm.weight", n_embd),
                  w1=_w(ctx, p + "feed_forward.w1.weight", n_embd, n_ff),
                  w2=_w(ctx, p + "feed_forward.w2.weight", n_ff, n_embd),
                  w3=_w(ctx, p + "feed_forward.w3.weight", n_embd, n_ff))
        model.layers.append(LlamaLayerLora(**kw))


def set_param_model(model: LlamaModel) -> None:
    for t in model.tensors():
        gc.set_param(model.ctx, t)


def set_param_model_lora(model: LlamaModelLora) -> None:
    for t in model.tensors():
        gc.set_param(model.ctx, t)


def _kv_cache(cache: LlamaKVCache, hp, n_batch: int) -> LlamaKVCache:
    n_elements = hp.n_embd * hp.n_layer * hp.n_ctx * n_batch
    if cache.ctx is None:
        cache.ctx = gc.init(2 * n_elements * 4 + 2 * 1024 * 1024)
    cache.k = gc.set_name(gc.new_tensor_1d(cache.ctx, gc.TYPE_F32, n_elements), "cache_k")
    cache.v = gc.set_name(gc.new_tensor_1d(cache.ctx, gc.TYPE_F32, n_elements), "cache_v")
    return cache


def init_kv_cache(cache: LlamaKVCache, model: LlamaModel, n_batch: int) -> LlamaKVCache:
    """k and v of n_embd*n_layer*n_ctx*n_batch floats, in cache.ctx (a new context if it is None;
    main() puts them in the model's, as the original)."""
    return _kv_cache(cache, model.hparams, n_batch)


def init_kv_cache_lora(cache: LlamaKVCache, model: LlamaModelLora, n_batch: int) -> bool:
    _kv_cache(cache, model.hparams, n_batch)
    return True



# =============================================================================================
# forward graphs
# =============================================================================================
def _proj(ctx, layer, name, x):
    """mul_mat(w, x) for a plain layer, mul_mat(wa, mul_mat(wb, x)) for a LoRA one."""
    w = getattr(layer, name, None)
    if w is not None:
        return gc.mul_mat(ctx, w, x)
    return gc.mul_mat(ctx, getattr(layer, name + "a"), gc.mul_mat(ctx, getattr(layer, name + "b"), x))


def _lm_head(ctx, model, x):
    if isinstance(model, LlamaModelLora):
        return gc.mul_mat(ctx, model.outputa, gc.mul_mat(ctx, model.outputb, x))
    return gc.mul_mat(ctx, model.output, x)


def _input_tensors(ctx0, tokens_input, n, n_tokens, n_past):
    """The graph's own copy of the first n tokens ("tokens") and the rope positions ("KQ_pos")."""
    tokens = gc.set_name(gc.new_tensor_1d(ctx0, gc.TYPE_I32, n), "tokens")
    kq_pos = gc.set_name(gc.new_tensor_1d(ctx0, gc.TYPE_I32, n_tokens), "KQ_pos")
    if not kq_pos.has_data:     # a no_alloc ctx0 (the training graphs): the inputs get bytes of their own
        gc.alloc_ctx_tensors(ctx0)
    tokens.numpy()[:] = np.asarray(tokens_input.numpy()).reshape(-1)[:n]
    kq_pos.numpy()[:] = n_past + np.arange(n_tokens, dtype=np.int32)
    return tokens, kq_pos


def _name(t, il, name):
    """Name an intermediate tensor "layers.<il>.<name>" (for graph_print and the dot dumps)."""
    return gc.set_name(t, f"layers.{il}.{name}")


def _rms_mul(ctx, x, weight):
    cur = gc.rms_norm(ctx, x, RMS_NORM_EPS)
    return gc.mul(ctx, gc.repeat(ctx, weight, cur), cur)


def _feed_forward(ctx, layer, inp_ff):
    cur = _rms_mul(ctx, inp_ff, layer.ffn_norm)
    tmp = gc.mul_mat(ctx, layer.w3, cur)
    cur = gc.mul_mat(ctx, layer.w1, cur)
    cur = gc.silu(ctx, cur)
    cur = gc.mul(ctx, cur, tmp)
    cur = gc.mul_mat(ctx, layer.w2, cur)
    return gc.add(ctx, cur, inp_ff)


def _forward_single(model, cache, ctx0, gf, tokens_input, n_tokens, n_past):
    N = n_tokens
    hp = model.hparams
    n_ctx, n_embd, n_head, n_rot = hp.n_ctx, hp.n_embd, hp.n_head, hp.n_rot
    hd = n_embd // n_head
    tokens, kq_pos = _input_tensors(ctx0, tokens_input, N, N, n_past)
    kc, vc = cache.k, cache.v
    esk, esv = gc.element_size(kc), gc.element_size(vc)

    inpL = gc.set_name(gc.get_rows(ctx0, model.tok_embeddings, tokens), "inp_embd")   # [n_embd, N]
    for il, layer in enumerate(model.layers):
        inpSA = inpL
        cur = _rms_mul(ctx0, inpL, layer.attention_norm)
        Qcur = gc.rope(ctx0, gc.reshape_3d(ctx0, _proj(ctx0, layer, "wq", cur), hd, n_head, N), kq_pos, n_rot, 0, 0)
        Kcur = gc.rope(ctx0, gc.reshape_3d(ctx0, _proj(ctx0, layer, "wk", cur), hd, n_head, N), kq_pos, n_rot, 0, 0)
        # the transposed [N, n_embd] V
        Vcur = gc.cont(ctx0, gc.transpose(ctx0, gc.reshape_2d(ctx0, _proj(ctx0, layer, "wv", cur), n_embd, N)))
        # write K and V into (copies of) the cache: set ops keep the path to wk and wv in the graph
        kc = gc.set_1d(ctx0, kc, gc.reshape_1d(ctx0, Kcur, n_embd * N), (esk * n_embd) * (il * n_ctx + n_past))
        vc = gc.set_2d(ctx0, vc, Vcur, n_ctx * esv, (il * n_ctx) * esv * n_embd + n_past * esv)

        Q = gc.permute(ctx0, Qcur, 0, 2, 1, 3)                               # [hd, N, n_head]
        K = gc.permute(ctx0, gc.reshape_3d(ctx0, gc.view_1d(ctx0, kc, (n_past + N) * n_embd,
                                                            il * n_ctx * esk * n_embd),
                                           hd, n_head, n_past + N), 0, 2, 1, 3)
        KQ = gc.mul_mat(ctx0, K, Q)                                          # [n_past+N, N, n_head]
        KQ_scaled = gc.scale(ctx0, KQ, float(_F32(1.0) / np.sqrt(_F32(n_embd) / _F32(n_head))))
        KQ_masked = gc.diag_mask_inf(ctx0, KQ_scaled, n_past)
        KQ_soft_max = _name(gc.soft_max(ctx0, KQ_masked), il, "KQ_soft_max")
        V = gc.view_3d(ctx0, vc, n_past + N, hd, n_head, n_ctx * esv, n_ctx * esv * hd, il * n_ctx * esv * n_embd)
        KQV = gc.mul_mat(ctx0, V, KQ_soft_max)                               # [hd, N, n_head]
        KQV_merged = gc.permute(ctx0, KQV, 0, 2, 1, 3)
        cur = gc.reshape_2d(ctx0, gc.cont(ctx0, KQV_merged), n_embd, N)
        cur = _proj(ctx0, layer, "wo", cur)
        inpFF = _name(gc.add(ctx0, cur, inpSA), il, "inpFF")
        inpL = _name(_feed_forward(ctx0, layer, inpFF), il, "out")

    inpL = _rms_mul(ctx0, inpL, model.norm)
    inpL = gc.set_name(_lm_head(ctx0, model, inpL), "logits")                # [n_vocab, N]
    gc.build_forward_expand(gf, inpL)
    return inpL


def _forward_batch(model, cache, ctx0, gf, tokens_input, n_tokens, n_past, n_batch):
    N = n_tokens
    hp = model.hparams
    n_ctx, n_vocab, n_embd, n_head, n_rot = hp.n_ctx, hp.n_vocab, hp.n_embd, hp.n_head, hp.n_rot
    hd = n_embd // n_head
    tokens, kq_pos = _input_tensors(ctx0, tokens_input, N * n_batch, N, n_past)
    kc, vc = cache.k, cache.v
    esk, esv = gc.element_size(kc), gc.element_size(vc)

    inpL = gc.set_name(gc.get_rows(ctx0, model.tok_embeddings, tokens), "inp_embd")   # [n_embd, N*n_batch]
    for il, layer in enumerate(model.layers):
        inpSA = inpL
        cur = _rms_mul(ctx0, inpL, layer.attention_norm)
        Qcur = gc.rope(ctx0, gc.reshape_4d(ctx0, _proj(ctx0, layer, "wq", cur), hd, n_head, N, n_batch),
                       kq_pos, n_rot, 0, 0)
        Kcur = gc.rope(ctx0, gc.reshape_4d(ctx0, _proj(ctx0, layer, "wk", cur), hd, n_head, N, n_batch),
                       kq_pos, n_rot, 0, 0)
        # Vcur [N, n_embd, n_batch]
        Vcur = gc.cont(ctx0, gc.permute(ctx0, gc.reshape_3d(ctx0, _proj(ctx0, layer, "wv", cur), n_embd, N, n_batch),
                                        1, 0, 2, 3))
        kc = gc.set_2d(ctx0, kc, gc.reshape_2d(ctx0, Kcur, n_embd * N, n_batch),
                       esk * n_embd * n_ctx, (esk * n_embd) * (il * n_batch * n_ctx + n_past))
        vc = gc.set_2d(ctx0, vc, gc.reshape_2d(ctx0, Vcur, N * n_embd, n_batch),
                       esv * n_ctx * n_embd, esv * (n_past + il * n_embd * n_batch * n_ctx))

        Q = gc.permute(ctx0, Qcur, 0, 2, 1, 3)                               # [hd, N, n_head, n_batch]
        K = gc.permute(ctx0, gc.reshape_4d(ctx0, gc.view_3d(ctx0, kc, n_embd, n_past + N, n_batch,
                                                            n_embd * esk, n_ctx * n_embd * esk,
                                                            il * n_batch * n_ctx * n_embd * esk),
                                           hd, n_head, n_past + N, n_batch), 0, 2, 1, 3)
        KQ = gc.mul_mat(ctx0, K, Q)                                          # [n_past+N, N, n_head, n_batch]
        KQ_scaled = gc.scale(ctx0, KQ, float(_F32(1.0) / np.sqrt(_F32(n_embd) / _F32(n_head))))
        KQ_masked = gc.diag_mask_inf(ctx0, KQ_scaled, n_past)
        KQ_soft_max = _name(gc.soft_max(ctx0, KQ_masked), il, "KQ_soft_max")
        V = gc.view_4d(ctx0, vc, n_past + N, hd, n_head, n_batch,
                       esv * n_ctx, esv * n_ctx * hd, esv * n_ctx * n_embd, il * n_batch * n_ctx * n_embd * esv)
        KQV = gc.mul_mat(ctx0, V, KQ_soft_max)                               # [hd, N, n_head, n_batch]
        KQV_merged = gc.permute(ctx0, KQV, 0, 2, 1, 3)
        cur = gc.reshape_2d(ctx0, gc.cont(ctx0, KQV_merged), n_embd, N * n_batch)
        cur = _proj(ctx0, layer, "wo", cur)
        inpFF = _name(gc.add(ctx0, cur, inpSA), il, "inpFF")
        inpL = _name(_feed_forward(ctx0, layer, inpFF), il, "out")

    inpL = _rms_mul(ctx0, inpL, model.norm)
    inpL = _lm_head(ctx0, model, inpL)                                       # [n_vocab, N*n_batch]
    inpL = gc.set_name(gc.reshape_3d(ctx0, inpL, n_vocab, N, n_batch), "logits")
    gc.build_forward_expand(gf, inpL)
    return inpL


def forward(model: LlamaModel, cache: LlamaKVCache, ctx0, gf, tokens_input, n_tokens: int, n_past: int):
    """Logits [n_vocab, n_tokens] of one sequence (generation). The first n_tokens of tokens_input
    are copied into the graph's own I32 leaf named "tokens"; the graph's rope positions are the
    leaf "KQ_pos". Adds the logits to gf and returns them."""
    return _forward_single(model, cache, ctx0, gf, tokens_input, n_tokens, n_past)


def forward_batch(model: LlamaModel, cache: LlamaKVCache, ctx0, gf, tokens_input, n_tokens: int, n_past: int,
                  n_batch: int):
    """Logits [n_vocab, n_tokens, n_batch] of n_batch sequences (training); tokens_input is
    [n_tokens, n_batch] I32, copied into the leaf "tokens"."""
    return _forward_batch(model, cache, ctx0, gf, tokens_input, n_tokens, n_past, n_batch)


def forward_lora(model: LlamaModelLora, cache: LlamaKVCache, ctx0, gf, tokens_input, n_tokens: int, n_past: int):
    """forward with LoRA factors: every wX·x is wXa·(wXb·x), output·x is outputa·(outputb·x)."""
    return _forward_single(model, cache, ctx0, gf, tokens_input, n_tokens, n_past)


def forward_batch_lora(model: LlamaModelLora, cache: LlamaKVCache, ctx0, gf, tokens_input, n_tokens: int,
                       n_past: int, n_batch: int):
    """forward_batch with LoRA factors (the original has no batched LoRA forward)."""
    return _forward_batch(model, cache, ctx0, gf, tokens_input, n_tokens, n_past, n_batch)
