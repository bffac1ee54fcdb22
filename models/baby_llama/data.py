"""The sine-wave training data (example_tokens, get_example_targets(_batch), lshift_examples),
sampling and the original's printing helpers."""
from __future__ import annotations

import sys

import numpy as np

import graphcore as gc

_F32 = np.float32


# =============================================================================================
# data
# =============================================================================================
def _arr(t):
    return t.numpy() if isinstance(t, gc.Tensor) else np.asarray(t)


def example_tokens(example_id: int, n_tokens: int, n_vocab: int) -> np.ndarray:
    """The n_tokens target tokens of an example (the sine wave), computed in float32 as the original."""
    return _examples_tokens(np.array([example_id]), n_tokens, n_vocab)[0]


def _examples_tokens(example_ids: np.ndarray, n_tokens: int, n_vocab: int) -> np.ndarray:
    """example_tokens of several examples at once, [len(example_ids), n_tokens] (the same float32
    operations on each element: a batch costs one numpy call per step instead of one per sequence)."""
    i = np.arange(1, n_tokens + 1, dtype=_F32)
    x = example_ids.astype(_F32)[:, None] + i * _F32(3.14159) * _F32(2.0) * _F32(1.0) * _F32(0.5) / _F32(n_tokens)
    y = np.sin(x.astype(np.float64)).astype(_F32)                   # sinf
    z = (y + _F32(1.0)) * _F32(0.5)
    z = np.clip(z, _F32(0.0), _F32(1.0))
    tok = 1 + (z * _F32(n_vocab - 1)).astype(np.int64)               # (int) truncates; z >= 0
    return np.maximum(1, np.minimum(tok, n_vocab - 1)).astype(np.int32)


def _set_targets(toks, tok, tgt) -> None:
    """Tokens toks [.., n_tokens] into tokens (shifted right after a 0) and targets (+1 at each token)."""
    tgt[...] = -1.0
    np.put_along_axis(tgt, toks[..., None].astype(np.intp), _F32(1.0), axis=-1)
    tok[..., 0] = 0
    tok[..., 1:] = toks[..., :-1]


def get_example_targets(example_id: int, tokens_input, targets) -> None:
    """tokens_input [n_tokens] I32 and targets [n_vocab, n_tokens] F32 (tensors or arrays shaped
    (n_tokens,) and (n_tokens, n_vocab)): tokens start with 0 and follow the wave; targets are -1
    with +1 at row i-1, column token_i."""
    tok, tgt = _arr(tokens_input), _arr(targets)
    _set_targets(example_tokens(example_id, tok.shape[-1], tgt.shape[-1]), tok, tgt)


def get_example_targets_batch(ctx, example_id: int, tokens_input, targets, first_row: int = 0,
                              n_batch: int | None = None) -> None:
    """tokens_input [n_tokens, n_batch], targets [n_vocab, n_tokens, n_batch]: sequence k is
    example example_id*n_batch + k. (ctx is kept for the original's signature; the views are numpy's.)
    Data-parallel, the tensors hold rows first_row.. of a batch of n_batch sequences (a rank's share)."""
    tok, tgt = _arr(tokens_input), _arr(targets)
    if tok.ndim != 2 or tgt.ndim != 3 or tok.shape != tgt.shape[:2]:
        raise ValueError(f"get_example_targets_batch: tokens {tok.shape} and targets {tgt.shape} do not match")
    n_batch = tok.shape[0] if n_batch is None else n_batch
    ids = example_id * n_batch + first_row + np.arange(tok.shape[0])
    _set_targets(_examples_tokens(ids, tok.shape[1], tgt.shape[2]), tok, tgt)


def lshift_examples(tokens_input, targets, n_shift: int) -> None:
    """Shift tokens and target rows n_shift places towards the front (the tail stays as it was)."""
    tok, tgt = _arr(tokens_input), _arr(targets)
    n = tok.shape[-1] - n_shift
    if n > 0:
        tok[:n] = tok[n_shift:n_shift + n].copy()
        tgt[:n] = tgt[n_shift:n_shift + n].copy()


# =============================================================================================
# sampling and printing
# =============================================================================================
def _softmax_rows(lg: np.ndarray):
    """argmax (first maximum) and probabilities of each row, in float32 as the original."""
    best = np.argmax(lg, axis=-1).astype(np.int32)
    mx = np.max(lg, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(lg == -np.inf, _F32(0.0), np.exp((lg - mx).astype(np.float64)).astype(_F32)).astype(_F32)
    psum = np.zeros(lg.shape[:-1] + (1,), dtype=_F32)
    for k in range(lg.shape[-1]):                                    # float sum in order
        psum[..., 0] += p[..., k]
    return best, (p / psum).astype(_F32)


def sample_softmax(logits, probs, best_samples) -> None:
    """Greedy samples of logits [n_vocab, n] into best_samples [n] and softmax into probs [n_vocab, n]."""
    lg = _arr(logits)
    best, p = _softmax_rows(lg)
    _arr(best_samples)[...] = best
    _arr(probs)[...] = p


def sample_softmax_batch(ctx, logits, probs, best_samples) -> None:
    """logits and probs [n_vocab, n_tokens, n_batch], best_samples [n_tokens, n_batch]."""
    lg = _arr(logits)
    if lg.ndim != 3 or _arr(best_samples).shape != lg.shape[:2]:
        raise ValueError(f"sample_softmax_batch: logits {lg.shape} and samples {_arr(best_samples).shape} do not match")
    best, p = _softmax_rows(lg)
    _arr(best_samples)[...] = best
    _arr(probs)[...] = p


def _out(file):
    return sys.stdout if file is None else file


def format_token(token: int, n_vocab: int) -> str:
    return " " * token + "X" + " " * (n_vocab - token - 1)


def print_token(token: int, n_vocab: int, file=None) -> None:
    _out(file).write(format_token(token, n_vocab) + "\n")


def print_tokens(tokens, n_vocab: int, file=None) -> None:
    """One line per token of the first row (tokens->ne[0] of them)."""
    t = _arr(tokens)
    row = t.reshape(-1, t.shape[-1])[0] if t.ndim > 1 else t
    _out(file).write("".join(format_token(int(x), n_vocab) + "\n" for x in row))


def print_row(probs, i: int, file=None) -> None:
    p = _arr(probs).reshape(-1, _arr(probs).shape[-1])
    _out(file).write("".join(" %.2f" % float(v) for v in p[i]) + "\n")


def print_matrix(probs, file=None) -> None:
    p = _arr(probs)
    p = p.reshape(-1, p.shape[-1])
    _out(file).write("".join("".join(" %.2f" % float(v) for v in row) + "\n" for row in p))
