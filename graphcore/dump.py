"""Looking at graphs: the text table (graph_print), Graphviz dot in ggml's style (graph_dot,
graph_dump_dot), a JSON description for other tools (graph_json) and statistics with the plan
(graph_stats). Each takes an optional `select`, the tensors to show (a filtered view of a big
graph); sources outside it appear as grey stubs in dot and as "external" tensors in JSON.
"""
from __future__ import annotations

import math
import sys

from . import tensor as TN
from .files import write_bytes
from . import types as T
from .ops.registry import OPS, op_name, op_symbol
from .alloc import graph_memory
from .planner import graph_plan

JSON_FORMAT = "graphcore.graph+json"
JSON_VERSION = 1

# how the flags column of the text table spells each flag
_FLAG_LETTERS = ((TN.FLAG_PARAM, "P"), (TN.FLAG_INPUT, "I"), (TN.FLAG_OUTPUT, "O"))


def _selected(select, t) -> bool:
    return select is None or id(t) in select


def flag_letters(t) -> str:
    """Four letters: P param, I input, O output, V a view of another tensor's bytes ('-' if not)."""
    s = "".join(c if t.flags & f else "-" for f, c in _FLAG_LETTERS)
    return s + ("V" if t.view_src is not None else "-")


def _printable(name: str) -> str:
    """A name on one line of the table: line breaks and tabs shown as escapes."""
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def flag_names(t) -> list:
    return [n for f, n in ((TN.FLAG_INPUT, "input"), (TN.FLAG_OUTPUT, "output"), (TN.FLAG_PARAM, "param"))
            if t.flags & f]


# -- text -------------------------------------------------------------------------------------------------
def _source_refs(g) -> dict:
    """id(tensor) -> "n<index>" for nodes, "l<index>" for leafs of g."""
    refs = {id(t): f"l{i}" for i, t in enumerate(g.leafs)}
    refs.update({id(t): f"n{i}" for i, t in enumerate(g.nodes)})
    return refs


def graph_text(g, select=None) -> str:
    """ggml_graph_print's table plus type, bytes, flags, sources and name, as a string. Nodes:
    index, ne, op, ggml's gradient mark (x parameter, g has a gradient), type, bytes, flags
    (P param, I input, O output, V view of another tensor's bytes), sources (n<i> a node, l<i> a
    leaf, ? a tensor outside the graph), name. With `select`, only those rows (indices unchanged)."""
    nodes = [(i, n) for i, n in enumerate(g.nodes) if _selected(select, n)]
    leafs = [(i, n) for i, n in enumerate(g.leafs) if _selected(select, n)]
    refs = _source_refs(g)
    shown = lambda k, total: "" if k == total else f" (showing {k})"  # noqa: E731
    lines = ["=== GRAPH ===", f"n_nodes = {g.n_nodes}{shown(len(nodes), g.n_nodes)}"]
    for i, n in nodes:
        mark = "x" if n.flags & TN.FLAG_PARAM else ("g" if n.grad is not None else " ")
        srcs = ",".join(refs.get(id(s), "?") for s in n.src if s is not None)
        lines.append(f" - {i:3d}: [ {n.ne[0]:5d}, {n.ne[1]:5d}, {n.ne[2]:5d}, {n.ne[3]:5d}] "
                     f"{op_name(n.op):>16s} {mark} {T.type_name(n.type):>4s} {TN.nbytes(n):10d} B  "
                     f"{flag_letters(n)}  {srcs or '-':<11s} {_printable(n.name)}")
    lines.append(f"n_leafs = {g.n_leafs}{shown(len(leafs), g.n_leafs)}")
    for i, n in leafs:
        lines.append(f" - {i:3d}: [ {n.ne[0]:5d}, {n.ne[1]:5d}, {n.ne[2]:5d}, {n.ne[3]:5d}] "
                     f"{op_name(n.op):>8s}   {T.type_name(n.type):>4s} {TN.nbytes(n):10d} B  "
                     f"{flag_letters(n)}  {_printable(n.name)}")
    lines.append("=" * 40)
    return "\n".join(lines) + "\n"


def graph_print(g, file=None) -> None:
    """ggml_graph_print: print graph_text(g) (ggml's table plus type, bytes, flags, sources and
    name) to `file` (default standard output)."""
    (file if file is not None else sys.stdout).write(graph_text(g))


# -- dot --------------------------------------------------------------------------------------------------
def _esc(s: str) -> str:
    """Text for a dot record label: the characters records and strings treat specially escaped."""
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    for c in "{}<>|":
        out = out.replace(c, "\\" + c)
    return out.replace("\n", "\\n").replace("\r", "")


def _ne(t) -> str:
    return ", ".join(str(x) for x in t.ne[:TN.n_dims(t)])


def leaf_values(t):
    """The values of a tensor of fewer than 5 elements (ggml's dot shows them), else None."""
    if TN.nelements(t) >= 5 or not t.has_data or t.ctx.freed:
        return None
    if t.type == T.TYPE_I32:
        return [TN.get_i32_1d(t, i) for i in range(TN.nelements(t))]
    return [float(f"{TN.get_f32_1d(t, i):.6g}") for i in range(TN.nelements(t))]


def _value_text(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def graph_dot(gb, gf=None, select=None, title: str | None = None) -> str:
    """The dot text of gb in ggml's style: records `name (type) | index [ne] | op symbol | grad`;
    parameters yellow, nodes with a gradient green, nodes that gf (the forward graph, when given)
    lacks light blue, leafs pink with their values when they have fewer than 5 elements; edges
    labelled `src j`; dashed edges from a gradient to the `grad` field of its tensor. `select`:
    the tensors to draw (default all); sources outside it are grey dashed stubs. `title`: a caption."""
    ids = {}
    fwd = {id(n) for n in gf.nodes} | {id(n) for n in gf.leafs} if gf is not None else None
    lines = ["digraph G {", "  newrank = true;", "  rankdir = TB;",
             '  node [ fontname = "Helvetica"; fontsize = 10; ];',
             '  edge [ fontname = "Helvetica"; fontsize = 8; ];']
    if title:
        lines.append(f'  labelloc = t; label = "{_esc(title)}";')
    drawn = []
    for i, n in enumerate(gb.nodes):
        if not _selected(select, n):
            continue
        ids[id(n)] = f"n{i}"
        if n.flags & TN.FLAG_PARAM:
            color = "yellow"
        elif fwd is not None and id(n) not in fwd:
            color = "lightblue"
        elif n.grad is not None:
            color = "green"
        else:
            color = "white"
        name = f"{_esc(n.name)} " if n.name else ""
        label = f"{name}({T.type_name(n.type)}) | {i} [{_ne(n)}] | <x>{_esc(op_symbol(n.op))}"
        if n.grad is not None:
            label += f" | <g>grad {_esc(op_symbol(n.grad.op))}"
        lines.append(f'  "n{i}" [ style = filled; fillcolor = {color}; shape = record; label = "{label}"; ];')
        drawn.append(n)
    for i, n in enumerate(gb.leafs):
        if not _selected(select, n):
            continue
        ids[id(n)] = f"l{i}"
        name = f"{_esc(n.name)} " if n.name else ""
        label = f"<x>{name}({T.type_name(n.type)}) | CONST {i} [{_ne(n)}]"
        vals = leaf_values(n)
        if vals is not None:
            label += " | " + _esc("(" + ", ".join(_value_text(v) for v in vals) + ")")
        lines.append(f'  "l{i}" [ style = filled; fillcolor = pink; shape = record; label = "{label}"; ];')
        drawn.append(n)
    edges = []
    n_ext = 0
    for n in drawn:
        for j, s in enumerate(n.src):
            if s is None:
                continue
            if id(s) not in ids:
                ids[id(s)] = f"x{n_ext}"
                n_ext += 1
                name = f"{_esc(s.name)} " if s.name else ""
                lines.append(f'  "{ids[id(s)]}" [ style = "filled,dashed"; fillcolor = gray90; shape = record; '
                             f'label = "<x>{name}({T.type_name(s.type)}) | [{_ne(s)}]"; ];')
            edges.append(f'  "{ids[id(s)]}":x -> "{ids[id(n)]}":x [ arrowhead = vee; style = solid; '
                         f'label = "src {j}"; ];')
    for n in drawn:
        if n.grad is not None and id(n.grad) in ids and ids[id(n)][0] == "n":
            edges.append(f'  "{ids[id(n.grad)]}":x -> "{ids[id(n)]}":g [ arrowhead = empty; style = dashed; '
                         f'color = gray40; constraint = false; label = "grad"; ];')
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_dump_dot(gb, gf=None, path: str = "graph.dot") -> None:
    """ggml_graph_dump_dot: write gb as Graphviz dot to path (gf marks the forward part), the way
    graphcore.files.write_bytes writes files."""
    write_bytes(path, graph_dot(gb, gf).encode("utf-8"))


# -- json -------------------------------------------------------------------------------------------------
def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def graph_json(g, gf=None, select=None) -> dict:
    """A plain dict (json.dumps-able, no NaN) describing g for other tools: every tensor shown
    (nodes, leafs, and the sources outside `select` as "external"), with op, type, ne, nb, op
    params, flags, sources and gradient; edges; gradient links. See GRAPH_JSON_SCHEMA."""
    tensors, ids = [], {}
    fwd = {id(n) for n in gf.nodes} | {id(n) for n in gf.leafs} if gf is not None else None

    def add(t, role, index):
        ids[id(t)] = len(tensors)
        params = [int(x) for x in t.op_params]
        while params and params[-1] == 0:
            params.pop()
        d = {"id": len(tensors), "role": role, "index": index, "name": t.name, "op": op_name(t.op),
             "symbol": op_symbol(t.op), "type": T.type_name(t.type), "ne": [int(x) for x in t.ne],
             "nb": [int(x) for x in t.nb], "n_dims": TN.n_dims(t), "bytes": TN.nbytes(t),
             "flags": flag_names(t), "op_params": params, "src": [], "view_src": None,
             "view_offs": int(t.view_offs) if t.view_src is not None else 0, "grad": None,
             "has_grad": t.grad is not None, "forward": None if fwd is None else id(t) in fwd,
             "values": None}
        if role == "leaf":
            vals = leaf_values(t)
            d["values"] = None if vals is None else [_json_value(v) for v in vals]
        tensors.append(d)

    for i, n in enumerate(g.nodes):
        if _selected(select, n):
            add(n, "node", i)
    for i, n in enumerate(g.leafs):
        if _selected(select, n):
            add(n, "leaf", i)
    shown = list(tensors)
    by_id = {}
    for n in list(g.nodes) + list(g.leafs):
        if id(n) in ids:
            by_id[ids[id(n)]] = n
    edges, grads = [], []
    for k in range(len(shown)):
        t = by_id[k]
        for j, s in enumerate(t.src):
            if s is None:
                tensors[k]["src"].append(None)
                continue
            if id(s) not in ids:
                add(s, "external", None)
            tensors[k]["src"].append(ids[id(s)])
            edges.append({"src": ids[id(s)], "dst": k, "slot": j})
    for k in range(len(shown)):
        t = by_id[k]
        if t.view_src is not None and id(t.view_src) in ids:
            tensors[k]["view_src"] = ids[id(t.view_src)]
        if t.grad is not None and id(t.grad) in ids:
            tensors[k]["grad"] = ids[id(t.grad)]
            grads.append({"tensor": k, "grad": ids[id(t.grad)]})
    return {"format": JSON_FORMAT, "version": JSON_VERSION, "size": g.size, "has_grads": g.grads is not None,
            "n_nodes": g.n_nodes, "n_leafs": g.n_leafs,
            "nodes": [ids[id(n)] for n in g.nodes if id(n) in ids and tensors[ids[id(n)]]["role"] == "node"],
            "leafs": [ids[id(n)] for n in g.leafs if id(n) in ids and tensors[ids[id(n)]]["role"] == "leaf"],
            "tensors": tensors, "edges": edges, "grads": grads}


def json_text(d: dict) -> str:
    """d as JSON (no NaN) laid out for reading and diffing: one key per line, and each element of a
    list of objects (tensors, edges, ops, plan nodes) on a line of its own."""
    import json

    def enc(v, indent):
        if isinstance(v, dict) and indent < 2:
            pad = " " * (indent + 1)
            items = [f"{pad}{json.dumps(k)}: {enc(x, indent + 1)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}" if items else "{}"
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            pad = " " * (indent + 1)
            return "[\n" + ",\n".join(pad + json.dumps(x, allow_nan=False, ensure_ascii=False) for x in v) + \
                "\n" + " " * indent + "]"
        return json.dumps(v, allow_nan=False, ensure_ascii=False)
    return enc(d, 0) + "\n"


_INT = {"type": "integer"}
_INTS = {"type": "array", "items": _INT}
_ID = {"type": ["integer", "null"]}
_TENSOR_SCHEMA = {
    "type": "object",
    "required": ["id", "role", "index", "name", "op", "symbol", "type", "ne", "nb", "n_dims", "bytes", "flags",
                 "op_params", "src", "view_src", "view_offs", "grad", "has_grad", "forward", "values"],
    "additionalProperties": False,
    "properties": {
        "id": _INT, "role": {"enum": ["node", "leaf", "external"]}, "index": _ID,
        "name": {"type": "string"}, "op": {"type": "string"}, "symbol": {"type": "string"},
        "type": {"type": "string"}, "ne": {**_INTS, "minItems": 4, "maxItems": 4},
        "nb": {**_INTS, "minItems": 4, "maxItems": 4}, "n_dims": _INT, "bytes": _INT,
        "flags": {"type": "array", "items": {"enum": ["input", "output", "param"]}},
        "op_params": {**_INTS, "maxItems": TN.MAX_OP_PARAMS}, "src": {"type": "array", "items": _ID},
        "view_src": _ID, "view_offs": _INT, "grad": _ID, "has_grad": {"type": "boolean"},
        "forward": {"type": ["boolean", "null"]},
        "values": {"type": ["array", "null"], "items": {"type": ["number", "string"]}},
    },
}
# JSON Schema (draft 2020-12) of graph_json's output
GRAPH_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "graphcore graph",
    "type": "object",
    "required": ["format", "version", "size", "has_grads", "n_nodes", "n_leafs", "nodes", "leafs", "tensors",
                 "edges", "grads"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": JSON_FORMAT}, "version": {"const": JSON_VERSION}, "size": _INT,
        "has_grads": {"type": "boolean"}, "n_nodes": _INT, "n_leafs": _INT, "nodes": _INTS, "leafs": _INTS,
        "tensors": {"type": "array", "items": _TENSOR_SCHEMA},
        "edges": {"type": "array", "items": {"type": "object", "required": ["src", "dst", "slot"],
                                             "additionalProperties": False,
                                             "properties": {"src": _INT, "dst": _INT, "slot": _INT}}},
        "grads": {"type": "array", "items": {"type": "object", "required": ["tensor", "grad"],
                                             "additionalProperties": False,
                                             "properties": {"tensor": _INT, "grad": _INT}}},
    },
}


# -- statistics and the plan ---------------------------------------------------------------------------------
def graph_stats(g, n_threads: int = 1) -> dict:
    """Nodes and bytes by op (bytes a node owns: 0 for views of other tensors), leafs, parameters
    (tensors with FLAG_PARAM and their elements), the graph allocator's buffer for the computed
    tensors against the live peak and the no-reuse sum (alloc.graph_memory), and graph_plan's plan
    for n_threads: each node's n_tasks and work bytes, and the work buffer's size."""
    by_op = {}
    for n in g.nodes:
        e = by_op.setdefault(op_name(n.op), {"op": op_name(n.op), "nodes": 0, "bytes": 0, "views": 0})
        e["nodes"] += 1
        if n.view_src is None:
            e["bytes"] += TN.nbytes(n)
        else:
            e["views"] += 1
    params = [t for t in list(g.nodes) + list(g.leafs) if t.flags & TN.FLAG_PARAM]
    plan = graph_plan(g, n_threads)
    nodes = []
    for i, n in enumerate(g.nodes):
        nt = int(plan.n_tasks[i])
        nodes.append({"index": i, "op": op_name(n.op), "name": n.name, "n_tasks": nt,
                      "work": int(OPS[n.op].work_size(n, nt))})
    leaf_bytes = sum(TN.nbytes(t) for t in g.leafs if t.view_src is None)
    return {"n_nodes": g.n_nodes, "n_leafs": g.n_leafs,
            "by_op": sorted(by_op.values(), key=lambda e: (-e["bytes"], e["op"])),
            "node_bytes": sum(e["bytes"] for e in by_op.values()), "leaf_bytes": leaf_bytes,
            "memory": graph_memory(g),
            "params": {"tensors": len(params), "elements": sum(TN.nelements(t) for t in params),
                       "bytes": sum(TN.nbytes(t) for t in params)},
            "plan": {"n_threads": plan.n_threads, "work_size": int(plan.work_size),
                     "parallel_nodes": sum(1 for x in nodes if x["n_tasks"] > 1), "nodes": nodes}}


def stats_text(s: dict) -> str:
    lines = [f"{s['n_nodes']} nodes, {s['n_leafs']} leafs; nodes own {s['node_bytes']} B, "
             f"leafs {s['leaf_bytes']} B"]
    m = s["memory"]
    lines += [f"graph allocator: buffer {m['buffer']} B for the computed tensors; live peak {m['live_peak']} B, "
              f"no reuse {m['no_reuse']} B ({m['buffer'] / max(m['no_reuse'], 1):.2f}x)", "",
              f"{'op':<24s} {'nodes':>6s} {'views':>6s} {'bytes':>12s}"]
    for e in s["by_op"]:
        lines.append(f"{e['op']:<24s} {e['nodes']:6d} {e['views']:6d} {e['bytes']:12d}")
    p = s["params"]
    lines += ["", f"parameters: {p['tensors']} tensors, {p['elements']} elements, {p['bytes']} B", ""]
    pl = s["plan"]
    lines.append(f"plan for {pl['n_threads']} threads: work size {pl['work_size']} B, "
                 f"{pl['parallel_nodes']} of {s['n_nodes']} nodes on more than one thread")
    lines.append(f" {'node':>5s} {'op':<24s} {'n_tasks':>7s} {'work B':>10s}  name")
    for x in pl["nodes"]:
        lines.append(f" {x['index']:5d} {x['op']:<24s} {x['n_tasks']:7d} {x['work']:10d}  {x['name']}")
    return "\n".join(lines) + "\n"
