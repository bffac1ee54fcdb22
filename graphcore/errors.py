"""Exceptions raised by graphcore. Bad input never crashes the interpreter: it raises one of these."""


class GraphError(ValueError):
    """A shape, type or argument problem found while building, planning or computing a graph."""


class OutOfMemoryError(MemoryError):
    """A context's arena cannot fit a requested tensor."""


class ComputeError(GraphError):
    """A kernel reported a data-dependent failure (for example an index out of range) while computing."""


class GraphFileError(GraphError):
    """A graph file (gc.graph_import) that is truncated, corrupt, foreign or of a newer format version;
    the message names the file and what is wrong."""


class NotComputedWarning(UserWarning):
    """Reading an op's result that no graph_compute has produced yet (its bytes are whatever the
    arena held: zeros in a fresh context)."""


class NonFiniteError(ComputeError):
    """graph_compute(..., check_finite=True) found a NaN or an inf: `node_index`, `node` (the tensor)
    and `index` (ggml's [i0, i1, i2, i3] of the first bad element) say where."""

    def __init__(self, msg, node_index=None, node=None, index=None):
        super().__init__(msg)
        self.node_index, self.node, self.index = node_index, node, index
