"""Small random llama models, written as GGUF files the way llama.cpp expects them, from a seed.

The same arguments always give the same bytes, so tests can rebuild a model and compare with figures
llama.cpp recorded on it (tests/data/llama_reference.json).
"""
from __future__ import annotations

import numpy as np
import gguf

from graphcore.gguf_io import gguf_read, gguf_write

VT = gguf.GGUFValueType


def vocab_metadata(vocab_path):
    """The tokenizer.ggml.* keys of a GGUF vocabulary file, typed as llama.cpp writes them."""
    f = gguf_read(vocab_path)
    meta = {"tokenizer.ggml.model": f.get("tokenizer.ggml.model", "llama", kind=str),
            "tokenizer.ggml.tokens": (f.get("tokenizer.ggml.tokens", required=True), VT.ARRAY),
            "tokenizer.ggml.scores": np.asarray(f.get("tokenizer.ggml.scores", required=True), np.float32),
            "tokenizer.ggml.token_type": np.asarray(f.get("tokenizer.ggml.token_type", required=True), np.int32)}
    for k in ("bos_token_id", "eos_token_id", "unknown_token_id"):
        key = "tokenizer.ggml." + k
        if key in f.metadata:
            meta[key] = (int(f.metadata[key]), VT.UINT32)
    return meta


def write_random_llama(path, vocab_path, seed=0, n_embd=64, n_layer=2, n_head=4, n_head_kv=None, n_ff=172,
                       n_ctx_train=256, rms_eps=1e-5, freq_base=10000.0, rope_scale=None, dtype=np.float32):
    """A llama GGUF with normal random weights (scaled by fan-in so activations stay O(1) and logits
    spread over a few units) and the vocabulary of `vocab_path`."""
    rng = np.random.default_rng(seed)
    meta = {"general.architecture": "llama", "general.name": f"random-llama-{seed}"}
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    u32 = VT.UINT32
    meta.update({"llama.context_length": (n_ctx_train, u32), "llama.embedding_length": (n_embd, u32),
                 "llama.block_count": (n_layer, u32), "llama.feed_forward_length": (n_ff, u32),
                 "llama.rope.dimension_count": (n_embd // n_head, u32),
                 "llama.attention.head_count": (n_head, u32), "llama.attention.head_count_kv": (n_head_kv, u32),
                 "llama.attention.layer_norm_rms_epsilon": (rms_eps, VT.FLOAT32),
                 "llama.rope.freq_base": (freq_base, VT.FLOAT32)})
    if rope_scale is not None:
        meta["llama.rope.scale_linear"] = (rope_scale, VT.FLOAT32)
    voc = vocab_metadata(vocab_path)
    meta.update(voc)
    n_vocab = len(voc["tokenizer.ggml.tokens"][0])
    g = n_embd // n_head * n_head_kv

    def mat(n_in, n_out, gain=1.0):     # ggml ne = [n_in, n_out] is a numpy (n_out, n_in) array
        return (rng.standard_normal((n_out, n_in), dtype=np.float32) * (gain / np.sqrt(n_in))).astype(dtype)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    tensors = {"token_embd.weight": rng.standard_normal((n_vocab, n_embd), dtype=np.float32).astype(dtype)}
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors.update({b + "attn_norm.weight": norm(n_embd), b + "attn_q.weight": mat(n_embd, n_embd, 2.0),
                        b + "attn_k.weight": mat(n_embd, g, 2.0), b + "attn_v.weight": mat(n_embd, g),
                        b + "attn_output.weight": mat(n_embd, n_embd), b + "ffn_norm.weight": norm(n_embd),
                        b + "ffn_gate.weight": mat(n_embd, n_ff), b + "ffn_down.weight": mat(n_ff, n_embd),
                        b + "ffn_up.weight": mat(n_embd, n_ff)})
    tensors["output_norm.weight"] = norm(n_embd)
    tensors["output.weight"] = mat(n_embd, n_vocab, 1.0)
    gguf_write(path, meta, tensors)
    return path
