"""mul_mat and out_prod against float64 numpy (NMSE <= 5e-4): F32 and F16 src0, block broadcast over
dims 2 and 3 (ne12 > ne02, ne13 > ne03), permuted / transposed / strided src1 and non-transposed
views for src0, sizes below and above the BLAS threshold and above the chunk size, sentinel
bytes around outputs, the same bits for 1, 2 and 4 threads, bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc
from graphcore.ops import gemm as GEMM
from graphcore.ops import matmul as MM
from graphcore.testing import (Layout, assert_close_nmse, assert_same_bits, compute_guarded, layouts,
                               make_tensor, matmul_pairs, ne4, random_values, seeds, sentinel_context)

TOL = 5e-4
F32, F16 = gc.TYPE_F32, gc.TYPE_F16


def block_repeat(a4, ne2, ne3):
    """src0's batches broadcast by blocks (ggml's i02 = i12 / (ne12 / ne02)), numpy 4-D order."""
    return np.repeat(np.repeat(a4, ne3 // a4.shape[0], axis=0), ne2 // a4.shape[1], axis=1)


def ref_mul_mat(x, ne_a, y, ne_b):
    A = block_repeat(x.astype(np.float64).reshape(ne4(ne_a)[::-1]), ne_b[2], ne_b[3])   # (.., M, K)
    B = y.astype(np.float64).reshape(ne4(ne_b)[::-1])                                   # (.., N, K)
    return B @ np.swapaxes(A, 2, 3)                                                      # (.., N, M)


def ref_out_prod(x, ne_a, y, ne_b):
    A = block_repeat(x.astype(np.float64).reshape(ne4(ne_a)[::-1]), ne_b[2], ne_b[3])   # (.., K, M)
    B = y.astype(np.float64).reshape(ne4(ne_b)[::-1])                                   # (.., K, N)
    return np.swapaxes(B, 2, 3) @ A                                                      # (.., N, M)


def src0_values(ne, seed, type_):
    x = random_values(ne, seed)
    return x.astype(np.float16).astype(np.float32) if type_ == F16 else x


def run_mul_mat(ne_a, ne_b, la, lb, type_a, seed, n_threads=1, mem=1 << 20):
    ctx = sentinel_context(mem)
    x = src0_values(ne_a, seed, type_a)
    y = random_values(ne_b, seed + 1)
    a = make_tensor(ctx, ne_a, la, x, type_a)
    b = make_tensor(ctx, ne_b, lb, y)
    out = gc.mul_mat(ctx, a, b)
    assert out.ne == [ne_a[1], ne_b[1], ne_b[2], ne_b[3]] and out.type == F32
    g = compute_guarded(ctx, out, n_threads, what="mul_mat")
    what = f"mul_mat {gc.type_name(type_a)} {ne_a} {la} x {ne_b} {lb}"
    assert_close_nmse(out.numpy4d(), ref_mul_mat(x, ne_a, y, ne_b), TOL, what)
    return ctx, g, out


@st.composite
def src0_layouts(draw, ne):
    """Layouts of src0 that are not transposed (mul_mat requires nb00 <= nb01)."""
    return draw(layouts().filter(lambda l: not l.transposes(ne)))


@pytest.mark.parametrize("type_a", [F32, F16], ids=["f32", "f16"])
@given(data=st.data(), pair=matmul_pairs("mul_mat"), lb=layouts(), seed=seeds())
def test_mul_mat(type_a, data, pair, lb, seed):
    ne_a, ne_b = pair
    la = data.draw(src0_layouts(ne_a))
    run_mul_mat(ne_a, ne_b, la, lb, type_a, seed)


@given(pair=matmul_pairs("out_prod"), la=layouts(), lb=layouts(), seed=seeds())
def test_out_prod(pair, la, lb, seed):
    ne_a, ne_b = pair
    ctx = sentinel_context(1 << 20)
    x = random_values(ne_a, seed)
    y = random_values(ne_b, seed + 1)
    a = make_tensor(ctx, ne_a, la, x)
    b = make_tensor(ctx, ne_b, lb, y)
    out = gc.out_prod(ctx, a, b)
    assert out.ne == [ne_a[0], ne_b[0], ne_b[2], ne_b[3]] and out.type == F32
    compute_guarded(ctx, out, what="out_prod")
    assert_close_nmse(out.numpy4d(), ref_out_prod(x, ne_a, y, ne_b), TOL, f"out_prod {ne_a} {la} x {ne_b} {lb}")


# -- sizes around the BLAS threshold and the chunking ----------------------------------------------------------
def _sizes():
    """(K, M, N) below SMALL_GEMM, just above it, split along M, along N, along both."""
    small = (4, 5, 3)
    above = (32, 24, 16)
    along_m = (20, 3 * MM.CHUNK + 5, MM.CHUNK - 1)
    along_n = (9, MM.CHUNK // 2 + 3, 5 * MM.CHUNK + 3)
    both = (5, 2 * MM.CHUNK + 1, 2 * MM.CHUNK + 7)
    return {"small": small, "above_blas": above, "split_m": along_m, "split_n": along_n, "split_mn": both}


SIZES = _sizes()
SRC1_LAYOUTS = {"contiguous": Layout(), "transposed": Layout("transposed"),
                "permuted": Layout("permuted", axes=(1, 2, 0, 3)),
                "strided": Layout("strided", pad=(3, 1, 1, 0), start=(2, 1, 0, 0))}
SRC0_LAYOUTS = {"contiguous": Layout(), "permuted23": Layout("permuted", axes=(0, 1, 3, 2)),
                "strided": Layout("strided", pad=(5, 2, 0, 1), start=(1, 2, 0, 1)),
                "rows_from_dim2": Layout("permuted", axes=(0, 2, 1, 3))}


def test_size_cases_cover_thresholds():
    K, M, N = SIZES["small"]
    assert K * M * N < GEMM.SMALL_GEMM
    K, M, N = SIZES["above_blas"]
    assert K * M * N >= GEMM.SMALL_GEMM
    chunks = {k: MM.chunking(M, N) for k, (K, M, N) in SIZES.items()}
    assert chunks["split_m"][0] > 1 and chunks["split_m"][2] == 1
    assert chunks["split_n"][0] == 1 and chunks["split_n"][2] > 1
    assert chunks["split_mn"][0] > 1 and chunks["split_mn"][2] > 1


def test_chunking():
    """Pieces 128 to 1023 long in an even number (two threads share them evenly), 512 or more from
    1024 on, none empty; short dimensions stay whole."""
    for length in (1, 255, 256, 511, 1023, 1024, 1535, 2047, 2048, 3071, 4096, 5000):
        cm, hm, _, _ = MM.chunking(length, 1)
        assert cm == 1 or (cm % 2 == 0 and MM.CHUNK <= hm <= 8 * MM.CHUNK and (cm - 1) * hm < length), length
        assert (cm > 1) == (length >= 2 * MM.CHUNK), length
        if length >= 8 * MM.CHUNK:
            assert hm >= 4 * MM.CHUNK, length
    assert MM.chunking(1024, 1024) == (2, 512, 2, 512)
    assert MM.chunking(2048, 300) == (4, 512, 2, 150)


@pytest.mark.parametrize("type_a", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("l0", list(SRC0_LAYOUTS))
@pytest.mark.parametrize("l1", list(SRC1_LAYOUTS))
@pytest.mark.parametrize("size", list(SIZES))
def test_mul_mat_sizes(size, l1, l0, type_a):
    K, M, N = SIZES[size]
    ne_a, ne_b = [K, M, 2, 1], [K, N, 4, 3]          # ne12 = 2 ne02, ne13 = 3 ne03
    run_mul_mat(ne_a, ne_b, SRC0_LAYOUTS[l0], SRC1_LAYOUTS[l1], type_a, 3, n_threads=2, mem=4 << 20)


@pytest.mark.parametrize("l0", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("l1", list(SRC1_LAYOUTS))
@pytest.mark.parametrize("size", list(SIZES))
def test_out_prod_sizes(size, l1, l0):
    K, M, N = SIZES[size]
    ne_a, ne_b = [M, K, 1, 2], [N, K, 3, 2]
    ctx = sentinel_context(4 << 20)
    x, y = random_values(ne_a, 1), random_values(ne_b, 2)
    la = SRC1_LAYOUTS[l0]
    a = make_tensor(ctx, ne_a, la, x)
    b = make_tensor(ctx, ne_b, SRC1_LAYOUTS[l1], y)
    out = gc.out_prod(ctx, a, b)
    compute_guarded(ctx, out, 2)
    assert_close_nmse(out.numpy4d(), ref_out_prod(x, ne_a, y, ne_b), TOL, f"out_prod {size} {l0} {l1}")


def test_mul_mat_special_values():
    """inf and NaN propagate as in a plain dot product."""
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, np.array([[1, 2, 3], [0, 0, 1]], dtype=np.float32))           # [K=3, M=2]
    b = gc.from_numpy(ctx, np.array([[np.inf, 0, 0], [np.nan, 1, 1], [1, 1, 1]], dtype=np.float32))  # N=3
    out = gc.mul_mat(ctx, a, b)
    compute_guarded(ctx, out)
    r = out.numpy()                               # (N, M)
    assert r[0, 0] == np.inf and np.isnan(r[0, 1])          # inf * 0 = NaN
    assert np.isnan(r[1, 0]) and np.isnan(r[1, 1])
    assert list(r[2]) == [6.0, 1.0]


@pytest.mark.parametrize("M,K,N", [(129, 32, 1), (32, 129, 1), (17, 8, 3), (9, 15, 5), (5, 40, 2), (24, 9, 4)])
def test_small_products_of_strided_rows_bits(M, K, N):
    """Products below BLAS's size whose src0 rows are contiguous in k but spaced out (K·Q and V·softmax of a
    KV cache, rows loaded whole and transposed in registers): each float32 product added in k order into a
    float64 (a cumulative sum in numpy), the plain loop's bits, for any tile remainder in m, k and n."""
    ctx = sentinel_context(1 << 20)
    sm = 4 * (K + 3)                                # src0 rows sm bytes apart, 2 batches (heads)
    x = random_values([2 * M * (K + 3)], 3)
    a = gc.view_3d(ctx, gc.from_numpy(ctx, x), K, M, 2, sm, M * sm, 0)
    y = random_values([K, N, 2], 4)
    b = gc.from_numpy(ctx, y.reshape(2, N, K))
    out = gc.mul_mat(ctx, a, b)
    compute_guarded(ctx, out)
    A = np.lib.stride_tricks.as_strided(x, (2, M, K), (M * sm, sm, 4))
    prods = (A[:, None, :, :] * y.reshape(2, N, K)[:, :, None, :]).astype(np.float64)   # float32 products
    assert_same_bits(out.numpy4d()[0], np.cumsum(prods, axis=-1)[..., -1].astype(np.float32), f"{M}x{K}x{N}")


# -- thread counts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["f32", "f16", "transposed_src1", "split_n", "split_mn", "bcast", "out_prod"])
def test_threads_same_bits(case):
    K, M, N = 64, 16 * MM.CHUNK + 7, 2 * MM.CHUNK - 3       # 4 x 1 pieces
    ne_a, ne_b = [K, M, 1, 1], [K, N, 1, 1]
    type_a, lb = (F16 if case == "f16" else F32), Layout("transposed" if case == "transposed_src1" else "contiguous")
    if case == "split_n":
        ne_a, ne_b = [K, 40, 1, 1], [K, 17 * MM.CHUNK + 1, 1, 1]
    if case == "split_mn":         # 2 x 2 pieces
        ne_a, ne_b = [K, 2 * MM.CHUNK + 1, 1, 1], [K, 2 * MM.CHUNK + 7, 1, 1]
    if case == "bcast":
        ne_a, ne_b = [K, 96, 2, 1], [K, 48, 4, 3]
    ctx = sentinel_context(8 << 20)
    if case == "out_prod":
        ne_a, ne_b = [M, K, 1, 1], [N, K, 2, 1]
        x, y = random_values(ne_a, 1), random_values(ne_b, 2)
        out = gc.out_prod(ctx, make_tensor(ctx, ne_a, Layout(), x), make_tensor(ctx, ne_b, Layout("transposed"), y))
        ref = ref_out_prod(x, ne_a, y, ne_b)
    else:
        x, y = src0_values(ne_a, 1, type_a), random_values(ne_b, 2)
        out = gc.mul_mat(ctx, make_tensor(ctx, ne_a, Layout(), x, type_a), make_tensor(ctx, ne_b, lb, y))
        ref = ref_mul_mat(x, ne_a, y, ne_b)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    node = g.nodes.index(out)
    results = []
    for n in (1, 2, 4):
        assert gc.graph_plan(g, n).n_tasks[node] == n, f"{case}: no split at {n} threads"
        out.numpy4d()[...] = np.nan
        compute_guarded(ctx, out, n, graph=g, what=f"{case} x{n}")
        results.append(out.numpy4d().copy())
    assert_same_bits(results[1], results[0], f"{case} 2 vs 1 threads")
    assert_same_bits(results[2], results[0], f"{case} 4 vs 1 threads")
    assert_close_nmse(results[0], ref, TOL, case)


# -- bad input ---------------------------------------------------------------------------------------------------
def _raises(fn, *needles):
    with pytest.raises(gc.GraphError) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message {msg!r}"
    return msg


def test_mul_mat_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    b = gc.new_tensor_2d(ctx, F32, 4, 5)
    _raises(lambda: gc.mul_mat(ctx, a, gc.new_tensor_2d(ctx, F32, 5, 3)), "mul_mat", "[4, 3, 1, 1]", "[5, 3, 1, 1]")
    _raises(lambda: gc.mul_mat(ctx, gc.new_tensor_3d(ctx, F32, 4, 3, 2), gc.new_tensor_3d(ctx, F32, 4, 5, 3)),
            "mul_mat", "[4, 3, 2, 1]", "[4, 5, 3, 1]")
    _raises(lambda: gc.mul_mat(ctx, gc.new_tensor_4d(ctx, F32, 4, 3, 1, 2), gc.new_tensor_4d(ctx, F32, 4, 5, 1, 3)),
            "mul_mat", "[4, 3, 1, 2]", "[4, 5, 1, 3]")
    _raises(lambda: gc.mul_mat(ctx, gc.new_tensor_3d(ctx, F32, 4, 3, 4), gc.new_tensor_3d(ctx, F32, 4, 5, 2)),
            "mul_mat", "[4, 3, 4, 1]", "[4, 5, 2, 1]")              # src0 has more batches than src1
    t = gc.transpose(ctx, gc.new_tensor_2d(ctx, F32, 3, 4))         # [4, 3] with nb0 > nb1
    _raises(lambda: gc.mul_mat(ctx, t, b), "mul_mat", "transposed", "[4, 3, 1, 1]", "[4, 5, 1, 1]")
    _raises(lambda: gc.mul_mat(ctx, gc.new_tensor_2d(ctx, gc.TYPE_I32, 4, 3), b), "mul_mat", "i32")
    _raises(lambda: gc.mul_mat(ctx, a, gc.new_tensor_2d(ctx, gc.TYPE_I32, 4, 5)), "mul_mat", "i32")
    _raises(lambda: gc.mul_mat(ctx, a, gc.new_tensor_2d(ctx, F16, 4, 5)), "mul_mat", "f16", "[4, 5, 1, 1]")
    _raises(lambda: gc.mul_mat(ctx, np.zeros((3, 4), np.float32), b), "mul_mat", "ndarray", "(3, 4)")
    _raises(lambda: gc.mul_mat(ctx, a, np.zeros((5, 4), np.float32)), "mul_mat", "ndarray")
    _raises(lambda: gc.mul_mat(None, a, b), "mul_mat", "Context")


def test_out_prod_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 3, 4)
    _raises(lambda: gc.out_prod(ctx, a, gc.new_tensor_2d(ctx, F32, 5, 3)), "out_prod", "[3, 4, 1, 1]", "[5, 3, 1, 1]")
    _raises(lambda: gc.out_prod(ctx, gc.new_tensor_3d(ctx, F32, 3, 4, 2), gc.new_tensor_3d(ctx, F32, 5, 4, 3)),
            "out_prod", "[3, 4, 2, 1]", "[5, 4, 3, 1]")
    _raises(lambda: gc.out_prod(ctx, gc.new_tensor_2d(ctx, F16, 3, 4), gc.new_tensor_2d(ctx, F32, 5, 4)),
            "out_prod", "f16")
    _raises(lambda: gc.out_prod(ctx, a, gc.new_tensor_2d(ctx, gc.TYPE_I32, 5, 4)), "out_prod", "i32")
    _raises(lambda: gc.out_prod(ctx, a, np.zeros((4, 5))), "out_prod", "ndarray")



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["matmul"] for op in family_ops(m)]


@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_matmul_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
