"""ggml's block formats (graphcore.quants, kquants): type ids and sizes against gguf's table, every
row quantizer and dequantizer bit for bit against ggml 4480542's C (outputs recorded from a build of
llama.cpp at that commit, tests/data/ggml_quants_4480542.npz: random rows, adversarial rows (zeros,
constants, subnormals, huge values, ties, outliers, all-positive rows) and rows with inf / NaN), the
32-blocks also against gguf.quants' numpy quantizers on fresh data, round-trip error bounds, and the
scalar vec_dots against the C's. (Bytes of llama.cpp's `quantize` tool will join when the GGUF side does.)"""
from pathlib import Path

import gguf
import gguf.quants as gq
import numpy as np
import pytest

import graphcore as gc
from graphcore import qdot as D
from graphcore import quant_rows as QR
from graphcore import quants as Q
from graphcore import types as T

DATA = np.load(Path(__file__).parent / "data" / "ggml_quants_4480542.npz")
LEGACY = (T.TYPE_Q4_0, T.TYPE_Q4_1, T.TYPE_Q5_0, T.TYPE_Q5_1, T.TYPE_Q8_0)
KQUANTS = (T.TYPE_Q2_K, T.TYPE_Q3_K, T.TYPE_Q4_K, T.TYPE_Q5_K, T.TYPE_Q6_K)


def gguf_type(t):
    return gguf.GGMLQuantizationType[T.type_name(t).upper()]


@pytest.mark.parametrize("t", T.QUANTIZED)
def test_ids_and_sizes_match_gguf(t):
    assert int(gguf_type(t)) == t
    assert gguf.GGML_QUANT_SIZES[gguf_type(t)] == (T.blck_size(t), T.type_size(t))
    assert T.row_size(t, 4 * T.blck_size(t)) == 4 * T.type_size(t)
    assert T.is_quantized(t) and not T.is_quantized(T.TYPE_F32)


def test_row_size_rejects_partial_blocks():
    with pytest.raises(gc.GraphError, match="not a whole number of q4_K blocks"):
        T.row_size(T.TYPE_Q4_K, 300)
    with pytest.raises(gc.GraphError, match=r"ne=\[48, 2, 1, 1\].*q4_0's block size 32"):
        gc.new_tensor_2d(gc.init(1 << 16), T.TYPE_Q4_0, 48, 2)


@pytest.mark.parametrize("t", T.QUANTIZED)
@pytest.mark.parametrize("case", ["random", "adversarial", "nonfinite"])
def test_bitwise_equal_to_ggml(t, case):
    x = DATA[case]
    q = QR.quantize(x, t)
    np.testing.assert_array_equal(q, DATA[f"{case}_q{t}"], err_msg=f"{T.type_name(t)} quantize, {case}")
    if f"{case}_dq{t}" in DATA.files:          # ggml has no dequantize_row_q8_1
        d = QR.dequantize(DATA[f"{case}_q{t}"], t)
        np.testing.assert_array_equal(d.view(np.uint32), DATA[f"{case}_dq{t}"].view(np.uint32))


@pytest.mark.parametrize("t", LEGACY)
def test_32_blocks_equal_gguf(t):
    rng = np.random.default_rng(t)
    x = (rng.standard_normal((9, 256)) * rng.uniform(1e-4, 1e4, (9, 1))).astype(np.float32)
    x[0] = 0
    x[1, :32] = 3.25                                    # a constant block
    q = QR.quantize(x, t)
    np.testing.assert_array_equal(q, gq.quantize(x, gguf_type(t)))
    np.testing.assert_array_equal(QR.dequantize(q, t), gq.dequantize(q, gguf_type(t)))


@pytest.mark.parametrize("t,bound", [(T.TYPE_Q2_K, 0.35), (T.TYPE_Q3_K, 0.18), (T.TYPE_Q4_K, 0.085),
                                     (T.TYPE_Q5_K, 0.043), (T.TYPE_Q6_K, 0.021), (T.TYPE_Q8_K, 0.008)])
def test_k_quants_round_trip(t, bound):
    rng = np.random.default_rng(t)
    x = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 100, (6, 1))).astype(np.float32)
    q = QR.quantize(x, t)
    d = QR.dequantize(q, t)
    if t != T.TYPE_Q8_K:     # gguf's numpy dequantizers read the same bytes the same way
        np.testing.assert_array_equal(d, gq.dequantize(q, gguf_type(t)))
    err = np.linalg.norm(d - x, axis=1) / np.linalg.norm(x, axis=1)
    assert err.max() < bound, err
    assert np.array_equal(QR.quantize(np.zeros((1, 256), np.float32), t), np.zeros((1, T.type_size(t)), np.uint8))


@pytest.mark.parametrize("t", list(Q.VEC_DOT_TYPE))
def test_vec_dot_is_ggml_s(t):
    """qdot.xdot (mul_mat's ggml_dots) against ggml's vec_dot_*_q8_* (its AVX2 build) on the same bytes: every
    bit; and both are the sum of the dequantized products (float64 here) but for float32 rounding."""
    qx, qy = QR.quantize(DATA["dot_x"], t), QR.quantize(DATA["dot_y"], Q.VEC_DOT_TYPE[t])
    nb = DATA["dot_x"].shape[1] // T.blck_size(t)
    got = np.array([[D.xdot(qx[i], qy[j], nb, t) for j in range(4)] for i in range(4)], np.float32)
    want = DATA[f"dot{t}"].astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    exact = QR.dequantize(qx, t).astype(np.float64) @ QR.dequantize(qy, Q.VEC_DOT_TYPE[t]).T.astype(np.float64)
    assert np.abs(got - exact).max() <= 1e-5 * np.abs(exact).max()


def test_api_errors():
    with pytest.raises(gc.GraphError, match="not a whole number of q8_0 blocks"):
        QR.quantize(np.zeros(40, np.float32), T.TYPE_Q8_0)
    with pytest.raises(gc.GraphError, match="not whole q4_0 blocks"):
        QR.dequantize(np.zeros(20, np.uint8), T.TYPE_Q4_0)
    with pytest.raises(gc.GraphError, match="f32 is not a quantized type"):
        QR.quantize(np.zeros(32, np.float32), T.TYPE_F32)
