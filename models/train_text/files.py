"""train-text-from-scratch's files: the llama GGUF model (save_llama_model_gguf / load_llama_model_gguf)
and the checkpoint (the model plus train.cpp's training and optimizer state), key for key."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from gguf import GGUFValueType as VT

import graphcore as gc
from graphcore.gguf_io import GGUFError, gguf_read, gguf_write

from .model import TrainHparams, init_model

LLAMA_FTYPE_ALL_F32 = 0
TRAINING_TYPE_TRAIN_MODEL = "train_model"


@dataclass
class TrainState:
    """train.cpp's train_state (the optimizer context is kept beside it, in `opt`)."""
    opt: object = None
    train_its: int = 0
    train_samples: int = 0
    train_tokens: int = 0
    train_epochs: int = 0
    shuffle_samples_hash: int = 0
    shuffle_rng_state_current: str = ""
    shuffle_rng_state_next: str = ""
    shuffle_sample_count: int = 0
    shuffle_next_sample: int = 0


def _u32(v):
    return (int(v) & 0xFFFFFFFF, VT.UINT32)


def _u64(v):
    return (int(v) & 0xFFFFFFFFFFFFFFFF, VT.UINT64)


def _f32(v):
    return (float(v), VT.FLOAT32)


def vocab_metadata(vocab) -> dict:
    """The tokenizer keys save_llama_model_gguf copies from the vocabulary file (`vocab`: a GGUFFile)."""
    tokens = vocab.get("tokenizer.ggml.tokens", required=True, kind=list)
    scores = vocab.get("tokenizer.ggml.scores", required=True, kind=list)
    types = vocab.get("tokenizer.ggml.token_type", required=True, kind=list)
    model = vocab.get("tokenizer.ggml.model", required=True, kind=str)
    if model != "llama":
        raise GGUFError(f"{vocab.path}: tokenizer.ggml.model is '{model}'; train-text supports the llama "
                        "(SPM) vocabulary only")
    md = {"tokenizer.ggml.model": model,
          "tokenizer.ggml.scores": np.asarray(scores, np.float32),
          "tokenizer.ggml.token_type": np.asarray(types, np.int32),
          "tokenizer.ggml.tokens": (list(tokens), VT.ARRAY)}
    for key, default in (("bos_token_id", 1), ("eos_token_id", 2), ("unknown_token_id", 0),
                         ("seperator_token_id", -1), ("padding_token_id", -1)):
        md["tokenizer.ggml." + key] = _u32(vocab.get("tokenizer.ggml." + key, default, kind=int))
    return md


def model_metadata(hp: TrainHparams, vocab) -> dict:
    md = {"general.architecture": "llama", "general.file_type": _u32(LLAMA_FTYPE_ALL_F32),
          "llama.context_length": _u32(hp.n_ctx), "llama.embedding_length": _u32(hp.n_embd),
          "llama.feed_forward_length": _u32(hp.n_ff), "llama.attention.head_count": _u32(hp.n_head),
          "llama.block_count": _u32(hp.n_layer), "llama.rope.dimension_count": _u32(hp.n_rot),
          "llama.attention.layer_norm_rms_epsilon": _f32(hp.f_norm_rms_eps),
          "llama.rope.freq_base": _f32(hp.rope_freq_base),
          "llama.rope.scale_linear": _f32(np.float32(1.0) / np.float32(hp.rope_freq_scale))}
    md.update(vocab_metadata(vocab))
    return md


def save_llama_model_file(path, vocab, model) -> None:
    """save_llama_model_file: an F32 llama GGUF that llama.cpp's main runs."""
    gguf_write(path, model_metadata(model.hparams, vocab), dict(model.named_tensors()))


def train_state_metadata(train: TrainState) -> tuple:
    """(metadata, tensors) of save_train_state_gguf (training.* and optimizer.* keys, Adam's moments)."""
    opt = train.opt
    md = {"training.file_version": _u32(1), "training.iteration_count": _u64(train.train_its),
          "training.sample_count": _u64(train.train_samples), "training.token_count": _u64(train.train_tokens),
          "training.epoch_count": _u64(train.train_epochs),
          "training.shuffle.samples_hash": _u64(train.shuffle_samples_hash),
          "training.shuffle.rng_state": train.shuffle_rng_state_current,
          "training.shuffle.sample_count": _u64(train.shuffle_sample_count),
          "training.shuffle.next_sample": _u64(train.shuffle_next_sample),
          "optimizer.file_version": _u32(0), "optimizer.convergence_past_count": _u32(opt.params.past),
          "optimizer.parameter_count": _u64(opt.nx), "optimizer.iteration_count": _u32(opt.iter),
          "optimizer.just_initialized": bool(opt.just_initialized), "optimizer.type": "adam",
          "optimizer.adam.best_loss": _f32(opt.fx_best), "optimizer.adam.previous_loss": _f32(opt.fx_prev),
          "optimizer.adam.no_improvement_count": _u32(opt.n_no_improvement)}
    tensors = {"optimizer.adam.first_moments": opt.m, "optimizer.adam.second_moments": opt.v}
    if opt.pf is not None:
        tensors["optimizer.adam.past_loss_values"] = opt.pf
    return md, tensors


def save_checkpoint_file(path, vocab, model, train: TrainState) -> None:
    """save_checkpoint_file: training.type, the model, the training and optimizer state."""
    md = {"training.type": TRAINING_TYPE_TRAIN_MODEL}
    md.update(model_metadata(model.hparams, vocab))
    tmd, ttensors = train_state_metadata(train)
    md.update(tmd)
    tensors = dict(model.named_tensors())
    tensors.update(ttensors)
    gguf_write(path, md, tensors)


def _expect(f, key, kind, expected, why):
    """The value of a required key, which must equal `expected` (GGUFError saying `why` otherwise)."""
    v = f.get(key, required=True, kind=kind)
    if v != expected:
        raise GGUFError(f"{f.path}: {key} is {v!r}; {why}")
    return v


def _hparams_from(f, n_ctx_default: int) -> TrainHparams:
    _expect(f, "general.architecture", str, "llama", "expected 'llama'")
    _expect(f, "general.file_type", int, LLAMA_FTYPE_ALL_F32, "train-text reads all-F32 models only (0)")
    g = lambda k, d=None: f.get("llama." + k, d, required=d is None, kind=int)   # noqa: E731
    hp = TrainHparams(n_ctx=g("context_length", n_ctx_default), n_embd=g("embedding_length"),
                      n_ff=g("feed_forward_length"), n_head=g("attention.head_count"), n_layer=g("block_count"))
    hp.n_rot = g("rope.dimension_count", hp.n_embd // max(hp.n_head, 1))
    hp.f_norm_rms_eps = f.get("llama.attention.layer_norm_rms_epsilon", hp.f_norm_rms_eps, kind=float)
    hp.rope_freq_base = f.get("llama.rope.freq_base", hp.rope_freq_base, kind=float)
    scale = f.get("llama.rope.scale_linear", 1.0, kind=float)
    if scale != 1.0:
        hp.rope_freq_scale = float(np.float32(1.0) / np.float32(scale))
    return hp


def load_checkpoint_file(path, n_vocab: int, n_ctx_default: int, opt_params):
    """load_checkpoint_file: (model, TrainState) from a checkpoint or a plain llama model of this
    program's layout, or None when the file does not exist (train from scratch). Shapes are checked
    against the file's hyper-parameters and the vocabulary's size: a mismatch raises GGUFError."""
    if not path or not os.path.exists(path):
        return None
    f = gguf_read(path)
    hp = _hparams_from(f, n_ctx_default)
    hp.n_vocab = n_vocab
    try:
        hp.check()
    except ValueError as e:
        raise GGUFError(f"{path}: {e}") from None
    model = init_model(hp)
    for name, t in model.named_tensors():
        t.numpy()[...] = f.tensor(name, t.ne).numpy()
    train = TrainState(opt=gc.OptContext())
    if "training.file_version" not in f.metadata:
        return model, train, False
    version = f.get("training.file_version", kind=int)
    if version != 1:
        raise GGUFError(f"{path}: training.file_version {version} is not supported (1)")
    ttype = f.get("training.type", TRAINING_TYPE_TRAIN_MODEL, kind=str)
    if ttype != TRAINING_TYPE_TRAIN_MODEL:
        raise GGUFError(f"{path}: training.type is '{ttype}', expected '{TRAINING_TYPE_TRAIN_MODEL}'")
    gi = lambda k, d=None: f.get(k, d, required=d is None, kind=int)    # noqa: E731
    train.train_its, train.train_samples = gi("training.iteration_count"), gi("training.sample_count")
    train.train_tokens, train.train_epochs = gi("training.token_count"), gi("training.epoch_count")
    train.shuffle_samples_hash = gi("training.shuffle.samples_hash", 0)
    train.shuffle_rng_state_current = f.get("training.shuffle.rng_state", "", kind=str)
    train.shuffle_sample_count = gi("training.shuffle.sample_count", 0)
    train.shuffle_next_sample = gi("training.shuffle.next_sample", 0)
    _load_opt(f, train.opt, opt_params, model.parameter_count())
    return model, train, True


def _load_opt(f, opt, params, nx):
    """load_opt_context_gguf (Adam only)."""
    _expect(f, "optimizer.file_version", int, 0, "expected 0")
    _expect(f, "optimizer.type", str, "adam", "train-text resumes Adam only")
    _expect(f, "optimizer.parameter_count", int, nx, f"the model has {nx} parameters")
    params.past = f.get("optimizer.convergence_past_count", required=True, kind=int)
    gc.opt_init(None, opt, params, nx)
    opt.iter = f.get("optimizer.iteration_count", required=True, kind=int)
    opt.just_initialized = f.get("optimizer.just_initialized", required=True, kind=bool)
    opt.fx_best = np.float32(f.get("optimizer.adam.best_loss", required=True, kind=float))
    opt.fx_prev = np.float32(f.get("optimizer.adam.previous_loss", required=True, kind=float))
    opt.n_no_improvement = f.get("optimizer.adam.no_improvement_count", required=True, kind=int)
    opt.m[:] = f.tensor("optimizer.adam.first_moments", [nx]).numpy()
    opt.v[:] = f.tensor("optimizer.adam.second_moments", [nx]).numpy()
    if opt.pf is not None:
        opt.pf[:] = f.tensor("optimizer.adam.past_loss_values", [params.past]).numpy()
