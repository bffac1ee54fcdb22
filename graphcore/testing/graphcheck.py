"""assert_graph_close: a graph computed by the executor against the numpy references, node by node;
assert_gradients_close: a backward graph's gradients against finite differences of the reference.

    g = gc.new_graph(ctx); gc.build_forward_expand(g, y)
    gc.testing.assert_graph_close(g, n_threads=(1, 2, 4))

What assert_graph_close checks, starting each time from the memory as it was when called:

1. Node by node: the executor computes one node at a time (a one-node graph_view); before each
   node the values of its sources are read from memory, after it the node's value. The op's
   reference on those same source values must match the node's value (normalised MSE within the
   op's tolerance, NaN and inf at the same places; view ops bit for bit), and the node must not
   have written a byte of the arena outside its own elements. Comparing each node on the
   executor's own inputs keeps float32 rounding from piling up along the graph, so any failure
   points at one node: the first diverging node, reported with its index, op, shapes, types,
   sources and both values.
2. Whole graph: graph_compute of the whole graph on each of `n_threads` must leave the very
   same bytes as the node-by-node run (the compiled node loop, its barriers and the thread split
   change nothing), and the same bytes for every thread count. With `split_small` (default) the
   planner's minimum work per task is lowered to one element for the check, so even tiny nodes
   are split across threads.
3. Optionally (`end_to_end=True`), the reference alone evaluates the whole graph from its leaves
   (graphcore.testing.reference, memory mode) and every node's final value must be within
   `end_to_end_nmse` of the executor's: for well-conditioned graphs only.

On success the memory holds the computed graph (as after graph_compute).
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from .. import tensor as TN
from .. import types as T
from ..compiled import graph_compile
from ..graph import Graph, build_forward_expand, graph_view, new_graph_custom
from ..ops.registry import NOT_DIFFERENTIABLE, OP_NONE, OPS, ZERO_GRADIENT
from .compare import element_byte_offsets, nmse
from .reference import Interpreter, is_view_op, reference_value, values4d

__all__ = ["assert_graph_close", "GraphMismatch", "GraphCheck", "small_tasks", "assert_gradients_close",
           "GradientReport", "describe_node"]


class GraphMismatch(AssertionError):
    """assert_graph_close's failure: `index`, `node`, `op` (name), `actual` and `expected` (4-D
    arrays, or None) of the first diverging node, and `what` went wrong."""

    def __init__(self, message, index=None, node=None, actual=None, expected=None, what=""):
        super().__init__(message)
        self.index, self.node, self.actual, self.expected, self.what = index, node, actual, expected, what
        self.op = OPS[node.op].name if node is not None else None


@dataclass
class GraphCheck:
    """What assert_graph_close checked: nodes (by op name), the worst nmse seen per op."""
    n_nodes: int = 0
    n_computed: int = 0
    ops: dict = field(default_factory=dict)          # op name -> count
    worst_nmse: dict = field(default_factory=dict)   # op name -> worst nmse against the reference
    n_threads: tuple = ()


@contextlib.contextmanager
def small_tasks():
    """Plan as if every element were worth a task: the planner's MIN_ELEMENTS_PER_TASK and
    MIN_FLOPS_PER_TASK set to 1 in every op module while inside, so small nodes split across
    threads (the kernels' ith/nth splits get tested on small tensors)."""
    saved = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("graphcore.ops"):
            continue
        for attr in ("MIN_ELEMENTS_PER_TASK", "MIN_FLOPS_PER_TASK"):
            if isinstance(getattr(mod, attr, None), int):
                saved.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, 1)
    try:
        yield
    finally:
        for mod, attr, v in saved:
            setattr(mod, attr, v)


# -- reports -----------------------------------------------------------------------------------------
def _fmt_array(a, limit=64) -> str:
    if a is None:
        return "    (none)"
    a = np.asarray(a)
    a2 = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    with np.printoptions(threshold=limit, edgeitems=3, precision=6, linewidth=110):
        body = np.array2string(a2.squeeze(0) if a2.shape[0] == 1 else a2)
    return "\n".join("    " + line for line in body.splitlines())


def describe_node(t, index=None) -> str:
    """'node 3 MUL 'name' ne=[..] nb=[..] f32' (for reports)."""
    head = f"node {index} " if index is not None else ""
    view = f" (view of '{t.view_src.name}' +{t.view_offs})" if t.view_src is not None else ""
    return (f"{head}{OPS[t.op].name} '{t.name}' ne={list(t.ne)} nb={list(t.nb)} {T.type_name(t.type)}{view}")


def _report(g, i, what, actual, expected, srcs=None, extra="") -> GraphMismatch:
    node = g.nodes[i]
    lines = [f"assert_graph_close: first diverging node: {what}", f"  {describe_node(node, i)} "
             f"(of {g.n_nodes} nodes)"]
    for j, s in enumerate(node.src):
        if s is None:
            continue
        lines.append(f"  src[{j}]: {describe_node(s)}")
        if srcs is not None and srcs[j] is not None and srcs[j].size <= 64:
            lines.append(_fmt_array(srcs[j], 64))
    if extra:
        lines.append("  " + extra)
    lines.append("  executor:")
    lines.append(_fmt_array(actual))
    lines.append("  reference:" if "reference" in what or expected is None else "  expected:")
    lines.append(_fmt_array(expected))
    return GraphMismatch("\n".join(lines), i, node, actual, expected, what)


def _input_scale(srcs) -> float:
    """The largest finite magnitude among the source values (0 when none)."""
    m = 0.0
    for x in srcs or ():
        if x is not None and x.size and x.dtype.kind == "f":
            v = np.abs(x[np.isfinite(x)].astype(np.float64))
            m = max(m, float(v.max()) if v.size else 0.0)
    return m


# errors below this times the inputs' magnitude are float64 rounding noise (a result that cancels to
# almost nothing, computed in float64 by both the kernel and the reference in a different order)
FLOAT64_NOISE = 1e-12


def _compare(node, actual, expected, tol, scale=0.0):
    """(None, nmse) when actual matches expected for node's type, else (message, nmse). `scale`:
    the inputs' magnitude, for the float64-noise floor."""
    if node.type == T.TYPE_I32 or tol == 0:
        a = np.asarray(actual)
        e = np.asarray(expected)
        same = (a.view(f"u{a.dtype.itemsize}") == e.astype(a.dtype).view(f"u{a.dtype.itemsize}")) \
            if node.type != T.TYPE_I32 else (a == e)
        if node.type != T.TYPE_I32:         # floats bit for bit, except that every NaN is the same
            same |= np.isnan(a.astype(np.float64)) & np.isnan(e.astype(np.float64))
        if not same.all():
            idx = tuple(int(x) for x in np.argwhere(~same)[0])
            return f"{int((~same).sum())} of {same.size} elements differ; first at (i3, i2, i1, i0)={idx}: " \
                   f"executor {a[idx]!r}, reference {e[idx]!r}", 0.0
        return None, 0.0
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    an, en = np.isnan(a), np.isnan(e)
    if not np.array_equal(an, en):
        idx = tuple(int(x) for x in np.argwhere(an != en)[0])
        return f"NaN in one and not the other at (i3, i2, i1, i0)={idx}: executor {a[idx]}, reference {e[idx]}", \
            math.inf
    ai, ei = np.isinf(a), np.isinf(e)
    bad = (ai != ei) | (ai & ei & (np.signbit(a) != np.signbit(e)))
    if bad.any():
        idx = tuple(int(x) for x in np.argwhere(bad)[0])
        return f"inf mismatch at (i3, i2, i1, i0)={idx}: executor {a[idx]}, reference {e[idx]}", math.inf
    err = nmse(a, e)
    if not err <= tol:
        diff = np.where(np.isfinite(a) & np.isfinite(e), np.abs(a - e), 0.0)
        if diff.size and float(diff.max()) <= FLOAT64_NOISE * scale:
            return None, err
        idx = tuple(int(x) for x in np.unravel_index(np.argmax(diff), diff.shape))
        return f"NMSE {err:.3e} > {tol:.1e}; worst at (i3, i2, i1, i0)={idx}: executor {float(a[idx])!r}, " \
               f"reference {float(e[idx])!r}", err
    return None, err


# -- running the executor ---------------------------------------------------------------------------------
class _Arenas:
    """The arenas a graph's tensors live in (the part their contexts have handed out, plus a
    margin): snapshot, restore, compare."""

    def __init__(self, tensors):
        used = {}
        for t in tensors:
            if not t.has_data:
                raise TN.GraphError(f"assert_graph_close: {TN.describe(t)} has no data")
            end = max(t.ctx.offs, t._offs + TN.nbytes(t)) + 256
            buf, n = used.get(id(t._buf), (t._buf, 0))
            used[id(t._buf)] = (buf, max(n, end))
        self.arenas = {k: buf[:min(n, buf.size)] for k, (buf, n) in used.items()}

    def snapshot(self):
        return {k: a.copy() for k, a in self.arenas.items()}

    def restore(self, snap):
        for k, a in self.arenas.items():
            a[...] = snap[k]

    def same(self, snap) -> bool:
        return all(np.array_equal(a, snap[k]) for k, a in self.arenas.items())


def _compute(g, n_threads, split_small):
    with small_tasks() if split_small and n_threads > 1 else contextlib.nullcontext():
        compiled = graph_compile(g, n_threads)
    compiled()


def _as_graph(g):
    """A Graph from a Graph, a DrawnGraph (its forward graph), a tensor or a list of tensors."""
    if isinstance(g, Graph):
        return g
    if isinstance(getattr(g, "graph", None), Graph):      # a DrawnGraph from graphs()
        if g.backward_graph is None:
            return g.graph
        g.seed_loss()                                     # the backward graph holds the forward's nodes
        return g.backward_graph
    roots = [g] if isinstance(g, TN.Tensor) else list(g)
    out = new_graph_custom(roots[0].ctx, 1 << 16, False)
    for r in roots:
        build_forward_expand(out, r)
    return out


def assert_graph_close(g, n_threads=(1, 2, 4), *, nmse_tol: dict | None = None, split_small: bool = True,
                       same_bits: bool = True, check_writes: bool = True, end_to_end: bool = False,
                       end_to_end_nmse: float = 1e-5) -> GraphCheck:
    """Compute g (a Graph, a DrawnGraph, a tensor, or a list of tensors) with the executor and check every node
    against its op's numpy reference; see the module's docs. `nmse_tol` overrides per-op
    tolerances ({"MUL_MAT": 1e-5}); `same_bits`: every thread count gives the same bytes;
    `check_writes`: no node writes outside its own elements. Raises GraphMismatch (an
    AssertionError) naming the first diverging node; returns a GraphCheck."""
    g = _as_graph(g)
    n_threads = tuple(n_threads) if not isinstance(n_threads, int) else (n_threads,)
    if not n_threads:
        raise ValueError("assert_graph_close: n_threads is empty")
    tensors = list(g.leafs) + list(g.nodes) + [s for n in g.nodes for s in n.src if s is not None]
    arenas = _Arenas(tensors)
    start = arenas.snapshot()
    check = GraphCheck(n_nodes=g.n_nodes, n_threads=n_threads)
    tols = {op.name: op.reference_nmse for op in OPS}
    tols.update(nmse_tol or {})

    # 1. node by node, each against its reference on the executor's own inputs
    n0 = n_threads[0]
    per_node = _node_by_node(g, n0, split_small, arenas, check, tols, check_writes)
    after_nodes = arenas.snapshot()

    # 2. the whole graph, at every thread count: the same bytes
    for n in n_threads:
        arenas.restore(start)
        _compute(g, n, split_small)
        if not arenas.same(after_nodes):
            if n == n0 or same_bits:
                _whole_graph_mismatch(g, n, n0, split_small, arenas, start, per_node)
    arenas.restore(after_nodes)

    # 3. optionally: the reference alone, from the leaves
    if end_to_end:
        arenas.restore(start)
        ev = Interpreter(g, "memory").run()
        arenas.restore(after_nodes)
        for i, node in enumerate(g.nodes):
            if node.type == T.TYPE_I32:
                continue
            msg, _ = _compare(node, values4d(node), ev.final(node), end_to_end_nmse)
            if msg:
                raise _report(g, i, f"end to end (the reference evaluated alone from the leaves): {msg}",
                              np.array(values4d(node)), ev.final(node))
    return check


def _node_by_node(g, n_threads, split_small, arenas, check, tols, check_writes):
    values = []
    for i, node in enumerate(g.nodes):
        op = OPS[node.op]
        check.ops[op.name] = check.ops.get(op.name, 0) + 1
        srcs = [None if s is None else np.array(values4d(s)) for s in node.src]
        if is_view_op(node):
            actual = np.array(values4d(node))
            if node.op != OP_NONE:
                expected = reference_value(node, srcs)
                if expected is not None:
                    msg, _ = _compare(node, actual, expected, 0)
                    if msg:
                        raise _report(g, i, f"view op against its reference: {msg}", actual, expected, srcs)
            values.append(actual)
            continue
        before = arenas.snapshot() if check_writes else None
        _compute(graph_view(g, i, i + 1), n_threads, split_small)
        actual = np.array(values4d(node))
        if check_writes:
            _check_writes(g, i, node, arenas, before, actual)
        expected = reference_value(node, srcs)
        msg, err = _compare(node, actual, expected, tols[op.name], _input_scale(srcs))
        if msg:
            raise _report(g, i, f"executor against the reference (n_threads={n_threads}): {msg}", actual,
                          expected, srcs)
        check.n_computed += 1
        check.worst_nmse[op.name] = max(check.worst_nmse.get(op.name, 0.0), err)
        values.append(actual)
    return values


def _check_writes(g, i, node, arenas, before, actual):
    for k, a in arenas.arenas.items():
        changed = np.flatnonzero(a != before[k])
        if changed.size == 0:
            continue
        if k == id(node._buf):
            mask = np.zeros(node._buf.size, dtype=bool)
            mask[element_byte_offsets(node)] = True
            stray = changed[~mask[changed]]
        else:
            stray = changed
        if stray.size:
            raise _report(g, i, f"wrote {stray.size} bytes outside its own elements (first at arena byte "
                          f"{int(stray[0])}; the node's elements start at byte {node._offs})", actual, None)


def _whole_graph_mismatch(g, n, n0, split_small, arenas, start, per_node):
    """The whole-graph run at n threads left other bytes than the node-by-node run at n0: find
    the first node that differs, running node by node at n threads."""
    arenas.restore(start)
    for i, node in enumerate(g.nodes):
        if not is_view_op(node):
            _compute(graph_view(g, i, i + 1), n, split_small)
        v = np.array(values4d(node))
        if v.tobytes() != per_node[i].tobytes():
            raise _report(g, i, f"node by node at n_threads={n} differs from n_threads={n0} (results must be "
                          f"the same bits for any thread count)", v, per_node[i])
    raise GraphMismatch(f"assert_graph_close: graph_compute of the whole graph at n_threads={n} left different "
                        f"bytes than computing it node by node (every node agrees when computed alone): the "
                        f"executor's node loop, barriers or plan differ from one-node runs")


# -- gradients against finite differences of the reference ------------------------------------------------------
@dataclass
class GradientReport:
    """What assert_gradients_close compared."""
    checks: int = 0             # directional and per-element comparisons made
    skipped: int = 0            # those skipped: a kink or jump within eps, or a non-finite loss
    worst: float = 0.0          # worst |analytic - numeric| / tolerance
    scale: float = 0.0          # the gradients' magnitude used for the absolute tolerance
    details: list = field(default_factory=list)


def assert_gradients_close(loss, params=None, backward_graph=None, *, eps: float = 1e-4, rtol: float | None = None,
                           atol: float | None = None, n_directions: int = 3, per_param: int = 3,
                           seed: int = 0) -> GradientReport:
    """Check a backward graph's gradients of `loss` with respect to `params` against central
    finite differences of the loss evaluated by the numpy reference in float64
    (graphcore.testing.reference, float64 mode: no float32 rounding noise in the differences).

    With `backward_graph` (its loss.grad seeded, as DrawnGraph.seed_loss or ggml_opt do), the
    analytic gradients are that graph evaluated by the reference in float64 too: this checks the
    backward rules' mathematics, tightly (rtol, atol default 1e-5), apart from float32 rounding
    (assert_graph_close checks the executor's float32 computation of the same graph node by
    node). Without it, the analytic gradients are what the executor left in p.grad (compute the
    backward graph first), with float32-sized tolerances (rtol 1e-2, atol 1e-3): float32 rounding
    in a backward graph leaves noise of about 1e-7 times the terms it sums, even where the
    gradient is 0, and more where it cancels.

    Compares the derivative along `n_directions` random directions over all parameters and
    along `per_param` random elements of each. A comparison is skipped where the loss is not
    smooth within eps (the differences at eps and eps/4 disagree by more than the smooth error
    allows: a kink of relu/abs/clamp, a jump nearby, or too much curvature) or not finite. Nodes
    of ops without a derivative (sgn, step, argmax: piecewise constant, their gradient is 0) keep
    their values at the point, as the backward graph assumes: a jump of one of thousands of
    elements within eps would otherwise swamp the difference. Passes when |analytic - numeric| <=
    atol * max(S, 0.1) + rtol * |numeric| (+ the float64 rounding noise of a large loss over the
    step), S the largest derivative seen. Raises AssertionError naming the worst comparison;
    returns a GradientReport.

    `loss` may also be a DrawnGraph of graphs(backward=True): its loss, params and backward graph
    (seeded here) are used."""
    if getattr(loss, "backward_graph", None) is not None and not isinstance(loss, TN.Tensor):
        drawn = loss
        drawn.seed_loss()
        loss, params = drawn.loss, drawn.params if params is None else params
        backward_graph = drawn.backward_graph if backward_graph is None else backward_graph
    if params is None:
        raise TypeError("assert_gradients_close: give the parameters (or a DrawnGraph drawn with backward=True)")
    params = [params] if isinstance(params, TN.Tensor) else list(params)
    interp = Interpreter([loss], "float64")
    x0 = {id(p): p.numpy4d().astype(np.float64) for p in params}
    exact = backward_graph is not None
    if exact:
        ev = Interpreter(backward_graph, "float64").run()
        in_graph = {id(t) for t in ev.nodes + ev.leafs}
        analytic = {id(p): (ev[p.grad] if p.grad is not None and id(p.grad) in in_graph
                            else np.zeros(tuple(p.ne[::-1]))) for p in params}   # not in gb: no path to the loss
    else:
        analytic = {id(p): (p.grad.numpy4d().astype(np.float64) if p.grad is not None
                            else np.zeros(tuple(p.ne[::-1]))) for p in params}
    rtol = rtol if rtol is not None else (1e-5 if exact else 1e-2)
    atol = atol if atol is not None else (1e-5 if exact else 1e-3)
    smooth = 1e-6 if exact else 1e-4          # largest |d(eps) - d(eps/4)| / (|d| + S) still smooth
    rng = np.random.default_rng(seed)

    at_x0 = interp.run()
    frozen = {n: at_x0[n] for n in interp.nodes if OPS[n.op].backward in (NOT_DIFFERENTIABLE, ZERO_GRADIENT)}

    def f(step, direction):
        vals = dict(frozen)
        vals.update({p: x0[id(p)] + step * direction[id(p)] for p in params if id(p) in direction})
        with np.errstate(all="ignore"):
            return float(interp.run(vals)[loss].reshape(-1)[0])

    directions = []
    for _ in range(n_directions):
        directions.append(("direction", {id(p): rng.standard_normal(x0[id(p)].shape) for p in params}))
    for pi, p in enumerate(params):
        n = x0[id(p)].size
        for k in rng.choice(n, size=min(per_param, n), replace=False):
            v = np.zeros(n)
            v[k] = 1.0
            idx = tuple(int(x) for x in np.unravel_index(int(k), x0[id(p)].shape))
            directions.append((f"param {pi} '{p.name}' element (i3, i2, i1, i0)={idx}",
                               {id(p): v.reshape(x0[id(p)].shape)}))
    rows = []
    for what, v in directions:
        ana = float(sum(np.sum(analytic[k] * d) for k, d in v.items()))
        fs = [f(eps, v), f(-eps, v), f(eps / 4, v), f(-eps / 4, v)]
        g1 = (fs[0] - fs[1]) / (2 * eps)
        g2 = (fs[2] - fs[3]) / (eps / 2)
        # float64 rounding of the loss, over the step: a large loss leaves noise in the difference
        noise = 8 * np.finfo(np.float64).eps * max(abs(x) for x in fs) / (eps / 2) if all(
            math.isfinite(x) for x in fs) else math.inf
        rows.append((what, ana, g1, g2, noise))
    report = GradientReport()
    scale = max([abs(r[1]) for r in rows] + [abs(r[3]) for r in rows if math.isfinite(r[3])] + [0.0])
    report.scale = scale
    worst = None
    for what, ana, g1, g2, noise in rows:
        if not (math.isfinite(g1) and math.isfinite(g2)) or abs(g1 - g2) > smooth * (abs(g2) + scale) + 4 * noise:
            report.skipped += 1
            report.details.append((what, ana, g2, "skipped"))
            continue
        report.checks += 1
        tol = atol * max(scale, 0.1) + rtol * abs(g2) + 2 * noise
        score = abs(ana - g2) / tol if math.isfinite(ana) else math.inf
        report.details.append((what, ana, g2, score))
        if worst is None or score > worst[0]:
            worst = (score, what, ana, g2, tol)
    report.worst = worst[0] if worst else 0.0
    if worst and worst[0] > 1.0:
        score, what, ana, num, tol = worst
        source = "backward graph in float64" if exact else "executor's p.grad"
        lines = [f"assert_gradients_close: analytic gradient ({source}) differs from finite "
                 f"differences of the float64 reference along {what}: analytic {ana:.9g}, numeric {num:.9g}, "
                 f"|diff| {abs(ana - num):.3g} > tolerance {tol:.3g} (eps {eps}, scale {scale:.3g})"]
        for pi, p in enumerate(params):
            lines.append(f"  param {pi}: {describe_node(p)}")
        raise AssertionError("\n".join(lines))
    return report
