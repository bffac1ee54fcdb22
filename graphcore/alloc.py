"""The graph allocator (ggml-alloc): tensors without data get bytes in one buffer, reused over a graph.

A tensor of a `no_alloc` context has no data. `gallocr_alloc_graph(galloc, g)` walks g in execution
order and gives every node (and source) without data an offset in the allocator's buffer, with
ggml-alloc's rules:
- a tensor's bytes are free again once its last consumer has run; a view takes no bytes and keeps
  the tensor it views alive while the view has consumers left;
- an op the registry marks in-place-capable writes into src[0]'s bytes when this node is src[0]'s
  last consumer, both have the same layout, and src[0] is the allocator's own (not external data,
  an input, output, parameter or leaf, nor a view other than a whole-tensor view of a dying tensor);
- inputs (set_input, and every leaf without data: only the caller can fill it), outputs
  (set_output) and parameters are never freed, so never overwritten;
- tensors that already have data (created in an allocating context, alloc_ctx_tensors, another
  allocator) are never touched;
- free blocks are kept sorted by offset and merged; an allocation takes the best-fitting block
  (the last, unbounded block only when nothing else fits), aligned to ALIGNMENT bytes. The same
  walk's lifetimes are also placed offline, largest first, each in the smallest gap free over its
  whole life; the smaller of the two placements is used (ggml's on a tie).
The walk depends only on the graph, so the same graph always gets the same offsets. The buffer
grows (a new buffer, every placed tensor moved) when a graph needs more than it holds.
"""
from __future__ import annotations

import numpy as np

from . import tensor as TN
from .context import Context
from .errors import GraphError
from .graph import Graph
from .ops.registry import OP_NONE, OPS

ALIGNMENT = 32          # ggml's CPU buffer alignment (TENSOR_ALIGNMENT)
# user functions: whether they may alias dst and src is not theirs to promise (ggml never runs them in place)
_NEVER_INPLACE = frozenset({"MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3"})
_KEEP = TN.FLAG_INPUT | TN.FLAG_OUTPUT | TN.FLAG_PARAM


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _new_buffer(nbytes: int) -> np.ndarray:
    """A zeroed uint8 buffer whose first byte is 64-byte aligned (a cache line, as a malloc'd arena)."""
    raw = np.zeros(nbytes + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + nbytes]


class _FreeBlocks:
    """ggml_dyn_tallocr: free blocks sorted by offset; the last one is unbounded (a measure)."""

    def __init__(self):
        self.blocks = [[0, 1 << 62]]     # [offset, size]
        self.max_size = 0

    def alloc(self, size: int) -> int:
        size = _pad(size)
        best, best_size = -1, None
        for i, (_, bsize) in enumerate(self.blocks[:-1]):
            if bsize >= size and (best_size is None or bsize <= best_size):
                best, best_size = i, bsize
        if best < 0:
            best = len(self.blocks) - 1
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        size = _pad(size)
        bl = self.blocks
        for i, block in enumerate(bl):
            if block[0] + block[1] == offset:            # ends where the freed bytes start
                block[1] += size
                if i + 1 < len(bl) and block[0] + block[1] == bl[i + 1][0]:
                    block[1] += bl[i + 1][1]
                    del bl[i + 1]
                return
            if offset + size == block[0]:                # starts where the freed bytes end
                block[0] = offset
                block[1] += size
                if i > 0 and bl[i - 1][0] + bl[i - 1][1] == block[0]:
                    bl[i - 1][1] += block[1]
                    del bl[i]
                return
        i = 0
        while i < len(bl) and bl[i][0] < offset:
            i += 1
        bl.insert(i, [offset, size])

    def finish(self):
        return (lambda offset: offset), self.max_size


class _Lifetimes:
    """Offline placement of the same allocations: each one's size and lifetime (in alloc/free
    events) is recorded, then, largest first, each goes to the smallest gap that is free over its
    whole lifetime (the "greedy by size" planner of TFLite). alloc returns a token; finish() maps
    tokens to offsets."""

    def __init__(self):
        self.clock = 0
        self.items = []                 # [size, first event, last event]

    def alloc(self, size: int) -> int:
        self.clock += 1
        self.items.append([_pad(size), self.clock, 1 << 62])
        return len(self.items) - 1

    def free(self, token: int, size: int) -> None:
        self.clock += 1
        self.items[token][2] = self.clock

    def finish(self):
        items, placed = self.items, []
        offs, top = [0] * len(items), 0
        for i in sorted(range(len(items)), key=lambda i: (-items[i][0], items[i][1])):
            size, a, b = items[i]
            busy = sorted((o, e) for o, e, a2, b2 in placed if a2 < b and a < b2)
            best, gap_best, prev = None, None, 0
            for o, e in busy:
                if o - prev >= size and (gap_best is None or o - prev < gap_best):
                    best, gap_best = prev, o - prev
                prev = max(prev, e)
            off = prev if best is None else best
            offs[i] = off
            placed.append((off, off + size, a, b))
            top = max(top, off + size)
        return offs.__getitem__, top


class _LiveBytes:
    """A perfect allocator (no fragmentation, no alignment loss beyond padding): its max_size is the
    largest live set over the execution order, the bound the free-block allocator is measured by."""

    def __init__(self):
        self.cur = self.max_size = 0

    def alloc(self, size: int) -> int:
        self.cur += _pad(size)
        self.max_size = max(self.max_size, self.cur)
        return 0

    def free(self, offset: int, size: int) -> None:
        self.cur -= _pad(size)

    def finish(self):
        return (lambda offset: offset), self.max_size


class _Info:
    __slots__ = ("n_children", "n_views", "allocated", "offset", "size", "keep")

    def __init__(self, t):
        self.keep = bool(t.flags & _KEEP) or t.op == OP_NONE   # never freed nor written over
        self.n_children = 0
        self.n_views = 0
        self.allocated = False      # holds bytes of this plan (False again once freed or handed on)
        self.offset = -1
        self.size = 0               # bytes of the block it holds (an in-place result: its source's block)


class Gallocr:
    """ggml_gallocr: one buffer, and the placement of the last graph allocated in it."""

    def __init__(self, measure_all: bool = False):
        self.buffer = None          # numpy uint8 array, or None before the first reserve
        self.placed = {}            # id -> tensor placed in the buffer (views of them included)
        self.freed = False
        self.measure_all = measure_all   # plan every computed tensor, data or not (graph_memory)

    def __repr__(self):
        return f"<graphcore.Gallocr buffer={gallocr_get_buffer_size(self)} bytes, {len(self.placed)} tensors placed>"

    # -- planning ---------------------------------------------------------------------------------
    def _external(self, t) -> bool:
        """t has bytes the allocator must not touch."""
        return t.has_data and id(t) not in self.placed and not (self.measure_all and t.op != OP_NONE)

    def plan(self, g: Graph):
        """Offsets for g's tensors without data: ({id: (tensor, offset)}, views, buffer bytes needed):
        the smaller of ggml's online best-fit placement and an offline greedy-by-size placement of the
        same lifetimes (ties: ggml's)."""
        return min((self.walk(g, _FreeBlocks()), self.walk(g, _Lifetimes())), key=lambda p: p[2])

    def walk(self, g: Graph, blocks):
        """ggml_gallocr_alloc_graph_impl's walk of g with the block allocator `blocks`."""
        info, order = {}, []

        def get(t):
            h = info.get(id(t))
            if h is None:
                h = info[id(t)] = _Info(t)
                order.append(t)
            return h
        for node in g.nodes:            # every view counted once, wherever it appears
            for t in (node, *node.src):
                if t is not None and id(t) not in info:
                    get(t)
                    if t.view_src is not None:
                        vh = get(t.view_src)
                        vh.n_views += 1
                        vh.keep = vh.keep or bool(t.flags & _KEEP)    # an output view keeps its bytes
        for node in g.nodes:
            for s in node.src:
                if s is not None:
                    info[id(s)].n_children += 1

        def is_input(t):
            return t.flags & TN.FLAG_INPUT or (t.op == OP_NONE and t.view_src is None)

        def allocate(t):
            h = info[id(t)]
            if h.allocated or self._external(t):
                return
            if t.view_src is not None:
                allocate(t.view_src)        # a view's bytes are its source's
                return
            h.allocated = True
            op = OPS[t.op]
            p = t.src[0] if t.src else None
            if op.inplace and op.name not in _NEVER_INPLACE and p is not None and self._reusable(p, t, info):
                ph = info[id(p)]
                owner = p if p.view_src is None else p.view_src
                h.offset, h.size = info[id(owner)].offset, info[id(owner)].size
                ph.allocated = False        # handed on: not freed when p dies
                info[id(owner)].allocated = False
                return
            h.offset, h.size = blocks.alloc(TN.nbytes(t)), TN.nbytes(t)

        def free(t):
            h = info[id(t)]
            if h.keep or not h.allocated:
                return
            blocks.free(h.offset, h.size)
            h.allocated = False

        for node in g.nodes:                # inputs first: nothing else may take their bytes
            for t in (node, *node.src):
                if t is not None and is_input(t) and not self._external(t):
                    allocate(t)
        for node in g.nodes:
            for s in node.src:
                if s is not None:
                    allocate(s)
            allocate(node)
            for s in node.src:
                if s is None:
                    continue
                ph = info[id(s)]
                ph.n_children -= 1
                if ph.n_children or ph.n_views:
                    continue
                if s.view_src is not None:
                    vh = info[id(s.view_src)]
                    vh.n_views -= 1
                    if vh.n_views == 0 and vh.n_children == 0:
                        free(s.view_src)
                else:
                    free(s)
        where, size = blocks.finish()
        offsets = {id(t): (t, where(info[id(t)].offset)) for t in order
                   if t.view_src is None and info[id(t)].offset >= 0}
        views = [t for t in order if t.view_src is not None and id(t.view_src) in offsets]
        return offsets, views, size

    def _reusable(self, p, node, info) -> bool:
        """node may compute into p's bytes (ggml_gallocr_allocate_node's in-place test)."""
        ph = info[id(p)]
        owner = p if p.view_src is None else p.view_src
        if info[id(owner)].keep or p.flags & _KEEP or self._external(owner):
            return False
        if p.type != node.type or list(p.ne) != list(node.ne) or list(p.nb) != list(node.nb):
            return False
        if ph.n_children != 1 or ph.n_views != 0:
            return False
        if p is owner:
            return ph.allocated
        oh = info[id(owner)]
        return oh.allocated and oh.n_views == 1 and oh.n_children == 0 and p.view_offs == 0

    def place(self, offsets, views):
        """Put the plan into the buffer. Tensors of an earlier graph that this one does not place lose
        their data (their bytes now belong to others: computing them raises instead of reading junk)."""
        old, self.placed = self.placed, {}
        for t, offs in offsets.values():
            TN.place(t, self.buffer, offs)
            self.placed[id(t)] = t
        for v in views:
            TN.refresh_view(v)
            self.placed[id(v)] = v
        for k, t in old.items():
            if k not in self.placed:
                TN.place(t, None, -1)


def _check(galloc, what):
    if not isinstance(galloc, Gallocr):
        raise GraphError(f"{what}: expected a Gallocr from gallocr_new, got {type(galloc).__name__}")
    if galloc.freed:
        raise GraphError(f"{what}: the allocator was freed")


def _check_graph(g, what):
    if not isinstance(g, Graph):
        raise GraphError(f"{what}: expected a Graph, got {type(g).__name__}")
    for node in g.nodes:
        for t in (node, *node.src):
            if t is not None and t.ctx.freed:
                raise GraphError(f"{what}: {TN.describe(t)} belongs to a freed context")


def gallocr_new() -> Gallocr:
    """ggml_gallocr_new: an allocator with no buffer yet."""
    return Gallocr()


def _grow(galloc: Gallocr, size: int) -> bool:
    cur = 0 if galloc.buffer is None else galloc.buffer.nbytes
    if size <= cur and galloc.buffer is not None:
        return False
    old = list(galloc.placed.values())
    galloc.buffer = _new_buffer(max(size, cur))
    for t in old:               # nothing may keep pointing into the old buffer
        TN.place(t, None, -1)
    galloc.placed = {}
    return True


def gallocr_reserve(galloc: Gallocr, g: Graph) -> bool:
    """ggml_gallocr_reserve: size the buffer for g (grow it when g needs more) without placing
    anything (ggml's "measure"). Returns True."""
    _check(galloc, "gallocr_reserve")
    _check_graph(g, "gallocr_reserve")
    _, _, size = galloc.plan(g)
    _grow(galloc, size)
    return True


def gallocr_alloc_graph(galloc: Gallocr, g: Graph) -> bool:
    """ggml_gallocr_alloc_graph: give every tensor of g without data bytes in the buffer (growing it
    when g needs more than it holds; tensors placed before then move). Returns True."""
    _check(galloc, "gallocr_alloc_graph")
    _check_graph(g, "gallocr_alloc_graph")
    offsets, views, size = galloc.plan(g)
    _grow(galloc, size)
    galloc.place(offsets, views)
    return True


def gallocr_get_buffer_size(galloc: Gallocr) -> int:
    """ggml_gallocr_get_buffer_size: bytes of the buffer (0 before the first reserve)."""
    _check(galloc, "gallocr_get_buffer_size")
    return 0 if galloc.buffer is None else int(galloc.buffer.nbytes)


def gallocr_free(galloc: Gallocr) -> None:
    """ggml_gallocr_free: release the buffer. Tensors placed in it have no data again (computing
    them raises until they are allocated anew)."""
    if not isinstance(galloc, Gallocr):
        raise GraphError(f"gallocr_free: expected a Gallocr, got {type(galloc).__name__}")
    for t in galloc.placed.values():
        TN.place(t, None, -1)
    galloc.placed, galloc.buffer, galloc.freed = {}, None, True


def graph_nbytes_no_reuse(g: Graph, galloc: Gallocr | None = None) -> int:
    """Bytes g's nodes and sources without data (or placed by galloc) would need if none were ever
    reused (views take none), each padded to ALIGNMENT: what the allocator is measured against."""
    a = galloc if galloc is not None else Gallocr()
    seen, total = set(), 0
    for node in g.nodes:
        for t in (node, *node.src):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                if t.view_src is None and not a._external(t):
                    total += _pad(TN.nbytes(t))
    return total


def graph_memory(g: Graph) -> dict:
    """What the allocator makes of g if every tensor an op computes were its to place (whatever
    holds them now): `buffer` (its buffer's bytes), `live_peak` (the lower bound, graph_live_peak)
    and `no_reuse` (graph_nbytes_no_reuse), all in bytes."""
    a = Gallocr(measure_all=True)
    return {"buffer": a.plan(g)[2], "live_peak": graph_live_peak(g, a), "no_reuse": graph_nbytes_no_reuse(g, a)}


def graph_live_peak(g: Graph, galloc: Gallocr | None = None) -> int:
    """The largest sum of live tensor bytes over g's execution order (each padded to ALIGNMENT, views
    counted once with their source, in-place results sharing their source's bytes, by the allocator's
    own lifetimes): a lower bound on any placement's buffer. Tensors placed by galloc count as
    without data."""
    a = galloc if galloc is not None else Gallocr()
    return a.walk(g, _LiveBytes())[2]


def alloc_ctx_tensors(ctx: Context):
    """ggml_backend_alloc_ctx_tensors: one buffer holding every tensor of ctx created without data
    (parameters and inputs of a no_alloc context), views of them included. Returns the buffer (a
    numpy uint8 array; keep it or not, the tensors keep it alive), or None when there was nothing
    to allocate."""
    if not isinstance(ctx, Context):
        raise GraphError(f"alloc_ctx_tensors: expected a Context, got {type(ctx).__name__}")
    ctx.check_alive("alloc_ctx_tensors")
    todo = [t for t in ctx.no_data if not t.has_data and t.view_src is None]
    if not todo:
        return None
    offs, size = [], 0
    for t in todo:
        offs.append(size)
        size += _pad(TN.nbytes(t))
    buf = _new_buffer(size)
    for t, o in zip(todo, offs):
        TN.place(t, buf, o)
    for t in ctx.no_data:
        if t.view_src is not None and not t.has_data and t.view_src.has_data:
            TN.refresh_view(t)
    ctx.no_data = [t for t in ctx.no_data if not t.has_data]
    return buf
