"""graphcore.testing: tools to test graphs (strategies, numpy comparisons, gradient checks).

A property-based testing kit for your own graphs, and the one graphcore's op tests and fuzzer use:

- strategies (hypothesis): types(), shapes(), layouts(), tensors(ctx, type, shape, layout),
  broadcastable_pairs(), matmul_pairs(), and graphs(ops=..., max_nodes=..., backward=...): random
  well-typed DAGs of registered ops (each op's sampler, kept beside its kernel, draws what it
  accepts) with random leaf data;
- reference: a pure-numpy interpreter of any graph, forward or backward, from the numpy reference
  each op keeps beside its kernel (evaluate(g));
- assert_graph_close(g, n_threads=(1, 2, 4)): the executor against the references, node by node,
  reporting the first diverging node; assert_gradients_close and check_gradients: gradients
  against finite differences;
- compare: nmse, assert_close_nmse, sentinel contexts and stray-write checks.

Importing it registers the hypothesis profiles the kit needs (graphcore.testing.profiles: no
deadline, since first computes JIT-compile) and loads one unless you already chose a profile.
"""
from .compare import (SENTINEL, assert_close_nmse, assert_same_bits, check_untouched, compute_guarded,  # noqa: F401
                      element_byte_offsets, nmse, sentinel_context)
from .gradcheck import GradCheckResult, check_gradients  # noqa: F401
from . import reference  # noqa: F401
from .reference import evaluate  # noqa: F401
from .graphcheck import (GradientReport, GraphCheck, GraphMismatch, assert_gradients_close,  # noqa: F401
                         assert_graph_close, small_tasks)
try:  # the strategies need hypothesis (the test extra); the comparisons above do not
    from .profiles import PROFILES, load_profile  # noqa: F401
    from .strategies import (CONTIGUOUS, LAYOUT_KINDS, Layout, broadcastable_pairs, layouts,  # noqa: F401
                             logical_4d, make_tensor, matmul_pairs, ne4, random_values, seeds, shapes, tensors,
                             types)
    from .graphgen import BACKWARD_EXCLUDED, DOMAINS, DrawnGraph, NodeDraw, family_ops, graphs  # noqa: F401
except ModuleNotFoundError as _e:  # pragma: no cover
    if _e.name != "hypothesis":
        raise
