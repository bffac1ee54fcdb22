"""Record what llama.cpp's `quantize` and `perplexity` do on the quantization test models, for
tests/test_llama_quant.py (tests/data/llama_quant_reference.json). Runs the binaries of a llama.cpp
4480542 build (nothing of llama.cpp is in this repository):

    python -m graphcore_tools.record_llama_quant --llama-cpp /path/to/llama.cpp \
        [-o tests/data/llama_quant_reference.json]

For each (model, TYPE) of tests/llama_models.QUANT_CASES: the sha256 of the file llama.cpp's quantize
writes and each tensor's type; for the cases in PPL_CASES, perplexity's stdout on that file (n_ctx of
the model, 2 threads) and `main --temp 0`'s output bytes for a prompt; perplexity of the unquantized
QUANT_MODELS too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

from graphcore.gguf_io import gguf_read
from graphcore.types import type_name
from graphcore_models.llama.synth import write_random_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from llama_models import MODELS, QUANT_CASES, QUANT_MODELS, vocab_file  # noqa: E402

TEXT = os.path.join(ROOT, "tests", "data", "llama_text.txt")
PPL_CASES = [("rand_q", t) for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_m", "q4_k_m",
                                     "q5_k_m", "q6_k")]
PROMPT = "The lighthouse keeper"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR"), required=False)
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "tests", "data", "llama_quant_reference.json"))
    a = p.parse_args(argv)
    if not a.llama_cpp:
        p.error("--llama-cpp (or LLAMA_CPP_DIR) is required")
    models = {**MODELS, **QUANT_MODELS}
    out = {"llama.cpp": "4480542", "cases": {}, "sources": {}}
    with tempfile.TemporaryDirectory() as d:
        for name in sorted({m for m, _ in QUANT_CASES}):
            write_random_llama(os.path.join(d, name + ".gguf"), vocab_file(name), **models[name][0])
        for name in QUANT_MODELS:          # the unquantized model's perplexity, the baseline of the comparison
            out["sources"][name] = {"n_ctx": models[name][1], "perplexity_stdout": subprocess.run(
                [os.path.join(a.llama_cpp, "perplexity"), "-m", os.path.join(d, name + ".gguf"), "-f", TEXT, "-c",
                 str(models[name][1]), "-t", "2"], check=True, capture_output=True, text=True, timeout=600,
                cwd=d).stdout}
        for name, t in QUANT_CASES:
            src, dst = os.path.join(d, name + ".gguf"), os.path.join(d, f"{name}-{t}.gguf")
            subprocess.run([os.path.join(a.llama_cpp, "quantize"), src, dst, t, "2"], check=True,
                           capture_output=True, timeout=600, cwd=d)
            rec = {"sha256": sha256(dst),
                   "types": {n: type_name(x.type) for n, x in gguf_read(dst).tensors.items()}}
            if (name, t) in PPL_CASES:
                n_ctx = models[name][1]
                r = subprocess.run([os.path.join(a.llama_cpp, "perplexity"), "-m", dst, "-f", TEXT, "-c",
                                    str(n_ctx), "-t", "2"], check=True, capture_output=True, text=True,
                                   timeout=600, cwd=d)
                rec["n_ctx"] = n_ctx
                rec["perplexity_stdout"] = r.stdout
                r = subprocess.run([os.path.join(a.llama_cpp, "main"), "-m", dst, "-p", PROMPT, "-n", "32",
                                    "--temp", "0", "-c", "256", "-t", "2", "--ignore-eos"], check=True,
                                   capture_output=True, timeout=600, cwd=d)
                rec["main_temp0_stdout_hex"] = r.stdout.hex()
            out["cases"][f"{name}-{t}"] = rec
            print(name, t, rec["sha256"][:16], file=sys.stderr)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
