"""The llama SPM tokenizer against token ids recorded from llama.cpp 4480542's llama_tokenize on its llama
vocabulary (tests/data/ggml-vocab-llama.gguf): prose, code, Unicode, runs of spaces and newlines, the empty
string, control pieces with and without special parsing."""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from graphcore.gguf_io import gguf_read
from graphcore_models.llama.tokenizer import SPMTokenizer, TokenizerError

DATA = os.path.join(os.path.dirname(__file__), "data")
REF = json.load(open(os.path.join(DATA, "llama_reference.json")))["tokenizer"]


@pytest.fixture(scope="module")
def tok():
    return SPMTokenizer.from_gguf(gguf_read(os.path.join(DATA, "ggml-vocab-llama.gguf")))


def test_reference_covers_the_required_kinds_of_text():
    texts = REF["texts"]
    assert "" in texts and any("def " in t for t in texts) and any("日本語" in t for t in texts)
    assert any("   " in t for t in texts) and any("\n\n\n" in t for t in texts) and any("🦙" in t for t in texts)


@pytest.mark.parametrize("i", range(len(REF["texts"])))
def test_ids_equal_llama_cpp(tok, i):
    text = REF["texts"][i]
    assert tok.encode(text) == REF["ids"][i]                       # perplexity's way: no special parsing
    assert tok.encode(text, special=True) == REF["ids_special"][i]  # main's way: </s>, <0x0A> become tokens


def test_bos_space_prefix_byte_fallback(tok):
    assert tok.encode("") == [1] and tok.encode("", bos=False) == []
    assert tok.encode("Hello world") == [1, 15043, 3186]               # "▁Hello", "▁world"
    assert tok.encode("🦙", bos=False) == [29871, 243, 162, 169, 156]  # "▁" then <0xF0><0x9F><0xA6><0x99>
    assert tok.encode("</s>", bos=False, special=True) == [2]
    assert tok.encode("</s>", bos=False) != [2]


def test_pieces_and_decoding(tok):
    assert tok.piece_bytes(15043) == b" Hello"       # ▁ shown as a space
    assert tok.piece_bytes(1) == b""                  # control tokens print nothing
    assert tok.piece_bytes(0) == "\u2585".encode()    # unknown: llama.cpp's ▅
    assert tok.piece_bytes(13) == b"\n"               # <0x0A>
    with pytest.raises(TokenizerError, match="token id 32000 is outside"):
        tok.piece_bytes(32000)


@settings(max_examples=60)
@given(st.text(max_size=40))
def test_decode_inverts_encode(tok, text):
    # SPM is lossless on any text (byte fallback); llama.cpp's decoding keeps the prefixed space
    assert tok.decode(tok.encode(text, bos=False)) == (" " + text if text else "")


def test_bad_vocabularies():
    with pytest.raises(TokenizerError, match="empty"):
        SPMTokenizer([])
    with pytest.raises(TokenizerError, match="3 tokens but 2 scores"):
        SPMTokenizer(["a", "b", "c"], scores=[0.0, 1.0])
    # a vocabulary without byte pieces: characters that form no piece become the unknown id
    t = SPMTokenizer(["<unk>", "<s>", "</s>", "\u2581a", "b"], types=[2, 3, 3, 1, 1])
    assert t.encode("ab z", bos=False) == [3, 4, 0, 0, 0, 0]     # "▁" (3 bytes) and "z": one unknown per byte
