"""Elementwise ops: add sub mul div add1 scale and the unary functions.

Each op: builder (shape/type rule), scalar function, kernel, registry record. Backward rules
are filled in by the autodiff module's table (ops/backward.py) when it lands.
"""
from __future__ import annotations

import math

import numpy as np

from .. import tensor as TN
from ..errors import GraphError
from ..kernel import inline, param_f32, record, split, view_f32
from .common import binary_loop, check_f32, elementwise_node, shapes, tasks_by_segments, unary_loop
from .registry import register


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


ADD = register("ADD", "x+y", _add_kernel, n_tasks=tasks_by_segments, inplace=True)


def add(ctx, a, b):
    """a + b, b broadcast (tiled) over a."""
    return _binary(ctx, ADD, "add", a, b, False)


def add_inplace(ctx, a, b):
    return _binary(ctx, ADD, "add_inplace", a, b, True)


@inline
def _sub_f(x, y):
    return x - y


def _sub_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _sub_f)


SUB = register("SUB", "x-y", _sub_kernel, n_tasks=tasks_by_segments, inplace=True)


def sub(ctx, a, b):
    return _binary(ctx, SUB, "sub", a, b, False)


def sub_inplace(ctx, a, b):
    return _binary(ctx, SUB, "sub_inplace", a, b, True)


@inline
def _mul_f(x, y):
    return x * y


def _mul_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _mul_f)


MUL = register("MUL", "x*y", _mul_kernel, n_tasks=tasks_by_segments, inplace=True)


def mul(ctx, a, b):
    return _binary(ctx, MUL, "mul", a, b, False)


def mul_inplace(ctx, a, b):
    return _binary(ctx, MUL, "mul_inplace", a, b, True)


@inline
def _div_f(x, y):
    return x / y


def _div_kernel(rec, ith, nth, phase, wdata, wsize):
    binary_loop(rec, ith, nth, _div_f)


DIV = register("DIV", "x/y", _div_kernel, n_tasks=tasks_by_segments, inplace=True)


def div(ctx, a, b):
    return _binary(ctx, DIV, "div", a, b, False)


def div_inplace(ctx, a, b):
    return _binary(ctx, DIV, "div_inplace", a, b, True)


# -- add1: a + b[0] for a scalar b ---------------------------------------------------------------------
def _add1_kernel(rec, ith, nth, phase, wdata, wsize):
    r = record(rec)
    b = view_f32(r, 2)
    unary_loop(rec, ith, nth, _add_f, b[0, 0, 0, 0])


ADD1 = register("ADD1", "x+1", _add1_kernel, n_tasks=tasks_by_segments, inplace=True)


def _add1(ctx, a, b, inplace, name):
    check_f32(name, a, b)
    if not TN.is_scalar(b):
        raise GraphError(f"{name}: src1 must be a scalar (one element), got {shapes(a, b)}")
    return elementwise_node(ctx, ADD1, a, [a, b], inplace=inplace)


def add1(ctx, a, b):
    return _add1(ctx, a, b, False, "add1")


def add1_inplace(ctx, a, b):
    return _add1(ctx, a, b, True, "add1_inplace")


# -- scale: a * s for a float s (ggml_scale at this commit takes a float) --------------------------------
def _scale_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _mul_f, param_f32(rec, 0))


SCALE = register("SCALE", "x*v", _scale_kernel, n_tasks=tasks_by_segments, inplace=True)


def _scale(ctx, a, s, inplace, name):
    check_f32(name, a)
    if not isinstance(s, (int, float, np.integer, np.floating)):
        raise GraphError(f"{name}: s must be a Python float, got {type(s).__name__} "
                         f"(ggml_scale takes a float since January 2024)")
    return elementwise_node(ctx, SCALE, a, [a], [float(s)], inplace=inplace)


def scale(ctx, a, s: float):
    return _scale(ctx, a, s, False, "scale")


def scale_inplace(ctx, a, s: float):
    return _scale(ctx, a, s, True, "scale_inplace")


# -- unary functions ---------------------------------------------------------------------------------
def _unary_builders(op, name):
    def build(ctx, a):
        check_f32(name, a)
        return elementwise_node(ctx, op, a, [a])

    def build_inplace(ctx, a):
        check_f32(name + "_inplace", a)
        return elementwise_node(ctx, op, a, [a], inplace=True)

    build.__name__, build_inplace.__name__ = name, name + "_inplace"
    build.__doc__ = f"{name}(a), elementwise."
    return build, build_inplace


@inline
def _sqr_f(x, p):
    return x * x


def _sqr_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _sqr_f, 0.0)


SQR = register("SQR", "x^2", _sqr_kernel, n_tasks=tasks_by_segments, inplace=True)
sqr, sqr_inplace = _unary_builders(SQR, "sqr")


@inline
def _sqrt_f(x, p):
    return np.sqrt(x)


def _sqrt_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _sqrt_f, 0.0)


SQRT = register("SQRT", "√x", _sqrt_kernel, n_tasks=tasks_by_segments, inplace=True)
sqrt, sqrt_inplace = _unary_builders(SQRT, "sqrt")


@inline
def _log_f(x, p):
    return np.log(x)


def _log_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _log_f, 0.0)


LOG = register("LOG", "log(x)", _log_kernel, n_tasks=tasks_by_segments, inplace=True)
log, log_inplace = _unary_builders(LOG, "log")


@inline
def _neg_f(x, p):
    return -x


def _neg_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _neg_f, 0.0)


NEG = register("NEG", "-x", _neg_kernel, n_tasks=tasks_by_segments, inplace=True)
neg, neg_inplace = _unary_builders(NEG, "neg")


@inline
def _abs_f(x, p):
    return abs(x)


def _abs_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _abs_f, 0.0)


ABS = register("ABS", "abs(x)", _abs_kernel, n_tasks=tasks_by_segments, inplace=True)
abs_, abs_inplace = _unary_builders(ABS, "abs")


@inline
def _sgn_f(x, p):
    return np.float32(1.0) if x > 0 else (np.float32(-1.0) if x < 0 else np.float32(0.0))


def _sgn_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _sgn_f, 0.0)


SGN = register("SGN", "sgn(x)", _sgn_kernel, n_tasks=tasks_by_segments, inplace=True)
sgn, sgn_inplace = _unary_builders(SGN, "sgn")


@inline
def _step_f(x, p):
    return np.float32(1.0) if x > 0 else np.float32(0.0)


def _step_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _step_f, 0.0)


STEP = register("STEP", "step(x)", _step_kernel, n_tasks=tasks_by_segments, inplace=True)
step, step_inplace = _unary_builders(STEP, "step")


@inline
def _relu_f(x, p):
    return x if x > 0 else np.float32(0.0)


def _relu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _relu_f, 0.0)


RELU = register("RELU", "relu(x)", _relu_kernel, n_tasks=tasks_by_segments, inplace=True)
relu, relu_inplace = _unary_builders(RELU, "relu")

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


@inline
def _gelu_f(x, p):
    # ggml's tanh form, computed in float64 instead of through an fp16 lookup table
    v = np.float64(x)
    return np.float32(0.5 * v * (1.0 + math.tanh(SQRT_2_OVER_PI * v * (1.0 + GELU_COEF_A * v * v))))


def _gelu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _gelu_f, 0.0)


GELU = register("GELU", "gelu(x)", _gelu_kernel, n_tasks=tasks_by_segments, inplace=True)
gelu, gelu_inplace = _unary_builders(GELU, "gelu")


@inline
def _silu_f(x, p):
    v = np.float64(x)
    return np.float32(v / (1.0 + math.exp(-v)))


def _silu_kernel(rec, ith, nth, phase, wdata, wsize):
    unary_loop(rec, ith, nth, _silu_f, 0.0)


SILU = register("SILU", "silu(x)", _silu_kernel, n_tasks=tasks_by_segments, inplace=True)
silu, silu_inplace = _unary_builders(SILU, "silu")
