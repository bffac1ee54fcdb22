"""Where graphcore's train-text and llama.cpp's train-text-from-scratch part ways under an aggressive
schedule (--warmup 2 --adam-alpha 0.01), and whether that is a bug or the amplification of rounding:

    python -m graphcore_tools.train_text_divergence --c-binary /path/to/train-text-from-scratch [--size tiny]

64 iterations of each run below, from the repository root; the table gives |loss_a - loss_b| / loss_b
at some iterations and the maximum over the 64:
- graphcore against the C program (flash attention, 1 thread);
- the C program at 2 threads against 1, and with --no-flash against flash attention (the same
  function, evaluated another way: ggml's soft_max rounds exp to fp16, its flash attention does not);
- graphcore with --no-flash against flash, and against the C program with --no-flash;
- graphcore from initial weights that differ by one ulp in some elements (the polar method without
  the fused multiply-add, models.train_text.randomize_model(fma=False)) against graphcore.
Then one step from the C program's checkpoint at iteration 40 in both programs: how far apart the new
weights and Adam's first moments (which take the gradient) are.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

import numpy as np

from graphcore.gguf_io import gguf_read
from graphcore_models.train_text import (TrainHparams, init_model, parse_args, randomize_model, run,
                                         save_llama_model_file)
from graphcore_models.train_text.train import load_vocab
from graphcore_tools.record_train_text import c_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from train_text_cases import AGGRESSIVE, CORPUS, SMALL, parse_log  # noqa: E402

SIZES = {"small": SMALL,        # 512-piece vocabulary, 21,584 weights, well under a second a run
         # the 32000-piece vocabulary
         "tiny": ["--vocab-model", "tests/data/ggml-vocab-llama.gguf", "--train-data", CORPUS, "--ctx", "16",
                  "--embd", "32", "--head", "4", "--layer", "2", "--ff", "48", "-b", "2", "-s", "1", "-t", "1",
                  "--checkpoint-in", "", "--save-every", "0", "--model-out", "", "--checkpoint-out", ""]}
SHOW = [10, 20, 30, 40, 42, 44, 45, 46, 48, 50, 54, 56, 60, 64]
STEP_AT = 40


def _losses(log):
    return np.array([it[4] for it in log["iters"] if it[0] >= 1])


def c_losses(binary, args):
    return _losses(c_run(binary, args))


def gc_losses(args):
    out = io.StringIO()
    run(parse_args(args), out)
    return _losses(parse_log(out.getvalue()))


def with_option(args, name, value):
    args = list(args)
    args[args.index(name) + 1] = value
    return args


def initial_model(path, args, fma):
    a = parse_args(args)
    vocab, tok = load_vocab(a.vocab_model)
    model = init_model(TrainHparams(n_vocab=tok.n_vocab, n_ctx=a.ctx, n_embd=a.embd, n_head=a.head, n_layer=a.layer,
                                    n_ff=a.ff, n_rot=a.embd // a.head))
    randomize_model(model, a.seed, 0.0, 1.0, -1.0, 1.0, fma=fma)
    save_llama_model_file(path, vocab, model)


def one_step(binary, base, d):
    """The C program's checkpoint at STEP_AT, one more step in each program: the new weights and
    first moments compared."""
    ck = os.path.join(d, f"c-{STEP_AT}.gguf")
    c_losses(binary, with_option(with_option(base, "--save-every", str(STEP_AT)), "--checkpoint-out",
                                 os.path.join(d, "c-ITERATION.gguf")) + ["--adam-iter", str(STEP_AT + 1)])
    step = with_option(base, "--checkpoint-in", ck) + ["--adam-iter", "1"]
    c_losses(binary, with_option(step, "--checkpoint-out", os.path.join(d, "c-step.gguf")))
    gc_losses(with_option(step, "--checkpoint-out", os.path.join(d, "g-step.gguf")))
    c, g = (gguf_read(os.path.join(d, f)).tensors for f in ("c-step.gguf", "g-step.gguf"))
    names = [n for n in c if not n.startswith("optimizer.")]
    wc, wg = (np.concatenate([t[n].numpy().ravel() for n in names]) for t in (c, g))
    mc, mg = (t["optimizer.adam.first_moments"].numpy().ravel() for t in (c, g))
    print(f"\none step from the C program's checkpoint at iteration {STEP_AT}, graphcore against the C program:")
    print("  weights: %.1f%% of %d differ, by at most %.1e (the step is ~%.0e)"
          % (100 * np.mean(wc != wg), wc.size, np.abs(wc - wg).max(), float(base[base.index("--adam-alpha") + 1])))
    print("  first moments: %.1f%% differ, |m_c - m_g| / |m_c| = %.1e (float32's epsilon: 1.2e-07)"
          % (100 * np.mean(mc != mg), np.linalg.norm(mc - mg) / np.linalg.norm(mc)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--c-binary", required=True, help="llama.cpp 4480542's train-text-from-scratch")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    a = p.parse_args(argv)
    binary = os.path.abspath(a.c_binary)
    os.chdir(ROOT)
    base = SIZES[a.size] + AGGRESSIVE
    runs64 = base + ["--adam-iter", "64"]
    plain = runs64 + ["--no-flash"]
    with tempfile.TemporaryDirectory() as d:
        r = {"C": c_losses(binary, runs64), "C -t 2": c_losses(binary, with_option(runs64, "-t", "2")),
             "C plain": c_losses(binary, plain), "gc": gc_losses(runs64), "gc plain": gc_losses(plain)}
        for fma in (True, False):     # graphcore reads a plain model file as a fresh start (the C program crashes)
            path = os.path.join(d, f"init-{fma}.gguf")
            initial_model(path, runs64, fma)
            r[f"gc init fma={fma}"] = gc_losses(with_option(runs64, "--checkpoint-in", path))
        if not np.array_equal(r["gc init fma=True"], r["gc"]):
            raise SystemExit("graphcore from its own initial model file differs from a fresh start")
        pairs = [("gc", "C"), ("C -t 2", "C"), ("C plain", "C"), ("gc plain", "gc"), ("gc plain", "C plain"),
                 ("gc init fma=False", "gc")]
        print(f"{a.size}: {' '.join(base[base.index('--ctx'):base.index('--checkpoint-in')])} "
              f"{' '.join(AGGRESSIVE)}; losses of the C program: {r['C'][0]:.3f} -> {r['C'][-1]:.3f}, "
              f"highest {r['C'].max():.3f} at iteration {r['C'].argmax() + 1}")
        print(f"{'iteration':>32} " + " ".join(f"{i:>5}" for i in SHOW) + "    max  at")
        for x, y in pairs:
            rel = np.abs(r[x] - r[y]) / np.abs(r[y])
            print(f"{x + ' vs ' + y:>32} " + " ".join(f"{rel[i - 1]:5.0e}" for i in SHOW)
                  + f"  {rel.max():5.1e} {rel.argmax() + 1:3d}")
        one_step(binary, base, d)


if __name__ == "__main__":
    main()
