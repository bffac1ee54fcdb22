"""graphcore.testing: tools to test graphs (strategies, numpy comparisons, gradient checks).

Several modules are filled in by different work streams; each adds its own import line below.
"""
from .compare import (SENTINEL, assert_close_nmse, assert_same_bits, check_untouched, compute_guarded,  # noqa: F401
                      element_byte_offsets, nmse, sentinel_context)
try:  # the strategies need hypothesis (a test dependency); the comparisons do not
    from .strategies import (CONTIGUOUS, LAYOUT_KINDS, Layout, broadcastable_pairs, layouts,  # noqa: F401
                             logical_4d, make_tensor, matmul_pairs, ne4, random_values, seeds, shapes)
except ModuleNotFoundError as _e:  # pragma: no cover
    if _e.name != "hypothesis":
        raise
from .gradcheck import GradCheckResult, check_gradients  # noqa: F401,E402
from . import reference  # noqa: F401,E402
from .reference import evaluate  # noqa: F401,E402
from .graphcheck import (GradientReport, GraphCheck, GraphMismatch, assert_gradients_close,  # noqa: F401,E402
                         assert_graph_close, small_tasks)
try:
    from .strategies import DrawnGraph, NodeDraw, family_ops, graphs, tensors, types  # noqa: F401
except ModuleNotFoundError as _e:  # pragma: no cover
    if _e.name != "hypothesis":
        raise
