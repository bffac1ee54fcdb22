"""More activations: tanh elu gelu_quick leaky_relu clamp.

tanh and gelu_quick in float32 math with a vectorisable exp (kernel.exp_f32), as ggml computes them
(without its fp16 lookup tables); elu and leaky_relu in float64, rounded once. Any strides, the same
bits for any thread count.
"""
from __future__ import annotations

import math

import numpy as np

from ..kernel import F32, exp_f32, inline, param_f32
from .args import boolean, real
from .common import check_f32, define_unary, elementwise_node, grad_x, inplace_of, tasks_by_segments, unary_loop
from .elementwise import add, mul, scale, sub
from .refs import f64
from .registry import param_f32 as param_f32_of
from .registry import rebuild_of, reference_of, register, sample_of
from .unary import neg, relu, silu_back, sqr, step


# -- tanh ---------------------------------------------------------------------------------------------------
@inline
def _tanh_f(x, p):
    """tanh in float32 math within 2 ulp (Cephes' tanhf): an odd polynomial below 0.625, else
    1 - 2 / (exp(2|x|) + 1) with exp_f32; no libm call, so the loop vectorises 8 lanes wide."""
    a = abs(x)
    z = x * x
    small = ((((F32(-5.70498872745e-3) * z + F32(2.06390887954e-2)) * z - F32(5.37397155531e-2)) * z
              + F32(1.33314422036e-1)) * z - F32(3.33332819422e-1)) * z * x + x
    big = F32(1.0) - F32(2.0) / (exp_f32(a + a) + F32(1.0))     # 1 once exp overflows
    big = big if x >= F32(0.0) else -big
    return small if a < F32(0.625) else big        # NaN: big is NaN


TANH, tanh, tanh_inplace = define_unary(
    "TANH", "tanh(x)", _tanh_f, formula="tanh(x)", reference=lambda x: np.tanh(x),
    # (1 - tanh^2) g, from the result (which survives tanh_inplace)
    backward=grad_x(lambda ctx, t, g: sub(ctx, g, mul(ctx, g, sqr(ctx, t)))))


# -- elu: x for x > 0, exp(x) - 1 otherwise --------------------------------------------------------------------
@inline
def _elu_f(x, p):
    if x > 0:
        return x
    return np.float32(math.expm1(np.float64(x)))


ELU, elu, elu_inplace = define_unary(
    "ELU", "elu(x)", _elu_f, formula="x for x > 0, exp(x) - 1 otherwise",
    reference=lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    # 1 for x > 0, exp(x) = y + 1 otherwise: g * (1 + y - relu(y)), from the result
    backward=grad_x(lambda ctx, t, g: add(ctx, g, mul(ctx, g, sub(ctx, t, relu(ctx, t))))))


# -- gelu_quick: x * sigmoid(1.702 x) --------------------------------------------------------------------------
GELU_QUICK_COEF = -1.702


@inline
def _gelu_quick_f(x, p):
    if x < F32(-450.0):     # the limit is 0, as for gelu and silu (the formula gives -inf / inf at -inf)
        return F32(-0.0)
    return x / (F32(1.0) + exp_f32(F32(GELU_QUICK_COEF) * x))     # float32 math, as ggml


GELU_QUICK, gelu_quick, gelu_quick_inplace = define_unary(     # the limit at -inf is 0, as for gelu and silu
    "GELU_QUICK", "gelu_quick(x)", _gelu_quick_f, formula="x / (1 + exp(-1.702 x))",
    reference=lambda x: np.where(x == -np.inf, -0.0, x / (1.0 + np.exp(GELU_QUICK_COEF * x))),
    # x sigmoid(k x) = silu(k x) / k, so its derivative is silu'(k x)
    backward=grad_x(lambda ctx, t, g: silu_back(ctx, scale(ctx, t.src[0], -GELU_QUICK_COEF), g)))


# -- leaky_relu: max(x, 0) + slope * min(x, 0); op_params[0] = slope (float) ------------------------------------
@inline
def _leaky_relu_f(x, slope):
    pos = x if x > 0 else np.float32(0.0)
    neg = x if x < 0 else np.float32(0.0)
    return np.float32(np.float64(pos) + np.float64(slope) * np.float64(neg))


def _leaky_relu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _leaky_relu_f, param_f32(rec, 0))


def _leaky_relu_backward(ctx, t, g, d):
    if d.needs(0):      # 1 for x > 0, slope otherwise: slope g + (1 - slope) step(x) g
        slope = param_f32_of(t, 0)
        pos = mul(ctx, step(ctx, t.src[0]), g)
        d.add(0, pos if slope == 0.0 else add(ctx, scale(ctx, g, slope), scale(ctx, pos, 1.0 - slope)))


LEAKY_RELU = register("LEAKY_RELU", "leaky_relu(x)", _leaky_relu_kernel, n_tasks=tasks_by_segments, inplace=True,
                      backward=_leaky_relu_backward)


@reference_of(LEAKY_RELU)
def _leaky_relu_reference(node, srcs):
    x = f64(srcs[0])
    return np.where(x > 0, x, 0.0) + param_f32_of(node, 0) * np.where(x < 0, x, 0.0)


@sample_of(LEAKY_RELU)
def _leaky_relu_sample(d):
    a = d.f32()
    return leaky_relu(d.ctx, a, d.choice([0.0, 0.01, 0.1, -0.5, 1.5]), d.inplace(a))


def leaky_relu(ctx, a, negative_slope: float, inplace: bool = False):
    """Elementwise x for x > 0, negative_slope * x otherwise (ggml_leaky_relu): F32 a -> same shape.

    ggml's signature: the inplace flag comes last (True: the result is a view of a, written over
    it). negative_slope must be a finite number."""
    op = "leaky_relu"
    check_f32(op, a)
    s = real(op, "negative_slope", negative_slope)
    return elementwise_node(ctx, LEAKY_RELU, a, [a], [s], inplace=boolean(op, "inplace", inplace))


@rebuild_of(LEAKY_RELU)
def _leaky_relu_rebuild(ctx, srcs, rec):
    return leaky_relu(ctx, *srcs, rec.f32(0), rec.inplace)


# -- clamp: min(max(x, lo), hi); op_params = {min, max} (floats) ------------------------------------------------
@inline
def _clamp_f(x, p):
    if x != x:
        return x
    lo, hi = p
    v = x if x < hi else hi
    return v if v > lo else lo


def _clamp_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _clamp_f, (param_f32(rec, 0), param_f32(rec, 1)))


def _clamp_backward(ctx, t, g, d):
    if d.needs(0):      # g where the value was kept (y == x), 0 where it was clamped
        moved = sub(ctx, t, t.src[0])
        clamped = add(ctx, step(ctx, moved), step(ctx, neg(ctx, moved)))
        d.add(0, sub(ctx, g, mul(ctx, g, clamped)))


CLAMP = register("CLAMP", "clamp(x)", _clamp_kernel, n_tasks=tasks_by_segments, inplace=True,
                 backward=_clamp_backward)


@reference_of(CLAMP)
def _clamp_reference(node, srcs):
    # MAX(MIN(x, max), min): min wins when min > max; NaN stays NaN
    x = f64(srcs[0])
    lo, hi = param_f32_of(node, 0), param_f32_of(node, 1)
    return np.where(np.isnan(x), x, np.maximum(np.minimum(x, hi), lo))


@sample_of(CLAMP)
def _clamp_sample(d):
    a = d.f32()
    lo, hi = sorted([d.float(-1.0, 1.0), d.float(-1.0, 1.0)])
    lo, hi = d.choice([(lo, hi), (hi, lo), (-math.inf, hi), (lo, math.inf), (0.0, 0.0)])
    return (clamp_inplace if d.inplace(a) else clamp)(d.ctx, a, lo, hi)


def _clamp(ctx, a, min, max, inplace, op):
    check_f32(op, a)
    lo = real(op, "min", min, finite=False)
    hi = real(op, "max", max, finite=False)
    return elementwise_node(ctx, CLAMP, a, [a], [lo, hi], inplace=inplace)


def clamp(ctx, a, min: float, max: float):
    """ggml_clamp: each element limited to [min, max] (MAX(MIN(x, max), min), so min wins when
    min > max); NaN stays NaN. Unlike ggml (which returns a view of a and so writes over it),
    the result is a new tensor; clamp_inplace writes over a."""
    return _clamp(ctx, a, min, max, False, "clamp")


@inplace_of(clamp, ggml="as ggml_clamp, which is always in place")
def clamp_inplace(ctx, a, min: float, max: float):
    return _clamp(ctx, a, min, max, True, "clamp_inplace")


@rebuild_of(CLAMP)
def _clamp_rebuild(ctx, srcs, rec):
    return (clamp_inplace if rec.inplace else clamp)(ctx, *srcs, rec.f32(0), rec.f32(1))
