"""Neural-network ops against float64 numpy references: norm, rms_norm, rms_norm_back, tanh, elu,
gelu_quick, leaky_relu, clamp, silu_back, diag_mask_inf/zero, soft_max (and soft_max_ext),
soft_max_back, rope (modes 0 and 2, rope_custom, YaRN, xPos), rope_back, repeat_back,
cross_entropy_loss and cross_entropy_loss_back; any layout; sentinel bytes around outputs; the
same bits for 1, 2 and 4 threads; bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import graphcore as gc
from graphcore.testing import (Layout, assert_close_nmse, assert_same_bits, broadcastable_pairs, compute_guarded,
                               element_byte_offsets, layouts, make_tensor, ne4, random_values, seeds,
                               sentinel_context, shapes)

EXACT = 1e-7       # NMSE for exact ops
TRANS = 5e-6       # NMSE for exp/log/trig-based ops
F32, F16, I32 = gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32


def f32(v):
    """The float32 value an op parameter is stored as."""
    return float(np.float32(v))


def x4(x, ne):
    return np.asarray(x, dtype=np.float64).reshape(ne4(ne)[::-1])


def check_inplace(a, out, expected, tol, what):
    assert out.view_src is not None, f"{what}: inplace result is not a view"
    assert np.array_equal(element_byte_offsets(out), element_byte_offsets(a)), f"{what}: not a's elements"
    assert_close_nmse(a.numpy4d(), expected, tol, what + " (through src0)")


def _raises(fn, *needles, exc=gc.GraphError):
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message {msg!r}"
    return msg


# -- references ------------------------------------------------------------------------------------------
def ref_norm(x, eps):
    m = x - x.mean(-1, keepdims=True)
    return m / np.sqrt((m * m).mean(-1, keepdims=True) + eps)


def ref_rms_norm(x, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def ref_rms_norm_back(x, dz, eps):
    n = x.shape[-1]
    sxx = (x * x).sum(-1, keepdims=True)
    sxdz = (x * dz).sum(-1, keepdims=True)
    return (dz - x * sxdz / (sxx + n * eps)) / np.sqrt(sxx / n + eps)


def ref_softmax(w):
    mx = w.max(-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.exp(w - np.where(np.isneginf(mx), 0.0, mx))
    s = e.sum(-1, keepdims=True)
    return np.where(np.isneginf(mx), 0.0, e / np.where(s == 0, 1.0, s))


def alibi_slopes(n_head, max_bias):
    nl2 = 1 << int(math.floor(math.log2(n_head)))
    m0, m1 = 2.0 ** (-max_bias / nl2), 2.0 ** (-(max_bias / 2.0) / nl2)
    return np.array([m0 ** (h + 1) if h < nl2 else m1 ** (2 * (h - nl2) + 1) for h in range(n_head)])


def rope_cos_sin(pos, n_dims, ne0, mode, base=10000.0, freq_scale=1.0, ext_factor=0.0, attn_factor=1.0,
                 beta_fast=0.0, beta_slow=0.0, n_orig_ctx=0, xpos_base=0.0, xpos_down=False):
    """cos and sin of the rotation of pair k at each position: arrays [len(pos), n_dims/2]."""
    half = n_dims // 2
    k = np.arange(half, dtype=np.float64)
    p = np.asarray(pos, dtype=np.float64)[:, None]
    extrap = p * base ** (-2.0 * k / n_dims)
    theta = freq_scale * extrap
    mscale = attn_factor
    if ext_factor != 0.0:
        def corr(n_rot):
            return n_dims * math.log(n_orig_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = max(0.0, math.floor(corr(beta_fast))), min(n_dims - 1.0, math.ceil(corr(beta_slow)))
        ramp = (1 - np.clip((k - lo) / max(0.001, hi - lo), 0, 1)) * ext_factor
        theta = theta * (1 - ramp) + extrap * ramp
        mscale = attn_factor * (1.0 + 0.1 * math.log(1.0 / freq_scale))
    c, s = np.cos(theta) * mscale, np.sin(theta) * mscale
    if xpos_base != 0.0:
        zeta = ((2 * k + 0.4 * ne0) / (1.4 * ne0)) ** (p / xpos_base)
        if xpos_down:
            zeta = 1.0 / zeta
        c, s = c * zeta, s * zeta
    return c, s


def ref_rope(x, pos, n_dims, mode, sign=1.0, **kw):
    """x: 4-D (ne3, ne2, ne1, ne0) float64; pos: one per ne2."""
    c, s = rope_cos_sin(pos, n_dims, x.shape[-1], mode, **kw)
    c, s = c[None, :, None, :], sign * s[None, :, None, :]
    out = x.copy()
    half = n_dims // 2
    if mode == 0:
        x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
        out[..., 0:n_dims:2] = x0 * c - x1 * s
        out[..., 1:n_dims:2] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., :half], x[..., half:n_dims]
        out[..., :half] = x0 * c - x1 * s
        out[..., half:n_dims] = x0 * s + x1 * c
    return out


CE_EPS = 1e-9


def ref_ce_loss(a, b):
    p = ref_softmax(a)
    q = (1 - CE_EPS) * p + CE_EPS
    nr = a.size // a.shape[-1]
    return -(b * np.log(q)).sum() / nr


def ref_ce_back(a, b, c):
    p = ref_softmax(a)
    q = (1 - CE_EPS) * p + CE_EPS
    r = p / q
    nr = a.size // a.shape[-1]
    t = (b * r).sum(-1, keepdims=True)
    return c * (1 - CE_EPS) / nr * (p * t - b * r)


def ref_repeat_back(a, ne_b):
    b4 = ne4(ne_b)[::-1]
    shape = []
    for A, B in zip(a.shape, b4):
        shape += [A // B, B]
    return a.reshape(shape).sum(axis=(0, 2, 4, 6))


# -- norm / rms_norm / rms_norm_back ---------------------------------------------------------------------------
EPS = st.sampled_from([1e-6, 5e-6, 1e-5, 1e-2, 0.5])


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", ["norm", "rms_norm"])
@given(ne=shapes(), layout=layouts(), seed=seeds(), eps=EPS, scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_norms(name, inplace, ne, layout, seed, eps, scale):
    build = getattr(gc, name + ("_inplace" if inplace else ""))
    ref = ref_norm if name == "norm" else ref_rms_norm
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -scale, scale)
    a = make_tensor(ctx, ne, layout, x)
    out = build(ctx, a, eps)
    assert out.op == gc.BY_NAME[name.upper()].code and out.ne == a.ne
    assert out.op_params[:1].view(np.float32)[0] == np.float32(eps)
    expected = ref(x4(x, ne), f32(eps))
    compute_guarded(ctx, out, what=name)
    assert_close_nmse(out.numpy4d(), expected, EXACT, f"{name} {layout}")
    if inplace:
        check_inplace(a, out, expected, EXACT, name)


@given(ne=shapes(), la=layouts(), lb=layouts(), seed=seeds(), eps=EPS)
def test_rms_norm_back(ne, la, lb, seed, eps):
    ctx = sentinel_context(1 << 17)
    x, dz = random_values(ne, seed, -2, 2), random_values(ne, seed + 1)
    a = make_tensor(ctx, ne, la, x)
    b = make_tensor(ctx, ne, lb, dz)
    out = gc.rms_norm_back(ctx, a, b, eps)
    assert out.src == [a, b]
    compute_guarded(ctx, out, what="rms_norm_back")
    assert_close_nmse(out.numpy4d(), ref_rms_norm_back(x4(x, ne), x4(dz, ne), f32(eps)), EXACT, f"{la} {lb}")


def test_rms_norm_back_is_the_gradient():
    """The reference (and so the op) is the vector-Jacobian product of rms_norm: finite differences."""
    rng = np.random.default_rng(3)
    x, dz, eps = rng.standard_normal(7), rng.standard_normal(7), 1e-3
    h = 1e-6
    num = np.array([(ref_rms_norm(x + h * e, eps) - ref_rms_norm(x - h * e, eps)) @ dz / (2 * h)
                    for e in np.eye(7)])
    np.testing.assert_allclose(ref_rms_norm_back(x, dz, eps), num, rtol=1e-6, atol=1e-8)
    ctx = sentinel_context(1 << 16)
    out = gc.rms_norm_back(ctx, gc.from_numpy(ctx, x.astype(np.float32)), gc.from_numpy(ctx, dz.astype(np.float32)),
                           eps)
    compute_guarded(ctx, out)
    np.testing.assert_allclose(out.numpy(), num, rtol=1e-5, atol=1e-6)


# -- activations ---------------------------------------------------------------------------------------------
def _gelu_quick(x):
    return x / (1.0 + np.exp(-1.702 * x))


UNARY = {
    "tanh": (gc.tanh, gc.tanh_inplace, np.tanh, (-5, 5), TRANS),
    "elu": (gc.elu, gc.elu_inplace, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), (-5, 5), TRANS),
    "gelu_quick": (gc.gelu_quick, gc.gelu_quick_inplace, _gelu_quick, (-8, 8), TRANS),
}


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", list(UNARY))
@given(ne=shapes(), layout=layouts(), seed=seeds())
def test_unary_activations(name, inplace, ne, layout, seed):
    build, build_inplace, ref, (lo, hi), tol = UNARY[name]
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, lo, hi)
    a = make_tensor(ctx, ne, layout, x)
    out = (build_inplace if inplace else build)(ctx, a)
    assert out.op == gc.BY_NAME[name.upper()].code
    expected = ref(x4(x, ne))
    compute_guarded(ctx, out, what=name)
    assert_close_nmse(out.numpy4d(), expected, tol, f"{name} {layout}")
    if inplace:
        check_inplace(a, out, expected, tol, name)


@pytest.mark.parametrize("name", list(UNARY) + ["leaky_relu", "clamp"])
def test_activation_special_values(name):
    x = np.array([0.0, -0.0, 1e-45, -1e-45, 0.5, -0.5, 20.0, -20.0, 100.0, -100.0, 3e38, -3e38, np.inf, -np.inf,
                  np.nan], dtype=np.float32)
    ctx = sentinel_context(1 << 16)
    a = gc.from_numpy(ctx, x)
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if name == "leaky_relu":
            out, exp = gc.leaky_relu(ctx, a, 0.1), np.where(x64 > 0, x64, 0) + 0.1 * np.where(x64 < 0, x64, 0)
        elif name == "clamp":
            out, exp = gc.clamp(ctx, a, -1.0, 2.0), np.clip(x64, -1.0, 2.0)
        else:
            out, exp = UNARY[name][0](ctx, a), UNARY[name][2](x64)
            if name == "gelu_quick":   # the limit at -inf is 0 (the formula gives -inf * 0)
                exp[x == -np.inf] = 0.0
    compute_guarded(ctx, out, what=name)
    np.testing.assert_allclose(out.numpy(), exp.astype(np.float32), rtol=1e-6, atol=0, equal_nan=True,
                               err_msg=name)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), layout=layouts(), seed=seeds(), slope=st.sampled_from([0.0, 0.01, 0.1, -0.5, 1.0, 3.0]))
def test_leaky_relu(inplace, ne, layout, seed, slope):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -3, 3)
    a = make_tensor(ctx, ne, layout, x)
    out = gc.leaky_relu(ctx, a, slope, inplace)
    x64 = x4(x, ne)
    expected = np.where(x64 > 0, x64, 0) + f32(slope) * np.where(x64 < 0, x64, 0)
    compute_guarded(ctx, out, what="leaky_relu")
    assert_close_nmse(out.numpy4d(), expected, EXACT, f"leaky_relu {slope} {layout}")
    if inplace:
        check_inplace(a, out, expected, EXACT, "leaky_relu")


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), layout=layouts(), seed=seeds(),
       lim=st.sampled_from([(-0.5, 0.5), (0.0, 6.0), (-1.0, -1.0), (1.0, -1.0), (-np.inf, 0.25), (-0.3, np.inf)]))
def test_clamp(inplace, ne, layout, seed, lim):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -2, 2)
    a = make_tensor(ctx, ne, layout, x)
    out = (gc.clamp_inplace if inplace else gc.clamp)(ctx, a, *lim)
    lo, hi = f32(lim[0]), f32(lim[1])
    expected = np.maximum(np.minimum(x4(x, ne), hi), lo)      # ggml: MAX(MIN(x, max), min)
    compute_guarded(ctx, out, what="clamp")
    assert_close_nmse(out.numpy4d(), expected, EXACT, f"clamp {lim} {layout}")
    if inplace:
        check_inplace(a, out, expected, EXACT, "clamp")
    else:
        assert out.view_src is None, "clamp must not write over its input (ggml's does)"


@given(ne=shapes(), la=layouts(), lb=layouts(), seed=seeds())
def test_silu_back(ne, la, lb, seed):
    ctx = sentinel_context(1 << 17)
    x, dy = random_values(ne, seed, -8, 8), random_values(ne, seed + 1)
    a = make_tensor(ctx, ne, la, x)
    b = make_tensor(ctx, ne, lb, dy)
    out = gc.silu_back(ctx, a, b)
    x64 = x4(x, ne)
    s = 1 / (1 + np.exp(-x64))
    compute_guarded(ctx, out, what="silu_back")
    assert_close_nmse(out.numpy4d(), x4(dy, ne) * s * (1 + x64 * (1 - s)), TRANS, f"silu_back {la} {lb}")


# -- diag_mask_inf / diag_mask_zero ----------------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", ["diag_mask_inf", "diag_mask_zero"])
@given(ne=shapes(), layout=layouts(), seed=seeds(), n_past=st.integers(0, 4))
def test_diag_mask(name, inplace, ne, layout, seed, n_past):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    out = getattr(gc, name + ("_inplace" if inplace else ""))(ctx, a, n_past)
    assert out.op_params[0] == n_past
    x64 = x4(x, ne)
    i0 = np.arange(x64.shape[3])[None, :]
    i1 = np.arange(x64.shape[2])[:, None]
    expected = np.where(i0 > n_past + i1, -np.inf if name == "diag_mask_inf" else 0.0, x64)
    compute_guarded(ctx, out, what=name)
    assert_close_nmse(out.numpy4d(), expected, 0.0, f"{name} {layout}")
    if inplace:
        check_inplace(a, out, expected, 0.0, name)


# -- soft_max / soft_max_ext / soft_max_back --------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), layout=layouts(), seed=seeds(), spread=st.sampled_from([0.1, 3.0, 40.0]),
       masked=st.floats(0, 0.9))
def test_soft_max(inplace, ne, layout, seed, spread, masked):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -spread, spread)
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape) < masked] = -np.inf           # masked entries, some rows entirely
    a = make_tensor(ctx, ne, layout, x)
    out = (gc.soft_max_inplace if inplace else gc.soft_max)(ctx, a)
    expected = ref_softmax(x4(x, ne))
    compute_guarded(ctx, out, what="soft_max")
    got = out.numpy4d()
    assert not np.isnan(got).any()
    assert_close_nmse(got, expected, TRANS, f"soft_max {layout}")
    if inplace:
        check_inplace(a, out, expected, TRANS, "soft_max")


def test_soft_max_all_masked_rows_give_zeros():
    ctx = sentinel_context(1 << 16)
    x = np.full((3, 5), -np.inf, np.float32)
    x[1, 1] = 7.0
    masked = gc.diag_mask_inf(ctx, gc.from_numpy(ctx, x), 0)
    out = gc.soft_max(ctx, masked)
    compute_guarded(ctx, [masked, out])
    np.testing.assert_array_equal(out.numpy(), [[0] * 5, [0, 1, 0, 0, 0], [0] * 5])


@given(ne=shapes(min_dims=2), layout=layouts(), seed=seeds(), scale=st.sampled_from([1.0, 0.125, 2.5]),
       use_mask=st.booleans(), max_bias=st.sampled_from([0.0, 8.0]), mask_rows=st.integers(1, 3))
def test_soft_max_ext(ne, layout, seed, scale, use_mask, max_bias, mask_rows):
    ne = ne4(ne)
    ne[1] = ne[1] * mask_rows
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -3, 3)
    a = make_tensor(ctx, ne, layout, x)
    w = x4(x, ne) * f32(scale)
    mask = pos = None
    if use_mask:
        m = random_values([ne[0], mask_rows], seed + 1, -2, 2)
        m[np.random.default_rng(seed).random(m.shape) < 0.3] = -np.inf
        mask = gc.from_numpy(ctx, m)
        w = w + np.tile(m.astype(np.float64), (1, ne[1] // mask_rows, 1))[None, None] \
            .reshape(1, 1, ne[1], ne[0])
    if max_bias > 0:
        p = random_values([ne[0]], seed + 2, 0, 10)
        pos = gc.from_numpy(ctx, p)
        w = w + alibi_slopes(ne[2], max_bias)[None, :, None, None] * p.astype(np.float64)[None, None, None, :]
    out = gc.soft_max_ext(ctx, a, mask, pos, scale, max_bias)
    compute_guarded(ctx, out, what="soft_max_ext")
    assert_close_nmse(out.numpy4d(), ref_softmax(w), TRANS, f"soft_max_ext {layout}")


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(ne=shapes(), la=layouts(), lb=layouts(), seed=seeds())
def test_soft_max_back(inplace, ne, la, lb, seed):
    ctx = sentinel_context(1 << 17)
    dy = random_values(ne, seed)
    y = ref_softmax(x4(random_values(ne, seed + 1, -3, 3), ne)).astype(np.float32)
    a = make_tensor(ctx, ne, la, dy)
    b = make_tensor(ctx, ne, lb, y)
    out = (gc.soft_max_back_inplace if inplace else gc.soft_max_back)(ctx, a, b)
    y64, dy64 = y.astype(np.float64), x4(dy, ne)
    expected = y64 * (dy64 - (y64 * dy64).sum(-1, keepdims=True))
    compute_guarded(ctx, out, what="soft_max_back")
    assert_close_nmse(out.numpy4d(), expected, EXACT, f"soft_max_back {la} {lb}")
    if inplace:
        check_inplace(a, out, expected, EXACT, "soft_max_back")


# -- rope --------------------------------------------------------------------------------------------------------
@st.composite
def rope_cases(draw):
    half = draw(st.integers(1, 4))
    ne0 = 2 * half + draw(st.integers(0, 3))            # n_dims <= ne0; the rest passes through
    n_dims = 2 * draw(st.integers(1, half))
    ne = [ne0, draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 2))]
    mode = draw(st.sampled_from([0, 2]))
    pos = draw(st.lists(st.integers(-20, 3000), min_size=ne[2], max_size=ne[2]))
    return ne, n_dims, mode, pos


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@given(case=rope_cases(), layout=layouts(), playout=layouts(kinds=("contiguous", "strided")), seed=seeds())
def test_rope(inplace, case, layout, playout, seed):
    ne, n_dims, mode, pos = case
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    b = make_tensor(ctx, [ne[2]], playout, np.array(pos, np.int32), type=I32)
    out = (gc.rope_inplace if inplace else gc.rope)(ctx, a, b, n_dims, mode, 0)
    assert list(out.op_params[:5]) == [0, n_dims, mode, 0, 0]
    expected = ref_rope(x4(x, ne), pos, n_dims, mode)
    compute_guarded(ctx, out, what="rope")
    got = out.numpy4d()
    assert_close_nmse(got, expected, TRANS, f"rope mode {mode} n_dims {n_dims} {layout}")
    assert np.array_equal(got[..., n_dims:], x4(x, ne)[..., n_dims:].astype(np.float32)), "tail must pass through"
    if inplace:
        check_inplace(a, out, expected, TRANS, "rope")


def test_rope_baby_llama_shape_mode0():
    """baby-llama's Qcur: [hd=4, n_head=8, N=8, n_batch=8], n_rot = 4, positions 0..7, mode 0."""
    ctx = sentinel_context(1 << 18)
    x = random_values([4, 8, 8, 8], 1)
    a = gc.from_numpy(ctx, x)
    pos = gc.from_numpy(ctx, np.arange(8, dtype=np.int32))
    out = gc.rope(ctx, a, pos, 4, 0, 0)
    compute_guarded(ctx, out)
    assert_close_nmse(out.numpy(), ref_rope(x.astype(np.float64), np.arange(8), 4, 0), TRANS)
    # position 0 is the identity
    assert np.array_equal(out.numpy()[:, 0], x[:, 0])


@given(case=rope_cases(), seed=seeds(), base=st.sampled_from([10000.0, 500.0, 1e6]),
       fscale=st.sampled_from([1.0, 0.5, 0.25, 2.0]), attn=st.sampled_from([1.0, 0.75]),
       yarn=st.booleans())
def test_rope_custom(case, seed, base, fscale, attn, yarn):
    ne, n_dims, mode, pos = case
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = gc.from_numpy(ctx, x)
    b = gc.from_numpy(ctx, np.array(pos, np.int32))
    kw = dict(freq_base=base, freq_scale=fscale, attn_factor=attn)
    if yarn:
        kw.update(ext_factor=1.0, n_orig_ctx=64, beta_fast=32.0, beta_slow=1.0)
    out = gc.rope_custom(ctx, a, b, n_dims, mode, 0, **kw)
    names = dict(freq_base="base", freq_scale="freq_scale", attn_factor="attn_factor", ext_factor="ext_factor",
                 n_orig_ctx="n_orig_ctx", beta_fast="beta_fast", beta_slow="beta_slow")
    expected = ref_rope(x4(x, ne), pos, n_dims, mode, **{names[k]: (f32(v) if isinstance(v, float) else v)
                                                         for k, v in kw.items()})
    compute_guarded(ctx, out, what="rope_custom")
    assert_close_nmse(out.numpy4d(), expected, TRANS, f"rope_custom {kw}")


@given(case=rope_cases(), seed=seeds(), base=st.sampled_from([100.0, 512.0]), down=st.booleans())
def test_rope_xpos(case, seed, base, down):
    ne, n_dims, _, pos = case
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = gc.from_numpy(ctx, x)
    b = gc.from_numpy(ctx, np.array(pos, np.int32) % 64)
    out = gc.rope_xpos_inplace(ctx, a, b, n_dims, base, down)
    expected = ref_rope(x4(x, ne), np.array(pos) % 64, n_dims, 0, xpos_base=base, xpos_down=down)
    compute_guarded(ctx, out, what="rope_xpos")
    assert_close_nmse(a.numpy4d(), expected, TRANS, "rope_xpos")


@given(case=rope_cases(), la=layouts(), seed=seeds(), fscale=st.sampled_from([1.0, 0.5]), yarn=st.booleans())
def test_rope_back_is_the_transpose(case, la, seed, fscale, yarn):
    """<rope(x), g> == <x, rope_back(g)> and rope_back against its reference (sin negated)."""
    ne, n_dims, mode, pos = case
    ctx = sentinel_context(1 << 18)
    x, gv = random_values(ne, seed), random_values(ne, seed + 1)
    kw = dict(freq_scale=fscale, attn_factor=0.9)
    if yarn:
        kw.update(ext_factor=0.5, n_orig_ctx=32, beta_fast=32.0, beta_slow=1.0)
    b = gc.from_numpy(ctx, np.array(pos, np.int32))
    fwd = gc.rope_custom(ctx, gc.from_numpy(ctx, x), b, n_dims, mode, 0, **kw)
    back = gc.rope_back(ctx, make_tensor(ctx, ne, la, gv), b, n_dims, mode, 0, **kw)
    assert back.op == gc.OP_ROPE_BACK and back.src[1] is b
    compute_guarded(ctx, [fwd, back])
    names = dict(freq_scale="freq_scale", attn_factor="attn_factor", ext_factor="ext_factor",
                 n_orig_ctx="n_orig_ctx", beta_fast="beta_fast", beta_slow="beta_slow")
    rk = {names[k]: (f32(v) if isinstance(v, float) else v) for k, v in kw.items()}
    expected = ref_rope(x4(gv, ne), pos, n_dims, mode, sign=-1.0, **rk)
    assert_close_nmse(back.numpy4d(), expected, TRANS, "rope_back")
    lhs = float((fwd.numpy4d().astype(np.float64) * x4(gv, ne)).sum())
    rhs = float((x4(x, ne) * back.numpy4d().astype(np.float64)).sum())
    assert abs(lhs - rhs) <= 1e-5 * (1 + abs(lhs)), (lhs, rhs)


# -- repeat_back -------------------------------------------------------------------------------------------------
@given(pair=broadcastable_pairs(), layout=layouts(), seed=seeds())
def test_repeat_back(pair, layout, seed):
    ne_a, ne_b = pair
    ctx = sentinel_context(1 << 17)
    x = random_values(ne_a, seed)
    a = make_tensor(ctx, ne_a, layout, x)
    shape = gc.new_tensor(ctx, F32, ne_b)
    out = gc.repeat_back(ctx, a, shape)
    assert out.ne == ne4(ne_b) and out.src == [a]
    compute_guarded(ctx, out, what="repeat_back")
    assert_close_nmse(out.numpy4d(), ref_repeat_back(x4(x, ne_a), ne_b), EXACT, f"repeat_back {pair} {layout}")


def test_repeat_back_undoes_repeat_for_gradients():
    """<repeat(a), g> == <a, repeat_back(g)>: repeat_back is repeat's transpose."""
    ctx = sentinel_context(1 << 16)
    av, gv = random_values([3, 2], 1), random_values([6, 4, 2], 2)
    a, g = gc.from_numpy(ctx, av), gc.from_numpy(ctx, gv)
    r = gc.repeat(ctx, a, g)
    rb = gc.repeat_back(ctx, g, a)
    compute_guarded(ctx, [r, rb])
    lhs = (r.numpy().astype(np.float64) * gv).sum()
    rhs = (av.astype(np.float64) * rb.numpy()).sum()
    assert abs(lhs - rhs) < 1e-5


# -- cross_entropy_loss / cross_entropy_loss_back -------------------------------------------------------------------
@given(ne=shapes(), la=layouts(), lb=layouts(), seed=seeds(), masked=st.sampled_from([0.0, 0.3]),
       normalised=st.booleans())
def test_cross_entropy_loss(ne, la, lb, seed, masked, normalised):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -4, 4)
    x[np.random.default_rng(seed).random(x.shape) < masked] = -np.inf
    t = random_values(ne, seed + 1, 0, 1)
    if normalised:
        t = (x4(t, ne) / x4(t, ne).sum(-1, keepdims=True)).astype(np.float32).reshape(t.shape)
    a = make_tensor(ctx, ne, la, x)
    b = make_tensor(ctx, ne, lb, t)
    out = gc.cross_entropy_loss(ctx, a, b)
    assert out.ne == [1, 1, 1, 1] and out.type == F32
    compute_guarded(ctx, out, what="cross_entropy_loss")
    assert_close_nmse(out.numpy(), [ref_ce_loss(x4(x, ne), x4(t, ne))], TRANS, f"ce {la} {lb}")


@given(ne=shapes(), la=layouts(), lb=layouts(), seed=seeds(), c=st.sampled_from([1.0, -0.5, 3.0]),
       target=st.sampled_from(["onehot", "normalised", "any", "signed"]))
def test_cross_entropy_loss_back(ne, la, lb, seed, c, target):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed, -4, 4)
    t64 = x4(random_values(ne, seed + 1, 0, 1), ne)
    if target == "onehot":
        t64 = (t64 == t64.max(-1, keepdims=True)).astype(np.float64)
    elif target == "normalised":
        t64 = t64 / t64.sum(-1, keepdims=True)
    elif target == "signed":
        t64 = 2 * t64 - 1                                # baby-llama's targets are -1 / +1
    t = t64.astype(np.float32)
    a = make_tensor(ctx, ne, la, x)
    b = make_tensor(ctx, ne, lb, t.reshape(x.shape))
    cc = gc.from_numpy(ctx, np.array([c], np.float32))
    out = gc.cross_entropy_loss_back(ctx, a, b, cc)
    assert out.src == [a, b, cc] and out.ne == a.ne
    compute_guarded(ctx, out, what="cross_entropy_loss_back")
    assert_close_nmse(out.numpy4d(), ref_ce_back(x4(x, ne), t.astype(np.float64), c), TRANS, f"{target}")


@pytest.mark.parametrize("target", ["onehot", "any", "signed"])
def test_cross_entropy_loss_back_is_the_gradient(target):
    """Central differences of the float64 loss, for targets whose rows do not sum to 1 too."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (3, 5))
    t = rng.uniform(0, 1, (3, 5))
    if target == "onehot":
        t = (t == t.max(-1, keepdims=True)).astype(np.float64)
    elif target == "signed":
        t = 2 * t - 1
    x32, t32 = x.astype(np.float32), t.astype(np.float32)
    xd, td = x32.astype(np.float64), t32.astype(np.float64)
    h = 1e-5
    num = np.zeros_like(xd)
    for idx in np.ndindex(*xd.shape):
        e = np.zeros_like(xd)
        e[idx] = h
        num[idx] = (ref_ce_loss(xd + e, td) - ref_ce_loss(xd - e, td)) / (2 * h)
    ctx = sentinel_context(1 << 16)
    out = gc.cross_entropy_loss_back(ctx, gc.from_numpy(ctx, x32), gc.from_numpy(ctx, t32),
                                     gc.from_numpy(ctx, np.ones(1, np.float32)))
    compute_guarded(ctx, out)
    np.testing.assert_allclose(out.numpy(), num, rtol=1e-4, atol=1e-7)
    if target != "onehot":       # ggml's (softmax - target) / nr is not the gradient here
        p = ref_softmax(xd)
        assert np.abs((p - td) / 3 - num).max() > 1e-2


# -- thread counts: the same bits for 1, 2 and 4 threads, on tensors the planner splits -------------------------------
def _nn_cases():
    def pos(ctx, n):
        return gc.from_numpy(ctx, (np.arange(n, dtype=np.int32) * 7) % 300)

    big = [96, 40, 24]                  # 92,160 elements, 960 rows

    def unary(fn):
        return lambda ctx, a, b: fn(ctx, a)

    return {
        "norm": unary(lambda ctx, a: gc.norm(ctx, a, 1e-5)),
        "rms_norm": unary(lambda ctx, a: gc.rms_norm(ctx, a, 1e-5)),
        "rms_norm_back": lambda ctx, a, b: gc.rms_norm_back(ctx, a, b, 1e-5),
        "tanh": unary(gc.tanh), "elu": unary(gc.elu), "gelu_quick": unary(gc.gelu_quick),
        "leaky_relu": unary(lambda ctx, a: gc.leaky_relu(ctx, a, 0.1)),
        "clamp": unary(lambda ctx, a: gc.clamp(ctx, a, -0.5, 0.5)),
        "silu_back": lambda ctx, a, b: gc.silu_back(ctx, a, b),
        "diag_mask_inf": unary(lambda ctx, a: gc.diag_mask_inf(ctx, a, 3)),
        "diag_mask_zero": unary(lambda ctx, a: gc.diag_mask_zero(ctx, a, 3)),
        "soft_max": unary(gc.soft_max),
        "soft_max_ext": lambda ctx, a, b: gc.soft_max_ext(ctx, a, gc.view_2d(ctx, b, big[0], 8, b.nb[1], 0), None,
                                                          0.3, 0.0),
        "soft_max_back": lambda ctx, a, b: gc.soft_max_back(ctx, a, b),
        "rope0": lambda ctx, a, b: gc.rope(ctx, a, pos(ctx, big[2]), 64, 0, 0),
        "rope2": lambda ctx, a, b: gc.rope_custom(ctx, a, pos(ctx, big[2]), 64, 2, 0, 64, 10000.0, 0.5, 1.0, 1.0,
                                                  32.0, 1.0),
        "rope_back": lambda ctx, a, b: gc.rope_back(ctx, a, pos(ctx, big[2]), 96, 0, 0),
        "repeat_back": lambda ctx, a, b: gc.repeat_back(ctx, a, gc.new_tensor_3d(ctx, F32, 48, 40, 4)),
        "cross_entropy_loss": lambda ctx, a, b: gc.cross_entropy_loss(ctx, a, b),
        "cross_entropy_loss_back": lambda ctx, a, b: gc.cross_entropy_loss_back(ctx, a, b, gc.new_f32(ctx, 2.0)),
    }, big


NN_CASES, BIG = _nn_cases()


@pytest.mark.parametrize("layout", [Layout(), Layout("permuted", axes=(0, 2, 1, 3))], ids=["contiguous", "permuted"])
@pytest.mark.parametrize("name", list(NN_CASES))
def test_threads_same_bits(name, layout):
    ctx = sentinel_context(8 << 20)
    a = make_tensor(ctx, BIG, layout, random_values(BIG, 11, -3, 3))
    b = gc.from_numpy(ctx, random_values(BIG, 12, 0, 1))
    out = NN_CASES[name](ctx, a, b)
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


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_norm_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    i = gc.new_tensor_2d(ctx, I32, 4, 3)
    for name in ("norm", "rms_norm", "norm_inplace", "rms_norm_inplace"):
        fn = getattr(gc, name)
        _raises(lambda: fn(ctx, i, 1e-5), name, "i32", "[4, 3, 1, 1]")
        _raises(lambda: fn(ctx, a, 0.0), name, "eps", "> 0")
        _raises(lambda: fn(ctx, a, -1e-5), name, "eps")
        _raises(lambda: fn(ctx, a, float("nan")), name, "eps")
        _raises(lambda: fn(ctx, a, "1e-5"), name, "eps", "str")
        _raises(lambda: fn(ctx, np.ones((3, 4), np.float32), 1e-5), name, "ndarray")
    _raises(lambda: gc.rms_norm_back(ctx, a, gc.new_tensor_2d(ctx, F32, 3, 4), 1e-5), "rms_norm_back",
            "[4, 3, 1, 1]", "[3, 4, 1, 1]")
    _raises(lambda: gc.rms_norm_back(ctx, a, i, 1e-5), "rms_norm_back", "i32")
    _raises(lambda: gc.norm(None, a, 1e-5), "norm", "Context")


def test_activation_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    h = gc.new_tensor_2d(ctx, F16, 4, 3)
    for name in ("tanh", "elu", "gelu_quick", "tanh_inplace", "elu_inplace", "gelu_quick_inplace"):
        _raises(lambda: getattr(gc, name)(ctx, h), name, "f16", "[4, 3, 1, 1]")
    _raises(lambda: gc.leaky_relu(ctx, h, 0.1), "leaky_relu", "f16")
    _raises(lambda: gc.leaky_relu(ctx, a, "0.1"), "leaky_relu", "negative_slope")
    _raises(lambda: gc.leaky_relu(ctx, a, 0.1, "yes"), "leaky_relu", "inplace")
    _raises(lambda: gc.clamp(ctx, a, float("nan"), 1.0), "clamp", "min")
    _raises(lambda: gc.clamp(ctx, a, 0.0, None), "clamp", "max")
    _raises(lambda: gc.clamp_inplace(ctx, h, 0.0, 1.0), "clamp_inplace", "f16")
    _raises(lambda: gc.silu_back(ctx, a, gc.new_tensor_1d(ctx, F32, 4)), "silu_back", "[4, 1, 1, 1]")


def test_attention_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_3d(ctx, F32, 8, 3, 2)
    i = gc.new_tensor_3d(ctx, I32, 8, 3, 2)
    pos = gc.new_tensor_1d(ctx, I32, 2)
    for name in ("diag_mask_inf", "diag_mask_zero", "diag_mask_inf_inplace", "diag_mask_zero_inplace"):
        _raises(lambda: getattr(gc, name)(ctx, a, -1), name, "n_past", ">= 0")
        _raises(lambda: getattr(gc, name)(ctx, a, 1.5), name, "n_past", "int")
        _raises(lambda: getattr(gc, name)(ctx, i, 0), name, "i32")
    _raises(lambda: gc.soft_max(ctx, i), "soft_max", "i32")
    _raises(lambda: gc.soft_max_inplace(ctx, i), "soft_max_inplace", "i32")
    _raises(lambda: gc.soft_max_ext(ctx, a, gc.new_tensor_2d(ctx, F32, 7, 3), None, 1.0, 0.0), "soft_max_ext",
            "mask", "[7, 3, 1, 1]")
    _raises(lambda: gc.soft_max_ext(ctx, a, gc.new_tensor_2d(ctx, F32, 8, 2), None, 1.0, 0.0), "soft_max_ext",
            "mask")
    _raises(lambda: gc.soft_max_ext(ctx, a, None, None, 1.0, 8.0), "soft_max_ext", "max_bias", "pos")
    _raises(lambda: gc.soft_max_ext(ctx, a, None, gc.new_tensor_1d(ctx, F32, 7), 1.0, 8.0), "soft_max_ext", "pos")
    _raises(lambda: gc.soft_max_back(ctx, a, gc.new_tensor_2d(ctx, F32, 8, 3)), "soft_max_back", "[8, 3, 2, 1]")
    # rope
    _raises(lambda: gc.rope(ctx, a, pos, 4, 1, 0), "rope", "mode", "got 1")
    _raises(lambda: gc.rope(ctx, a, pos, 4, 4, 0), "rope", "mode", "ChatGLM")
    _raises(lambda: gc.rope(ctx, a, pos, 3, 0, 0), "rope", "n_dims", "even")
    _raises(lambda: gc.rope(ctx, a, pos, 10, 0, 0), "rope", "n_dims", "ne0 = 8")
    _raises(lambda: gc.rope(ctx, a, pos, 0, 0, 0), "rope", "n_dims")
    _raises(lambda: gc.rope(ctx, a, gc.new_tensor_1d(ctx, I32, 3), 4, 0, 0), "rope", "positions", "[3, 1, 1, 1]")
    _raises(lambda: gc.rope(ctx, a, gc.new_tensor_1d(ctx, F32, 2), 4, 0, 0), "rope", "I32", "f32")
    _raises(lambda: gc.rope(ctx, i, pos, 4, 0, 0), "rope", "i32")
    _raises(lambda: gc.rope(ctx, a, pos, 4, 0, -1), "rope", "n_ctx")
    _raises(lambda: gc.rope_inplace(ctx, a, pos, 4, 2.0, 0), "rope_inplace", "mode", "int")
    _raises(lambda: gc.rope_custom(ctx, a, pos, 4, 0, 0, 0, -10.0, 1.0), "rope_custom", "freq_base")
    _raises(lambda: gc.rope_custom(ctx, a, pos, 4, 0, 0, 0, 10000.0, 0.0), "rope_custom", "freq_scale")
    _raises(lambda: gc.rope_custom(ctx, a, pos, 4, 0, 0, 0, 10000.0, 1.0, 1.0), "rope_custom", "YaRN",
            "n_orig_ctx")
    _raises(lambda: gc.rope_back(ctx, a, pos, 4, 2, 0, xpos_base=10.0), "rope_back", "xpos", "mode 0")
    _raises(lambda: gc.rope_back(ctx, a, pos, 4, 0, 0, xpos_down=2), "rope_back", "xpos_down")


def test_loss_and_repeat_back_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    b = gc.new_tensor_2d(ctx, F32, 3, 4)
    _raises(lambda: gc.cross_entropy_loss(ctx, a, b), "cross_entropy_loss", "[4, 3, 1, 1]", "[3, 4, 1, 1]")
    _raises(lambda: gc.cross_entropy_loss(ctx, a, gc.new_tensor_2d(ctx, I32, 4, 3)), "cross_entropy_loss", "i32")
    _raises(lambda: gc.cross_entropy_loss_back(ctx, a, a, a), "cross_entropy_loss_back", "scalar")
    _raises(lambda: gc.cross_entropy_loss_back(ctx, a, b, gc.new_f32(ctx, 1.0)), "cross_entropy_loss_back",
            "[3, 4, 1, 1]")
    _raises(lambda: gc.repeat_back(ctx, a, gc.new_tensor_2d(ctx, F32, 3, 3)), "repeat_back", "[4, 3, 1, 1]",
            "[3, 3, 1, 1]")
    _raises(lambda: gc.repeat_back(ctx, a, gc.new_tensor_2d(ctx, F32, 8, 3)), "repeat_back")
    _raises(lambda: gc.repeat_back(ctx, gc.new_tensor_2d(ctx, I32, 4, 3), a), "repeat_back", "i32")



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["norm", "attention", "activations", "losses"] for op in family_ops(m)]


@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_nn_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
