"""Record what llama.cpp's train-text-from-scratch does on the runs of tests/train_text_cases.py, for
tests/test_train_text.py (tests/data/train_text_reference.json and the C checkpoint
tests/data/train_text_c32.gguf). Runs the binary of a llama.cpp 4480542 build (nothing of llama.cpp is
in this repository), from the repository root:

    python -m graphcore_tools.record_train_text --c-binary /path/to/llama.cpp/train-text-from-scratch

For each run of RUNS: the C program's printed figures (sizes, tokens, samples, tokenize_file's
warnings, per iteration the sample, schedule and loss). The checkpoint runs: the C program's 32
iterations (its final checkpoint kept as tests/data/train_text_c32.gguf) and the 32 it adds from that
file; graphcore's 32 iterations and the 32 the C program adds from graphcore's checkpoint; the
training metadata of both checkpoints.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile

from graphcore.gguf_io import gguf_read
from graphcore_models.train_text import parse_args, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from train_text_cases import C_CHECKPOINT, REFERENCE, RUNS, SMALL, checkpoint_options, parse_log  # noqa: E402


def c_run(binary, args):
    p = subprocess.run([binary, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(args)}: exit status {p.returncode}\n{p.stderr[-2000:]}")
    return parse_log(p.stdout)


def training_metadata(path):
    """The training.* and optimizer.* keys of a checkpoint (the shuffle's rng state as its first and
    last words and its length)."""
    md = gguf_read(path).metadata
    out = {k: v for k, v in md.items() if k.split(".")[0] in ("training", "optimizer")}
    words = out["training.shuffle.rng_state"].split()
    out["training.shuffle.rng_state"] = [words[0], words[-1], len(words)]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--c-binary", required=True, help="llama.cpp 4480542's train-text-from-scratch")
    p.add_argument("-o", "--output", default=os.path.join(ROOT, REFERENCE))
    a = p.parse_args(argv)
    binary = os.path.abspath(a.c_binary)
    out = {"llama.cpp": "4480542", "small": SMALL, "runs": {}, "checkpoints": {}}
    for name, opts in RUNS.items():
        print(name, file=sys.stderr)
        out["runs"][name] = {"options": opts, **c_run(binary, SMALL + opts)}
    ck = out["checkpoints"]
    ck["c32"] = c_run(binary, checkpoint_options("", C_CHECKPOINT))
    ck["c32_metadata"] = training_metadata(os.path.join(ROOT, C_CHECKPOINT))
    ck["c32_continued_by_c"] = c_run(binary, checkpoint_options(C_CHECKPOINT))
    with tempfile.TemporaryDirectory() as d:
        g32 = os.path.join(d, "g32.gguf")
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            run(parse_args(checkpoint_options("", g32)), io.StringIO())
        finally:
            os.chdir(cwd)
        ck["g32_metadata"] = training_metadata(g32)
        ck["g32_continued_by_c"] = c_run(binary, checkpoint_options(g32))
    with open(a.output, "w") as f:
        # one line per innermost list (an iteration's figures)
        f.write(re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]",
                       json.dumps(out, indent=1)) + "\n")
    print(f"wrote {a.output} and {os.path.join(ROOT, C_CHECKPOINT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
