"""graph_dump_dot: a Graphviz picture of a graph, in ggml's style."""
from __future__ import annotations

from . import tensor as TN
from . import types as T
from .ops.registry import op_symbol


def _esc(s: str) -> str:
    return (s.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\{").replace("}", "\\}")
            .replace("<", "\\<").replace(">", "\\>").replace("|", "\\|"))


def _ne(t) -> str:
    return ", ".join(str(x) for x in t.ne[:TN.n_dims(t)])


def _leaf_values(t) -> str:
    if TN.nelements(t) >= 5 or not t.has_data or t.ctx.freed:
        return ""
    vals = [TN.get_i32_1d(t, i) if t.type == T.TYPE_I32 else round(TN.get_f32_1d(t, i), 6)
            for i in range(TN.nelements(t))]
    return " | " + _esc(", ".join(str(v) for v in vals))


def graph_dot(gb, gf=None) -> str:
    """The dot text of gb. With gf (the forward graph), nodes of gb that gf lacks are drawn light blue."""
    ids = {}

    def nid(t):
        return ids.setdefault(id(t), f"t{len(ids)}")

    fwd = {id(n) for n in gf.nodes} if gf is not None else None
    lines = ["digraph G {", "  newrank = true;", "  rankdir = TB;"]
    for i, n in enumerate(gb.nodes):
        if n.flags & TN.FLAG_PARAM:
            color = "yellow"
        elif n.grad is not None:
            color = "green" if fwd is None or id(n) in fwd else "lightblue"
        else:
            color = "white" if fwd is None or id(n) in fwd else "lightblue"
        grad = " | <g>grad" if n.grad is not None else ""
        label = (f"{_esc(n.name)} ({T.type_name(n.type)}) | {i} [{_ne(n)}] | "
                 f"<x>{_esc(op_symbol(n.op))}{grad}")
        lines.append(f'  "{nid(n)}" [ style = filled; fillcolor = {color}; shape = record; label = "{label}"; ];')
    for i, n in enumerate(gb.leafs):
        label = f"<x>{_esc(n.name)} ({T.type_name(n.type)}) | [{_ne(n)}]{_leaf_values(n)}"
        lines.append(f'  "{nid(n)}" [ style = filled; fillcolor = pink; shape = record; label = "{label}"; ];')
    for n in list(gb.nodes) + list(gb.leafs):
        for j, s in enumerate(n.src):
            if s is not None:
                lines.append(f'  "{nid(s)}":x -> "{nid(n)}":x [ arrowhead = vee; style = solid; label = "src {j}"; ];')
        if n.grad is not None and id(n.grad) in ids:
            lines.append(f'  "{nid(n.grad)}":x -> "{nid(n)}":g [ arrowhead = vee; style = dashed; label = "grad"; ];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_dump_dot(gb, gf=None, path: str = "graph.dot") -> None:
    """ggml_graph_dump_dot: write gb as Graphviz dot to path (gf marks the forward part)."""
    with open(path, "w") as f:
        f.write(graph_dot(gb, gf))
