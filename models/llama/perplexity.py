"""Perplexity as llama.cpp 4480542's `perplexity` program defines it.

The whole text is tokenized with BOS (special pieces not parsed); it is cut into floor(n/n_ctx) chunks of
n_ctx tokens; each chunk is evaluated from an empty KV cache with its first token replaced by BOS; only
the predictions of the second half are scored: logits row j (first = n_ctx/2 <= j < n_ctx - 1) against
token j + 1, nll += -log_softmax (max and sum in llama.cpp's precisions). After each chunk the running
estimate exp(nll/count) is reported; at the end PPL = exp(nll/count) and its error
PPL * sqrt((mean(nll^2) - mean(nll)^2) / (count - 1)).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PerplexityResult:
    ppl: float
    error: float            # NaN when the variance estimate is not positive (llama.cpp prints a warning)
    count: int
    n_tokens: int
    chunks: list = field(default_factory=list)      # running estimate after each chunk


def log_softmax_nll(logits, targets):
    """-log softmax(logits[i])[targets[i]] per row, as llama.cpp's log_softmax: float32 max, exp of
    (logit - max) in float32 summed in float64."""
    logits = np.asarray(logits, np.float32)
    mx = logits.max(axis=1, keepdims=True)
    sum_exp = np.exp(logits - mx).astype(np.float64).sum(axis=1)
    picked = (logits[np.arange(len(targets)), targets] - mx[:, 0]).astype(np.float64)
    return -(picked - np.log(sum_exp))


def perplexity(session, tokens, n_ctx, bos_id, add_bos=True, on_chunk=None):
    """Run the chunks through `session` (a LlamaSession with at least n_ctx positions). `on_chunk(i,
    n_chunk, running_ppl, seconds)` is called after each chunk. Raises ValueError on a text shorter
    than 2 * n_ctx tokens, as llama.cpp refuses it."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2 * n_ctx:
        raise ValueError(f"perplexity: you need at least {2 * n_ctx} tokens to evaluate perplexity with a "
                         f"context of {n_ctx}; the text tokenizes to only {len(tokens)} tokens")
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    running = []
    for i in range(n_chunk):
        t0 = time.perf_counter()
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
        if add_bos:
            chunk[0] = bos_id
        session.clear()
        logits = session.eval(chunk, all_logits=True)
        v = log_softmax_nll(logits[first:n_ctx - 1], tokens[i * n_ctx + first + 1:(i + 1) * n_ctx])
        for x in v:                   # accumulated in order, as llama.cpp's double sums
            nll += x
            nll2 += x * x
        count += n_ctx - first - 1
        running.append(math.exp(nll / count))
        if on_chunk is not None:
            on_chunk(i, n_chunk, running[-1], time.perf_counter() - t0)
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else float("nan")
    return PerplexityResult(ppl, err, count, len(tokens), running)
