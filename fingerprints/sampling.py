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

__all__ = ["choose_layers", "choose_token_block", "choose_unit_block", "keyed_int"]


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
    """``k`` distinct layers spread over the depth: one uniformly chosen layer in each of ``k`` strata."""
    if n_layers <= 0:
        return []
    k = min(k, n_layers)
    out: list[int] = []
    for i in range(k):
        lo = i * n_layers // k
        hi = max(lo + 1, (i + 1) * n_layers // k)
        out.append(lo + keyed_int(secret, "layer", suspect_key, i, bound=hi - lo))
    return sorted(set(out))


def choose_unit_block(
    secret: bytes, *, suspect_key: str, layer: int, n_units: int, k: int
) -> tuple[int, int]:
    """Start and end of a contiguous block of ``k`` units in one layer (one range request)."""
    if n_units <= k:
        return 0, n_units
    start = keyed_int(secret, "units", suspect_key, layer, bound=n_units - k + 1)
    return start, start + k
