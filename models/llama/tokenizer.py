"""The llama SentencePiece (SPM) tokenizer as llama.cpp 4480542 runs it from a GGUF's tokenizer.ggml.* arrays.

Written out rather than delegated to the `sentencepiece` library because llama.cpp does not run
sentencepiece: it runs its own bigram merge (llm_tokenizer_spm) over UTF-8 characters, highest piece
score first, ties to the leftmost pair, with byte fallback `<0xNN>` for characters that form no piece;
it prefixes a space only when the text's first fragment is plain text, and splits out "special" pieces
(control tokens found by its own rule) only when asked (`main` does, `perplexity` does not). Those
rules, not sentencepiece's normaliser, decide the ids; this module reproduces them, and the tests
compare its ids with ids recorded from llama.cpp.
"""
from __future__ import annotations

import heapq

# token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581".encode()      # sentencepiece's visible space


def utf8_len(byte: int) -> int:
    """Bytes of the UTF-8 sequence led by `byte`, as llama.cpp's utf8_len (continuation bytes count 1)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[byte >> 4]


class TokenizerError(ValueError):
    """A vocabulary the tokenizer cannot use (missing arrays, lengths that disagree)."""


class SPMTokenizer:
    """Token ids of text and text of token ids, from the vocabulary arrays of a GGUF file."""

    def __init__(self, tokens, scores=None, types=None, bos_id=1, eos_id=2, unk_id=0, add_bos=True,
                 add_space_prefix=True):
        n = len(tokens)
        if n == 0:
            raise TokenizerError("tokenizer: the vocabulary (tokenizer.ggml.tokens) is empty")
        if scores is not None and len(scores) != n or types is not None and len(types) != n:
            raise TokenizerError(f"tokenizer: {n} tokens but {len(scores) if scores is not None else n} scores "
                                 f"and {len(types) if types is not None else n} token types")
        self.pieces = [t if isinstance(t, bytes) else t.encode("utf-8") for t in tokens]
        self.scores = [float(s) for s in scores] if scores is not None else [0.0] * n
        self.types = [int(t) for t in types] if types is not None else [NORMAL] * n
        self.to_id = {}
        for i, p in enumerate(self.pieces):     # a repeated piece maps to its last id, as in llama.cpp
            self.to_id[p] = i
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos, self.add_space_prefix = add_bos, add_space_prefix
        self.special = self._special_pieces()

    @classmethod
    def from_gguf(cls, f):
        """From a graphcore.gguf_io.GGUFFile (its tokenizer.ggml.* keys)."""
        model = f.get("tokenizer.ggml.model", "llama", kind=str)
        if model != "llama":
            raise TokenizerError(f"{f.path}: tokenizer.ggml.model is '{model}'; only 'llama' (SPM) is supported")
        tokens = f.get("tokenizer.ggml.tokens", required=True, kind=list)
        n = len(tokens)

        def special(key, default):
            v = f.get(key, None, kind=int)
            return v if v is not None and 0 <= v < n else default
        add_bos = f.get("tokenizer.ggml.add_bos_token", True, kind=bool)
        return cls(tokens, f.get("tokenizer.ggml.scores", None, kind=list),
                   f.get("tokenizer.ggml.token_type", None, kind=list),
                   special("tokenizer.ggml.bos_token_id", 1), special("tokenizer.ggml.eos_token_id", 2),
                   special("tokenizer.ggml.unknown_token_id", 0), add_bos,
                   f.get("tokenizer.ggml.add_space_prefix", True, kind=bool))

    @property
    def n_vocab(self):
        return len(self.pieces)

    def _special_pieces(self):
        """llama.cpp's special-token cache: pieces of more than one character that cannot be split into
        two pieces of the vocabulary (control tokens such as <s>, </s>), longest first."""
        out = []
        for piece, i in self.to_id.items():
            if len(piece) <= 1:
                continue
            j, splittable = 1, False
            while j < len(piece):
                u = utf8_len(piece[j - 1])
                if u == 1:
                    if piece[:j] in self.to_id and piece[j:] in self.to_id:
                        splittable = True
                        break
                    j += 1
                else:
                    j += u - 1
            if splittable:
                continue
            chars, k = 0, 0
            while k < len(piece):
                chars += 1
                k += utf8_len(piece[k])
            if chars > 1:
                out.append((piece, i))
        out.sort(key=lambda p: (-len(p[0]), p[1]))
        return out

    # -- text -> ids ---------------------------------------------------------------------------------
    def encode(self, text, bos=None, special=False):
        """llama_tokenize(text, add_bos, special): ids of `text` (str or UTF-8 bytes)."""
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        out = [self.bos_id] if (self.add_bos if bos is None else bos) else []
        if not raw:
            return out
        frags = self._partition(raw) if special else [raw]
        for k, frag in enumerate(frags):
            if isinstance(frag, int):
                out.append(frag)
                continue
            if k == 0 and self.add_space_prefix:
                frag = b" " + frag
            self._spm(frag.replace(b" ", SPACE), out)
        return out

    def _partition(self, raw):
        """Split out special pieces: a list of byte strings and ids."""
        frags = [raw]
        for piece, i in self.special:
            nxt = []
            for f in frags:
                if isinstance(f, int):
                    nxt.append(f)
                    continue
                parts = f.split(piece)
                for j, part in enumerate(parts):
                    if j:
                        nxt.append(i)
                    if part:
                        nxt.append(part)
            frags = nxt
        return frags

    def _spm(self, text, out):
        """llm_tokenizer_spm: merge the highest-scoring adjacent pair (leftmost on ties) until none is a
        piece; symbols that are not pieces become their bytes' <0xNN> tokens."""
        starts, ends = [], []
        o = 0
        while o < len(text):
            n = min(utf8_len(text[o]), len(text) - o)
            starts.append(o)
            ends.append(o + n)
            o += n
        m = len(starts)
        prev = list(range(-1, m - 1))
        nxt = list(range(1, m + 1))
        nxt[-1] = -1
        alive_len = [e - s for s, e in zip(starts, ends)]
        heap = []
        to_id, scores = self.to_id, self.scores

        def push(left, right):
            if left < 0 or right < 0:
                return
            piece = text[starts[left]:starts[left] + alive_len[left] + alive_len[right]]
            tid = to_id.get(piece)
            if tid is not None:
                heapq.heappush(heap, (-scores[tid], left, right, len(piece)))

        for i in range(1, m):
            push(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if alive_len[left] == 0 or alive_len[right] == 0 or alive_len[left] + alive_len[right] != size:
                continue                      # one side was merged away since this pair was queued
            alive_len[left] += alive_len[right]
            alive_len[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])
        i = 0
        while i != -1:
            piece = text[starts[i]:starts[i] + alive_len[i]]
            tid = to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                for b in piece:
                    out.append(self.byte_to_token(b))
            i = nxt[i]

    def byte_to_token(self, b):
        """The <0xNN> token of byte b (llama.cpp aborts when the vocabulary lacks it; here: unknown)."""
        return self.to_id.get(b"<0x%02X>" % b, self.unk_id)

    # -- ids -> text ---------------------------------------------------------------------------------
    def piece_bytes(self, tid):
        """llama_token_to_piece: the bytes a token stands for (control tokens: none)."""
        if not 0 <= tid < len(self.pieces):
            raise TokenizerError(f"token id {tid} is outside the vocabulary [0, {len(self.pieces)})")
        kind = self.types[tid]
        p = self.pieces[tid]
        if kind == NORMAL:
            return p.replace(SPACE, b" ")
        if kind == USER_DEFINED:
            return p
        if kind == UNKNOWN:
            return "\u2585".encode()
        if kind == BYTE:
            return bytes([int(p[3:5], 16)])
        return b""

    def decode(self, ids):
        """Text of a sequence of ids (invalid UTF-8 replaced)."""
        return b"".join(self.piece_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")
