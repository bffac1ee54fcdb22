"""Indexing and writing ops against numpy: get_rows (F32, F16, I32, batched indices), get_rows_back,
diag, set / set_1d / set_2d / acc and their _inplace forms with ggml's byte strides and offsets;
out-of-range indices raise gc.ComputeError and write nothing; sentinel bytes around outputs; the
same bits for 1, 2 and 4 threads; bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc
from graphcore.testing import (Layout, assert_close_nmse, assert_same_bits, compute_guarded, element_byte_offsets,
                               layouts, make_tensor, ne4, random_values, seeds, sentinel_context)

F32, F16, I32 = gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32
NP = {F32: np.float32, F16: np.float16, I32: np.int32}
ES = {F32: 4, F16: 2, I32: 4}


def _raises(fn, *needles, exc=gc.GraphError):
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message {msg!r}"
    return msg


def typed_values(ne, seed, type_):
    if type_ == I32:
        return random_values(ne, seed, -1000, 1000, dtype=np.int32)
    x = random_values(ne, seed, -4, 4)
    return x.astype(np.float16) if type_ == F16 else x


# -- get_rows -----------------------------------------------------------------------------------------------------
@st.composite
def get_rows_cases(draw):
    ne0, rows = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    ne2, ne3 = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    n = draw(st.integers(1, 7))
    batched = draw(st.booleans())
    if not batched:
        ne2 = ne3 = 1
    return [ne0, rows, ne2, ne3], [n, ne2, ne3]


@pytest.mark.parametrize("type_", [F32, F16, I32], ids=["f32", "f16", "i32"])
@given(case=get_rows_cases(), la=layouts(), lb=layouts(kinds=("contiguous", "strided", "permuted")), seed=seeds())
def test_get_rows(type_, case, la, lb, seed):
    ne_a, ne_b = case
    ctx = sentinel_context(1 << 17)
    x = typed_values(ne_a, seed, type_)
    idx = random_values(ne_b, seed + 1, 0, ne_a[1], dtype=np.int32)
    a = make_tensor(ctx, ne_a, la, x, type=type_)
    b = make_tensor(ctx, ne_b, lb, idx, type=I32)
    out = gc.get_rows(ctx, a, b)
    assert out.ne == [ne_a[0], ne_b[0], ne_b[1], ne_b[2]]
    assert out.type == (I32 if type_ == I32 else F32)
    a4 = np.asarray(x).reshape(ne4(ne_a)[::-1])
    i4 = idx.reshape(ne4(ne_b)[::-1])[0]             # [ne3, ne2, n]
    expected = np.stack([np.stack([a4[j3, j2][i4[j3, j2]] for j2 in range(ne_b[1])]) for j3 in range(ne_b[2])])
    compute_guarded(ctx, out, what="get_rows")
    got = out.numpy4d()
    assert_same_bits(got, expected.astype(NP[out.type]), f"get_rows {la} {lb}")


def test_get_rows_baby_llama():
    """inpL = get_rows(tok_embeddings [32, 8], tokens [64])."""
    ctx = sentinel_context(1 << 17)
    emb = random_values([32, 8], 3)
    toks = np.random.default_rng(0).integers(0, 8, 64).astype(np.int32)
    out = gc.get_rows(ctx, gc.from_numpy(ctx, emb), gc.from_numpy(ctx, toks))
    compute_guarded(ctx, out)
    assert out.ne == [32, 64, 1, 1]
    assert_same_bits(out.numpy(), emb[toks])


@pytest.mark.parametrize("n_threads", [1, 2, 4])
@pytest.mark.parametrize("bad", [-1, 8, 2**31 - 1, -2**31])
def test_get_rows_index_out_of_range(bad, n_threads):
    ctx = sentinel_context(4 << 20)
    emb = gc.from_numpy(ctx, random_values([4096, 8], 3))
    toks = np.arange(64, dtype=np.int32) % 8
    toks[40] = bad
    toks[50] = 9                          # a later bad index: the first one is reported
    out = gc.get_rows(ctx, emb, gc.from_numpy(ctx, toks))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    before = ctx.arena.copy()
    msg = _raises(lambda: gc.graph_compute_with_ctx(ctx, g, n_threads), "GET_ROWS", f"index {bad}", "8 rows",
                  exc=gc.ComputeError)
    assert "0..7" in msg
    assert np.array_equal(ctx.arena, before), "nothing may be written when an index is out of range"
    # the graph still computes once the indices are fixed
    out.src[1].numpy()[40] = 1
    out.src[1].numpy()[50] = 2
    gc.graph_compute_with_ctx(ctx, g, n_threads)
    assert_same_bits(out.numpy()[40], emb.numpy()[1])


# -- get_rows_back ----------------------------------------------------------------------------------------------------
@given(ne0=st.integers(1, 6), rows=st.integers(1, 6), n=st.integers(1, 9), la=layouts(), seed=seeds())
def test_get_rows_back(ne0, rows, n, la, seed):
    ctx = sentinel_context(1 << 17)
    grad = random_values([ne0, n], seed)
    idx = random_values([n], seed + 1, 0, rows, dtype=np.int32)      # duplicates accumulate
    a = make_tensor(ctx, [ne0, n], la, grad)
    b = gc.from_numpy(ctx, idx)
    c = gc.new_tensor_2d(ctx, F32, ne0, rows)
    out = gc.get_rows_back(ctx, a, b, c)
    assert out.ne == [ne0, rows, 1, 1] and out.src == [a, b]
    expected = np.zeros((rows, ne0))
    np.add.at(expected, idx, grad.astype(np.float64))
    compute_guarded(ctx, out, what="get_rows_back")
    assert_close_nmse(out.numpy().reshape(rows, ne0), expected, 1e-7, f"get_rows_back {la}")


def test_get_rows_back_index_out_of_range():
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, random_values([3, 4], 1))
    out = gc.get_rows_back(ctx, a, gc.from_numpy(ctx, np.array([0, 2, 4, 1], np.int32)),
                           gc.new_tensor_2d(ctx, F32, 3, 5))
    compute_guarded(ctx, out)
    out2 = gc.get_rows_back(ctx, a, gc.from_numpy(ctx, np.array([0, 2, 5, 1], np.int32)),
                            gc.new_tensor_2d(ctx, F32, 3, 5))
    _raises(lambda: gc.graph_compute_with_ctx(ctx, gc.build_forward(out2), 2), "GET_ROWS_BACK", "index 5",
            "5 rows", exc=gc.ComputeError)


# -- diag ---------------------------------------------------------------------------------------------------------------
@given(ne0=st.integers(1, 6), ne2=st.integers(1, 3), ne3=st.integers(1, 2), la=layouts(), seed=seeds())
def test_diag(ne0, ne2, ne3, la, seed):
    ctx = sentinel_context(1 << 17)
    x = random_values([ne0, 1, ne2, ne3], seed)
    a = make_tensor(ctx, [ne0, 1, ne2, ne3], la, x)
    out = gc.diag(ctx, a)
    assert out.ne == [ne0, ne0, ne2, ne3]
    x4 = x.reshape(ne3, ne2, 1, ne0)
    expected = x4 * np.eye(ne0)[None, None]
    compute_guarded(ctx, out, what="diag")
    np.testing.assert_array_equal(out.numpy4d(), expected.astype(np.float32), "diag")


# -- set / acc -------------------------------------------------------------------------------------------------------
@st.composite
def set_cases(draw, max_dims=4):
    """(ne_a, ne_b, nb1, nb2, nb3, offset) in elements units for nb/offset (times es later):
    a region that never overlaps itself and lies inside a."""
    nd = draw(st.integers(1, max_dims))
    ne_b = ne4([draw(st.integers(1, 4)) for _ in range(nd)])
    g1, g2, g3 = (draw(st.integers(0, 3)) for _ in range(3))
    s1 = ne_b[0] + g1
    s2 = s1 * ne_b[1] + g2
    s3 = s2 * ne_b[2] + g3
    off = draw(st.integers(0, 5))
    end = off + (ne_b[0] - 1) + (ne_b[1] - 1) * s1 + (ne_b[2] - 1) * s2 + (ne_b[3] - 1) * s3 + 1
    total = end + draw(st.integers(0, 4))
    shape = draw(st.sampled_from(["1d", "2d", "3d"]))
    if shape == "1d":
        ne_a = [total]
    elif shape == "2d":
        k = draw(st.integers(1, 5))
        ne_a = [k, -(-total // k)]
    else:
        k, m = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        ne_a = [k, m, -(-total // (k * m))]
    return ne_a, ne_b, s1, s2, s3, off


def region_indices(ne_b, s1, s2, s3, off):
    """Flat element indices of the region, in b's (numpy 4-D) order."""
    i3, i2, i1, i0 = np.meshgrid(*(np.arange(n) for n in ne_b[::-1]), indexing="ij")
    return off + i0 + i1 * s1 + i2 * s2 + i3 * s3


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op,type_", [("set", F32), ("set", F16), ("set", I32), ("acc", F32)],
                         ids=["set-f32", "set-f16", "set-i32", "acc-f32"])
@given(case=set_cases(), lb=layouts(), seed=seeds())
def test_set_acc(op, type_, inplace, case, lb, seed):
    ne_a, ne_b, s1, s2, s3, off = case
    es = ES[type_]
    ctx = sentinel_context(1 << 17)
    x = typed_values(ne_a, seed, type_)
    y = typed_values(ne_b, seed + 1, type_)
    a = gc.from_numpy(ctx, x) if type_ != F16 else make_tensor(ctx, ne_a, Layout(), x, type=F16)
    b = make_tensor(ctx, ne_b, lb, y, type=type_)
    fn = getattr(gc, op + ("_inplace" if inplace else ""))
    out = fn(ctx, a, b, s1 * es, s2 * es, s3 * es, off * es)
    assert list(out.op_params[:5]) == [s1 * es, s2 * es, s3 * es, off * es, int(inplace)]
    assert out.ne == a.ne and out.src == [a, b]
    flat = np.asarray(x).ravel().copy()
    ri = region_indices(ne_b, s1, s2, s3, off)
    yv = np.asarray(y).reshape(ne4(ne_b)[::-1])
    if op == "set":
        flat[ri] = yv
        expected = flat
    else:
        expected = flat.astype(np.float64)
        expected[ri] += yv.astype(np.float64)
    compute_guarded(ctx, out, what=op)
    got = out.numpy().ravel()
    if op == "set":
        assert_same_bits(got, expected.astype(NP[type_]), f"{op} {case} {lb}")
    else:
        assert_close_nmse(got, expected, 1e-7, f"{op} {case} {lb}")
    if inplace:
        assert out.view_src is not None
        assert np.array_equal(element_byte_offsets(out), element_byte_offsets(a))
    else:
        assert_same_bits(a.numpy().ravel(), np.asarray(x).ravel(), f"{op} must not change src0")


@pytest.mark.parametrize("op", ["set", "acc", "acc_inplace"])
def test_set_acc_split_across_threads(op):
    """A view's gradient is an acc into a 1-D tensor (one row): the copy and the region's rows are
    split across threads, with the same bits at any thread count, equal to numpy's."""
    n, ne_b, s1, off = 70_001, [300, 200], 333, 17
    x, y = random_values([n], 5), random_values(ne_b, 6)
    ri = region_indices(ne4(ne_b), s1, s1 * ne_b[1], s1 * ne_b[1], off)
    expected = x.ravel().copy()
    yv = y.reshape(ri.shape)
    expected[ri] = (expected[ri] + yv) if op.startswith("acc") else yv
    for n_threads in (1, 2, 3):
        ctx = gc.init(4 << 20)
        out = getattr(gc, op)(ctx, gc.from_numpy(ctx, x), gc.from_numpy(ctx, y), s1 * 4, s1 * ne_b[1] * 4,
                              s1 * ne_b[1] * 4, off * 4)
        g = gc.build_forward(out)
        assert gc.graph_plan(g, n_threads).n_tasks[g.nodes.index(out)] == n_threads
        compute_guarded(ctx, out, n_threads, graph=g, what=f"{op} x{n_threads}")
        assert_same_bits(out.numpy().ravel(), expected, f"{op} on {n_threads} threads")


@given(n=st.integers(1, 6), lb=layouts(), seed=seeds(), off=st.integers(0, 3))
def test_set_1d_2d(n, lb, seed, off):
    ctx = sentinel_context(1 << 17)
    x = random_values([4 * n + 10, 3], seed)
    a = gc.from_numpy(ctx, x)
    v1 = random_values([n], seed + 1)
    v2 = random_values([n, 3], seed + 2)
    o1 = gc.set_1d(ctx, a, make_tensor(ctx, [n], lb, v1), off * 4)
    o2 = gc.set_2d(ctx, a, make_tensor(ctx, [n, 3], lb, v2), a.nb[1], off * 4)
    o3 = gc.set_2d(ctx, gc.view_1d(ctx, a, a.ne[0] * 3, 0), gc.from_numpy(ctx, v2), (n + 1) * 4, off * 4)
    compute_guarded(ctx, [o1, o2, o3])
    e1 = x.ravel().copy()
    e1[off:off + n] = v1
    assert_same_bits(o1.numpy().ravel(), e1)
    e2 = x.copy()
    e2[:, off:off + n] = v2
    assert_same_bits(o2.numpy(), e2)
    e3 = x.ravel().copy()
    for r in range(3):
        e3[off + r * (n + 1): off + r * (n + 1) + n] = v2[r]
    assert_same_bits(o3.numpy(), e3)


def test_set_2d_baby_llama_kv_cache():
    """kc = set_2d(kc [2048], reshape_2d(Kcur, n_embd*N, n_batch), es*n_embd*n_ctx, offset), as
    forward_batch writes the K cache (n_embd 32, N 8, n_ctx 8, n_batch 8, n_past 0)."""
    ctx = sentinel_context(1 << 17)
    kc = gc.from_numpy(ctx, random_values([2048], 1))
    kcur = gc.from_numpy(ctx, random_values([256, 8], 2))
    out = gc.set_2d(ctx, kc, kcur, 4 * 32 * 8, 0)
    compute_guarded(ctx, out)
    assert out.ne == [2048, 1, 1, 1] and out.op == gc.OP_SET
    assert_same_bits(out.numpy(), kcur.numpy().ravel())
    # n_past = 3: each batch's rows start 3 tokens in, the rest keeps the cache's values
    kv = gc.from_numpy(ctx, random_values([2048], 3))
    k5 = gc.from_numpy(ctx, random_values([32 * 5, 8], 4))
    o2 = gc.set_2d(ctx, kv, k5, 4 * 32 * 8, 4 * 32 * 3)
    compute_guarded(ctx, o2)
    e = kv.numpy().reshape(8, 256).copy()
    e[:, 96:256] = k5.numpy()
    assert_same_bits(o2.numpy(), e.ravel())


# -- thread counts ----------------------------------------------------------------------------------------------------
def _cases():
    def emb(ctx):
        return gc.from_numpy(ctx, random_values([256, 50], 5))

    def idx(ctx, n, hi):
        return gc.from_numpy(ctx, (np.arange(n, dtype=np.int32) * 7919) % hi)

    return {
        "get_rows": lambda ctx, a: gc.get_rows(ctx, emb(ctx), idx(ctx, 300, 50)),
        "get_rows_back": lambda ctx, a: gc.get_rows_back(ctx, gc.from_numpy(ctx, random_values([256, 300], 6)),
                                                         idx(ctx, 300, 50), gc.new_tensor_2d(ctx, F32, 256, 50)),
        "diag": lambda ctx, a: gc.diag(ctx, gc.from_numpy(ctx, random_values([300], 7))),
        "set": lambda ctx, a: gc.set(ctx, a, gc.from_numpy(ctx, random_values([900, 70], 8)), a.nb[1], a.nb[2],
                                     a.nb[3], 4 * 13),
        "acc": lambda ctx, a: gc.acc(ctx, a, gc.from_numpy(ctx, random_values([900, 70], 8)), a.nb[1], a.nb[2],
                                     a.nb[3], 4 * 13),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_threads_same_bits(name):
    ctx = sentinel_context(8 << 20)
    a = gc.from_numpy(ctx, random_values([1000, 80], 9))
    out = CASES[name](ctx, a)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    node = g.nodes.index(out)
    results = []
    for n in (1, 2, 4):
        nt = gc.graph_plan(g, n).n_tasks[node]
        assert nt == n, f"{name}: planner gave {nt} tasks for {n} threads; the test needs a split"
        out.numpy4d()[...] = np.nan
        compute_guarded(ctx, out, n, graph=g, what=f"{name} x{n}")
        results.append(out.numpy().copy())
    assert_same_bits(results[1], results[0], f"{name} 2 vs 1 threads")
    assert_same_bits(results[2], results[0], f"{name} 4 vs 1 threads")
    assert not np.isnan(results[0]).any()


# -- bad input -----------------------------------------------------------------------------------------------------------
def test_get_rows_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 6)
    idx = gc.new_tensor_1d(ctx, I32, 3)
    _raises(lambda: gc.get_rows(ctx, a, gc.new_tensor_1d(ctx, F32, 3)), "get_rows", "I32", "f32")
    _raises(lambda: gc.get_rows(ctx, a, gc.new_tensor_2d(ctx, I32, 3, 2)), "get_rows", "[4, 6, 1, 1]",
            "[3, 2, 1, 1]")
    _raises(lambda: gc.get_rows(ctx, a, gc.new_tensor_4d(ctx, I32, 3, 1, 1, 2)), "get_rows", "b.ne3 == 1")
    _raises(lambda: gc.get_rows(ctx, gc.new_tensor_3d(ctx, F32, 4, 6, 2), gc.new_tensor_3d(ctx, I32, 3, 2, 2)),
            "get_rows", "[4, 6, 2, 1]", "[3, 2, 2, 1]")
    _raises(lambda: gc.get_rows(ctx, np.ones((6, 4), np.float32), idx), "get_rows", "ndarray")
    _raises(lambda: gc.get_rows(ctx, a, [0, 1]), "get_rows", "list")
    _raises(lambda: gc.get_rows_back(ctx, gc.new_tensor_2d(ctx, F32, 4, 3), idx, gc.new_tensor_2d(ctx, F32, 5, 6)),
            "get_rows_back", "[5, 6, 1, 1]")
    _raises(lambda: gc.get_rows_back(ctx, gc.new_tensor_2d(ctx, F32, 4, 2), idx, a), "get_rows_back",
            "one entry per src0 row")
    _raises(lambda: gc.get_rows_back(ctx, gc.new_tensor_3d(ctx, F32, 4, 3, 2), idx, a), "get_rows_back",
            "matrices")
    _raises(lambda: gc.get_rows_back(ctx, gc.new_tensor_2d(ctx, F32, 4, 3), gc.new_tensor_1d(ctx, F32, 3), a),
            "get_rows_back", "I32")
    _raises(lambda: gc.diag(ctx, a), "diag", "ne1 == 1", "[4, 6, 1, 1]")
    _raises(lambda: gc.diag(ctx, gc.new_tensor_1d(ctx, I32, 4)), "diag", "i32")


def test_set_acc_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 8, 4)          # 128 bytes
    b = gc.new_tensor_2d(ctx, F32, 3, 2)
    for name in ("set", "set_inplace", "acc", "acc_inplace"):
        fn = getattr(gc, name)
        _raises(lambda: fn(ctx, a, b, 32, 64, 128, 128), name, "beyond", "128 bytes")
        _raises(lambda: fn(ctx, a, b, 32, 64, 128, 96), name, "beyond")
        _raises(lambda: fn(ctx, a, b, 30, 64, 128, 0), name, "nb1 = 30", "multiple")
        _raises(lambda: fn(ctx, a, b, 32, 64, 128, 2), name, "offset = 2")
        _raises(lambda: fn(ctx, a, b, 8, 64, 128, 0), name, "overlaps itself")
        _raises(lambda: fn(ctx, a, b, 32, 64, 128, -4), name, "offset", ">= 0")
        _raises(lambda: fn(ctx, a, b, 32.0, 64, 128, 0), name, "nb1", "int")
        _raises(lambda: fn(ctx, a, gc.new_tensor_2d(ctx, F32, 9, 4), 36, 64, 128, 0), name, "more elements")
        _raises(lambda: fn(ctx, gc.transpose(ctx, a), b, 16, 64, 128, 0), name, "contiguous")
        _raises(lambda: fn(ctx, a, gc.new_tensor_2d(ctx, I32, 3, 2), 32, 64, 128, 0), name)
    _raises(lambda: gc.acc(ctx, gc.new_tensor_1d(ctx, I32, 8), gc.new_tensor_1d(ctx, I32, 2), 8, 8, 8, 0), "acc",
            "F32", "i32")
    _raises(lambda: gc.set(ctx, gc.new_tensor_1d(ctx, I32, 8), gc.new_tensor_1d(ctx, F32, 2), 8, 8, 8, 0), "set",
            "type")
    _raises(lambda: gc.set_1d(ctx, a, b, 100), "set_1d", "beyond")   # rows 32 bytes apart (a's nb1)
    _raises(lambda: gc.set_2d(ctx, a, b, 4, 0), "set_2d", "overlaps")
    # in place, src1 must not share bytes with the region it is written to
    v = gc.view_1d(ctx, a, 4, 16)
    _raises(lambda: gc.set_1d_inplace(ctx, a, v, 8), "set_1d_inplace", "shares bytes")
    _raises(lambda: gc.acc_inplace(ctx, a, v, 32, 128, 128, 24), "acc_inplace", "shares bytes")
    gc.set_1d_inplace(ctx, a, v, 64)                # a different part of a is fine
    gc.set_1d(ctx, a, v, 8)                         # and so is writing into a copy



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["indexing"] for op in family_ops(m)]


@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_indexing_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
