"""A generated Llama-2-like vocabulary: the token strings shared by a virtual model's formats.

Real repos of one model carry one vocabulary in several places: ``tokenizer.json`` next to safetensors
(and GPTQ) weights, ``tokenizer.ggml.tokens`` inside a GGUF header. Matching suspects by token *string*
depends on that, and so does the size of a GGUF header (Llama-2's 32,000 tokens, scores and types are
most of its ~0.9 MB). `llama_vocab` builds such a vocabulary deterministically from a seed, without any
download: byte-pair encoding learnt on a Zipf-weighted list of pseudo-English words (syllable model),
laid out as Llama-2's SentencePiece model is; `tokenizer_json` renders it as the ``tokenizers`` file
``transformers`` writes for Llama-2.

Example::

    vocab = llama_vocab(32000)           # about 2 s, cached per process
    vocab.tokens[:3], vocab.tokens[259]  # ('<unk>', '<s>', '</s>'), '▁t'
"""

from __future__ import annotations

import functools
import heapq
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from monitor.localhub.virtual import uniform_values

__all__ = [
    "MIN_VOCAB",
    "SPECIAL_TOKENS",
    "TOKEN_TYPES",
    "WORD",
    "LlamaVocab",
    "llama_vocab",
    "tokenizer_json",
]

WORD = "\u2581"
"""SentencePiece's word-start marker, as in Llama-2 tokens (``▁the``)."""
TOKEN_TYPES = {"normal": 1, "unknown": 2, "control": 3, "byte": 6}
"""``tokenizer.ggml.token_type`` values (llama.cpp ``LLAMA_TOKEN_TYPE_*``)."""
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
"""Ids 0, 1, 2: unknown, beginning and end of sequence."""
MIN_VOCAB = 64
"""Smallest vocabulary `llama_vocab` builds."""
_BYTE_FALLBACK_MIN = 1024
"""Vocabularies at least this big get Llama-2's 256 ``<0xNN>`` byte tokens."""
_ONSETS = (("", 30), ("t", 9), ("th", 8), ("s", 7), ("c", 5), ("p", 5), ("b", 4), ("m", 5), ("d", 5),
           ("f", 4), ("h", 4), ("w", 4), ("l", 4), ("r", 4), ("n", 4), ("g", 3), ("st", 3), ("pr", 3),
           ("tr", 3), ("ch", 2), ("sh", 2), ("br", 1.5), ("gr", 1.5), ("cl", 1.2), ("pl", 1.2),
           ("fr", 1.2), ("k", 1), ("v", 1.5), ("j", 0.6), ("qu", 0.5), ("sp", 1), ("wh", 1.2),
           ("y", 0.8), ("z", 0.2), ("x", 0.1))  # fmt: skip
_NUCLEI = (("e", 12), ("a", 10), ("i", 9), ("o", 9), ("u", 4), ("ea", 2), ("ou", 2), ("ai", 1),
           ("io", 1.5), ("y", 1), ("ee", 1), ("oo", 1), ("ie", 0.8), ("au", 0.4))  # fmt: skip
_CODAS = (("", 30), ("n", 8), ("r", 7), ("s", 7), ("t", 7), ("l", 5), ("nd", 3), ("st", 2.5), ("ng", 3),
          ("nt", 2.5), ("m", 2.5), ("ck", 1), ("d", 4), ("ll", 1.5), ("rs", 1), ("ct", 1), ("x", 0.3),
          ("ss", 1), ("rt", 1), ("ld", 1), ("ch", 0.8), ("sh", 0.5), ("ty", 1), ("ly", 1.5), ("ed", 2),
          ("er", 3))  # fmt: skip
_SYMBOLS = "0123456789.,-()'\":;/_=!?*[]{}<>#%&+@$\\|~^`"
_EXTRA_RANGES = ((0xC0, 0x100), (0x391, 0x3CA), (0x410, 0x450), (0x3041, 0x3097), (0x30A1, 0x30FB),
                 (0x4E00, 0x5200), (0xAC00, 0xAD00))  # fmt: skip
"""Latin-1, Greek, Cyrillic, kana, CJK and Hangul: the single characters at the end of the vocabulary."""


@dataclass(frozen=True)
class LlamaVocab:
    """A generated Llama-2-like vocabulary.

    Attributes:
        tokens (`tuple[str, ...]`): token strings by id.
        scores (`tuple[float, ...]`): SentencePiece scores (0 for specials and bytes, then ``-rank``).
        types (`tuple[int, ...]`): `TOKEN_TYPES` values by id.
        merges (`tuple[tuple[str, str], ...]`): BPE merges in rank order (each joins two tokens).
        byte_fallback (`bool`): whether the ``<0xNN>`` byte tokens are present.
    """

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    merges: tuple[tuple[str, str], ...]
    byte_fallback: bool

    def __len__(self) -> int:
        return len(self.tokens)


def _pick(table: tuple[tuple[str, float], ...], u: np.ndarray) -> list[str]:
    weights = np.cumsum([w for _, w in table], dtype=np.float64)
    idx = np.minimum(np.searchsorted(weights / weights[-1], u, side="right"), len(table) - 1)
    return [table[i][0] for i in idx]


def _word_counts(seed: int, n_words: int, *, rich: bool) -> dict[str, int]:
    """Zipf-weighted pseudo-words from a syllable model (``rich``: capitals, numbers, punctuation)."""
    u = uniform_values(seed, "vocab/words", 0, n_words * 16).reshape(n_words, 16)
    n_syl = 1 + np.searchsorted(np.cumsum([0.38, 0.34, 0.18, 0.10]), u[:, 0], side="right")
    parts = [
        (_pick(_ONSETS, u[:, 1 + 3 * j]), _pick(_NUCLEI, u[:, 2 + 3 * j]), _pick(_CODAS, u[:, 3 + 3 * j]))
        for j in range(4)
    ]
    counts: dict[str, int] = {}
    for i in range(n_words):
        if rich and u[i, 14] < 0.06:  # numbers and punctuation runs
            n = 1 + int(u[i, 15] * 4)
            word = "".join(_SYMBOLS[int(x * len(_SYMBOLS)) % len(_SYMBOLS)] for x in u[i, 1 : 1 + n])
        else:
            word = "".join(o[i] + v[i] + c[i] for o, v, c in parts[: min(int(n_syl[i]), 4)])
            if rich and u[i, 13] < 0.08:
                word = word[:1].upper() + word[1:]
        key = WORD + word
        counts[key] = counts.get(key, 0) + 10_000_000 // (i + 10)
    return counts


def _bpe_merges(counts: dict[str, int], n_merges: int) -> list[tuple[str, str]]:
    """Byte-pair encoding on a weighted word list: repeatedly join the most frequent adjacent pair.

    Integer counts and lexicographic tie-breaking make the result identical on every machine.
    """
    words = list(counts.items())
    symbols = [list(w) for w, _ in words]
    weight = [c for _, c in words]
    pairs: dict[tuple[str, str], int] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(symbols):
        for pair in pairwise(syms):
            pairs[pair] += weight[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        current = pairs.get(pair, 0)
        if current <= 0:
            continue
        if current != -neg:  # stale entry: requeue with the current count
            heapq.heappush(heap, (-current, pair))
            continue
        merges.append(pair)
        joined = pair[0] + pair[1]
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            old = symbols[i]
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == pair[0] and old[j + 1] == pair[1]:
                    new.append(joined)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            if len(new) == len(old):
                continue  # stale index entry: the pair was merged away earlier
            symbols[i] = new
            for q in pairwise(old):
                pairs[q] -= weight[i]
            for q in pairwise(new):
                pairs[q] += weight[i]
                if joined in q:  # only pairs with the new symbol are new; the rest are unchanged or fewer
                    where.setdefault(q, set()).add(i)
                    touched.add(q)
        for q in sorted(touched):
            heapq.heappush(heap, (-pairs[q], q))
        pairs.pop(pair, None)
    return merges


@functools.lru_cache(maxsize=4)
def llama_vocab(size: int = 32000, *, seed: int = 0) -> LlamaVocab:
    """A deterministic Llama-2-like vocabulary of ``size`` tokens (a pure function of the arguments).

    Layout as Llama-2's SentencePiece model: ``<unk>`` (unknown), ``<s>`` and ``</s>`` (control), the
    256 byte-fallback tokens ``<0x00>``…``<0xFF>`` (vocabularies of at least 1024), BPE pieces learnt on
    a Zipf-weighted pseudo-English word list (``▁the``-style word starts, ``ing``-style continuations;
    mean length ≈ 7 characters), and single characters (Latin, Greek, Cyrillic, kana, CJK, Hangul) last.
    32,000 tokens take about two seconds to generate; results are cached per process.

    Raises:
        `ValueError`: ``size`` is below 64.
    """
    if size < MIN_VOCAB:
        raise ValueError(f"a generated vocabulary needs at least {MIN_VOCAB} tokens, got {size}")
    rich = size >= _BYTE_FALLBACK_MIN
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)] if rich else []
    base = [WORD, *"etaoinshrdlcumwfgypbvkjxqz"]
    if rich:
        base += [*"ETAOINSHRDLCUMWFGYPBVKJXQZ", *_SYMBOLS]
        base += [chr(c) for lo, hi in _EXTRA_RANGES for c in range(lo, hi) if chr(c).isprintable()]
    free = size - len(SPECIAL_TOKENS) - len(byte_tokens)
    n_chars = min(len(base), max(27 if not rich else 27 + 26 + len(_SYMBOLS), free // 20))
    chars = base[:n_chars]
    n_merges = free - n_chars
    merges: list[tuple[str, str]] = []
    n_words = max(2000, n_merges)
    while True:  # grow the word list until it supports enough merges (one pass for Llama-2 sizes)
        merges = _bpe_merges(_word_counts(seed, n_words, rich=rich), n_merges)
        if len(merges) >= n_merges:
            break
        n_words *= 2
    pieces = [a + b for a, b in merges]
    tokens = (*SPECIAL_TOKENS, *byte_tokens, *pieces, *chars)
    if len(set(tokens)) != len(tokens):
        raise AssertionError("generated vocabulary has duplicate tokens")  # cannot happen: BPE joins are new
    n_fixed = len(SPECIAL_TOKENS) + len(byte_tokens)
    scores = (0.0,) * n_fixed + tuple(-float(i) for i in range(len(pieces) + len(chars)))
    types = (
        TOKEN_TYPES["unknown"],
        TOKEN_TYPES["control"],
        TOKEN_TYPES["control"],
        *(TOKEN_TYPES["byte"],) * len(byte_tokens),
        *(TOKEN_TYPES["normal"],) * (len(pieces) + len(chars)),
    )
    return LlamaVocab(tokens, scores, types, tuple(merges), byte_fallback=rich)


def _added(token_id: int, content: str) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def tokenizer_json(vocab: LlamaVocab) -> dict[str, Any]:
    """The ``tokenizer.json`` ``transformers`` writes for a Llama-2 tokenizer, over ``vocab``.

    A ``tokenizers`` BPE model with byte fallback, SentencePiece-style normaliser (prepend ``▁``,
    spaces to ``▁``) and decoder, and ``<s>`` prepended by the post-processor.
    """
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, t) for i, t in enumerate(SPECIAL_TOKENS)],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": WORD},
                {"type": "Replace", "pattern": {"String": " "}, "content": WORD},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                bos,
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": WORD}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": vocab.byte_fallback,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab.tokens)},
            "merges": [list(m) for m in vocab.merges],
        },
    }
