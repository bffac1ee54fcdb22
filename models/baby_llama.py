"""baby-llama: llama.cpp's examples/baby-llama (commit 4480542) re-expressed over graphcore.

A one-layer llama (n_vocab 8, n_ctx 8, n_embd 32, n_head 8) learns to continue a sine wave of
tokens: 256 batches of 8 sequences, each optimised by 16 L-BFGS iterations on a squared-error
loss, then 128 tokens are generated greedily. With no options the program prints what the
original prints, in its format:

    python -m models.baby_llama            # or the console script: baby-llama

Everything the original has is here under its own name: the hyper-parameters (plain and LoRA),
get_n_ff, init_model / set_param_model / randomize_model (and their _lora twins) with the
original's random stream (std::mt19937 + libstdc++'s normal_distribution<float>), the KV cache,
get_example_targets(_batch), lshift_examples, square_error_loss, cross_entropy_loss,
sample_softmax(_batch), the printing helpers, forward (generation), forward_batch (training),
forward_lora, plus forward_batch_lora (a batched LoRA forward the original does not have).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

import graphcore as gc
from graphcore.cli_support import (CliError, Progress, add_common_arguments, check_output_file, check_output_folder,
                                   setup_logging)
from graphcore.files import drop_stdout

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
# the random stream: std::mt19937 + libstdc++ std::normal_distribution<float>
# =============================================================================================
class MT19937:
    """std::mt19937(seed): numpy's legacy RandomState seeds an integer with the same init_genrand,
    and randint over [0, 2^32) as uint64 hands out exactly one 32-bit output per value."""

    def __init__(self, seed: int):
        self._rs = np.random.RandomState(int(seed) & 0xFFFFFFFF)   # std::mt19937 takes the seed mod 2^32

    def __call__(self, n: int) -> np.ndarray:
        """The next n 32-bit outputs (as uint64)."""
        return self._rs.randint(0, 2 ** 32, size=n, dtype=np.uint64)


def _c_logf():
    """The C library's logf, when there is one: glibc's logf is not correctly rounded (about 1
    value in 130 of the polar method's r2 differs from log rounded to float by one ulp), and
    the original's weights come from it."""
    import ctypes
    import ctypes.util
    for name in (ctypes.util.find_library("m"), "libm.so.6", None):
        try:
            f = ctypes.CDLL(name).logf
        except (OSError, AttributeError, TypeError):
            continue
        f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
        if abs(f(2.0) - math.log(2.0)) < 1e-6:
            return f
    return None


_LOGF = _c_logf()


def _logf(v: np.ndarray) -> np.ndarray:
    """float32 log as C's logf (the C library's own where it can be called, else log rounded to float)."""
    if _LOGF is None:
        return np.log(v.astype(np.float64)).astype(_F32)
    f = _LOGF
    return np.fromiter((f(x) for x in v.tolist()), dtype=_F32, count=len(v))


class RandomNormalDistribution:
    """train.cpp's random_normal_distribution: mt19937(seed) feeding normal_distribution<float>
    (mean, std), each draw clamped to [min, max] by frand_normal.

    libstdc++'s normal_distribution<float> is the Marsaglia polar method on
    generate_canonical<float> (one 32-bit output u, float(u) / 2^32, pulled below 1):
    x = 2u1 - 1, y = 2u2 - 1 (the - 1.0 in double), r2 = x*x + y*y in float, pairs with r2 > 1
    or r2 == 0 rejected; m = sqrt(-2 log(r2) / r2); it returns y*m and keeps x*m for the next
    call. Pairs are generated here in vectorised chunks and the normals queued, which gives the
    same sequence of normals (the mt19937 runs ahead, but nothing else reads it)."""

    def __init__(self, seed: int, mean: float = 0.0, std: float = 1.0, min: float = -1.0, max: float = 1.0):
        self.gen = MT19937(seed)
        self.mean, self.std, self.min, self.max = _F32(mean), _F32(std), _F32(min), _F32(max)
        self._queue = np.zeros(0, dtype=_F32)

    def _canonical(self, n):
        u = self.gen(n).astype(_F32) / _F32(2.0 ** 32)          # float(u32) rounds to nearest, / 2^32 exact
        return np.minimum(u, np.nextafter(_F32(1.0), _F32(0.0)))

    def _refill(self, n_needed: int):
        chunks = [self._queue]
        have = len(self._queue)
        while have < n_needed:
            n_pairs = max(64, (n_needed - have) * 2 // 3 + 16)   # ~78.5% of pairs are accepted
            u = self._canonical(2 * n_pairs).reshape(n_pairs, 2)
            xy = ((_F32(2.0) * u).astype(np.float64) - 1.0).astype(_F32)
            x, y = xy[:, 0], xy[:, 1]
            r2 = x * x + y * y                                       # float32 ops, rounded each
            ok = (r2 <= 1.0) & (r2 != 0.0)
            x, y, r2 = x[ok], y[ok], r2[ok]
            lg = _logf(r2)
            m = np.sqrt(_F32(-2.0) * lg / r2).astype(_F32)
            pair = np.empty((len(x), 2), dtype=_F32)
            pair[:, 0] = y * m                                       # returned first
            pair[:, 1] = x * m                                       # the saved value
            chunks.append(pair.reshape(-1))
            have += 2 * len(x)
        self._queue = np.concatenate(chunks)

    def normal(self, n: int) -> np.ndarray:
        """The next n draws of normal_distribution<float>(mean, std), unclamped."""
        if len(self._queue) < n:
            self._refill(n)
        out, self._queue = self._queue[:n], self._queue[n:]
        return (out * self.std + self.mean).astype(_F32)


def init_random_normal_distribution(seed, mean, std, min, max) -> RandomNormalDistribution:
    return RandomNormalDistribution(seed, mean, std, min, max)


def frand_normal_n(rnd: RandomNormalDistribution, n: int) -> np.ndarray:
    """n calls of train.cpp's frand_normal: a normal draw clamped to [min, max]."""
    return np.clip(rnd.normal(n), rnd.min, rnd.max)


def frand_normal(rnd: RandomNormalDistribution) -> float:
    return float(frand_normal_n(rnd, 1)[0])


def randomize_tensor_normal(tensor: gc.Tensor, rnd: RandomNormalDistribution) -> gc.Tensor:
    """Fill tensor (ne0 fastest) with scale * frand_normal: scale = 1/sqrtf(ne0) for 1-D tensors,
    1/sqrtf(ne0 + ne1) for 2- to 4-D ones (the square root of the sum, as train.cpp writes it)."""
    nd = gc.n_dims(tensor)
    if nd == 1:
        scale = _F32(1.0) / np.sqrt(_F32(tensor.ne[0]))
    else:
        scale = _F32(1.0) / np.sqrt(_F32(tensor.ne[0]) + _F32(tensor.ne[1]))
    vals = (_F32(scale) * frand_normal_n(rnd, gc.nelements(tensor))).astype(_F32)
    a = tensor.numpy4d()
    a[...] = vals.reshape(a.shape)
    return tensor


def randomize_model(model: LlamaModel, seed: int, mean: float, std: float, min: float, max: float) -> None:
    rnd = init_random_normal_distribution(seed, mean, std, min, max)
    for t in model.tensors():
        randomize_tensor_normal(t, rnd)


def randomize_model_lora(model: LlamaModelLora, seed: int, mean: float, std: float, min: float,
                         max: float) -> None:
    rnd = init_random_normal_distribution(seed, mean, std, min, max)
    for t in model.tensors():
        randomize_tensor_normal(t, rnd)


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


# =============================================================================================
# data
# =============================================================================================
def _arr(t):
    return t.numpy() if isinstance(t, gc.Tensor) else np.asarray(t)


def example_tokens(example_id: int, n_tokens: int, n_vocab: int) -> np.ndarray:
    """The n_tokens target tokens of an example (the sine wave), computed in float32 as the original."""
    i = np.arange(1, n_tokens + 1, dtype=_F32)
    x = _F32(example_id) + i * _F32(3.14159) * _F32(2.0) * _F32(1.0) * _F32(0.5) / _F32(n_tokens)
    y = np.sin(x.astype(np.float64)).astype(_F32)                   # sinf
    z = (y + _F32(1.0)) * _F32(0.5)
    z = np.clip(z, _F32(0.0), _F32(1.0))
    tok = 1 + (z * _F32(n_vocab - 1)).astype(np.int64)               # (int) truncates; z >= 0
    return np.maximum(1, np.minimum(tok, n_vocab - 1)).astype(np.int32)


def get_example_targets(example_id: int, tokens_input, targets) -> None:
    """tokens_input [n_tokens] I32 and targets [n_vocab, n_tokens] F32 (tensors or arrays shaped
    (n_tokens,) and (n_tokens, n_vocab)): tokens start with 0 and follow the wave; targets are -1
    with +1 at row i-1, column token_i."""
    tok, tgt = _arr(tokens_input), _arr(targets)
    n_tokens, n_vocab = tok.shape[-1], tgt.shape[-1]
    toks = example_tokens(example_id, n_tokens, n_vocab)
    tgt[...] = -1.0
    tgt[np.arange(n_tokens), toks] = 1.0
    tok[0] = 0
    tok[1:] = toks[:-1]


def get_example_targets_batch(ctx, example_id: int, tokens_input, targets) -> None:
    """tokens_input [n_tokens, n_batch], targets [n_vocab, n_tokens, n_batch]: sequence k is
    example example_id*n_batch + k. (ctx is kept for the original's signature; the views are numpy's.)"""
    tok, tgt = _arr(tokens_input), _arr(targets)
    if tok.ndim != 2 or tgt.ndim != 3 or tok.shape != tgt.shape[:2]:
        raise ValueError(f"get_example_targets_batch: tokens {tok.shape} and targets {tgt.shape} do not match")
    for k in range(tok.shape[0]):
        get_example_targets(example_id * tok.shape[0] + k, tok[k], tgt[k])


def lshift_examples(tokens_input, targets, n_shift: int) -> None:
    """Shift tokens and target rows n_shift places towards the front (the tail stays as it was)."""
    tok, tgt = _arr(tokens_input), _arr(targets)
    n = tok.shape[-1] - n_shift
    if n > 0:
        tok[:n] = tok[n_shift:n_shift + n].copy()
        tgt[:n] = tgt[n_shift:n_shift + n].copy()


# =============================================================================================
# sampling and printing
# =============================================================================================
def _softmax_rows(lg: np.ndarray):
    """argmax (first maximum) and probabilities of each row, in float32 as the original."""
    best = np.argmax(lg, axis=-1).astype(np.int32)
    mx = np.max(lg, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(lg == -np.inf, _F32(0.0), np.exp((lg - mx).astype(np.float64)).astype(_F32)).astype(_F32)
    psum = np.zeros(lg.shape[:-1] + (1,), dtype=_F32)
    for k in range(lg.shape[-1]):                                    # float sum in order
        psum[..., 0] += p[..., k]
    return best, (p / psum).astype(_F32)


def sample_softmax(logits, probs, best_samples) -> None:
    """Greedy samples of logits [n_vocab, n] into best_samples [n] and softmax into probs [n_vocab, n]."""
    lg = _arr(logits)
    best, p = _softmax_rows(lg)
    _arr(best_samples)[...] = best
    _arr(probs)[...] = p


def sample_softmax_batch(ctx, logits, probs, best_samples) -> None:
    """logits and probs [n_vocab, n_tokens, n_batch], best_samples [n_tokens, n_batch]."""
    lg = _arr(logits)
    if lg.ndim != 3 or _arr(best_samples).shape != lg.shape[:2]:
        raise ValueError(f"sample_softmax_batch: logits {lg.shape} and samples {_arr(best_samples).shape} do not match")
    best, p = _softmax_rows(lg)
    _arr(best_samples)[...] = best
    _arr(probs)[...] = p


def _out(file):
    return sys.stdout if file is None else file


def format_token(token: int, n_vocab: int) -> str:
    return " " * token + "X" + " " * (n_vocab - token - 1)


def print_token(token: int, n_vocab: int, file=None) -> None:
    _out(file).write(format_token(token, n_vocab) + "\n")


def print_tokens(tokens, n_vocab: int, file=None) -> None:
    """One line per token of the first row (tokens->ne[0] of them)."""
    t = _arr(tokens)
    row = t.reshape(-1, t.shape[-1])[0] if t.ndim > 1 else t
    _out(file).write("".join(format_token(int(x), n_vocab) + "\n" for x in row))


def print_row(probs, i: int, file=None) -> None:
    p = _arr(probs).reshape(-1, _arr(probs).shape[-1])
    _out(file).write("".join(" %.2f" % float(v) for v in p[i]) + "\n")


def print_matrix(probs, file=None) -> None:
    p = _arr(probs)
    p = p.reshape(-1, p.shape[-1])
    _out(file).write("".join("".join(" %.2f" % float(v) for v in row) + "\n" for row in p))


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


class _Evaluator:
    """A graph planned once and computed as often as needed."""

    def __init__(self, g, n_threads):
        self.g = g
        self.plan = gc.graph_plan(g, n_threads)
        if self.plan.work_size:
            self.plan.work_data = np.empty(self.plan.work_size, np.uint8)

    def __call__(self):
        gc.graph_compute(self.g, self.plan)


def _result_name(code) -> str:
    from graphcore import optim
    return optim.RESULT_NAMES.get(code, str(code))


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


def _dump(dirname, name, g, gf=None):
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, name + ".txt"), "w") as f:
        gc.graph_print(g, file=f)
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


def train(model, kv_self, args, out=sys.stdout, history=None):
    """The original's training loop, with the graphs built once.

    The original builds a new context, forward graph and loss per batch, and ggml_opt builds its
    own forward and backward graphs again on every call. The graphs are the same every time:
    only the data of two leafs (the token ids and the targets) change. Building and planning a
    146-node backward graph in Python costs milliseconds, as much as the whole optimisation of a
    batch in the original, so here they are built once: per batch the new tokens and targets are
    written into the leafs' data, and the optimizer is re-initialised (opt_init, as ggml_opt
    does on every call) and run on the prebuilt graphs with opt_resume_g."""
    hp = model.hparams
    n_tokens, n_vocab, n_batch = hp.n_ctx, hp.n_vocab, args.n_batch
    params = _opt_params(args)
    tg = build_training_graphs(model, kv_self, n_batch, args.loss)
    ctx0, gf, gb, e, logits = tg.ctx0, tg.gf, tg.gb, tg.error, tg.logits
    tokens_input, targets, tokens = tg.tokens_input, tg.targets, tg.tokens
    after_opt_best_samples = gc.new_tensor_2d(ctx0, gc.TYPE_I32, n_tokens, n_batch)
    after_opt_probs = gc.new_tensor_3d(ctx0, gc.TYPE_F32, n_vocab, n_tokens, n_batch)
    if args.dump_graphs:
        _dump(args.dump_graphs, "forward", gf)
        _dump(args.dump_graphs, "backward", gb, gf)
    compute_gf = _Evaluator(gf, args.threads)

    n_evals = 0
    t_start = time.perf_counter()
    progress = Progress(args.examples, "batches ") if args.progress else None
    for ex in range(args.examples):
        get_example_targets_batch(ctx0, 64 * ex + 0, tokens_input, targets)
        tokens.numpy()[:] = tokens_input.numpy().reshape(-1)

        compute_gf()
        error_before_opt = gc.get_f32_1d(e, 0)

        opt = gc.opt_init(ctx0, gc.OptContext(), params, 0)
        result = gc.opt_resume_g(ctx0, opt, e, gf, gb)
        n_evals += opt.n_evals

        compute_gf()
        error_after_opt = gc.get_f32_1d(e, 0)
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
        _dump(args.dump_graphs, "generation", gf)
    compute = _Evaluator(gf, args.threads)
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


def plot_loss(path, history, title="baby-llama training"):
    """The errors before and after each batch's optimisation, drawn with matplotlib (an optional
    extra) with axes, labels and a legend, to any file format matplotlib writes."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot-loss needs matplotlib: pip install 'graphcore-engine[plot]' (or pip install "
                       "matplotlib)") from None
    h = np.asarray(history, np.float64).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    batches = np.arange(1, len(h) + 1)
    ax.plot(batches, h[:, 0], color="0.6", lw=1, label="error before the batch's optimisation")
    ax.plot(batches, h[:, 1], color="tab:blue", lw=1.5, label="error after")
    ax.set_xlabel("batch")
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
        return _run(args)
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


def _run(args) -> int:
    out = sys.stdout
    t0 = time.perf_counter()

    model, kv_self = new_model(args, out)

    history = []
    stats = train(model, kv_self, args, out, history)
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
