"""Elementwise ops: add sub mul div add1 scale and the unary functions.

Each op: builder (shape/type rule), scalar function, kernel, backward rule, registry record.
A backward rule `rule(ctx, t, g, d)` builds the gradients of t's sources from g, t's gradient,
and adds them through d (see graphcore/autodiff.py); `reduce=TILES` undoes src1's broadcast.
"""
from __future__ import annotations

import math

import numpy as np

from .. import tensor as TN
from ..errors import GraphError
from ..kernel import exp_f64, inline, param_f32, record, split, view_f32
from .common import (binary_loop, check_f32, elementwise_node, inplace_of, shapes, tasks_by_segments, unary_builders,
                     unary_loop)
from .refs import f64, sample_binary, sample_unary, tile
from .registry import TILES, ZERO_GRADIENT, reference_of, register, sample_of
from .registry import param_f32 as param_f32_of
from .registry import rebuild_by, rebuild_of


# -- binary ops: src1 is tiled over src0 when ggml's can_repeat(b, a) holds --------------------------
def _binary(ctx, op, name, a, b, inplace):
    check_f32(name, a, b)
    if not TN.can_repeat(b, a):
        raise GraphError(f"{name}: src1 cannot be broadcast to src0 (each src0 dim must be a multiple "
                         f"of src1's): {shapes(a, b)}")
    return elementwise_node(ctx, op, a, [a, b], inplace=inplace)


@inline
def _add_f(x, y):
    return x + y


def _add_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _add_f)


def _add_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, g)
    if d.needs(1):
        d.add(1, g, reduce=TILES)


ADD = register("ADD", "x+y", _add_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_add_backward)


@reference_of(ADD)
def _add_reference(node, srcs):
    return f64(srcs[0]) + tile(f64(srcs[1]), srcs[0].shape)


@sample_of(ADD)
def _add_sample(d):
    return sample_binary(d, add, add_inplace)


def add(ctx, a, b):
    """Elementwise a + b, b tiled over a (ggml_add).

    F32 a [ne0, ne1, ne2, ne3] and F32 b whose every ne[i] divides a's (ggml_can_repeat(b, a)) -> a's
    shape; any strides. GraphError otherwise."""
    return _binary(ctx, ADD, "add", a, b, False)


@inplace_of(add)
def add_inplace(ctx, a, b):
    return _binary(ctx, ADD, "add_inplace", a, b, True)


rebuild_of(ADD)(rebuild_by(add, add_inplace))


@inline
def _sub_f(x, y):
    return x - y


def _sub_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _sub_f)


def _sub_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, g)
    if d.needs(1):
        d.sub(1, g, reduce=TILES)


SUB = register("SUB", "x-y", _sub_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_sub_backward)


@reference_of(SUB)
def _sub_reference(node, srcs):
    return f64(srcs[0]) - tile(f64(srcs[1]), srcs[0].shape)


@sample_of(SUB)
def _sub_sample(d):
    return sample_binary(d, sub, sub_inplace)


def sub(ctx, a, b):
    """Elementwise a - b, b tiled over a (ggml_sub).

    F32 a [ne0, ne1, ne2, ne3] and F32 b whose every ne[i] divides a's (ggml_can_repeat(b, a)) -> a's
    shape; any strides. GraphError otherwise."""
    return _binary(ctx, SUB, "sub", a, b, False)


@inplace_of(sub)
def sub_inplace(ctx, a, b):
    return _binary(ctx, SUB, "sub_inplace", a, b, True)


rebuild_of(SUB)(rebuild_by(sub, sub_inplace))


@inline
def _mul_f(x, y):
    return x * y


def _mul_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _mul_f)


def _mul_backward(ctx, t, g, d):
    a, b = t.src
    if d.needs(0):      # b * g (ggml's operand order when b is full size; b tiled over g otherwise)
        d.add(0, mul(ctx, b, g) if TN.are_same_shape(b, g) else mul(ctx, g, b))
    if d.needs(1):
        d.add(1, mul(ctx, a, g), reduce=TILES)


MUL = register("MUL", "x*y", _mul_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_mul_backward)


@reference_of(MUL)
def _mul_reference(node, srcs):
    return f64(srcs[0]) * tile(f64(srcs[1]), srcs[0].shape)


@sample_of(MUL)
def _mul_sample(d):
    return sample_binary(d, mul, mul_inplace)


def mul(ctx, a, b):
    """Elementwise a * b, b tiled over a (ggml_mul).

    F32 a [ne0, ne1, ne2, ne3] and F32 b whose every ne[i] divides a's (ggml_can_repeat(b, a)) -> a's
    shape; any strides. GraphError otherwise."""
    return _binary(ctx, MUL, "mul", a, b, False)


@inplace_of(mul)
def mul_inplace(ctx, a, b):
    return _binary(ctx, MUL, "mul_inplace", a, b, True)


rebuild_of(MUL)(rebuild_by(mul, mul_inplace))


@inline
def _div_f(x, y):
    return x / y


def _div_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _div_f)


def _div_backward(ctx, t, g, d):
    a, b = t.src
    if d.needs(0):      # g / b
        d.add(0, div(ctx, g, b))
    if d.needs(1):      # -g * a / b^2 = -g * t / b
        d.sub(1, mul(ctx, g, div(ctx, t, b)), reduce=TILES)


DIV = register("DIV", "x/y", _div_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_div_backward)


@reference_of(DIV)
def _div_reference(node, srcs):
    return f64(srcs[0]) / tile(f64(srcs[1]), srcs[0].shape)


@sample_of(DIV)
def _div_sample(d):
    return sample_binary(d, div, div_inplace, domain_b="nonzero")


def div(ctx, a, b):
    """Elementwise a / b, b tiled over a (ggml_div).

    F32 a [ne0, ne1, ne2, ne3] and F32 b whose every ne[i] divides a's (ggml_can_repeat(b, a)) -> a's
    shape; any strides. GraphError otherwise. x/0 gives inf or NaN, as in IEEE."""
    return _binary(ctx, DIV, "div", a, b, False)


@inplace_of(div)
def div_inplace(ctx, a, b):
    return _binary(ctx, DIV, "div_inplace", a, b, True)


rebuild_of(DIV)(rebuild_by(div, div_inplace))


# -- add1: a + b[0] for a scalar b ---------------------------------------------------------------------
def _add1_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    b = view_f32(r, 2)
    unary_loop(rec, ith, nth, _add_f, b[0, 0, 0, 0])


def _add1_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, g)
    if d.needs(1):      # b was added to every element: the sum of g (ggml takes the mean, a known bug)
        from .reduce import sum as sum_
        d.add(1, sum_(ctx, g))


ADD1 = register("ADD1", "x+1", _add1_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_add1_backward)


@reference_of(ADD1)
def _add1_reference(node, srcs):
    return f64(srcs[0]) + f64(srcs[1]).reshape(-1)[0]


@sample_of(ADD1)
def _add1_sample(d):
    a, b = d.f32(), d.f32([1])
    return add1_inplace(d.ctx, a, b) if d.inplace(a, b) else add1(d.ctx, a, b)


def _add1(ctx, a, b, inplace, name):
    check_f32(name, a, b)
    if not TN.is_scalar(b):
        raise GraphError(f"{name}: src1 must be a scalar (one element), got {shapes(a, b)}")
    return elementwise_node(ctx, ADD1, a, [a, b], inplace=inplace)


def add1(ctx, a, b):
    """a + b[0] for a one-element b (ggml_add1): F32 a [ne0, ne1, ne2, ne3], F32 b of one element -> a's
    shape.

    GraphError when b has more than one element. The gradient of b is the sum of the output
    gradient (ggml takes its mean)."""
    return _add1(ctx, a, b, False, "add1")


@inplace_of(add1)
def add1_inplace(ctx, a, b):
    return _add1(ctx, a, b, True, "add1_inplace")


rebuild_of(ADD1)(rebuild_by(add1, add1_inplace))


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


# -- unary functions ---------------------------------------------------------------------------------
@inline
def _sqr_f(x, p):
    return x * x


def _sqr_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _sqr_f, 0.0)


def _sqr_backward(ctx, t, g, d):
    if d.needs(0):      # 2 x g
        d.add(0, scale(ctx, mul(ctx, t.src[0], g), 2.0))


SQR = register("SQR", "x^2", _sqr_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_sqr_backward)


@reference_of(SQR)
def _sqr_reference(node, srcs):
    x = f64(srcs[0])
    return x * x


@sample_of(SQR)
def _sqr_sample(d):
    return sample_unary(d, sqr, sqr_inplace)


sqr, sqr_inplace = unary_builders(SQR, "sqr", "x*x")
rebuild_of(SQR)(rebuild_by(sqr, sqr_inplace))


@inline
def _sqrt_f(x, p):
    return np.sqrt(x)


def _sqrt_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _sqrt_f, 0.0)


def _sqrt_backward(ctx, t, g, d):
    if d.needs(0):      # g / (2 sqrt(x))
        d.add(0, scale(ctx, div(ctx, g, t), 0.5))


SQRT = register("SQRT", "√x", _sqrt_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_sqrt_backward)


@reference_of(SQRT)
def _sqrt_reference(node, srcs):
    x = f64(srcs[0])
    return np.sqrt(x)


@sample_of(SQRT)
def _sqrt_sample(d):
    return sample_unary(d, sqrt, sqrt_inplace, domain="positive")


sqrt, sqrt_inplace = unary_builders(SQRT, "sqrt", "sqrt(x)", "NaN for x < 0.")
rebuild_of(SQRT)(rebuild_by(sqrt, sqrt_inplace))


@inline
def _log_f(x, p):
    return np.log(x)


def _log_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _log_f, 0.0)


def _log_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, div(ctx, g, t.src[0]))


LOG = register("LOG", "log(x)", _log_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_log_backward)


@reference_of(LOG)
def _log_reference(node, srcs):
    x = f64(srcs[0])
    return np.log(x)


@sample_of(LOG)
def _log_sample(d):
    return sample_unary(d, log, log_inplace, domain="positive")


log, log_inplace = unary_builders(LOG, "log", "log(x)", "-inf at 0, NaN for x < 0.")
rebuild_of(LOG)(rebuild_by(log, log_inplace))


@inline
def _neg_f(x, p):
    return -x


def _neg_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _neg_f, 0.0)


def _neg_backward(ctx, t, g, d):
    if d.needs(0):
        d.sub(0, g)


NEG = register("NEG", "-x", _neg_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_neg_backward)


@reference_of(NEG)
def _neg_reference(node, srcs):
    x = f64(srcs[0])
    return -x


@sample_of(NEG)
def _neg_sample(d):
    return sample_unary(d, neg, neg_inplace)


neg, neg_inplace = unary_builders(NEG, "neg", "-x")
rebuild_of(NEG)(rebuild_by(neg, neg_inplace))


@inline
def _abs_f(x, p):
    return abs(x)


def _abs_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _abs_f, 0.0)


def _abs_backward(ctx, t, g, d):
    if d.needs(0):      # sgn(x) g (0 at x = 0)
        d.add(0, mul(ctx, sgn(ctx, t.src[0]), g))


ABS = register("ABS", "abs(x)", _abs_kernel, n_tasks=tasks_by_segments, inplace=True, backward=_abs_backward)


@reference_of(ABS)
def _abs_reference(node, srcs):
    x = f64(srcs[0])
    return np.abs(x)


@sample_of(ABS)
def _abs_sample(d):
    return sample_unary(d, abs_, abs_inplace)


abs_, abs_inplace = unary_builders(ABS, "abs", "|x|")
rebuild_of(ABS)(rebuild_by(abs_, abs_inplace))


@inline
def _sgn_f(x, p):
    return np.float32(1.0) if x > 0 else (np.float32(-1.0) if x < 0 else np.float32(0.0))


def _sgn_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _sgn_f, 0.0)


# piecewise constant: the derivative is 0 wherever it exists (ggml, PyTorch and JAX give 0)
SGN = register("SGN", "sgn(x)", _sgn_kernel, n_tasks=tasks_by_segments, inplace=True, backward=ZERO_GRADIENT)


@reference_of(SGN)
def _sgn_reference(node, srcs):
    x = f64(srcs[0])
    return np.where(x > 0, 1.0, np.where(x < 0, -1.0, 0.0))


@sample_of(SGN)
def _sgn_sample(d):
    return sample_unary(d, sgn, sgn_inplace)


sgn, sgn_inplace = unary_builders(SGN, "sgn", "sign(x): 1, -1 or 0",
                                  "Its gradient is zero (as in ggml, PyTorch and JAX).")
rebuild_of(SGN)(rebuild_by(sgn, sgn_inplace))


@inline
def _step_f(x, p):
    return np.float32(1.0) if x > 0 else np.float32(0.0)


def _step_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _step_f, 0.0)


# piecewise constant, as sgn
STEP = register("STEP", "step(x)", _step_kernel, n_tasks=tasks_by_segments, inplace=True,
                backward=ZERO_GRADIENT)


@reference_of(STEP)
def _step_reference(node, srcs):
    x = f64(srcs[0])
    return np.where(x > 0, 1.0, 0.0)


@sample_of(STEP)
def _step_sample(d):
    return sample_unary(d, step, step_inplace)


step, step_inplace = unary_builders(STEP, "step", "1 where x > 0, else 0",
                                    "Its gradient is zero (as in ggml, PyTorch and JAX).")
rebuild_of(STEP)(rebuild_by(step, step_inplace))


@inline
def _relu_f(x, p):
    return x if x > 0 else np.float32(0.0)


def _relu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _relu_f, 0.0)


def _relu_backward(ctx, t, g, d):
    if d.needs(0):      # step(x) g; step(relu(x)) == step(x), and t survives relu_inplace
        d.add(0, mul(ctx, step(ctx, t), g))


RELU = register("RELU", "relu(x)", _relu_kernel, n_tasks=tasks_by_segments, inplace=True,
                backward=_relu_backward)


@reference_of(RELU)
def _relu_reference(node, srcs):
    x = f64(srcs[0])
    return np.where(x > 0, x, 0.0)


@sample_of(RELU)
def _relu_sample(d):
    return sample_unary(d, relu, relu_inplace)


relu, relu_inplace = unary_builders(RELU, "relu", "max(x, 0)")
rebuild_of(RELU)(rebuild_by(relu, relu_inplace))

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


@inline
def _gelu_f(x, p):
    # ggml's tanh form, computed in float64 instead of through an fp16 lookup table
    v = np.float64(x)
    if v < -30.0:           # the limit is 0 (the formula would give -inf * 0 = NaN at -inf)
        return np.float32(-0.0)
    return np.float32(0.5 * v * (1.0 + math.tanh(SQRT_2_OVER_PI * v * (1.0 + GELU_COEF_A * v * v))))


def _gelu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _gelu_f, 0.0)


def _gelu_backward(ctx, t, g, d):
    if d.needs(0):
        d.add(0, gelu_back(ctx, t.src[0], g))


GELU = register("GELU", "gelu(x)", _gelu_kernel, n_tasks=tasks_by_segments, inplace=True,
                backward=_gelu_backward)


@reference_of(GELU)
def _gelu_reference(node, srcs):
    x = f64(srcs[0])         # the limit at -inf is 0
    return np.where(x == -np.inf, -0.0, 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x))))


@sample_of(GELU)
def _gelu_sample(d):
    return sample_unary(d, gelu, gelu_inplace)


gelu, gelu_inplace = unary_builders(GELU, "gelu", "gelu(x)",
                                    "gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), ggml's tanh form, "
                                    "in float64 (ggml reads an fp16 table).")
rebuild_of(GELU)(rebuild_by(gelu, gelu_inplace))


@inline
def _silu_f(x, p):
    v = np.float64(x)
    # exp_f64: math.exp's result without its libm call, so the loop vectorises
    return np.float32(-0.0) if v < -745.0 else np.float32(v / (1.0 + exp_f64(-v)))  # limit 0 at -inf


def _silu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _silu_f, 0.0)


def _silu_backward(ctx, t, g, d):
    if d.needs(0):
        from .activations import silu_back
        d.add(0, silu_back(ctx, t.src[0], g))


SILU = register("SILU", "silu(x)", _silu_kernel, n_tasks=tasks_by_segments, inplace=True,
                backward=_silu_backward)


@reference_of(SILU)
def _silu_reference(node, srcs):
    x = f64(srcs[0])         # the limit at -inf is 0
    return np.where(x == -np.inf, -0.0, x / (1.0 + np.exp(-x)))


@sample_of(SILU)
def _silu_sample(d):
    return sample_unary(d, silu, silu_inplace)


silu, silu_inplace = unary_builders(SILU, "silu", "x / (1 + exp(-x))")
rebuild_of(SILU)(rebuild_by(silu, silu_inplace))


# -- gelu_back: the gradient of gelu at x (src0) for the output gradient dy (src1) --------------------------
@inline
def _gelu_back_f(x, dy):
    v = np.float64(x)
    if v > 30.0 or v < -30.0:   # tanh is +-1 there: the derivative is 1 or 0 (also at +-inf: not inf * 0)
        return np.float32(np.float64(dy) * (1.0 if v > 0.0 else 0.0))
    th = math.tanh(SQRT_2_OVER_PI * v * (1.0 + GELU_COEF_A * v * v))
    dgelu = 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF_A * v * v)
    return np.float32(np.float64(dy) * dgelu)


def _gelu_back_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _gelu_back_f)


def _gelu_back_backward(ctx, t, g, d):
    if d.needs(0):
        raise GraphError(f"gelu_back: no rule for the gradient with respect to x (gelu's second derivative), "
                         f"needed for {shapes(t.src[0])}")
    if d.needs(1):      # linear in dy
        d.add(1, gelu_back(ctx, t.src[0], g))


GELU_BACK = register("GELU_BACK", "gelu_back(x)", _gelu_back_kernel, n_tasks=tasks_by_segments,
                     backward=_gelu_back_backward)


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
