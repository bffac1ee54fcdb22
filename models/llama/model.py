"""The llama architecture as llama.cpp 4480542 runs `general.architecture = llama` GGUF files, built as
graphcore graphs: batched prompt evaluation into a KV cache, then one token at a time.

The graph is llama.cpp's build_llama(): token embeddings by get_rows; per layer rms_norm * attn_norm,
Q/K/V projections, rope mode 0 (adjacent pairs, llama.cpp's LLM_ARCH_LLAMA) with the file's frequency
base and scale, K and V copied into the cache (V transposed, as llama.cpp stores it), softmax of
K·Q scaled by 1/sqrt(head_dim) under a causal mask, V·softmax, the output projection and the residual;
then rms_norm * ffn_norm and the SiLU-gated feed-forward (down(silu(gate x) * up x)) and the residual;
finally rms_norm * output_norm and the output projection to logits. Grouped-query attention
(head_count_kv < head_count) shares each K/V head between head_count/head_count_kv query heads, as
mul_mat's block broadcast does.

ggml_rounding (on by default) reproduces the F16 roundings llama.cpp's numbers go through: K and V are
cached as F16 values (held in an F32 cache, so reading them back costs no widening); Q and the softmax
are rounded to F16 before their products with the cache, and activations before products with F16
weights (ggml's F16 dot products convert their F32 operand); SiLU sees F16-rounded inputs and gives
F16-rounded outputs (ggml's lookup table); the softmax takes exp from ggml's F16 table (soft_max_ext's
exp_f16) and rope computes its angles in ggml's float32 (rope_custom's ggml_f32). What remains
different is the order of float sums in the products; ggml_dots (off by default: slower) takes
ggml's there too, and then perplexities equal llama.cpp's to the digits it prints (tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import graphcore as gc
from graphcore.gguf_io import GGUFError, GGUFFile, gguf_read

from .tokenizer import SPMTokenizer

ALIGN_SLACK = 64        # bytes of alignment padding budgeted per tensor of an evaluation graph
DECODE_BUCKET = 128     # the one-token graph attends to a multiple of this many cache rows (the rest masked):
                        # rebuilt every 128 tokens (about 8 ms, mostly Python), masked rows cost next to nothing


@dataclass(frozen=True)
class LlamaHParams:
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_rot: int
    rms_eps: float
    rope_freq_base: float
    rope_freq_scale: float
    rope_scaling: str           # "none", "linear" or "yarn"
    n_orig_ctx: int

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def n_embd_gqa(self):
        return self.head_dim * self.n_head_kv

    @classmethod
    def from_gguf(cls, f: GGUFFile):
        arch = f.get("general.architecture", required=True, kind=str)
        if arch != "llama":
            raise GGUFError(f"{f.path}: general.architecture is '{arch}'; only 'llama' is supported")

        def key(name, default=None, kind=int):
            return f.get(f"llama.{name}", default, required=default is None, kind=kind)
        n_embd, n_head = key("embedding_length"), key("attention.head_count")
        if n_head <= 0 or n_embd <= 0 or n_embd % n_head:
            raise GGUFError(f"{f.path}: llama.embedding_length {n_embd} is not a positive multiple of "
                            f"llama.attention.head_count {n_head}")
        n_head_kv = key("attention.head_count_kv", n_head)
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise GGUFError(f"{f.path}: llama.attention.head_count {n_head} is not a multiple of "
                            f"llama.attention.head_count_kv {n_head_kv}")
        n_rot = key("rope.dimension_count", n_embd // n_head)
        if n_rot != n_embd // n_head:      # llama.cpp refuses these too (invalid n_rot)
            raise GGUFError(f"{f.path}: llama.rope.dimension_count {n_rot} must equal the head size "
                            f"{n_embd // n_head}")
        scaling = key("rope.scaling.type", "linear", kind=str)
        if scaling not in ("none", "linear", "yarn"):
            raise GGUFError(f"{f.path}: llama.rope.scaling.type '{scaling}' is not supported "
                            "(none, linear, yarn)")
        factor = f.get("llama.rope.scaling.factor", None, kind=float)
        if factor is None:
            factor = f.get("llama.rope.scale_linear", 0.0, kind=float)
        tokens = f.get("tokenizer.ggml.tokens", required=True, kind=list)
        n_ctx_train = key("context_length")
        return cls(n_vocab=len(tokens), n_ctx_train=n_ctx_train, n_embd=n_embd, n_layer=key("block_count"),
                   n_ff=key("feed_forward_length"), n_head=n_head, n_head_kv=n_head_kv, n_rot=n_rot,
                   rms_eps=key("attention.layer_norm_rms_epsilon", kind=float),
                   rope_freq_base=key("rope.freq_base", 10000.0, kind=float),
                   rope_freq_scale=1.0 if factor == 0.0 else 1.0 / factor, rope_scaling=scaling,
                   n_orig_ctx=key("rope.scaling.original_context_length", n_ctx_train))


class LlamaModel:
    """Weights (zero-copy tensors of the mapped file: F32, F16 or ggml block types, used as they are by
    get_rows and mul_mat), hyper-parameters and tokenizer of a llama GGUF."""

    def __init__(self, path):
        self.file = f = gguf_read(path)
        self.path = f.path
        self.hparams = hp = LlamaHParams.from_gguf(f)
        self.tokenizer = SPMTokenizer.from_gguf(f)
        E, V, F, G = hp.n_embd, hp.n_vocab, hp.n_ff, hp.n_embd_gqa
        self.tok_embd = f.tensor("token_embd.weight", [E, V])
        self.output_norm = f.tensor("output_norm.weight", [E])
        self.output = (f.tensor("output.weight", [E, V]) if "output.weight" in f.tensors else self.tok_embd)
        self.layers = []
        for i in range(hp.n_layer):
            def w(name, ne):
                return f.tensor(f"blk.{i}.{name}.weight", ne)
            self.layers.append(dict(
                attn_norm=w("attn_norm", [E]), wq=w("attn_q", [E, E]), wk=w("attn_k", [E, G]),
                wv=w("attn_v", [E, G]), wo=w("attn_output", [E, E]), ffn_norm=w("ffn_norm", [E]),
                gate=w("ffn_gate", [E, F]), down=w("ffn_down", [F, E]), up=w("ffn_up", [E, F])))
        for name in ("token_embd.weight", "output_norm.weight", "output.weight"):
            t = f.tensors.get(name)
            if t is not None and t.type == gc.TYPE_I32:
                raise GGUFError(f"{self.path}: tensor '{name}' is I32; llama weights are F32, F16 or quantized")
        for i, layer in enumerate(self.layers):
            for name, t in layer.items():
                if t.type == gc.TYPE_I32:
                    raise GGUFError(f"{self.path}: tensor 'blk.{i}.{name}' is I32; llama weights are F32, F16 "
                                    "or quantized")

    def n_params(self):
        return sum(gc.nelements(t) for t in self.file.tensors.values())


class LlamaSession:
    """A KV cache of n_ctx positions and the evaluation of token batches against it (llama_context).
    kv_type is the cache's storage type (F32 holding F16-rounded values with ggml_rounding, or F16).
    ggml_dots (off by default; needs ggml_rounding) multiplies as llama.cpp's CPU code does: ggml's
    block dots for quantized weights at any batch size, ggml_vec_dot_f16's order for K.Q and
    V.softmax. Then every number is llama.cpp's, bit for bit (the tests compare perplexities), at the
    price of speed: no BLAS for batches."""

    def __init__(self, model: LlamaModel, n_ctx: int = 512, n_threads: int | None = None,
                 kv_type: int = gc.TYPE_F32, ggml_rounding: bool = True, ggml_dots: bool = False):
        hp = model.hparams
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        self.model, self.n_ctx, self.n_threads, self.kv_type = model, n_ctx, n_threads, kv_type
        self.rounding = ggml_rounding
        if ggml_dots and not (ggml_rounding and kv_type == gc.TYPE_F32):
            raise ValueError("ggml_dots needs ggml_rounding and an F32 cache (kv_type) of F16-rounded values")
        self.dots = ggml_dots
        self._rounded = {}          # per build: id(x) -> (x, x rounded to F16)
        es = gc.type_size(kv_type)
        # one row more than n_ctx: the decode graph writes the new token's K/V into the spare row `slot`
        # (a fixed place, so the graph can be reused) and eval moves it to its position afterwards
        self.rows = rows = n_ctx + 1
        self.cache_ctx = gc.init(2 * hp.n_layer * (rows * hp.n_embd_gqa * es + 64) + 1024)
        self.k = [gc.new_tensor_1d(self.cache_ctx, kv_type, rows * hp.n_embd_gqa) for _ in range(hp.n_layer)]
        self.v = [gc.new_tensor_1d(self.cache_ctx, kv_type, rows * hp.n_embd_gqa) for _ in range(hp.n_layer)]
        self.n_past = 0
        self._buf = np.empty(0, np.uint8)
        self._decode = None         # (bucket, ctx, compiled graph, and numpy views of its token, pos, mask, logits)
        self._kv_views = None       # numpy views of the cache tensors (k, v as [G, rows]), made on first use

    def clear(self):
        """llama_kv_cache_clear: forget every position."""
        self.n_past = 0

    def _compute_bytes(self, n_tokens, n_kv, n_out):
        """Arena bytes for one evaluation graph (every intermediate, the F16 rounding copies included)."""
        hp = self.model.hparams
        per_layer = 20 * hp.n_embd + 3 * hp.n_embd_gqa + 10 * hp.n_ff + 4 * n_kv * hp.n_head
        floats = n_tokens * (hp.n_layer * per_layer + 6 * hp.n_embd) + n_out * hp.n_vocab + n_kv * n_tokens
        return 4 * floats + 4 * n_tokens + ALIGN_SLACK * (80 * hp.n_layer + 64) + 4096

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` at positions n_past.. n_past+len-1, storing their K/V in the cache; returns the
        logits of every token ([n_tokens, n_vocab]) or of the last one ([n_vocab])."""
        hp = self.model.hparams
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n_tokens = len(tokens)
        if n_tokens == 0:
            raise ValueError("eval: no tokens")
        if self.n_past + n_tokens > self.n_ctx:
            raise ValueError(f"eval: {self.n_past} cached + {n_tokens} new tokens exceed the context of "
                             f"{self.n_ctx} positions")
        bad = tokens[(tokens < 0) | (tokens >= hp.n_vocab)]
        if len(bad):
            raise ValueError(f"eval: token id {int(bad[0])} is outside the vocabulary [0, {hp.n_vocab})")
        if n_tokens == 1:
            out = self._eval_one(int(tokens[0]))
            return out.reshape(1, -1) if all_logits else out
        n_past, n_kv = self.n_past, self.n_past + n_tokens
        n_out = n_tokens if all_logits else 1
        size = self._compute_bytes(n_tokens, n_kv, n_out)
        if self._buf.nbytes < size:
            self._buf = np.empty(size, np.uint8)
        ctx = gc.init(size, mem_buffer=self._buf)
        try:
            inp = gc.from_numpy(ctx, tokens.astype(np.int32))
            pos = gc.from_numpy(ctx, np.arange(n_past, n_kv, dtype=np.int32))
            mask = np.zeros((n_tokens, n_kv), np.float32)       # token i sees cache positions <= n_past + i
            mask[np.triu_indices(n_tokens, n_past + 1, n_kv)] = -np.inf
            kq_mask = gc.from_numpy(ctx, mask)
            gf = gc.new_graph_custom(ctx, 64 + 80 * hp.n_layer, False)
            logits = self._build(ctx, gf, inp, pos, kq_mask, n_tokens, n_past, n_kv, n_out)
            gc.build_forward_expand(gf, logits)
            gc.graph_compute_with_ctx(ctx, gf, self.n_threads)
            out = logits.numpy().copy()
        finally:
            gc.free(ctx)
        self.n_past = n_kv
        return out if all_logits else out.reshape(-1)

    def _eval_one(self, token):
        """One token through the cached decode graph of its bucket (n_past + 1 rounded up to DECODE_BUCKET;
        llama.cpp pads n_kv to 32 the same way): only the inputs change between calls, so there is no graph
        to build or plan."""
        hp, p = self.model.hparams, self.n_past
        bucket = min(self.n_ctx, -(-(p + 1) // DECODE_BUCKET) * DECODE_BUCKET)
        if self._decode is None or self._decode[0] != bucket:
            if self._decode is not None:
                gc.free(self._decode[1])
            ctx = gc.init(self._compute_bytes(1, bucket + 1, 1))
            tok = gc.new_tensor_1d(ctx, gc.TYPE_I32, 1)
            pos = gc.new_tensor_1d(ctx, gc.TYPE_I32, 1)
            mask = gc.new_tensor_2d(ctx, gc.TYPE_F32, bucket + 1, 1)
            gf = gc.new_graph_custom(ctx, 64 + 80 * hp.n_layer, False)
            logits = self._build(ctx, gf, tok, pos, mask, 1, bucket, bucket + 1, 1)
            gc.build_forward_expand(gf, logits)
            # numpy views made once: Tensor.numpy() costs microseconds, a token's whole overhead is ~0.1 ms
            self._decode = (bucket, ctx, gc.graph_compile(gf, self.n_threads), tok.numpy(), pos.numpy(),
                            mask.numpy().reshape(-1), logits.numpy4d().reshape(-1))   # (numpy4d: not computed yet)
        _, ctx, compiled, tok, pos, m, logits = self._decode
        tok[0] = token
        pos[0] = p
        m[:p] = 0.0                     # the cached positions, then the unused rows, then the new token (slot)
        m[p:bucket] = -np.inf
        m[bucket] = 0.0
        compiled()
        G = hp.n_embd_gqa
        if self._kv_views is None:
            self._kv_views = [(kc.numpy(), vc.numpy().reshape(G, self.rows)) for kc, vc in zip(self.k, self.v)]
        for k, v in self._kv_views:                 # move the new K row and V column from the slot to p
            k[p * G:(p + 1) * G] = k[bucket * G:(bucket + 1) * G]
            v[:, p] = v[:, bucket]
        self.n_past = p + 1
        return logits.copy()

    def _build(self, ctx, gf, inp, pos, kq_mask, n_tokens, write_at, n_kv, n_out):
        """The llama graph for n_tokens tokens whose K/V go to cache rows write_at.., attending to cache
        rows [0, n_kv) under kq_mask; returns the logits of the last n_out tokens."""
        hp, m = self.model.hparams, self.model
        self._rounded = {}
        E, D, H, Hkv, G = hp.n_embd, hp.head_dim, hp.n_head, hp.n_head_kv, hp.n_embd_gqa
        rows = self.rows
        es = gc.type_size(self.kv_type)
        yarn = hp.rope_scaling == "yarn"
        rope_args = (hp.n_rot, 0, 0, hp.n_orig_ctx, hp.rope_freq_base, hp.rope_freq_scale,
                     1.0 if yarn else 0.0, 1.0, 32.0 if yarn else 0.0, 1.0 if yarn else 0.0, self.rounding and not yarn)
        x = gc.get_rows(ctx, m.tok_embd, inp)                                # [E, n_tokens]
        for il, L in enumerate(m.layers):
            cur = gc.mul_inplace(ctx, gc.rms_norm(ctx, x, hp.rms_eps), L["attn_norm"])
            q = gc.rope_custom(ctx, gc.reshape_3d(ctx, self._mm(ctx, L["wq"], cur), D, H, n_tokens), pos,
                               *rope_args)
            k = gc.rope_custom(ctx, gc.reshape_3d(ctx, self._mm(ctx, L["wk"], cur), D, Hkv, n_tokens), pos,
                               *rope_args)
            v = self._mm(ctx, L["wv"], cur)                                  # [G, n_tokens]
            # store K (rows of G) and V transposed (rows of n_ctx per channel) into the cache
            if self.rounding and self.kv_type == gc.TYPE_F32:     # the values an F16 cache would hold:
                k, v = self._half(ctx, k), self._half(ctx, v)      # F16 copies, widened into the cache
            kc, vc = self.k[il], self.v[il]
            gc.build_forward_expand(gf, gc.cpy(ctx, k, gc.view_1d(ctx, kc, n_tokens * G, write_at * G * es)))
            gc.build_forward_expand(gf, gc.cpy(ctx, gc.transpose(ctx, v),
                                               gc.view_2d(ctx, vc, n_tokens, G, rows * es, write_at * es)))
            kk = gc.view_3d(ctx, kc, D, n_kv, Hkv, G * es, D * es, 0)           # [D, n_kv, Hkv]
            if self.rounding:
                q = self._f16(ctx, q)
            qq = gc.permute(ctx, q, 0, 2, 1, 3)                                   # [D, n_tokens, H]
            kq = gc.mul_mat(ctx, kk, qq, ggml_dots=self.dots)                     # [n_kv, n_tokens, H]
            kq = gc.soft_max_ext(ctx, kq, kq_mask, None, 1.0 / float(np.sqrt(np.float32(D))), 0.0,
                                 exp_f16=self.rounding)
            if self.rounding:
                kq = self._f16(ctx, kq)
            vv = gc.view_3d(ctx, vc, n_kv, D, Hkv, rows * es, rows * D * es, 0)   # [n_kv, D, Hkv]
            kqv = gc.mul_mat(ctx, vv, kq, ggml_dots=self.dots)                    # [D, n_tokens, H]
            att = gc.cont_2d(ctx, gc.permute(ctx, kqv, 0, 2, 1, 3), E, n_tokens)
            x = gc.add_inplace(ctx, self._mm(ctx, L["wo"], att), x)
            cur = gc.mul_inplace(ctx, gc.rms_norm(ctx, x, hp.rms_eps), L["ffn_norm"])
            g = self._mm(ctx, L["gate"], cur)
            if self.rounding:
                g = self._f16(ctx, gc.silu_inplace(ctx, self._f16(ctx, g)))
            else:
                g = gc.silu_inplace(ctx, g)
            ff = gc.mul_inplace(ctx, g,
                                self._mm(ctx, L["up"], cur))
            x = gc.add_inplace(ctx, self._mm(ctx, L["down"], ff), x)
        if n_out < n_tokens:        # only the last row's logits are wanted: skip the others' products
            x = gc.view_2d(ctx, x, E, n_out, x.nb[1], (n_tokens - n_out) * x.nb[1])
        x = gc.mul_inplace(ctx, gc.rms_norm(ctx, x, hp.rms_eps), m.output_norm)
        return self._mm(ctx, m.output, x)                                  # [n_vocab, n_out]

    def _mm(self, ctx, w, x):
        """w · x; with ggml_rounding an F16 weight meets x rounded to F16, as ggml's F16 dot products do."""
        if self.rounding and w.type == gc.TYPE_F16:
            if id(x) not in self._rounded:          # Q, K and V share one rounded input
                self._rounded[id(x)] = (x, self._f16(ctx, x))
            x = self._rounded[id(x)][1]
        return gc.mul_mat(ctx, w, x, ggml_dots=self.dots)

    @staticmethod
    def _half(ctx, t):
        """t copied to F16."""
        return gc.cpy(ctx, t, gc.new_tensor(ctx, gc.TYPE_F16, t.ne))

    @classmethod
    def _f16(cls, ctx, t):
        """t rounded to F16 and widened back (two copies)."""
        return gc.cpy(ctx, cls._half(ctx, t), gc.new_tensor(ctx, gc.TYPE_F32, t.ne))
