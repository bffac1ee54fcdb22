"""gc.graph_export / gc.graph_import: round trips compute bitwise the same; the file follows its
documented layout (an independent encoder here writes the same bytes); truncated, corrupt, foreign,
newer-version and crafted files raise gc.GraphFileError naming the file, never crash or half-load;
every imported node passes its op's builder."""
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphcore as gc
from graphcore import graphfile as GF
from graphcore.ops.registry import BY_NAME, OPS
from graphcore.testing.graphgen import graphs

F32, F16, I32 = gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32


# -- graphs ----------------------------------------------------------------------------------------------
def arr(ctx, values, type_=F32, name=""):
    t = gc.from_numpy(ctx, np.asarray(values), type=type_)
    return gc.set_name(t, name) if name else t


def zoo(ctx):
    """A forward graph touching most record kinds: a parameter, F16 and I32 leafs, views (view,
    transpose, permute, reshape), in-place results, cpy into a leaf, set/acc, soft_max_ext with a
    mask, rope, get_rows, argmax (an I32 node), a view_tensor leaf aliasing another leaf, and a loss."""
    rng = np.random.default_rng(7)
    w = arr(ctx, rng.uniform(-1, 1, (3, 4)).astype(np.float32), name="w")
    gc.set_param(ctx, w)
    x = arr(ctx, rng.uniform(-1, 1, (5, 4)).astype(np.float32), name="x")
    h = arr(ctx, np.array([[1.5, -0.0, np.inf, 2.0], [np.nan, 65504, 1e-7, -3], [0.25, 0, 1, -1]], np.float16),
            F16, "h")
    idx = arr(ctx, np.array([2, 0, 1, 1], np.int32), I32, "idx")
    pos = arr(ctx, np.array([0, 3], np.int32), I32, "pos")
    mask = arr(ctx, np.triu(np.full((5, 3), -np.inf, np.float32), 1), name="mask")
    gc.set_input(x)
    y = gc.set_name(gc.mul_mat(ctx, w, x), "y")                              # [3, 5]
    y16 = gc.mul_mat(ctx, h, x)                                              # F16 src0
    s = gc.add(ctx, y, y16)
    sm = gc.soft_max_ext(ctx, s, mask, None, 0.5, 0.0)
    rows = gc.get_rows(ctx, w, idx)                                          # [4, 4]
    xt = gc.cont(ctx, gc.transpose(ctx, x))                                  # [5, 4]
    v = gc.view_2d(ctx, x, 2, 5, x.nb[1], 4)
    d = gc.dup(ctx, x)
    ip = gc.scale_inplace(ctx, gc.add_inplace(ctx, d, x), 0.5)               # views of d
    r = gc.rope(ctx, gc.reshape_3d(ctx, gc.cont(ctx, xt), 2, 5, 2), pos, 2, 0, 0)
    perm = gc.permute(ctx, r, 1, 0, 2, 3)
    dst = gc.set_name(gc.new_tensor_1d(ctx, F16, 15), "dst")
    c16 = gc.cpy(ctx, sm, dst)                                               # a view of the leaf dst
    big = gc.new_tensor_2d(ctx, F32, 8, 6)
    gc.set_f32(big, 0.5)
    st = gc.set_2d(ctx, big, v, big.nb[1], 4)
    ac = gc.acc(ctx, st, gc.sqr(ctx, v), big.nb[1], big.nb[2], big.nb[3], 0)
    am = gc.argmax(ctx, rows)
    alias = gc.view_tensor(ctx, x)
    loss = gc.add(ctx, gc.add(ctx, gc.sum(ctx, sm), gc.sum(ctx, gc.mul(ctx, rows, rows))),
                  gc.add(ctx, gc.sum(ctx, ac), gc.sum(ctx, gc.sqr(ctx, alias))))
    gc.set_name(loss, "loss")
    gc.set_output(loss)
    gf = gc.new_graph_custom(ctx, 256, True)
    for t in (loss, c16, ip, perm, am):
        gc.build_forward_expand(gf, t)
    return gf, loss


def node_bytes(g):
    return [n.numpy4d().tobytes() for n in g.nodes]


def compute(g, n_threads=1):
    plan = gc.graph_plan(g, n_threads)
    if plan.work_size:
        plan.work_data = np.empty(plan.work_size, np.uint8)
    gc.graph_compute(g, plan)


def same_structure(a, b):
    assert a.n_nodes == b.n_nodes and a.n_leafs == b.n_leafs and a.size == b.size
    assert (a.grads is None) == (b.grads is None)
    pos_a = {id(t): ("n", i) for i, t in enumerate(a.nodes)} | {id(t): ("l", i) for i, t in enumerate(a.leafs)}
    pos_b = {id(t): ("n", i) for i, t in enumerate(b.nodes)} | {id(t): ("l", i) for i, t in enumerate(b.leafs)}
    for x, y in zip(list(a.nodes) + list(a.leafs), list(b.nodes) + list(b.leafs)):
        assert (x.op, x.type, list(x.ne), list(x.nb), x.name, x.flags) == (y.op, y.type, list(y.ne), list(y.nb),
                                                                           y.name, y.flags)
        assert np.array_equal(x.op_params, y.op_params)
        assert [pos_a.get(id(s)) if s is not None else None for s in x.src] == \
               [pos_b.get(id(s)) if s is not None else None for s in y.src]
        assert (x.view_src is None) == (y.view_src is None) and (x.view_src is None or x.view_offs == y.view_offs)
        assert (x.grad is None) == (y.grad is None)
        if x.grad is not None and id(x.grad) in pos_a:
            assert pos_b.get(id(y.grad)) == pos_a[id(x.grad)]


def test_forward_round_trip_is_bitwise(tmp_path):
    ctx = gc.init(1 << 22)
    gf, loss = zoo(ctx)
    p = tmp_path / "zoo.gcg"
    gc.graph_export(gf, p)
    leafs_before = [t.numpy4d().tobytes() for t in gf.leafs]
    compute(gf, 2)
    g2 = gc.graph_import(p)
    same_structure(gf, g2)
    assert [t.numpy4d().tobytes() for t in g2.leafs] == leafs_before      # F16 NaN/inf/-0 and I32 kept
    compute(g2, 1)
    assert node_bytes(g2) == node_bytes(gf)
    # views stay views of the imported owners: the in-place results share the dup's bytes, cpy writes into dst
    names = {t.name: t for t in list(g2.nodes) + list(g2.leafs)}
    assert names["dst"].view_src is None
    cpy2 = [n for n in g2.nodes if n.op == gc.OP_CPY][0]
    assert cpy2.view_src is names["dst"]
    assert [t for t in g2.leafs if t.view_src is names["x"]], "view_tensor leaf lost its alias"


def test_backward_round_trip_keeps_forward_graph_grads_and_params(tmp_path):
    ctx = gc.init(1 << 22)
    gf, loss = zoo(ctx)
    gb = gc.build_backward(ctx, gf)
    gc.graph_reset(gb)
    gc.set_f32(loss.grad, 1.0)
    p = tmp_path / "zoo-backward.gcg"
    gc.graph_export(gb, p, gf)
    compute(gb, 2)
    g2, gf2 = gc.graph_import(p, with_forward=True)
    same_structure(gb, g2)
    same_structure(gf, gf2)
    ids2 = {id(n) for n in g2.nodes}
    assert all(id(n) in ids2 for n in gf2.nodes)                  # one set of tensors for both graphs
    params = [n for n in g2.nodes if n.flags & gc.FLAG_PARAM]
    assert [p.name for p in params] == ["w"] and any(params[0].grad is n for n in g2.nodes)
    compute(g2, 1)
    assert node_bytes(g2) == node_bytes(gb)
    # graph_reset on the imported graph clears its gradients; seeding and recomputing gives them again
    gc.graph_reset(g2)
    gc.set_f32(gc.graph_get_tensor(gf2, "loss").grad, 1.0)
    compute(g2, 2)
    assert node_bytes(g2) == node_bytes(gb)


def test_a_forward_graph_after_backward_gets_zero_gradients(tmp_path):
    """Gradients outside the file come back as zero F32 tensors (as set_param makes them)."""
    ctx = gc.init(1 << 22)
    gf, loss = zoo(ctx)
    gc.build_backward(ctx, gf)
    p = tmp_path / "f.gcg"
    gc.graph_export(gf, p)
    g2 = gc.graph_import(p)
    w2 = gc.graph_get_tensor(g2, "w")
    assert w2.flags & gc.FLAG_PARAM and w2.grad is not None and w2.grad.type == F32
    assert list(w2.grad.ne) == list(w2.ne) and not w2.grad.numpy().any()
    assert g2.grads is not None and all(x is None or not x.numpy().any() for x in g2.grads)
    # a backward graph can be built on the imported one
    gb2 = gc.build_backward(w2.ctx, g2)
    assert gb2.n_nodes > g2.n_nodes


def test_graph_view_inputs_become_data(tmp_path):
    ctx = gc.init(1 << 22)
    gf, _ = zoo(ctx)
    compute(gf)
    v = gc.graph_view(gf, 5, gf.n_nodes)
    p = tmp_path / "view.gcg"
    gc.graph_export(v, p)
    g2 = gc.graph_import(p)
    assert g2.n_nodes == v.n_nodes and g2.n_leafs == 0
    compute(v)
    compute(g2)
    assert node_bytes(g2) == node_bytes(v)


def test_no_alloc_graph_imports_zero_filled(tmp_path):
    ctx = gc.init(1 << 16, no_alloc=True)
    a = gc.set_name(gc.new_tensor_2d(ctx, F32, 4, 3), "a")
    b = gc.new_tensor_1d(ctx, F32, 4)
    g = gc.build_forward(gc.sum(ctx, gc.mul(ctx, a, b)))
    gc.graph_export(g, tmp_path / "na.gcg")
    g2 = gc.graph_import(tmp_path / "na.gcg")
    assert not gc.graph_get_tensor(g2, "a").numpy().any()
    compute(g2)
    assert gc.get_f32_1d(g2.nodes[-1], 0) == 0.0


def test_map_custom_cannot_be_exported(tmp_path):
    def twice(dst, a, ith, nth):
        dst[...] = a * 2

    ctx = gc.init(1 << 16)
    a = gc.new_tensor_1d(ctx, F32, 4)
    g = gc.build_forward(gc.map_custom1(ctx, a, twice, 1, allow_python=True))
    with pytest.raises(gc.GraphError, match="MAP_CUSTOM1.*user function"):
        gc.graph_export(g, tmp_path / "c.gcg")
    assert not (tmp_path / "c.gcg").exists() and not os.listdir(tmp_path)


def test_import_into_a_context_and_rollback(tmp_path):
    ctx = gc.init(1 << 22)
    gf, _ = zoo(ctx)
    p = tmp_path / "z.gcg"
    gc.graph_export(gf, p)
    mine = gc.init(1 << 22)
    g2 = gc.graph_import(p, mine)
    assert all(t.ctx is mine for t in g2.nodes)
    used = gc.used_mem(mine)
    bad = tmp_path / "bad.gcg"
    recs, grs = decode(p.read_bytes())
    mm = [r for r in recs if r["op"] == "MUL_MAT"][0]
    mm["ne"][1] += 1
    bad.write_bytes(encode(recs, grs)[0])
    with pytest.raises(gc.GraphFileError):
        gc.graph_import(bad, mine)
    assert gc.used_mem(mine) == used
    small = gc.init(256)
    with pytest.raises(gc.OutOfMemoryError):
        gc.graph_import(p, small)
    assert gc.used_mem(small) == 0


# -- baby-llama's graphs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["forward", "backward", "generation"])
def test_baby_llama_round_trip(tmp_path, which):
    from graphcore_tools.graph_dump import parser
    from graphcore_tools.graph_sources import baby_llama_graph
    args = parser().parse_args(["--model", "baby-llama", "--n-layer", "2", "--n-embd", "16", "--n-head", "4"])
    g, gf = baby_llama_graph(which, args)
    p = tmp_path / f"{which}.gcg"
    gc.graph_export(g, p, gf)
    g2, gf2 = gc.graph_import(p, with_forward=True)
    assert (gf2 is None) == (gf is None)
    same_structure(g, g2)
    compute(g, 2)
    compute(g2, 2)
    assert node_bytes(g2) == node_bytes(g)


# -- random graphs of every exportable op -----------------------------------------------------------------------
EXPORTABLE = [op.name for op in OPS if op.sample is not None and op.not_exportable is None]


def _round_trip_drawn(tmp_path, drawn, backward):
    g, gf = (drawn.backward_graph, drawn.graph) if backward else (drawn.graph, None)
    if backward:
        drawn.seed_loss()
    p = tmp_path / "drawn.gcg"
    gc.graph_export(g, p, gf)
    g2 = gc.graph_import(p)
    same_structure(g, g2)
    compute(g)
    compute(g2)
    assert node_bytes(g2) == node_bytes(g)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=graphs(ops=EXPORTABLE, max_nodes=8, sizes=("tiny", "medium")))
def test_random_forward_graphs_round_trip(tmp_path_factory, drawn):
    _round_trip_drawn(tmp_path_factory.mktemp("rf"), drawn, False)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=graphs(max_nodes=6, backward=True, sizes=("tiny",)))
def test_random_backward_graphs_round_trip(tmp_path_factory, drawn):
    _round_trip_drawn(tmp_path_factory.mktemp("rb"), drawn, True)


@pytest.mark.parametrize("op", EXPORTABLE)
def test_every_op_rebuilds_through_its_builder(tmp_path, op):
    """Each op's rebuild adapter: a drawn node of the op comes back identical."""
    @settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(drawn=graphs(first=op, max_nodes=1, sizes=("tiny",)))
    def check(drawn):
        assert any(n.op == BY_NAME[op].code for n in drawn.graph.nodes)
        _round_trip_drawn(tmp_path, drawn, False)
    check()


# -- the layout, written independently from the documentation ----------------------------------------------------
def decode(data):
    """The file's records and graphs as plain dicts (fields named as in graphcore.graphfile's docs)."""
    recs, graphs_ = GF._parse(data, "test")
    out = []
    for r in recs:
        out.append(dict(kind=r.kind, op=OPS[r.op].name, name=r.name, type=r.type, flags=r.flags, ne=list(r.ne),
                        nb=list(r.nb), op_params=[int(x) for x in r.op_params], view_src=r.view_src,
                        view_offs=r.view_offs, grad=r.grad, src=list(r.src),
                        data=bytes(data[r.data_offs:r.data_offs + r.data_len]) if r.kind == 0 else None))
    gs = [dict(size=g.size, flags=g.flags, nodes=list(g.nodes), leafs=list(g.leafs),
               grads=None if g.grads is None else list(g.grads)) for g in graphs_]
    return out, gs


def encode(recs, gs, *, magic=b"GCGRAPH\x00", version=1, n_tensors=None, n_graphs=None, reserved=0):
    """Bytes of a file per the documented layout, and the offset where each section starts."""
    marks, body = [], b""
    for i, r in enumerate(recs):
        marks.append((f"record {i}", 32 + len(body)))
        op, name = r["op"].encode("ascii"), r["name"].encode("utf-8")
        b = struct.pack("<BB", r["kind"], len(r["src"])) + struct.pack("<B", len(op)) + op
        b += struct.pack("<H", len(name)) + name
        b += struct.pack("<II", r["type"], r["flags"]) + struct.pack("<4q", *r["ne"]) + struct.pack("<4q", *r["nb"])
        b += struct.pack("<16i", *r["op_params"]) + struct.pack("<iqi", r["view_src"], r["view_offs"], r["grad"])
        b += struct.pack(f"<{len(r['src'])}i", *r["src"])
        if r["kind"] == 0:
            marks.append((f"record {i} data", 32 + len(body) + len(b)))
            b += struct.pack("<Q", len(r["data"])) + r["data"]
        body += b
    for k, g in enumerate(gs):
        marks.append((f"graph {k}", 32 + len(body)))
        b = struct.pack("<II", g["size"], g["flags"])
        b += struct.pack("<I", len(g["nodes"])) + struct.pack(f"<{len(g['nodes'])}I", *g["nodes"])
        b += struct.pack("<I", len(g["leafs"])) + struct.pack(f"<{len(g['leafs'])}I", *g["leafs"])
        if g["grads"] is not None:
            b += struct.pack(f"<{len(g['grads'])}i", *g["grads"])
        body += b
    marks.append(("checksum", 32 + len(body)))
    size = 32 + len(body) + 4
    head = struct.pack("<8sIQIII", magic, version, size, len(recs) if n_tensors is None else n_tensors,
                       len(gs) if n_graphs is None else n_graphs, reserved)
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF), marks


def fix(data: bytes) -> bytes:
    """data with the header's size and the checksum made right (to reach the checks behind them)."""
    data = bytearray(data)
    if len(data) >= 24:
        struct.pack_into("<Q", data, 12, len(data))
    if len(data) >= 36:
        struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A small backward graph's file bytes (F16 and I32 leafs, views, a cpy, set, rope)."""
    ctx = gc.init(1 << 20)
    w = arr(ctx, np.arange(12, dtype=np.float32).reshape(3, 4) / 10, name="w")
    gc.set_param(ctx, w)
    h = arr(ctx, np.ones((2, 4), np.float16), F16, "h")
    i = arr(ctx, np.array([1, 0], np.int32), I32, "i")
    x = gc.get_rows(ctx, w, i)
    y = gc.mul_mat(ctx, h, gc.transpose(ctx, gc.cont(ctx, gc.transpose(ctx, x))))
    loss = gc.sum(ctx, gc.sqr(ctx, gc.add(ctx, x, gc.view_2d(ctx, w, 4, 2, w.nb[1], 0))))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, y)
    gc.build_forward_expand(gf, loss)
    gb = gc.build_backward(ctx, gf)
    p = tmp_path_factory.mktemp("small") / "small.gcg"
    gc.graph_export(gb, p, gf)
    return p.read_bytes()


def load(tmp_path, data, name="x.gcg"):
    p = tmp_path / name
    p.write_bytes(data)
    return gc.graph_import(p), p


def refused(tmp_path, data, match, name="bad.gcg"):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(gc.GraphFileError, match=match) as ei:
        gc.graph_import(p)
    assert str(p) in str(ei.value), "the message names the file"
    return str(ei.value)


def test_independent_encoder_writes_the_same_bytes(small_file):
    recs, gs = decode(small_file)
    assert encode(recs, gs)[0] == small_file
    assert small_file[:8] == b"GCGRAPH\x00" and struct.unpack_from("<I", small_file, 8)[0] == 1


def test_truncated_anywhere_raises(tmp_path, small_file):
    for n in range(len(small_file)):
        msg = refused(tmp_path, small_file[:n], "truncated|not a graphcore")
        assert n < 8 or "truncated" in msg


def test_truncated_at_every_section_behind_a_valid_header(tmp_path, small_file):
    """Cut at each section's start (and inside it), with the header's size and the checksum made to
    agree: the parser itself must notice."""
    recs, gs = decode(small_file)
    _, marks = encode(recs, gs)
    assert len(marks) > 10
    for what, off in marks:
        for cut in ((off + 1, off + 5) if what == "checksum" else (off, off + 1, off + 5)):
            data = fix(small_file[:cut] + b"\0\0\0\0")
            refused(tmp_path, data, "truncated|corrupt")


def test_foreign_files(tmp_path, small_file):
    refused(tmp_path, b"", "truncated")
    refused(tmp_path, b"\x89PNG\r\n\x1a\n" + small_file[8:], "not a graphcore graph file")
    refused(tmp_path, b"GGUF" + small_file[4:], "not a graphcore graph file")
    flipped = bytearray(small_file)
    flipped[0] ^= 0x20
    refused(tmp_path, bytes(flipped), "not a graphcore graph file")
    refused(tmp_path, b"hello world, this is text\n" * 4, "not a graphcore graph file")


def test_versions(tmp_path, small_file):
    recs, gs = decode(small_file)
    msg = refused(tmp_path, encode(recs, gs, version=2)[0], "newer graphcore")
    assert "version 2" in msg and "version 1" in msg
    refused(tmp_path, encode(recs, gs, version=0)[0], "unknown format version 0")
    refused(tmp_path, encode(recs, gs, version=0xFFFFFFFF)[0], "newer")
    # a short garbage file after the magic is truncated, not "newer" (the size is checked first)
    refused(tmp_path, b"GCGRAPH\x00garbage!", "truncated: 16 bytes")


def test_checksum_and_trailing_bytes(tmp_path, small_file):
    data = bytearray(small_file)
    data[len(data) // 2] ^= 1
    refused(tmp_path, bytes(data), "checksum mismatch")
    refused(tmp_path, small_file + b"\0", "bytes after the end")


def _wrong_grad_shape(recs):
    i = [k for k, x in enumerate(recs) if x["type"] == F32 and x["grad"] == -1][0]
    recs[i]["grad"] = [k for k, x in enumerate(recs) if x["type"] == F32 and x["ne"] != recs[i]["ne"]][0]


def _drop_last_node(g):
    g["nodes"].pop()
    if g["grads"] is not None:
        g["grads"].pop()
    return g


def _last_node_to_leafs(g):
    g["leafs"].append(g["nodes"][-1])
    _drop_last_node(g)


def mutate(small_file, fn, **kw):
    recs, gs = decode(small_file)
    fn(recs, gs)
    return encode(recs, gs, **kw)[0]


def _set(d, k, v):
    d[k] = v


@pytest.mark.parametrize("name,fn,match", [
    ("huge ne", lambda r, g: r[0]["ne"].__setitem__(1, 2**62), "absurd shape"),
    ("zero ne", lambda r, g: r[0]["ne"].__setitem__(0, 0), "absurd shape"),
    ("negative ne", lambda r, g: r[0]["ne"].__setitem__(2, -1), "absurd shape"),
    ("huge nb", lambda r, g: r[0]["nb"].__setitem__(3, 2**60), "absurd strides"),
    ("zero nb", lambda r, g: r[0]["nb"].__setitem__(1, 0), "absurd strides"),
    ("span over 1 TiB", lambda r, g: (r[0]["ne"].__setitem__(1, 2**30), r[0]["nb"].__setitem__(1, 2**20)),
     "absurd size"),
    ("data size", lambda r, g: _set(r[0], "data", r[0]["data"] + b"\0"), "data bytes"),
    ("unknown op", lambda r, g: _set([x for x in r if x["kind"] == 2][0], "op", "FLASH_ATTN_EXT"), "unknown op"),
    ("unknown type", lambda r, g: _set(r[0], "type", 4), "unknown type"),
    ("unknown kind", lambda r, g: _set(r[0], "kind", 7), "kind 7"),
    ("unknown flags", lambda r, g: _set(r[0], "flags", 64), "unknown flags"),
    ("int param", lambda r, g: _set([x for x in r if x["type"] == I32][0], "flags", 4), "parameter of type"),
    ("long name", lambda r, g: _set(r[0], "name", "n" * 80), "name of 80"),
    ("too many srcs", lambda r, g: _set([x for x in r if x["kind"] == 2][0], "src", [0] * 9), "9 sources"),
    ("forward src", lambda r, g: _set([x for x in r if x["kind"] == 2][0], "src", [len(r) - 1]), "earlier record"),
    ("data with src", lambda r, g: _set(r[0], "src", [0]), "op NONE and no sources"),
    ("op record NONE", lambda r, g: _set([x for x in r if x["kind"] == 2][0], "op", "NONE"), "op NONE"),
    ("data with view", lambda r, g: _set([x for x in r if x["kind"] == 0][1], "view_src", 0), "cannot view"),
    ("alias outside", lambda r, g: _set([x for x in r if x["kind"] == 2 and x["view_src"] >= 0][0], "view_offs",
                                        10**6), "reaches outside"),
    ("negative view offs", lambda r, g: _set([x for x in r if x["view_src"] >= 0][0], "view_offs", -4),
     "reaches outside"),
    ("grad index", lambda r, g: _set(r[0], "grad", 10**6), "gradient"),
    ("grad code", lambda r, g: _set(r[0], "grad", -7), "gradient -7"),
    ("grad shape", lambda r, g: _wrong_grad_shape(r), "a gradient is F32"),
    ("no graphs", lambda r, g: g.clear(), "0 graphs"),
    ("three graphs", lambda r, g: g.append(dict(g[0])), "3 graphs"),
    ("graph size", lambda r, g: _set(g[0], "size", 1), "has size 1"),
    ("graph flags", lambda r, g: _set(g[0], "flags", 6), "unknown flags"),
    ("node index", lambda r, g: g[0]["nodes"].__setitem__(0, 10**5), "node record"),
    ("leaf twice", lambda r, g: g[0]["leafs"].append(g[0]["leafs"][0]), "leaf twice"),
    ("node and leaf", lambda r, g: g[0]["leafs"].append(g[0]["nodes"][0]), "both a node and a leaf"),
    ("op leaf", lambda r, g: _last_node_to_leafs(g[0]), "computed by an op"),
    ("node order", lambda r, g: g[0]["nodes"].reverse(), "does not compute before"),
    ("op not a node", lambda r, g: _drop_last_node(g[0]), "not a node of the graph"),
    ("graph grad", lambda r, g: _set(g[0], "grads", [10**6] * len(g[0]["nodes"])), "gradient"),
])
def test_crafted_fields_are_refused(tmp_path, small_file, name, fn, match):
    refused(tmp_path, mutate(small_file, fn), match)


def test_absurd_counts(tmp_path, small_file):
    recs, gs = decode(small_file)
    refused(tmp_path, encode(recs, gs, n_tensors=2**31)[0], "cannot fit")
    refused(tmp_path, encode(recs, gs, n_tensors=len(recs) + 1)[0], ".")
    refused(tmp_path, encode(recs, gs, n_tensors=len(recs) - 1)[0], ".")
    refused(tmp_path, encode(recs, gs, reserved=5)[0], "reserved")
    # a graph declaring 2**31 nodes
    data = bytearray(encode(recs, gs)[0])
    _, marks = encode(recs, gs)
    off = dict(marks)["graph 0"]
    struct.pack_into("<I", data, off + 8, 2**31)
    refused(tmp_path, fix(bytes(data)), "declares")
    # a record's data size of 2**60
    off = dict(marks)["record 0 data"]
    data = bytearray(encode(recs, gs)[0])
    struct.pack_into("<Q", data, off, 2**60)
    refused(tmp_path, fix(bytes(data)), "data bytes")
    # an op name and a tensor name running past the end
    off = dict(marks)["record 0"]
    data = bytearray(encode(recs, gs)[0])
    data[off + 2] = 255
    refused(tmp_path, fix(bytes(data)), "corrupt|truncated|unknown op")


def test_a_mul_mat_with_short_rows_is_refused_by_its_builder(tmp_path):
    """The case the importer exists to stop: a MUL_MAT whose src1 rows are shorter than src0's would
    make the kernel read outside memory. Its own builder refuses it."""
    ctx = gc.init(1 << 16)
    a = arr(ctx, np.ones((3, 4), np.float32), name="a")
    b = arr(ctx, np.ones((5, 4), np.float32), name="b")
    g = gc.build_forward(gc.mul_mat(ctx, a, b))
    p = tmp_path / "mm.gcg"
    gc.graph_export(g, p)
    recs, gs = decode(p.read_bytes())
    rb = [r for r in recs if r["name"] == "b"][0]
    rb["ne"] = [2, 5, 1, 1]
    rb["nb"] = [4, 8, 40, 40]
    rb["data"] = rb["data"][:40]
    msg = refused(tmp_path, encode(recs, gs)[0], "builder refuses it")
    assert "MUL_MAT" in msg and "ne00 == ne10" in msg
    # the node's own record lying about its shape, type or params
    for field, value, match in (("ne", [3, 6, 1, 1], "makes ne="), ("type", F16, "makes type"),
                                ("op_params", [2] + [0] * 15, "makes op_params"), ("src", [1, 0], "builder"),
                                ("view_src", 0, "reaches outside|makes a tensor of its own")):
        recs, gs = decode(p.read_bytes())
        mm = [r for r in recs if r["op"] == "MUL_MAT"][0]
        mm[field] = value
        refused(tmp_path, encode(recs, gs)[0], match)


def test_in_place_and_view_records_must_match_the_builder(tmp_path):
    ctx = gc.init(1 << 16)
    a = arr(ctx, np.ones((3, 4), np.float32), name="a")
    n = gc.scale(ctx, gc.neg_inplace(ctx, gc.dup(ctx, a)), 2.0)
    g = gc.build_forward(n)
    p = tmp_path / "ip.gcg"
    gc.graph_export(g, p)
    recs, gs = decode(p.read_bytes())
    neg = [r for r in recs if r["op"] == "NEG"][0]
    assert neg["view_src"] >= 0
    neg["view_src"], neg["view_offs"] = -1, 0                  # claims a tensor of its own: neg, not neg_inplace
    g2, _ = load(tmp_path, encode(recs, gs)[0])
    assert [x for x in g2.nodes if x.op == gc.OP_NEG][0].view_src is None
    recs, gs = decode(p.read_bytes())
    sc = [r for r in recs if r["op"] == "SCALE"][0]
    sc["view_src"] = 0                                          # claims to be in place over a
    refused(tmp_path, encode(recs, gs)[0], "makes a view of other bytes|a tensor of its own|SCALE")


def test_every_flipped_byte_is_refused_or_loads_a_valid_graph(tmp_path, small_file):
    """A bit flipped anywhere, with size and checksum made to agree: GraphFileError, or a graph whose
    every node its builder accepts (and which then computes)."""
    ok = 0
    for i in range(len(small_file) - 4):
        data = bytearray(small_file)
        data[i] ^= 1 << (i % 8)
        if i >= 20:
            data = fix(bytes(data))
        p = tmp_path / "flip.gcg"
        p.write_bytes(bytes(data))
        try:
            g = gc.graph_import(p)
        except gc.GraphFileError:
            continue
        ok += 1
        try:
            compute(g)
        except gc.ComputeError:         # e.g. a flipped get_rows index: the executor reports it
            pass
    assert ok > 0
