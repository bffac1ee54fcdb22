"""flash_attn / flash_attn_back (ggml 4480542's semantics): against their numpy references in random
graphs at 1, 2 and 4 threads, against the unfused attention that train-text-from-scratch builds
without --use-flash, gradients by finite differences, graph files, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings

import graphcore as gc
from graphcore.testing import assert_graph_close, check_gradients, graphs


@given(graphs(ops=["FLASH_ATTN", "FLASH_ATTN_BACK"], max_nodes=3, sizes=("tiny",)))
@settings(max_examples=30)
def test_random_graphs_against_reference(drawn):
    for out in drawn.outputs:
        assert_graph_close(out, n_threads=(1, 2, 4))


@given(graphs(ops=["FLASH_ATTN", "MUL", "ADD"], first="FLASH_ATTN", max_nodes=3, backward=True, sizes=("tiny",)))
@settings(max_examples=10)
def test_random_backward_graphs(drawn):
    drawn.seed_loss()
    assert_graph_close(drawn.backward_graph.nodes[-1], n_threads=(1, 2))


def _qkv(ctx, rng, D=4, N=3, P=2, h=4, hk=2, b=2):
    def t(*shape):
        return gc.from_numpy(ctx, rng.standard_normal(shape).astype(np.float32))
    return t(b, h, N, D), t(b, hk, N + P, D), t(b, hk, D, N + P)


def _unfused(ctx, q, k, v, masked):
    """train-text-from-scratch's attention without --use-flash: softmax(diag_mask_inf(scale(k q)))."""
    D, N, h = q.ne[0], q.ne[1], q.ne[2]
    kk = gc.repeat(ctx, k, gc.new_tensor_4d(ctx, gc.TYPE_F32, k.ne[0], k.ne[1], h, k.ne[3]))
    vv = gc.repeat(ctx, v, gc.new_tensor_4d(ctx, gc.TYPE_F32, v.ne[0], v.ne[1], h, v.ne[3]))
    s = gc.scale(ctx, gc.mul_mat(ctx, kk, q), 1.0 / float(np.sqrt(np.float32(D))))
    if masked:
        s = gc.diag_mask_inf(ctx, s, k.ne[1] - N)
    return gc.mul_mat(ctx, vv, gc.soft_max(ctx, s))


@pytest.mark.parametrize("masked", [False, True])
def test_matches_unfused_attention_and_gradients(masked):
    rng = np.random.default_rng(3)
    ctx = gc.init(1 << 22)
    q, k, v = _qkv(ctx, rng)
    fused, plain = gc.flash_attn(ctx, q, k, v, masked), _unfused(ctx, q, k, v, masked)
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, fused)
    gc.build_forward_expand(g, plain)
    gc.graph_compute_with_ctx(ctx, g, 2)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)
    w = gc.from_numpy(ctx, rng.standard_normal((2, 4, 3, 4)).astype(np.float32))
    for build in (gc.flash_attn, _unfused):
        check_gradients(lambda c, q, k, v: gc.sum(c, gc.mul(c, build(c, q, k, v, masked), w)), [q, k, v],
                        eps=1e-3, atol=2e-3)


def test_back_layout_and_graph_file(tmp_path):
    rng = np.random.default_rng(4)
    ctx = gc.init(1 << 22)
    q, k, v = _qkv(ctx, rng, D=3, N=2, P=1, h=2, hk=1, b=1)        # 12 + 9 + 9 floats: padded to 16 bytes
    d = gc.from_numpy(ctx, rng.standard_normal((1, 2, 2, 3)).astype(np.float32))
    fb = gc.flash_attn_back(ctx, q, k, v, d, True)
    assert fb.ne == [12 + 12 + 12, 1, 1, 1]
    g = gc.new_graph(ctx)
    gc.build_forward_expand(g, fb)
    gc.graph_compute_with_ctx(ctx, g, 1)
    out = fb.numpy().copy()
    assert np.all(out[[21, 22, 23, 33, 34, 35]] == 0)                 # padding
    gc.graph_export(g, str(tmp_path / "fa.gcg"))
    ctx2 = gc.init(1 << 22)
    g2 = gc.graph_import(str(tmp_path / "fa.gcg"), ctx2)
    gc.graph_compute_with_ctx(ctx2, g2, 2)
    assert np.array_equal(g2.nodes[-1].numpy(), out)


def test_bad_input():
    ctx = gc.init(1 << 20)
    q = gc.new_tensor_4d(ctx, gc.TYPE_F32, 4, 3, 4, 1)
    k = gc.new_tensor_4d(ctx, gc.TYPE_F32, 4, 5, 2, 1)
    v = gc.new_tensor_4d(ctx, gc.TYPE_F32, 5, 4, 2, 1)
    gc.flash_attn(ctx, q, k, v, True)
    with pytest.raises(gc.GraphError, match=r"flash_attn: needs q .*ne=\[4, 2, 2, 1\]"):
        gc.flash_attn(ctx, q, gc.new_tensor_4d(ctx, gc.TYPE_F32, 4, 2, 2, 1), v, True)     # M < N
    with pytest.raises(gc.GraphError, match="flash_attn: needs"):
        gc.flash_attn(ctx, q, gc.new_tensor_4d(ctx, gc.TYPE_F32, 4, 5, 3, 1), v, False)    # heads 4 % 3
    with pytest.raises(gc.GraphError, match="F32"):
        gc.flash_attn(ctx, gc.new_tensor_4d(ctx, gc.TYPE_F16, 4, 3, 4, 1), k, v, False)
    with pytest.raises(gc.GraphError, match="masked must be a bool"):
        gc.flash_attn(ctx, q, k, v, 2)
    with pytest.raises(gc.GraphError, match="flash_attn_back: needs .*d shaped like q"):
        gc.flash_attn_back(ctx, q, k, v, k, True)
    with pytest.raises(gc.GraphError, match="expected a graphcore Tensor"):
        gc.flash_attn(ctx, np.zeros((3, 4)), k, v, True)
