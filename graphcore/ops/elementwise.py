"""Elementwise arithmetic: add sub mul div (src1 tiled over src0) and scale.

The unary functions are in unary.py, add1 (a scalar broadcast, whose gradient is a sum) in
reduce.py; these ops' backward rules need nothing but each other, so this module sits lowest.

Each op: builder (shape/type rule), scalar function, kernel, backward rule, registry record.
A backward rule `rule(ctx, t, g, d)` builds the gradients of t's sources from g, t's gradient,
and adds them through d (see graphcore/autodiff.py); `reduce=TILES` undoes src1's broadcast.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import tensor as TN
from ..errors import GraphError
from ..kernel import inline, param_f32
from .common import (check_f32, define_binary, elementwise_node, inplace_of, tasks_by_segments,
                     unary_loop)
from .refs import f64
from .registry import TILES, reference_of, register, sample_of
from .registry import param_f32 as param_f32_of
from .registry import rebuild_of


# -- binary ops: src1 is tiled over src0 when ggml's can_repeat(b, a) holds --------------------------
def _add_backward(ctx, t, g, d, sign=1):
    if d.needs(0):
        d.add(0, g)
    if d.needs(1):      # sub's is add's with -g for src1
        (d.add if sign > 0 else d.sub)(1, g, reduce=TILES)


ADD, add, add_inplace = define_binary("ADD", "x+y", inline(lambda x, y: x + y), _add_backward, symbol_op="+")
SUB, sub, sub_inplace = define_binary("SUB", "x-y", inline(lambda x, y: x - y),
                                       functools.partial(_add_backward, sign=-1), symbol_op="-")


@inline
def _mul_f(x, y):       # scale's too
    return x * y


def _mul_backward(ctx, t, g, d):
    a, b = t.src
    if d.needs(0):      # b * g (ggml's operand order when b is full size; b tiled over g otherwise)
        d.add(0, mul(ctx, b, g) if TN.are_same_shape(b, g) else mul(ctx, g, b))
    if d.needs(1):
        d.add(1, mul(ctx, a, g), reduce=TILES)


MUL, mul, mul_inplace = define_binary("MUL", "x*y", _mul_f, _mul_backward, symbol_op="*")


def _div_backward(ctx, t, g, d):
    a, b = t.src
    if d.needs(0):      # g / b
        d.add(0, div(ctx, g, b))
    if d.needs(1):      # -g * a / b^2 = -g * t / b
        d.sub(1, mul(ctx, g, div(ctx, t, b)), reduce=TILES)


DIV, div, div_inplace = define_binary("DIV", "x/y", inline(lambda x, y: x / y), _div_backward, symbol_op="/",
                                       domain_b="nonzero", note="x/0 gives inf or NaN, as in IEEE.")


# -- scale: a * s for a float s (ggml_scale at this commit takes a float) --------------------------------
def _scale_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _mul_f, param_f32(rec, 0))


def _scale_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, scale(ctx, g, param_f32_of(t, 0)))


SCALE = register("SCALE", "x*v", _scale_kernel, n_tasks=tasks_by_segments, inplace=True,
                 backward=_scale_backward)


@reference_of(SCALE)
def _scale_reference(node, srcs):
    return f64(srcs[0]) * param_f32_of(node, 0)


@sample_of(SCALE)
def _scale_sample(d):
    a, s = d.f32(), d.choice([0.0, 0.5, -1.0, 3.0, d.float(-2.0, 2.0)])
    return scale_inplace(d.ctx, a, s) if d.inplace(a) else scale(d.ctx, a, s)


def _scale(ctx, a, s, inplace, name):
    check_f32(name, a)
    if not isinstance(s, (int, float, np.integer, np.floating)):
        raise GraphError(f"{name}: s must be a Python float, got {type(s).__name__} "
                         f"(ggml_scale takes a float since January 2024)")
    return elementwise_node(ctx, SCALE, a, [a], [float(s)], inplace=inplace)


def scale(ctx, a, s: float):
    """Elementwise a * s for a Python float s (ggml_scale): F32 a [ne0, ne1, ne2, ne3] -> same shape.

    s is a number, as ggml_scale takes since January 2024 (not a tensor): GraphError otherwise."""
    return _scale(ctx, a, s, False, "scale")


@inplace_of(scale)
def scale_inplace(ctx, a, s: float):
    return _scale(ctx, a, s, True, "scale_inplace")


@rebuild_of(SCALE)
def _scale_rebuild(ctx, srcs, rec):
    return (scale_inplace if rec.inplace else scale)(ctx, *srcs, rec.f32(0))


