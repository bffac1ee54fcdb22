"""GGUF files in and out, on the `gguf` package (the llama.cpp project's reader and writer).

`gguf_read(path)` maps the file copy-on-write and returns a `GGUFFile`: its metadata as Python values
and its tensors as graphcore tensors whose data *is* the mapped file (no copy; writing to one changes
the process's private copy of that page only). `gguf_write(path, metadata, tensors)` writes one.
F32, F16, I32 and ggml's block types (Q4_0 ... Q8_K, by ggml type id) are supported; any other type, a
truncated, corrupt or foreign file raises `GGUFError` naming the file and the key, tensor, type or shape
at fault. A quantized tensor's blocks are checked on reading: a scale that is inf or NaN (which no
quantizer writes) is a corrupt block.
"""
from __future__ import annotations

import os

import numpy as np
import gguf

from . import types as T
from .context import Context
from .errors import GraphFileError
from .tensor import MAX_DIMS, Tensor, _contiguous_nb

# ggml type number -> graphcore type: the same numbers (F32 0, F16 1, Q4_0 2 ... Q8_K 15, I32 26)
SUPPORTED = {code: code for code in T.TYPE_TRAITS if code in set(int(x) for x in gguf.GGMLQuantizationType)}
VT = gguf.GGUFValueType
# byte offsets of each block's fp16 scales (ggml-quants.h's structs; Q8_1 and Q8_K hold float32 ones): a
# scale that is inf or NaN makes every value of its block inf or NaN (later ggml's validation refuses them too)
_SCALES = {T.TYPE_Q4_0: (0,), T.TYPE_Q4_1: (0, 2), T.TYPE_Q5_0: (0,), T.TYPE_Q5_1: (0, 2), T.TYPE_Q8_0: (0,),
           T.TYPE_Q2_K: (80, 82), T.TYPE_Q3_K: (108,), T.TYPE_Q4_K: (0, 2),
           T.TYPE_Q5_K: (0, 2), T.TYPE_Q6_K: (208,)}


class GGUFError(GraphFileError):
    """A GGUF file that cannot be read or written: missing, truncated, corrupt, or with a tensor type or
    metadata value graphcore cannot handle. The message names the file and what is wrong."""


def _type_name(code: int) -> str:
    try:
        return gguf.GGMLQuantizationType(code).name
    except ValueError:
        return f"unknown type {code}"


class GGUFFile:
    """A read GGUF file: `metadata` (key -> str, int, float, bool or list), `tensors` (name -> Tensor,
    in file order), `types` (key -> gguf.GGUFValueType of the value, arrays: their element type),
    `skipped` (name -> (type name, shape) of tensors of types graphcore cannot run, when read with
    skip_unsupported=True)."""

    def __init__(self, path, metadata, types, tensors, ctx, skipped=None):
        self.path, self.metadata, self.types, self.tensors, self.ctx = path, metadata, types, tensors, ctx
        self.skipped = skipped or {}

    def get(self, key, default=None, *, required=False, kind=None):
        """A metadata value; `required` raises GGUFError naming the key when it is absent, `kind` (int,
        float, str, bool, list) when it has another type."""
        if key not in self.metadata:
            if required:
                raise GGUFError(f"{self.path}: metadata key '{key}' is missing")
            return default
        v = self.metadata[key]
        ok = kind is None or (isinstance(v, kind) and not (kind is int and isinstance(v, bool)))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise GGUFError(f"{self.path}: metadata key '{key}' is {type(v).__name__} {v!r:.60}, "
                            f"expected {kind.__name__}")
        return v

    def tensor(self, name, ne=None):
        """The tensor `name`, checked against the shape `ne` (ggml order) when given."""
        t = self.tensors.get(name)
        if t is None:
            raise GGUFError(f"{self.path}: tensor '{name}' is missing")
        if ne is not None and _shape(t.ne) != _shape([int(x) for x in ne]):
            raise GGUFError(f"{self.path}: tensor '{name}' has shape {_shape(t.ne)}, expected {list(ne)}")
        return t


def _shape(ne):
    ne = list(ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return ne


def _field_value(field):
    """Python value of a metadata field; strings as str (bytes when not UTF-8)."""
    main = field.types[0]
    if main == VT.ARRAY:
        sub = field.types[-1] if len(field.types) > 1 else None
        if sub == VT.STRING:
            return [_str(field.parts[i]) for i in field.data]
        if sub == VT.ARRAY:
            return [None] * len(field.data)     # nested arrays: not used by llama files, kept as a count
        return [x for i in field.data for x in field.parts[i].tolist()]
    if main == VT.STRING:
        return _str(field.parts[-1])
    v = field.parts[-1].tolist()[0]
    return bool(v) if main == VT.BOOL else v


def _str(part):
    b = part.tobytes()
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def gguf_read(path, skip_unsupported: bool = False) -> GGUFFile:
    """Read a GGUF file: metadata and tensors, the tensors zero-copy views of a copy-on-write map. A tensor
    of a type graphcore cannot run raises GGUFError, or with skip_unsupported is listed in `skipped`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size < 24:
        raise GGUFError(f"{path}: not a GGUF file ({size} bytes, shorter than a GGUF header)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        reader = gguf.GGUFReader(path, "c")
    except Exception as e:          # the reader raises ValueError, IndexError, KeyError... on bad bytes
        raise GGUFError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from None
    metadata, vtypes = {}, {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            metadata[name] = _field_value(field)
        except Exception as e:
            raise GGUFError(f"{path}: metadata key '{name}' cannot be read ({type(e).__name__}: {e})") from None
        vtypes[name] = field.types[-1] if field.types else None
    arena = reader.data
    ctx = Context(arena.nbytes, mem_buffer=arena.reshape(-1).view(np.uint8), no_alloc=True)
    tensors, skipped = {}, {}
    for rt in reader.tensors:
        code = int(rt.tensor_type)
        if code not in SUPPORTED and skip_unsupported:
            skipped[rt.name] = (_type_name(code), [int(x) for x in rt.shape])
            continue
        if code not in SUPPORTED:
            raise GGUFError(f"{path}: tensor '{rt.name}' has type {_type_name(code)}, which graphcore cannot "
                            f"run (supported: F32, F16, I32, Q4_0 ... Q8_K)")
        type_ = SUPPORTED[code]
        ne = [int(x) for x in rt.shape]
        if not 1 <= len(ne) <= MAX_DIMS or any(x <= 0 for x in ne):
            raise GGUFError(f"{path}: tensor '{rt.name}' has shape {ne}, expected 1 to 4 positive dims")
        ne += [1] * (MAX_DIMS - len(ne))
        if ne[0] % T.blck_size(type_):
            raise GGUFError(f"{path}: tensor '{rt.name}' of type {_type_name(code)} has rows of {ne[0]} elements, "
                            f"not a multiple of its block size {T.blck_size(type_)}")
        nb = _contiguous_nb(type_, ne)
        nbytes = nb[3] * ne[3]
        offs = int(rt.data_offset)
        if offs + nbytes > size:
            raise GGUFError(f"{path}: tensor '{rt.name}' ({nbytes} bytes at offset {offs}) reaches past the "
                            f"end of the file ({size} bytes): truncated")
        if rt.name in tensors:
            raise GGUFError(f"{path}: tensor '{rt.name}' appears twice")
        if type_ in _SCALES:
            _check_scales(path, rt.name, type_, arena[offs:offs + nbytes])
        t = Tensor(ctx, type_, ne, nb, ctx.arena, offs)
        t.name = rt.name
        ctx.n_objects += 1
        tensors[rt.name] = t
    return GGUFFile(path, metadata, vtypes, tensors, ctx, skipped)


def _check_scales(path, name, type_, data):
    """GGUFError for the first block whose fp16 scale is inf or NaN (all-ones exponent)."""
    blocks = data.reshape(-1, T.type_size(type_))
    for o in _SCALES[type_]:
        bits = blocks[:, o].astype(np.uint16) | (blocks[:, o + 1].astype(np.uint16) << 8)
        bad = np.flatnonzero((bits & 0x7C00) == 0x7C00)
        if len(bad):
            raise GGUFError(f"{path}: tensor '{name}' ({T.type_name(type_)}) is corrupt: block {int(bad[0])} has "
                            f"a scale of {float(T.fp16_to_fp32(bits[bad[0]]))} at byte {o}")


def _infer(key, v):
    """(value, GGUFValueType, sub-type) for a Python value; a (value, GGUFValueType) pair or a
    (list, GGUFValueType.ARRAY, element GGUFValueType) triple is taken as is."""
    if isinstance(v, tuple) and len(v) == 3 and v[1] == VT.ARRAY and isinstance(v[2], VT):
        return list(v[0]), VT.ARRAY, v[2]
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], VT):
        val, vt = v
        sub = None
        if vt == VT.ARRAY:
            sub = _infer(key, val[0])[1] if len(val) else VT.INT32
        return val, vt, sub
    if isinstance(v, (bool, np.bool_)):
        return bool(v), VT.BOOL, None
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if 0 <= v < 2 ** 32:
            return v, VT.UINT32, None
        if -2 ** 31 <= v < 0:
            return v, VT.INT32, None
        return v, VT.INT64 if v < 0 else VT.UINT64, None
    if isinstance(v, (float, np.floating)):
        return float(v), VT.FLOAT32, None
    if isinstance(v, (str, bytes)):
        return v, VT.STRING, None
    if isinstance(v, np.ndarray):
        sub = {np.dtype(np.float32): VT.FLOAT32, np.dtype(np.int32): VT.INT32, np.dtype(np.uint32): VT.UINT32,
               np.dtype(np.int64): VT.INT64, np.dtype(np.float64): VT.FLOAT64,
               np.dtype(np.uint8): VT.UINT8, np.dtype(np.bool_): VT.BOOL}.get(v.dtype)
        if sub is None or v.ndim != 1:
            raise GGUFError(f"gguf_write: metadata key '{key}': cannot store a {v.ndim}-D {v.dtype} array")
        return v.tolist(), VT.ARRAY, sub
    if isinstance(v, (list, tuple)):
        if not v:
            return [], VT.ARRAY, VT.INT32
        sub = _infer(key, v[0])[1]
        if sub == VT.ARRAY:
            raise GGUFError(f"gguf_write: metadata key '{key}': nested arrays are not supported")
        return list(v), VT.ARRAY, sub
    raise GGUFError(f"gguf_write: metadata key '{key}': cannot store a {type(v).__name__}")


def gguf_write(path, metadata: dict, tensors: dict) -> None:
    """Write a GGUF file. `metadata`: key -> value (ints become UINT32, floats FLOAT32, lists arrays; give
    `(value, gguf.GGUFValueType.X)` or `(list, ARRAY, element type)` to choose); `general.architecture` is
    required. `tensors`: name -> graphcore Tensor (quantized ones as their blocks) or numpy array (float32,
    float16 or int32), in the order to write them."""
    path = os.fspath(path)
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"gguf_write: {path}: metadata needs a string 'general.architecture', got {arch!r}")
    w = gguf.GGUFWriter(path, arch)
    for key, v in metadata.items():
        if key == "general.architecture":
            continue
        val, vt, sub = _infer(key, v)
        w.add_key_value(key, val, vt, sub)
    for name, t in tensors.items():
        if isinstance(t, Tensor) and T.is_quantized(t.type):
            w.add_tensor(name, np.ascontiguousarray(t.numpy()), raw_dtype=gguf.GGMLQuantizationType(t.type))
            continue
        a = t.numpy() if isinstance(t, Tensor) else np.asarray(t)
        if a.dtype not in (np.float32, np.float16, np.int32):
            raise GGUFError(f"gguf_write: {path}: tensor '{name}' has dtype {a.dtype}; "
                            "GGUF tensors are float32, float16 or int32 here")
        w.add_tensor(name, np.ascontiguousarray(a))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    except OSError as e:
        raise GGUFError(f"gguf_write: {path}: {e}") from None
    finally:
        w.close()
