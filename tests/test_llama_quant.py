"""Quantized llama GGUF files against llama.cpp 4480542 (tests/data/llama_quant_reference.json, recorded by
tools/record_llama_quant.py): graphcore's quantize writes the same file bytes as llama.cpp's `quantize`,
perplexity of the quantized models is close to llama.cpp's, and GGUF reading refuses bad quantized tensors."""
import hashlib
import json
import os
import re
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest

import graphcore as gc
from graphcore.gguf_io import GGUFError, gguf_read, gguf_write
from graphcore_models.llama.model import LlamaModel, LlamaSession
from graphcore_models.llama.perplexity import perplexity
from graphcore_models.llama.quantize import QuantizeError, plan_types, quantize_file
from graphcore_models.llama.synth import write_random_llama

from llama_models import MODELS, QUANT_CASES, QUANT_MODELS, vocab_file

DATA = os.path.join(os.path.dirname(__file__), "data")
VOCAB = os.path.join(DATA, "ggml-vocab-llama.gguf")
TEXT = os.path.join(DATA, "llama_text.txt")
_REC = json.load(open(os.path.join(DATA, "llama_quant_reference.json")))
REF, SRC = _REC["cases"], _REC["sources"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = {**MODELS, **QUANT_MODELS}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The F32/F16 models, written from their seeds and read once (reading the vocabulary takes seconds)."""
    d = tmp_path_factory.mktemp("quant")
    out = {}
    for name in sorted({m for m, _ in QUANT_CASES}):
        write_random_llama(d / f"{name}.gguf", vocab_file(name), **ALL[name][0])
        out[name] = gguf_read(d / f"{name}.gguf")
    return d, out


@pytest.fixture(scope="module")
def quantized(sources):
    """(model, TYPE) -> path of graphcore's quantized file."""
    d, files = sources
    paths = {}
    for name, t in QUANT_CASES:
        paths[name, t] = str(d / f"{name}-{t}.gguf")
        quantize_file(files[name], paths[name, t], t)
    return paths


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("case", QUANT_CASES, ids=[f"{m}-{t}" for m, t in QUANT_CASES])
def test_quantize_writes_llama_cpp_s_file(quantized, case):
    # the whole file: metadata (copied with its types, then quantization_version and file_type), tensor
    # order, each tensor's type (the k-quant mixes and fallbacks) and blocks
    rec = REF[f"{case[0]}-{case[1]}"]
    got = {n: gc.type_name(t.type) for n, t in gguf_read(quantized[case]).tensors.items()}
    assert got == rec["types"]
    assert _sha256(quantized[case]) == rec["sha256"]


def _llama_cpp_ppl(stdout):
    running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", stdout)]
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", stdout)
    return running, float(m.group(1)), float(m.group(2))


# With ggml_rounding (LlamaSession's default) graphcore computes what llama.cpp's CPU code computes, bit for bit
# in every op of the graph (ggml's block dots and x86 src1 quantizers, its fp16 exp and SiLU tables, its float32
# rms_norm and rope, ggml_vec_dot_f16's order of sums for K.Q and V.softmax): the perplexities agree to the
# digits llama.cpp prints (4 decimals, about 6e-8 of these figures; the issue asks 1e-4). Without it they
# differ by up to 9e-4.
PPL_CASES = ["f32"] + sorted(k.split("-", 1)[1] for k, v in REF.items() if "perplexity_stdout" in v)


@pytest.mark.parametrize("t", PPL_CASES)
def test_perplexity_of_quantized_model_equals_llama_cpp(sources, quantized, t):
    if t == "f32":
        m, rec = LlamaModel(sources[0] / "rand_q.gguf"), SRC["rand_q"]
    else:
        m, rec = LlamaModel(quantized["rand_q", t]), REF[f"rand_q-{t}"]
        assert gc.is_quantized(m.tok_embd.type) and gc.is_quantized(m.layers[0]["wq"].type)
    n_ctx = rec["n_ctx"]
    tokens = m.tokenizer.encode(open(TEXT, "rb").read())
    r = perplexity(LlamaSession(m, n_ctx, 2, ggml_dots=True), tokens, n_ctx, m.tokenizer.bos_id)
    running, ppl, err = _llama_cpp_ppl(rec["perplexity_stdout"])
    assert len(r.chunks) == len(running)
    # printed with 4 decimals (the error 5); 1e-7 for the final log-softmax, which runs in numpy (its float32
    # exp and sums in another order than C's expf loop)
    np.testing.assert_allclose(r.chunks, running, rtol=1e-7, atol=5e-5)
    assert abs(r.ppl - ppl) <= 5e-5 + 1e-7 * ppl and abs(r.error - err) <= 5e-6 + 1e-7 * err


def test_perplexity_of_f16_gqa_model_equals_llama_cpp(sources):
    # F16 weights (ggml_vec_dot_f16 on F16-rounded activations), grouped-query attention, rope base 50000
    # and linear scale 2: with ggml_dots the same digits as llama.cpp's perplexity (tests/test_llama.py
    # checks the default to 1e-4)
    rec = json.load(open(os.path.join(DATA, "llama_reference.json")))["models"]["rand_gqa_f16"]
    m = LlamaModel(sources[0] / "rand_gqa_f16.gguf")
    n_ctx = ALL["rand_gqa_f16"][1]
    r = perplexity(LlamaSession(m, n_ctx, 2, ggml_dots=True), m.tokenizer.encode(open(TEXT, "rb").read()), n_ctx,
                   m.tokenizer.bos_id)
    running, ppl, err = _llama_cpp_ppl(rec["perplexity_stdout"])
    np.testing.assert_allclose(r.chunks, running, rtol=1e-7, atol=5e-5)
    assert abs(r.ppl - ppl) <= 5e-5 + 1e-7 * ppl and abs(r.error - err) <= 5e-6 + 1e-7 * err


def test_quantized_model_generates_and_threads_agree(quantized):
    m = LlamaModel(quantized["rand_q", "q4_k_m"])
    ids = m.tokenizer.encode("The lighthouse keeper", special=True)
    one = LlamaSession(m, 64, 1)
    two = LlamaSession(m, 64, 2)
    a, b = one.eval(ids), two.eval(ids)
    assert np.array_equal(a, b) and np.isfinite(a).all()
    for _ in range(4):          # the one-token graph: mat-vec of the quantized weights
        tid = int(np.argmax(a))
        a, b = one.eval([tid]), two.eval([tid])
        assert np.array_equal(a, b)


def test_quantize_rules(sources):
    _, files = sources
    f = files["rand_q"]
    plan, ftype, fallbacks = plan_types(f, "Q4_K")             # the alias of q4_k_m, any case
    types = {n: gc.type_name(t) for n, (_, t) in plan.items()}
    assert ftype == 15 and types["blk.0.attn_norm.weight"] == "f32" and types["output.weight"] == "q6_K"
    assert types["blk.1.attn_v.weight"] == "q6_K" and types["blk.0.attn_v.weight"] == "q4_K"
    assert fallbacks == [("blk.0.ffn_down.weight", "q4_K", "q5_0"), ("blk.1.ffn_down.weight", "q6_K", "q8_0")]
    plan, _, _ = plan_types(f, "q4_0", pure=True, leave_output=True)
    types = {n: gc.type_name(t) for n, (_, t) in plan.items()}
    assert types["output.weight"] == "f32" and types["token_embd.weight"] == "q4_0"
    assert {types[f"blk.{i}.{w}.weight"] for i in (0, 1) for w in ("attn_v", "ffn_down")} == {"q4_0"}
    with pytest.raises(QuantizeError, match="not whole q4_K blocks"):
        plan_types(f, "q4_k_m", pure=True)


def test_quantize_refusals(sources, quantized, tmp_path):
    d, files = sources
    with pytest.raises(QuantizeError, match="unknown type 'q9_9'"):
        plan_types(files["rand_q"], "q9_9")
    with pytest.raises(QuantizeError, match="requantizing from type q4_0 is disabled"):
        quantize_file(quantized["rand_q", "q4_0"], tmp_path / "x.gguf", "q8_0")
    # rand_f32's ffn_down rows have 172 elements: llama.cpp's quantize aborts (GGML_ASSERT); this says why
    write_random_llama(tmp_path / "f32.gguf", VOCAB, **MODELS["rand_f32"][0])
    with pytest.raises(QuantizeError, match=r"'blk.0.ffn_down.weight' ne=\[172, 64\]: rows of 172 elements"):
        quantize_file(tmp_path / "f32.gguf", tmp_path / "x.gguf", "q4_0")
    gguf_write(tmp_path / "falcon.gguf", {"general.architecture": "falcon"}, {})
    with pytest.raises(QuantizeError, match="architecture is 'falcon'"):
        quantize_file(tmp_path / "falcon.gguf", tmp_path / "x.gguf", "q4_0")
    assert not os.path.exists(tmp_path / "x.gguf")


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "graphcore_models.llama", *args], capture_output=True, timeout=timeout,
                          cwd=ROOT)


def test_cli_quantize(sources, tmp_path):
    d, _ = sources
    out = tmp_path / "q.gguf"
    r = _cli("quantize", str(d / "rand_gqa_f16.gguf"), str(out), "Q5_1")
    assert r.returncode == 0, r.stderr
    assert _sha256(out) == REF["rand_gqa_f16-q5_1"]["sha256"]
    assert b"output.weight" in r.stderr and b"quantized to q8_0" in r.stderr
    for args, msg in [(("x.gguf", "y.gguf", "q4_0"), b"x.gguf: no such file"),
                      ((str(d / "rand_gqa_f16.gguf"), str(out), "q7_0"), b"unknown type 'q7_0'"),
                      ((VOCAB, str(tmp_path / "v.gguf"), "f32"), b"unknown type 'f32'"),
                      ((str(out), str(tmp_path / "r.gguf"), "q8_0"), b"requantizing from type q5_1"),
                      ((str(out), str(out), "q8_0"), b"would overwrite the input")]:
        r = _cli("quantize", *args)
        assert r.returncode == 1 and r.stderr.startswith(b"graphcore-llama: error: ") and msg in r.stderr, r.stderr
        assert b"Traceback" not in r.stderr


# -- GGUF files with quantized tensors -----------------------------------------------------------------------
def _write_raw(path, name, blocks, type_):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType(type_))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("type_", [gc.TYPE_Q4_0, gc.TYPE_Q5_1, gc.TYPE_Q8_0, gc.TYPE_Q4_K, gc.TYPE_Q6_K])
def test_gguf_roundtrip_of_quantized_tensors(tmp_path, type_):
    x = np.random.default_rng(type_).standard_normal((3, 512)).astype(np.float32)
    with gc.init(1 << 20) as ctx:
        t = gc.new_tensor_2d(ctx, type_, 512, 3)
        t.numpy()[...] = gc.quantize(x, type_)
        gguf_write(tmp_path / "q.gguf", {"general.architecture": "llama"}, {"w": t})
        blocks = t.numpy().copy()
    f = gguf_read(tmp_path / "q.gguf")
    w = f.tensor("w", [512, 3])
    assert w.type == type_ and np.array_equal(w.numpy(), blocks)
    assert np.shares_memory(w.numpy(), f.ctx.arena)                 # zero-copy from the map
    np.testing.assert_array_equal(gc.dequantize(w.numpy(), type_), gc.dequantize(blocks, type_))


def test_gguf_refuses_bad_quantized_tensors(tmp_path):
    q = gc.quantize(np.ones((2, 64), np.float32), gc.TYPE_Q8_0)
    bad = q.copy()
    bad[1, 34:36] = np.array([0x00, 0x7C], np.uint8)                  # block 3's fp16 scale := +inf
    _write_raw(tmp_path / "inf.gguf", "w", bad, gc.TYPE_Q8_0)
    with pytest.raises(GGUFError, match=r"tensor 'w' \(q8_0\) is corrupt: block 3 has a scale of inf"):
        gguf_read(tmp_path / "inf.gguf")
    _write_raw(tmp_path / "ok.gguf", "w", q, gc.TYPE_Q8_0)
    data = open(tmp_path / "ok.gguf", "rb").read()
    open(tmp_path / "cut.gguf", "wb").write(data[:-40])          # 136 bytes of blocks padded to 160: cut into them
    with pytest.raises(GGUFError, match="cut.gguf: truncated"):
        gguf_read(tmp_path / "cut.gguf")
    # a Q4_0 tensor whose header says rows of 48 elements: not whole blocks of 32
    _write_raw(tmp_path / "rows.gguf", "w", np.zeros((2, 36), np.uint8), gc.TYPE_Q4_0)
    data = open(tmp_path / "rows.gguf", "rb").read()
    dims = struct.pack("<IQQ", 2, 64, 2)                       # n_dims, ne0, ne1 of the tensor info
    assert data.count(dims) == 1
    open(tmp_path / "rows.gguf", "wb").write(data.replace(dims, struct.pack("<IQQ", 2, 48, 2)))
    with pytest.raises(GGUFError, match=r"rows.gguf: .*\(48\) is not a multiple of Q4_0 block size"):
        gguf_read(tmp_path / "rows.gguf")
