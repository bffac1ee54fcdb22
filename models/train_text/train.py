"""The training run of train-text-from-scratch's main(): the model from a checkpoint or random, the
graphs, the tokenized and shuffled samples, Adam through train.cpp's train_opt_callback (batches,
schedule, progress lines, periodic saves), and the final save."""
from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import graphcore as gc
from graphcore.cli_support import Progress
from graphcore.gguf_io import gguf_read
from graphcore_models.llama.tokenizer import SPMTokenizer

from .data import (DataError, check_corpus, compute_samples_hash, get_example_targets_batch, learning_schedule,
                   mt19937_seed_to_state, shuffle_samples, tokenize_file)
from .files import TrainState, load_checkpoint_file, save_checkpoint_file, save_llama_model_file
from .model import TrainHparams, build_train_graphs, init_model, randomize_model

LLAMA_DEFAULT_SEED = 0xFFFFFFFF


def print_duration(ms: float) -> str:
    """print_duration: "12.3ms" under a second, else [Nd ]HH:MM:SS."""
    if ms < 1000.0:
        return "%.1fms" % ms
    s = int(ms) // 1000
    d, h, m, sec = s // 86400, s % 86400 // 3600, s % 3600 // 60, s % 60
    return (f"{d}d " if d > 0 else "") + "%02d:%02d:%02d" % (h, m, sec)


def train_filename(filename: str, pattern: str, latest: str, iteration: int) -> str:
    """get_train_filename: the first `pattern` in filename replaced by the iteration (or `latest`)."""
    return filename.replace(pattern, str(iteration) if iteration >= 0 else latest, 1) if pattern else filename


def adam_params(a):
    """The optimizer settings main() takes from the options."""
    p = gc.opt_default_params(gc.OPT_ADAM)
    p.graph_size, p.n_threads = 16384, a.threads
    p.past, p.delta, p.max_no_improvement = a.opt_past, a.opt_delta, a.opt_max_no_improvement
    p.n_gradient_accumulation = a.grad_acc
    p.adam.n_iter, p.adam.sched, p.adam.alpha = a.adam_iter, 1.0, a.adam_alpha
    p.adam.decay, p.adam.decay_min_ndim = a.adam_decay, a.adam_decay_min_ndim
    p.adam.beta1, p.adam.beta2, p.adam.gclip, p.adam.eps_f = a.adam_beta1, a.adam_beta2, a.adam_gclip, a.adam_epsf
    return p


@dataclass
class Saver:
    """save_train_files: the checkpoint and the model, each under its iteration's name and `latest`'s.
    Data-parallel, the ranks first check their parameters are still identical; rank 0 alone writes."""
    args: object
    vocab: object
    model: object
    checkpoint_out: str = ""
    world: object = None

    def __call__(self, train: TrainState, out):
        a, it = self.args, train.opt.iter
        if self.world is not None:
            self.world.check_in_sync([t.numpy() for t in self.model.tensors()], f"at iteration {it}")
            if self.world.rank != 0:
                return
        for fn, write, what in ((self.checkpoint_out, self._checkpoint, "save_checkpoint_file"),
                                (a.model_out, self._model, "save_llama_model_file")):
            if fn:
                for i in (it, -1):
                    path = train_filename(fn, a.pattern_fn_it, a.fn_latest, i)
                    out.write(f"{what}: saving to {path}\n")
                    write(path, train)

    def _checkpoint(self, path, train):
        save_checkpoint_file(path, self.vocab, self.model, train)

    def _model(self, path, train):
        save_llama_model_file(path, self.vocab, self.model)


@dataclass
class OptCallback:
    """train_opt_callback with its train_opt_callback_data: at the first accumulation step of each
    evaluation, the timing, the periodic save, the schedule and the progress line; at every step the
    next batch of samples, and the reshuffle at the end of an epoch."""
    args: object
    train: TrainState
    saver: Saver
    graphs: object
    tokens: np.ndarray
    begins: np.ndarray
    sizes: np.ndarray
    bos: int
    eos: int
    out: object
    shuffled: tuple = ()
    first_iter: int = 0
    first_epoch: int = 0
    last_save_iter: int = 0
    iter_at_last_epoch: int = -1
    last_time: float = field(default_factory=time.perf_counter)
    millis_per_iter: float = 0.0
    interrupted: bool = False
    history: list = field(default_factory=list)
    progress: object = None
    snapshot: tuple = None
    rows: tuple = (0, None)     # data-parallel: this rank's first row and the global batch size

    def count_new_iters(self):
        a, train = self.args, self.train
        new = train.opt.iter - self.last_save_iter
        train.train_its += new
        train.train_tokens += new * a.grad_acc * a.batch * self.graphs.tokens_input.ne[0]
        self.last_save_iter = train.opt.iter
        return new

    def __call__(self, _data, accum_step, sched) -> bool:
        a, train = self.args, self.train
        opt = train.opt
        if accum_step == 0:
            if not self.interrupted:
                self._report(sched)
            self.snapshot = self._sampling_state()
        if self.interrupted:
            return True
        g = self.graphs
        used = get_example_targets_batch(
            g.tokens_input.numpy4d()[0, 0], g.target_probs.numpy4d()[0], train.shuffle_next_sample, *self.shuffled,
            self.tokens, self.bos, self.eos, a.separate_with_eos, a.separate_with_bos,
            a.fill_with_next_samples, a.sample_random_offsets, *self.rows)
        train.train_samples += used
        train.shuffle_next_sample += used
        if train.shuffle_next_sample >= train.shuffle_sample_count:
            train.train_epochs += 1
            self.out.write(f"train_opt_callback: reshuffle samples. completed epochs: {train.train_epochs}\n")
            train.shuffle_rng_state_current = train.shuffle_rng_state_next
            *self.shuffled, train.shuffle_rng_state_next = shuffle_samples(
                train.shuffle_rng_state_current, self.begins, self.sizes)
            train.shuffle_next_sample = 0
        if a.epochs > 0 and train.train_epochs - self.first_epoch >= a.epochs:
            if self.iter_at_last_epoch < 0:
                self.iter_at_last_epoch = opt.iter
            elif opt.iter > self.iter_at_last_epoch:
                return True
        return False

    def _sampling_state(self):
        t = self.train
        return (t.train_samples, t.train_epochs, t.shuffle_next_sample, t.shuffle_rng_state_current,
                t.shuffle_rng_state_next, self.shuffled)

    def rewind(self):
        """Undo the sample draws of the last evaluation. Its gradient is never used for a step (the
        optimizer stops after it), so a checkpoint saved after rewinding resumes with that very batch:
        a run resumed from it equals the straight run bit for bit. (The C program saves the state after
        the draws, and a resumed run there skips a batch.)"""
        if self.snapshot is not None:
            t = self.train
            (t.train_samples, t.train_epochs, t.shuffle_next_sample, t.shuffle_rng_state_current,
             t.shuffle_rng_state_next, self.shuffled) = self.snapshot

    def _report(self, sched):
        a, train, opt = self.args, self.train, self.train.opt
        now = time.perf_counter()
        if opt.iter > self.first_iter:
            dt = (now - self.last_time) * 1000.0
            self.millis_per_iter = dt if self.millis_per_iter == 0.0 else self.millis_per_iter * 0.3 + dt * 0.7
        remaining = (a.adam_iter - (opt.iter - self.first_iter)) * self.millis_per_iter
        if a.save_every > 0 and opt.iter - self.last_save_iter >= a.save_every:
            self.count_new_iters()
            self.saver(train, self.out)
        self.last_time = time.perf_counter()
        sched.value = learning_schedule(opt.iter, a.warmup, a.cos_decay_steps, a.adam_alpha, a.adam_min_alpha,
                                        a.cos_decay_min, a.cos_decay_restart, a.enable_restart)
        line = "train_opt_callback: iter=%6d sample=%d/%d sched=%f loss=%f" % (
            opt.iter, min(1 + train.shuffle_next_sample, train.shuffle_sample_count), train.shuffle_sample_count,
            sched.value, opt.loss_after)
        if self.millis_per_iter > 0:
            line += f" dt={print_duration(self.millis_per_iter)} eta={print_duration(remaining)}"
        improvement = opt.loss_before - opt.loss_after
        bar = int(1 + improvement * 10.0 + 0.5) if math.isfinite(improvement) else 1
        self.out.write(line + " |" + "-" * bar + ">\n")
        self.out.flush()
        if opt.iter > self.first_iter:
            self.history.append(float(opt.loss_after))
        if self.progress is not None:
            self.progress.update(opt.iter - self.first_iter, f"loss {opt.loss_after:.4f}")


def load_vocab(path):
    """The vocabulary file (GGUF) and its SPM tokenizer (read once per file version in a process:
    reading 32000 strings with the gguf package takes seconds)."""
    try:
        st = os.stat(path)
    except OSError:
        return _load_vocab(path, None, None)
    return _load_vocab(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load_vocab(path, _mtime, _size):
    vocab = gguf_read(path)
    return vocab, SPMTokenizer.from_gguf(vocab)


def _agree(world, a, seed, model, train, n_tokens, samples_hash):
    """Data-parallel start: the ranks compare options, shapes, data and training state (one error on
    every rank if they differ), then take rank 0's parameters and optimizer state."""
    facts = {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(a).items())
             if k not in ("progress", "plot_loss", "distributed")}
    facts.update({"seed": seed, "model shapes": [tuple(t.ne) for t in model.tensors()],
                  "number of training tokens": n_tokens, "samples hash": samples_hash,
                  "training state": (train.train_its, train.train_samples, train.shuffle_next_sample,
                                     train.shuffle_rng_state_current)})
    world.agree(facts)
    opt = train.opt
    world.broadcast([t.numpy() for t in model.tensors()] + [opt.m, opt.v, opt.pf])


def run(a, out=sys.stdout, world=None) -> dict:
    """main() of train-text-from-scratch for parsed options `a` (see cli.parser). With `world` (a
    graphcore.distributed.World) data-parallel: each rank computes its rows of every batch of
    a.batch samples, the gradients are summed, rank 0 alone writes files (out should be rank 0's)."""
    seed = a.seed & 0xFFFFFFFF
    if seed == LLAMA_DEFAULT_SEED:
        seed = (int(time.time()) if world is None else world.start_time) & 0xFFFFFFFF
    w = out.write
    w(f"main: seed: {seed}\n")
    if not a.only_write_model:
        check_corpus(a.train_data)          # fail before the seconds of loading and building
    vocab, tok = load_vocab(a.vocab_model)
    hp = TrainHparams(n_vocab=tok.n_vocab, n_ctx=a.ctx, n_embd=a.embd, n_head=a.head, n_layer=a.layer, n_ff=a.ff,
                      n_rot=a.embd // a.head if a.head > 0 else 0, f_norm_rms_eps=a.norm_rms_eps,
                      rope_freq_base=a.rope_freq_base, rope_freq_scale=a.rope_freq_scale)
    params = adam_params(a)
    w("main: init model\n")
    loaded = load_checkpoint_file(a.checkpoint_in, hp.n_vocab, hp.n_ctx, params)
    if loaded is not None:
        model, train, had_state = loaded
        if not had_state:
            w("load_checkpoint_gguf: loaded llama model as checkpoint\n")
            gc.opt_init(None, train.opt, params, model.parameter_count())
        if a.custom_n_ctx:
            model.hparams.n_ctx = a.ctx
        if train.opt.params.past != a.opt_past:
            raise ValueError(f"train-text: --opt-past {a.opt_past} differs from the checkpoint's "
                             f"{train.opt.params.past}; train from scratch with --checkpoint-in ''")
        train.opt.params = params
    else:
        model = init_model(hp)
        randomize_model(model, seed, 0.0, 1.0, -1.0, 1.0)
        train = TrainState(opt=gc.OptContext())
        gc.opt_init(None, train.opt, params, model.parameter_count())
    opt, hp = train.opt, model.hparams
    opt.iter = train.train_its
    for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_ff", "n_layer", "n_rot"):
        w(f"print_params: {k + ':':<8} {getattr(hp, k)}\n")
    w(f"main: total train_iterations {train.train_its}\nmain: seen train_samples     {train.train_samples}\n"
      f"main: seen train_tokens      {train.train_tokens}\nmain: completed train_epochs {train.train_epochs}\n")
    nb = model.nbytes()
    w("main: model_size = %d bytes (%.1f MB)\n" % (nb, nb / 2 ** 20))
    saver = Saver(a, vocab, model, a.checkpoint_out, world)
    if a.only_write_model:
        saver.checkpoint_out, saver.world = "", None
        if world is None or world.rank == 0:
            saver(train, out)
        return dict(model=model, train=train)
    nb = sum(x.nbytes for x in (opt.g, opt.m, opt.v, opt.pf) if x is not None)
    w("main: opt_size  = %d bytes (%.1f MB)\nmain: opt iter %d\n" % (nb, nb / 2 ** 20, opt.iter))
    lo, hi = (0, a.batch) if world is None else world.shard(a.batch, "batch (-b)")
    g = build_train_graphs(model, hi - lo, a.use_flash, a.use_checkpointing)
    nb = gc.nbytes(g.tokens_input) + gc.nbytes(g.target_probs)
    w("main: input_size = %d bytes (%.1f MB)\n" % (nb, nb / 2 ** 20))
    w("main: compute_size = %d bytes (%.1f MB)\nmain: evaluation order = LEFT_TO_RIGHT\n"
      % (g.compute_size, g.compute_size / 2 ** 20))
    w("main: tokenize training data\n")
    tokens, begins, sizes = tokenize_file(tok, a.train_data, a.sample_start, a.include_sample_start,
                                          a.overlapping_samples, hp.n_ctx, out)
    w(f"main: number of training tokens: {len(tokens)}\n")
    if len(tokens) < hp.n_ctx + 1:
        raise DataError(f"train-text: training data '{a.train_data}' has {len(tokens)} tokens, fewer than the "
                        f"context ({hp.n_ctx}) plus one: make --ctx smaller or the corpus longer")
    h = compute_samples_hash(a.train_data, begins, sizes)
    changed = h != train.shuffle_samples_hash or train.shuffle_sample_count != len(sizes)
    if changed:
        w("main: train data seems to have changed. restarting shuffled epoch.\n")
    if a.force_reshuffle:
        w("main: forced reshuffling of data. restarting with newly shuffled epoch.\n")
    if not train.shuffle_rng_state_current or changed or a.force_reshuffle:
        train.shuffle_rng_state_current = mt19937_seed_to_state(seed)
        train.shuffle_sample_count, train.shuffle_next_sample, train.shuffle_samples_hash = len(sizes), 0, h
    *shuffled, train.shuffle_rng_state_next = shuffle_samples(train.shuffle_rng_state_current, begins, sizes)
    reducer = None
    if world is not None:
        _agree(world, a, seed, model, train, len(tokens), h)
    w("main: begin training\n")
    # the C program prints its plan's work buffer plus one ggml object header (GGML_OBJECT_SIZE); here
    # the buffer is a numpy array of the plan's work_size, which is what this line gives
    nb = gc.graph_plan(g.gb, a.threads).work_size
    w("main: work_size = %d bytes (%.1f MB)\n" % (nb, nb / 2 ** 20))
    cb = OptCallback(a, train, saver, g, tokens, begins, sizes, tok.bos_id, tok.eos_id, out, tuple(shuffled),
                     first_iter=opt.iter, first_epoch=train.train_epochs, last_save_iter=opt.iter, rows=(lo, a.batch))
    if world is not None:   # mean losses: the ranks' mean of means is the batch's mean; Ctrl-C stops all alike
        reducer = world.reducer(1.0 / world.size, on_stop=lambda: setattr(cb, "interrupted", True))
    if a.progress and (world is None or world.rank == 0):
        cb.progress = Progress(a.adam_iter, "train ")
    stop = cb if reducer is None else reducer
    stop_attr = "interrupted" if reducer is None else "stop_requested"
    previous = signal.signal(signal.SIGINT, lambda *_: setattr(stop, stop_attr, True)) \
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    t0 = time.perf_counter()
    try:
        result = gc.opt_resume_g(g.ctx, opt, g.loss, g.gf, g.gb, cb, reduce=reducer)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    w(f"main: total training time: {print_duration((time.perf_counter() - t0) * 1000.0)}\n")
    if reducer is not None and reducer.calls:
        w("main: data-parallel over %d ranks: %d allreduces of %.1f MB, %.3f s in all (waits for the slowest "
          "rank included)\n" % (world.size, reducer.calls, reducer.bytes / reducer.calls / 2 ** 20, reducer.seconds))
    if cb.interrupted:
        w("main: interrupted: saving the state reached\n")
    cb.rewind()
    if cb.count_new_iters() > 0:
        saver(train, out)
    return dict(model=model, train=train, graphs=g, result=result, history=cb.history,
                interrupted=cb.interrupted, n_tokens=len(tokens), reducer=reducer)
