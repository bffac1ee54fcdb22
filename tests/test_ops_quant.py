"""Quantized variants of mul_mat, get_rows and dup/cpy/cont against numpy (graphcore.quants' formats are
checked against ggml's C in test_quants.py): mul_mat within test-backend-ops' NMSE 5e-4 of the float64
product with the dequantized src0, and within float32 rounding of ggml's own arithmetic (src1
quantized to the vec_dot type first), batches broadcast by blocks, few and many columns (dot products
and the BLAS path), the same bits for 1, 2 and 4 threads; copies and get_rows bit for bit; bad input."""
import os

import numpy as np
import pytest
from numba import njit

import graphcore as gc
from graphcore import qdot as D
from graphcore import quant_rows as QR
from graphcore import quants as Q
from graphcore import types as T
from graphcore.native import f16_to_f32
from graphcore.ops.quantized import MM_BLAS_N, MM_BLAS_ROWS
from graphcore.testing import assert_close_nmse, compute_guarded, sentinel_context
from graphcore_tools.record_ggml_dots import QUANT_TYPES, case

MM_TYPES = list(Q.VEC_DOT_TYPE)


def quantized_leaf(ctx, t, x):
    """A tensor of type t holding x (float32, numpy order) quantized by rows."""
    a = gc.new_tensor(ctx, t, list(x.shape[::-1]))
    a.numpy()[...] = QR.quantize(x, t)
    return a


def compute(ctx, out, n_threads):
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    gc.graph_compute_with_ctx(ctx, g, n_threads)
    return out.numpy().copy()


@pytest.mark.parametrize("t", MM_TYPES)
@pytest.mark.parametrize("N", [1, 6])
def test_mul_mat(t, N):
    rng = np.random.default_rng(t * 10 + N)
    K, M = 512, 40                      # two k-quant super-blocks; 40 rows: a partial work unit
    w = rng.standard_normal((2, 1, M, K)).astype(np.float32)          # ne02 = 1, ne03 = 2
    x = rng.standard_normal((2, 3, N, K)).astype(np.float32)          # ne12 = 3: broadcast by blocks
    results = []
    for n_threads in (1, 2, 4):
        ctx = sentinel_context(8 << 20)
        out = gc.mul_mat(ctx, quantized_leaf(ctx, t, w), gc.from_numpy(ctx, x))
        compute_guarded(ctx, out, n_threads)
        results.append(out.numpy().copy())
    for r in results[1:]:
        np.testing.assert_array_equal(r.view(np.uint32), results[0].view(np.uint32))
    wd = QR.dequantize(QR.quantize(w, t), t).astype(np.float64)
    assert_close_nmse(results[0], x.astype(np.float64) @ np.swapaxes(wd, 2, 3), 5e-4)
    # ggml's arithmetic: x's rows quantized to the vec_dot type, then the products of the blocks
    xd = QR.dequantize(QR.quantize_src1(x, t), Q.VEC_DOT_TYPE[t]).astype(np.float64)
    assert_close_nmse(results[0], xd @ np.swapaxes(wd, 2, 3), 1e-11)


GGML_DOTS = np.load(os.path.join(os.path.dirname(__file__), "data", "ggml_dots_4480542.npz"))


@pytest.mark.parametrize("name", QUANT_TYPES + ("f16",))
def test_mul_mat_ggml_dots_equal_ggml_s_c(name):
    # mul_mat(ggml_dots=True) against ggml's own mul_mat on the same bytes (recorded from its C by
    # tools/record_ggml_dots.py): every bit, for 5 columns (the batched path) and for each column alone (the
    # one-token path); F16 as an F16 src0 and as an F32 src0 of F16-rounded values (the llama model's cache),
    # K = 200 (lanes and a float64 remainder)
    w, x = case(name)
    want = GGML_DOTS[name]
    for cols, f16 in ((slice(0, 5), False), (slice(2, 3), False), (slice(0, 5), True))[:3 if name == "f16" else 2]:
        ctx = sentinel_context(8 << 20)
        if name == "f16":
            a = gc.from_numpy(ctx, w.astype(np.float16) if f16 else w.astype(np.float16).astype(np.float32))
            b = x.astype(np.float16).astype(np.float32)       # ggml's vec_dot_type F16 rounds src1
        else:
            a, b = quantized_leaf(ctx, getattr(gc, "TYPE_" + name.upper()), w), x
        out = gc.mul_mat(ctx, a, gc.from_numpy(ctx, np.ascontiguousarray(b[cols])), ggml_dots=True)
        compute_guarded(ctx, out, 2)
        np.testing.assert_array_equal(out.numpy().reshape(-1, 40).view(np.uint32), want[cols].view(np.uint32))


@pytest.mark.parametrize("N", [3, 4])
def test_mul_mat_plan_has_work_for_src1(N):
    ctx = gc.init(4 << 20)
    out = gc.mul_mat(ctx, gc.new_tensor_2d(ctx, T.TYPE_Q4_0, 256, 8), gc.new_tensor_2d(ctx, T.TYPE_F32, 256, N))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    # src1's rows in Q8_0; from MM_BLAS_N columns on also as float32, and a tile of dequantized rows
    need = N * T.row_size(T.TYPE_Q8_0, 256) + (0 if N < MM_BLAS_N else N * 4 * 256 + MM_BLAS_ROWS * 256 * 4)
    assert gc.graph_plan(g, 2).work_size >= need


@pytest.mark.parametrize("t", MM_TYPES)
def test_integer_dots_match_ggml_s_dots(t):
    """qdot.vdot_X (mul_mat's one-token path) against ggml's AVX2 vec_dot (qdot.xdot, bit for bit ggml's:
    test_quants.py): the same integer block sums, scaled in float32 (summed in another order: within a
    few ulp), on random rows and on rows at the formats' extreme levels (int16/int32 overflow would show)."""
    rng = np.random.default_rng(t)
    K = 512
    sign = np.where(np.arange(K) % 3 == 0, -1.0, 1.0).astype(np.float32)
    xs = np.stack([rng.standard_normal(K) * 10, sign * 1e3, -np.abs(sign), rng.standard_normal(K) ** 5])
    xs = xs.astype(np.float32)
    vt = Q.VEC_DOT_TYPE[t]
    ys = np.stack([rng.standard_normal(K), sign, -sign * 7, rng.uniform(-1, 1, K) ** 3]).astype(np.float32)
    xq, yq = QR.quantize(xs, t), QR.quantize(ys, vt)
    name = T.type_name(t).lower()
    vdot = getattr(D, "vdot_" + name)
    nb = K // T.blck_size(t)
    for xr in xq:
        for yr in yq:
            want, got = D.xdot(xr, yr, nb, t), vdot(xr, yr, nb)
            scale = float(np.abs(QR.dequantize(xr, t)) @ np.abs(QR.dequantize(yr, vt)))
            assert abs(got - want) <= 1e-6 * scale, (T.type_name(t), got, want)


def _has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx2(), reason="the check reads x86 AVX2 assembly")
@pytest.mark.parametrize("t", [T.TYPE_Q4_0, T.TYPE_Q8_0, T.TYPE_Q4_K])
def test_integer_dots_vectorise(t):
    """The block loops compile to AVX2 integer multiply-adds (a numba or code change that lets LLVM unroll
    them into scalar code, or widen them to int64, would make them 3-10x slower without failing any other
    test). numba shows no assembly for cached code: a copy is compiled here without the cache."""
    name = T.type_name(t).lower()
    f = njit(nogil=True, error_model="numpy")(getattr(D, "vdot_" + name).py_func)
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    f(QR.quantize(x, t)[0], QR.quantize(x, Q.VEC_DOT_TYPE[t])[0], 256 // T.blck_size(t))
    assert "vpmaddwd" in f.inspect_asm(f.signatures[0])


@pytest.mark.parametrize("t", T.QUANTIZED)
def test_get_rows_and_copies(t):
    rng = np.random.default_rng(t)
    bs = T.blck_size(t)
    x = (rng.standard_normal((5, 2 * bs)) * 3).astype(np.float32)
    q, dq = QR.quantize(x, t), QR.dequantize(QR.quantize(x, t), t)
    ctx = sentinel_context(1 << 20)
    src = gc.from_numpy(ctx, x.T.copy())
    to_q = gc.cpy(ctx, gc.transpose(ctx, src), gc.new_tensor_2d(ctx, t, 2 * bs, 5))   # a permuted source
    rows = gc.get_rows(ctx, to_q, gc.from_numpy(ctx, np.array([4, 0, 4], np.int32)))
    back = gc.cpy(ctx, to_q, gc.new_tensor_1d(ctx, T.TYPE_F32, 10 * bs))                # another shape
    same = gc.dup(ctx, to_q)
    outs = [to_q, rows, back, same]
    g = gc.new_graph(ctx)
    for o in outs:
        gc.build_forward_expand(g, o)
    compute_guarded(ctx, outs, 2, graph=g)
    np.testing.assert_array_equal(to_q.numpy(), q)
    np.testing.assert_array_equal(same.numpy(), q)
    np.testing.assert_array_equal(rows.numpy(), dq[[4, 0, 4]])
    np.testing.assert_array_equal(back.numpy(), dq.ravel())


def test_get_rows_bad_index():
    ctx = gc.init(1 << 20)
    a = quantized_leaf(ctx, T.TYPE_Q8_0, np.ones((3, 32), np.float32))
    out = gc.get_rows(ctx, a, gc.from_numpy(ctx, np.array([1, 3], np.int32)))
    with pytest.raises(gc.ComputeError, match="3"):
        compute(ctx, out, 2)


def test_bad_input():
    ctx = gc.init(1 << 20)
    q4 = gc.new_tensor_2d(ctx, T.TYPE_Q4_0, 64, 4)
    with pytest.raises(gc.GraphError, match=r"mul_mat: src0 must be .* q8_K"):
        gc.mul_mat(ctx, gc.new_tensor_2d(ctx, T.TYPE_Q8_K, 256, 2), gc.new_tensor_2d(ctx, T.TYPE_F32, 256, 2))
    with pytest.raises(gc.GraphError, match="mul_mat: .*contiguous"):
        gc.mul_mat(ctx, q4, gc.transpose(ctx, gc.new_tensor_2d(ctx, T.TYPE_F32, 4, 64)))
    with pytest.raises(gc.GraphError, match="cpy: quantized tensors convert only to or from F32"):
        gc.cpy(ctx, q4, gc.new_tensor_2d(ctx, T.TYPE_F16, 64, 4))
    with pytest.raises(gc.GraphError, match="cpy: quantized tensors convert only to or from F32"):
        gc.cpy(ctx, q4, gc.new_tensor_2d(ctx, T.TYPE_Q8_0, 64, 4))
    with pytest.raises(gc.GraphError, match="is quantized"):
        gc.get_f32_1d(q4, 0)
    with pytest.raises(gc.GraphError, match="set_param: only float tensors"):
        gc.set_param(ctx, q4)


def test_gradient_through_quantized_src0():
    """d sum(a @ b) / db[n, k] = sum_m a[m, k], a dequantized (a quantized src0 takes no gradient)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    ctx = gc.init(4 << 20)
    a = quantized_leaf(ctx, T.TYPE_Q8_0, w)
    b = gc.from_numpy(ctx, rng.standard_normal((3, 64)).astype(np.float32))
    gc.set_param(ctx, b)
    loss = gc.sum(ctx, gc.mul_mat(ctx, a, b))
    gf = gc.new_graph_custom(ctx, 64, True)
    gc.build_forward_expand(gf, loss)
    gb = gc.graph_dup(ctx, gf)
    gc.build_backward_expand(ctx, gf, gb, False)
    gc.graph_reset(gf)
    gc.set_f32(loss.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, 1)
    want = QR.dequantize(QR.quantize(w, T.TYPE_Q8_0), T.TYPE_Q8_0).sum(axis=0)
    np.testing.assert_allclose(b.grad.numpy(), np.broadcast_to(want, (3, 64)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", T.QUANTIZED)
def test_graph_file_round_trip(t, tmp_path):
    """Graph files keep quantized leafs (type ids, bytes) and nodes reading them; imported, they compute the same."""
    rng = np.random.default_rng(t)
    bs = T.blck_size(t)
    ctx = gc.init(4 << 20)
    a = gc.set_name(quantized_leaf(ctx, t, rng.standard_normal((3, 2 * bs)).astype(np.float32)), "w")
    if t in Q.VEC_DOT_TYPE:
        out = gc.mul_mat(ctx, a, gc.from_numpy(ctx, rng.standard_normal((2, 2 * bs)).astype(np.float32)))
    else:
        out = gc.get_rows(ctx, a, gc.from_numpy(ctx, np.array([2, 0], np.int32)))
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, out)
    gc.graph_compute_with_ctx(ctx, g, 1)
    gc.graph_export(g, tmp_path / "q.ggml")
    g2 = gc.graph_import(tmp_path / "q.ggml")
    w2 = gc.graph_get_tensor(g2, "w")
    assert w2.type == t and w2.ne == a.ne and w2.nb == a.nb
    np.testing.assert_array_equal(w2.numpy(), a.numpy())
    gc.graph_compute_with_ctx(g2.nodes[-1].ctx, g2, 2)
    np.testing.assert_array_equal(g2.nodes[-1].numpy(), out.numpy())


def test_f16c_conversion_matches_numpy():
    """native.f16_to_f32 (LLVM's fpext, which qdot reads block scales with) on every fp16 bit pattern
    but NaNs (whose payload a conversion may quieten) against numpy's float16."""
    @njit
    def convert(bits, out):
        for i in range(bits.shape[0]):
            out[i] = f16_to_f32(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint16)
    bits = bits[~np.isnan(bits.view(np.float16))]
    out = np.empty(bits.shape, np.float32)
    convert(bits, out)
    np.testing.assert_array_equal(out.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))
