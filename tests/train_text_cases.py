"""The train-text runs that tools/record_train_text.py records from llama.cpp's train-text-from-scratch
(tests/data/train_text_reference.json) and tests/test_train_text.py repeats over graphcore: their
options, and the reader of both programs' stdout.

Both programs run from the repository root with these relative paths: the shuffle's samples hash
covers the corpus path as given, so a checkpoint only resumes its shuffle under the same string."""
from __future__ import annotations

import re

VOCAB512 = "tests/data/llama_tiny_trained.gguf"     # a llama file with a 512-piece SPM vocabulary
CORPUS = "tests/data/train_text_bsd.txt"
C_CHECKPOINT = "tests/data/train_text_c32.gguf"     # the C program's checkpoint after FAST's 32 iterations
REFERENCE = "tests/data/train_text_reference.json"

# 21,584 weights: 64 iterations take well under a second in either program
SMALL = ["--vocab-model", VOCAB512, "--train-data", CORPUS, "--ctx", "16", "--embd", "16", "--head", "2",
         "--layer", "2", "--ff", "32", "-b", "2", "-s", "1", "-t", "1", "--checkpoint-in", "", "--save-every", "0",
         "--model-out", "", "--checkpoint-out", ""]
FAST = ["--warmup", "8", "--adam-alpha", "0.01"]           # the loss falls from 6.24 to ~3.6 in 64 iterations
AGGRESSIVE = ["--warmup", "2", "--adam-alpha", "0.01"]     # README's "divergence" schedule
FLAGS = {"flash+ckpt": [], "flash": ["--no-checkpointing"], "ckpt": ["--no-flash"],
         "plain": ["--no-flash", "--no-checkpointing"]}

# name -> options after SMALL (no file written)
RUNS = {**{f"fast64/{k}": FAST + ["--adam-iter", "64"] + v for k, v in FLAGS.items()},
        "aggressive64": AGGRESSIVE + ["--adam-iter", "64"],
        "threads2": FAST + ["--adam-iter", "2", "-t", "2"],
        # --sample-start: one sample per line; lines and the next ones; overlapping samples at random offsets
        "sample_start/lines": FAST + ["--adam-iter", "16", "--sample-start", "\\n", "--escape"],
        "sample_start/fill": FAST + ["--adam-iter", "16", "--sample-start", "\\n", "--escape",
                                     "--include-sample-start", "--fill-with-next-samples"],
        "sample_start/overlap": FAST + ["--adam-iter", "16", "--sample-start", "the", "--overlapping-samples",
                                        "--fill-with-next-samples", "--sample-random-offsets", "--separate-with-eos",
                                        "--no-separate-with-bos"],
        "sample_start/absent": FAST + ["--adam-iter", "4", "--sample-start", "zebra", "--fill-with-next-samples"]}
# the checkpoint runs: FAST for 32 iterations, then 32 more from the checkpoint
HALF = FAST + ["--adam-iter", "32"]


def checkpoint_options(path_in: str, path_out: str = "") -> list[str]:
    """SMALL + HALF reading `path_in` ('' for a fresh model) and writing `path_out` (its final checkpoint)."""
    return SMALL[:SMALL.index("--checkpoint-in")] + ["--checkpoint-in", path_in, "--save-every", "0",
                                                     "--model-out", "", "--checkpoint-out", path_out] + HALF


_ITER = re.compile(r"train_opt_callback: iter=\s*(\d+) sample=(\d+)/(\d+) sched=([-\d.]+) loss=([-\d.naif]+)")
_SIZE = re.compile(r"main: (compute_size|work_size|input_size|opt_size) *= (\d+) bytes")


def parse_log(text: str) -> dict:
    """The figures of a train-text-from-scratch stdout: sizes, tokens and samples, tokenize_file's
    warnings, and per iteration (iteration, sample, sample count, sched, loss) as printed."""
    out = {k: int(v) for k, v in _SIZE.findall(text)}
    m = re.search(r"number of training tokens: (\d+)", text)
    out["n_tokens"] = int(m.group(1)) if m else None
    m = re.search(r"tokenize_file: total number of samples: (\d+)", text)
    out["n_samples"] = int(m.group(1)) if m else None
    out["tokenize_warnings"] = re.findall(r"tokenize_file: warning: (.*)", text)
    out["iters"] = [[int(i), int(s), int(n), float(sc), float(loss)] for i, s, n, sc, loss in _ITER.findall(text)]
    out["data_changed"] = "train data seems to have changed" in text
    return out
