"""Graph files: gc.graph_export(g, path) writes a graph, its tensors' metadata and its leafs' bytes;
gc.graph_import(path) reads it back into a new context, so a graph can be saved, inspected and
recomputed elsewhere (ggml's old ggml_graph_export / ggml_graph_import, made safe).

Format, version 1. Every integer is little-endian; `str8` is a u8 byte count then ASCII, `str16` a
u16 byte count then UTF-8.

    header, 32 bytes
        magic      8 bytes   b"GCGRAPH\\0"
        version    u32       1
        file_size  u64       bytes in the whole file, checksum included
        n_tensors  u32       records in the tensor table
        n_graphs   u32       1, or 2 when the forward graph gf of a backward graph is kept too
        reserved   u32       0
    tensor table: n_tensors records, each after every record it refers to (sources and the
    tensor whose bytes it views), so a reader can build them in file order
        kind       u8        0 DATA (its bytes follow), 1 ALIAS (a view of an earlier record's
                             bytes), 2 OP (computed: rebuilt from op, sources and op params)
        n_src      u8        sources (0 for DATA and ALIAS; at most 6)
        op         str8      the op's name ("MUL_MAT"; "NONE" for DATA and ALIAS): names, not
                             codes, so adding ops does not change old files
        name       str16     the tensor's name (at most 63 characters)
        type       u32       ggml's type code: 0 f32, 1 f16, 26 i32
        flags      u32       1 input, 2 output, 4 param
        ne         4 x i64   elements per dimension, ne[0] innermost
        nb         4 x i64   byte strides
        op_params  16 x i32  the op's parameters (floats as their float32 bits)
        view_src   i32       -1, or the record owning the bytes this tensor views (an in-place
                             result, a view op, a cpy's destination, an ALIAS)
        view_offs  i64       byte offset into view_src's bytes
        grad       i32       -1 no gradient; -2 a gradient that the file does not hold (imported
                             as a zero F32 tensor, as set_param makes); else the gradient's record
        src        n_src x i32   source records, -1 where the node has none
        DATA only: data_len u64, then data_len bytes: the tensor's bytes from its first element
                   to its last (ggml_nbytes, its strides kept), or 0 when it had no data (a
                   no_alloc context; imported zero-filled)
    graphs: n_graphs records (the graph, then its forward graph when kept)
        size       u32       the graph's capacity
        flags      u32       1: the graph keeps gradients (Graph.grads)
        n_nodes    u32, then n_nodes x u32 records, in execution order
        n_leafs    u32, then n_leafs x u32 records
        with flag 1: n_nodes x i32 gradients, coded as a record's grad
    checksum       u32       zlib.crc32 of every byte before it

What the file keeps: every leaf's bytes as they are at export (so export before computing when
in-place ops write over leafs); every node's op, type, shape, strides, op params, sources, name,
flags and views; parameters (FLAG_PARAM) and gradient links where the gradient is in the file.
Tensors the graph reads but does not hold (the inputs of a graph_view) are kept as data (op NONE).
Nodes' values are not stored: computing the imported graph makes them, bitwise as the original.
map_custom ops cannot be exported (they call a user function); graph_export says so.

How import validates: the header (magic, version, size), then the checksum, then every field
(known op and type, sizes and strides in range, references only to earlier records, views inside
their owner's bytes, gradients F32 and shaped like their tensor, graph lists in range and without
repeats, nodes after the nodes they read). Then each OP record is rebuilt by calling its op's
public builder (the op's `rebuild` adapter, beside the op in its module, see registry.rebuild_of)
with the imported sources and op params, so the op's own shape and type rules check it, and the
result's op, type, ne, nb, op_params, sources and view must equal the file's: a kernel never sees
a node its op's builder would not make. This runs first in a context without memory, so nothing is
allocated for a file that fails, and the memory of one that passes is known exactly. Anything
wrong is a gc.GraphFileError naming the file and the problem; nothing is returned half-built, and
a context passed in is left as it was.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from . import tensor as TN
from .autodiff import zero_grad
from . import types as T
from .context import MEM_ALIGN, Context, init
from .errors import GraphError, GraphFileError, OutOfMemoryError
from .files import write_bytes
from .graph import Graph
from .ops.registry import BY_NAME, OP_NONE, OPS

__all__ = ["graph_export", "graph_import", "MAGIC", "VERSION"]

MAGIC = b"GCGRAPH\x00"
VERSION = 1
KIND_DATA, KIND_ALIAS, KIND_OP = 0, 1, 2
KIND_NAMES = {KIND_DATA: "DATA", KIND_ALIAS: "ALIAS", KIND_OP: "OP"}
GRAD_NONE, GRAD_ZERO = -1, -2
MAX_GRAPHS = 2
GRAPH_HAS_GRADS = 1
FLAGS_KNOWN = TN.FLAG_INPUT | TN.FLAG_OUTPUT | TN.FLAG_PARAM

# sanity bounds on what a file may declare (one tensor at most 1 TiB)
MAX_BYTES = 1 << 40
MAX_NB = 1 << 48
MAX_GRAPH_SIZE = 2**31 - 1

_HEADER = struct.Struct("<8sIQIII")
_REC_HEAD = struct.Struct("<BB")
_REC_BODY = struct.Struct("<II4q4q16iiqi")
_U8, _U16, _U32, _U64 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_GRAPH_HEAD = struct.Struct("<II")
_CRC = struct.Struct("<I")
# the smallest record: head, two empty strings, body
_MIN_RECORD = _REC_HEAD.size + 1 + 2 + _REC_BODY.size
_FLOAT_TYPES = (T.TYPE_F32, T.TYPE_F16)


# =====================================================================================================
# export
# =====================================================================================================
def _check_graph(what, g):
    if not isinstance(g, Graph):
        raise GraphError(f"graph_export: {what} must be a Graph, got {type(g).__name__}")


def _table(graphs):
    """The tensors of the file in build order, with each one's kind."""
    g = graphs[0]
    op_nodes = {id(n) for n in g.nodes if n.op != OP_NONE}
    for gr in graphs[1:]:
        if any(id(n) not in g.visited for n in gr.nodes) or any(id(n) not in g.visited for n in gr.leafs):
            raise GraphError("graph_export: gf must be the forward part of g (its nodes and leafs in g)")

    def deps(t):
        out = [s for s in t.src if s is not None] if id(t) in op_nodes else []
        if t.view_src is not None:
            out.append(t.view_src)
        return out

    order, index = [], {}
    roots = []
    for gr in graphs:
        roots += gr.leafs
        roots += gr.nodes
    for root in roots:
        if id(root) in index:
            continue
        stack = [(root, iter(deps(root)))]
        on_stack = {id(root)}
        while stack:
            t, it = stack[-1]
            nxt = next(it, None)
            if nxt is not None:
                if id(nxt) in index:
                    continue
                if id(nxt) in on_stack:
                    raise GraphError(f"graph_export: tensor {TN.describe(nxt)} depends on itself")
                on_stack.add(id(nxt))
                stack.append((nxt, iter(deps(nxt))))
                continue
            stack.pop()
            on_stack.discard(id(t))
            index[id(t)] = len(order)
            order.append(t)
    kinds = []
    for t in order:
        if id(t) in op_nodes:
            kinds.append(KIND_OP)
        elif t.view_src is not None:
            kinds.append(KIND_ALIAS)
        else:
            kinds.append(KIND_DATA)
    return order, index, kinds


def _str8(s: str) -> bytes:
    b = s.encode("ascii")
    return _U8.pack(len(b)) + b


def _str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise GraphError(f"graph_export: name too long: {s[:40]!r}...")
    return _U16.pack(len(b)) + b


def _grad_code(t, index):
    if t is None:
        return GRAD_NONE
    return index.get(id(t), GRAD_ZERO)


def _encode(graphs) -> bytes:
    order, index, kinds = _table(graphs)
    parts = []
    for i, (t, kind) in enumerate(zip(order, kinds)):
        where = f"tensor {TN.describe(t)}"
        if t.ctx is not None and t.ctx.freed:
            raise GraphError(f"graph_export: {where} belongs to a freed context")
        if kind == KIND_OP:
            op = OPS[t.op]
            if op.not_exportable:
                raise GraphError(f"graph_export: node {where} is a {op.name} node: {op.not_exportable}")
            if len(t.src) > TN.MAX_SRC:
                raise GraphError(f"graph_export: {where} has {len(t.src)} sources (at most {TN.MAX_SRC})")
            srcs = [index[id(s)] if s is not None else -1 for s in t.src]
            op_name, op_params = op.name, t.op_params
        else:
            srcs, op_name = [], "NONE"
            op_params = t.op_params if t.op == OP_NONE else np.zeros(TN.MAX_OP_PARAMS, np.int32)
        view_src = index[id(t.view_src)] if t.view_src is not None else -1
        view_offs = int(t.view_offs) if t.view_src is not None else 0
        body = _REC_BODY.pack(int(t.type), int(t.flags) & FLAGS_KNOWN, *[int(x) for x in t.ne],
                              *[int(x) for x in t.nb], *[int(x) for x in op_params], view_src, view_offs,
                              _grad_code(t.grad, index))
        rec = [_REC_HEAD.pack(kind, len(srcs)), _str8(op_name), _str16(t.name[:TN.MAX_NAME - 1]), body,
               struct.pack(f"<{len(srcs)}i", *srcs)]
        if kind == KIND_DATA:
            if t.has_data:
                n = TN.nbytes(t)
                raw = t._buf[t._offs:t._offs + n]
                rec += [_U64.pack(n), raw.tobytes()]
            else:
                rec.append(_U64.pack(0))
        parts.append(b"".join(rec))
    for g in graphs:
        flags = GRAPH_HAS_GRADS if g.grads is not None else 0
        gp = [_GRAPH_HEAD.pack(g.size, flags),
              _U32.pack(g.n_nodes), struct.pack(f"<{g.n_nodes}I", *[index[id(n)] for n in g.nodes]),
              _U32.pack(g.n_leafs), struct.pack(f"<{g.n_leafs}I", *[index[id(n)] for n in g.leafs])]
        if g.grads is not None:
            gp.append(struct.pack(f"<{g.n_nodes}i", *[_grad_code(x, index) for x in g.grads]))
        parts.append(b"".join(gp))
    body = b"".join(parts)
    size = _HEADER.size + len(body) + _CRC.size
    head = _HEADER.pack(MAGIC, VERSION, size, len(order), len(graphs), 0)
    data = head + body
    return data + _CRC.pack(zlib.crc32(data) & 0xFFFFFFFF)


def graph_export(g, path, gf=None) -> None:
    """Write graph g (and, when given, gf, the forward graph g was built from, so pictures can
    tell forward nodes from backward ones) to `path` in graphcore's graph file format (see the
    module's documentation). Leafs' bytes are written as they are now. A regular file is written
    whole or not at all, keeping its mode; a symlink's target, a FIFO or a device is written to
    (graphcore.files.write_bytes). Raises gc.GraphError for a graph holding map_custom nodes, an
    OSError naming `path` when the file cannot be written."""
    _check_graph("g", g)
    graphs = [g]
    if gf is not None:
        _check_graph("gf", gf)
        graphs.append(gf)
    data = _encode(graphs)
    _parse(data, "<graph_export's output>")       # never write a file graph_import would refuse
    write_bytes(path, data)


# =====================================================================================================
# import: parse and check everything first, then build
# =====================================================================================================
class _Fail(Exception):
    """A problem with the file; graph_import turns it into a GraphFileError naming the file."""


class Record:
    """One tensor record as read from a file; also what an op's rebuild adapter sees (`rec`)."""

    __slots__ = ("index", "kind", "op", "name", "type", "flags", "ne", "nb", "op_params", "view_src",
                 "view_offs", "grad", "src", "data_offs", "data_len", "span", "_scratch")

    @property
    def inplace(self) -> bool:
        """The node's result views a source's bytes (an _inplace form, cpy, a view op)."""
        return self.view_src >= 0

    def f32(self, i: int) -> float:
        return float(self.op_params[i:i + 1].view(np.float32)[0])

    def i32(self, i: int) -> int:
        return int(self.op_params[i])

    def like(self, type_: int = T.TYPE_F32):
        """A tensor of the node's shape without data, for builders that take a shape as a tensor."""
        return TN.new_tensor_impl(self._scratch, type_, self.ne, op="graph_import")

    def describe(self) -> str:
        nm = f" '{self.name}'" if self.name else ""
        what = OPS[self.op].name if self.kind == KIND_OP else KIND_NAMES[self.kind].lower()
        return f"tensor {self.index}{nm} ({what})"


class _GraphRec:
    __slots__ = ("size", "flags", "nodes", "leafs", "grads")


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.end:
            raise _Fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                        f"only {max(0, self.end - self.pos)} left")
        p = self.pos
        self.pos += n
        return p

    def unpack(self, st: struct.Struct, what: str):
        p = self.take(st.size, what)
        return st.unpack_from(self.data, p)

    def array(self, fmt: str, n: int, what: str):
        st = struct.Struct(f"<{n}{fmt}")
        return list(self.unpack(st, what)) if n else []

    def text(self, length: struct.Struct, encoding: str, what: str) -> str:
        """A string stored as its byte count (in `length`'s format) and its bytes."""
        (n,) = self.unpack(length, what)
        p = self.take(n, what)
        try:
            return self.data[p:p + n].decode(encoding)
        except UnicodeDecodeError:
            raise _Fail(f"corrupt: {what} is not {encoding.upper()}: {self.data[p:p + n][:40]!r}") from None


def _span(type_, ne, nb) -> int:
    n = T.type_size(type_)
    for i in range(4):
        n += ((ne[i] // T.blck_size(type_) if i == 0 else ne[i]) - 1) * nb[i]
    return n


def _read_record(r: _Reader, i: int, recs: list) -> Record:
    at = f"tensor {i}"
    kind, n_src = r.unpack(_REC_HEAD, f"{at}'s record")
    op_name = r.text(_U8, "ascii", f"{at}'s op name")
    name = r.text(_U16, "utf-8", f"{at}'s name")
    vals = r.unpack(_REC_BODY, f"{at}'s record")
    rec = Record()
    rec.index, rec.kind, rec.name = i, kind, name
    rec.type, rec.flags = vals[0], vals[1]
    rec.ne, rec.nb = list(vals[2:6]), list(vals[6:10])
    rec.op_params = np.array(vals[10:26], dtype=np.int32)
    rec.view_src, rec.view_offs, rec.grad = vals[26], vals[27], vals[28]
    rec.src = r.array("i", n_src, f"{at}'s sources") if n_src <= TN.MAX_SRC else None
    rec.data_offs, rec.data_len = -1, 0
    if kind not in KIND_NAMES:
        raise _Fail(f"corrupt: {at} has kind {kind} (0 DATA, 1 ALIAS, 2 OP)")
    if n_src > TN.MAX_SRC:
        raise _Fail(f"corrupt: {at} has {n_src} sources (at most {TN.MAX_SRC})")
    op = BY_NAME.get(op_name)
    if op is None:
        raise _Fail(f"unknown op {op_name!r} in {at} (a newer graphcore's op, or a corrupt file)")
    rec.op = op.code
    where = rec.describe()
    if len(name) >= TN.MAX_NAME:
        raise _Fail(f"corrupt: {where}: name of {len(name)} characters (at most {TN.MAX_NAME - 1})")
    if rec.type not in T.TYPE_TRAITS:
        raise _Fail(f"corrupt: {where}: unknown type {rec.type}")
    if rec.flags & ~FLAGS_KNOWN:
        raise _Fail(f"corrupt: {where}: unknown flags {rec.flags:#x}")
    if rec.flags & TN.FLAG_PARAM and rec.type not in _FLOAT_TYPES:
        raise _Fail(f"corrupt: {where}: a parameter of type {T.type_name(rec.type)}")
    if any(not 1 <= x <= MAX_BYTES for x in rec.ne) or rec.ne[0] % T.blck_size(rec.type):
        raise _Fail(f"corrupt: {where}: absurd shape ne={rec.ne}")
    if any(not 1 <= x <= MAX_NB for x in rec.nb):
        raise _Fail(f"corrupt: {where}: absurd strides nb={rec.nb}")
    rec.span = _span(rec.type, rec.ne, rec.nb)
    if rec.span > MAX_BYTES:
        raise _Fail(f"corrupt: {where}: absurd size, ne={rec.ne} nb={rec.nb} span {rec.span} bytes")
    if kind == KIND_OP:
        if op.code == OP_NONE:
            raise _Fail(f"corrupt: {where}: an OP record with op NONE")
    elif op.code != OP_NONE or n_src:
        raise _Fail(f"corrupt: {where}: a {KIND_NAMES[kind]} record must have op NONE and no sources")
    for j, s in enumerate(rec.src):
        if not -1 <= s < i:
            raise _Fail(f"corrupt: {where}: source {j} is record {s}, not an earlier record")
    if kind == KIND_ALIAS and rec.view_src < 0:
        raise _Fail(f"corrupt: {where}: an ALIAS record must name the record whose bytes it views")
    if kind == KIND_DATA and rec.view_src != -1:
        raise _Fail(f"corrupt: {where}: a DATA record cannot view another record")
    if rec.view_src != -1:
        if not 0 <= rec.view_src < i:
            raise _Fail(f"corrupt: {where}: views record {rec.view_src}, not an earlier record")
        owner = recs[rec.view_src]
        if owner.view_src != -1:
            raise _Fail(f"corrupt: {where}: views record {rec.view_src}, which is itself a view")
        if not 0 <= rec.view_offs or rec.view_offs + rec.span > owner.span:
            raise _Fail(f"corrupt: {where}: view of {rec.span} bytes at offset {rec.view_offs} reaches "
                        f"outside the {owner.span} bytes of record {rec.view_src}")
    elif rec.view_offs != 0:
        raise _Fail(f"corrupt: {where}: a view offset without a view")
    if not GRAD_ZERO <= rec.grad:
        raise _Fail(f"corrupt: {where}: gradient {rec.grad}")
    if kind == KIND_DATA:
        (n,) = r.unpack(_U64, f"{at}'s data size")
        if n not in (0, rec.span):
            raise _Fail(f"corrupt: {where}: {n} data bytes, its shape and strides span {rec.span}")
        rec.data_offs = r.take(n, f"{at}'s data")
        rec.data_len = n
    return rec


def _read_graph(r: _Reader, k: int, n_tensors: int) -> _GraphRec:
    at = f"graph {k}"
    g = _GraphRec()
    g.size, g.flags = r.unpack(_GRAPH_HEAD, f"{at}'s header")
    (n,) = r.unpack(_U32, f"{at}'s node count")
    if n * 4 > r.end - r.pos:
        raise _Fail(f"truncated: {at} declares {n} nodes, more than the file holds")
    g.nodes = r.array("I", n, f"{at}'s nodes")
    (n,) = r.unpack(_U32, f"{at}'s leaf count")
    if n * 4 > r.end - r.pos:
        raise _Fail(f"truncated: {at} declares {n} leafs, more than the file holds")
    g.leafs = r.array("I", n, f"{at}'s leafs")
    g.grads = r.array("i", len(g.nodes), f"{at}'s gradients") if g.flags & GRAPH_HAS_GRADS else None
    if g.flags & ~GRAPH_HAS_GRADS:
        raise _Fail(f"corrupt: {at} has unknown flags {g.flags:#x}")
    if not max(1, len(g.nodes), len(g.leafs)) <= g.size <= MAX_GRAPH_SIZE:
        raise _Fail(f"corrupt: {at} has size {g.size} for {len(g.nodes)} nodes and {len(g.leafs)} leafs")
    for what, lst in (("node", g.nodes), ("leaf", g.leafs)):
        for x in lst:
            if x >= n_tensors:
                raise _Fail(f"corrupt: {at}: {what} record {x} of {n_tensors}")
        if len(set(lst)) != len(lst):
            raise _Fail(f"corrupt: {at} lists a {what} twice")
    if set(g.nodes) & set(g.leafs):
        raise _Fail(f"corrupt: {at} has a tensor that is both a node and a leaf")
    if g.grads is not None:
        for x in g.grads:
            if not GRAD_ZERO <= x < n_tensors:
                raise _Fail(f"corrupt: {at}: gradient {x}")
    return g


def _check_grad(recs, rec, x, what):
    if x == GRAD_NONE:
        return
    if rec.type not in _FLOAT_TYPES:
        raise _Fail(f"corrupt: {what} of {rec.describe()}: a gradient for a {T.type_name(rec.type)} tensor")
    if x >= 0:
        if x >= len(recs):
            raise _Fail(f"corrupt: {what} of {rec.describe()} is record {x} of {len(recs)}")
        gr = recs[x]
        if gr.type != T.TYPE_F32 or gr.ne != rec.ne:
            raise _Fail(f"corrupt: {what} of {rec.describe()} is {gr.describe()}, ne={gr.ne} "
                        f"{T.type_name(gr.type)}; a gradient is F32 with ne={rec.ne}")


def _parse(data: bytes, fname: str):
    """(records, graphs) of a file's bytes; raises GraphFileError for anything wrong."""
    try:
        return _parse_inner(data)
    except _Fail as e:
        raise GraphFileError(f"graph_import: {fname}: {e}") from None


def _parse_inner(data: bytes):
    n = len(data)
    if n < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        if n < len(MAGIC) and MAGIC.startswith(data):
            raise _Fail(f"truncated: {n} bytes, too short to be a graphcore graph file")
        raise _Fail(f"not a graphcore graph file (it starts with {bytes(data[:8])!r}; "
                    f"graph files start with {MAGIC!r})")
    # the header's own size and the file size it gives come first: a garbage or cut file must be
    # reported as such, not as "written by a newer graphcore"
    if n < _HEADER.size:
        raise _Fail(f"truncated: {n} bytes, the header alone has {_HEADER.size}")
    _, version, size, n_tensors, n_graphs, reserved = _HEADER.unpack_from(data, 0)
    if n < size:
        raise _Fail(f"truncated: the header says the file has {size} bytes, it has {n}")
    if n > size:
        raise _Fail(f"corrupt: {n - size} bytes after the end the header gives ({size} bytes)")
    if version > VERSION:
        raise _Fail(f"format version {version} was written by a newer graphcore; this one reads "
                    f"version {VERSION} (upgrade graphcore to read it)")
    if version != VERSION:
        raise _Fail(f"unknown format version {version} (this graphcore reads version {VERSION})")
    if size < _HEADER.size + _CRC.size:
        raise _Fail(f"corrupt: the header gives an impossible file size {size}")
    (stored,) = _CRC.unpack_from(data, size - _CRC.size)
    computed = zlib.crc32(memoryview(data)[:size - _CRC.size]) & 0xFFFFFFFF
    if stored != computed:
        raise _Fail(f"corrupt: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
    if reserved != 0:
        raise _Fail(f"corrupt: reserved header field is {reserved}")
    if not 1 <= n_graphs <= MAX_GRAPHS:
        raise _Fail(f"corrupt: {n_graphs} graphs (1 to {MAX_GRAPHS})")
    if n_tensors * _MIN_RECORD > size:
        raise _Fail(f"corrupt: {n_tensors} tensors cannot fit in {size} bytes")
    r = _Reader(data, size - _CRC.size)
    r.pos = _HEADER.size
    recs = []
    for i in range(n_tensors):
        recs.append(_read_record(r, i, recs))
    graphs = [_read_graph(r, k, n_tensors) for k in range(n_graphs)]
    if r.pos != r.end:
        raise _Fail(f"corrupt: {r.end - r.pos} unread bytes before the checksum")
    # cross-record checks
    for rec in recs:
        _check_grad(recs, rec, rec.grad, "the gradient")
    in_nodes = set(graphs[0].nodes)
    for k, g in enumerate(graphs):
        pos = {x: p for p, x in enumerate(g.nodes)}
        for x in g.leafs:
            if recs[x].kind == KIND_OP:
                raise _Fail(f"corrupt: graph {k}: leaf {recs[x].describe()} is computed by an op")
        for p, x in enumerate(g.nodes):
            rec = recs[x]
            if rec.kind != KIND_OP:
                continue
            for s in rec.src:
                if s >= 0 and recs[s].kind == KIND_OP and not pos.get(s, p) < p:
                    raise _Fail(f"corrupt: graph {k}: node {p} {rec.describe()} reads {recs[s].describe()}, "
                                f"which the graph does not compute before it")
        if g.grads is not None:
            for x, gx in zip(g.nodes, g.grads):
                _check_grad(recs, recs[x], gx, f"graph {k}'s gradient")
    for rec in recs:
        if rec.kind == KIND_OP and rec.index not in in_nodes:
            raise _Fail(f"corrupt: {rec.describe()} is computed by an op but is not a node of the graph")
    return recs, graphs


def _aligned(n: int) -> int:
    return (n + MEM_ALIGN - 1) // MEM_ALIGN * MEM_ALIGN


def _same(built, rec, table):
    """What differs between a rebuilt node and its record ('' when nothing)."""
    if built.op != rec.op:
        return f"op {OPS[built.op].name}"
    if built.type != rec.type:
        return f"type {T.type_name(built.type)} (the file says {T.type_name(rec.type)})"
    if list(built.ne) != rec.ne:
        return f"ne={list(built.ne)} (the file says {rec.ne})"
    if list(built.nb) != rec.nb:
        return f"nb={list(built.nb)} (the file says {rec.nb})"
    if not np.array_equal(built.op_params, rec.op_params):
        return f"op_params {built.op_params.tolist()} (the file says {rec.op_params.tolist()})"
    want = [table[s] if s >= 0 else None for s in rec.src]
    if len(built.src) != len(want) or any(a is not b for a, b in zip(built.src, want)):
        return f"{len(built.src)} sources in another order or arrangement"
    owner = table[rec.view_src] if rec.view_src >= 0 else None
    if built.view_src is not owner:
        return "a view of other bytes" if built.view_src is not None else "a tensor of its own (not a view)"
    if owner is not None and built.view_offs != rec.view_offs:
        return f"a view at offset {built.view_offs} (the file says {rec.view_offs})"
    return ""


def _build(data, recs, graphs, ctx, scratch):
    """The graphs built in ctx, and every tensor made (for sizing: run first in a no_alloc context)."""
    table = []
    for rec in recs:
        rec._scratch = scratch
        where = rec.describe()
        if rec.kind == KIND_OP:
            srcs = [table[s] if s >= 0 else None for s in rec.src]
            try:
                t = OPS[rec.op].rebuild(ctx, srcs, rec)
            except OutOfMemoryError:
                raise                   # the context passed in is too small: not the file's fault
            except Exception as e:  # noqa: BLE001 - a builder refusing the file's node
                raise _Fail(f"corrupt: {where}: the op's builder refuses it: {type(e).__name__}: {e}") from None
            if not isinstance(t, TN.Tensor):
                raise _Fail(f"corrupt: {where}: rebuilding gave {type(t).__name__}")
            diff = _same(t, rec, table)
            if diff:
                raise _Fail(f"corrupt: {where}: the op's builder makes {diff} from the file's sources "
                            f"and op params")
        else:
            try:
                if rec.kind == KIND_ALIAS:
                    t = TN.new_tensor_impl(ctx, rec.type, rec.ne, table[rec.view_src], rec.view_offs,
                                           op="graph_import", nb=rec.nb)
                else:
                    t = OPS[OP_NONE].rebuild(ctx, [], rec)
            except GraphError as e:
                raise _Fail(f"corrupt: {where}: {e}") from None
            if rec.kind == KIND_DATA and rec.data_len and t.has_data:
                t._buf[t._offs:t._offs + rec.span] = np.frombuffer(data, np.uint8, rec.span, rec.data_offs)
            t.op_params[:] = rec.op_params
        t.name = rec.name
        t.flags = rec.flags
        table.append(t)
    zero = {}

    def grad_of(i, code):
        if code == GRAD_NONE:
            return None
        if code >= 0:
            return table[code]
        if i not in zero:
            zero[i] = zero_grad(ctx, table[i])
        return zero[i]

    for rec in recs:
        table[rec.index].grad = grad_of(rec.index, rec.grad)
    out = []
    for gr in graphs:
        g = Graph(gr.size, gr.grads is not None)
        g.nodes = [table[x] for x in gr.nodes]
        g.leafs = [table[x] for x in gr.leafs]
        if gr.grads is not None:
            g.grads = [grad_of(x, gx) for x, gx in zip(gr.nodes, gr.grads)]
        g.visited = {id(t) for t in g.nodes} | {id(t) for t in g.leafs}
        out.append(g)
    return out, table + list(zero.values())


def graph_import(path, ctx: Context | None = None, *, with_forward: bool = False):
    """Read a graph file written by graph_export. Returns the graph; with with_forward=True,
    (g, gf) where gf is the forward graph kept in the file, or None. Its tensors live in a new
    context sized for them with as much again free (for building on the graph), or in `ctx` when
    given. A truncated, corrupt, foreign or newer-version file raises gc.GraphFileError naming the
    file and the problem, and nothing is half-loaded (a ctx passed in is left as it was)."""
    fname = os.fspath(path)
    with open(fname, "rb") as f:
        data = f.read()
    recs, graphs = _parse(data, fname)
    scratch = init(0, no_alloc=True)
    try:        # every node rebuilt and checked without memory first; its size is then exact
        _, made = _build(data, recs, graphs, init(0, no_alloc=True), scratch)
    except _Fail as e:
        raise GraphFileError(f"graph_import: {fname}: {e}") from None
    need = sum(_aligned(TN.nbytes(t)) for t in made if t.view_src is None) + MEM_ALIGN
    own = ctx is None
    if own:     # room for as much again (at least 1 MiB): building on the graph needs some; unused bytes of
        need += max(need, 1 << 20)   # the lazily zeroed arena cost no memory
        try:
            ctx = init(need)
        except MemoryError as e:
            raise GraphFileError(f"graph_import: {fname}: the graph needs {need} bytes of memory: {e}") from None
    elif not isinstance(ctx, Context):
        raise GraphError(f"graph_import: ctx must be a Context, got {type(ctx).__name__}")
    else:
        ctx.check_alive("graph_import")
    mark = (ctx.offs, ctx.n_objects)
    try:
        out, _ = _build(data, recs, graphs, ctx, scratch)
    except _Fail as e:
        if not own:
            ctx.offs, ctx.n_objects = mark
        raise GraphFileError(f"graph_import: {fname}: {e}") from None
    except BaseException:
        if not own:
            ctx.offs, ctx.n_objects = mark
        raise
    if with_forward:
        return out[0], (out[1] if len(out) > 1 else None)
    return out[0]
