"""graphcore.simd's AVX2 block dots (mul_mat's one-token vec_dot on AVX2 CPUs for all types but Q2_K, Q3_K)
against ggml's C (dots recorded from its AVX2 build) and qdot.xdot (ggml's arithmetic in scalar numba):
every bit; the portable loops they replace (qdot.pdot_X, taken without AVX2 or with
GRAPHCORE_PORTABLE_DOTS set) within a few ulp of them, vectorised, and chosen in a child process whose
environment forces them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import graphcore as gc
from graphcore import qdot as D
from graphcore import quant_rows as QR
from graphcore import quants as Q
from graphcore import simd
from graphcore import types as T
from graphcore.testing import compute_guarded, sentinel_context

SIMD_TYPES = [T.TYPE_Q4_0, T.TYPE_Q4_1, T.TYPE_Q5_0, T.TYPE_Q5_1, T.TYPE_Q8_0, T.TYPE_Q4_K, T.TYPE_Q5_K,
              T.TYPE_Q6_K]
DATA = np.load(Path(__file__).parent / "data" / "ggml_quants_4480542.npz")
needs_avx2 = pytest.mark.skipif(not simd.AVAILABLE, reason="no AVX2/FMA/F16C here, or GRAPHCORE_PORTABLE_DOTS set")


def _name(t):
    return T.type_name(t).lower()


def _rows(t, K=1024, seed=0):
    """x rows of type t and y rows of its vec_dot type: random (scales 1e-2..1e2), at the formats'
    extreme levels (+-1e3 with every third sign flipped, all -1), and heavy-tailed."""
    rng = np.random.default_rng(seed + t)
    sign = np.where(np.arange(K) % 3 == 0, -1.0, 1.0)
    xs = np.stack([rng.standard_normal(K) * rng.uniform(1e-2, 1e2), sign * 1e3, -np.abs(sign),
                   rng.standard_normal(K) ** 5]).astype(np.float32)
    ys = np.stack([rng.standard_normal(K), sign, -sign * 7, rng.uniform(-1, 1, K) ** 3]).astype(np.float32)
    return QR.quantize(xs, t), QR.quantize(ys, Q.VEC_DOT_TYPE[t]), K // T.blck_size(t)


@needs_avx2
@pytest.mark.parametrize("t", SIMD_TYPES)
def test_avx2_dots_are_ggml_s(t):
    # the dots ggml's C computed on these bytes (test_quants.py records them), and xdot on other rows
    qx, qy = QR.quantize(DATA["dot_x"], t), QR.quantize(DATA["dot_y"], Q.VEC_DOT_TYPE[t])
    nb = DATA["dot_x"].shape[1] // T.blck_size(t)
    adot = getattr(D, "adot_" + _name(t))
    got = np.array([[adot(qx[i], qy[j], nb) for j in range(4)] for i in range(4)], np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), DATA[f"dot{t}"].astype(np.float32).view(np.uint32))
    xq, yq, nb = _rows(t)
    for xr in xq:
        for yr in yq:
            assert np.float32(adot(xr, yr, nb)).view(np.uint32) == np.float32(D.xdot(xr, yr, nb, t)).view(np.uint32)
    assert adot(xq[0], yq[0], 0) == 0.0


@pytest.mark.parametrize("t", SIMD_TYPES)
def test_portable_dots_within_ulps_of_ggml_s(t):
    xq, yq, nb = _rows(t, seed=1)
    pdot = getattr(D, "pdot_" + _name(t))
    for xr in xq:
        for yr in yq:
            want, got = D.xdot(xr, yr, nb, t), pdot(xr, yr, nb)
            scale = float(np.abs(QR.dequantize(xr, t)) @ np.abs(QR.dequantize(yr, Q.VEC_DOT_TYPE[t])))
            assert abs(got - want) <= 1e-6 * scale, (T.type_name(t), got, want)


@needs_avx2
@pytest.mark.parametrize("prefix,t,op", [("adot_", T.TYPE_Q5_0, "vpmaddubsw"), ("adot_", T.TYPE_Q6_K, "vpmaddubsw"),
                                         ("pdot_", T.TYPE_Q4_0, "vpmaddwd"), ("pdot_", T.TYPE_Q6_K, "vpmaddwd")])
def test_instructions(prefix, t, op):
    """adot_X runs vpmaddubsw (ggml's 32 products an instruction); the portable loops still vectorise to
    vpmaddwd. numba shows no assembly for cached code: copies are compiled here without the cache."""
    xq, yq, nb = _rows(t, K=256)
    f = njit(nogil=True, error_model="numpy")(getattr(D, prefix + _name(t)).py_func)
    f(xq[0], yq[0], nb)
    assert op in f.inspect_asm(f.signatures[0])


def _mul_mat(t, w, x, n_threads=1, ggml_dots=False):
    ctx = sentinel_context(8 << 20)
    a = gc.new_tensor(ctx, t, list(w.shape[::-1]))
    a.numpy()[...] = QR.quantize(w, t)
    out = gc.mul_mat(ctx, a, gc.from_numpy(ctx, x), ggml_dots=ggml_dots)
    compute_guarded(ctx, out, n_threads)
    return out.numpy().copy()


@needs_avx2
@pytest.mark.parametrize("t", SIMD_TYPES)
def test_one_token_mul_mat_is_ggml_dots(t):
    """With AVX2, mul_mat's default one-token path has ggml_dots' bits (its dots are xdot's), any thread count."""
    rng = np.random.default_rng(t)
    w, x = rng.standard_normal((2, 40, 512)).astype(np.float32), rng.standard_normal((2, 3, 512)).astype(np.float32)
    want = _mul_mat(t, w, x, 2, ggml_dots=True)
    for n_threads in (1, 3):
        np.testing.assert_array_equal(_mul_mat(t, w, x, n_threads).view(np.uint32), want.view(np.uint32))


_CHILD = """
import json, sys
import numpy as np
import graphcore as gc
from graphcore import qdot as D, quant_rows as QR, simd
from graphcore.ops import quantized
w, x = np.load(sys.argv[1]), np.load(sys.argv[2])
out = {"available": simd.AVAILABLE, "portable": all(getattr(D, "vdot_" + n) is getattr(D, "pdot_" + n) for n in D.AVX2)}
ctx = gc.init(8 << 20)
a = gc.new_tensor_2d(ctx, gc.TYPE_Q4_0, w.shape[1], w.shape[0])
a.numpy()[...] = QR.quantize(w, gc.TYPE_Q4_0)
y = gc.mul_mat(ctx, a, gc.from_numpy(ctx, x))
g = gc.new_graph(ctx)
gc.build_forward_expand(g, y)
gc.graph_compute_with_ctx(ctx, g, 2)
out["bits"] = y.numpy().view(np.uint32).ravel().tolist()
print(json.dumps(out))
"""


def test_portable_dots_forced_by_environment(tmp_path):
    """GRAPHCORE_PORTABLE_DOTS=1: the portable loops in mul_mat's kernels (their bits, not the AVX2 ones)."""
    rng = np.random.default_rng(7)
    w, x = rng.standard_normal((48, 256)).astype(np.float32), rng.standard_normal((1, 256)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "GRAPHCORE_PORTABLE_DOTS": "1"}
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "w.npy"), str(tmp_path / "x.npy")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["available"] is False and out["portable"] is True
    wq, yq = QR.quantize(w, T.TYPE_Q4_0), QR.quantize_src1(x, T.TYPE_Q4_0)
    want = np.array([D.pdot_q4_0(row, yq[0], 8) for row in wq], np.float32)
    np.testing.assert_array_equal(np.array(out["bits"], np.uint32), want.view(np.uint32))
