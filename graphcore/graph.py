"""Computation graphs: nodes in ggml's visit order (depth first, src[0] first), leafs kept apart."""
from __future__ import annotations

import threading

from . import tensor as TN
from .errors import GraphError
from .ops.registry import OP_NONE

DEFAULT_GRAPH_SIZE = 2048  # ggml's GGML_DEFAULT_GRAPH_SIZE


class Graph:
    """ggml_cgraph: `nodes` (computed tensors and parameters, in execution order), `leafs`
    (constants and inputs), and, for graphs built with grads, the gradient of each node."""

    def __init__(self, size: int = DEFAULT_GRAPH_SIZE, grads: bool = False):
        if not isinstance(size, int) or size <= 0:
            raise GraphError(f"new_graph_custom: size must be a positive int, got {size!r}")
        self.size = size
        self._nodes = TN.ReadOnlyList()
        self.leafs: list = []
        self.grads = [] if grads else None
        self.visited: set = set()
        self._version = 0          # bumped on every change, so a plan can tell it is stale
        self._lowered_cache = None  # the Lowered of the last plan computed (planner.lower), and its barrier slots
        self._compute_lock = threading.Lock()   # computes of one graph run one at a time (executor)
        self._compiled = {}        # n_threads -> CompiledGraph kept for repeated optimizer calls (optim)
        self.computed_version = -1  # the version whose nodes graph_compute last marked computed

    @property
    def nodes(self):
        """The computed tensors in execution order (a read-only list; assigning a new list is allowed
        and makes existing plans stale)."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes):
        nodes = list(nodes)
        TN.check_tensor("Graph.nodes", *nodes)
        self._nodes = TN.ReadOnlyList(nodes)
        self._changed()

    @property
    def version(self) -> int:
        return self._version

    @property
    def n_nodes(self) -> int:
        return len(self._nodes)

    @property
    def n_leafs(self) -> int:
        return len(self.leafs)

    def _changed(self):
        self._version += 1

    def __repr__(self):
        return f"<graphcore.Graph {self.n_nodes} nodes, {self.n_leafs} leafs, size {self.size}>"


def new_graph(ctx) -> Graph:
    """An empty graph of DEFAULT_GRAPH_SIZE (2048) nodes, without gradients (ggml_new_graph).
    ctx is kept for ggml's signature: the graph lives outside the arena."""
    return Graph(DEFAULT_GRAPH_SIZE, False)


def new_graph_custom(ctx, size: int = DEFAULT_GRAPH_SIZE, grads: bool = False) -> Graph:
    """An empty graph of at most `size` nodes and `size` leafs, with a gradient slot per node when grads
    (ggml_new_graph_custom). GraphError when size is not a positive int."""
    return Graph(size, grads)


def post_order(roots, seen: set):
    """The tensors reachable from `roots` whose ids are not in `seen`, each after its sources
    (ggml_visit_parents' order: depth first, src[0] first), without recursion (a 10,000-node
    chain must not hit Python's limit). Their ids are added to `seen` as they are found."""
    for root in roots:
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, 0)]
        while stack:
            node, i = stack[-1]
            if i < len(node.src):
                stack[-1] = (node, i + 1)
                s = node.src[i]
                if s is not None and id(s) not in seen:
                    seen.add(id(s))
                    stack.append((s, 0))
                continue
            stack.pop()
            yield node


def _visit(g: Graph, root, nodes: list) -> None:
    """ggml_visit_parents: root and what it depends on, not yet in g, appended in execution order;
    new nodes go to `nodes` (g's nodes so far, as a plain list)."""
    for node in post_order((root,), g.visited):
        if node.op == OP_NONE and node.grad is None:
            if g.n_leafs >= g.size:
                raise GraphError(f"build_forward_expand: graph size {g.size} exceeded by leafs "
                                 f"(use new_graph_custom with a larger size)")
            if not node.name:
                node.name = f"leaf_{g.n_leafs}"
            g.leafs.append(node)
        else:
            if len(nodes) >= g.size:
                raise GraphError(f"build_forward_expand: graph size {g.size} exceeded "
                                 f"(use new_graph_custom with a larger size)")
            if not node.name:
                node.name = f"node_{len(nodes)}"
            nodes.append(node)
            if g.grads is not None:
                g.grads.append(node.grad)


def build_forward_expand(g: Graph, tensor) -> None:
    """Add `tensor` and everything it depends on (not yet in g) to g, in execution order
    (ggml_build_forward_expand). GraphError when g's size is exceeded; g is then left as it was."""
    if not isinstance(g, Graph):
        raise GraphError(f"build_forward_expand: expected a Graph, got {type(g).__name__}")
    TN.check_tensor("build_forward_expand", tensor)
    if id(tensor) in g.visited:
        return
    n0, l0, v0 = g.n_nodes, g.n_leafs, set(g.visited)
    nodes = list(g.nodes)
    try:
        _visit(g, tensor, nodes)
    except GraphError:
        # leave the graph as it was: no half-added tensors
        del g.leafs[l0:]
        if g.grads is not None:
            del g.grads[n0:]
        g.visited = v0
        raise
    if len(nodes) != n0 or g.n_leafs != l0:
        g._nodes = TN.ReadOnlyList(nodes)
        g._changed()


def build_forward(tensor) -> Graph:
    """A new graph (DEFAULT_GRAPH_SIZE) holding tensor and everything it depends on (ggml_build_forward)."""
    g = Graph(DEFAULT_GRAPH_SIZE, False)
    build_forward_expand(g, tensor)
    return g


def graph_view(g: Graph, i0: int, i1: int) -> Graph:
    """A graph holding nodes i0..i1-1 of g (no leafs, no grads), as ggml_graph_view."""
    if not 0 <= i0 <= i1 <= g.n_nodes:
        raise GraphError(f"graph_view: range [{i0}, {i1}) outside 0..{g.n_nodes}")
    v = Graph(max(1, i1 - i0), False)
    v._nodes = TN.ReadOnlyList(g.nodes[i0:i1])
    v.visited = {id(n) for n in v.nodes}
    return v


def graph_cpy(src: Graph, dst: Graph) -> None:
    """Copy src's nodes, leafs and grads into dst (ggml_graph_cpy). GraphError when dst is smaller
    or src has gradients that dst (built without grads) cannot hold."""
    if dst.size < src.n_nodes or dst.size < src.n_leafs:
        raise GraphError(f"graph_cpy: destination size {dst.size} cannot hold {src.n_nodes} nodes "
                         f"and {src.n_leafs} leafs")
    if src.grads is not None and dst.grads is None and any(x is not None for x in src.grads):
        raise GraphError("graph_cpy: source has gradients but the destination graph was built without grads")
    dst._nodes = TN.ReadOnlyList(src.nodes)
    dst.leafs = list(src.leafs)
    if dst.grads is not None:
        dst.grads = list(src.grads) if src.grads is not None else [None] * src.n_nodes
    dst.visited = set(src.visited)
    dst._changed()


def graph_dup(ctx, g: Graph) -> Graph:
    """A new graph of g's size (and grads) holding g's nodes, leafs and grads (ggml_graph_dup)."""
    d = Graph(g.size, g.grads is not None)
    graph_cpy(g, d)
    return d


def graph_clear(g: Graph) -> None:
    """Remove every node, leaf and grad from g, keeping its size (ggml_graph_clear)."""
    g._nodes, g.leafs, g.visited = TN.ReadOnlyList(), [], set()
    if g.grads is not None:
        g.grads = []
    g._changed()


def graph_node(g: Graph, i: int):
    """ggml_graph_node: node i; negative i counts from the end."""
    return g.nodes[i]


def graph_get_tensor(g: Graph, name: str):
    """The first leaf, then node, of g named `name`, or None (ggml_graph_get_tensor)."""
    for t in g.leafs:
        if t.name == name:
            return t
    for t in g.nodes:
        if t.name == name:
            return t
    return None
