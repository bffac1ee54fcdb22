"""common/train.cpp's data pipeline: tokenize_file (samples of the tokenized corpus), the mt19937 shuffle
with its state as text (mt19937_get_state / set_state), compute_samples_hash (libstdc++'s std::hash),
get_example_targets_batch, and the learning-rate schedule."""
from __future__ import annotations

import os

import numpy as np

from graphcore_models.llama.tokenizer import utf8_len

_F32 = np.float32
_M64 = (1 << 64) - 1


class DataError(ValueError):
    """A training corpus that cannot be used (missing, empty, shorter than the context)."""


# =============================================================================================
# std::mt19937 with its state as libstdc++ prints it
# =============================================================================================
def mt19937_from_state(state: str) -> np.random.RandomState:
    """std::mt19937 read from `rng_state` (operator>>: the 624 words, then the position). numpy's
    legacy generator is the same MT19937 with the same tempering, so the state carries over."""
    try:
        words = [int(w) for w in state.split()]
    except ValueError:
        raise DataError(f"train-text: shuffle rng state is not an mt19937 state: {state[:40]!r}...") from None
    if len(words) != 625 or not 0 <= words[624] <= 624:
        raise DataError(f"train-text: shuffle rng state has {len(words)} numbers, expected 625 (mt19937)")
    rs = np.random.RandomState()
    rs.set_state(("MT19937", np.array(words[:624], dtype=np.uint32), words[624], 0, 0.0))
    return rs


def mt19937_get_state(rs: np.random.RandomState) -> str:
    _, key, pos, _, _ = rs.get_state()
    return " ".join(str(int(k)) for k in key) + f" {int(pos)}"


def mt19937_seed_to_state(seed: int) -> str:
    return mt19937_get_state(np.random.RandomState(int(seed) & 0xFFFFFFFF))


def _next_u32(rs, n):
    return rs.randint(0, 2 ** 32, size=n, dtype=np.uint64)


def shuffle_samples(rng_state: str, begins, sizes):
    """shuffle_samples: sample order by one mt19937 draw per sample (ties by index), then one random
    offset per sample. Returns (offs, begins, sizes, next_state)."""
    begins, sizes = np.asarray(begins, np.int64), np.asarray(sizes, np.int64)
    count = len(sizes)
    if count == 0:
        return begins.copy(), begins.copy(), sizes.copy(), rng_state
    rs = mt19937_from_state(rng_state)
    rnd = _next_u32(rs, count)
    idcs = np.lexsort((np.arange(count), rnd))
    r = _next_u32(rs, count).astype(np.float64) / float(2 ** 32 - 2)      # rng() / (rng.max() - 1)
    offs = ((sizes[idcs] - 1).astype(np.float64) * r).astype(np.int64)
    return offs, begins[idcs], sizes[idcs], mt19937_get_state(rs)


# =============================================================================================
# compute_samples_hash: libstdc++'s std::hash (murmur-style _Hash_bytes; identity for integers)
# =============================================================================================
def _shift_mix(v):
    return v ^ (v >> 47)


def hash_bytes(data: bytes, seed: int = 0xC70F6907) -> int:
    """libstdc++'s _Hash_bytes for a 64-bit size_t (std::hash<std::string> uses this seed)."""
    mul = (0xC6A4A793 << 32) + 0x5BD1E995
    n = len(data)
    h = (seed ^ (n * mul)) & _M64
    n8 = n & ~7
    for i in range(0, n8, 8):
        d = (_shift_mix((int.from_bytes(data[i:i + 8], "little") * mul) & _M64) * mul) & _M64
        h = ((h ^ d) * mul) & _M64
    if n & 7:
        h = ((h ^ int.from_bytes(data[n8:], "little")) * mul) & _M64
    h = (_shift_mix(h) * mul) & _M64
    return _shift_mix(h)


def compute_samples_hash(fn: str, begins, sizes) -> int:
    def combine(h1, h2):
        return (h1 ^ (h2 << 1)) & _M64
    h = combine(hash_bytes(os.fsencode(fn)), len(sizes))
    for b, s in zip(begins, sizes):
        h = combine(combine(h, int(b)), int(s))
    return h


# =============================================================================================
# tokenize_file
# =============================================================================================
def check_corpus(filename) -> bytes:
    """The training data's bytes; a DataError when the file cannot be read or is empty."""
    try:
        with open(filename, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise DataError(f"train-text: cannot read training data '{filename}': {e.strerror}") from None
    if not buf:
        raise DataError(f"train-text: training data '{filename}' is empty")
    return buf


def tokenize_file(tokenizer, filename, sample_start: str, include_sample_start: bool, overlapping_samples: bool,
                  context_length: int, out=None):
    """tokenize_file: (tokens, samples_begin, samples_size). Without a sample_start pattern the whole
    file is one token stream with a sample starting at every token; with one, each occurrence starts
    a sample tokenized on its own. Prints the C program's warnings to `out`."""
    def say(s):
        if out is not None:
            out.write(f"tokenize_file: {s}\n")
    buf = check_corpus(filename)
    if not sample_start:
        tokens = np.asarray(tokenizer.encode(buf, bos=False), dtype=np.int32)
        begins, sizes = [0], [min(context_length, len(tokens))]
        end = len(tokens) - context_length if len(tokens) >= context_length else 0
        begins += list(range(1, end))
        sizes += [context_length] * max(0, end - 1)
    else:
        tokens, begins, sizes = _tokenize_samples(tokenizer, buf, sample_start.encode("utf-8"),
                                                  include_sample_start, overlapping_samples, context_length, say)
    say(f"total number of samples: {len(begins)}")
    return tokens, np.asarray(begins, np.int64), np.asarray(sizes, np.int64)


def _utf8_units(buf: bytes) -> np.ndarray:
    """mark_utf8_units: for each byte, how many bytes of its character come before it."""
    units = np.zeros(len(buf) + 1, np.int64)
    offs = 0
    while offs < len(buf):
        n = utf8_len(buf[offs])
        units[offs + 1:offs + n] = np.arange(1, len(units[offs + 1:offs + n]) + 1)
        offs += n
    return units


def _tokenize_samples(tokenizer, buf, pattern, include_sample_start, overlapping_samples, context_length, say):
    starts = []
    p = buf.find(pattern)
    while p >= 0:
        starts.append(p)
        p = buf.find(pattern, p + len(pattern))
    if not starts:
        say(f"warning: sample start pattern '{pattern.decode('utf-8', 'replace')}' not found. "
            "inserting single sample at data begin")
        starts = [0]
    offset = 0 if include_sample_start else len(pattern)
    max_token_text_size = max(len(piece) for piece in tokenizer.pieces)
    context_byte_len = max_token_text_size * context_length
    units = _utf8_units(buf)
    tokens, begins, sizes = [], [], []
    too_big = too_small = empty = 0
    min_size, max_size = None, 0
    for i, s in enumerate(starts):
        b = s + offset
        e = min(len(buf), b + context_byte_len) if overlapping_samples else (
            starts[i + 1] if i + 1 < len(starts) else len(buf))
        if e < len(buf) and units[e] > 0:      # inside a character: on to the next one's start
            while e < len(buf) and units[e] > 0:
                e += 1
        begins.append(len(tokens))
        if e <= b:
            empty += 1
            sizes.append(0)
            continue
        ids = tokenizer.encode(buf[b:e], bos=False)
        too_big += len(ids) > context_length
        too_small += len(ids) < context_length
        max_size = max(max_size, len(ids))
        min_size = len(ids) if min_size is None else min(min_size, len(ids))
        sizes.append(len(ids))
        tokens += ids
    if too_big:
        say(f"warning: found {too_big} samples (max length {max_size}) that exceed context length of "
            f"{context_length}. samples will be cut off.")
    if too_small:
        say(f"warning: found {too_small} samples (min length {min_size}) that are shorter than context length "
            f"of {context_length}.")
    if empty:
        say(f"warning: found {empty} empty samples.")
    return np.asarray(tokens, np.int32), begins, sizes


# =============================================================================================
# batches and the schedule
# =============================================================================================
def get_example_targets_batch(tokens_input: np.ndarray, target_probs: np.ndarray, example_id: int, offs, begins,
                              sizes, train_data, bos: int, eos: int, separate_with_eos: bool,
                              separate_with_bos: bool, fill_with_next_samples: bool,
                              sample_random_offsets: bool, first_row: int = 0, n_batch: int | None = None) -> int:
    """get_example_targets_batch: writes tokens_input (n_rows, n_tokens) and the one-hot target_probs
    (n_rows, n_tokens, n_vocab) for the samples from example_id on; returns the samples used.
    Data-parallel: the batch has n_batch rows, of which only rows first_row .. first_row + n_rows - 1
    (a rank's share) are written; the samples used are the whole batch's."""
    n_rows, n_tokens, n_vocab = target_probs.shape
    n_batch = n_rows if n_batch is None else n_batch
    count = len(sizes)
    if count == 0:
        raise DataError("train-text: no training samples")
    used = 0
    target_probs[...] = 0.0
    for k in range(n_batch):
        idx = (example_id + used) % count
        off = int(offs[idx]) if sample_random_offsets else 0
        begin, size = int(begins[idx]), int(sizes[idx])
        used += 1
        row = k - first_row
        mine = 0 <= row < n_rows
        if mine:
            tokens_input[row, 0] = bos
        sep_eos, sep_bos = not separate_with_eos, not separate_with_bos
        for i in range(n_tokens):
            token = eos
            if off >= size and fill_with_next_samples:
                if not sep_eos:
                    sep_eos = True
                elif not sep_bos:
                    sep_bos = True
                    token = bos
                else:
                    sep_eos, sep_bos = not separate_with_eos, not separate_with_bos
                    off = 0
                    idx = (example_id + used) % count
                    begin, size = int(begins[idx]), int(sizes[idx])
                    used += 1
            if off < size:
                token = min(max(int(train_data[begin + off]), 0), n_vocab - 1)
                off += 1
            if mine:
                target_probs[row, i, token] = 1.0
                if i + 1 < n_tokens:
                    tokens_input[row, i + 1] = token
    return used


def cosine_decay(step: int, decay_steps: int, minimum: float) -> np.float32:
    step = min(step, decay_steps)
    c = _F32(0.5) * (_F32(1.0) + np.cos(_F32(_F32(3.14159265359) * _F32(step)) / _F32(decay_steps), dtype=_F32))
    return _F32((_F32(1.0) - _F32(minimum)) * c + _F32(minimum))


def cosine_decay_restart(step, decay_steps, minimum, restart_step_mult):
    while step > decay_steps:
        step -= decay_steps
        decay_steps = int(_F32(restart_step_mult) * _F32(decay_steps))
    return cosine_decay(step, decay_steps, minimum)


def learning_schedule(step, warmup_steps, cos_decay_steps, learning_rate, overall_minimum, cos_decay_minimum,
                      cos_decay_restart_step_mult, enable_restart) -> float:
    """learning_schedule: linear warmup, then cosine decay (with restarts when enabled), floored at
    overall_minimum / learning_rate; float32 as the C code computes it."""
    if step < warmup_steps:
        r = _F32(step) / _F32(warmup_steps)
    elif enable_restart:
        r = cosine_decay_restart(step - warmup_steps, cos_decay_steps, cos_decay_minimum, cos_decay_restart_step_mult)
    else:
        r = cosine_decay(step, cos_decay_steps, cos_decay_minimum)
    mn = _F32(overall_minimum) / _F32(learning_rate)
    return float(_F32(mn + _F32(r) * (_F32(1.0) - mn)))
