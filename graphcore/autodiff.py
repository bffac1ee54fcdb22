"""Reverse-mode autodiff as in ggml: gradients are ordinary graph nodes.

`set_param(ctx, t)` marks a parameter and gives it a zero gradient tensor. After the forward
graph `gf` is built, `build_backward_expand(ctx, gf, gb, keep)` walks gf's nodes from last to
first and calls each op's backward rule (registered next to its kernel), which builds the nodes
of the gradient of the op's sources; `gb` then gets every parameter's gradient expression.
Before computing gb, seed the loss: `graph_reset(gb)` zeroes the gradients and
`set_f32(loss.grad, 1.0)` seeds the loss (ggml_opt does exactly this).

Which tensors get a gradient: parameters, and every node of gf (op != NONE, float type) that
depends on one through differentiable ops. ggml creates these gradient tensors while building
the forward ops (`is_node = a->grad || b->grad`); here they are created (zero-filled) when the
backward graph is built, so a forward graph costs no gradient memory. Nodes stay nodes and
parameters (which have a gradient) stay nodes, as in ggml's visit.

A backward rule has the signature `rule(ctx, t, g, d)`: `t` the forward node, `g` its gradient
(a tensor shaped like t), `d` a `Grads` object for t's sources: `d.needs(i)` says whether
src[i] wants a gradient, and `d.add / d.sub / d.add1 / d.acc` add a contribution to it the way
ggml's add_or_set family does (the first contribution is used as it is, later ones are added).
`reduce=TILES` undoes ggml's tiling broadcast (i % ne, as add/mul/repeat broadcast) and
`reduce=BLOCKS` undoes mul_mat's block broadcast (i / (ne12/ne02)), both in one place (`Grads`).
"""
from __future__ import annotations

from . import tensor as TN
from . import types as T
from .errors import GraphError
from .graph import Graph, build_forward_expand, graph_cpy
from .ops.registry import BLOCKS, NOT_DIFFERENTIABLE, OP_NONE, OPS, TILES, ZERO_GRADIENT, new_node
from .ops.elementwise import add, scale, sub
from .ops.indexing import acc
from .ops.layout import cont, permute, reshape_4d
from .ops.reduce import add1, repeat, repeat_back, sum_rows
from .ops.unary import neg

__all__ = ["set_param", "build_backward_expand", "build_backward", "build_backward_gradient_checkpointing",
           "graph_reset", "Grads", "TILES", "BLOCKS"]

_FLOAT_TYPES = (T.TYPE_F32, T.TYPE_F16)


def zero_grad(ctx, t):
    """A zero F32 tensor shaped like t, named '<name> (grad)' (ggml_dup_tensor, zero-filled)."""
    g = TN.new_tensor_impl(ctx, T.TYPE_F32, t.ne, op="grad")
    g.name = f"{t.name} (grad)"[:TN.MAX_NAME - 1]
    if g.has_data:
        TN.set_zero(g)
    return g


def set_param(ctx, t):
    """ggml_set_param: mark t as a parameter (FLAG_PARAM) and give it a zero gradient t.grad."""
    TN._check_ctx("set_param", ctx)
    TN.check_tensor("set_param", t)
    if t.type not in _FLOAT_TYPES:
        raise GraphError(f"set_param: only float tensors have gradients, got {TN.describe(t)}")
    if t.flags & TN.FLAG_PARAM and t.grad is not None:
        return t
    t.flags |= TN.FLAG_PARAM
    t.grad = zero_grad(ctx, t)
    return t


# -- the accumulator a backward rule writes into ------------------------------------------------------
class Grads:
    """The gradients of one node's sources, as seen by the node's backward rule.

    `needs(i)`: src[i] wants a gradient. `add(i, x)`: src[i].grad += x; `sub(i, x)`: -= x;
    `add1(i, x)`: += x for a one-element x (broadcast to every element); `acc(i, x, nb1, nb2, nb3,
    offset)`: += x placed in the region of src[i] that a view with these byte strides and offset
    (in F32 gradient bytes) covers. With `reduce=TILES` or `reduce=BLOCKS`, x may be larger than
    src[i] and is first summed over the repeats of the broadcast.
    """

    __slots__ = ("ctx", "node", "_need", "_initial")

    def __init__(self, ctx, node, need, initial):
        self.ctx = ctx
        self.node = node
        self._need = need           # ids of tensors that want a gradient
        self._initial = initial     # id(tensor) -> its initial (zero) gradient tensor

    def needs(self, i: int) -> bool:
        src = self.node.src
        return i < len(src) and src[i] is not None and id(src[i]) in self._need

    # -- ggml's ggml_add_or_set / sub_or_set / add1_or_set / acc_or_set ------------------------------
    def add(self, i, x, reduce=None):
        s, x = self._prepare(i, x, reduce)
        s.grad = x if self._is_zero(s) else add(self.ctx, s.grad, x)

    def sub(self, i, x, reduce=None):
        s, x = self._prepare(i, x, reduce)
        s.grad = neg(self.ctx, x) if self._is_zero(s) else sub(self.ctx, s.grad, x)

    def add1(self, i, x):
        s = self._src(i)
        self._check_f32(i, x)
        if not TN.is_scalar(x):
            raise GraphError(f"backward of {OPS[self.node.op].name}: add1 needs a one-element gradient, "
                             f"got {TN.describe(x)}")
        s.grad = repeat(self.ctx, x, s) if self._is_zero(s) else add1(self.ctx, s.grad, x)

    def acc(self, i, x, nb1, nb2, nb3, offset):
        s = self._src(i)
        self._check_f32(i, x)
        base = s.grad
        if self._is_zero(s):
            base = scale(self.ctx, base, 0.0)       # as ggml: start from a cleared copy
        elif not TN.is_contiguous(base):
            base = cont(self.ctx, base)
        s.grad = acc(self.ctx, base, x, nb1, nb2, nb3, offset)
        self._check_shape(i, s, s.grad)

    # -- internals ------------------------------------------------------------------------------------
    def _src(self, i):
        if not self.needs(i):
            raise GraphError(f"backward of {OPS[self.node.op].name}: src[{i}] does not take a gradient "
                             f"(the rule must ask needs({i}) first)")
        return self.node.src[i]

    def _is_zero(self, s):
        # still s's own initial gradient: nothing added yet. (ggml asks whether s.grad is any node's
        # initial gradient; when a rule passes its own gradient on unchanged, e.g. add's, and that
        # is the seeded gradient of the loss, ggml then drops it on the next contribution.)
        return self._initial.get(id(s)) is s.grad

    def _check_f32(self, i, x):
        TN.check_tensor(f"backward of {OPS[self.node.op].name}", x)
        if x.type != T.TYPE_F32:
            raise GraphError(f"backward of {OPS[self.node.op].name}: gradient for src[{i}] must be F32, "
                             f"got {TN.describe(x)}")

    def _check_shape(self, i, s, x):
        if list(x.ne) != list(s.ne):
            raise GraphError(f"backward of {OPS[self.node.op].name} (node '{self.node.name}'): the gradient "
                             f"built for src[{i}] {TN.describe(s)} has shape {list(x.ne)}")

    def _prepare(self, i, x, reduce):
        s = self._src(i)
        self._check_f32(i, x)
        if reduce is not None and list(x.ne) != list(s.ne):
            if reduce == TILES:
                x = undo_tiles(self.ctx, x, s)
            elif reduce == BLOCKS:
                x = undo_blocks(self.ctx, x, s)
            else:
                raise GraphError(f"backward of {OPS[self.node.op].name}: unknown reduce={reduce!r}")
        self._check_shape(i, s, x)
        return s, x


def _sum_blocks(ctx, x, d, n):
    """Dim d of x (x.ne[d] = r * n) summed down to n over the r consecutive entries of each block."""
    r = x.ne[d] // n
    if not TN.is_contiguous(x):
        x = cont(ctx, x)
    pre = 1
    for k in range(d):
        pre *= x.ne[k]
    post = 1
    for k in range(d + 1, 4):
        post *= x.ne[k]
    # dims (pre, r, n, post) -> (r, pre, n, post), then the sum of each row of r
    v = permute(ctx, reshape_4d(ctx, x, pre, r, n, post), 1, 0, 2, 3)
    ne = list(x.ne)
    ne[d] = n
    return reshape_4d(ctx, sum_rows(ctx, v), *ne)


def undo_tiles(ctx, x, like):
    """x summed over the tiles of ggml's repeat broadcast (i % ne) down to like's shape: repeat_back."""
    if list(x.ne) == list(like.ne):
        return x
    return repeat_back(ctx, x, like)


def undo_blocks(ctx, x, like):
    """x summed over mul_mat's broadcast blocks (src0 batch i // (ne12/ne02)) down to like's shape."""
    if list(x.ne) == list(like.ne):
        return x
    if not TN.can_repeat(like, x):
        raise GraphError(f"undo_blocks: {TN.describe(like)} does not divide {TN.describe(x)}")
    for d in range(4):
        if x.ne[d] != like.ne[d]:
            x = _sum_blocks(ctx, x, d, like.ne[d])
    return x


# -- building the backward graph ------------------------------------------------------------------------
def _needs_grad(node, need) -> bool:
    if node.type not in _FLOAT_TYPES:
        return False
    if node.op == OP_NONE:
        return node.grad is not None
    if OPS[node.op].backward is NOT_DIFFERENTIABLE:
        return False
    return any(s is not None and id(s) in need for s in node.src)


def _region(t):
    """(tensor owning t's bytes, first byte, one past the last)."""
    if t.view_src is not None:
        return t.view_src, t.view_offs, t.view_offs + TN.nbytes(t)
    return t, 0, TN.nbytes(t)


def _check_overwritten(gf, roots):
    """The backward graph reads forward tensors after the whole forward graph ran: a tensor whose
    bytes an in-place node wrote over after it was computed would be read with wrong values."""
    pos = {id(n): i for i, n in enumerate(gf.nodes)}
    writes = []             # (owner, start, end, position, node) of nodes computing into another's bytes
    for i, n in enumerate(gf.nodes):
        if n.view_src is not None and OPS[n.op].kernel is not None:
            writes.append((*_region(n), i, n))
    if not writes:
        return
    stack, seen = list(roots), set()
    while stack:
        t = stack.pop()
        if id(t) in seen or id(t) in gf.visited:
            continue
        seen.add(id(t))
        for s in t.src:
            if s is None:
                continue
            if id(s) not in gf.visited:
                stack.append(s)
                continue
            owner, a, b = _region(s)
            p = pos.get(id(s), -1)
            for w_owner, wa, wb, wp, n in writes:
                if w_owner is owner and wa < b and a < wb and p < wp:
                    raise GraphError(f"build_backward: the gradient reads {TN.describe(s)}, whose bytes the in-place "
                                     f"op {OPS[n.op].name} (node '{n.name}') writes over; use the op's non-inplace "
                                     f"form")


def build_backward_expand(ctx, gf: Graph, gb: Graph, keep: bool = False) -> None:
    """ggml_build_backward_expand: build the gradients of gf's nodes and add every parameter's
    gradient (with what it depends on) to gb. With keep, each node gets a fresh zero gradient
    first, so gradient tensors from an earlier backward build survive untouched."""
    TN._check_ctx("build_backward_expand", ctx)
    for name, g in (("gf", gf), ("gb", gb)):
        if not isinstance(g, Graph):
            raise GraphError(f"build_backward_expand: {name} must be a Graph, got {type(g).__name__}")
    if gf.n_nodes == 0:
        raise GraphError("build_backward_expand: the forward graph has no nodes")

    # which nodes take a gradient; give each a zero gradient tensor (ggml made these while building)
    need = set()
    by_node = {}        # id(node) -> its initial (zero) gradient
    for i, node in enumerate(gf.nodes):
        if not _needs_grad(node, need):
            continue
        need.add(id(node))
        recorded = gf.grads[i] if gf.grads is not None else None
        if keep or node.grad is None:
            node.grad = zero_grad(ctx, node)
            recorded = node.grad
        elif recorded is None:
            recorded = node.grad
        if gf.grads is not None:
            gf.grads[i] = recorded
        by_node[id(node)] = recorded
    if gb.grads is not None:
        for i, node in enumerate(gb.nodes):
            if id(node) in by_node:
                gb.grads[i] = by_node[id(node)]

    # from the last node to the first: each rule adds to its sources' gradients
    for node in reversed(gf.nodes):
        if id(node) not in need or node.op == OP_NONE:
            continue
        if not any(s is not None and id(s) in need for s in node.src):
            continue
        op = OPS[node.op]
        if op.backward is NOT_DIFFERENTIABLE or op.backward is ZERO_GRADIENT:
            continue
        if op.backward is None:
            if node.grad is by_node[id(node)] and node is not gf.nodes[-1]:
                continue        # nothing flowed into it (and it is not the loss): nothing has to pass
            wanting = [f"src[{i}] {TN.describe(s)}" for i, s in enumerate(node.src)
                       if s is not None and id(s) in need]
            raise GraphError(f"build_backward: op {op.name} has no backward rule yet; a gradient has to pass "
                             f"through node '{node.name}' to {', '.join(wanting)}")
        op.backward(ctx, node, node.grad, Grads(ctx, node, need, by_node))

    params = [n for n in gf.nodes if n.flags & TN.FLAG_PARAM and n.grad is not None]
    _check_overwritten(gf, [p.grad for p in params])
    for p in params:
        build_forward_expand(gb, p.grad)


def build_backward(ctx, gf: Graph, keep: bool = False) -> Graph:
    """A new graph (gf's size, with grads) holding gf and the gradients of its parameters: graph_dup
    then build_backward_expand (ggml_build_backward of late 2023)."""
    if not isinstance(gf, Graph):
        raise GraphError(f"build_backward: gf must be a Graph, got {type(gf).__name__}")
    gb = Graph(gf.size, True)
    graph_cpy(gf, gb)
    build_backward_expand(ctx, gf, gb, keep)
    return gb


def graph_reset(g: Graph) -> None:
    """ggml_graph_reset: zero every gradient tensor recorded in g (and nothing else). Seed the loss
    afterwards with set_f32(loss.grad, 1.0) before computing the backward graph."""
    if not isinstance(g, Graph):
        raise GraphError(f"graph_reset: expected a Graph, got {type(g).__name__}")
    if g.grads is None:
        raise GraphError("graph_reset: the graph was built without gradients (use new_graph_custom(ctx, size, True))")
    for gr in g.grads:
        if gr is not None and gr.has_data:
            TN.set_zero(gr)


# -- gradient checkpointing (ggml_build_backward_gradient_checkpointing) ----------------------------------
def build_backward_gradient_checkpointing(ctx, gf: Graph, gb: Graph, gb_tmp: Graph, checkpoints) -> None:
    """The backward graph of gf in gb, with the forward recomputed from `checkpoints` where the
    gradients need it: gb holds gf, then the gradient nodes built in gb_tmp, whose sources among
    gf's nodes are replaced by clones recomputed from the nearest checkpoints (or parameters, or
    leafs). Under the graph allocator the forward tensors between checkpoints then die after the
    forward pass and come back one stretch at a time, so the peak is lower; the gradients are the
    plain backward's, bit for bit. A view is cloned as a view of its source's clone (ggml keeps
    the forward tensor alive instead)."""
    for name, g in (("gf", gf), ("gb", gb), ("gb_tmp", gb_tmp)):
        if not isinstance(g, Graph):
            raise GraphError(f"build_backward_gradient_checkpointing: {name} must be a Graph, got {type(g).__name__}")
    checkpoints = list(checkpoints or [])
    for c in checkpoints:
        TN.check_tensor("build_backward_gradient_checkpointing", c)
    graph_cpy(gf, gb_tmp)
    build_backward_expand(ctx, gf, gb_tmp, True)
    if not checkpoints:
        graph_cpy(gb_tmp, gb)
        return
    repl = {id(c): c for c in checkpoints}

    def recomputed(t):
        """t is a forward node computed from something: its uses in the gradients get a clone."""
        return (t is not None and not t.flags & TN.FLAG_PARAM and id(t) in gf.visited
                and any(s is not None for s in t.src))

    def resolve(t):
        if not recomputed(t):
            return t
        stack = [t]
        while stack:            # post-order without recursion (deep graphs)
            n = stack[-1]
            if id(n) in repl:
                stack.pop()
                continue
            todo = [s for s in (*n.src, n.view_src) if recomputed(s) and id(s) not in repl]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            repl[id(n)] = _clone(ctx, n, lambda s: repl.get(id(s), s) if s is not None else None)
        return repl[id(t)]

    graph_cpy(gf, gb)
    for node in gb_tmp.nodes[gf.n_nodes:]:
        TN.set_src(node, [resolve(s) for s in node.src])
        build_forward_expand(gb, node)
    gb_tmp._changed()


def _clone(ctx, n, get):
    """ggml_recompute_graph_node's clone of n: same op, params, type, shape and strides, sources
    mapped by `get` (a view views its mapped source's bytes)."""
    vs = get(n.view_src)
    c = new_node(ctx, n.op, n.type, n.ne, [get(s) for s in n.src], [int(x) for x in n.op_params], view_of=vs,
                 view_offs=n.view_offs if vs is not None else 0, nb=n.nb)
    c.grad, c.flags = n.grad, n.flags
    c.name = f"{n.name} (clone)"[:TN.MAX_NAME - 1]
    return c
