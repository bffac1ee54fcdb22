"""Random well-typed graphs for hypothesis: graphs(), and the NodeDraw helper each op's sampler uses.

Every op keeps a small sampler beside its kernel (`@sample_of(OP)` in its module): a function
`sampler(d)` that draws the inputs the op accepts through `d` (a NodeDraw) and calls the op's
builder. So the op's own builder is the shape rule: the sampler only has to know which shapes
go together (b tiled over a, rows of a mul_mat, a region inside set's destination), and a draw
the builder still refuses (GraphError) is simply dropped. graphs() starts from an empty pool,
draws ops, and lets each sampler take its inputs either from the pool (earlier nodes of the
graph, so the result is a DAG with shared subexpressions, not a chain) or as new leaves with a
random layout (contiguous, permuted, transposed, or a strided view into a padded tensor) and
random values.

    @given(gc.testing.graphs(ops=["ADD", "MUL_MAT", "SOFT_MAX"], max_nodes=6))
    def test_mine(drawn):
        gc.testing.assert_graph_close(drawn)

With backward=True, some F32 leaves are parameters, a random scalar loss is built over the
graph's F32 outputs, and drawn.backward_graph is its backward graph (in-place forms are not
drawn then: autodiff refuses gradients through overwritten values).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume, strategies as st

from .. import tensor as TN
from .. import types as T
from ..autodiff import build_backward, graph_reset, set_param
from ..dump import graph_text
from ..errors import GraphError, OutOfMemoryError
from ..graph import build_forward_expand, new_graph_custom
from ..ops.elementwise import add, mul
from ..ops.losses import cross_entropy_loss
from ..ops.reduce import mean, sum as sum_
from ..ops.unary import sqr
from ..ops.args import region_overlaps
from ..ops.registry import BY_NAME, OP_NONE, OPS
from .compare import sentinel_context
from .reference import byte_region
from .strategies import CONTIGUOUS, LAYOUT_KINDS, layouts, make_tensor, ne4

__all__ = ["graphs", "NodeDraw", "DrawnGraph", "DOMAINS", "SIZES", "BACKWARD_EXCLUDED", "family_ops"]

F32, F16, I32 = T.TYPE_F32, T.TYPE_F16, T.TYPE_I32

def _special(rng, shape):
    """Mostly uniform in [-1, 1), about 15% zeros of both signs, infinities, NaN, subnormals and
    values beyond F16's range."""
    v = rng.uniform(-1.0, 1.0, shape)
    mask = rng.uniform(0, 1, shape) < 0.15
    v[mask] = rng.choice(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 65504.0, 1e5, -7e4]),
                         size=int(mask.sum()))
    return v


# size classes of a graph: name -> (largest dimension, largest number of elements of a new tensor).
# "matrix" reaches the BLAS path and the chunking of mul_mat; "wide" rows of more than the 4096
# elements of one elementwise segment
SIZES = {"tiny": (4, 256), "medium": (12, 4096), "matrix": (150, 24000), "wide": (9000, 9000)}

# value domains of new leaves: name -> generator(rng, numpy shape)
DOMAINS = {
    "special": _special,
    "any": lambda rng, shape: rng.uniform(-1.0, 1.0, shape),
    "positive": lambda rng, shape: rng.uniform(0.1, 2.0, shape),
    "nonzero": lambda rng, shape: rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape),
    "mask": lambda rng, shape: np.where(rng.uniform(0, 1, shape) < 0.3, -np.inf, rng.uniform(-1.0, 1.0, shape)),
}

# ops left out of backward graphs by default: their gradient is not defined for every source
# (second derivatives: gelu_back, silu_back, rms_norm_back) or they have no backward rule
BACKWARD_EXCLUDED = ("GELU_BACK", "SILU_BACK", "RMS_NORM_BACK", "CROSS_ENTROPY_LOSS_BACK", "MAP_CUSTOM1",
                     "MAP_CUSTOM2", "MAP_CUSTOM3")


class NodeDraw:
    """What an op's sampler draws with. Attributes: `ctx` (the graph's context), `op` (the op code
    being drawn), `backward` (the graph will be differentiated: no in-place forms, F32 only),
    `max_side` (largest dimension of new tensors)."""

    def __init__(self, draw, ctx, backward=False, max_side=4, layout_kinds=LAYOUT_KINDS, reuse=60,
                 max_elements=None, specials=False):
        self._draw = draw
        self.ctx = ctx
        self.backward = backward
        self.max_side = max_side
        self.max_elements = max_elements or max_side ** 4
        self.specials = specials    # new "any" leaves get special values (inf, NaN, -0, subnormals)
        self.layout_kinds = tuple(layout_kinds)
        self.reuse = reuse
        self.op = OP_NONE
        self.pool = []              # tensors the next ops may take as inputs
        self.leaves = []            # new leaves (the tensors owning their data)
        self.params = []
        self._domain = {}           # id(tensor) -> domain of its values, for new leaves

    # -- plain draws ------------------------------------------------------------------------------------
    def draw(self, strategy):
        return self._draw(strategy)

    def int(self, lo: int, hi: int) -> int:
        """An int in [lo, hi] (hi < lo gives lo)."""
        return self._draw(st.integers(lo, max(lo, hi)))

    def float(self, lo: float, hi: float) -> float:
        return float(self._draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)))

    def choice(self, options):
        options = list(options)
        return options[self._draw(st.integers(0, len(options) - 1))]

    def coin(self, percent: int = 50) -> bool:
        return self._draw(st.integers(0, 99)) < percent

    def any_type(self, types=(F32, F32, F32, F16, I32)):
        """A tensor type (F32 only when differentiating)."""
        return F32 if self.backward else self.choice(types)

    def quant_type(self, types=T.QUANTIZED):
        """A quantized type (the 32-blocks more often: k-quant rows are 256 elements long)."""
        legacy = [t for t in types if T.blck_size(t) == T.QK]
        return self.choice(legacy * 3 + [t for t in types if t not in legacy])

    # -- shapes -----------------------------------------------------------------------------------------
    def side(self) -> int:
        """A dimension in [1, max_side]."""
        return self.int(1, self.max_side)

    def shape(self, min_dims: int = 1, max_dims: int = 4, max_side: int | None = None) -> list:
        """A shape of min_dims..max_dims dims (padded to 4) of at most max_elements elements."""
        m = self.max_side if max_side is None else max_side
        n = self.int(min_dims, max_dims)
        ne = ne4([self.int(1, m) for _ in range(n)])
        for i in range(3, -1, -1):
            while int(np.prod(ne)) > self.max_elements and ne[i] > 1:
                ne[i] = max(1, ne[i] // 2)
        return ne

    def reshaped(self, n: int) -> list:
        """A 4-entry shape holding n elements."""
        ne = []
        for _ in range(3):
            divs = [k for k in range(1, n + 1) if n % k == 0]
            k = self.choice(divs)
            ne.append(k)
            n //= k
        return ne + [n]

    def divisor(self, ne) -> list:
        """A shape tiling ne (each entry divides ne's): src1 of a broadcast binary op."""
        return [self.choice([k for k in range(1, x + 1) if x % k == 0]) if self.coin(40) else x for x in ne4(ne)]

    def multiple(self, ne, max_factor: int = 2) -> list:
        return [x * (self.int(1, max_factor) if self.coin(40) else 1) for x in ne4(ne)]

    # -- tensors ----------------------------------------------------------------------------------------
    def tensor(self, type=F32, ne=None, *, domain: str = "any", contiguous: bool = False, accept=None,
               new: bool = False, param=None, max_dims: int = 4, shared: bool = True):
        """A tensor of `type` (shape ne when given, else any shape of up to max_dims dims): an earlier
        tensor of the graph when one fits (and `new` is false), otherwise a new leaf with a random
        layout (contiguous when asked) and random values from `domain` (see DOMAINS). When the graph
        is differentiated, a new F32 leaf is a parameter unless `param` is False. A new leaf goes to
        the pool for later ops unless `shared` is False (cpy's destination, which cpy writes over)."""
        want = ne4(ne) if ne is not None else None
        if want is not None and int(np.prod(want)) > 4 * self.max_elements:
            raise GraphError(f"NodeDraw: {want} is too large for this graph ({self.max_elements} elements)")
        if not new:
            cands = [t for t in self.pool if t.type == type and (want is None or list(t.ne) == want)
                     and (not contiguous or TN.is_contiguous(t)) and (accept is None or accept(t))
                     and (self._domain.get(id(t)) == domain
                          or (domain == "any" and not (self.backward and self._domain.get(id(t)) == "mask")))
                     and (want is not None or max_dims >= 4 or all(x == 1 for x in t.ne[max_dims:]))
                     and (param is not False or not self._depends_on_params(t))]
            if cands and self.coin(self.reuse):
                return self.choice(cands)
        for _ in range(8):
            shape = want if want is not None else self.shape(1, max_dims)
            layout = CONTIGUOUS if contiguous or T.is_quantized(type) else self._layout()    # whole rows of blocks
            t = self._leaf(type, shape, layout, domain, param, shared)
            if accept is None or accept(t):
                return t
        raise GraphError(f"NodeDraw: no new {T.type_name(type)} leaf passes the sampler's test")

    def f32(self, ne=None, **kw):
        return self.tensor(F32, ne, **kw)

    def i32(self, ne, lo: int, hi: int):
        """A new I32 leaf of shape ne with values in [lo, hi] (contiguous or a strided view)."""
        layout = CONTIGUOUS if self.coin(70) else self._layout(("strided",))
        seed = self._draw(st.integers(0, 2**32 - 1))
        values = np.random.default_rng(seed).integers(lo, hi + 1, size=tuple(ne4(ne)[::-1]))
        t = make_tensor(self.ctx, ne4(ne), layout, values.astype(np.int32), type=I32)
        self._new_leaf(t, "index", False)
        return t

    def _layout(self, kinds=None):
        kinds = tuple(kinds or self.layout_kinds)
        if "contiguous" in kinds and self.coin(50):
            return CONTIGUOUS
        return self._draw(layouts(kinds=kinds, max_pad=1))

    def _leaf(self, type_, ne, layout, domain, param, shared=True):
        seed = self._draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        if type_ == I32:
            v = np.floor(DOMAINS["any"](rng, tuple(ne[::-1])) * 4)
        else:
            v = DOMAINS["special" if domain == "any" and self.specials else domain](rng, tuple(ne[::-1]))
        with np.errstate(over="ignore"):        # special values beyond F16's range become inf
            v = v.astype(np.float32 if T.is_quantized(type_) else T.traits(type_).dtype)
        t = make_tensor(self.ctx, ne, layout, v, type=type_)
        if param is None:       # (no parameter holds -inf: its gradient would be -inf * 0)
            param = self.backward and type_ == F32 and domain != "mask" and self.coin(70)
        self._new_leaf(t, domain, param and type_ == F32, shared)
        return t

    def _new_leaf(self, t, domain, param, shared=True):
        owner = t.view_src if t.view_src is not None else t
        owner.name = owner.name or f"x{len(self.leaves)}"
        self.leaves.append(owner)
        self._domain[id(t)] = domain
        if param:
            set_param(self.ctx, owner)
            owner.name = f"p{len(self.params)}"
            self.params.append(owner)
        if shared:
            self.pool.append(t)

    def _depends_on_params(self, t) -> bool:
        stack, seen = [t], set()
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            if x.flags & TN.FLAG_PARAM:
                return True
            stack.extend(s for s in x.src if s is not None)
            if x.view_src is not None:
                stack.append(x.view_src)
        return False

    # -- in-place ---------------------------------------------------------------------------------------
    def shares_bytes(self, a, b) -> bool:
        oa, sa, ea = byte_region(a)
        ob, sb, eb = byte_region(b)
        return oa == ob and sa < eb and sb < ea

    def writable(self, t) -> bool:
        """t's elements are distinct bytes (a kernel may write through it)."""
        return not region_overlaps(t.ne, t.nb, T.type_size(t.type))

    def inplace(self, target, *others) -> bool:
        """Whether to draw the _inplace form writing over `target` while reading `others`: never when
        differentiating, and only when no other operand shares target's bytes laid out differently
        (the result would then depend on the kernel's element order) and target's elements are
        distinct bytes."""
        if self.backward or not self.writable(target):
            return False
        for o in others:
            if o is not None and self.shares_bytes(target, o) and not (
                    byte_region(o) == byte_region(target) and list(o.nb) == list(target.nb)
                    and list(o.ne) == list(target.ne)):
                return False
        return self.coin(30)


@dataclass
class DrawnGraph:
    """A graph drawn by graphs(): its context, the forward `graph`, its `outputs` (nodes no other
    node reads), the drawn op `nodes` in build order, the `leaves` and, with backward=True,
    `params`, the scalar `loss` and its `backward_graph` (seed it with seed_loss())."""
    ctx: object
    graph: object
    outputs: list
    nodes: list
    leaves: list
    params: list = field(default_factory=list)
    loss: object = None
    backward_graph: object = None

    def seed_loss(self):
        """graph_reset the backward graph and set the loss's gradient to 1."""
        graph_reset(self.backward_graph)
        if self.loss.grad is not None:          # None: no parameter reaches the loss
            TN.set_f32(self.loss.grad, 1.0)

    def __repr__(self):
        head = f"DrawnGraph({len(self.nodes)} drawn nodes, {self.graph.n_nodes} graph nodes, {len(self.leaves)} leaves"
        if self.loss is not None:
            head += f", {len(self.params)} params, loss '{self.loss.name}', backward graph of " \
                    f"{self.backward_graph.n_nodes} nodes"
        return head + ")\n" + graph_text(self.graph)


def family_ops(module) -> list:
    """Names of the ops whose sampler (and reference) live in `module`: an op module, or its short
    name ('elementwise', 'attention', ...). For an op family's own random-graph test."""
    name = module if isinstance(module, str) else module.__name__
    if "." not in name:
        name = f"graphcore.ops.{name}"
    return [op.name for op in OPS if op.sample is not None and op.sample.__module__ == name]


def _codes(ops, backward):
    if ops is None:
        names = [op.name for op in OPS if op.sample is not None]
        if backward:
            names = [n for n in names if n not in BACKWARD_EXCLUDED and BY_NAME[n].backward is not None]
    else:
        names = [o if isinstance(o, str) else OPS[o].name for o in ops]
    codes = []
    for n in names:
        op = BY_NAME.get(n.upper())
        if op is None:
            raise ValueError(f"graphs: unknown op {n!r}")
        if op.sample is None:
            raise ValueError(f"graphs: op {op.name} has no sampler (see graphcore.ops.registry.sample_of)")
        codes.append(op.code)
    if not codes:
        raise ValueError("graphs: no ops to draw from")
    return codes


def _outputs(nodes):
    consumed = set()
    stack, seen = list(nodes), set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for s in t.src:
            if s is not None:
                consumed.add(id(s))
                stack.append(s)
    return [t for t in nodes if id(t) not in consumed]


@st.composite
def graphs(draw, ops=None, max_nodes: int = 6, min_nodes: int = 1, backward: bool = False, max_side=None,
           sizes=("tiny", "tiny", "tiny", "medium", "medium", "matrix", "wide"), specials: int = 15,
           layout_kinds=LAYOUT_KINDS, mem_size=None, first=None):
    """A random, well-typed DAG of registered ops (a DrawnGraph). `ops`: op names or codes to draw
    from (default: every op with a sampler; with backward=True, every differentiable one).
    Leaves get random layouts and values; the context is a sentinel_context, so a kernel reading
    or writing outside a tensor's elements shows. Each graph draws a size class from `sizes`
    (see SIZES: tiny, medium, matrix, wide), or uses `max_side` when given; in `specials`
    percent of forward graphs new leaves hold special values (inf, NaN, -0, subnormals). With
    backward=True the graph also gets parameters, a random scalar loss and its backward graph
    (examples whose backward graph cannot be built are rejected). `first`: an op (name or code)
    drawn first, whatever `ops` says (to cover every op for sure: parametrize a test over the ops)."""
    codes = _codes(ops, backward)
    first = _codes([first], False)[0] if first is not None else None
    if max_side is not None:
        side, max_elements = max_side, max_side ** 4
    else:
        side, max_elements = SIZES[draw(st.sampled_from(tuple(sizes)))]
    ctx = sentinel_context(mem_size or max(1 << 18, (360 if backward else 120) * 4 * max_elements))
    with_specials = not backward and draw(st.integers(0, 99)) < specials
    d = NodeDraw(draw, ctx, backward, side, layout_kinds, max_elements=max_elements, specials=with_specials)
    n = draw(st.integers(min_nodes, max_nodes))
    # ops are drawn as (rotation + k) % len: hypothesis favours small k, the per-graph rotation
    # spreads that over every op (and both shrink toward the first op)
    rotation = draw(st.integers(0, len(codes) - 1))
    nodes = []
    attempts = 0
    while len(nodes) < n and attempts < 3 * n + 3:
        attempts += 1
        if first is not None and not nodes:
            d.op = first
        else:
            d.op = codes[(rotation + draw(st.integers(0, len(codes) - 1))) % len(codes)]
        try:
            t = OPS[d.op].sample(d)
        except (GraphError, OutOfMemoryError):
            continue
        nodes.append(t)
        d.pool.append(t)
    assume(nodes)
    outputs = _outputs(nodes)
    g = new_graph_custom(ctx, 4096, False)
    if not backward:
        for t in outputs:
            build_forward_expand(g, t)
        return DrawnGraph(ctx, g, outputs, nodes, d.leaves)
    try:
        loss = _loss(d, outputs, nodes)
        for t in outputs:
            build_forward_expand(g, t)
        build_forward_expand(g, loss)
        gb = build_backward(ctx, g)
    except (GraphError, OutOfMemoryError):
        assume(False)
    return DrawnGraph(ctx, g, outputs, nodes, d.leaves, d.params, loss, gb)


def _loss(d, outputs, nodes):
    """A random scalar loss over the F32 outputs (sum, weighted sum, sum of squares, row means,
    cross entropy), summed when there are several."""
    gc_nelements = TN.nelements
    ys = [t for t in outputs if t.type == F32] or [t for t in d.pool if t.type == F32][-1:]
    assume(ys)
    loss = None
    for y in ys[:3]:
        kind = d.choice(["sum", "weighted", "sqr", "mean", "cross_entropy"])
        if kind in ("weighted", "cross_entropy") and gc_nelements(y) > 4 * d.max_elements:
            kind = "sum"
        if kind == "sum":
            part = sum_(d.ctx, y)
        elif kind == "weighted":
            w = d.f32(y.ne, new=True, param=False, domain="positive")
            part = sum_(d.ctx, mul(d.ctx, y, w))
        elif kind == "sqr":
            part = sum_(d.ctx, sqr(d.ctx, y))
        elif kind == "mean":
            part = sum_(d.ctx, mean(d.ctx, y))
        else:
            part = cross_entropy_loss(d.ctx, y, d.f32(y.ne, new=True, param=False, domain="positive"))
        loss = part if loss is None else add(d.ctx, loss, part)
    TN.set_name(loss, "loss")
    return loss
