"""Looking at graphs: golden text dumps, dot that Graphviz accepts, JSON that follows its schema,
statistics with the plan, the filters, and the graphcore-dump CLI (through subprocess)."""
import html
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import graphcore as gc
from graphcore import dump

F32, F16, I32 = gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="Graphviz's dot is not installed")


def small():
    """f = sum((c - w·x)^2) with w a parameter, x an input, f an output; (gf, gb)."""
    ctx = gc.init(1 << 16)
    w = gc.set_name(gc.new_tensor_2d(ctx, F32, 4, 3), "w")
    gc.set_param(ctx, w)
    x = gc.set_name(gc.new_tensor_2d(ctx, F32, 4, 5), "x")
    gc.set_input(x)
    c = gc.set_name(gc.new_tensor_2d(ctx, F32, 3, 5), "c")
    f = gc.set_name(gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, c, gc.mul_mat(ctx, w, x)))), "f")
    gc.set_output(f)
    gf = gc.new_graph_custom(ctx, 16, True)
    gc.build_forward_expand(gf, f)
    gb = gc.build_backward(ctx, gf)
    return gf, gb


def layouts():
    """Views, in-place results, F16 and I32 leafs, a leaf of fewer than 5 values, odd names."""
    ctx = gc.init(1 << 16)
    a = gc.set_name(gc.from_numpy(ctx, np.arange(6, dtype=np.float32).reshape(2, 3)), 'a "quoted" {x|y} <z> \\')
    h = gc.set_name(gc.from_numpy(ctx, np.array([1.5, -2.0, np.inf], np.float16)), "h16")
    i = gc.set_name(gc.from_numpy(ctx, np.array([1, 0], np.int32)), "idx\nline")
    s = gc.set_name(gc.from_numpy(ctx, np.array([np.nan, -0.0], np.float32)), "s · ünïcode")
    t = gc.transpose(ctx, a)
    r = gc.get_rows(ctx, gc.cont(ctx, t), i)
    v = gc.neg_inplace(ctx, gc.dup(ctx, r))
    m = gc.mul_mat(ctx, gc.cont(ctx, gc.view_2d(ctx, h, 2, 1, h.nb[1], 0)), gc.add(ctx, gc.reshape_2d(ctx, s, 2, 1),
                                                                                       gc.new_f32(ctx, 1.0)))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, v)
    gc.build_forward_expand(g, m)
    return g


GOLDEN_FORWARD = """\
=== GRAPH ===
n_nodes = 5
 -   0: [     4,     3,     1,     1]             NONE x  f32         48 B  P---  -           w
 -   1: [     3,     5,     1,     1]          MUL_MAT g  f32         60 B  ----  n0,l1       node_1
 -   2: [     3,     5,     1,     1]              SUB g  f32         60 B  ----  l0,n1       node_2
 -   3: [     3,     5,     1,     1]              SQR g  f32         60 B  ----  n2          node_3
 -   4: [     1,     1,     1,     1]              SUM g  f32          4 B  --O-  n3          f
n_leafs = 2
 -   0: [     3,     5,     1,     1]     NONE    f32         60 B  ----  c
 -   1: [     4,     5,     1,     1]     NONE    f32         80 B  -I--  x
========================================
"""

GOLDEN_BACKWARD = """\
=== GRAPH ===
n_nodes = 10
 -   0: [     4,     3,     1,     1]             NONE x  f32         48 B  P---  -           w
 -   1: [     3,     5,     1,     1]          MUL_MAT g  f32         60 B  ----  n0,l1       node_1
 -   2: [     3,     5,     1,     1]              SUB g  f32         60 B  ----  l0,n1       node_2
 -   3: [     3,     5,     1,     1]              SQR g  f32         60 B  ----  n2          node_3
 -   4: [     1,     1,     1,     1]              SUM g  f32          4 B  --O-  n3          f
 -   5: [     3,     5,     1,     1]           REPEAT    f32         60 B  ----  l2          node_5
 -   6: [     3,     5,     1,     1]              MUL    f32         60 B  ----  n2,n5       node_6
 -   7: [     3,     5,     1,     1]            SCALE    f32         60 B  ----  n6          node_7
 -   8: [     3,     5,     1,     1]              NEG    f32         60 B  ----  n7          node_8
 -   9: [     4,     3,     1,     1]         OUT_PROD    f32         48 B  ----  l1,n8       node_9
n_leafs = 3
 -   0: [     3,     5,     1,     1]     NONE    f32         60 B  ----  c
 -   1: [     4,     5,     1,     1]     NONE    f32         80 B  -I--  x
 -   2: [     1,     1,     1,     1]     NONE    f32          4 B  ----  f (grad)
========================================
"""

GOLDEN_LAYOUTS = """\
=== GRAPH ===
n_nodes = 10
 -   0: [     2,     3,     1,     1]        TRANSPOSE    f32         24 B  ---V  l0          a "quoted" {x|y} <z> \\\\ (transposed)
 -   1: [     2,     3,     1,     1]             CONT    f32         24 B  ----  n0          node_1
 -   2: [     2,     2,     1,     1]         GET_ROWS    f32         16 B  ----  n1,l1       node_2
 -   3: [     2,     2,     1,     1]              DUP    f32         16 B  ----  n2          node_3
 -   4: [     2,     2,     1,     1]              NEG    f32         16 B  ---V  n3          node_4
 -   5: [     2,     1,     1,     1]             VIEW    f16          4 B  ---V  l2          h16 (view)
 -   6: [     2,     1,     1,     1]             CONT    f16          4 B  ----  n5          node_6
 -   7: [     2,     1,     1,     1]          RESHAPE    f32          8 B  ---V  l3          s · ünïcode (reshaped)
 -   8: [     2,     1,     1,     1]              ADD    f32          8 B  ----  n7,l4       node_8
 -   9: [     1,     1,     1,     1]          MUL_MAT    f32          4 B  ----  n6,n8       node_9
n_leafs = 5
 -   0: [     3,     2,     1,     1]     NONE    f32         24 B  ----  a "quoted" {x|y} <z> \\\\
 -   1: [     2,     1,     1,     1]     NONE    i32          8 B  ----  idx\\nline
 -   2: [     3,     1,     1,     1]     NONE    f16          6 B  ----  h16
 -   3: [     2,     1,     1,     1]     NONE    f32          8 B  ----  s · ünïcode
 -   4: [     1,     1,     1,     1]     NONE    f32          4 B  ----  leaf_4
========================================
"""

GOLDEN_DOT = """\
digraph G {
  newrank = true;
  rankdir = TB;
  node [ fontname = "Helvetica"; fontsize = 10; ];
  edge [ fontname = "Helvetica"; fontsize = 8; ];
  "n0" [ style = filled; fillcolor = yellow; shape = record; label = "w (f32) | 0 [4, 3] | <x>none | <g>grad X×Y"; ];
  "n1" [ style = filled; fillcolor = green; shape = record; label = "node_1 (f32) | 1 [3, 5] | <x>X*Y | <g>grad -x"; ];
  "n2" [ style = filled; fillcolor = green; shape = record; label = "node_2 (f32) | 2 [3, 5] | <x>x-y | <g>grad x*v"; ];
  "n3" [ style = filled; fillcolor = green; shape = record; label = "node_3 (f32) | 3 [3, 5] | <x>x^2 | <g>grad repeat(x)"; ];
  "n4" [ style = filled; fillcolor = green; shape = record; label = "f (f32) | 4 [1] | <x>Σx | <g>grad none"; ];
  "n5" [ style = filled; fillcolor = lightblue; shape = record; label = "node_5 (f32) | 5 [3, 5] | <x>repeat(x)"; ];
  "n6" [ style = filled; fillcolor = lightblue; shape = record; label = "node_6 (f32) | 6 [3, 5] | <x>x*y"; ];
  "n7" [ style = filled; fillcolor = lightblue; shape = record; label = "node_7 (f32) | 7 [3, 5] | <x>x*v"; ];
  "n8" [ style = filled; fillcolor = lightblue; shape = record; label = "node_8 (f32) | 8 [3, 5] | <x>-x"; ];
  "n9" [ style = filled; fillcolor = lightblue; shape = record; label = "node_9 (f32) | 9 [4, 3] | <x>X×Y"; ];
  "l0" [ style = filled; fillcolor = pink; shape = record; label = "<x>c (f32) | CONST 0 [3, 5]"; ];
  "l1" [ style = filled; fillcolor = pink; shape = record; label = "<x>x (f32) | CONST 1 [4, 5]"; ];
  "l2" [ style = filled; fillcolor = pink; shape = record; label = "<x>f (grad) (f32) | CONST 2 [1] | (1)"; ];
  "n0":x -> "n1":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "l1":x -> "n1":x [ arrowhead = vee; style = solid; label = "src 1"; ];
  "l0":x -> "n2":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "n1":x -> "n2":x [ arrowhead = vee; style = solid; label = "src 1"; ];
  "n2":x -> "n3":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "n3":x -> "n4":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "l2":x -> "n5":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "n2":x -> "n6":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "n5":x -> "n6":x [ arrowhead = vee; style = solid; label = "src 1"; ];
  "n6":x -> "n7":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "n7":x -> "n8":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "l1":x -> "n9":x [ arrowhead = vee; style = solid; label = "src 0"; ];
  "n8":x -> "n9":x [ arrowhead = vee; style = solid; label = "src 1"; ];
  "n9":x -> "n0":g [ arrowhead = empty; style = dashed; color = gray40; constraint = false; label = "grad"; ];
  "n8":x -> "n1":g [ arrowhead = empty; style = dashed; color = gray40; constraint = false; label = "grad"; ];
  "n7":x -> "n2":g [ arrowhead = empty; style = dashed; color = gray40; constraint = false; label = "grad"; ];
  "n5":x -> "n3":g [ arrowhead = empty; style = dashed; color = gray40; constraint = false; label = "grad"; ];
  "l2":x -> "n4":g [ arrowhead = empty; style = dashed; color = gray40; constraint = false; label = "grad"; ];
}
"""


def test_golden_text():
    gf, gb = small()
    assert gc.graph_text(gf) == GOLDEN_FORWARD
    assert gc.graph_text(gb) == GOLDEN_BACKWARD
    assert gc.graph_text(layouts()) == GOLDEN_LAYOUTS


def test_graph_print_writes_to_a_file(tmp_path):
    gf, _ = small()
    with open(tmp_path / "g.txt", "w") as f:
        assert gc.graph_print(gf, file=f) is None
    assert (tmp_path / "g.txt").read_text() == GOLDEN_FORWARD


def test_graph_print_prints_to_stdout(capsys):
    gf, _ = small()
    gc.graph_print(gf)
    assert capsys.readouterr().out == GOLDEN_FORWARD


def test_golden_dot_of_a_backward_graph():
    gf, gb = small()
    gc.graph_reset(gb)
    gc.set_f32(gf.nodes[-1].grad, 1.0)
    text = gc.graph_dot(gb, gf)
    # parameters yellow, forward nodes with a gradient green, backward-only nodes light blue, leafs
    # pink with their values (fewer than 5), record fields name (type) | index [ne] | op | grad
    assert text == GOLDEN_DOT
    assert text.count("->") == sum(len([s for s in n.src if s is not None]) for n in gb.nodes) + \
        sum(1 for n in gb.nodes if n.grad is not None and (n.grad in gb.nodes or n.grad in gb.leafs))


def test_graph_dump_dot_writes_the_file(tmp_path):
    gf, gb = small()
    p = tmp_path / "g.dot"
    gc.graph_dump_dot(gb, gf, str(p))
    assert p.read_text(encoding="utf-8") == gc.graph_dot(gb, gf)


def run_dot(text, fmt="svg"):
    r = subprocess.run([DOT, f"-T{fmt}"], input=text.encode("utf-8"), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert not r.stderr.strip(), r.stderr.decode()         # no warnings about bad labels
    return r.stdout


@needs_dot
def test_graphviz_accepts_the_dot():
    gf, gb = small()
    g = layouts()
    for text in (gc.graph_dot(gf), gc.graph_dot(gb, gf), gc.graph_dot(g),
                 gc.graph_dot(gb, gf, select={id(gb.nodes[5]), id(gb.nodes[6])}, title='a "title" {|}'),
                 gc.graph_dot(gc.new_graph(gc.init(1024)))):
        out = run_dot(text)
        assert out.startswith(b"<?xml") and b"<svg" in out
    svg = html.unescape(run_dot(gc.graph_dot(g)).decode())
    # the odd names survive escaping
    assert 'a "quoted" {x|y} <z> \\ (f32)' in svg and "s · ünïcode (f32)" in svg
    assert "(1.5, -2, inf)" in svg and "(nan, -0)" in svg


@needs_dot
def test_graphviz_accepts_baby_llama_backward_in_pieces():
    from graphcore_tools.graph_dump import parser
    from graphcore_tools.graph_sources import baby_llama_graph
    g, gf = baby_llama_graph("backward", parser().parse_args(["--model", "baby-llama"]))
    for k in range(0, g.n_nodes, 50):
        sel = {id(n) for n in g.nodes[k:k + 50]} | {id(n) for n in g.leafs}
        run_dot(gc.graph_dot(g, gf, sel))


# -- json -------------------------------------------------------------------------------------------------
def validate(x, schema, path="$"):
    """The subset of JSON Schema GRAPH_JSON_SCHEMA uses."""
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if "const" in schema:
        assert x == schema["const"], path
    if "enum" in schema:
        assert x in schema["enum"], (path, x)
    if "type" in schema:
        ok = False
        for t in ([schema["type"]] if isinstance(schema["type"], str) else schema["type"]):
            if t == "integer":
                ok |= isinstance(x, int) and not isinstance(x, bool)
            elif t == "number":
                ok |= isinstance(x, (int, float)) and not isinstance(x, bool)
            else:
                ok |= isinstance(x, types[t]) and not (t != "boolean" and isinstance(x, bool))
        assert ok, (path, schema["type"], x)
    if isinstance(x, dict):
        for k in schema.get("required", []):
            assert k in x, (path, k)
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(x) <= set(props), (path, set(x) - set(props))
        for k, v in x.items():
            if k in props:
                validate(v, props[k], f"{path}.{k}")
    if isinstance(x, list):
        assert len(x) >= schema.get("minItems", 0) and len(x) <= schema.get("maxItems", math.inf), path
        if "items" in schema:
            for i, v in enumerate(x):
                validate(v, schema["items"], f"{path}[{i}]")


def check_json_matches(d, g):
    by_id = {t["id"]: t for t in d["tensors"]}
    assert [t["id"] for t in d["tensors"]] == list(range(len(d["tensors"])))
    assert [by_id[i]["index"] for i in d["nodes"]] == sorted(t["index"] for t in d["tensors"] if t["role"] == "node")
    assert [by_id[i]["index"] for i in d["leafs"]] == sorted(t["index"] for t in d["tensors"] if t["role"] == "leaf")
    real = {}
    for t in d["tensors"]:
        if t["role"] == "node":
            real[t["id"]] = g.nodes[t["index"]]
        elif t["role"] == "leaf":
            real[t["id"]] = g.leafs[t["index"]]
    for k, t in real.items():
        j = by_id[k]
        assert (j["op"], j["type"], j["ne"], j["nb"], j["name"], j["bytes"]) == \
               (gc.op_name(t.op), gc.type_name(t.type), list(t.ne), list(t.nb), t.name, gc.nbytes(t))
        assert j["op_params"] == [int(x) for x in t.op_params][:len(j["op_params"])]
        assert not any(t.op_params[len(j["op_params"]):])
        assert len(j["src"]) == len(t.src)
        for sid, s in zip(j["src"], t.src):
            assert (sid is None) == (s is None)
            if s is not None and sid in real:
                assert real[sid] is s
    assert sorted((e["src"], e["dst"], e["slot"]) for e in d["edges"]) == sorted(
        (s, t["id"], j) for t in d["tensors"] for j, s in enumerate(t["src"]) if s is not None)


def test_json_follows_its_schema_and_round_trips():
    gf, gb = small()
    gc.graph_reset(gb)
    gc.set_f32(gf.nodes[-1].grad, 1.0)
    for g, f, sel in ((gf, None, None), (gb, gf, None), (layouts(), None, None),
                      (gb, gf, {id(gb.nodes[6]), id(gb.nodes[7])})):
        d = gc.dump.graph_json(g, f, sel)
        validate(d, dump.GRAPH_JSON_SCHEMA)
        text = json.dumps(d, allow_nan=False)
        assert json.loads(text) == d
        assert json.loads(dump.json_text(d)) == d          # the CLI's layout of the same JSON
        check_json_matches(d, g)
    d = gc.dump.graph_json(gb, gf)
    w = [t for t in d["tensors"] if t["name"] == "w"][0]
    assert w["flags"] == ["param"] and w["forward"] is True and w["grad"] is not None
    assert d["tensors"][w["grad"]]["op"] == "OUT_PROD" and {"tensor": w["id"], "grad": w["grad"]} in d["grads"]
    seed = [t for t in d["tensors"] if t["name"] == "f (grad)"][0]
    assert seed["values"] == [1.0] and seed["role"] == "leaf"
    lay = gc.dump.graph_json(layouts())
    vals = {t["name"]: t["values"] for t in lay["tensors"] if t["role"] == "leaf"}
    assert vals["h16"] == [1.5, -2.0, "inf"] and vals["s · ünïcode"] == ["nan", -0.0] and vals["idx\nline"] == [1, 0]
    sel = gc.dump.graph_json(gb, gf, {id(gb.nodes[6])})
    assert [t["role"] for t in sel["tensors"]] == ["node", "external", "external"]


# -- stats ------------------------------------------------------------------------------------------------
def test_stats_count_everything_and_show_the_plan():
    from graphcore_tools.graph_dump import parser
    from graphcore_tools.graph_sources import baby_llama_graph
    g, gf = baby_llama_graph("backward", parser().parse_args(["--model", "baby-llama"]))
    s = gc.dump.graph_stats(g, 2)
    assert sum(e["nodes"] for e in s["by_op"]) == g.n_nodes
    assert s["node_bytes"] == sum(gc.nbytes(n) for n in g.nodes if n.view_src is None)
    params = [n for n in g.nodes if n.flags & gc.FLAG_PARAM]
    assert s["params"]["tensors"] == len(params) == 12
    assert s["params"]["elements"] == sum(gc.nelements(p) for p in params)
    plan = gc.graph_plan(g, 2)
    assert [x["n_tasks"] for x in s["plan"]["nodes"]] == list(plan.n_tasks) and s["plan"]["work_size"] == plan.work_size
    text = gc.dump.stats_text(s)
    assert "plan for 2 threads" in text and "MUL_MAT" in text and "parameters: 12 tensors" in text


# -- filters (the CLI's, in-process) ----------------------------------------------------------------------------
def cli_args(*argv):
    from graphcore_tools.graph_dump import parser
    a = parser().parse_args(list(argv))
    a.format = a.format or "text"
    return a


def test_filters():
    from graphcore_tools.graph_dump import CliError, select
    _, gb = small()
    sel, cap = select(gb, cli_args("--op", "mul,neg"))
    assert {gb.nodes.index(n) for n in gb.nodes if id(n) in sel} == {6, 8} and "MUL, NEG" in cap
    sel, cap = select(gb, cli_args("--around", "node_2", "--depth", "1"))
    assert {n.name for n in list(gb.nodes) + list(gb.leafs) if id(n) in sel} == {"node_1", "node_2", "node_3",
                                                                                  "c", "node_6"}
    sel, _ = select(gb, cli_args("--around", "2", "--depth", "0"))
    assert sel == {id(gb.nodes[2])}
    sel, _ = select(gb, cli_args("--around", "leaf:1", "--depth", "1"))
    assert {n.name for n in list(gb.nodes) + list(gb.leafs) if id(n) in sel} == {"x", "node_1", "node_9"}
    sel, cap = select(gb, cli_args("--max-nodes", "3"))
    assert [n for n in gb.nodes if id(n) in sel] == gb.nodes[:3] and cap == "3 of 10 nodes: the first 3"
    assert {n.name for n in gb.leafs if id(n) in sel} == {"x", "c"}      # the leafs those nodes read
    assert select(gb, cli_args()) == (None, None)
    with pytest.raises(CliError, match="unknown op FOO"):
        select(gb, cli_args("--op", "foo"))
    with pytest.raises(CliError, match="no node or leaf"):
        select(gb, cli_args("--around", "nope"))
    with pytest.raises(CliError, match="10 nodes"):
        select(gb, cli_args("--around", "99"))


# -- the CLI, as users run it ----------------------------------------------------------------------------------
def cli(*argv, cwd=ROOT, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "graphcore_tools.graph_dump", *argv], cwd=cwd, capture_output=True,
                       timeout=600, env=env)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    gf, gb = small()
    gc.graph_reset(gb)
    gc.set_f32(gf.nodes[-1].grad, 1.0)
    p = tmp_path_factory.mktemp("cli") / "small.gcg"
    gc.graph_export(gb, p, gf)
    return p


def test_cli_text_json_dot_of_a_file(saved, tmp_path):
    assert cli(str(saved)).stdout.decode() == GOLDEN_BACKWARD
    r = cli(str(saved), "--format", "json", "-o", str(tmp_path / "g.json"))
    d = json.loads((tmp_path / "g.json").read_text())
    validate(d, dump.GRAPH_JSON_SCHEMA)
    assert d["n_nodes"] == 10 and r.stdout == b""
    dot = cli(str(saved), "--format", "dot", "--op", "MUL,OUT_PROD").stdout.decode()
    assert dot.startswith("digraph G {") and "2 of 10 nodes: op MUL, OUT_PROD" in dot and '"n9"' in dot


@needs_dot
def test_cli_svg_and_png(saved, tmp_path):
    cli(str(saved), "--format", "svg", "-o", str(tmp_path / "g.svg"))
    assert (tmp_path / "g.svg").read_bytes().lstrip().startswith(b"<?xml")
    png = cli(str(saved), "--format", "png").stdout
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_without_graphviz(saved, tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))          # no dot on PATH
    r = cli(str(saved), "--format", "svg", env=env, check=False)
    assert r.returncode == 1 and b"Graphviz" in r.stderr and b"`dot`" in r.stderr and r.stdout == b""


def test_cli_model_stats_save_and_console_script(tmp_path):
    out = cli("--model", "baby-llama", "--graph", "backward", "--n-layer", "2", "--stats", "--threads", "2",
              "--save", str(tmp_path / "b.gcg")).stdout.decode()
    assert "plan for 2 threads" in out and "parameters: 21 tensors" in out
    g, gf = gc.graph_import(tmp_path / "b.gcg", with_forward=True)
    assert gf is not None and g.n_nodes > gf.n_nodes
    js = json.loads(cli(str(tmp_path / "b.gcg"), "--stats", "--format", "json").stdout)
    assert js["n_nodes"] == g.n_nodes and js["plan"]["n_threads"] == 1
    r = cli("--model", "baby-llama", "--graph", "generation", "--save", str(tmp_path / "gen.gcg"))
    assert r.stdout == b"" and b"saved" in r.stderr
    script = os.path.join(os.path.dirname(sys.executable), "graphcore-dump")
    if os.path.exists(script):                            # installed by pip install -e .
        r = subprocess.run([script, str(tmp_path / "gen.gcg"), "--max-nodes", "3"], capture_output=True, timeout=600)
        assert r.returncode == 0 and b"(showing 3)" in r.stdout


def test_cli_from_a_function(tmp_path):
    (tmp_path / "mygraphs.py").write_text(
        "import graphcore as gc\n"
        "def build():\n"
        "    ctx = gc.init(1 << 16)\n"
        "    a = gc.set_name(gc.new_tensor_1d(ctx, gc.TYPE_F32, 4), 'a')\n"
        "    return gc.sqr(ctx, gc.relu(ctx, a))\n"
        "def not_a_graph():\n"
        "    return 42\n")
    out = cli("--from", "mygraphs:build", cwd=tmp_path).stdout.decode()
    assert "RELU" in out and "SQR" in out and " a\n" in out
    r = cli("--from", "mygraphs:not_a_graph", cwd=tmp_path, check=False)
    assert r.returncode == 1 and b"returned int" in r.stderr
    r = cli("--from", "nosuchmodule:f", cwd=tmp_path, check=False)
    assert r.returncode == 1 and b"cannot import nosuchmodule" in r.stderr


def test_cli_errors(tmp_path, saved):
    bad = tmp_path / "bad.gcg"
    bad.write_bytes(saved.read_bytes()[:100])
    r = cli(str(bad), check=False)
    assert r.returncode == 1 and str(bad).encode() in r.stderr and b"truncated" in r.stderr
    r = cli(str(tmp_path / "missing.gcg"), check=False)
    assert r.returncode == 1 and b"cannot read" in r.stderr
    r = cli(check=False)
    assert r.returncode == 1 and b"give one source" in r.stderr
    r = cli(str(saved), "--model", "baby-llama", check=False)
    assert r.returncode == 1 and b"give one source" in r.stderr
    r = cli(str(saved), "--format", "gif", check=False)
    assert r.returncode == 2
    r = cli(str(saved), "--stats", "--format", "dot", check=False)
    assert r.returncode == 1 and b"--stats prints text or json" in r.stderr


def test_cli_as_a_user_runs_it(tmp_path, saved):
    """--version; bad sizes and paths caught before any work with one clear line; a binary format
    refused on a terminal; a reader that closes the pipe; files get the user's umask."""
    r = cli("--version")
    assert r.stdout.decode().startswith("graphcore-dump (graphcore ") and gc.__version__ in r.stdout.decode()
    r = cli("--model", "baby-llama", "--n-head", "5", check=False)
    assert r.returncode == 1 and b"must be a multiple of --n-head (5)" in r.stderr and b"usage" not in r.stderr
    r = cli(str(saved), "-o", str(tmp_path / "no" / "such" / "x.json"), "--format", "json", check=False)
    assert r.returncode == 1 and b"does not exist" in r.stderr and b"Traceback" not in r.stderr
    r = cli(str(saved), "-o", str(tmp_path), check=False)
    assert r.returncode == 1 and b"is a folder" in r.stderr
    (tmp_path / "raising.py").write_text("def build():\n    raise RuntimeError('boom')\n")
    r = cli("--from", "raising:build", cwd=tmp_path, check=False)
    assert r.returncode == 1 and b"the function raised RuntimeError: boom" in r.stderr and b"Traceback" not in r.stderr
    # -o honours the umask (and replaces an existing file keeping its mode)
    out = tmp_path / "g.json"
    cli(str(saved), "--format", "json", "-o", str(out))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    os.chmod(out, 0o640)
    cli(str(saved), "--format", "json", "-o", str(out))
    assert out.stat().st_mode & 0o777 == 0o640 and json.loads(out.read_text())["n_nodes"] == 10
    # a pipe whose reader goes away: no traceback
    r = subprocess.run(f"{sys.executable} -m graphcore_tools.graph_dump {saved} --format json | head -c 1", shell=True,
                       cwd=ROOT, capture_output=True, timeout=300)
    assert r.stdout == b"{" and b"Traceback" not in r.stderr and b"Error" not in r.stderr


def test_cli_refuses_binary_on_a_terminal(saved):
    import pty
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "graphcore_tools.graph_dump", str(saved), "--format", "png"], cwd=ROOT,
                           stdout=slave, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 1 and b"binary" in r.stderr and b"-o FILE" in r.stderr


def test_cli_profile_text_and_json(saved):
    out = cli(str(saved), "--profile", "--copies", "2", "--repeat", "1", "--by-op").stdout.decode()
    assert "10 nodes, 1 thread(s)" in out and "OUT_PROD" in out and "GFLOP/s" in out
    prof = json.loads(cli(str(saved), "--profile", "--format", "json", "--copies", "1", "--repeat", "1",
                          "--threads", "2").stdout)
    assert prof["format"] == "graphcore.profile+json" and prof["n_threads"] == 2
    ops = {n["op"] for n in prof["nodes"]}
    assert {"MUL_MAT", "OUT_PROD", "SUM"} <= ops
    mm = next(n for n in prof["nodes"] if n["op"] == "MUL_MAT")
    assert mm["flops"] == 2 * 4 * 3 * 5 and mm["gflops"] > 0          # [4,3] x [4,5]: 15 outputs of 4 products
    assert abs(sum(n["share"] for n in prof["nodes"]) - 1) < 1e-9
    r = cli(str(saved), "--profile", "--format", "dot", check=False)
    assert r.returncode == 1 and b"--profile prints text or json" in r.stderr
