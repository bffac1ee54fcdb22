"""build_backward_gradient_checkpointing (ggml 4480542): the gradients are the plain backward's bit for
bit, in an allocating context and through the graph allocator, and the allocator needs less memory."""
import numpy as np
import pytest

import graphcore as gc
from graphcore.alloc import graph_nbytes_no_reuse


def _model(ctx, x, ws, gains, use_flash):
    """A small llama-like stack: per layer rms_norm, attention (flash or not), a silu MLP, residuals."""
    checkpoints = [x]
    D, N, B = 4, x.ne[1], x.ne[2]
    for w, g in zip(ws, gains):
        h = gc.mul(ctx, gc.rms_norm(ctx, x, 1e-5), gc.repeat(ctx, g, x))
        qkv = gc.mul_mat(ctx, w[0], h)                                   # [3E, N, B]
        E = x.ne[0]
        q, k, v = (gc.cont(ctx, gc.view_3d(ctx, qkv, E, N, B, qkv.nb[1], qkv.nb[2], i * E * 4)) for i in range(3))
        q = gc.permute(ctx, gc.reshape_4d(ctx, q, D, E // D, N, B), 0, 2, 1, 3)     # [D, N, H, B]
        k = gc.permute(ctx, gc.reshape_4d(ctx, k, D, E // D, N, B), 0, 2, 1, 3)
        vt = gc.cont(ctx, gc.permute(ctx, gc.reshape_4d(ctx, v, D, E // D, N, B), 1, 2, 0, 3))   # [N, D, H, B]
        if use_flash:
            a = gc.flash_attn(ctx, q, k, vt, True)
        else:
            kq = gc.soft_max(ctx, gc.diag_mask_inf(ctx, gc.scale(ctx, gc.mul_mat(ctx, k, q), 0.5), 0))
            a = gc.mul_mat(ctx, vt, kq)
        a = gc.cont(ctx, gc.permute(ctx, a, 0, 2, 1, 3))                          # [D, H, N, B]
        x = gc.add(ctx, x, gc.mul_mat(ctx, w[1], gc.reshape_3d(ctx, a, E, N, B)))
        x = gc.add(ctx, x, gc.mul_mat(ctx, w[3], gc.silu(ctx, gc.mul_mat(ctx, w[2], x))))
        checkpoints.append(x)
    loss = gc.sum(ctx, gc.sqr(ctx, x))
    checkpoints.append(loss)
    return loss, checkpoints


def _params(n_layers, E=8, F=16, seed=0):
    rng = np.random.default_rng(seed)
    pctx = gc.init(1 << 22)

    def p(*shape):
        return gc.set_param(pctx, gc.from_numpy(pctx, (rng.standard_normal(shape) * 0.3).astype(np.float32)))
    ws = [(p(3 * E, E), p(E, E), p(F, E), p(E, F)) for _ in range(n_layers)]
    gains = [p(E) for _ in range(n_layers)]
    x = gc.from_numpy(pctx, rng.standard_normal((2, 6, E)).astype(np.float32))
    return pctx, x, ws, gains


def _run(x, ws, gains, checkpointing, use_flash, no_alloc, n_threads=2):
    ctx = gc.init(1 << 24, no_alloc=no_alloc)
    loss, checkpoints = _model(ctx, x, ws, gains, use_flash)
    gf = gc.new_graph_custom(ctx, 4096, True)
    gc.build_forward_expand(gf, loss)
    gb = gc.new_graph_custom(ctx, 4096, True)
    if checkpointing:
        gc.build_backward_gradient_checkpointing(ctx, gf, gb, gc.new_graph_custom(ctx, 4096, True), checkpoints)
    else:
        gc.graph_cpy(gf, gb)
        gc.build_backward_expand(ctx, gf, gb, True)
    size = None
    if no_alloc:
        gc.set_input(loss.grad)
        gc.set_output(loss)
        for p in [t for w in ws for t in w] + gains:
            gc.set_output(p.grad)
        galloc = gc.gallocr_new()
        gc.gallocr_alloc_graph(galloc, gb)
        size = (gc.gallocr_get_buffer_size(galloc), graph_nbytes_no_reuse(gb, galloc))
    gc.graph_reset(gb)
    gc.set_f32(loss.grad, 1.0)
    gc.graph_compute_with_ctx(ctx, gb, n_threads)
    grads = [p.grad.numpy().copy() for p in [t for w in ws for t in w] + gains]
    return float(loss.numpy()[0]), grads, size, gb


@pytest.mark.parametrize("use_flash", [False, True])
def test_checkpointed_gradients_equal_plain(use_flash):
    _, x, ws, gains = _params(3)
    loss0, g0, _, gb0 = _run(x, ws, gains, False, use_flash, False)
    assert all(np.abs(g).max() > 0 for g in g0)
    results = {}
    for ckpt in (False, True):
        for no_alloc in (False, True):
            loss, g, size, gb = _run(x, ws, gains, ckpt, use_flash, no_alloc)
            assert loss == loss0
            for a, b in zip(g, g0):
                assert np.array_equal(a, b)
            results[ckpt, no_alloc] = (size, gb)
    (plain, no_reuse), gbp = results[False, True]
    (ckpt, _), gbc = results[True, True]
    assert gbc.n_nodes > gbp.n_nodes                # recomputation adds nodes ...
    assert ckpt < plain < no_reuse                  # ... and takes less memory


def test_no_checkpoints_is_plain_backward():
    _, x, ws, gains = _params(1)
    ctx = gc.init(1 << 22)
    loss, _ = _model(ctx, x, ws, gains, False)
    gf = gc.new_graph_custom(ctx, 4096, True)
    gc.build_forward_expand(gf, loss)
    gb, tmp = gc.new_graph_custom(ctx, 4096, True), gc.new_graph_custom(ctx, 4096, True)
    gc.build_backward_gradient_checkpointing(ctx, gf, gb, tmp, [])
    assert gb.nodes == tmp.nodes and gb.n_nodes > gf.n_nodes


def test_bad_input():
    ctx = gc.init(1 << 16)
    g = gc.new_graph(ctx)
    with pytest.raises(gc.GraphError, match="gb_tmp must be a Graph"):
        gc.build_backward_gradient_checkpointing(ctx, g, g, None, [])
    with pytest.raises(gc.GraphError, match="expected a graphcore Tensor"):
        gc.build_backward_gradient_checkpointing(ctx, g, g, g, [np.zeros(3)])
