"""mul_mat's matrix-vector path (src1 with at most MATVEC_N columns, rows contiguous in k): against a float64
numpy product, on strided row views, broadcast batches and F16 src0, and the same bits for 1 and 2 threads."""
import numpy as np
import pytest

import graphcore as gc
from graphcore.ops.matmul import MATVEC_N, SMALL_GEMM


def _run(build, n_threads):
    with gc.init(64 << 20) as ctx:
        y = build(ctx)
        gf = gc.new_graph(ctx)
        gc.build_forward_expand(gf, y)
        gc.graph_compute_with_ctx(ctx, gf, n_threads)
        return y.numpy4d()[0].copy()          # (ne2, ne1, ne0)


@pytest.mark.parametrize("N", range(1, MATVEC_N + 1))
@pytest.mark.parametrize("M,K", [(300, 64), (1031, 37), (40, 1000)])
def test_matvec_matches_numpy(M, N, K):
    assert M * N * K >= SMALL_GEMM          # the sizes that take the new path instead of BLAS
    rng = np.random.default_rng(M + N + K)
    wide = rng.standard_normal((M, K + 5)).astype(np.float32)     # rows of A strided (a view of a wider matrix)
    x = rng.standard_normal((N, K)).astype(np.float32)

    def build(ctx):
        w = gc.from_numpy(ctx, wide)
        a = gc.view_2d(ctx, w, K, M, w.nb[1], 0)
        return gc.mul_mat(ctx, a, gc.from_numpy(ctx, x))
    y1, y2 = _run(build, 1), _run(build, 2)
    ref = x.astype(np.float64) @ wide[:, :K].astype(np.float64).T
    np.testing.assert_allclose(y1[0], ref, rtol=1e-4, atol=1e-4 * np.sqrt(K))
    assert np.array_equal(y1, y2)


def test_matvec_broadcast_batches_and_f16():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 64, 256)).astype(np.float16)            # ne = [256, 64, 2]
    b = rng.standard_normal((4, 1, 256)).astype(np.float32)             # 4 batches share 2 src0 blocks

    def build(ctx):
        return gc.mul_mat(ctx, gc.from_numpy(ctx, a), gc.from_numpy(ctx, b))
    y = _run(build, 2)
    ref = np.stack([b[i] @ a[i // 2].astype(np.float64).T for i in range(4)])      # (4, 1, 64)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)
