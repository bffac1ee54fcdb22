"""Copies and views against numpy: dup/cont/cont_Nd, cpy between any layouts and shapes with F32/F16/I32
conversions in every direction (F16 round-to-nearest-even with inf/NaN/subnormals, I32 <- float
truncating like a C cast), reshape_*, view_1d..4d, permute (all 24 orders), transpose; sentinel
bytes around outputs; the same bits for 1, 2 and 4 threads; bad input."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphcore as gc
from graphcore.testing import (Layout, assert_same_bits, compute_guarded, element_byte_offsets, layouts,
                               make_tensor, ne4, random_values, seeds, sentinel_context, shapes)

F32, F16, I32 = gc.TYPE_F32, gc.TYPE_F16, gc.TYPE_I32
TYPES = {"f32": F32, "f16": F16, "i32": I32}
NP = {F32: np.float32, F16: np.float16, I32: np.int32}


def values_for(ne, seed, src_type, dst_type=None):
    """Values of src_type covering what a conversion to dst_type must handle."""
    rng = np.random.default_rng(seed)
    shape = tuple(ne4(ne)[::-1])
    if src_type == I32:
        big = rng.integers(-2**31, 2**31, size=shape, dtype=np.int64)
        small = rng.integers(-70000, 70000, size=shape, dtype=np.int64)
        return np.where(rng.random(shape) < 0.5, big, small).astype(np.int32)
    # magnitudes from 1e-8 (F16 subnormal / zero) to 1e5 (beyond F16's 65504)
    x = rng.uniform(-1, 1, size=shape) * 10.0 ** rng.uniform(-8, 5, size=shape)
    if dst_type == I32:                   # stay inside int32 and F16's finite range
        x = np.clip(x, -6e4, 6e4)
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        return x.astype(np.float16) if src_type == F16 else x


def convert(x, dst_type):
    """numpy's reference conversion: IEEE round-to-nearest-even for floats, C-cast truncation to I32."""
    with np.errstate(over="ignore", invalid="ignore"):
        if dst_type == I32:
            return np.trunc(x.astype(np.float64)).astype(np.int32) if x.dtype != np.int32 else x
        return x.astype(NP[dst_type])


def assert_same_values(actual, expected, what):
    """Bitwise equal, except that NaN only needs to be NaN with the same sign (payloads are platform-defined)."""
    a, e = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert a.shape == e.shape and a.dtype == e.dtype, (what, a.shape, a.dtype, e.shape, e.dtype)
    if a.dtype.kind == "f":
        an, en = np.isnan(a), np.isnan(e)
        assert np.array_equal(an, en), f"{what}: NaN at different places"
        assert np.array_equal(np.signbit(a[an]), np.signbit(e[en])), f"{what}: NaN signs differ"
        a, e = np.where(an, 0, a).astype(a.dtype), np.where(en, 0, e).astype(e.dtype)
    assert_same_bits(a, e, what)


@st.composite
def factor_shape(draw, n, max_dims=4):
    """A ggml shape with n elements (1 to max_dims entries)."""
    ne = []
    left = n
    for _ in range(draw(st.integers(1, max_dims)) - 1):
        d = draw(st.sampled_from([k for k in range(1, left + 1) if left % k == 0]))
        ne.append(d)
        left //= d
    ne.append(left)
    order = draw(st.permutations(range(len(ne))))
    return [ne[i] for i in order]


# -- dup / cont ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tname", list(TYPES))
@given(ne=shapes(), layout=layouts(), seed=seeds())
def test_dup_cont(tname, ne, layout, seed):
    t = TYPES[tname]
    ctx = sentinel_context(1 << 17)
    x = values_for(ne, seed, t)
    a = make_tensor(ctx, ne, layout, x, t)
    d, c = gc.dup(ctx, a), gc.cont(ctx, a)
    for out, name in ((d, "dup"), (c, "cont")):
        assert out.ne == a.ne and out.type == t and gc.is_contiguous(out), name
    compute_guarded(ctx, [d, c])
    for out, name in ((d, "dup"), (c, "cont")):
        assert_same_values(out.numpy4d(), x.reshape(ne4(ne)[::-1]), f"{name} {tname} {layout}")


@pytest.mark.parametrize("tname", list(TYPES))
@given(ne=shapes(), layout=layouts(), seed=seeds())
def test_dup_inplace(tname, ne, layout, seed):
    t = TYPES[tname]
    ctx = sentinel_context(1 << 17)
    x = values_for(ne, seed, t)
    a = make_tensor(ctx, ne, layout, x, t)
    out = gc.dup_inplace(ctx, a)
    assert out.view_src is not None and np.array_equal(element_byte_offsets(out), element_byte_offsets(a))
    compute_guarded(ctx, out)
    assert_same_values(out.numpy4d(), x.reshape(ne4(ne)[::-1]), f"dup_inplace {layout}")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@given(data=st.data(), ne=shapes(), layout=layouts(), seed=seeds())
def test_cont_nd(k, data, ne, layout, seed):
    n = int(np.prod(ne))
    new = data.draw(factor_shape(n, max_dims=k).filter(lambda s: len(s) <= k))
    new = new + [1] * (k - len(new))
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    out = getattr(gc, f"cont_{k}d")(ctx, a, *new)
    assert out.ne == ne4(new) and gc.is_contiguous(out)
    compute_guarded(ctx, out)
    assert_same_bits(out.numpy4d(), x.reshape(ne4(new)[::-1]), f"cont_{k}d {ne}->{new} {layout}")


# -- cpy: any shapes with the same count, any layouts, every type pair ------------------------------------
@pytest.mark.parametrize("src,dst", list(itertools.product(TYPES, TYPES)))
@given(data=st.data(), ne=shapes(), la=layouts(), lb=layouts(), seed=seeds())
@settings(max_examples=15)
def test_cpy(src, dst, data, ne, la, lb, seed):
    st_, dt = TYPES[src], TYPES[dst]
    ne_b = data.draw(factor_shape(int(np.prod(ne))))
    ctx = sentinel_context(1 << 17)
    x = values_for(ne, seed, st_, dt)
    a = make_tensor(ctx, ne, la, x, st_)
    b = make_tensor(ctx, ne_b, lb, None, dt)
    out = gc.cpy(ctx, a, b)
    assert out.ne == b.ne and out.type == dt and out.view_src is not None
    assert np.array_equal(element_byte_offsets(out), element_byte_offsets(b))
    compute_guarded(ctx, out, what=f"cpy {src}->{dst}")
    expected = convert(x.ravel(), dt).reshape(ne4(ne_b)[::-1])
    assert_same_values(b.numpy4d(), expected, f"cpy {src} {ne} {la} -> {dst} {ne_b} {lb}")
    assert_same_values(a.numpy4d(), x.reshape(ne4(ne)[::-1]), "cpy changed its source")


def _cpy_1d(x, src_type, dst_type, n_threads=2):
    """cpy of a 1-D array through a graph; returns the destination's values."""
    ctx = sentinel_context(len(x) * 16 + (1 << 16))
    a = gc.new_tensor_1d(ctx, src_type, len(x))
    a.numpy()[...] = x
    b = gc.new_tensor_1d(ctx, dst_type, len(x))
    out = gc.cpy(ctx, a, b)
    compute_guarded(ctx, out, n_threads)
    return out.numpy().copy()


def _f16_grid_f32():
    """Every F16 value as float32, the midpoints between neighbours (ties to even) and their
    float32 neighbours, F32 values around F16's overflow and subnormal limits, specials, and
    random bit patterns over all of float32."""
    h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)   # +0 .. 65504
    nxt = np.append(h[1:], np.float32(65520.0))                                  # 65520: the overflow tie
    mid = ((h.astype(np.float64) + nxt.astype(np.float64)) / 2).astype(np.float32)
    around = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))])
    special = np.array([0.0, np.inf, np.nan, 65504.0, 65519.99, 65520.0, 65536.0, 1e38, 3.4028235e38,
                        6.1035156e-05, 6.0975552e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08,
                        8.940697e-08, 1e-45, 1.1754944e-38, 1e-30], dtype=np.float32)
    rnd = np.random.default_rng(0).integers(0, 2**32, size=40000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    nan_bits = np.array([0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7F802000, 0x7FA00000], dtype=np.uint32).view(np.float32)
    pos = np.concatenate([h, around, special, nan_bits])
    return np.concatenate([pos, -pos, rnd])


def test_cpy_f32_to_f16_rounding():
    x = _f16_grid_f32()
    got = _cpy_1d(x, F32, F16)
    with np.errstate(over="ignore"):
        exp = x.astype(np.float16)
    assert_same_values(got, exp, "F32 -> F16")


def test_cpy_f16_to_f32_all_values():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    x = bits.view(np.float16)
    got = _cpy_1d(x, F16, F32)
    assert_same_values(got, x.astype(np.float32), "F16 -> F32")
    nan = np.isnan(x)
    # NaN stays NaN with its payload's top bits (quiet/signalling bit kept)
    assert np.array_equal(got[nan].view(np.uint32) >> 13 & 0x3FF, bits[nan].astype(np.uint32) & 0x3FF)


def test_cpy_f16_to_f16_all_values_bitwise():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = _cpy_1d(bits.view(np.float16), F16, F16)
    assert_same_bits(got.view(np.uint16), bits, "F16 -> F16")


def test_cpy_float_to_i32_truncates():
    x = np.array([0.0, -0.0, 0.4, 0.5, 0.9999, 1.0, 1.5, 2.5, 2.999, -0.5, -0.9999, -1.5, -2.5, -2.999,
                  7.0, -7.0, 16777215.0, -16777217.0, 2147483520.0, -2147483648.0, 1e-30, -1e-30],
                 dtype=np.float32)
    exp = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 0, 0, -1, -2, -2, 7, -7, 16777215, -16777216,
                    2147483520, -2147483648, 0, 0], dtype=np.int32)
    assert_same_bits(_cpy_1d(x, F32, I32), exp, "F32 -> I32")
    h = x[np.abs(x) < 65504].astype(np.float16)
    assert_same_bits(_cpy_1d(h, F16, I32), np.trunc(h.astype(np.float64)).astype(np.int32), "F16 -> I32")
    hv = np.array([65504.0, -65504.0, 2049.0, -2049.0, 0.99951171875, 5.96e-08], dtype=np.float16)
    assert_same_bits(_cpy_1d(hv, F16, I32), np.array([65504, -65504, 2048, -2048, 0, 0], np.int32), "F16 -> I32")


def test_cpy_i32_to_floats_round_to_nearest_even():
    x = np.array([0, 1, -1, 2047, 2048, 2049, 2051, 4095, 65504, 65519, 65520, -65520, 70000,
                  16777216, 16777217, 16777219, -16777217, 2**31 - 1, -2**31, 2**30 + 65, -(2**30 + 64)],
                 dtype=np.int32)
    rnd = np.random.default_rng(1).integers(-2**31, 2**31, size=5000, dtype=np.int64).astype(np.int32)
    x = np.concatenate([x, rnd])
    assert_same_bits(_cpy_1d(x, I32, F32), x.astype(np.float32), "I32 -> F32")
    with np.errstate(over="ignore"):
        exp16 = x.astype(np.float16)
    assert_same_values(_cpy_1d(x, I32, F16), exp16, "I32 -> F16")
    got = _cpy_1d(x[:7], I32, F16)
    assert list(got.astype(np.float64)) == [0, 1, -1, 2047, 2048, 2048, 2052]


# -- reshape ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
@given(data=st.data(), ne=shapes(), seed=seeds(), tname=st.sampled_from(list(TYPES)))
def test_reshape(k, data, ne, seed, tname):
    """reshape_kd (k = 0: reshape(a, b)) of a contiguous tensor: same bytes, new shape; an op reads it."""
    t = TYPES[tname]
    n = int(np.prod(ne))
    new = data.draw(factor_shape(n, max_dims=max(k, 1)).filter(lambda s: len(s) <= max(k, 1)))
    ctx = sentinel_context(1 << 17)
    x = values_for(ne, seed, t)
    a = make_tensor(ctx, ne, Layout(), x, t)
    if k == 0:
        r = gc.reshape(ctx, a, gc.new_tensor(ctx, F32, new))
    else:
        r = getattr(gc, f"reshape_{k}d")(ctx, a, *(new + [1] * (k - len(new))))
    assert r.ne == ne4(new) and r.op == gc.OP_RESHAPE and r.view_src is not None
    assert r.data == a.data and gc.is_contiguous(r)
    assert_same_values(r.numpy4d(), x.reshape(ne4(new)[::-1]), "reshape view")
    compute_guarded(ctx, r)                             # a graph of view nodes only: nothing to run
    d = gc.dup(ctx, r)                                  # a kernel reading through the reshape node
    compute_guarded(ctx, d)
    assert_same_values(d.numpy4d(), x.reshape(ne4(new)[::-1]), "dup(reshape)")


def test_reshape_of_contiguous_view():
    """A contiguous view (offset into a larger tensor) can be reshaped; the result keeps the offset."""
    ctx = sentinel_context(1 << 16)
    x = random_values([60], 3)
    a = gc.from_numpy(ctx, x)
    v = gc.view_1d(ctx, a, 24, 4 * 12)
    r = gc.reshape_3d(ctx, v, 2, 3, 4)
    n = gc.neg(ctx, r)
    compute_guarded(ctx, n)
    assert_same_bits(n.numpy(), -x[12:36].reshape(4, 3, 2), "neg(reshape(view))")


# -- view_1d .. view_4d ----------------------------------------------------------------------------------
@st.composite
def view_params(draw, n_floats):
    """(k, ne, nb1.., offset) of a k-d view (byte strides, multiples of 4, rows may overlap) that fits."""
    k = draw(st.integers(1, 4))
    ne = [draw(st.integers(1, 5)) for _ in range(k)]
    nb = [4]
    for i in range(1, k):
        nb.append(4 * draw(st.integers(1, 12)))
    span = 4 + sum((ne[i] - 1) * nb[i] for i in range(k))
    if span > 4 * n_floats:
        return draw(view_params(n_floats))
    offset = 4 * draw(st.integers(0, n_floats - span // 4))
    return k, ne, nb[1:], offset


@given(p=view_params(400), seed=seeds(), tname=st.sampled_from(["f32", "i32"]))
def test_view(p, seed, tname):
    k, ne, nbs, offset = p
    t = TYPES[tname]
    ctx = sentinel_context(1 << 16)
    x = values_for([400], seed, t)
    a = make_tensor(ctx, [400], Layout(), x, t)
    v = getattr(gc, f"view_{k}d")(ctx, a, *ne, *nbs, offset)
    assert v.op == gc.OP_VIEW and v.ne == ne4(ne) and v.nb[:k] == [4, *nbs]
    # reference: element (i0..i3) is float number (offset + sum i_d * nb_d) / 4 of the buffer
    idx = np.full(ne4(ne)[::-1], offset // 4, dtype=np.int64)
    nb4 = ([4, *nbs] + [0] * 3)[:4]
    for d in range(k):
        shape = [1, 1, 1, 1]
        shape[3 - d] = ne[d]
        idx = idx + (np.arange(ne[d]) * (nb4[d] // 4)).reshape(shape)
    expected = x.ravel()[idx]
    assert_same_bits(v.numpy4d(), expected, "view numpy")
    c = gc.cont(ctx, v)
    compute_guarded(ctx, c)
    assert_same_bits(c.numpy4d(), expected, f"cont(view_{k}d ne={ne} nb={nbs} offs={offset})")


def test_view_of_view_accumulates_offsets():
    ctx = sentinel_context(1 << 16)
    x = random_values([10, 8], 1)
    a = gc.from_numpy(ctx, x)
    v1 = gc.view_2d(ctx, a, 6, 5, a.nb[1], 2 * a.nb[1] + 8)        # rows 2..6, cols 2..7
    v2 = gc.view_2d(ctx, v1, 3, 2, 2 * a.nb[1], a.nb[1] + 4)       # rows 3, 5 of a, cols 3..5
    assert v2.view_src is a and v2.view_offs == 3 * a.nb[1] + 12
    c = gc.cont(ctx, v2)
    compute_guarded(ctx, c)
    assert_same_bits(c.numpy(), x[3:7:2, 3:6], "view of view")


# -- permute / transpose --------------------------------------------------------------------------------
PERMS = list(itertools.permutations(range(4)))


@pytest.mark.parametrize("axes", PERMS, ids=["".join(map(str, p)) for p in PERMS])
@given(ne=shapes(min_dims=4), layout=layouts(), seed=seeds())
@settings(max_examples=6)
def test_permute(axes, ne, layout, seed):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    p = gc.permute(ctx, a, *axes)
    assert p.op == gc.OP_PERMUTE and p.view_src is not None
    for i, ax in enumerate(axes):
        assert p.ne[ax] == a.ne[i] and p.nb[ax] == a.nb[i]
    # numpy: ggml dim d is numpy axis 3 - d; result axis 3 - axes[i] takes source axis 3 - i
    perm = [0] * 4
    for i, ax in enumerate(axes):
        perm[3 - ax] = 3 - i
    expected = np.transpose(x.reshape(ne4(ne)[::-1]), perm)
    assert_same_bits(p.numpy4d(), expected, f"permute{axes} numpy view")
    c = gc.cont(ctx, p)
    compute_guarded(ctx, c)
    assert_same_bits(c.numpy4d(), expected, f"cont(permute{axes}) of {layout}")


@given(ne=shapes(), layout=layouts(), seed=seeds())
def test_transpose(ne, layout, seed):
    ctx = sentinel_context(1 << 17)
    x = random_values(ne, seed)
    a = make_tensor(ctx, ne, layout, x)
    t = gc.transpose(ctx, a)
    assert t.op == gc.OP_TRANSPOSE and t.ne == [a.ne[1], a.ne[0], a.ne[2], a.ne[3]]
    assert t.nb == [a.nb[1], a.nb[0], a.nb[2], a.nb[3]]
    expected = np.swapaxes(x.reshape(ne4(ne)[::-1]), 2, 3)
    c = gc.cont(ctx, t)
    tt = gc.cont(ctx, gc.transpose(ctx, t))
    compute_guarded(ctx, [c, tt])
    assert_same_bits(c.numpy4d(), expected, f"cont(transpose) of {layout}")
    assert_same_bits(tt.numpy4d(), x.reshape(ne4(ne)[::-1]), "transpose twice")


# -- thread counts --------------------------------------------------------------------------------------
BIG = [4100, 5, 2, 2]


@pytest.mark.parametrize("src,dst", [("f32", "f32"), ("f32", "f16"), ("f16", "f32"), ("f32", "i32"),
                                     ("i32", "f16"), ("f16", "f16")])
@pytest.mark.parametrize("la,lb", [(Layout(), Layout()),
                                   (Layout("permuted", axes=(1, 0, 3, 2)), Layout("strided", pad=(2, 1, 0, 0), start=(1, 0, 0, 0)))],
                         ids=["contiguous", "permuted-to-strided"])
def test_threads_same_bits(src, dst, la, lb):
    st_, dt = TYPES[src], TYPES[dst]
    ctx = sentinel_context(8 << 20)
    x = values_for(BIG, 5, st_, dt)
    a = make_tensor(ctx, BIG, la, x, st_)
    ne_b = [82, 50, 20]
    b = make_tensor(ctx, ne_b, lb, None, dt)
    outs = {"cpy": gc.cpy(ctx, a, b), "dup": gc.dup(ctx, a), "cont": gc.cont_2d(ctx, a, 8200, 10)}
    g = gc.new_graph(ctx)
    for o in outs.values():
        gc.build_forward_expand(g, o)
    results = []
    for n in (1, 2, 4):
        plan = gc.graph_plan(g, n)
        for name, o in outs.items():
            assert plan.n_tasks[g.nodes.index(o)] == n, f"{name}: no split at {n} threads"
            o.numpy4d()[...] = 0
        compute_guarded(ctx, list(outs.values()), n, graph=g)
        results.append([o.numpy4d().copy() for o in outs.values()])
    for r in results[1:]:
        for name, got, ref in zip(outs, r, results[0]):
            assert_same_bits(got, ref, f"{name} {src}->{dst}")
    exp = convert(x.ravel(), dt)
    assert_same_values(results[0][0].ravel(), exp, "cpy values")
    assert_same_values(results[0][1].ravel(), x.ravel(), "dup values")


# -- bad input -----------------------------------------------------------------------------------------
def _raises(fn, *needles):
    with pytest.raises(gc.GraphError) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message {msg!r}"
    return msg


def test_view_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)                       # 48 bytes
    s = "[4, 3, 1, 1]"
    _raises(lambda: gc.view_1d(ctx, a, 13, 0), "view_1d", s)
    _raises(lambda: gc.view_1d(ctx, a, 12, 4), "view_1d", s)
    _raises(lambda: gc.view_1d(ctx, a, 2, -4), "view_1d", s)
    _raises(lambda: gc.view_1d(ctx, a, 0, 0), "view_1d", s)
    _raises(lambda: gc.view_2d(ctx, a, 4, 3, 20, 0), "view_2d", s)
    _raises(lambda: gc.view_2d(ctx, a, 4, 3, 0, 0), "view_2d", s)
    _raises(lambda: gc.view_3d(ctx, a, 2, 2, 2, 8, 36, 0), "view_3d", s)
    gc.view_3d(ctx, a, 2, 2, 2, 8, 32, 0)                       # ends exactly at a's last byte
    _raises(lambda: gc.view_4d(ctx, a, 2, 2, 2, 2, 8, 16, 32, 0), "view_4d", s)
    _raises(lambda: gc.view_1d(ctx, a, 2, 1.5), "view_1d")
    _raises(lambda: gc.view_1d(ctx, np.zeros(12, np.float32), 2, 0), "view_1d", "ndarray")
    # a view of a view cannot reach outside the tensor owning the data
    v = gc.view_1d(ctx, a, 4, 16)
    _raises(lambda: gc.view_1d(ctx, v, 4, 40), "view_1d")


def test_reshape_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    s = "[4, 3, 1, 1]"
    _raises(lambda: gc.reshape_1d(ctx, a, 11), "reshape_1d", s, "11")
    _raises(lambda: gc.reshape_2d(ctx, a, 3, 3), "reshape_2d", s)
    _raises(lambda: gc.reshape_3d(ctx, a, 2, 2, 2), "reshape_3d", s)
    _raises(lambda: gc.reshape_4d(ctx, a, 1, 2, 3, 4), "reshape_4d", s)
    _raises(lambda: gc.reshape_2d(ctx, a, -4, -3), "reshape_2d", s)
    _raises(lambda: gc.reshape(ctx, a, gc.new_tensor_1d(ctx, F32, 10)), "reshape", s, "[10, 1, 1, 1]")
    _raises(lambda: gc.reshape(ctx, a, np.zeros((3, 4))), "reshape", "ndarray")
    _raises(lambda: gc.reshape_1d(ctx, np.zeros(12), 12), "reshape_1d", "ndarray")
    _raises(lambda: gc.reshape_2d(ctx, gc.transpose(ctx, a), 4, 3), "reshape_2d", "contiguous", "[3, 4, 1, 1]")
    _raises(lambda: gc.reshape_1d(ctx, gc.view_2d(ctx, a, 2, 3, 16, 0), 6), "reshape_1d", "contiguous")
    _raises(lambda: gc.reshape_2d(ctx, a, 2.5, 4.8), "reshape_2d", s)      # 12.0 elements, not ints
    _raises(lambda: gc.reshape_2d(ctx, a, "4", 3), "reshape_2d", s)


def test_permute_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    s = "[4, 3, 1, 1]"
    for axes in [(0, 0, 1, 2), (0, 1, 2, 4), (-1, 0, 1, 2), (3, 2, 1, 1), (0, 1, 2, 3.0), ("0", 1, 2, 3),
                 (0, 1, 2, None)]:
        _raises(lambda: gc.permute(ctx, a, *axes), "permute", s)
    _raises(lambda: gc.permute(ctx, np.zeros(3), 0, 1, 2, 3), "permute", "ndarray")
    _raises(lambda: gc.transpose(ctx, np.zeros((3, 4))), "transpose", "ndarray")


def test_copy_errors():
    ctx = gc.init(1 << 16)
    a = gc.new_tensor_2d(ctx, F32, 4, 3)
    b = gc.new_tensor_2d(ctx, F16, 5, 2)
    _raises(lambda: gc.cpy(ctx, a, b), "cpy", "[4, 3, 1, 1]", "[5, 2, 1, 1]", "12", "10")
    _raises(lambda: gc.cpy(ctx, a, np.zeros(12, np.float32)), "cpy", "ndarray")
    _raises(lambda: gc.cpy(ctx, np.zeros(12, np.float32), a), "cpy", "ndarray")
    _raises(lambda: gc.cpy(ctx, a, None), "cpy", "NoneType")
    _raises(lambda: gc.dup(ctx, [1, 2]), "dup", "list")
    _raises(lambda: gc.dup_inplace(ctx, np.zeros(2)), "dup_inplace", "ndarray")
    _raises(lambda: gc.cont(ctx, None), "cont")
    _raises(lambda: gc.cont_4d(ctx, a, 2, 2, 2, 2), "cont_4d", "[4, 3, 1, 1]")
    _raises(lambda: gc.cont_2d(ctx, a, 5, 2), "cont_4d", "[4, 3, 1, 1]")
    _raises(lambda: gc.cont_2d(ctx, a, 2.5, 4.8), "cont", "[4, 3, 1, 1]")
    _raises(lambda: gc.cont_1d(ctx, a, -12), "cont", "[4, 3, 1, 1]")



# -- random graphs of this family's ops: each op's sampler and numpy reference live beside its kernel ---------
from graphcore.testing import assert_graph_close, family_ops, graphs  # noqa: E402


_GRAPH_OPS = [op for m in ["layout"] for op in family_ops(m)]


@given(drawn=graphs(ops=_GRAPH_OPS, max_nodes=5))
def test_random_graphs_of_layout_ops(drawn):
    """Random DAGs of these ops (shared inputs, every layout, special values, tiny to BLAS-sized): every
    node against its op's reference, for 1 and 2 threads (tiny nodes split too)."""
    assert_graph_close(drawn.graph, n_threads=(1, 2))
