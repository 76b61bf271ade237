"""Pair up tokens of two vocabularies by their strings.

Embedding rows are compared token by token, and token *ids* are not stable across derivatives (vocabulary
extension, reordering, a different tokenizer file format), so rows are paired by token *string*. Converters
also rewrite strings: llama.cpp writes WordPiece ``##ing`` as ``ing`` and word-initial ``the`` as ``▁the``;
byte-level BPE uses ``Ġ``. When exact strings overlap poorly we fall back to a normalised form and drop
every normalised string that became ambiguous, so no row is ever paired with the wrong token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TokenAlignment", "align_tokens", "normalize_token"]

_PREFIXES = ("▁", "Ġ", "##", " ")


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
