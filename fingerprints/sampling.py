"""Secret, reproducible choices of what to read: the token block, the layers, the unit blocks.

An uploader who knew which rows HubSentry reads could leave those rows untouched and change the rest, or
change exactly those. So every choice is derived from a deployment secret with a keyed hash (BLAKE2b), and
from the identity of the thing being sampled, which makes it:

* unpredictable without the secret,
* reproducible with it (an alert's ``reproduce`` command recomputes the same verdict),
* different per suspect commit, so repeated uploads do not all probe the same rows.

The exact tests are valid for *any* choice (they condition on the rows read), so the secret protects against
targeted evasion, not against false alarms.
"""

from __future__ import annotations

import hashlib

__all__ = ["choose_head_block", "choose_layers", "choose_token_block", "choose_unit_block", "keyed_int"]


def keyed_int(secret: bytes, *parts: object, bound: int) -> int:
    """A uniform integer in ``[0, bound)`` from a keyed hash of ``parts`` (bias below 2^-64)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    msg = "\x1f".join(str(p) for p in parts).encode()
    digest = hashlib.blake2b(msg, key=secret[:64], digest_size=16).digest()
    return int.from_bytes(digest, "big") % bound


def choose_token_block(
    secret: bytes, *, vocab_key: str, vocab_size: int, n_tokens: int, skip_first: int = 0
) -> tuple[int, int]:
    """Start and end of the contiguous token-id block used for a vocabulary.

    One block per *vocabulary* (not per protected model), so a suspect compared with many protected models
    sharing a tokenizer reads one block. The first ``skip_first`` ids (special and control tokens, often
    untrained) are avoided.
    """
    usable = vocab_size - skip_first
    if usable <= n_tokens:
        return (min(skip_first, max(0, vocab_size - n_tokens)), vocab_size)
    start = skip_first + keyed_int(secret, "tokens", vocab_key, bound=usable - n_tokens + 1)
    return start, start + n_tokens


def choose_layers(secret: bytes, *, suspect_key: str, n_layers: int, k: int) -> list[int]:
    """``k`` distinct layers: pairs of consecutive layers, one pair per stratum of the depth.

    Each stratum gets a uniformly chosen layer and its successor. Consecutive layers usually sit in the
    same weight shard, so a pair costs one shard header instead of two (a 70B checkpoint in 29 shards: 22
    requests with four scattered layers, 18 with two pairs). The layers of a pair are still independent
    exchangeable groups under H0, so the exact tests are unaffected.
    """
    if n_layers <= 0:
        return []
    k = min(k, n_layers)
    strata = max(1, (k + 1) // 2)
    out: list[int] = []
    for i in range(strata):
        lo = i * n_layers // strata
        hi = max(lo + 1, (i + 1) * n_layers // strata)
        first = lo + keyed_int(secret, "layer", suspect_key, i, bound=max(1, hi - lo - 1))
        out.append(first)
        if len(out) < k and first + 1 < n_layers:
            out.append(first + 1)
    extra = 0
    while len(set(out)) < k:  # tiny models: fill with the remaining layers in order
        if extra not in out:
            out.append(extra)
        extra += 1
    return sorted(set(out))[:k]


def choose_unit_block(
    secret: bytes, *, suspect_key: str, layer: int, n_units: int, k: int
) -> tuple[int, int]:
    """Start and end of a contiguous block of ``k`` units in one layer (one range request)."""
    if n_units <= k:
        return 0, n_units
    start = keyed_int(secret, "units", suspect_key, layer, bound=n_units - k + 1)
    return start, start + k


def choose_head_block(
    secret: bytes, *, suspect_key: str, layer: int, n_heads: int, k: int
) -> tuple[int, int]:
    """Start and end of ``k`` consecutive query heads of one layer for the attention tier."""
    if n_heads <= k:
        return 0, n_heads
    start = keyed_int(secret, "heads", suspect_key, layer, bound=n_heads - k + 1)
    return start, start + k
