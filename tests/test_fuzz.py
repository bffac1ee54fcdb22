"""The engine fuzzed with random graphs (graphcore.testing): random well-typed DAGs of every
registered op, with random layouts and values, computed by the executor at 1, 2 and 4 threads
(tiny nodes split across threads too) and checked node by node against the ops' numpy
references; and random scalar losses over random graphs, whose backward graphs are checked the
same way and whose gradients are checked against finite differences of the float64 reference.

CI profile: every op starts FORWARD_PER_OP forward graphs and (when differentiable)
BACKWARD_PER_OP backward ones, the rest of each graph random: over 300 derandomized graphs that
cover every op for sure. Fuzz profile (HYPOTHESIS_PROFILE=fuzz): its max_examples graphs of each
kind, any ops, larger graphs; it prints what it ran:

    HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest tests/test_fuzz.py -q -s
"""
import collections
import os
import time

import pytest
from hypothesis import event, given, settings, strategies as st

import graphcore as gc
from graphcore.testing import assert_gradients_close, assert_graph_close, graphs
from graphcore.testing.graphgen import BACKWARD_EXCLUDED

FUZZ = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "fuzz"
FORWARD_PER_OP, BACKWARD_PER_OP = 10, 6
MAX_NODES = 10 if FUZZ else 6
FORWARD_FIRST = [None] if FUZZ else [op.name for op in gc.OPS if op.sample is not None]
BACKWARD_FIRST = [None] if FUZZ else [op.name for op in gc.OPS if op.sample is not None and op.backward is not None
                                      and op.name not in BACKWARD_EXCLUDED]

STATS = collections.defaultdict(collections.Counter)

# special values (inf, NaN) in user functions of map_custom nodes, run as plain Python
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("first", FORWARD_FIRST)
@settings(max_examples=settings.default.max_examples if FUZZ else FORWARD_PER_OP)
@given(data=st.data())
def test_fuzz_forward(first, data):
    drawn = data.draw(graphs(max_nodes=MAX_NODES, first=first), label="graph")
    s = STATS["forward"]
    s["graphs"] += 1
    s["nodes"] += drawn.graph.n_nodes
    check = assert_graph_close(drawn.graph, n_threads=(1, 2, 4))
    s["computed"] += check.n_computed
    for op in check.ops:
        event(f"op {op}")
        STATS["forward ops"][op] += check.ops[op]


@pytest.mark.parametrize("first", BACKWARD_FIRST)
@settings(max_examples=settings.default.max_examples if FUZZ else BACKWARD_PER_OP)
@given(data=st.data())
def test_fuzz_backward(first, data):
    drawn = data.draw(graphs(max_nodes=MAX_NODES - 2, backward=True, first=first), label="graph")
    s = STATS["backward"]
    s["graphs"] += 1
    s["forward nodes"] += drawn.graph.n_nodes
    s["backward nodes"] += drawn.backward_graph.n_nodes
    drawn.seed_loss()
    check = assert_graph_close(drawn.backward_graph, n_threads=(1, 2))
    for op in check.ops:
        STATS["backward ops"][op] += check.ops[op]
    report = assert_gradients_close(drawn.loss, drawn.params, drawn.backward_graph)
    s["gradient checks"] += report.checks
    s["gradient checks skipped"] += report.skipped


def test_fuzz_summary(capsys):
    """Print what the fuzz tests above ran (pytest -s shows it; the README records a fuzz run)."""
    if not STATS:
        return
    lines = [f"fuzz summary ({'fuzz' if FUZZ else 'ci'} profile, {time.strftime('%Y-%m-%d')}):"]
    for k in ("forward", "backward"):
        lines.append(f"  {k}: " + ", ".join(f"{n} {v}" for v, n in STATS[k].items()))
    for k in ("forward ops", "backward ops"):
        c = STATS[k]
        lines.append(f"  {k}: {len(c)} distinct; fewest: "
                     + ", ".join(f"{op} {n}" for op, n in sorted(c.items(), key=lambda x: x[1])[:6]))
    missing = [op.name for op in gc.OPS if op.name != "NONE" and op.name not in STATS["forward ops"]]
    lines.append(f"  ops never drawn forward: {missing or 'none'}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    if len(FORWARD_FIRST) > 1 and STATS["forward"]["graphs"] >= FORWARD_PER_OP * len(FORWARD_FIRST):
        assert not missing, f"the fuzzer never drew {missing}"
