"""The small llama models the llama tests build (from a seed) and the context each is checked with.
tests/data/llama_reference.json holds what llama.cpp 4480542 computed on the same files."""
import hashlib

import numpy as np

from graphcore.gguf_io import gguf_read

MODELS = {
    # plain: F32 weights, 4 heads of 16, llama's default rope
    "rand_f32": (dict(seed=1, n_embd=64, n_layer=2, n_head=4, n_ff=172, n_ctx_train=256), 128),
    # grouped-query attention (8 query heads share 2 K/V heads), F16 weights, rope base and linear scale
    "rand_gqa_f16": (dict(seed=2, n_embd=64, n_layer=3, n_head=8, n_head_kv=2, n_ff=160, n_ctx_train=256,
                          rms_eps=1e-6, freq_base=50000.0, rope_scale=2.0, dtype=np.float16), 128),
}


def model_digest(path):
    """sha256 over the tensors' names, types, shapes and bytes (independent of the metadata layout)."""
    f = gguf_read(path)
    h = hashlib.sha256()
    for name, t in f.tensors.items():
        h.update(f"{name}:{t.type}:{t.ne}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
