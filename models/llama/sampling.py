"""Choosing the next token: llama.cpp's repetition penalty, then greedy (temperature 0) or top-k, top-p and
temperature sampling.

Greedy with the penalty at 1.0 is what `main --temp 0 --repeat-penalty 1.0` does, token for token. The
penalty follows llama_sample_repetition_penalties (each distinct id among the last `last_n` tokens,
its logit divided by the penalty when positive, multiplied when not; llama.cpp's history starts as
`last_n` zeros, so id 0 is penalised too until enough tokens arrive). Random sampling uses numpy's
generator (seeded), so its draws differ from llama.cpp's std::mt19937 ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None


class Sampler:
    def __init__(self, params: SamplingParams):
        p = params
        if p.temp < 0 or p.top_k < 0 or not 0.0 < p.top_p <= 1.0 or p.repeat_penalty <= 0 or p.repeat_last_n < 0:
            raise ValueError(f"sampling: need temp >= 0, top_k >= 0, 0 < top_p <= 1, repeat_penalty > 0, "
                             f"repeat_last_n >= 0; got {p}")
        self.params = p
        self.rng = np.random.default_rng(p.seed)
        self.history = [0] * p.repeat_last_n

    def accept(self, tid):
        """Record a token (prompt or generated) for the repetition penalty."""
        if self.params.repeat_last_n:
            self.history.append(int(tid))
            del self.history[0]

    def sample(self, logits):
        p = self.params
        logits = np.array(logits, dtype=np.float32)
        if p.repeat_penalty != 1.0 and p.repeat_last_n:
            ids = np.unique(np.asarray(self.history, dtype=np.int64))
            vals = logits[ids]
            logits[ids] = np.where(vals <= 0, vals * np.float32(p.repeat_penalty), vals / np.float32(p.repeat_penalty))
        if p.temp == 0:
            return int(np.argmax(logits))           # first of equal maxima, as llama_sample_token_greedy
        order = np.argsort(-logits, kind="stable")
        if p.top_k > 0:
            order = order[:p.top_k]
        x = logits[order].astype(np.float64) / p.temp
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)       # smallest set reaching top_p
        probs = probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(keep, p=probs)])
