"""Pair up tokens of two vocabularies by their strings.

Embedding rows are compared token by token, and token *ids* are not stable across derivatives (vocabulary
extension, reordering, a different tokenizer file format), so rows are paired by token *string*. Converters
also rewrite strings: llama.cpp writes WordPiece ``##ing`` as ``ing`` and word-initial ``the`` as ``▁the``;
byte-level BPE uses ``Ġ``. When exact strings overlap poorly we fall back to a normalised form and drop
every normalised string that became ambiguous, so no row is ever paired with the wrong token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["REWRITES", "TokenAlignment", "align_tokens", "best_rewrite", "normalize_token"]

_PREFIXES = ("▁", "Ġ", "##", " ")


def _special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or (token.startswith("<") and token.endswith(">"))


def _wordpiece_to_llamacpp(token: str) -> str:
    """llama.cpp's conversion of a WordPiece vocabulary: ``##x`` → ``x``, word-initial ``x`` → ``▁x``."""
    if _special(token):
        return token
    return token[2:] if token.startswith("##") and len(token) > 2 else "▁" + token


def _llamacpp_to_wordpiece(token: str) -> str:
    if _special(token):
        return token
    return token[1:] if token.startswith("▁") and len(token) > 1 else "##" + token


REWRITES = {
    "identity": lambda t: t,
    "WordPiece→llama.cpp": _wordpiece_to_llamacpp,
    "llama.cpp→WordPiece": _llamacpp_to_wordpiece,
}
"""Exact, invertible rewrites that converters apply to token strings. Unlike `normalize_token` they keep
word-initial and continuation pieces apart (``the`` and ``##the`` stay different tokens)."""


def best_rewrite(
    wanted: Sequence[str], vocabulary: Mapping[str, int] | Sequence[str]
) -> tuple[str, list[str]]:
    """The rewrite of `REWRITES` under which most ``wanted`` strings exist in ``vocabulary``; returns its name
    and the rewritten strings (in ``wanted`` order)."""
    vocab = vocabulary if isinstance(vocabulary, Mapping) else set(vocabulary)
    best = ("identity", list(wanted), -1)
    for name, fn in REWRITES.items():
        rewritten = [fn(t) for t in wanted]
        hits = sum(r in vocab for r in rewritten)
        if hits > best[2]:
            best = (name, rewritten, hits)
    return best[0], best[1]


def normalize_token(token: str) -> str:
    """Strip word-boundary markers (``▁``, ``Ġ``, ``##``, a leading space) that converters rewrite."""
    for p in _PREFIXES:
        if token.startswith(p) and len(token) > len(p):
            return token[len(p) :]
    return token


@dataclass(frozen=True)
class TokenAlignment:
    """Which rows of two token lists hold the same token.

    Attributes:
        ref_index (`np.ndarray`): positions in the reference list.
        sus_index (`np.ndarray`): matching positions in the suspect list.
        mode (`str`): ``exact`` or ``normalized``.
    """

    ref_index: np.ndarray
    sus_index: np.ndarray
    mode: str

    def __len__(self) -> int:
        return len(self.ref_index)


def _pair(ref: Sequence[str], sus: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ref_counts, sus_counts = Counter(ref), Counter(sus)
    where = {t: i for i, t in enumerate(sus) if sus_counts[t] == 1}
    ia, ib = [], []
    for i, t in enumerate(ref):
        if ref_counts[t] == 1 and t in where:
            ia.append(i)
            ib.append(where[t])
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


def align_tokens(
    ref_tokens: Sequence[str], sus_tokens: Sequence[str], *, min_fraction: float = 0.5
) -> TokenAlignment:
    """Pair tokens that occur exactly once in each list; normalise markers if exact pairing is poor."""
    ia, ib = _pair(ref_tokens, sus_tokens)
    if len(ia) >= min_fraction * max(1, len(ref_tokens)):
        return TokenAlignment(ia, ib, "exact")
    na, nb = _pair([normalize_token(t) for t in ref_tokens], [normalize_token(t) for t in sus_tokens])
    if len(na) > len(ia):
        return TokenAlignment(na, nb, "normalized")
    return TokenAlignment(ia, ib, "exact")
