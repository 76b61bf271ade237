"""Matching units of one model to units of another, and the order statistics of a matching.

All exact tests in HubSentry share one shape: match each sampled unit of the suspect to its most similar
unit of the protected model *using content only*, then ask whether the *labels* (positions) of the matches
line up. Under the null of independent initialisation the labels of the suspect's units are exchangeable,
so the arrangement of matched labels is uniformly random whatever the content similarity — that is where
the p-value comes from (see `fingerprints.stats.increasing_run_tail_log10`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

__all__ = ["Matches", "best_matches", "increasing_run", "standardize_rows"]


def standardize_rows(x: np.ndarray) -> np.ndarray:
    """Centre each row and scale it to unit length (so dot products are Pearson correlations).

    Constant rows (zero variance: pruned units, all-zero padding) become zero rows and match nothing.
    """
    x = np.asarray(x, dtype=np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-12)


@dataclass(frozen=True)
class Matches:
    """Best match of each query row among reference rows.

    Attributes:
        index (`np.ndarray`): ``(K,)`` int, the best reference row for each query row (-1 if none).
        score (`np.ndarray`): ``(K,)`` its similarity (correlation, or absolute correlation).
        runner_up (`np.ndarray`): ``(K,)`` the second-best similarity (a margin says how clear a match is).
        sign (`np.ndarray`): ``(K,)`` +1/-1, the sign of the best correlation (sign flips).
    """

    index: np.ndarray
    score: np.ndarray
    runner_up: np.ndarray
    sign: np.ndarray


def best_matches(query: np.ndarray, reference: np.ndarray, *, absolute: bool = False) -> Matches:
    """Match standardized query rows to standardized reference rows by correlation.

    Args:
        query (`np.ndarray`): ``(K, n)`` standardized rows (see `standardize_rows`).
        reference (`np.ndarray`): ``(R, n)`` standardized rows.
        absolute (`bool`): match on ``|corr|`` (sign flips are a symmetry, e.g. residual dimensions).
    """
    corr = query @ reference.T
    sim = np.abs(corr) if absolute else corr
    k = sim.shape[0]
    if sim.shape[1] == 0:
        empty = np.full(k, -1)
        return Matches(empty, np.zeros(k), np.zeros(k), np.ones(k))
    idx = np.argmax(sim, axis=1)
    rows = np.arange(k)
    best = sim[rows, idx].copy()
    sign = np.sign(corr[rows, idx])
    sign[sign == 0] = 1
    if sim.shape[1] > 1:
        sim[rows, idx] = -np.inf  # in place: both matrices were made here and are not needed again
        runner = sim.max(axis=1)
    else:
        runner = np.zeros(k)
    valid = np.linalg.norm(query, axis=1) > 0
    idx = np.where(valid, idx, -1)
    return Matches(idx, np.where(valid, best, 0.0), np.where(valid, runner, 0.0), sign)


def increasing_run(values: np.ndarray) -> np.ndarray:
    """Positions of a longest *strictly* increasing subsequence (patience sorting, O(K log K)).

    Entries < 0 (unmatched) are skipped. The returned positions index ``values`` in increasing order.
    """
    tails: list[int] = []  # tails[i] = smallest tail value of an increasing run of length i+1
    tail_pos: list[int] = []
    parent = np.full(len(values), -1)
    for pos, v in enumerate(np.asarray(values).tolist()):
        if v < 0:
            continue
        i = bisect.bisect_left(tails, v)
        if i == len(tails):
            tails.append(v)
            tail_pos.append(pos)
        else:
            tails[i] = v
            tail_pos[i] = pos
        parent[pos] = tail_pos[i - 1] if i > 0 else -1
    if not tails:
        return np.zeros(0, dtype=np.int64)
    out = []
    pos = tail_pos[-1]
    while pos >= 0:
        out.append(pos)
        pos = parent[pos]
    return np.asarray(out[::-1], dtype=np.int64)
