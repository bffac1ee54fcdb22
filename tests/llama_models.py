"""The small llama models the llama tests build (from a seed) and the context each is checked with.
tests/data/llama_reference.json holds what llama.cpp 4480542 computed on the same files."""
import hashlib
import os

import numpy as np

from graphcore.gguf_io import gguf_read

MODELS = {
    # plain: F32 weights, 4 heads of 16, llama's default rope
    "rand_f32": (dict(seed=1, n_embd=64, n_layer=2, n_head=4, n_ff=172, n_ctx_train=256), 128),
    # grouped-query attention (8 query heads share 2 K/V heads), F16 weights, rope base and linear scale
    "rand_gqa_f16": (dict(seed=2, n_embd=64, n_layer=3, n_head=8, n_head_kv=2, n_ff=160, n_ctx_train=256,
                          rms_eps=1e-6, freq_base=50000.0, rope_scale=2.0, dtype=np.float16), 128),
}

# quantized by llama.cpp's quantize (tests/test_llama_quant.py; figures in tests/data/llama_quant_reference.json):
# rows of 256 for the k-quants, except ffn_down's 544 (17 blocks of 32), which takes the k-quant fallbacks; the
# 512-piece vocabulary of tests/data/llama_tiny_trained.gguf keeps token_embd and output small (fast to quantize)
QUANT_MODELS = {
    "rand_q": (dict(seed=3, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=544, n_ctx_train=256), 128),
}
SMALL_VOCAB = {"rand_q"}


def vocab_file(name):
    """The GGUF file whose vocabulary the model `name` is written with."""
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    return os.path.join(data, "llama_tiny_trained.gguf" if name in SMALL_VOCAB else "ggml-vocab-llama.gguf")
# (model, quantize TYPE): every file type graphcore's quantize offers on rand_q; two on the F16 model, whose
# 64-wide rows send output.weight to Q8_0 and every k-quant to its fallback
QUANT_CASES = [("rand_q", t) for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_xs", "q3_k_s",
                                       "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")]
QUANT_CASES += [("rand_gqa_f16", "q5_1"), ("rand_gqa_f16", "q4_k_m")]


def model_digest(path):
    """sha256 over the tensors' names, types, shapes and bytes (independent of the metadata layout)."""
    f = gguf_read(path)
    h = hashlib.sha256()
    for name, t in f.tensors.items():
        h.update(f"{name}:{t.type}:{t.ne}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
