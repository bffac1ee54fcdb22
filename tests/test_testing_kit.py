"""The testing kit itself: nmse and its NaN/inf rules, the sentinel guard, and the strategies'
promises (ggml shapes, layouts with the strides they claim, operand pairs the builders accept)."""
import numpy as np
import pytest
from hypothesis import given

import graphcore as gc
from graphcore.testing import (Layout, assert_close_nmse, assert_same_bits, broadcastable_pairs, check_untouched,
                               compute_guarded, element_byte_offsets, layouts, make_tensor, matmul_pairs, ne4,
                               nmse, random_values, seeds, sentinel_context, shapes)


def test_nmse_values():
    assert nmse([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert nmse([1.1, 2.0], [1.0, 2.0]) == pytest.approx(0.01 / 5)
    assert nmse([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert nmse([1e-3, 0.0], [0.0, 0.0]) == float("inf")
    assert nmse(np.array([1, 2], np.float16).view(np.uint16), [1.0, 2.0]) == 0.0   # F16 bits


def test_assert_close_nmse_rules():
    assert_close_nmse([1.0, np.nan, np.inf], [1.0, np.nan, np.inf], 1e-7)
    with pytest.raises(AssertionError, match="NaN"):
        assert_close_nmse([1.0, np.nan], [1.0, 2.0], 1e-7)
    with pytest.raises(AssertionError, match="NaN"):
        assert_close_nmse([1.0, 2.0], [1.0, np.nan], 1e-7)
    with pytest.raises(AssertionError, match="inf"):
        assert_close_nmse([1.0, -np.inf], [1.0, np.inf], 1e-7)
    with pytest.raises(AssertionError, match="inf"):
        assert_close_nmse([1.0, 3e38], [1.0, np.inf], 1e-7)
    with pytest.raises(AssertionError, match="shape"):
        assert_close_nmse([1.0, 2.0], [[1.0, 2.0]], 1e-7)
    with pytest.raises(AssertionError, match="what: NMSE"):
        assert_close_nmse([1.0, 2.1], [1.0, 2.0], 1e-7, "what")
    assert_close_nmse([1.0, 2.0001], [1.0, 2.0], 1e-7)


def test_assert_same_bits():
    assert_same_bits(np.float32([0.0, np.nan]), np.float32([0.0, np.nan]))
    with pytest.raises(AssertionError):
        assert_same_bits(np.float32([0.0]), np.float32([-0.0]))


def test_sentinel_guard_catches_stray_writes():
    ctx = sentinel_context(1 << 12)
    assert np.isnan(ctx.arena[:64].view(np.float32)).all()
    assert np.isnan(ctx.arena[:64].view(np.float16)).all()
    a = gc.from_numpy(ctx, np.arange(6, dtype=np.float32).reshape(2, 3))
    v = gc.view_2d(ctx, a, 2, 2, a.nb[1], 4)                     # columns 1, 2
    before = ctx.arena.copy()
    v.numpy()[...] = 7
    check_untouched(ctx, before, [v])
    a.numpy()[0, 0] = 9                                        # outside the view
    with pytest.raises(AssertionError, match="outside"):
        check_untouched(ctx, before, [v])
    o = gc.neg(ctx, a)
    compute_guarded(ctx, o)
    assert list(o.numpy().ravel()) == [-9, -7, -7, -3, -7, -7]


def test_element_byte_offsets():
    ctx = sentinel_context(1 << 12)
    a = gc.new_tensor_2d(ctx, gc.TYPE_F32, 3, 2)
    t = gc.transpose(ctx, a)
    offs = element_byte_offsets(t)
    assert sorted(offs) == list(range(a._offs, a._offs + 24))
    assert list(offs[:8]) == [a._offs + k for k in (0, 1, 2, 3, 12, 13, 14, 15)]


@given(ne=shapes(), layout=layouts(), seed=seeds())
def test_make_tensor(ne, layout, seed):
    ctx = sentinel_context(1 << 16)
    x = random_values(ne, seed)
    t = make_tensor(ctx, ne, layout, x)
    assert t.ne == ne4(ne)
    assert np.array_equal(t.numpy4d(), x.reshape(ne4(ne)[::-1]))
    assert gc.is_transposed(t) == layout.transposes(ne)
    if layout.kind == "contiguous":
        assert gc.is_contiguous(t) and t.op == gc.OP_NONE
    else:
        assert t.op in (gc.OP_PERMUTE, gc.OP_TRANSPOSE, gc.OP_VIEW) and t.view_src is not None
    if layout.kind == "strided" and ne4(ne)[0] > 1 and layout.pad[0] and gc.nrows(t) > 1:
        assert not gc.is_contiguous(t)


def test_layout_kinds_are_not_contiguous():
    ctx = sentinel_context(1 << 16)
    ne = [3, 4, 2, 5]
    assert gc.is_transposed(make_tensor(ctx, ne, Layout("transposed")))
    assert gc.is_permuted(make_tensor(ctx, ne, Layout("permuted", axes=(2, 0, 3, 1))))
    assert not gc.is_contiguous(make_tensor(ctx, ne, Layout("strided", pad=(1, 0, 0, 0))))
    with pytest.raises(ValueError):
        Layout("diagonal")


@given(shape=shapes(min_dims=2, max_dims=3, max_side=3))
def test_shapes_bounds(shape):
    assert 2 <= len(shape) <= 3 and all(1 <= x <= 3 for x in shape)


@given(pair=broadcastable_pairs())
def test_broadcastable_pairs(pair):
    ctx = gc.init(1 << 16, no_alloc=True)
    a, b = (gc.new_tensor(ctx, gc.TYPE_F32, ne) for ne in pair)
    assert gc.can_repeat(b, a)
    gc.add(ctx, a, b)


@given(mm=matmul_pairs("mul_mat"), op=matmul_pairs("out_prod"))
def test_matmul_pairs(mm, op):
    ctx = gc.init(1 << 16, no_alloc=True)
    a, b = (gc.new_tensor(ctx, gc.TYPE_F32, ne) for ne in mm)
    assert gc.mul_mat(ctx, a, b).ne == [mm[0][1], mm[1][1], mm[1][2], mm[1][3]]
    a, b = (gc.new_tensor(ctx, gc.TYPE_F32, ne) for ne in op)
    assert gc.out_prod(ctx, a, b).ne == [op[0][0], op[1][0], op[1][2], op[1][3]]
