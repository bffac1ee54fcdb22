"""The kernels' fast paths (dense tensors walked flat, contiguous rows, rows staged in stack
buffers, vector tiles for small products, the vectorisable exp) against their general strided
loops: the same bits whatever the layout, and the same bits for 1, 2 and 4 threads."""
import math

import numpy as np
import pytest
from numba import njit

import graphcore as gc
from graphcore.kernel import exp_f64

RNG = np.random.default_rng(1234)


def _values(ne, lo=-3.0, hi=3.0):
    return RNG.uniform(lo, hi, size=tuple(reversed(ne))).astype(np.float32)


def _dense(ctx, x):
    return gc.from_numpy(ctx, x)


def _rows_padded(ctx, x):
    """Rows contiguous but not back to back (a view with a wider row stride)."""
    ne = list(reversed(x.shape)) + [1] * (4 - x.ndim)
    big = np.zeros(x.shape[:-1] + (x.shape[-1] + 3,), np.float32)
    big[..., 1:1 + x.shape[-1]] = x
    t = gc.from_numpy(ctx, big)
    return gc.view_4d(ctx, t, ne[0], ne[1], ne[2], ne[3], t.nb[1], t.nb[2], t.nb[3], 4)


def _strided(ctx, x):
    """Elements of a row not adjacent (nb0 != 4): the general 4-D loops."""
    x4 = x.reshape((1,) * (4 - x.ndim) + x.shape)
    t = gc.from_numpy(ctx, np.ascontiguousarray(np.swapaxes(x4, 2, 3)))   # storage [.., ne0, ne1]
    return gc.transpose(ctx, t)


LAYOUTS = {"dense": _dense, "rows": _rows_padded, "strided": _strided}


def _compute(out, n_threads):
    gc.graph_compute_with_ctx(out.ctx, gc.build_forward(out), n_threads)
    return out.numpy4d().copy()


def _all_layouts_same_bits(build, shapes, n_threads=(1, 2, 4), lo=-3.0, hi=3.0):
    xs = [_values(ne, lo, hi) for ne in shapes]
    results = {}
    for name, make in LAYOUTS.items():
        for nt in n_threads:
            ctx = gc.init(1 << 24)
            out = build(ctx, *[make(ctx, x) for x in xs])
            results[(name, nt)] = _compute(out, nt)
    first = next(iter(results.values()))
    for key, got in results.items():
        assert got.shape == first.shape
        assert np.array_equal(got, first, equal_nan=True), f"{key} differs from {next(iter(results))}"


SHAPES = [[8, 8, 8, 8], [4, 8, 8, 8], [86, 64], [32, 64], [7, 5, 3], [33, 9], [600, 3], [1, 17], [3, 3000]]


@pytest.mark.parametrize("ne", SHAPES, ids=str)
@pytest.mark.parametrize("op", ["silu", "scale", "add", "mul", "silu_back", "soft_max", "soft_max_back",
                                "diag_mask_inf", "rms_norm", "rms_norm_back", "cont", "repeat_back"])
def test_fast_paths_give_the_strided_loops_bits(op, ne):
    lo, hi = (-10.0, 10.0) if op in ("silu", "silu_back", "soft_max") else (-3.0, 3.0)
    unary = {"silu": gc.silu, "scale": lambda c, a: gc.scale(c, a, 0.37),
             "soft_max": gc.soft_max, "diag_mask_inf": lambda c, a: gc.diag_mask_inf(c, a, 1),
             "rms_norm": lambda c, a: gc.rms_norm(c, a, 1e-5), "cont": gc.cont}
    binary = {"add": gc.add, "mul": gc.mul, "silu_back": gc.silu_back, "soft_max_back": gc.soft_max_back,
              "rms_norm_back": lambda c, a, b: gc.rms_norm_back(c, a, b, 1e-5)}
    if op in unary:
        _all_layouts_same_bits(unary[op], [ne], lo=lo, hi=hi)
    elif op in binary:
        _all_layouts_same_bits(binary[op], [ne, ne], lo=lo, hi=hi)
    else:
        small = [ne[0]] + [1] * (len(ne) - 1)
        _all_layouts_same_bits(lambda c, a: gc.repeat_back(c, a, gc.new_tensor(c, gc.TYPE_F32, small)), [ne])


@pytest.mark.parametrize("ne", [[8, 8, 8, 8], [8, 8], [40, 6, 2], [700, 3]], ids=str)
def test_soft_max_ext_fast_path_bits(ne):
    mask = _values([ne[0], ne[1]])
    pos = _values([ne[0]])

    def build(ctx, a):
        return gc.soft_max_ext(ctx, a, gc.from_numpy(ctx, mask), gc.from_numpy(ctx, pos), 0.5, 8.0)
    _all_layouts_same_bits(build, [ne])


def test_soft_max_rows_without_maximum_are_zero_and_nan_propagates():
    x = np.full((4, 8), -np.inf, np.float32)
    x[1] = np.linspace(-1, 1, 8)
    x[2, 3] = np.nan
    x[3, :2] = np.inf
    for make in LAYOUTS.values():
        ctx = gc.init(1 << 20)
        y = _compute(gc.soft_max(ctx, make(ctx, x)), 1)[0, 0]
        assert np.array_equal(y[0], np.zeros(8, np.float32))
        assert np.isnan(y[2]).all() and np.isnan(y[3]).all()    # NaN among -inf propagates; inf - inf is NaN
        np.testing.assert_allclose(y[1], np.exp(x[1] - 1) / np.exp(x[1] - 1).sum(), rtol=1e-6)


@pytest.mark.parametrize("mode,n_dims", [(0, 4), (0, 2), (2, 4)])
def test_rope_fast_paths_bits(mode, n_dims):
    ne = [4, 8, 8, 8]
    positions = np.arange(3, 11, dtype=np.int32)
    xs = _values(ne)
    results = []
    for make in LAYOUTS.values():
        for nt in (1, 2):
            ctx = gc.init(1 << 22)
            pos = gc.from_numpy(ctx, positions)
            results.append(_compute(gc.rope(ctx, make(ctx, xs), pos, n_dims, mode, 0), nt))
            results.append(-_compute(gc.rope_back(ctx, make(ctx, -xs), pos, n_dims, mode, 0), nt))
    fwd, back = results[0::2], results[1::2]
    assert all(np.array_equal(r, fwd[0]) for r in fwd)
    assert all(np.array_equal(r, back[0]) for r in back)


def _k_order_product(a, b):
    """sum over k, in order, of float32 products, in float64, rounded once: a [.., M, K], b [.., N, K]."""
    s = np.zeros(b.shape[:-1] + (a.shape[-2],), np.float64)
    for k in range(a.shape[-1]):
        s += (b[..., :, k][..., :, None] * a[..., :, k][..., None, :]).astype(np.float32)
    return s.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_small_products_bits(seed):
    """mul_mat and out_prod below the BLAS threshold: the plain loop's sums exactly, for any strides
    and thread count (vector tiles of 8 or 4 rows, gathered or loaded, masked at the edges)."""
    rng = np.random.default_rng(seed)
    for _ in range(12):
        M, N, K = (int(v) for v in rng.integers(1, 20, 3))
        nb = int(rng.integers(1, 4))
        a = rng.standard_normal((nb, M, K)).astype(np.float32)
        b = rng.standard_normal((nb, N, K)).astype(np.float32)
        want = _k_order_product(a, b)
        for nt in (1, 2, 4):
            ctx = gc.init(1 << 22)
            ta = gc.from_numpy(ctx, a) if rng.random() < 0.5 else \
                gc.permute(ctx, gc.from_numpy(ctx, np.ascontiguousarray(a.transpose(1, 0, 2))), 0, 2, 1, 3)
            tb = gc.permute(ctx, gc.from_numpy(ctx, np.ascontiguousarray(b.transpose(1, 0, 2))), 0, 2, 1, 3)
            assert np.array_equal(_compute(gc.mul_mat(ctx, ta, tb), nt)[0], want)
            ta2 = gc.from_numpy(ctx, np.ascontiguousarray(a.transpose(0, 2, 1)))     # ggml [M, K, nb]
            tb2 = gc.transpose(ctx, gc.from_numpy(ctx, b))                           # ggml [N, K, nb] view
            assert np.array_equal(_compute(gc.out_prod(ctx, ta2, tb2), nt)[0], want)


@njit(error_model="numpy")
def _exp_all(x, y):
    for i in range(x.size):
        y[i] = exp_f64(x[i])


def test_exp_f64_is_exp():
    x = np.concatenate([np.linspace(-760.0, 760.0, 200001), RNG.uniform(-40, 40, 200000),
                        [0.0, -0.0, 709.78, 709.79, -707.0, -707.5, 1e-300, -1e-300]])
    y = np.empty_like(x)
    _exp_all(x, y)
    with np.errstate(over="ignore"):
        ref = np.exp(x)
        ok = np.isfinite(ref) & (x >= -707.0)
        assert np.max(np.abs(y[ok] - ref[ok]) / ref[ok]) < 6e-16
        assert np.array_equal(y[ok].astype(np.float32), ref[ok].astype(np.float32))
    assert np.all(np.isinf(y[np.isinf(ref)])) and np.all(y[x < -707.0] == 0.0)
    special = np.array([np.inf, -np.inf, np.nan])
    out = np.empty(3)
    _exp_all(special, out)
    assert out[0] == np.inf and out[1] == 0.0 and math.isnan(out[2])
