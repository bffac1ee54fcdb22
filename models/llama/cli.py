"""graphcore-llama: run llama GGUF models (generate, perplexity, tokenize, info) and quantize them.

Errors (a missing, truncated, corrupt or unsupported file, bad arguments, a closed output pipe) end the
program with a one-line message and exit status 1 (2 for usage), never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import graphcore as gc
from graphcore.gguf_io import GGUFError, gguf_read

from .model import LlamaModel, LlamaSession
from .perplexity import perplexity
from .quantize import QuantizeError, parse_ftype, quantize_file
from .sampling import Sampler, SamplingParams
from .tokenizer import SPMTokenizer, TokenizerError

PROG = "graphcore-llama"


def _out(s):
    sys.stdout.write(s)
    sys.stdout.flush()


def _outb(b):
    """Raw bytes of token pieces, as main writes them (a character split over tokens arrives whole)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(b)
    sys.stdout.buffer.flush()


def _eta(seconds):
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def cmd_generate(a):
    model = LlamaModel(a.model)
    tok = model.tokenizer
    prompt = tok.encode(a.prompt, special=True)          # as main: BOS, special pieces parsed
    n_ctx = a.ctx_size or model.hparams.n_ctx_train
    if len(prompt) + a.n_predict > n_ctx:
        raise ValueError(f"prompt ({len(prompt)} tokens) + {a.n_predict} new tokens exceed the context of "
                         f"{n_ctx} (-c)")
    sampler = Sampler(SamplingParams(a.temp, a.top_k, a.top_p, a.repeat_penalty, a.repeat_last_n, a.seed))
    session = LlamaSession(model, n_ctx, a.threads, ggml_dots=a.ggml_dots)
    _outb(b"".join(tok.piece_bytes(t) for t in prompt))
    t0 = time.perf_counter()
    logits = session.eval(prompt)
    t_prompt = time.perf_counter() - t0
    for t in prompt:
        sampler.accept(t)
    n_gen = 0
    t1 = time.perf_counter()
    ids = []
    for _ in range(a.n_predict):
        tid = sampler.sample(logits)
        sampler.accept(tid)
        ids.append(tid)
        n_gen += 1
        if tid == tok.eos_id and not a.ignore_eos:
            break
        _outb(tok.piece_bytes(tid))
        if n_gen < a.n_predict:
            logits = session.eval([tid])
    t_gen = time.perf_counter() - t1
    _out("\n")
    if a.print_ids:
        _out(" ".join(map(str, ids)) + "\n")
    print(f"prompt: {len(prompt)} tokens in {t_prompt:.3f} s ({len(prompt) / t_prompt:.2f} tokens/s); "
          f"generation: {n_gen} tokens in {t_gen:.3f} s ({n_gen / max(t_gen, 1e-9):.2f} tokens/s)",
          file=sys.stderr)


def cmd_perplexity(a):
    model = LlamaModel(a.model)
    with open(a.file, "rb") as f:
        text = f.read()
    tok = model.tokenizer
    t0 = time.perf_counter()
    tokens = tok.encode(text, bos=tok.add_bos)
    print(f"perplexity: tokenized {len(text)} bytes into {len(tokens)} tokens in "
          f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
    session = LlamaSession(model, a.ctx_size, a.threads, ggml_dots=a.ggml_dots)
    start = time.perf_counter()

    def progress(i, n, ppl, dt):
        if i == 0:
            print(f"perplexity: calculating perplexity over {n} chunks, n_ctx={a.ctx_size}; "
                  f"{dt:.2f} seconds per pass - ETA {_eta(dt * n)}", file=sys.stderr)
        _out(f"[{i + 1}]{ppl:.4f},")
        if sys.stderr.isatty():
            done = time.perf_counter() - start
            sys.stderr.write(f"\r  chunk {i + 1}/{n}, ETA {_eta(done / (i + 1) * (n - i - 1))}  ")
            sys.stderr.flush()
    r = perplexity(session, tokens, a.ctx_size, tok.bos_id, tok.add_bos, on_chunk=progress)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    elapsed = time.perf_counter() - start
    _out("\n")
    if r.error == r.error:
        _out(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.error:.5f}\n")
    else:
        _out("Unexpected negative standard deviation of log(prob)\n")
    n_eval = len(r.chunks) * a.ctx_size
    print(f"perplexity: {n_eval} tokens evaluated in {elapsed:.2f} s ({n_eval / elapsed:.2f} tokens/s)",
          file=sys.stderr)


def cmd_tokenize(a):
    f = gguf_read(a.model)
    tok = SPMTokenizer.from_gguf(f)
    ids = tok.encode(a.prompt, bos=not a.no_bos, special=a.special)
    for i in ids:       # the vocabulary's piece (▁ for a space, <0xNN> for a byte, <s> for BOS)
        _out(f"{i:6d} -> {tok.pieces[i].decode('utf-8', errors='backslashreplace')!r}\n")


def _short(v):
    if isinstance(v, list):
        head = ", ".join(repr(x) for x in v[:5])
        return f"[{head}{', ...' if len(v) > 5 else ''}] ({len(v)} items)"
    return repr(v)


def cmd_info(a):
    f = gguf_read(a.model, skip_unsupported=True)
    n_tensors = len(f.tensors) + len(f.skipped)
    _out(f"{f.path}: {os.path.getsize(f.path)} bytes, {len(f.metadata)} metadata keys, {n_tensors} tensors\n")
    for k, v in f.metadata.items():
        _out(f"  {k:48s} {_short(v)}\n")
    total = 0
    _out(f"  {'tensor':32s} {'type':5s} {'shape (ggml ne)':24s} bytes\n")
    for name, t in f.tensors.items():
        nb = gc.nbytes(t)
        total += gc.nelements(t)
        _out(f"  {name:32s} {gc.type_name(t.type):5s} {str(t.ne[:max(1, gc.n_dims(t))]):24s} {nb}\n")
    for name, (type_name, shape) in f.skipped.items():
        total += int(np.prod(shape))
        _out(f"  {name:32s} {type_name:5s} {str(shape):24s} (a type graphcore cannot run)\n")
    _out(f"  {total} parameters\n")
    if f.metadata.get("general.architecture") == "llama" and "tokenizer.ggml.tokens" in f.metadata:
        from .model import LlamaHParams
        _out(f"  {LlamaHParams.from_gguf(f)}\n")


def cmd_quantize(a):
    ftype = parse_ftype(a.type)                 # an unknown TYPE fails before anything is read
    if os.path.abspath(a.input) == os.path.abspath(a.output):
        raise ValueError(f"quantize: the output {a.output} would overwrite the input")
    t0 = time.perf_counter()
    types = quantize_file(a.input, a.output, ftype, pure=a.pure, leave_output=a.leave_output_tensor,
                          log=lambda line: print(line, file=sys.stderr))
    n_q = sum(gc.is_quantized(t) for t in types.values())
    _out(f"{a.output}: {ftype}, {n_q} of {len(types)} tensors quantized, {os.path.getsize(a.output)} bytes "
         f"({time.perf_counter() - t0:.1f} s)\n")


def parser():
    p = argparse.ArgumentParser(prog=PROG, description="Run llama GGUF models on graphcore.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(s, threads=True):
        s.add_argument("-m", "--model", required=True, help="GGUF model file")
        if threads:
            s.add_argument("-t", "--threads", type=int, default=None, help="executor threads (default: all cores)")
            s.add_argument("--ggml-dots", action="store_true",
                           help="llama.cpp's CPU arithmetic in every product: its numbers bit for bit, slower")
    g = sub.add_parser("generate", help="continue a prompt")
    common(g)
    g.add_argument("-p", "--prompt", default="")
    g.add_argument("-n", "--n-predict", type=int, default=64)
    g.add_argument("-c", "--ctx-size", type=int, default=512, help="context size (0: the model's)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--repeat-penalty", type=float, default=1.1)
    g.add_argument("--repeat-last-n", type=int, default=64)
    g.add_argument("-s", "--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--print-ids", action="store_true", help="print the generated token ids at the end")
    q = sub.add_parser("perplexity", help="llama.cpp's perplexity of a text file")
    common(q)
    q.add_argument("-f", "--file", required=True)
    q.add_argument("-c", "--ctx-size", type=int, default=512)
    k = sub.add_parser("tokenize", help="token ids and pieces of a text")
    common(k, threads=False)
    k.add_argument("-p", "--prompt", required=True)
    k.add_argument("--no-bos", action="store_true")
    k.add_argument("--special", action="store_true", help="parse control pieces such as </s> (as main does)")
    z = sub.add_parser("quantize", help="llama.cpp's quantize: IN.gguf OUT.gguf TYPE (q4_0 ... q6_k)")
    z.add_argument("input")
    z.add_argument("output")
    z.add_argument("type", help="q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k_xs q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m "
                                "q5_k_s q5_k_m q6_k (q3_k, q4_k, q5_k: the _m mixes)")
    z.add_argument("--pure", action="store_true", help="every 2-D weight in TYPE, no k-quant mix")
    z.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight unquantized")
    i = sub.add_parser("info", help="metadata and tensor table of a GGUF file")
    common(i, threads=False)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    for name in ("threads", "n_predict", "ctx_size"):
        v = getattr(a, name, None)
        if v is not None and v < (0 if name == "ctx_size" and a.cmd == "generate" else 1):
            parser().error(f"--{name.replace('_', '-')} must be positive, got {v}")
    try:
        {"generate": cmd_generate, "perplexity": cmd_perplexity, "tokenize": cmd_tokenize,
         "info": cmd_info, "quantize": cmd_quantize}[a.cmd](a)
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python's exit flush from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (GGUFError, TokenizerError, QuantizeError, gc.GraphError, ValueError, OSError, MemoryError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
