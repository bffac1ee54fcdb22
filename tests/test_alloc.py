"""The graph allocator (graphcore.alloc, ggml-alloc's rules): graphs computed in its buffer give
bitwise the results of the same graph in an allocating context, no byte outside a placed tensor is
written, offsets are deterministic, and misuse raises clear errors."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphcore as gc
from graphcore.ops.registry import new_node
from graphcore.alloc import graph_nbytes_no_reuse
from graphcore.testing import SENTINEL, assert_same_bits, element_byte_offsets, graphs, small_tasks


def clone_no_alloc(g, mem=1 << 20):
    """g's nodes rebuilt in a no_alloc context (leafs and parameters shared): the same graph, with
    every computed tensor left for the allocator."""
    ctx = gc.init(mem, no_alloc=True)
    m = {}

    def get(t):
        return None if t is None else m.get(id(t), t)
    for n in g.nodes:
        if n.op == gc.OP_NONE:
            continue
        vs = get(n.view_src)
        c = new_node(ctx, n.op, n.type, n.ne, [get(s) for s in n.src], [int(x) for x in n.op_params],
                     view_of=vs, view_offs=n.view_offs, nb=n.nb)
        c.flags, c.name = n.flags, n.name
        m[id(n)] = c
    out = gc.new_graph_custom(ctx, max(g.size, 16))
    for n in g.nodes:
        gc.build_forward_expand(out, get(n))
    return ctx, out, m


def sinks(g):
    used = {id(s) for n in g.nodes for s in n.src if s is not None}
    return [n for n in g.nodes if id(n) not in used and n.op != gc.OP_NONE]


def fill_sentinel(buf):
    n = buf.nbytes // 4 * 4
    buf[:n].view(np.uint32)[:] = SENTINEL.view("<u4")[0]


def check_alloc_matches(g, arenas, seed_fn=None):
    """Compute g (allocating context) and its no_alloc clone placed by the allocator at 1, 2 and 4
    threads, from the same leaf bytes: sinks and every leaf's bytes equal bitwise; no byte of the
    allocator's buffer outside a placed tensor's elements written."""
    ctx, g2, m = clone_no_alloc(g)
    leafs = [t for t in (*g.leafs, *g.nodes) if t.op == gc.OP_NONE and t.has_data]
    start = [a.copy() for a in arenas]
    if seed_fn:
        seed_fn()
    gc.graph_compute_with_ctx(ctx, g, 1)
    want = [(n, n.numpy4d().copy()) for n in sinks(g)] + [(t, t.numpy4d().copy()) for t in leafs]
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g2)
    buf = galloc.buffer
    assert gc.gallocr_get_buffer_size(galloc) <= graph_nbytes_no_reuse(g2, galloc)
    covered = np.zeros(0 if buf is None else buf.nbytes, dtype=bool)
    for t in galloc.placed.values():
        covered[element_byte_offsets(t)] = True
    with small_tasks():
        for nth in (1, 2, 4):
            for a, s in zip(arenas, start):
                a[:] = s
            if seed_fn:
                seed_fn()
            if buf is not None:
                fill_sentinel(buf)
            gc.graph_compute_with_ctx(ctx, g2, nth)
            for n, w in want:
                assert_same_bits(m.get(id(n), n).numpy4d(), w, f"{nth} threads, '{n.name}' ({gc.op_name(n.op)})")
            if buf is not None:
                stray = np.flatnonzero(~covered & (buf.view(np.uint8) != np.resize(SENTINEL, buf.nbytes)))
                assert stray.size == 0, f"{nth} threads: {stray.size} bytes written outside placed tensors"
    return galloc


@given(graphs(max_nodes=8, sizes=("tiny", "medium")))
@settings(max_examples=100)
def test_forward_graphs_bitwise(drawn):
    check_alloc_matches(drawn.graph, [drawn.ctx.arena])


@given(graphs(max_nodes=5, backward=True, sizes=("tiny", "medium")))
@settings(max_examples=60)
def test_backward_graphs_bitwise(drawn):
    check_alloc_matches(drawn.backward_graph, [drawn.ctx.arena], drawn.seed_loss)


# -- the rules, on small graphs -------------------------------------------------------------------------------
def _chain(ctx, a, b, n=10):
    x = a
    for _ in range(n):
        x = gc.mul(ctx, gc.add(ctx, x, b), b)
    return x


def _inputs(rng, n=256):
    c = gc.init(1 << 16)
    return (c, gc.from_numpy(c, rng.standard_normal(n).astype(np.float32)),
            gc.from_numpy(c, rng.standard_normal(n).astype(np.float32)))


def test_chain_runs_in_place_and_matches():
    rng = np.random.default_rng(0)
    _, a, b = _inputs(rng)
    ctx = gc.init(1 << 16, no_alloc=True)
    y = _chain(ctx, a, b)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g)
    assert gc.gallocr_get_buffer_size(galloc) == 1024         # one tensor's bytes: every node in place
    gc.graph_compute_with_ctx(ctx, g, 2)
    x = a.numpy().astype(np.float32)
    for _ in range(10):
        x = (x + b.numpy()) * b.numpy()
    assert_same_bits(y.numpy(), x)


def test_inputs_outputs_never_overwritten_and_offsets_deterministic():
    ctx = gc.init(1 << 16, no_alloc=True)
    a = gc.new_tensor_1d(ctx, gc.TYPE_F32, 64)
    b = gc.new_tensor_1d(ctx, gc.TYPE_F32, 64)
    gc.set_input(a)
    mid = gc.set_name(gc.sqr(ctx, gc.add(ctx, a, b)), "mid")
    gc.set_output(mid)
    y = gc.neg(ctx, gc.sqrt(ctx, mid))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g)
    offs = {t.name: t.data for t in (a, b, mid, y)}
    assert len({offs[k] for k in offs}) == 4                  # no sharing with an input or the output
    a.numpy()[:] = 4.0
    b.numpy()[:] = 5.0
    for _ in range(2):                                         # inputs survive: computing twice is the same
        gc.graph_compute_with_ctx(ctx, g, 1)
        assert np.all(mid.numpy() == 81.0) and np.all(y.numpy() == -9.0) and np.all(a.numpy() == 4.0)
    gc.gallocr_alloc_graph(galloc, g)
    assert {t.name: t.data for t in (a, b, mid, y)} == offs


def test_tensors_with_data_untouched_and_views_take_no_bytes():
    rng = np.random.default_rng(1)
    c, a, b = _inputs(rng, 64)
    ctx = gc.init(1 << 16, no_alloc=True)
    w = gc.set_param(c, gc.from_numpy(c, np.ones(64, np.float32)))
    r = gc.reshape_2d(ctx, gc.add(ctx, a, w), 8, 8)        # a view: no bytes of its own
    y = gc.sum_rows(ctx, gc.transpose(ctx, r))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    before = c.arena.copy()
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g)
    assert a._buf is c.arena and w._buf is c.arena
    assert r.data == r.src[0].data                            # the view follows its source
    gc.graph_compute_with_ctx(ctx, g, 1)
    assert np.array_equal(c.arena, before)
    want = (a.numpy() + 1.0).reshape(8, 8).T.sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(y.numpy().ravel(), want, rtol=1e-6)


def test_lifetimes_reuse_dead_bytes():
    """Ten independent chains, one after the other: each chain's bytes are free when the next starts."""
    ctx = gc.init(1 << 20, no_alloc=True)
    c = gc.init(1 << 16)
    x = gc.from_numpy(c, np.ones(1024, np.float32))
    outs = [gc.sum(ctx, gc.sqr(ctx, gc.scale(ctx, x, float(i)))) for i in range(10)]
    g = gc.new_graph(ctx)
    for o in outs:
        gc.build_forward_expand(g, o)
    galloc = gc.gallocr_new()
    gc.gallocr_reserve(galloc, g)
    size = gc.gallocr_get_buffer_size(galloc)
    assert size < graph_nbytes_no_reuse(g) / 4
    gc.gallocr_alloc_graph(galloc, g)
    assert gc.gallocr_get_buffer_size(galloc) == size         # reserve sized it: no growth
    gc.graph_compute_with_ctx(ctx, g, 1)
    assert [float(o.numpy()[0]) for o in outs] == [1024.0 * i * i for i in range(10)]


# -- bad input ----------------------------------------------------------------------------------------------
def test_compute_without_data_names_tensor_and_call():
    ctx = gc.init(1 << 16, no_alloc=True)
    a = gc.set_name(gc.new_tensor_1d(ctx, gc.TYPE_F32, 8), "inp")
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, gc.neg(ctx, a))
    with pytest.raises(gc.GraphError, match=r"'node_0'.*no data.*gallocr_alloc_graph.*alloc_ctx_tensors"):
        gc.graph_compute_with_ctx(ctx, g, 1)


def test_graph_outgrowing_buffer_is_reallocated_and_moves_tensors():
    ctx = gc.init(1 << 16, no_alloc=True)
    c = gc.init(1 << 16)
    x = gc.from_numpy(c, np.arange(16, dtype=np.float32))
    small = gc.neg(ctx, x)
    g1 = gc.new_graph(ctx)
    gc.build_forward_expand(g1, small)
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g1)
    gc.graph_compute_with_ctx(ctx, g1, 1)
    s1 = gc.gallocr_get_buffer_size(galloc)
    big = gc.mul_mat(ctx, gc.repeat(ctx, small, gc.new_tensor_2d(ctx, gc.TYPE_F32, 16, 16)), small)
    gc.set_output(small)
    g2 = gc.new_graph(ctx)
    gc.build_forward_expand(g2, big)
    gc.gallocr_alloc_graph(galloc, g2)
    assert gc.gallocr_get_buffer_size(galloc) > s1
    gc.graph_compute_with_ctx(ctx, g2, 1)       # small's cached lowering in g1 is stale: re-lowered
    gc.graph_compute_with_ctx(ctx, g1, 1)
    np.testing.assert_array_equal(small.numpy(), -np.arange(16))


def test_graph_of_another_allocation_is_refused_not_misread():
    ctx = gc.init(1 << 16, no_alloc=True)
    c = gc.init(1 << 16)
    x = gc.from_numpy(c, np.arange(16, dtype=np.float32))
    g1, g2 = gc.new_graph(ctx), gc.new_graph(ctx)
    gc.build_forward_expand(g1, gc.neg(ctx, x))
    gc.build_forward_expand(g2, gc.sqr(ctx, x))
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g1)
    gc.gallocr_alloc_graph(galloc, g2)          # g1's tensors lost their bytes to g2's
    with pytest.raises(gc.GraphError, match="no data"):
        gc.graph_compute_with_ctx(ctx, g1, 1)
    gc.gallocr_free(galloc)
    with pytest.raises(gc.GraphError, match="no data"):
        gc.graph_compute_with_ctx(ctx, g2, 1)
    with pytest.raises(gc.GraphError, match="freed"):
        gc.gallocr_alloc_graph(galloc, g2)


@pytest.mark.parametrize("call", [gc.gallocr_alloc_graph, gc.gallocr_reserve])
def test_bad_arguments(call):
    with pytest.raises(gc.GraphError, match="Gallocr"):
        call(None, gc.new_graph(None))
    with pytest.raises(gc.GraphError, match="Graph"):
        call(gc.gallocr_new(), "graph")
    with pytest.raises(gc.GraphError, match="Context"):
        gc.alloc_ctx_tensors(None)


def test_alloc_ctx_tensors():
    ctx = gc.init(1 << 16, no_alloc=True)
    w = gc.new_tensor_2d(ctx, gc.TYPE_F32, 3, 5)
    i = gc.new_tensor_1d(ctx, gc.TYPE_I32, 7)
    v = gc.view_1d(ctx, w, 3, 12)
    assert not (w.has_data or i.has_data or v.has_data)
    buf = gc.alloc_ctx_tensors(ctx)
    assert buf.nbytes == 64 + 32 and w.has_data and i.has_data
    w.numpy()[:] = np.arange(15).reshape(5, 3)
    assert list(v.numpy()) == [3, 4, 5]
    assert gc.alloc_ctx_tensors(ctx) is None                  # nothing left


def test_compute_without_allocation_does_not_crash_child():
    """Computing a no_alloc graph from a fresh interpreter raises; it never touches address 0."""
    code = ("import graphcore as gc\n"
            "ctx = gc.init(1 << 16, no_alloc=True)\n"
            "g = gc.new_graph(ctx)\n"
            "gc.build_forward_expand(g, gc.sqr(ctx, gc.new_tensor_1d(ctx, gc.TYPE_F32, 4)))\n"
            "try:\n    gc.graph_compute_with_ctx(ctx, g, 2)\nexcept gc.GraphError as e:\n    print('raised', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "raised" in r.stdout, r.stderr


def test_output_view_keeps_its_source_and_leafs_are_inputs():
    """An output that is a view (logits reshaped, say) keeps its source's bytes; a leaf without data
    is the caller's to fill, so no node ever takes its bytes."""
    c = gc.init(1 << 16)
    x = gc.from_numpy(c, np.arange(64, dtype=np.float32))
    ctx = gc.init(1 << 16, no_alloc=True)
    leaf = gc.new_tensor_1d(ctx, gc.TYPE_F32, 64)
    out = gc.reshape_2d(ctx, gc.add(ctx, x, leaf), 8, 8)
    gc.set_output(out)
    y = gc.sum(ctx, gc.sqr(ctx, gc.scale(ctx, gc.neg(ctx, out), 2.0)))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    galloc = gc.gallocr_new()
    gc.gallocr_alloc_graph(galloc, g)
    assert gc.alloc.graph_live_peak(g, galloc) <= gc.gallocr_get_buffer_size(galloc)
    leaf.numpy()[:] = 1.0
    for _ in range(2):
        gc.graph_compute_with_ctx(ctx, g, 1)
        np.testing.assert_array_equal(out.numpy().ravel(), np.arange(64) + 1.0)
        assert np.all(leaf.numpy() == 1.0)


def test_readme_memory_planning_example_runs():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "gallocr_new" in b)
    scope = {}
    exec("import numpy as np\nimport graphcore as gc\n" + block, scope)
    np.testing.assert_allclose(scope["y"].numpy(), np.full((64, 256), 1 / 256), rtol=1e-6)


def test_dump_stats_report_the_allocator():
    from graphcore import dump
    ctx = gc.init(1 << 20)
    x = gc.from_numpy(ctx, np.ones((16, 16), np.float32))
    y = gc.sum(ctx, gc.sqr(ctx, gc.neg(ctx, gc.mul_mat(ctx, x, x))))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, y)
    s = dump.graph_stats(g)
    m = s["memory"]
    assert m["no_reuse"] == 3 * 1024 + 32 and m["buffer"] == m["live_peak"] == 1024 + 32
    assert "graph allocator: buffer 1056 B" in dump.stats_text(s)


_UNARY = [lambda c, x: gc.neg(c, x), lambda c, x: gc.scale(c, x, 0.5), lambda c, x: gc.sqr(c, x),
          lambda c, x: gc.soft_max(c, x), lambda c, x: gc.rms_norm(c, x, 1e-5), lambda c, x: gc.silu(c, x),
          lambda c, x: gc.diag_mask_inf(c, x, 1), lambda c, x: gc.reshape(c, x, x),
          lambda c, x: gc.view_2d(c, x, x.ne[0], x.ne[1], x.nb[1], 0)]
_BINARY = [lambda c, x, y: gc.add(c, x, y), lambda c, x, y: gc.mul(c, x, y), lambda c, x, y: gc.sub(c, x, y)]


@given(st.data())
@settings(max_examples=80)
def test_chains_reuse_bytes_in_place_bitwise(data):
    """Chains of in-place-capable ops, views and branches (the allocator's reuse paths: own bytes,
    a whole-tensor view of a dying tensor, a source still read later), bitwise as in the arena."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ctx = gc.init(4 << 20)
    ne0, ne1 = data.draw(st.sampled_from([(4, 3), (64, 8), (300, 40)]))
    leafs = [gc.from_numpy(ctx, rng.standard_normal((ne1, ne0)).astype(np.float32)) for _ in range(2)]
    x = gc.sqr(ctx, leafs[0])
    made = [x]
    for _ in range(data.draw(st.integers(2, 14))):
        if data.draw(st.booleans()):
            x = data.draw(st.sampled_from(_UNARY))(ctx, x)
        else:
            other = data.draw(st.sampled_from(made + leafs))
            x = data.draw(st.sampled_from(_BINARY))(ctx, x, other)
        made.append(x)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, x)
    galloc = check_alloc_matches(g, [ctx.arena])
    n_owned = len({t.data for t in galloc.placed.values() if t.view_src is None})
    assert n_owned <= len([t for t in g.nodes if t.view_src is None])
