"""llama inference against figures recorded from llama.cpp 4480542 (tests/data/llama_reference.json) on the
same files: random models the tests rebuild from a seed (tests/llama_models.py), and a tiny model that
llama.cpp's train-text-from-scratch wrote (tests/data/llama_tiny_trained.gguf)."""
import json
import os
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest

from graphcore.gguf_io import GGUFError, gguf_read, gguf_write
from graphcore_models.llama.model import LlamaModel, LlamaSession
from graphcore_models.llama.perplexity import perplexity
from graphcore_models.llama.sampling import Sampler, SamplingParams
from graphcore_models.llama.synth import write_random_llama

from llama_models import MODELS, model_digest

DATA = os.path.join(os.path.dirname(__file__), "data")
VOCAB = os.path.join(DATA, "ggml-vocab-llama.gguf")
TEXT = os.path.join(DATA, "llama_text.txt")
TINY = os.path.join(DATA, "llama_tiny_trained.gguf")
REF = json.load(open(os.path.join(DATA, "llama_reference.json")))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    paths = {}
    for name, (kw, _) in MODELS.items():
        paths[name] = str(d / f"{name}.gguf")
        write_random_llama(paths[name], VOCAB, **kw)
        assert model_digest(paths[name]) == REF["models"][name]["sha256"], f"{name}: not the file llama.cpp ran"
    return paths


@pytest.fixture(scope="module")
def models(model_files):
    """The random models loaded once (reading a 32000-piece vocabulary with gguf.GGUFReader takes seconds)."""
    return {name: LlamaModel(path) for name, path in model_files.items()}


def _llama_cpp_ppl(stdout):
    """Running estimates and the final (PPL, error) from llama.cpp perplexity's stdout."""
    running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", stdout)]
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", stdout)
    return running, float(m.group(1)), float(m.group(2))


def _check_ppl(m, n_ctx, stdout, threads=2):
    tokens = m.tokenizer.encode(open(TEXT, "rb").read())
    r = perplexity(LlamaSession(m, n_ctx, threads), tokens, n_ctx, m.tokenizer.bos_id)
    running, ppl, err = _llama_cpp_ppl(stdout)
    assert len(r.chunks) == len(running)
    # the running estimates of the first chunks average fewer tokens, so they wander a little more
    np.testing.assert_allclose(r.chunks, running, rtol=2e-4)
    assert abs(r.ppl / ppl - 1) < 1e-4 and abs(r.error / err - 1) < 1e-3
    return r


@pytest.mark.parametrize("name", list(MODELS))
def test_perplexity_equals_llama_cpp(models, name):
    _check_ppl(models[name], MODELS[name][1], REF["models"][name]["perplexity_stdout"])


def test_perplexity_of_a_train_text_from_scratch_model(tmp_path):
    rec = REF["tiny_trained"]
    assert model_digest(TINY) == rec["sha256"]
    r = _check_ppl(LlamaModel(TINY), rec["n_ctx"], rec["perplexity_stdout"], threads=1)
    assert 50 < r.ppl < 300             # trained: far below the 512 of a uniform guess


def _greedy(session, prompt_ids, n):
    logits = session.eval(prompt_ids)
    out = []
    for i in range(n):
        out.append(int(np.argmax(logits)))
        if i < n - 1:
            logits = session.eval([out[-1]])
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_generation_equals_llama_cpp(models, name):
    m = models[name]
    for prompt, g in REF["models"][name]["generate"].items():
        ids = m.tokenizer.encode(prompt, special=True)
        assert ids == g["prompt_ids"]
        assert _greedy(LlamaSession(m, 256, 2), ids, 64) == g["greedy_ids"]


def test_greedy_generation_of_the_trained_model():
    # prompt ids as llama.cpp made them: with this 512-piece vocabulary many pieces count as "special" and
    # llama.cpp matches them in hash-map order (see README)
    g = REF["tiny_trained"]["generate"]["The lighthouse"]
    m = LlamaModel(TINY)
    assert _greedy(LlamaSession(m, 64, 1), g["prompt_ids"], len(g["greedy_ids"])) == g["greedy_ids"]


def test_batched_prompt_equals_one_token_at_a_time_and_threads_agree(models):
    m = models["rand_gqa_f16"]
    ids = m.tokenizer.encode("A short prompt, evaluated twice.")
    batched = LlamaSession(m, 64, 2).eval(ids, all_logits=True)
    s = LlamaSession(m, 64, 1)
    single = np.stack([s.eval([t]) for t in ids])
    np.testing.assert_allclose(single, batched, rtol=0, atol=2e-3 * np.abs(batched).max())
    assert np.array_equal(LlamaSession(m, 64, 1).eval(ids), LlamaSession(m, 64, 2).eval(ids))


def test_session_errors():
    m = LlamaModel(TINY)
    s = LlamaSession(m, 8, 1)
    with pytest.raises(ValueError, match="exceed the context of 8"):
        s.eval(list(range(1, 10)))
    with pytest.raises(ValueError, match="token id 512 is outside"):
        s.eval([1, 512])
    with pytest.raises(ValueError, match="at least 16 tokens"):
        perplexity(s, [1, 2, 3], 8, 1)


def test_model_file_errors(tmp_path):
    f = gguf_read(TINY)
    meta = dict(f.metadata)
    meta["general.architecture"] = "falcon"
    gguf_write(tmp_path / "falcon.gguf", meta, {})
    with pytest.raises(GGUFError, match="architecture is 'falcon'"):
        LlamaModel(tmp_path / "falcon.gguf")
    meta["general.architecture"] = "llama"
    tensors = {k: v for k, v in f.tensors.items() if k != "blk.1.ffn_up.weight"}
    gguf_write(tmp_path / "missing.gguf", meta, tensors)
    with pytest.raises(GGUFError, match="tensor 'blk.1.ffn_up.weight' is missing"):
        LlamaModel(tmp_path / "missing.gguf")
    tensors["blk.1.ffn_up.weight"] = np.zeros((176, 32), np.float32)
    gguf_write(tmp_path / "shape.gguf", meta, tensors)
    with pytest.raises(GGUFError, match=r"'blk.1.ffn_up.weight' has shape \[32, 176\], expected \[64, 176\]"):
        LlamaModel(tmp_path / "shape.gguf")
    del meta["llama.attention.layer_norm_rms_epsilon"]
    gguf_write(tmp_path / "key.gguf", meta, {})
    with pytest.raises(GGUFError, match="'llama.attention.layer_norm_rms_epsilon' is missing"):
        LlamaModel(tmp_path / "key.gguf")


def test_repeat_penalty_and_sampling():
    s = Sampler(SamplingParams(temp=0, repeat_penalty=2.0, repeat_last_n=3))
    logits = np.array([1.0, 3.0, -1.0, 2.5], np.float32)
    assert s.sample(logits) == 1
    s.accept(1)                              # history [0, 0, 1]: ids 0 and 1 penalised once each
    assert s.sample(logits) == 3             # 3.0 / 2 < 2.5
    s = Sampler(SamplingParams(temp=1.0, top_k=2, top_p=1.0, repeat_penalty=1.0, seed=0))
    draws = {s.sample(logits) for _ in range(200)}
    assert draws == {1, 3}                   # top-k keeps the two best
    with pytest.raises(ValueError, match="top_p"):
        Sampler(SamplingParams(top_p=0.0))


# -- the CLI, in child processes --------------------------------------------------------------------------
def _cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "graphcore_models.llama", *args], capture_output=True, timeout=timeout,
                          cwd=ROOT, **kw)


def test_cli_generate_equals_main_output(model_files):
    # main --temp 0 with its default repetition penalty (1.1 over the last 64 tokens), byte for byte
    prompt, g = next(iter(REF["models"]["rand_f32"]["generate"].items()))
    r = _cli("generate", "-m", model_files["rand_f32"], "-p", prompt, "-n", "64", "--temp", "0", "-c", "256",
             "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip(b"\n") == bytes.fromhex(g["main_temp0_stdout_hex"])
    assert re.search(rb"generation: 64 tokens in [0-9.]+ s \([0-9.]+ tokens/s\)", r.stderr)


def test_cli_perplexity_tokenize_info():
    r = _cli("perplexity", "-m", TINY, "-f", TEXT, "-c", "64", "-t", "1")
    assert r.returncode == 0, r.stderr
    ref = REF["tiny_trained"]["perplexity_stdout"]
    final = r.stdout.decode().splitlines()[-1]
    assert re.fullmatch(r"Final estimate: PPL = \d+\.\d{4} \+/- \d+\.\d{5}", final)
    _, ppl, err = _llama_cpp_ppl(final)
    assert abs(ppl / _llama_cpp_ppl(ref)[1] - 1) < 1e-4 and abs(err / _llama_cpp_ppl(ref)[2] - 1) < 1e-3
    assert b"ETA" in r.stderr
    r = _cli("tokenize", "-m", VOCAB, "-p", "Hello world")
    assert r.returncode == 0 and r.stdout.decode().split() == ["1", "->", "'<s>'", "15043", "->", "'▁Hello'",
                                                               "3186", "->", "'▁world'"]
    r = _cli("info", "-m", TINY)
    assert r.returncode == 0 and b"llama.embedding_length" in r.stdout and b"blk.1.ffn_down.weight" in r.stdout


def test_cli_info_lists_tensors_of_unsupported_types(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((2, 66), np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = _cli("info", "-m", str(tmp_path / "q.gguf"))
    assert r.returncode == 0 and re.search(rb"blk.0.attn_q.weight +IQ2_XXS +\[256, 2\]", r.stdout), r.stdout
    r = _cli("generate", "-m", str(tmp_path / "q.gguf"), "-p", "x")
    assert r.returncode == 1 and b"tensor 'blk.0.attn_q.weight' has type IQ2_XXS" in r.stderr


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(open(TINY, "rb").read()[:5000])
    vocab_only = tmp_path / "vocab.gguf"
    gguf_write(vocab_only, gguf_read(TINY).metadata, {})
    for args, msg in [(("info", "-m", str(tmp_path / "nope.gguf")), b"no such file"),
                      (("generate", "-m", str(bad), "-p", "x"), b"truncated"),
                      (("perplexity", "-m", TINY, "-f", str(tmp_path / "none.txt")), b"No such file"),
                      (("perplexity", "-m", TINY, "-f", TEXT, "-c", "4000"), b"at least 8000 tokens"),
                      (("generate", "-m", str(vocab_only), "-p", "x"), b"tensor 'token_embd.weight' is missing")]:
        r = _cli(*args)
        assert r.returncode == 1 and msg in r.stderr and b"Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith(b"graphcore-llama: error: ")
    r = _cli("generate", "-m", TINY, "-n", "0")
    assert r.returncode == 2 and b"must be positive" in r.stderr


def test_cli_closed_stdout_pipe():
    p = subprocess.Popen([sys.executable, "-m", "graphcore_models.llama", "generate", "-m", TINY, "-p", "The", "-n", "60",
                          "-c", "64", "--temp", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.read(3)
    p.stdout.close()                        # the reader goes away, as `| head -c 3` does
    err = p.stderr.read()
    assert p.wait(timeout=300) in (0, 1) and b"Traceback" not in err, err
