"""Record ggml's own mul_mat results (llama.cpp 4480542's CPU code, libllama.so through tools/ggml_c.py) for
tests/test_ops_quant.py's check of mul_mat's ggml_dots option (tests/data/ggml_dots_4480542.npz):

    python -m graphcore_tools.record_ggml_dots --llama-cpp /path/to/llama.cpp [-o FILE]

For each quantized src0 type: src0 = CASE_W rows quantized with graphcore's quantizer (bit for bit ggml's
reference, tests/test_quants.py), src1 = CASE_X (float32), ggml's mul_mat result; and an F16 src0 of K = 200
(not a multiple of 32: ggml_vec_dot_f16's lanes and its float64 remainder). Inputs are drawn from fixed seeds,
so only the results are stored.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import graphcore as gc

from . import ggml_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def case(name):
    """(src0 float32 rows [M, K], src1 [N, K]) of a case, from its seed."""
    rng = np.random.default_rng(sum(map(ord, name)))
    K = 200 if name == "f16" else 512
    w = rng.standard_normal((40, K)).astype(np.float32)
    x = (rng.standard_normal((5, K)) * rng.uniform(0.1, 10, (5, 1))).astype(np.float32)
    return w, x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR"))
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "tests", "data", "ggml_dots_4480542.npz"))
    a = p.parse_args(argv)
    if not a.llama_cpp:
        p.error("--llama-cpp (or LLAMA_CPP_DIR) is required")
    lib = ggml_c.load(a.llama_cpp)
    out = {}
    for name in QUANT_TYPES + ("f16",):
        w, x = case(name)
        t = gc.TYPE_F16 if name == "f16" else getattr(gc, "TYPE_" + name.upper())
        rows = w.astype(np.float16) if name == "f16" else gc.quantize(w, t)
        mm = ggml_c.MulMat(lib, t, rows, x, 1)
        mm.run()
        out[name] = mm.result()
        mm.close()
    np.savez_compressed(a.output, **out)


if __name__ == "__main__":
    main()
