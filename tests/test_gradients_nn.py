"""Gradients of the network ops (norms, softmax, masks, rope, get_rows, set/acc, activations, losses,
the *_back ops where a rule exists) against central finite differences, a parameter reached
through set_2d and a view as baby-llama's KV cache, and a whole llama block (attention + SwiGLU).

test-grad0's table (eps/atol/rtol): rms_norm 1e-4/1.0/inf, softmax 1e-3/0.2/inf, silu 1e-3/0.5/inf,
rope 1e-2/1e-3/inf, cross_entropy_loss 1e-4/1e-3/inf, get_rows, diag_mask_*, acc, set, view
1e-3/1e-3/inf. The loose ones came from ggml's fp16 tables; here every atol is 1e-3 or less.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc
from graphcore.testing import check_gradients, layouts, random_values, seeds, shapes

from test_gradients_core import away_from_zero, param_input

INF = math.inf
ES = 4          # bytes of an F32 element


def leaf(ctx, ne, seed, lo=-1.0, hi=1.0):
    return gc.from_numpy(ctx, random_values(ne, seed, lo, hi))


# -- norms ----------------------------------------------------------------------------------------------------
@given(ne=shapes(max_side=5), layout=layouts(), seed=seeds())
def test_rms_norm(ne, layout, seed):
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, away_from_zero(random_values(ne, seed), 0.1))
    check_gradients(lambda c, p: gc.rms_norm(c, lay(c, p), 1e-5), [p], 1e-3, 1e-3, INF)


@given(ne=shapes(max_side=5), layout=layouts(), seed=seeds())
def test_norm(ne, layout, seed):
    """ggml has no rule for norm; here it is rms_norm's of the centred rows, centred."""
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, random_values(ne, seed))
    check_gradients(lambda c, p: gc.norm(c, lay(c, p), 1e-2), [p], 1e-3, 1e-3, INF)


def test_norm_realistic_eps():
    ctx = gc.init(1 << 20)
    p = leaf(ctx, [16, 5], 3)
    check_gradients(lambda c, p: gc.norm(c, p, 1e-5), [p], 1e-3, 1e-3, INF)


@given(ne=shapes(max_side=5), seed=seeds())
def test_rms_norm_back_in_its_output_gradient(ne, seed):
    ctx = gc.init(1 << 20)
    x = gc.from_numpy(ctx, away_from_zero(random_values(ne, seed), 0.1))
    dz = leaf(ctx, ne, seed + 1)
    check_gradients(lambda c, dz: gc.rms_norm_back(c, x, dz, 1e-5), [dz], 1e-3, 1e-3, INF)
    with pytest.raises(gc.GraphError, match="rms_norm_back"):
        check_gradients(lambda c, x: gc.rms_norm_back(c, x, dz, 1e-5), [x])


# -- softmax and masks ------------------------------------------------------------------------------------------
@given(ne=shapes(max_side=5), layout=layouts(), seed=seeds())
def test_soft_max(ne, layout, seed):
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, random_values(ne, seed, -2, 2))
    check_gradients(lambda c, p: gc.soft_max(c, lay(c, p)), [p], 1e-3, 1e-3, INF)


@given(ne=shapes(min_dims=2, max_side=4), seed=seeds(), scale=st.sampled_from([1.0, 0.5, -1.3]),
       rows=st.integers(1, 2))
def test_soft_max_ext_mask_and_scale(ne, seed, scale, rows):
    ne = list(ne) + [1] * (4 - len(ne))
    ne[1] = rows * ne[1]
    ctx = gc.init(1 << 20)
    a = leaf(ctx, ne, seed, -2, 2)
    m = leaf(ctx, [ne[0], ne[1] // rows], seed + 1)                 # tiled over the rows
    check_gradients(lambda c, a, m: gc.soft_max_ext(c, a, m, None, scale, 0.0), [a, m], 1e-3, 1e-3, INF)


@pytest.mark.parametrize("mask", ["diag_mask_inf", "diag_mask_zero"])
@given(ne=shapes(min_dims=2, max_side=5), seed=seeds(), n_past=st.integers(0, 2))
def test_diag_mask_then_soft_max(mask, ne, seed, n_past):
    ctx = gc.init(1 << 20)
    p = leaf(ctx, ne, seed, -2, 2)
    fn = getattr(gc, mask)
    check_gradients(lambda c, p: gc.soft_max(c, fn(c, gc.scale(c, p, 0.7), n_past)), [p], 1e-3, 1e-3, INF)


@given(ne=shapes(max_side=5), seed=seeds())
def test_soft_max_back(ne, seed):
    ctx = gc.init(1 << 20)
    dy = leaf(ctx, ne, seed)
    x = leaf(ctx, ne, seed + 1, -2, 2)
    check_gradients(lambda c, dy, x: gc.soft_max_back(c, dy, gc.soft_max(c, x)), [dy, x], 1e-3, 1e-3, INF)


# -- rope ---------------------------------------------------------------------------------------------------------
@st.composite
def rope_cases(draw):
    half = draw(st.integers(1, 3))
    ne0 = 2 * half + draw(st.integers(0, 2))            # elements from n_dims on pass through
    n_dims = 2 * draw(st.integers(1, half))
    ne = [ne0, draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 2))]
    mode = draw(st.sampled_from([0, 2]))
    pos = draw(st.lists(st.integers(0, 50), min_size=ne[2], max_size=ne[2]))
    return ne, n_dims, mode, pos


@given(case=rope_cases(), layout=layouts(), seed=seeds())
def test_rope(case, layout, seed):
    ne, n_dims, mode, pos = case
    ctx = gc.init(1 << 20)
    p, lay = param_input(ctx, ne, layout, random_values(ne, seed))
    b = gc.from_numpy(ctx, np.array(pos, np.int32))
    check_gradients(lambda c, p: gc.rope(c, lay(c, p), b, n_dims, mode, 0), [p], 1e-3, 1e-3, INF)
    check_gradients(lambda c, p: gc.rope_back(c, lay(c, p), b, n_dims, mode, 0), [p], 1e-3, 1e-3, INF)


def test_rope_custom_xpos():
    ctx = gc.init(1 << 20)
    p = leaf(ctx, [8, 2, 3], 5)
    b = gc.from_numpy(ctx, np.array([0, 3, 7], np.int32))
    check_gradients(lambda c, p: gc.rope_custom(c, p, b, 6, 2, 0, 0, 500.0, 0.5), [p], 1e-3, 1e-3, INF)
    check_gradients(lambda c, p: gc.rope_xpos_inplace(c, gc.scale(c, p, 1.0), b, 8, 512.0, True), [p],
                    1e-3, 1e-3, INF)


# -- get_rows, diag, set, acc ---------------------------------------------------------------------------------------
@given(ne=shapes(min_dims=2, max_dims=2, max_side=5), seed=seeds(), n=st.integers(1, 7))
def test_get_rows(ne, seed, n):
    """Repeated indices accumulate into the same row."""
    ctx = gc.init(1 << 20)
    a = leaf(ctx, ne, seed)
    idx = gc.from_numpy(ctx, np.random.default_rng(seed).integers(0, ne[1], n).astype(np.int32))
    check_gradients(lambda c, a: gc.get_rows(c, a, idx), [a], 1e-3, 1e-3, INF)
    g = leaf(ctx, [ne[0], n], seed + 1)
    check_gradients(lambda c, g: gc.get_rows_back(c, g, idx, a), [g], 1e-3, 1e-3, INF)


@given(ne=shapes(max_side=4), seed=seeds())
def test_diag(ne, seed):
    ne = list(ne) + [1] * (4 - len(ne))
    ne[1] = 1
    ctx = gc.init(1 << 20)
    a = leaf(ctx, ne, seed)
    check_gradients(lambda c, a: gc.diag(c, a), [a], 1e-3, 1e-3, INF)


@st.composite
def regions(draw):
    """(ne_a, ne_b, nb1, nb2, nb3, offset): a region of a 1-D tensor whose rows and planes are
    spaced unevenly (gaps of any size, planes not a multiple of rows)."""
    ne_b = [draw(st.integers(1, 3)) for _ in range(3)] + [1]
    gap1, gap2 = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    nb1 = ES * (ne_b[0] + gap1)
    nb2 = nb1 * ne_b[1] + ES * gap2
    nb3 = nb2 * ne_b[2]
    offset = ES * draw(st.integers(0, 5))
    end = offset + ES + (ne_b[0] - 1) * ES + (ne_b[1] - 1) * nb1 + (ne_b[2] - 1) * nb2
    ne_a = [end // ES + draw(st.integers(0, 3))]
    return ne_a, ne_b, nb1, nb2, nb3, offset


@pytest.mark.parametrize("op", ["set", "acc"])
@given(region=regions(), seed=seeds())
def test_set_acc(op, region, seed):
    ne_a, ne_b, nb1, nb2, nb3, offset = region
    ctx = gc.init(1 << 20)
    a, b = leaf(ctx, ne_a, seed), leaf(ctx, ne_b, seed + 1)
    fn = getattr(gc, op)
    res = check_gradients(lambda c, a, b: fn(c, a, b, nb1, nb2, nb3, offset), [a, b], 1e-3, 1e-3, 2e-3)
    if op == "set":                     # the overwritten region of a gets no gradient
        written = np.zeros(ne_a[0], bool)
        for i2 in range(ne_b[2]):
            for i1 in range(ne_b[1]):
                start = (offset + i1 * nb1 + i2 * nb2) // ES
                written[start:start + ne_b[0]] = True
        assert np.all(res.analytic[0].reshape(-1)[written] == 0)
        assert np.all(res.analytic[0].reshape(-1)[~written] != 0)


def test_set_2d_and_1d_of_matrices():
    ctx = gc.init(1 << 20)
    a = leaf(ctx, [6, 5], 1)
    b = leaf(ctx, [3, 2], 2)
    check_gradients(lambda c, a, b: gc.set_2d(c, a, b, a.nb[1] * 2, a.nb[1] + 2 * ES), [a, b], 1e-3, 1e-3, 2e-3)
    check_gradients(lambda c, a, b: gc.set_1d(c, a, b, 5 * ES), [a, b], 1e-3, 1e-3, 2e-3)


def test_view_of_a_non_contiguous_tensor_has_no_gradient():
    ctx = gc.init(1 << 20)
    a = leaf(ctx, [4, 3], 1)
    with pytest.raises(gc.GraphError, match="view"):
        check_gradients(lambda c, a: gc.view_1d(c, gc.transpose(c, a), 2, 0), [a])


# -- activations -------------------------------------------------------------------------------------------------------
ACTIVATIONS = {
    "tanh": (gc.tanh, (-2, 2), False),
    "elu": (gc.elu, (-2, 2), True),
    "gelu_quick": (gc.gelu_quick, (-3, 3), False),
    "leaky_relu": (lambda c, x: gc.leaky_relu(c, x, 0.1), (-2, 2), True),
    "leaky_relu_neg": (lambda c, x: gc.leaky_relu(c, x, -0.3), (-2, 2), True),
    "clamp": (lambda c, x: gc.clamp(c, x, -0.5, 0.7), (-1, 1), "clamp"),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(ne=shapes(max_side=4), layout=layouts(), seed=seeds())
def test_activation(name, ne, layout, seed):
    fn, (lo, hi), kink = ACTIVATIONS[name]
    ctx = gc.init(1 << 20)
    x = random_values(ne, seed, lo, hi)
    if kink == "clamp":                 # keep away from the bounds
        x = np.where(np.abs(x + 0.5) < 0.02, x + 0.05, x)
        x = np.where(np.abs(x - 0.7) < 0.02, x - 0.05, x)
    elif kink:
        x = away_from_zero(x)
    p, lay = param_input(ctx, ne, layout, x)
    check_gradients(lambda c, p: fn(c, lay(c, p)), [p], 1e-3, 1e-3, INF)


@pytest.mark.parametrize("name", ["silu_back", "gelu_back"])
@given(ne=shapes(max_side=4), seed=seeds())
def test_back_ops_in_their_output_gradient(name, ne, seed):
    ctx = gc.init(1 << 20)
    x = leaf(ctx, ne, seed, -3, 3)
    dy = leaf(ctx, ne, seed + 1)
    fn = getattr(gc, name)
    check_gradients(lambda c, dy: fn(c, x, dy), [dy], 1e-3, 1e-3, INF)
    with pytest.raises(gc.GraphError, match=name):
        check_gradients(lambda c, x: fn(c, x, dy), [x])


@given(pair=st.tuples(shapes(max_side=3), st.lists(st.integers(1, 2), min_size=4, max_size=4)), seed=seeds())
def test_repeat_back(pair, seed):
    ne, reps = pair
    ne = list(ne) + [1] * (4 - len(ne))
    big = [n * r for n, r in zip(ne, reps)]
    ctx = gc.init(1 << 20)
    a = leaf(ctx, big, seed)
    like = gc.new_tensor(ctx, gc.TYPE_F32, ne)
    check_gradients(lambda c, a: gc.repeat_back(c, a, like), [a], 1e-3, 1e-3, INF)


# -- losses --------------------------------------------------------------------------------------------------------------
@given(ne=shapes(max_side=5), seed=seeds())
def test_cross_entropy_loss(ne, seed):
    """Targets that do not sum to 1 per row (ggml's rule is wrong there), and the targets' gradient."""
    ctx = gc.init(1 << 20)
    a = leaf(ctx, ne, seed, -2, 2)
    b = leaf(ctx, ne, seed + 1, 0, 1)
    check_gradients(lambda c, a, b: gc.cross_entropy_loss(c, a, b), [a, b], 1e-3, 1e-3, INF)


def test_ops_left_without_a_rule_say_so():
    ctx = gc.init(1 << 20)
    a, b = leaf(ctx, [4, 3], 1), leaf(ctx, [4, 3], 2)
    with pytest.raises(gc.GraphError, match="CROSS_ENTROPY_LOSS_BACK"):
        check_gradients(lambda c, a: gc.cross_entropy_loss_back(c, a, b, gc.new_f32(c, 1.0)), [a])


# -- a parameter reached through set_2d and a view, as baby-llama's KV cache -----------------------------------------
def test_kv_cache_path():
    n_embd, n_ctx, n_batch, N = 4, 5, 2, 3
    ctx = gc.init(1 << 20)
    kcur = leaf(ctx, [n_embd, N, n_batch], 1)
    q = leaf(ctx, [n_embd, 2, n_batch], 2)
    kc = leaf(ctx, [n_embd * n_ctx * n_batch], 3)                  # old cache contents: overwritten or unused

    def build(c, kcur, q, kc):
        k = gc.set_2d(c, kc, gc.reshape_2d(c, kcur, n_embd * N, n_batch), ES * n_embd * n_ctx, ES * n_embd * 1)
        kv = gc.view_3d(c, k, n_embd, 1 + N, n_batch, ES * n_embd, ES * n_embd * n_ctx, 0)   # n_past = 1
        return gc.soft_max(c, gc.mul_mat(c, kv, q))

    check_gradients(lambda c, kcur, q: build(c, kcur, q, kc), [kcur, q], 1e-3, 1e-3, INF)
    res = check_gradients(lambda c, kc: build(c, kcur, q, kc), [kc], 1e-3, 1e-3, INF)
    # of the old cache only position 0 (n_past) of each sequence is read
    g = res.analytic[0].reshape(n_batch, n_ctx, n_embd)
    assert np.all(g[:, 1:] == 0) and np.all(g[:, 0] != 0)


# -- a llama block as a whole: rms_norm, rope, KV cache, causal softmax attention, SwiGLU ---------------------------------
def llama_block(ctx, x, w, pos, kc, vc, hp):
    n_embd, n_head, N, n_batch, n_ctx = hp["n_embd"], hp["n_head"], hp["N"], hp["n_batch"], hp["n_ctx"]
    hd, n_rot, eps = n_embd // n_head, hp["n_rot"], 1e-5

    def norm(t, g):
        r = gc.rms_norm(ctx, t, eps)
        return gc.mul(ctx, gc.repeat(ctx, g, r), r)

    cur = norm(x, w["attention_norm"])
    q = gc.rope(ctx, gc.reshape_4d(ctx, gc.mul_mat(ctx, w["wq"], cur), hd, n_head, N, n_batch), pos, n_rot, 0, 0)
    k = gc.rope(ctx, gc.reshape_4d(ctx, gc.mul_mat(ctx, w["wk"], cur), hd, n_head, N, n_batch), pos, n_rot, 0, 0)
    v = gc.cont(ctx, gc.permute(ctx, gc.reshape_3d(ctx, gc.mul_mat(ctx, w["wv"], cur), n_embd, N, n_batch),
                                1, 0, 2, 3))
    kc = gc.set_2d(ctx, kc, gc.reshape_2d(ctx, k, n_embd * N, n_batch), ES * n_embd * n_ctx, 0)
    vc = gc.set_2d(ctx, vc, gc.reshape_2d(ctx, v, N * n_embd, n_batch), ES * n_ctx * n_embd, 0)
    Q = gc.permute(ctx, q, 0, 2, 1, 3)
    K = gc.permute(ctx, gc.reshape_4d(ctx, gc.view_3d(ctx, kc, n_embd, N, n_batch, ES * n_embd, ES * n_embd * n_ctx, 0),
                                      hd, n_head, N, n_batch), 0, 2, 1, 3)
    kq = gc.soft_max(ctx, gc.diag_mask_inf(ctx, gc.scale(ctx, gc.mul_mat(ctx, K, Q), 1.0 / math.sqrt(hd)), 0))
    V = gc.view_4d(ctx, vc, N, hd, n_head, n_batch, ES * n_ctx, ES * n_ctx * hd, ES * n_ctx * n_embd, 0)
    kqv = gc.permute(ctx, gc.mul_mat(ctx, V, kq), 0, 2, 1, 3)
    cur = gc.mul_mat(ctx, w["wo"], gc.reshape_2d(ctx, gc.cont(ctx, kqv), n_embd, N * n_batch))
    ff_in = gc.add(ctx, cur, x)
    cur = norm(ff_in, w["ffn_norm"])
    cur = gc.mul_mat(ctx, w["w2"], gc.mul(ctx, gc.silu(ctx, gc.mul_mat(ctx, w["w1"], cur)),
                                          gc.mul_mat(ctx, w["w3"], cur)))
    return gc.add(ctx, cur, ff_in)


def test_llama_block_gradients():
    hp = dict(n_embd=8, n_head=2, n_rot=4, N=3, n_batch=2, n_ctx=3, n_ff=6)
    ne, nf = hp["n_embd"], hp["n_ff"]
    ctx = gc.init(4 << 20)
    rng = np.random.default_rng(7)

    def weight(*shape):
        t = gc.from_numpy(ctx, rng.normal(0, 1, shape[::-1]).clip(-1, 1).astype(np.float32)
                          / np.float32(math.sqrt(sum(shape) if len(shape) > 1 else shape[0])))
        return t

    names = ["attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"]
    shapes_ = [(ne,), (ne, ne), (ne, ne), (ne, ne), (ne, ne), (ne,), (ne, nf), (nf, ne), (ne, nf)]
    w = {n: weight(*s) for n, s in zip(names, shapes_)}
    for n in ("attention_norm", "ffn_norm"):
        w[n].numpy()[...] += 1.0
    x = gc.from_numpy(ctx, rng.uniform(-1, 1, (hp["N"] * hp["n_batch"], ne)).astype(np.float32))
    pos = gc.from_numpy(ctx, np.arange(hp["N"], dtype=np.int32))
    kc = gc.new_tensor_1d(ctx, gc.TYPE_F32, ne * hp["n_ctx"] * hp["n_batch"])
    vc = gc.new_tensor_1d(ctx, gc.TYPE_F32, ne * hp["n_ctx"] * hp["n_batch"])
    params = [x] + [w[n] for n in names]

    def build(c, x, *ws):
        return llama_block(c, x, dict(zip(names, ws)), pos, kc, vc, hp)

    res = check_gradients(build, params, 1e-3, 1e-3, INF)
    assert all(np.abs(a).max() > 0 for a in res.analytic)        # every parameter is reached
    # the same with 2 threads
    check_gradients(build, params, 1e-3, 1e-3, INF, n_threads=2, max_elements=20)
