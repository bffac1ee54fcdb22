"""Tensor element types, ggml's numbering and sizes, and F16 conversion on the host."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GraphError

TYPE_F32 = 0
TYPE_F16 = 1
# ggml 4480542's quantized block types (ids 4 and 5 were Q4_2/Q4_3, removed upstream)
TYPE_Q4_0, TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q8_0, TYPE_Q8_1 = 2, 3, 6, 7, 8, 9
TYPE_Q2_K, TYPE_Q3_K, TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K, TYPE_Q8_K = 10, 11, 12, 13, 14, 15
TYPE_I32 = 26  # ggml's later numbering (I8 24, I16 25, I32 26)
QK = 32        # elements per block of the 32-blocks (QK4_0 ... QK8_1)
QK_K = 256     # elements per super-block of the k-quants


@dataclass(frozen=True)
class TypeTraits:
    name: str
    blck_size: int      # elements per block (1 for plain types, 32 for quantized ones later)
    type_size: int      # bytes per block
    dtype: np.dtype     # how numpy sees one element (F16 is uint16 bits in kernels, float16 here);
    #                     quantized tensors are seen as their bytes (uint8), row_size bytes a row


_U8 = np.dtype(np.uint8)


TYPE_TRAITS = {
    TYPE_F32: TypeTraits("f32", 1, 4, np.dtype(np.float32)),
    TYPE_F16: TypeTraits("f16", 1, 2, np.dtype(np.float16)),
    TYPE_I32: TypeTraits("i32", 1, 4, np.dtype(np.int32)),
    # block sizes: ggml-quants.h's structs (fp16 scales are 2 bytes, Q8_1's d, s and Q8_K's d float32)
    TYPE_Q4_0: TypeTraits("q4_0", QK, 2 + QK // 2, _U8),
    TYPE_Q4_1: TypeTraits("q4_1", QK, 4 + QK // 2, _U8),
    TYPE_Q5_0: TypeTraits("q5_0", QK, 2 + 4 + QK // 2, _U8),
    TYPE_Q5_1: TypeTraits("q5_1", QK, 4 + 4 + QK // 2, _U8),
    TYPE_Q8_0: TypeTraits("q8_0", QK, 2 + QK, _U8),
    TYPE_Q8_1: TypeTraits("q8_1", QK, 8 + QK, _U8),
    TYPE_Q2_K: TypeTraits("q2_K", QK_K, QK_K // 16 + QK_K // 4 + 4, _U8),
    TYPE_Q3_K: TypeTraits("q3_K", QK_K, QK_K // 8 + QK_K // 4 + 12 + 2, _U8),
    TYPE_Q4_K: TypeTraits("q4_K", QK_K, 4 + 12 + QK_K // 2, _U8),
    TYPE_Q5_K: TypeTraits("q5_K", QK_K, 4 + 12 + QK_K // 8 + QK_K // 2, _U8),
    TYPE_Q6_K: TypeTraits("q6_K", QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2, _U8),
    TYPE_Q8_K: TypeTraits("q8_K", QK_K, 4 + QK_K + QK_K // 16 * 2, _U8),
}
QUANTIZED = tuple(t for t, tt in TYPE_TRAITS.items() if tt.blck_size > 1)


def traits(type_: int) -> TypeTraits:
    try:
        return TYPE_TRAITS[type_]
    except (KeyError, TypeError):
        raise GraphError(f"unknown tensor type {type_!r}; known: "
                         + ", ".join(f"{t} ({tt.name})" for t, tt in TYPE_TRAITS.items())) from None


def type_name(type_: int) -> str:
    """The type's short name: "f32", "f16" or "i32" (ggml_type_name); GraphError for an unknown type."""
    return traits(type_).name


def type_size(type_: int) -> int:
    """Bytes of one block of `type_` (ggml_type_size)."""
    return traits(type_).type_size


def blck_size(type_: int) -> int:
    """Elements per block of `type_` (ggml_blck_size): 1 for F32/F16/I32, 32 or 256 for quantized."""
    return traits(type_).blck_size


def is_quantized(type_: int) -> bool:
    """Whether `type_` is a block format (Q4_0 ... Q8_K: blocks of 32 or 256 elements), not F32, F16 or I32."""
    return traits(type_).blck_size > 1


def row_size(type_: int, n: int, op: str = "row_size") -> int:
    """Bytes of a row of n elements of `type_` (ggml_row_size); n must be a whole number of blocks."""
    tt = traits(type_)
    if n % tt.blck_size:
        raise GraphError(f"{op}: a row of {n} elements is not a whole number of {tt.name} blocks "
                         f"({tt.blck_size} elements each)")
    return tt.type_size * (n // tt.blck_size)


def type_from_dtype(dtype) -> int:
    dtype = np.dtype(dtype)
    for t, tt in TYPE_TRAITS.items():
        if tt.dtype == dtype and tt.blck_size == 1:
            return t
    raise GraphError(f"from_numpy: no tensor type for numpy dtype {dtype} (use float32, float16 or int32)")


def fp32_to_fp16(x) -> np.ndarray:
    """float32 values (scalar or array) to IEEE half, round-to-nearest-even, as uint16 bits
    (ggml_fp32_to_fp16; numpy's conversion is exactly that)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_to_fp32(bits) -> np.ndarray:
    """IEEE half values given as uint16 bits (scalar or array) to float32, exactly (ggml_fp16_to_fp32)."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)
