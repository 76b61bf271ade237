"""Rank protected models for an upload in milliseconds, before any expensive test runs.

Screening only orders candidates; it is never evidence. The sketch of a model is the cosine Gram matrix of
the embeddings of a fixed list of tokens (its upper triangle, z-normalised): invariant to rotations,
permutations, sign flips and rescaling of the residual stream, robust to quantisation and moderate
fine-tuning. Independently trained models share some of this structure (measured sketch correlation
0.52–0.59 between independent small models, 0.76 after a heavy fine-tune, ≥ 0.99 for obfuscated copies),
so the index returns the top candidates plus everything above a floor, and the exact tests decide.

Sketches of protected models sharing a token list are stacked into one matrix, so one upload is screened
against thousands of them with a single matrix–vector product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SKETCH_TOKENS", "ScreeningIndex", "gram_sketch"]

SKETCH_TOKENS = 64


def gram_sketch(embed: np.ndarray) -> np.ndarray:
    """Z-normalised upper triangle of the cosine Gram matrix of token embedding rows."""
    x = np.asarray(embed, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-12)
    g = x @ x.T
    iu = np.triu_indices(x.shape[0], 1)
    v = g[iu].astype(np.float32)
    sd = float(v.std())
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


@dataclass
class _Group:
    tokens: tuple[str, ...]
    names: list[str] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    matrix: np.ndarray | None = None


class ScreeningIndex:
    """Sketches of protected models, grouped by their sketch token list."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, ...], _Group] = {}

    def __len__(self) -> int:
        return sum(len(g.names) for g in self._groups.values())

    def add(self, name: str, tokens: Sequence[str], embed: np.ndarray) -> None:
        """Register a protected model by the first `SKETCH_TOKENS` rows of its token block."""
        toks = tuple(tokens[:SKETCH_TOKENS])
        group = self._groups.setdefault(toks, _Group(toks))
        group.names.append(name)
        group.rows.append(gram_sketch(np.asarray(embed)[: len(toks)]))
        group.matrix = None

    def token_lists(self) -> list[tuple[str, ...]]:
        """The token lists a suspect must provide rows for (one per group)."""
        return list(self._groups)

    def query(
        self, tokens: Sequence[str], embed: np.ndarray, *, top: int = 16, floor: float = 0.7
    ) -> list[tuple[str, float]]:
        """Candidates for a suspect, best first: the ``top`` best plus any with correlation ≥ ``floor``.

        Args:
            tokens (`Sequence[str]`): token strings of the suspect rows in ``embed``.
            embed (`np.ndarray`): suspect embedding rows for those tokens.
        """
        where = {t: i for i, t in enumerate(tokens)}
        scored: list[tuple[str, float]] = []
        for toks, group in self._groups.items():
            if not all(t in where for t in toks):
                continue  # the suspect lacks some sketch tokens: the caller tests these candidates directly
            if group.matrix is None:
                group.matrix = np.stack(group.rows)
            sketch = gram_sketch(np.asarray(embed)[[where[t] for t in toks]])
            sims = group.matrix @ sketch / max(1, sketch.shape[0])
            scored.extend(zip(group.names, sims.tolist(), strict=True))
        scored.sort(key=lambda kv: -kv[1])
        keep = scored[:top] + [kv for kv in scored[top:] if kv[1] >= floor]
        return keep
