"""Tensor element types, ggml's numbering and sizes, and F16 conversion on the host."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GraphError

TYPE_F32 = 0
TYPE_F16 = 1
TYPE_I32 = 26  # ggml's later numbering (I8 24, I16 25, I32 26)


@dataclass(frozen=True)
class TypeTraits:
    name: str
    blck_size: int      # elements per block (1 for plain types, 32 for quantized ones later)
    type_size: int      # bytes per block
    dtype: np.dtype     # how numpy sees one element (F16 is uint16 bits in kernels, float16 here)


TYPE_TRAITS = {
    TYPE_F32: TypeTraits("f32", 1, 4, np.dtype(np.float32)),
    TYPE_F16: TypeTraits("f16", 1, 2, np.dtype(np.float16)),
    TYPE_I32: TypeTraits("i32", 1, 4, np.dtype(np.int32)),
}


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
    """Elements per block of `type_` (ggml_blck_size): 1 for F32, F16 and I32."""
    return traits(type_).blck_size


def type_from_dtype(dtype) -> int:
    dtype = np.dtype(dtype)
    for t, tt in TYPE_TRAITS.items():
        if tt.dtype == dtype:
            return t
    raise GraphError(f"from_numpy: no tensor type for numpy dtype {dtype} (use float32, float16 or int32)")


def fp32_to_fp16(x) -> np.ndarray:
    """float32 values (scalar or array) to IEEE half, round-to-nearest-even, as uint16 bits
    (ggml_fp32_to_fp16; numpy's conversion is exactly that)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_to_fp32(bits) -> np.ndarray:
    """IEEE half values given as uint16 bits (scalar or array) to float32, exactly (ggml_fp16_to_fp32)."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)
