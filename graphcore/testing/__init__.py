"""graphcore.testing: tools to test graphs (strategies, numpy comparisons, gradient checks).

Several modules are filled in by different work streams; each adds its own import line below.
"""
