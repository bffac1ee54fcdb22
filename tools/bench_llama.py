"""Llama inference speed: graphcore-llama against llama.cpp's `perplexity` and `main` on the same GGUF file,
in the same run.

    python -m graphcore_tools.bench_llama                                  # graphcore only
    python -m graphcore_tools.bench_llama --llama-cpp /path/to/llama.cpp   # or LLAMA_CPP_DIR=...: with the ratios
    python -m graphcore_tools.bench_llama --quantize q4_0 ...              # quantized first (any quantize TYPE)

Measured, for each thread count: perplexity evaluation (prompt processing: chunks of n_ctx tokens, all
logits) and generation (one token at a time after a short prompt, greedy), in tokens per second; the
median of --repeats runs, the two programs' runs alternated. llama.cpp's figures are the ones it
prints itself (llama_print_timings: "prompt eval time" of perplexity, "eval time" of main), so process
start and model loading are left out on both sides. For generation graphcore's rate is also given
without its first generated token, which builds, plans and lowers the session's one-token graph (about
8 ms here, mostly Python; llama.cpp builds its graph in C for every token). The model is a random llama written
from a seed unless --model names one.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from graphcore_models.llama.model import LlamaModel, LlamaSession
from graphcore_models.llama.perplexity import perplexity
from graphcore_models.llama.quantize import QuantizeError, quantize_file
from graphcore_models.llama.synth import write_random_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "tests", "data", "ggml-vocab-llama.gguf")
TEXT = os.path.join(ROOT, "tests", "data", "llama_text.txt")
PROMPT = "The lighthouse keeper"


def graphcore_perplexity(model, tokens, n_ctx, threads):
    session = LlamaSession(model, n_ctx, threads)
    t0 = time.perf_counter()
    r = perplexity(session, tokens, n_ctx, model.tokenizer.bos_id)
    return len(r.chunks) * n_ctx / (time.perf_counter() - t0)


def graphcore_generate(model, n_ctx, n_gen, threads):
    """(tokens/s, tokens/s without the first generated token): as llama.cpp's "eval time", the tokens after
    the prompt; the first of them also builds, plans and lowers the session's one-token graph (~8 ms here,
    mostly Python), which the second figure leaves out."""
    session = LlamaSession(model, n_ctx, threads)
    logits = session.eval(model.tokenizer.encode(PROMPT, special=True))
    t0 = time.perf_counter()
    for i in range(n_gen - 1):
        logits = session.eval([int(np.argmax(logits))])
        if i == 0:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    return (n_gen - 1) / (t2 - t0), (n_gen - 2) / (t2 - t1)


def _timing(stderr, label):
    m = re.search(label + r"\s*=\s*([0-9.]+) ms /\s*(\d+) (?:tokens|runs)", stderr)
    if not m:
        raise RuntimeError(f"llama.cpp printed no '{label}' timing:\n{stderr[-2000:]}")
    return int(m.group(2)) / (float(m.group(1)) / 1000.0)


def llama_cpp_perplexity(bin_dir, model, text, n_ctx, threads, cwd):
    r = subprocess.run([os.path.join(bin_dir, "perplexity"), "-m", model, "-f", text, "-c", str(n_ctx),
                        "-t", str(threads)], capture_output=True, text=True, errors="replace", timeout=1800, cwd=cwd)
    return _timing(r.stderr, "prompt eval time")


def llama_cpp_generate(bin_dir, model, n_ctx, n_gen, threads, cwd):     # cwd: main writes its logs there
    r = subprocess.run([os.path.join(bin_dir, "main"), "-m", model, "-p", PROMPT, "-n", str(n_gen), "--temp", "0",
                        "--ignore-eos", "-c", str(n_ctx), "-t", str(threads)], capture_output=True, text=True,
                       errors="replace", timeout=1800, cwd=cwd)     # a random model's pieces need not be UTF-8
    return _timing(r.stderr, r"(?<!prompt )eval time")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR"),
                   help="folder with llama.cpp's perplexity and main binaries (default: $LLAMA_CPP_DIR)")
    p.add_argument("--model", help="a llama GGUF file (default: a random one, see --n-embd ...)")
    p.add_argument("--quantize", metavar="TYPE", help="quantize the model first (graphcore-llama quantize TYPE; "
                   "the bytes are llama.cpp quantize's), both programs then run the quantized file")
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-ff", type=int, default=688)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--chunks", type=int, default=4, help="perplexity chunks of n_ctx tokens")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=("perplexity", "generation"), help="time only this (default: both)")
    a = p.parse_args(argv)
    if a.n_gen < 3:
        p.error(f"--n-gen {a.n_gen}: give at least 3 (the prompt's token, then two timed ones)")
    if a.llama_cpp and not os.path.isfile(os.path.join(a.llama_cpp, "perplexity")):
        p.error(f"--llama-cpp {a.llama_cpp}: no perplexity binary there")
    with tempfile.TemporaryDirectory() as tmp:
        path = a.model
        if path is None:
            path = os.path.join(tmp, "bench.gguf")
            write_random_llama(path, VOCAB, seed=7, n_embd=a.n_embd, n_layer=a.n_layer, n_head=a.n_head,
                               n_ff=a.n_ff, n_ctx_train=max(512, a.n_ctx))
        if a.quantize:
            qpath = os.path.join(tmp, f"bench-{a.quantize}.gguf")
            try:
                quantize_file(path, qpath, a.quantize, log=lambda *_: None)
            except QuantizeError as e:      # e.g. rows that are not whole blocks: --n-ff 768 for n_embd 256
                p.error(f"--quantize {a.quantize}: {e}")
            path = qpath
        model = LlamaModel(path)
        base = open(TEXT, encoding="utf-8").read()
        text = base
        while len(model.tokenizer.encode(text)) < a.chunks * a.n_ctx:
            text += "\n" + base
        tokens = model.tokenizer.encode(text)[:a.chunks * a.n_ctx]
        text_path = os.path.join(tmp, "bench.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            f.write(text)           # llama.cpp scores as many whole chunks as it finds; rates compare
        hp = model.hparams
        print(f"model: {os.path.basename(path)}, {model.n_params() / 1e6:.1f} M parameters (n_embd {hp.n_embd}, "
              f"{hp.n_layer} layers, n_ff {hp.n_ff}, vocab {hp.n_vocab}); n_ctx {a.n_ctx}, "
              f"{len(tokens) // a.n_ctx} perplexity chunks, {a.n_gen} generated tokens; median of {a.repeats}")
        graphcore_perplexity(model, tokens[:2 * a.n_ctx], a.n_ctx, 1)        # compile and page in first
        graphcore_generate(model, a.n_ctx, 4, 1)
        print(f"{'':22s}{'threads':>8s}{'graphcore tok/s':>17s}{'llama.cpp tok/s':>17s}{'ratio':>8s}"
              f"{'after 1st token':>17s}{'ratio':>8s}")
        for th in a.threads:
            for what in [w for w in ("perplexity", "generation") if a.only in (None, w)]:
                if what == "perplexity":
                    ours = (lambda: graphcore_perplexity(model, tokens, a.n_ctx, th))
                    ref = (lambda: llama_cpp_perplexity(a.llama_cpp, path, text_path, a.n_ctx, th, tmp))
                else:
                    ours = (lambda: graphcore_generate(model, a.n_ctx, a.n_gen, th))
                    ref = (lambda: llama_cpp_generate(a.llama_cpp, path, a.n_ctx, a.n_gen, th, tmp))
                g_runs, r_runs = [], []
                for _ in range(a.repeats):      # alternated, so a change in the machine's load hits both
                    g_runs.append(ours())
                    if a.llama_cpp:
                        r_runs.append(ref())
                steady = what == "generation"
                g = statistics.median(x[0] if steady else x for x in g_runs)
                line = f"{what:22s}{th:8d}{g:17.1f}"
                if a.llama_cpp:
                    r = statistics.median(r_runs)
                    line += f"{r:17.1f}{g / r:8.2f}"
                if steady:
                    gs = statistics.median(x[1] for x in g_runs)
                    line += f"{gs:17.1f}" + (f"{gs / r:8.2f}" if a.llama_cpp else "")
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
