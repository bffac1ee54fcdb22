"""graphcore: a ggml-style lazy computation-graph engine with a numba-compiled executor.

Names mirror ggml's C API without the `ggml_` prefix: `gc.init`, `gc.new_tensor_2d`,
`gc.mul_mat`, `gc.build_forward_expand`, `gc.graph_plan`, `gc.graph_compute`, ...
Shapes are written in ggml's `ne` order, innermost dimension first: `[ne0, ne1, ne2, ne3]`.

`gc.sum`, `gc.abs` and `gc.set` (ggml_sum, ggml_abs, ggml_set) are left out of `__all__`, so that
`from graphcore import *` does not shadow Python's builtins; they are documented in
`graphcore.ops.reduce.sum`, `graphcore.ops.unary.abs_` and `graphcore.ops.indexing.set`.
"""
from . import _cache  # noqa: F401,I001 (first: where numba caches the kernels; see _cache.py)
from . import interrupts  # noqa: F401 (Ctrl-C held while numba compiles or loads a kernel)
from .blas import preload_cython_blas as _preload_cython_blas
_preload_cython_blas()   # before numba loads a compiled function: it imports scipy.linalg otherwise (blas.py)
from .errors import ComputeError, GraphError, NonFiniteError, NotComputedWarning, OutOfMemoryError
from .types import (TYPE_F16, TYPE_F32, TYPE_I32, TYPE_TRAITS, blck_size, fp16_to_fp32, fp32_to_fp16,
                    type_name, type_size)
from .types import (TYPE_Q2_K, TYPE_Q3_K, TYPE_Q4_0, TYPE_Q4_1, TYPE_Q4_K, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q5_K,
                    TYPE_Q6_K, TYPE_Q8_0, TYPE_Q8_1, TYPE_Q8_K, is_quantized, row_size)
from .quant_rows import dequantize, quantize
from .context import Context, free, get_mem_size, get_no_alloc, init, set_no_alloc, used_mem
from .tensor import (FLAG_INPUT, FLAG_OUTPUT, FLAG_PARAM, MAX_DIMS, MAX_NAME, MAX_OP_PARAMS, MAX_SRC, Tensor,
                     are_same_shape, can_repeat, can_repeat_rows, dup_tensor, element_size, format_name,
                     from_numpy, get_f32_1d, get_f32_nd, get_i32_1d, get_i32_nd, get_name, is_contiguous,
                     is_permuted, is_scalar, is_transposed, n_dims, nbytes, nelements, new_f32, new_i32,
                     new_tensor, new_tensor_1d, new_tensor_2d, new_tensor_3d, new_tensor_4d, nrows,
                     set_f32, set_f32_1d, set_f32_nd, set_i32, set_i32_1d, set_i32_nd, set_input, set_name,
                     set_output, set_zero, unravel_index, view_tensor)
from .ops.registry import BY_NAME, NOT_DIFFERENTIABLE, OPS, ZERO_GRADIENT, OpDef, op_name, op_symbol
from .ops.elementwise import (add, add_inplace, div, div_inplace, mul, mul_inplace, scale, scale_inplace, sub,
                              sub_inplace)
from .ops.unary import (abs_ as abs, abs_inplace, gelu, gelu_back, gelu_inplace, log, log_inplace, neg, neg_inplace,
                        relu, relu_inplace, sgn, sgn_inplace, silu, silu_back, silu_inplace, sqr, sqr_inplace, sqrt,
                        sqrt_inplace, step, step_inplace)
from .ops.layout import (cont, cont_1d, cont_2d, cont_3d, cont_4d, cpy, dup, dup_inplace, permute, reshape,
                         reshape_1d, reshape_2d, reshape_3d, reshape_4d, transpose, view_1d, view_2d, view_3d,
                         view_4d)
from .ops.reduce import add1, add1_inplace, argmax, mean, repeat, repeat_back, sum, sum_rows
from .ops.matmul import mul_mat, out_prod
from .graph import (DEFAULT_GRAPH_SIZE, Graph, build_forward, build_forward_expand, graph_clear, graph_cpy,
                    graph_dup, graph_get_tensor, graph_node, graph_view, new_graph,
                    new_graph_custom)
from .planner import CPlan, default_n_threads, graph_plan
from .executor import STATUS_ABORTED, STATUS_SUCCESS, graph_compute, graph_compute_with_ctx
from .compiled import CompiledGraph, graph_compile
from .dump import graph_dot, graph_dump_dot, graph_print, graph_text
from .graphfile import graph_export, graph_import
from .errors import GraphFileError
from .optim import (LINESEARCH_BACKTRACKING_ARMIJO, LINESEARCH_BACKTRACKING_STRONG_WOLFE,
                    LINESEARCH_BACKTRACKING_WOLFE, LINESEARCH_DEFAULT, LINESEARCH_FAIL,
                    LINESEARCH_INVALID_PARAMETERS, LINESEARCH_MAXIMUM_ITERATIONS, LINESEARCH_MAXIMUM_STEP,
                    LINESEARCH_MINIMUM_STEP, OPT_ADAM, OPT_CANCEL, OPT_DID_NOT_CONVERGE, OPT_FAIL,
                    OPT_INVALID_WOLFE, OPT_LBFGS, OPT_NO_CONTEXT, OPT_OK, AdamParams, LBFGSParams, OptContext,
                    OptParams, opt, opt_default_params, opt_init, opt_resume, opt_resume_g)

from .ops.norm import norm, norm_inplace, rms_norm, rms_norm_back, rms_norm_inplace
from .ops.attention import (diag_mask_inf, diag_mask_inf_inplace, diag_mask_zero, diag_mask_zero_inplace, soft_max,
                            soft_max_back, soft_max_back_inplace, soft_max_ext, soft_max_inplace)
from .ops.rope import rope, rope_back, rope_custom, rope_custom_inplace, rope_inplace, rope_xpos_inplace
from .ops.indexing import (acc, acc_inplace, diag, get_rows, get_rows_back, set, set_1d, set_1d_inplace, set_2d,
                           set_2d_inplace, set_inplace)
from .ops.activations import (clamp, clamp_inplace, elu, elu_inplace, gelu_quick, gelu_quick_inplace, leaky_relu,
                              tanh, tanh_inplace)
from .ops.losses import cross_entropy_loss, cross_entropy_loss_back
from .ops.custom import (N_TASKS_MAX, map_custom1, map_custom1_inplace, map_custom2, map_custom2_inplace,
                         map_custom3, map_custom3_inplace)
from .ops.flash_attn import flash_attn, flash_attn_back

from .autodiff import (build_backward, build_backward_expand, build_backward_gradient_checkpointing, graph_reset,
                       set_param)

# ggml_op constants: OP_NONE, OP_ADD, ... derived from the registry
globals().update({f"OP_{op.name}": op.code for op in OPS})

# The public API (what `from graphcore import *` binds and what the API reference shows). sum, abs
# and set stay out so that a star import does not shadow Python's builtins: use gc.sum, gc.abs, gc.set.
__all__ = [
    # errors and element types
    "ComputeError", "GraphError", "GraphFileError", "NonFiniteError", "NotComputedWarning", "OutOfMemoryError",
    "TYPE_F16", "TYPE_F32", "TYPE_I32", "TYPE_TRAITS", "blck_size", "fp16_to_fp32", "fp32_to_fp16", "type_name",
    "type_size", "row_size", "is_quantized",
    # quantized types (ggml's block formats) and whole-array quantize / dequantize
    "TYPE_Q4_0", "TYPE_Q4_1", "TYPE_Q5_0", "TYPE_Q5_1", "TYPE_Q8_0", "TYPE_Q8_1", "TYPE_Q2_K", "TYPE_Q3_K",
    "TYPE_Q4_K", "TYPE_Q5_K", "TYPE_Q6_K", "TYPE_Q8_K", "quantize", "dequantize",
    # contexts
    "Context", "free", "get_mem_size", "get_no_alloc", "init", "set_no_alloc", "used_mem",
    # tensors: creation, properties, names, element access
    "FLAG_INPUT", "FLAG_OUTPUT", "FLAG_PARAM", "MAX_DIMS", "MAX_NAME", "MAX_OP_PARAMS", "MAX_SRC", "Tensor",
    "new_tensor", "new_tensor_1d", "new_tensor_2d", "new_tensor_3d", "new_tensor_4d", "new_f32", "new_i32",
    "dup_tensor", "view_tensor", "from_numpy",
    "are_same_shape", "can_repeat", "can_repeat_rows", "element_size", "is_contiguous", "is_permuted",
    "is_scalar", "is_transposed", "n_dims", "nbytes", "nelements", "nrows",
    "format_name", "get_name", "set_name", "set_input", "set_output",
    "get_f32_1d", "get_f32_nd", "get_i32_1d", "get_i32_nd", "set_f32", "set_f32_1d", "set_f32_nd", "set_i32",
    "set_i32_1d", "set_i32_nd", "set_zero", "unravel_index",
    # ops: elementwise
    "add", "add_inplace", "sub", "sub_inplace", "mul", "mul_inplace", "div", "div_inplace", "add1",
    "add1_inplace", "scale", "scale_inplace", "sqr", "sqr_inplace", "sqrt", "sqrt_inplace", "log", "log_inplace",
    "neg", "neg_inplace", "abs_inplace", "sgn", "sgn_inplace", "step", "step_inplace", "relu", "relu_inplace",
    "gelu", "gelu_inplace", "gelu_back", "silu", "silu_inplace", "silu_back", "tanh", "tanh_inplace", "elu",
    "elu_inplace", "gelu_quick", "gelu_quick_inplace", "leaky_relu", "clamp", "clamp_inplace",
    # ops: copies and views
    "dup", "dup_inplace", "cpy", "cont", "cont_1d", "cont_2d", "cont_3d", "cont_4d", "reshape", "reshape_1d",
    "reshape_2d", "reshape_3d", "reshape_4d", "view_1d", "view_2d", "view_3d", "view_4d", "permute",
    "transpose",
    # ops: reductions, matrix products, normalisation, attention, indexing, losses, custom
    "sum_rows", "mean", "argmax", "repeat", "repeat_back",
    "mul_mat", "out_prod",
    "norm", "norm_inplace", "rms_norm", "rms_norm_inplace", "rms_norm_back",
    "diag_mask_inf", "diag_mask_inf_inplace", "diag_mask_zero", "diag_mask_zero_inplace", "soft_max",
    "soft_max_inplace", "soft_max_ext", "soft_max_back", "soft_max_back_inplace", "rope", "rope_inplace",
    "rope_custom", "rope_custom_inplace", "rope_xpos_inplace", "rope_back",
    "get_rows", "get_rows_back", "diag", "set_inplace", "set_1d", "set_1d_inplace", "set_2d", "set_2d_inplace",
    "acc", "acc_inplace",
    "cross_entropy_loss", "cross_entropy_loss_back", "flash_attn", "flash_attn_back",
    "N_TASKS_MAX", "map_custom1", "map_custom1_inplace", "map_custom2", "map_custom2_inplace", "map_custom3",
    "map_custom3_inplace",
    # the op registry
    "BY_NAME", "NOT_DIFFERENTIABLE", "OPS", "ZERO_GRADIENT", "OpDef", "op_name", "op_symbol",
    # graphs, planning, compute
    "DEFAULT_GRAPH_SIZE", "Graph", "new_graph", "new_graph_custom", "build_forward", "build_forward_expand",
    "graph_clear", "graph_cpy", "graph_dup", "graph_get_tensor", "graph_node", "graph_view",
    "CPlan", "default_n_threads", "graph_plan", "STATUS_SUCCESS", "STATUS_ABORTED", "graph_compute",
    "graph_compute_with_ctx", "CompiledGraph", "graph_compile",
    # gradients and optimisers
    "build_backward", "build_backward_expand", "build_backward_gradient_checkpointing", "graph_reset", "set_param",
    # memory planning
    "Gallocr", "alloc_ctx_tensors", "gallocr_alloc_graph", "gallocr_free", "gallocr_get_buffer_size", "gallocr_new",
    "gallocr_reserve",
    "LINESEARCH_BACKTRACKING_ARMIJO", "LINESEARCH_BACKTRACKING_STRONG_WOLFE", "LINESEARCH_BACKTRACKING_WOLFE",
    "LINESEARCH_DEFAULT", "LINESEARCH_FAIL", "LINESEARCH_INVALID_PARAMETERS", "LINESEARCH_MAXIMUM_ITERATIONS",
    "LINESEARCH_MAXIMUM_STEP", "LINESEARCH_MINIMUM_STEP", "OPT_ADAM", "OPT_CANCEL", "OPT_DID_NOT_CONVERGE",
    "OPT_FAIL", "OPT_INVALID_WOLFE", "OPT_LBFGS", "OPT_NO_CONTEXT", "OPT_OK", "AdamParams", "LBFGSParams",
    "OptContext", "OptParams", "opt", "opt_default_params", "opt_init", "opt_resume", "opt_resume_g",
    # printing, pictures, graph files
    "graph_print", "graph_text", "graph_dot", "graph_dump_dot", "graph_export", "graph_import",
] + [f"OP_{op.name}" for op in OPS]

__version__ = "0.1.0"


def __getattr__(name):
    """`gc.testing` without importing it first (it is not imported with graphcore: it needs
    hypothesis for its strategies, and registers hypothesis profiles)."""
    if name == "testing":
        import importlib
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'graphcore' has no attribute {name!r}")


from .alloc import (Gallocr, alloc_ctx_tensors, gallocr_alloc_graph, gallocr_free, gallocr_get_buffer_size,  # noqa: E402
                    gallocr_new, gallocr_reserve)
