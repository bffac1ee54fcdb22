"""Unary elementwise functions: sqr sqrt log neg abs sgn step relu gelu silu, and the backward
ops gelu_back and silu_back beside the functions they differentiate.

Each op is one define_unary declaration: its scalar function (a lambda, or a named function when it
needs more than a line) and backward rule give the registry record, kernel, builders f and
f_inplace, numpy reference (the scalar function itself, on float64 arrays, unless given), sampler
and graph-file rebuild.
Computed in float64 and rounded once to float32, except gelu, silu and their backward ops: float32 math
with a vectorisable exp (kernel.exp_f32), as ggml. Any strides, the same bits for any thread count.
"""
from __future__ import annotations

import numpy as np

from .. import tensor as TN
from ..errors import GraphError
from ..kernel import F32, exp_f32, inline
from .common import (binary_kernel, check_f32, check_same_shape, define_unary, elementwise_node, grad_x, linear_in_dy,
                     shapes, tasks_by_segments)
from .elementwise import div, mul, scale
from .refs import f64, sample_binary
from .registry import ZERO_GRADIENT, reference_of, register, sample_of
from .registry import rebuild_by, rebuild_of


# -- unary functions: the scalar function (x, p; p unused), then the declaration ----------------------
SQR, sqr, sqr_inplace = define_unary(
    "SQR", "x^2", inline(lambda x, p: x * x), formula="x*x",
    backward=grad_x(lambda ctx, t, g: scale(ctx, mul(ctx, t.src[0], g), 2.0)))      # 2 x g

SQRT, sqrt, sqrt_inplace = define_unary(
    "SQRT", "√x", inline(lambda x, p: np.sqrt(x)), formula="sqrt(x)", domain="positive", note="NaN for x < 0.",
    backward=grad_x(lambda ctx, t, g: scale(ctx, div(ctx, g, t), 0.5)))      # g / (2 sqrt(x))

LOG, log, log_inplace = define_unary(
    "LOG", "log(x)", inline(lambda x, p: np.log(x)), formula="log(x)", domain="positive",
    note="-inf at 0, NaN for x < 0.", backward=grad_x(lambda ctx, t, g: div(ctx, g, t.src[0])))


def _neg_backward(ctx, t, g, d):
    if d.needs(0):
        d.sub(0, g)


NEG, neg, neg_inplace = define_unary("NEG", "-x", inline(lambda x, p: -x), formula="-x", backward=_neg_backward)

ABS, abs_, abs_inplace = define_unary(
    "ABS", "abs(x)", inline(lambda x, p: np.abs(x)), formula="|x|",
    backward=grad_x(lambda ctx, t, g: mul(ctx, sgn(ctx, t.src[0]), g)))      # sgn(x) g (0 at x = 0)

# piecewise constant: the derivative is 0 wherever it exists (ggml, PyTorch and JAX give 0)
SGN, sgn, sgn_inplace = define_unary(
    "SGN", "sgn(x)",
    inline(lambda x, p: np.float32(1.0) if x > 0 else (np.float32(-1.0) if x < 0 else np.float32(0.0))),
    formula="sign(x): 1, -1 or 0", backward=ZERO_GRADIENT,
    reference=lambda x: np.where(x > 0, 1.0, np.where(x < 0, -1.0, 0.0)),
    note="Its gradient is zero (as in ggml, PyTorch and JAX).")

STEP, step, step_inplace = define_unary(     # piecewise constant, as sgn
    "STEP", "step(x)", inline(lambda x, p: np.float32(1.0) if x > 0 else np.float32(0.0)),
    formula="1 where x > 0, else 0", backward=ZERO_GRADIENT, reference=lambda x: np.where(x > 0, 1.0, 0.0),
    note="Its gradient is zero (as in ggml, PyTorch and JAX).")

RELU, relu, relu_inplace = define_unary(
    "RELU", "relu(x)", inline(lambda x, p: x if x > 0 else np.float32(0.0)), formula="max(x, 0)",
    reference=lambda x: np.where(x > 0, x, 0.0),
    # step(x) g; step(relu(x)) == step(x), and t survives relu_inplace
    backward=grad_x(lambda ctx, t, g: mul(ctx, step(ctx, t), g)))

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


@inline
def _gelu_sigmoid(x):
    """(1 + tanh(u)) / 2 = 1 / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3), in float32: the
    logistic form has no cancellation where tanh(u) nears -1."""
    u = F32(SQRT_2_OVER_PI) * x * (F32(1.0) + F32(GELU_COEF_A) * x * x)
    return F32(1.0) / (F32(1.0) + exp_f32(F32(-2.0) * u))


@inline
def _gelu_f(x, p):
    # ggml's tanh form in float32 math (ggml reads an fp16 table), written as x * sigmoid(2u)
    if x < F32(-30.0):      # the limit is 0 (the formula would give -inf * 0 = NaN at -inf)
        return F32(-0.0)
    return x * _gelu_sigmoid(x)


GELU, gelu, gelu_inplace = define_unary(     # the reference's limit at -inf is 0
    "GELU", "gelu(x)", _gelu_f, formula="gelu(x)",
    backward=grad_x(lambda ctx, t, g: gelu_back(ctx, t.src[0], g)),
    reference=lambda x: np.where(x == -np.inf, -0.0,
                                 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)))),
    note="gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), ggml's tanh form, "
         "in float32 math as x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3))) (ggml reads an fp16 table).")


SILU_TAIL = F32(-20.0)     # below, 1 + exp(x) is 1 in float32: silu(x) = x exp(x), scaled (see _silu_exp)
_2_64 = F32(2.0 ** 64)


@inline
def _silu_exp(x):
    """exp(-x), or below SILU_TAIL exp(x) * 2^64: there x exp(x) falls to subnormal numbers, and
    scaling by 2^-64 last rounds it once, as the float64 result rounded to float32 is. One exp."""
    return exp_f32(x + F32(44.361419555836500) if x < SILU_TAIL else -x)      # 64 ln 2


@inline
def _silu_f(x, p):
    # float32 math as ggml's; exp_f32: no libm call, so the loop vectorises 8 lanes wide
    e = _silu_exp(x)
    if x < SILU_TAIL:
        return F32(-0.0) if x < F32(-200.0) else x * e / _2_64      # limit 0 at -inf
    return x / (F32(1.0) + e)


SILU, silu, silu_inplace = define_unary(     # the reference's limit at -inf is 0
    "SILU", "silu(x)", _silu_f, formula="x / (1 + exp(-x))",
    backward=grad_x(lambda ctx, t, g: silu_back(ctx, t.src[0], g)),
    reference=lambda x: np.where(x == -np.inf, -0.0, x / (1.0 + np.exp(-x))))


# -- gelu_back: the gradient of gelu at x (src0) for the output gradient dy (src1) --------------------------
@inline
def _gelu_back_f(x, dy):
    # with s = (1 + tanh(u)) / 2: gelu' = s + x s (1 - s) 2 du/dx, in float32 math
    if x > F32(30.0) or x < F32(-30.0):   # tanh is +-1 there: the derivative is 1 or 0 (not inf * 0 at +-inf)
        return dy * (F32(1.0) if x > F32(0.0) else F32(0.0))
    s = _gelu_sigmoid(x)
    du = F32(2.0 * SQRT_2_OVER_PI) * (F32(1.0) + F32(3.0 * GELU_COEF_A) * x * x)
    return dy * (s + x * s * (F32(1.0) - s) * du)


GELU_BACK = register("GELU_BACK", "gelu_back(x)", binary_kernel("_gelu_back_kernel", _gelu_back_f),
                     n_tasks=tasks_by_segments,
                     backward=linear_in_dy("gelu_back", "gelu", lambda ctx, t, g: gelu_back(ctx, t.src[0], g)))


@reference_of(GELU_BACK)
def _gelu_back_reference(node, srcs):
    # d/dx 0.5 x (1 + tanh(u)), u = c x (1 + a x^2)
    x, dy = f64(srcs[0]), f64(srcs[1])
    th = np.tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x))
    du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF_A * x * x)
    dgelu = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
    return dy * np.where(np.isinf(x), np.where(x > 0, 1.0, 0.0), dgelu)      # the limits at +-inf


@sample_of(GELU_BACK)
def _gelu_back_sample(d):
    return sample_binary(d, gelu_back, same_shape=True)


def gelu_back(ctx, a, b):
    """b * gelu'(a): the gradient of gelu (tanh form) at a, given b, the gradient of its output.
    F32 a and b of the same shape -> that shape. ggml has no such op (its gelu has no backward)."""
    check_f32("gelu_back", a, b)
    if not TN.are_same_shape(a, b):
        raise GraphError(f"gelu_back: shapes differ: {shapes(a, b)}")
    return elementwise_node(ctx, GELU_BACK, a, [a, b])


rebuild_of(GELU_BACK)(rebuild_by(gelu_back))


# -- silu_back: gradient of silu at x (src0) for the output gradient dy (src1) ----------------------------------
@inline
def _silu_back_f(x, dy):
    # float32 math as ggml's (exp_f32 vectorises, unlike math.exp)
    if x > F32(40.0) or x < F32(-200.0):  # s is 1 or 0 there: the derivative is 1 or 0 (not inf * 0 at +-inf)
        return dy * (F32(1.0) if x > F32(0.0) else F32(0.0))
    e = _silu_exp(x)
    if x < SILU_TAIL:                     # s = exp(x), 1 - s = 1 (scaled as in silu)
        return dy * e * (F32(1.0) + x) / _2_64
    s = F32(1.0) / (F32(1.0) + e)
    return dy * s * (F32(1.0) + x * (F32(1.0) - s))


SILU_BACK = register("SILU_BACK", "silu_back(x)", binary_kernel("_silu_back_kernel", _silu_back_f),
                     n_tasks=tasks_by_segments, inplace=True,
                     backward=linear_in_dy("silu_back", "silu", lambda ctx, t, g: silu_back(ctx, t.src[0], g)))


@reference_of(SILU_BACK)
def _silu_back_reference(node, srcs):
    # d/dx x s(x) = s (1 + x (1 - s)), s the logistic function
    x, dy = f64(srcs[0]), f64(srcs[1])
    s = 1.0 / (1.0 + np.exp(-x))
    return dy * np.where(np.isinf(x), np.where(x > 0, 1.0, 0.0), s * (1.0 + x * (1.0 - s)))   # limits at +-inf


@sample_of(SILU_BACK)
def _silu_back_sample(d):
    return sample_binary(d, silu_back, same_shape=True)


def silu_back(ctx, a, b):
    """ggml_silu_back: b * silu'(a), where a is silu's input and b the gradient of its output."""
    check_f32("silu_back", a, b)
    check_same_shape("silu_back", a, b)
    return elementwise_node(ctx, SILU_BACK, a, [a, b])


rebuild_of(SILU_BACK)(rebuild_by(silu_back))
