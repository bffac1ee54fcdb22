"""llama.cpp 4480542's `quantize` for llama GGUF files: which tensor gets which type, and the file written.

Rules (llama_model_quantize_internal and get_k_quant_type): a tensor is quantized when its name ends in
"weight" and it has exactly 2 dims (norms and other 1-D tensors are copied as they are); its type is the
file type's base type, changed per tensor unless `pure`:
- output.weight: Q8_0 when its rows are not a multiple of 256, else Q6_K (unless the base type is Q8_0);
- attn_v: Q2_K -> Q4_K (grouped-query factor >= 4) or Q3_K; Q3_K_M -> Q5_K for the first two layers,
  then Q4_K; Q3_K_L -> Q5_K; Q4_K_M and Q5_K_M -> Q6_K on the "more bits" layers (the first and last
  eighths and every third between); Q4_K_S -> Q5_K for the first four; 70B models bump Q3_K/Q4_K to Q5_K;
- attn_k: Q3_K_XS -> Q2_K; ffn_down: Q2_K -> Q3_K, Q3_K_XS -> Q4_K in the first eighth, Q3_K_M -> Q5_K
  in the first sixteenth else Q4_K, Q3_K_L -> Q5_K, Q4_K_M and Q5_K_M -> Q6_K on the more-bits layers,
  Q4_K_S -> Q5_K in the first eighth; attn_output: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K;
  ffn_gate and ffn_up: Q3_K_XS -> Q2_K off the more-bits layers;
- a k-quant type for rows that are not a multiple of 256 falls back: Q2_K -> Q4_0, Q3_K -> Q4_1,
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0.
A tensor already of its new type is copied; F16 sources are widened to F32 first; an already quantized
source is refused ("requantizing is disabled", as llama.cpp without --allow-requantize). Where llama.cpp
aborts (rows that are not whole blocks of a 32-element type) this raises QuantizeError naming the tensor.
The metadata is copied with its types, then general.quantization_version = 2 and general.file_type set.
The blocks are ggml's reference quantizers (gc.quantize): llama.cpp uses them too without an importance
matrix, so tensor bytes are equal (tests/test_llama_quant.py).
"""
from __future__ import annotations

import numpy as np
import gguf

import graphcore as gc
from graphcore.gguf_io import GGUFFile, gguf_read, gguf_write

VT = gguf.GGUFValueType
QNT_VERSION = 2     # GGML_QNT_VERSION

# name -> (llama_ftype, base type); q3_k, q4_k and q5_k are llama.cpp's aliases for the _m mixes
FTYPES = {
    "q4_0": (2, gc.TYPE_Q4_0), "q4_1": (3, gc.TYPE_Q4_1), "q5_0": (8, gc.TYPE_Q5_0), "q5_1": (9, gc.TYPE_Q5_1),
    "q8_0": (7, gc.TYPE_Q8_0), "q2_k": (10, gc.TYPE_Q2_K), "q3_k_xs": (22, gc.TYPE_Q3_K),
    "q3_k_s": (11, gc.TYPE_Q3_K), "q3_k_m": (12, gc.TYPE_Q3_K), "q3_k_l": (13, gc.TYPE_Q3_K),
    "q4_k_s": (14, gc.TYPE_Q4_K), "q4_k_m": (15, gc.TYPE_Q4_K), "q5_k_s": (16, gc.TYPE_Q5_K),
    "q5_k_m": (17, gc.TYPE_Q5_K), "q6_k": (18, gc.TYPE_Q6_K),
}
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}
K_TYPES = (gc.TYPE_Q2_K, gc.TYPE_Q3_K, gc.TYPE_Q4_K, gc.TYPE_Q5_K, gc.TYPE_Q6_K)
FALLBACK = {gc.TYPE_Q2_K: gc.TYPE_Q4_0, gc.TYPE_Q3_K: gc.TYPE_Q4_1, gc.TYPE_Q4_K: gc.TYPE_Q5_0,
            gc.TYPE_Q5_K: gc.TYPE_Q5_1, gc.TYPE_Q6_K: gc.TYPE_Q8_0}
Q2_K, Q3_K_XS, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_M = 10, 22, 12, 13, 14, 15, 17


class QuantizeError(ValueError):
    """A file or type llama.cpp's quantize would refuse (or abort on); the message names the tensor."""


def parse_ftype(name: str) -> str:
    """The canonical file-type name for TYPE (case-insensitive; q3_k/q4_k/q5_k mean their _m mixes)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FTYPES:
        names = ", ".join(list(FTYPES) + list(ALIASES))
        raise QuantizeError(f"quantize: unknown type '{name}' (choose one of {names})")
    return key


def _more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class _Mix:
    """get_k_quant_type with its counters (quantize_state_internal) for one file."""

    def __init__(self, ftype, names, n_gqa, is_70b):
        self.ftype, self.n_gqa, self.is_70b = ftype, n_gqa, is_70b
        self.n_wv = self.n_down = self.n_gate = self.n_up = 0
        for n in names:             # counted as llama.cpp does: the first match wins
            if "attn_v.weight" in n or "attn_qkv.weight" in n:
                self.n_wv += 1
            elif "ffn_down" in n:
                self.n_down += 1
            elif "ffn_gate" in n:
                self.n_gate += 1
            elif "ffn_up" in n:
                self.n_up += 1
        self.i_wv = self.i_down = self.i_gate = self.i_up = 0
        self.fallbacks = []

    def type_for(self, name, ne, t):
        f = self.ftype
        if name == "output.weight":
            t = gc.TYPE_Q8_0 if ne[0] % 256 else (t if t == gc.TYPE_Q8_0 else gc.TYPE_Q6_K)
        elif name == "token_embd.weight":
            pass
        elif "attn_v.weight" in name:
            if f == Q2_K:
                t = gc.TYPE_Q4_K if self.n_gqa >= 4 else gc.TYPE_Q3_K
            elif f == Q3_K_M:
                t = gc.TYPE_Q5_K if self.i_wv < 2 else gc.TYPE_Q4_K
            elif f == Q3_K_L:
                t = gc.TYPE_Q5_K
            elif f in (Q4_K_M, Q5_K_M) and _more_bits(self.i_wv, self.n_wv):
                t = gc.TYPE_Q6_K
            elif f == Q4_K_S and self.i_wv < 4:
                t = gc.TYPE_Q5_K
            if self.is_70b and t in (gc.TYPE_Q3_K, gc.TYPE_Q4_K):
                t = gc.TYPE_Q5_K
            self.i_wv += 1
        elif "attn_k.weight" in name:
            if f == Q3_K_XS:
                t = gc.TYPE_Q2_K
        elif "ffn_down" in name:
            i, n = self.i_down, self.n_down
            if f == Q2_K:
                t = gc.TYPE_Q3_K
            elif f == Q3_K_XS:
                t = gc.TYPE_Q4_K if i < n // 8 else t
            elif f == Q3_K_M:
                t = gc.TYPE_Q5_K if i < n // 16 else gc.TYPE_Q4_K      # llama is not falcon
            elif f == Q3_K_L:
                t = gc.TYPE_Q5_K
            elif f in (Q4_K_M, Q5_K_M):
                t = gc.TYPE_Q6_K if _more_bits(i, n) else t
            elif f == Q4_K_S and i < n // 8:
                t = gc.TYPE_Q5_K
            self.i_down += 1
        elif "attn_output.weight" in name:
            t = {Q2_K: gc.TYPE_Q3_K, Q3_K_M: gc.TYPE_Q4_K, Q3_K_L: gc.TYPE_Q5_K}.get(f, t)
        elif "attn_qkv.weight" in name:
            t = {Q3_K_M: gc.TYPE_Q4_K, Q3_K_L: gc.TYPE_Q4_K, Q4_K_M: gc.TYPE_Q5_K, Q5_K_M: gc.TYPE_Q6_K}.get(f, t)
        elif "ffn_gate" in name:
            if f == Q3_K_XS and not _more_bits(self.i_gate, self.n_gate):
                t = gc.TYPE_Q2_K
            self.i_gate += 1
        elif "ffn_up" in name:
            if f == Q3_K_XS and not _more_bits(self.i_up, self.n_up):
                t = gc.TYPE_Q2_K
            self.i_up += 1
        if t in K_TYPES and ne[0] % 256:
            self.fallbacks.append((name, gc.type_name(t), gc.type_name(FALLBACK[t])))
            t = FALLBACK[t]
        return t


def _n_dims(ne):
    nd = 1
    for i, x in enumerate(ne):
        if x > 1:
            nd = i + 1
    return nd


def _metadata(f, ftype):
    """The input's key/values with their GGUF types, then quantization_version and file_type (set in place
    when present, as gguf_set_val_u32 does)."""
    meta = {}
    for k, v in f.metadata.items():
        vt = f.types[k]
        if isinstance(v, list):
            meta[k] = (v, VT.ARRAY, vt)
        elif vt == VT.STRING:
            meta[k] = v
        else:
            meta[k] = (v, vt)
    meta["general.quantization_version"] = (QNT_VERSION, VT.UINT32)
    meta["general.file_type"] = (ftype, VT.UINT32)
    return meta


def plan_types(f, ftype_name, pure=False, leave_output=False):
    """name -> (source tensor, output type) for every tensor of the read file `f`, in file order."""
    ftype, base = FTYPES[parse_ftype(ftype_name)]
    arch = f.get("general.architecture", required=True, kind=str)
    if arch != "llama":
        raise QuantizeError(f"quantize: {f.path}: general.architecture is '{arch}'; only 'llama' is supported")
    if f.get("llama.expert_count", 0, kind=int) > 1:
        raise QuantizeError(f"quantize: {f.path}: mixture-of-experts llama models are not supported")
    n_layer = f.get("llama.block_count", required=True, kind=int)
    n_head = f.get("llama.attention.head_count", required=True, kind=int)
    n_head_kv = f.get("llama.attention.head_count_kv", n_head, kind=int)
    if n_head <= 0 or n_head_kv <= 0:
        raise QuantizeError(f"quantize: {f.path}: head counts {n_head}, {n_head_kv} must be positive")
    mix = _Mix(ftype, list(f.tensors), n_head // n_head_kv, n_layer == 80 and n_head != n_head_kv)
    plan = {}
    for name, t in f.tensors.items():
        ne = list(t.ne)
        quantize = name.endswith("weight") and _n_dims(ne) == 2 and (not leave_output or name != "output.weight")
        new = base if quantize else t.type
        if quantize and not pure:
            new = mix.type_for(name, ne, base)
        if new != t.type:
            if gc.is_quantized(t.type):
                raise QuantizeError(f"quantize: tensor '{name}': requantizing from type {gc.type_name(t.type)} "
                                    "is disabled")
            if t.type not in (gc.TYPE_F32, gc.TYPE_F16):
                raise QuantizeError(f"quantize: tensor '{name}': cannot convert type {gc.type_name(t.type)}")
            if ne[0] % gc.blck_size(new):     # llama.cpp aborts here (GGML_ASSERT in ggml_quantize_chunk)
                raise QuantizeError(f"quantize: tensor '{name}' ne={ne[:2]}: rows of {ne[0]} elements are not "
                                    f"whole {gc.type_name(new)} blocks of {gc.blck_size(new)}")
        plan[name] = (t, new)
    return plan, ftype, mix.fallbacks


def quantize_file(src, dst, ftype_name, pure=False, leave_output=False, log=None):
    """Quantize the llama GGUF `src` (a path or a read GGUFFile) into `dst` as llama.cpp's quantize does;
    returns {name: type}. `log(line)` receives one line per tensor."""
    f = src if isinstance(src, GGUFFile) else gguf_read(src)
    plan, ftype, fallbacks = plan_types(f, ftype_name, pure, leave_output)
    sizes = [gc.row_size(new, t.ne[0]) * int(np.prod(t.ne[1:])) for t, new in plan.values()
             if new != t.type]
    ctx = gc.init(sum(sizes) + 64 * len(sizes) + 1024)
    out = {}
    try:
        for i, (name, (t, new)) in enumerate(plan.items()):
            if new == t.type:
                out[name] = t
            else:
                x = t.numpy().astype(np.float32).reshape(-1, t.ne[0])
                q = gc.new_tensor(ctx, new, list(t.ne))
                q.numpy().reshape(x.shape[0], -1)[...] = gc.quantize(x, new)
                out[name] = q
            if log is not None:
                what = f"quantized to {gc.type_name(new)}" if new != t.type else "copied"
                log(f"[{i + 1:4d}/{len(plan):4d}] {name:36s} {str(t.ne):24s} {gc.type_name(t.type):5s} {what}")
        for name, k, fb in fallbacks:
            if log is not None:
                log(f"{name}: rows are not a multiple of 256, required for {k}: using fallback {fb}")
        gguf_write(dst, _metadata(f, ftype), out)
    finally:
        gc.free(ctx)
    return {name: t.type for name, t in out.items()}
