"""train-text (llama.cpp's train-text-from-scratch over graphcore): the model's initial weights, the
training graph's loss and gradients, the training run, the files and the CLI.

The C figures were recorded from llama.cpp 4480542's train-text-from-scratch (built with its
Makefile: g++ -O3 -march=native) with tests/data/ggml-vocab-llama.gguf and tests/data/train_text_bsd.txt
(the BSD licence text from /usr/share/common-licenses), options TINY + the ones named; those of
tests/data/train_text_reference.json and tests/data/train_text_c32.gguf by tools/record_train_text.py,
with the 512-piece vocabulary and the runs of tests/train_text_cases.py."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import graphcore as gc
from graphcore.gguf_io import GGUFError, gguf_read, gguf_write
from graphcore.testing import check_gradients
from graphcore_models.llama.model import LlamaModel, LlamaSession
from graphcore_models.llama.tokenizer import TokenizerError
from graphcore_models.train_text import (TrainHparams, build_train_graphs, compute_samples_hash, init_model, learning_schedule,
                               parse_args, randomize_model, run, save_llama_model_file, shuffle_samples,
                               tokenize_file)
from graphcore_models.train_text.model import _forward
from graphcore_models.train_text.train import load_vocab

from train_text_cases import C_CHECKPOINT, REFERENCE, RUNS, SMALL, checkpoint_options, parse_log

DATA = os.path.join(os.path.dirname(__file__), "data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = json.load(open(os.path.join(ROOT, REFERENCE)))
VOCAB = os.path.join(DATA, "ggml-vocab-llama.gguf")
CORPUS = os.path.join(DATA, "train_text_bsd.txt")
TINY = ["--ctx", "16", "--embd", "32", "--head", "4", "--layer", "2", "--ff", "48", "-b", "2", "-s", "1", "-t", "1",
        "--vocab-model", VOCAB, "--train-data", CORPUS, "--checkpoint-in", "", "--save-every", "0"]

# recorded from the C program
C_N_TOKENS, C_N_SAMPLES = 494, 478
C_INIT_MODEL_SHA256 = "9e6d32bbbc1571441c55c649aa1b651e605d7c8a5af6640e561defb98629d23d"   # --only-write-model -s 1
C_SAMPLES_HASH = 10872428389097333837   # training.shuffle.samples_hash of its checkpoint (--train-data bsd.txt)
C_COMPUTE_SIZE = {(True, True): 16470176, (False, True): 16486560, (True, False): 16548000,
                  (False, False): 16564384}           # (flash, checkpointing) -> compute_size
# --adam-iter 8 --warmup 2 --adam-alpha 0.01: loss at iterations 1..8 (flash+checkpointing; the
# plain path differs by at most 2e-6)
C_LOSSES = [10.372413, 10.373324, 10.369878, 10.353830, 10.319596, 10.306849, 10.250891, 10.263130]


def _run(args):
    out = io.StringIO()
    r = run(parse_args(args), out)
    return r, out.getvalue()


def _tiny_hp(n_vocab=64):
    return TrainHparams(n_vocab=n_vocab, n_ctx=8, n_embd=16, n_head=2, n_layer=2, n_rot=8, n_ff=24)


def _fill_batch(g, rng, n_vocab):
    toks = g.tokens_input.numpy()
    toks[:] = rng.integers(0, n_vocab, size=toks.shape)
    tp = g.target_probs.numpy()
    tp[:] = 0
    idx = rng.integers(0, n_vocab, size=tp.shape[:2])
    np.put_along_axis(tp, idx[..., None], 1.0, axis=2)


# ---------------------------------------------------------------------------------------------
# model and graph
# ---------------------------------------------------------------------------------------------
def test_initial_model_file_equals_the_c_programs(tmp_path):
    hp = TrainHparams(n_vocab=32000, n_ctx=16, n_embd=32, n_head=4, n_layer=2, n_rot=8, n_ff=48)
    model = init_model(hp)
    randomize_model(model, 1)
    path = tmp_path / "init.gguf"
    save_llama_model_file(path, gguf_read(VOCAB), model)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == C_INIT_MODEL_SHA256
    # without the fused multiply-add a few hundred thousand weights move by an ulp
    other = init_model(hp)
    randomize_model(other, 1, fma=False)
    a, b = model.tok_embeddings.numpy(), other.tok_embeddings.numpy()
    assert 0 < np.count_nonzero(a != b) and np.abs(a - b).max() < 1e-6


@pytest.mark.parametrize("flash,ckpt", [(True, True), (False, False)])
def test_first_loss_is_log_vocab_and_logits_match_a_numpy_forward(flash, ckpt):
    hp = _tiny_hp()
    model = init_model(hp)
    randomize_model(model, 3)
    g = build_train_graphs(model, 3, flash, ckpt)
    _fill_batch(g, np.random.default_rng(0), hp.n_vocab)
    g.loss.grad.numpy()[...] = 1.0
    gc.graph_compute_with_ctx(g.ctx, g.gb, 2)
    loss = gc.get_f32_1d(g.loss, 0)
    assert abs(loss - math.log(hp.n_vocab)) < 0.05
    # the loss from the graph's own logits, in numpy (cross_entropy_loss is the mean over rows)
    z = g.logits.numpy().astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = -(g.target_probs.numpy() * logp).sum() / (z.shape[0] * z.shape[1])
    assert abs(loss - ref) < 1e-5


def test_training_graph_gradients_match_finite_differences():
    hp = TrainHparams(n_vocab=12, n_ctx=4, n_embd=8, n_head=2, n_layer=1, n_rot=4, n_ff=12)
    model = init_model(hp)
    randomize_model(model, 5, std=1.0)
    for t in model.tensors():        # larger weights than the Xavier init, so every path matters
        t.numpy()[...] *= 3.0
    ictx = gc.init(1 << 20)
    toks = gc.new_tensor_2d(ictx, gc.TYPE_I32, hp.n_ctx, 2)
    tp = gc.new_tensor_3d(ictx, gc.TYPE_F32, hp.n_vocab, hp.n_ctx, 2)
    pos = gc.new_tensor_1d(ictx, gc.TYPE_I32, hp.n_ctx)
    rng = np.random.default_rng(1)
    toks.numpy()[:] = rng.integers(0, hp.n_vocab, size=(2, hp.n_ctx))
    tp.numpy()[:] = rng.dirichlet(np.ones(hp.n_vocab), size=(2, hp.n_ctx))
    pos.numpy()[:] = np.arange(hp.n_ctx)
    for flash in (True, False):
        check_gradients(lambda c, *ps: _forward(model, c, toks, tp, pos, 2, flash)[0], model.tensors(),
                        eps=1e-2, atol=1e-4, max_elements=6)


def test_flash_and_checkpointing_give_the_same_gradients():
    hp = _tiny_hp()
    model = init_model(hp)
    randomize_model(model, 9)
    grads = {}
    for flash in (True, False):
        for ckpt in (True, False):
            g = build_train_graphs(model, 2, flash, ckpt)
            _fill_batch(g, np.random.default_rng(4), hp.n_vocab)
            g.loss.grad.numpy()[...] = 1.0
            gc.graph_compute_with_ctx(g.ctx, g.gb, 2)
            grads[flash, ckpt] = [p.grad.numpy().copy() for p in model.tensors()]
            assert g.compute_size > 0
    for flash in (True, False):     # checkpointing recomputes the same nodes: bitwise equal
        for a, b in zip(grads[flash, True], grads[flash, False]):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(grads[True, True], grads[False, True]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# data pipeline
# ---------------------------------------------------------------------------------------------
def test_tokenize_shuffle_and_schedule():
    _, tok = load_vocab(VOCAB)
    tokens, begins, sizes = tokenize_file(tok, CORPUS, "", False, False, 16)
    assert (len(tokens), len(begins)) == (C_N_TOKENS, C_N_SAMPLES)
    assert compute_samples_hash("bsd.txt", begins, sizes) == C_SAMPLES_HASH   # the name hashed as given
    from graphcore_models.train_text.data import mt19937_seed_to_state
    offs, b2, s2, state = shuffle_samples(mt19937_seed_to_state(1), begins, sizes)
    assert sorted(b2.tolist()) == begins.tolist() and state != mt19937_seed_to_state(1)
    assert np.all((offs >= 0) & (offs < np.maximum(s2, 1)))
    # the same state gives the same order; the state string is std::mt19937's (625 numbers)
    assert np.array_equal(shuffle_samples(mt19937_seed_to_state(1), begins, sizes)[1], b2)
    assert len(state.split()) == 625
    # warmup, then cosine decay to cos_decay_min, floored by adam_min_alpha / adam_alpha
    assert learning_schedule(50, 100, 1000, 1e-3, 0.0, 0.1, 1.1, False) == pytest.approx(0.5)
    assert learning_schedule(1000, 100, 1000, 1e-3, 0.0, 0.1, 1.1, False) == pytest.approx(0.1)
    assert learning_schedule(550, 100, 1000, 1e-3, 0.0, 0.1, 1.1, False) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.55)), rel=1e-5)


def test_sample_start_splits_the_corpus(tmp_path):
    _, tok = load_vocab(VOCAB)
    p = tmp_path / "c.txt"
    p.write_text("<s>one two three<s>four five<s>six")
    tokens, begins, sizes = tokenize_file(tok, p, "<s>", False, False, 4)
    assert len(begins) == 3 and sum(sizes) == len(tokens)
    assert tokens[begins[1]:begins[1] + sizes[1]].tolist() == tok.encode("four five", bos=False)


# ---------------------------------------------------------------------------------------------
# the training run against the C program
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flash,ckpt", [(True, True), (False, False)])
def test_run_matches_the_c_program(flash, ckpt):
    opts = TINY + ["--adam-iter", "8", "--warmup", "2", "--adam-alpha", "0.01", "--checkpoint-out", "",
                   "--model-out", ""]
    opts += [] if flash else ["--no-flash"]
    opts += [] if ckpt else ["--no-checkpointing"]
    r, out = _run(opts)
    assert f"main: number of training tokens: {C_N_TOKENS}" in out
    assert "iter=     8 sample=17/478 sched=0.999858" in out
    np.testing.assert_allclose(r["history"], C_LOSSES, atol=1e-4)
    assert r["history"][-1] < C_LOSSES[0] - 0.05          # it learns
    assert r["graphs"].compute_size <= C_COMPUTE_SIZE[flash, ckpt]


# ---------------------------------------------------------------------------------------------
# 64 iterations, --sample-start and checkpoints both ways, against tests/data/train_text_reference.json
# (tools/record_train_text.py; the 512-piece vocabulary, options of tests/train_text_cases.py)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)         # the relative paths the C program was given (the samples hash covers them)


def _run_logged(args):
    r, out = _run(args)
    return r, parse_log(out)


def _losses(log, first=1):
    return np.array([it[4] for it in log["iters"] if it[0] >= first])


def _assert_same_run(g, c, rtol):
    """The same tokens, samples, sample order and schedule; the losses within rtol of the C program's."""
    assert REF["small"] == SMALL            # the options the figures were recorded with
    for k in ("n_tokens", "n_samples", "tokenize_warnings", "data_changed"):
        assert g[k] == c[k], k
    assert [it[:3] for it in g["iters"]] == [it[:3] for it in c["iters"]]           # iteration, sample, count
    np.testing.assert_allclose([it[3] for it in g["iters"]], [it[3] for it in c["iters"]], atol=1e-6)  # sched
    np.testing.assert_allclose(_losses(g), _losses(c), rtol=rtol)
    assert g["compute_size"] <= c["compute_size"]


@pytest.mark.parametrize("name", [n for n in RUNS if not n.startswith("sample_start")])
def test_64_iterations_match_the_c_program(name, at_root):
    """--warmup 8 --adam-alpha 0.01 takes the loss from 6.24 to ~3.6; the issue asks for 1% over 64
    iterations, observed at most 1.2e-5 with and without flash attention and checkpointing, so the test
    asks for 1e-3. The aggressive schedule (--warmup 2) is held to the issue's 1% (observed 9.6e-4, see
    README: its loss spikes amplify rounding-level differences)."""
    assert REF["runs"][name]["options"] == RUNS[name]
    _, g = _run_logged(SMALL + RUNS[name])
    _assert_same_run(g, REF["runs"][name], 1e-2 if name == "aggressive64" else 1e-3)


@pytest.mark.parametrize("name", [n for n in RUNS if n.startswith("sample_start")])
def test_sample_start_matches_the_c_program(name, at_root):
    """--sample-start (with --escape, --include-sample-start, --overlapping-samples,
    --fill-with-next-samples, --sample-random-offsets, --separate-with-eos/bos, a pattern that is not
    found): tokens, samples, tokenize_file's warnings, the sample order and the losses."""
    assert REF["runs"][name]["options"] == RUNS[name]
    _, g = _run_logged(SMALL + RUNS[name])
    _assert_same_run(g, REF["runs"][name], 1e-4)


def test_resume_32_plus_32_equals_64_straight(tmp_path, at_root):
    """A run of 32 iterations resumed for 32 more equals 64 straight, bit for bit (every tensor, every
    key but best_loss, each run's first loss), and its losses are the straight run's."""
    straight, _ = _run(checkpoint_options("", str(tmp_path / "s.gguf")) + ["--adam-iter", "64"])
    _run(checkpoint_options("", str(tmp_path / "a.gguf")))
    resumed, log = _run_logged(checkpoint_options(str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")))
    assert not log["data_changed"] and log["iters"][0][:2] == [32, 65]
    assert resumed["history"] == straight["history"][32:]
    s, b = gguf_read(tmp_path / "s.gguf"), gguf_read(tmp_path / "b.gguf")
    best = "optimizer.adam.best_loss"
    assert {k: v for k, v in s.metadata.items() if k != best} == {k: v for k, v in b.metadata.items() if k != best}
    assert s.metadata["training.iteration_count"] == 64
    for name, t in s.tensors.items():
        np.testing.assert_array_equal(t.numpy(), b.tensors[name].numpy(), err_msg=name)


def test_c_checkpoint_continues_in_graphcore(at_root, tmp_path):
    """tests/data/train_text_c32.gguf, the C program's checkpoint after 32 iterations, continued by
    graphcore: the C program's own continuation (its sample counters, which include the batch of its
    last evaluation, so it resumes one batch later than a straight run)."""
    _, g = _run_logged(checkpoint_options(C_CHECKPOINT))
    c = REF["checkpoints"]["c32_continued_by_c"]
    assert not g["data_changed"] and [it[:3] for it in g["iters"]] == [it[:3] for it in c["iters"]]
    np.testing.assert_allclose(_losses(g, 33), _losses(c, 33), rtol=1e-4)
    # graphcore's own 32 iterations write the same training metadata, but for the rewound batch
    _run(checkpoint_options("", str(tmp_path / "g32.gguf")))
    md, ref = gguf_read(tmp_path / "g32.gguf").metadata, REF["checkpoints"]["c32_metadata"]
    b = 2                                           # -b: the batch the C program counts and graphcore rewinds
    for k, v in ref.items():
        got = md[k]
        if k == "training.shuffle.rng_state":
            words = got.split()
            got = [words[0], words[-1], len(words)]
        elif k in ("training.sample_count", "training.shuffle.next_sample"):
            got += b
        elif k == "optimizer.adam.previous_loss":   # the last loss, from each program's own arithmetic
            assert got == pytest.approx(v, rel=1e-6)
            continue
        assert got == v, k


def test_graphcore_checkpoint_continues_in_c(at_root, tmp_path):
    """graphcore's checkpoint after 32 iterations, continued by the C program (recorded), continued by
    graphcore: the same samples and losses, which are also the straight run's iterations 33..64."""
    _run(checkpoint_options("", str(tmp_path / "g32.gguf")))
    md, ref = gguf_read(tmp_path / "g32.gguf").metadata, REF["checkpoints"]["g32_metadata"]
    assert md["training.shuffle.samples_hash"] == ref["training.shuffle.samples_hash"]
    assert md["training.sample_count"] == ref["training.sample_count"]
    _, g = _run_logged(checkpoint_options(str(tmp_path / "g32.gguf")))
    c = REF["checkpoints"]["g32_continued_by_c"]
    assert not c["data_changed"] and [it[:3] for it in g["iters"]] == [it[:3] for it in c["iters"]]
    np.testing.assert_allclose(_losses(g, 33), _losses(c, 33), rtol=1e-4)
    np.testing.assert_allclose(_losses(c, 33), _losses(REF["runs"]["fast64/flash+ckpt"], 33), rtol=1e-4)


def test_work_size_line(at_root):
    """main: work_size as the C program prints it; graphcore's is its plan's work buffer. The C
    program's is cross_entropy_loss's (n_vocab + 1) floats per thread, a cache line per extra thread
    and a ggml object header; graphcore's largest is flash_attn_back's float64 rows (8 (3M + 2DM + 8)
    bytes per task for M keys of D dims), without flash attention a few hundred bytes."""
    n_vocab, D, M = 512, 8, 16
    for name, nt in (("fast64/flash+ckpt", 1), ("threads2", 2), ("fast64/plain", 1)):
        opts = SMALL + RUNS[name]
        opts[opts.index("--adam-iter") + 1] = "1"
        r, out = _run(opts)
        nb = gc.graph_plan(r["graphs"].gb, nt).work_size
        assert f"main: work_size = {nb} bytes" in out
        assert REF["runs"][name]["work_size"] == 4 * (n_vocab + 1) * nt + 64 * (nt - 1) + 32
        # flash: 2496 + 64 (nt - 1) bytes (flash_attn_back, one task here) against the C program's 2084, 4200
        assert nb <= (512 if "plain" in name else 8 * (3 * M + 2 * D * M + 8) + 64 * (nt - 1))


def test_model_out_runs_in_the_llama_engine(tmp_path):
    """The written GGUF loads in models.llama (llama.cpp's loader rules) and gives the logits of the
    training graph for the same tokens."""
    r, _ = _run(TINY + ["--adam-iter", "2", "--model-out", str(tmp_path / "m.gguf"), "--checkpoint-out", "",
                        "-b", "1"])
    g = r["graphs"]
    lm = LlamaModel(str(tmp_path / "m.gguf"))
    toks = g.tokens_input.numpy4d()[0, 0, 0].copy()
    logits = LlamaSession(lm, n_ctx=16, n_threads=1).eval(toks.tolist(), all_logits=True)
    gc.graph_compute_with_ctx(g.ctx, g.gf, 1)
    np.testing.assert_allclose(np.asarray(logits).reshape(16, -1), g.logits.numpy4d()[0, 0], rtol=1e-3, atol=2e-3)


def test_ctrl_c_saves_a_checkpoint(tmp_path, interrupt_at):
    rc, out, err = interrupt_at([sys.executable, "-m", "graphcore_models.train_text", *TINY, "--adam-iter", "500", "--model-out",
                                 "", "--checkpoint-out", str(tmp_path / "c-ITERATION.gguf")], "iter=     2 ",
                                os.path.dirname(os.path.dirname(DATA)))
    assert rc == 130, err
    assert "interrupted" in out
    f = gguf_read(tmp_path / "c-LATEST.gguf")
    assert f.metadata["training.iteration_count"] >= 2


# ---------------------------------------------------------------------------------------------
# the CLI, in a child process with a timeout
# ---------------------------------------------------------------------------------------------
def _cli(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "graphcore_models.train_text", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(os.path.dirname(DATA)))


ERRORS = [
    (["--embd"], "expected one argument"),
    (["--bogus"], "unrecognized arguments"),
    (["--vocab-model", "/nonexistent.gguf"], "no such file"),
    (["--train-data", "/nonexistent.txt"], "cannot read training data"),
    (["--checkpoint-in", CORPUS], "not a GGUF file"),
    (["--embd", "30"], "multiple of --head"),
    (["--train-data", os.devnull], "is empty"),
    (["--ctx", "600"], "fewer than the context"),
]


@pytest.mark.parametrize("args,needle", ERRORS[:5])
def test_cli_errors_are_one_line(args, needle):
    p = _cli(TINY + ["--adam-iter", "1", "--checkpoint-out", "", "--model-out", ""] + args)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args,needle", ERRORS[5:])
def test_main_errors_are_one_line(args, needle, capsys):
    from graphcore_models.train_text.cli import main
    assert main(TINY + ["--adam-iter", "1", "--checkpoint-out", "", "--model-out", ""] + args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_cli_runs_and_writes_files(tmp_path):
    p = _cli(TINY + ["--adam-iter", "2", "--checkpoint-out", str(tmp_path / "c-ITERATION.gguf"),
                     "--model-out", str(tmp_path / "m-ITERATION.gguf")])
    assert p.returncode == 0, p.stderr
    for key in ("model_size", "opt_size", "input_size", "compute_size", "number of training tokens: 494"):
        assert key in p.stdout
    assert "iter=     2 sample=5/478" in p.stdout
    assert sorted(os.listdir(tmp_path)) == ["c-2.gguf", "c-LATEST.gguf", "m-2.gguf", "m-LATEST.gguf"]


def test_bad_vocabulary_and_checkpoint_raise(tmp_path):
    vocab = gguf_read(VOCAB)
    gpt2 = tmp_path / "gpt2.gguf"
    md = {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2",
          "tokenizer.ggml.tokens": vocab.metadata["tokenizer.ggml.tokens"][:100]}
    gguf_write(gpt2, md, {})
    with pytest.raises(TokenizerError, match="only 'llama'"):
        _run(TINY + ["--vocab-model", str(gpt2)])
    # a checkpoint whose tensors disagree with its own hyper-parameters
    model = init_model(TrainHparams(n_vocab=32000, n_ctx=16, n_embd=32, n_head=4, n_layer=2, n_rot=8, n_ff=48))
    model.hparams.n_ff = 40
    bad = tmp_path / "bad.gguf"
    save_llama_model_file(bad, vocab, model)
    with pytest.raises(GGUFError, match="ffn_gate.weight' has shape"):
        _run(TINY + ["--checkpoint-in", str(bad)])


def test_parse_args_defaults_are_the_c_programs():
    a = parse_args([])
    assert (a.ctx, a.embd, a.head, a.layer, a.ff, a.batch, a.threads) == (128, 256, 8, 16, 768, 8, 6)
    assert (a.use_flash, a.use_checkpointing, a.separate_with_bos, a.separate_with_eos) == (True, True, True, False)
    assert (a.warmup, a.cos_decay_steps, a.adam_iter, a.adam_alpha, a.adam_decay, a.adam_gclip) == \
        (100, 1000, 256, 1e-3, 0.1, 1.0)
    assert parse_args(["--adam_iter", "3", "--no_flash"]).adam_iter == 3      # '_' read as '-'


def test_plot_loss_writes_a_picture(tmp_path):
    pytest.importorskip("matplotlib")
    from graphcore_models.train_text.cli import main
    assert main(TINY + ["--adam-iter", "2", "--checkpoint-out", "", "--model-out", "",
                        "--plot-loss", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
