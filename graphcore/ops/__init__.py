"""Op families; importing this package registers every op."""
from . import registry, elementwise, layout, reduce, matmul  # noqa: F401
from . import norm, attention, indexing, activations, losses, custom  # noqa: F401
