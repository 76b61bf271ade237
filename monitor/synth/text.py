"""Training text that every machine has: the Python standard library's own source.

The demo, the tests and the detection benchmark train small models here, offline and reproducibly. The
standard library is present wherever HubSentry runs, identical for one Python version, and splits
naturally into disjoint halves (modules ``a``–``m`` and ``n``–``z``), which gives the "same data" and
"different data" conditions the benchmark needs.
"""

from __future__ import annotations

import re
import sysconfig
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["SPECIAL_TOKENS", "WordVocab", "corpus_files", "load_corpus", "tokenize_words"]

Split = Literal["all", "a-m", "n-z"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORD = re.compile(r"[a-z]+|\d|[^\sa-z\d]")


def corpus_files(split: Split = "all") -> list[Path]:
    """The top-level standard-library modules, sorted by name, optionally one half of them."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"), key=lambda p: p.name)
    if split == "a-m":
        return [f for f in files if f.name[0].lower() <= "m"]
    if split == "n-z":
        return [f for f in files if f.name[0].lower() > "m"]
    return files


def load_corpus(split: Split = "all", *, max_chars: int | None = None) -> str:
    """Concatenated source text of a split (deterministic for a given Python version)."""
    parts: list[str] = []
    total = 0
    for f in corpus_files(split):
        text = f.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    joined = "\n".join(parts)
    return joined if max_chars is None else joined[:max_chars]


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words, single digits and single punctuation characters."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class WordVocab:
    """A word-level vocabulary: special tokens first, then words by descending frequency.

    Attributes:
        tokens (`tuple[str, ...]`): token strings by id.
    """

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, words: Iterable[str], size: int) -> WordVocab:
        counts = Counter(words)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        body = [w for w, _ in ranked if w not in SPECIAL_TOKENS][: size - len(SPECIAL_TOKENS)]
        return cls(tuple(SPECIAL_TOKENS) + tuple(body))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, words: Sequence[str]) -> np.ndarray:
        idx = self.index
        unk = idx["[UNK]"]
        return np.fromiter((idx.get(w, unk) for w in words), dtype=np.int64, count=len(words))

    def id(self, token: str) -> int:
        return self.index[token]

    def vocab_txt(self) -> str:
        """BERT-style ``vocab.txt``: one token per line, line number = id."""
        return "\n".join(self.tokens) + "\n"

    def tokenizer_json(self) -> dict[str, object]:
        """A ``tokenizers``-format ``tokenizer.json`` with a WordLevel model (what hub repos ship)."""
        index = self.index
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": index[t],
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for t in SPECIAL_TOKENS
                if t in index
            ],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None,
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": index, "unk_token": "[UNK]"},
        }
